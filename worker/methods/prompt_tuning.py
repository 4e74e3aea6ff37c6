"""Prompt tuning: trainable virtual-token embeddings prepended to the input (plus the task head)."""

from __future__ import annotations

from peft import PeftModel, PromptTuningConfig, PromptTuningInit

from fedtune.spec import PromptTuningSpec
from worker.methods.base import BuildContext, register
from worker.methods.tasks import peft_task_type


class PromptTuningMethod:
    name = "prompt_tuning"

    def peft_config(self, spec: PromptTuningSpec, ctx: BuildContext) -> PromptTuningConfig:
        if spec.init_text:
            return PromptTuningConfig(
                task_type=peft_task_type(ctx.task),
                num_virtual_tokens=spec.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=spec.init_text,
                tokenizer_name_or_path=ctx.model_path,
            )
        init = PromptTuningInit.SAMPLE_VOCAB if spec.init == "sample_vocab" else PromptTuningInit.RANDOM
        return PromptTuningConfig(
            task_type=peft_task_type(ctx.task),
            num_virtual_tokens=spec.num_virtual_tokens,
            prompt_tuning_init=init,
        )

    def after_build(self, model: PeftModel, spec: PromptTuningSpec, ctx: BuildContext) -> None:
        return None


METHOD = register(PromptTuningMethod())
