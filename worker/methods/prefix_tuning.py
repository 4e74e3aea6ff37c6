"""Prefix tuning: trainable key/value prefixes in every attention layer (needs `past_key_values`)."""

from __future__ import annotations

import inspect

from peft import PeftModel, PrefixTuningConfig

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import PrefixTuningSpec
from worker.methods.base import BuildContext, register
from worker.methods.tasks import peft_task_type


def _accepts_past_key_values(model: PeftModel) -> bool:
    base = model.base_model
    if "past_key_values" in inspect.signature(base.forward).parameters:
        return True
    backbone_name = getattr(model, "transformer_backbone_name", None)
    if backbone_name:
        backbone = base.get_submodule(backbone_name)
        return "past_key_values" in inspect.signature(backbone.forward).parameters
    return False


class PrefixTuningMethod:
    name = "prefix_tuning"

    def peft_config(self, spec: PrefixTuningSpec, ctx: BuildContext) -> PrefixTuningConfig:
        return PrefixTuningConfig(
            task_type=peft_task_type(ctx.task), num_virtual_tokens=spec.num_virtual_tokens
        )

    def after_build(self, model: PeftModel, spec: PrefixTuningSpec, ctx: BuildContext) -> None:
        if ctx.task == "sequence-classification" and not _accepts_past_key_values(model):
            arch = type(model.base_model).__name__
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"prefix_tuning needs a model whose forward takes past_key_values; {arch} does not "
                "(in transformers 5 encoder models such as BERT dropped it). Use lora, prompt_tuning or ia3.",
            )


METHOD = register(PrefixTuningMethod())
