"""IA3: learned rescaling vectors on keys, values and feed-forward activations."""

from __future__ import annotations

from peft import IA3Config, PeftModel

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import Ia3Spec
from worker.methods.base import BuildContext, register
from worker.methods.tasks import peft_task_type


class Ia3Method:
    name = "ia3"

    def peft_config(self, spec: Ia3Spec, ctx: BuildContext) -> IA3Config:
        if (spec.target_modules is None) != (spec.feedforward_modules is None):
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                "peft.ia3: give both target_modules and feedforward_modules, "
                "or neither (architecture defaults)",
            )
        return IA3Config(
            task_type=peft_task_type(ctx.task),
            target_modules=spec.target_modules,
            feedforward_modules=spec.feedforward_modules,
        )

    def after_build(self, model: PeftModel, spec: Ia3Spec, ctx: BuildContext) -> None:
        return None


METHOD = register(Ia3Method())
