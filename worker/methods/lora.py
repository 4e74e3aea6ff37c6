"""LoRA, with the FFA-LoRA variant (`freeze_a`): A frozen at a shared seeded init, only B trained.

DoRA (`use_dora`) adds a trained magnitude vector per adapted layer (peft's `lora_magnitude_vector`,
exchanged with A and B); rsLoRA (`use_rslora`) only changes the scale to alpha / sqrt(r).

With A identical on every site and frozen, averaging the B matrices is exactly averaging B·A.
A is drawn from numpy's PCG64 stream keyed by (seed, module name), so it is identical across sites
regardless of torch version or device.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from peft import LoraConfig, PeftModel

from fedtune.spec import LoraSpec
from worker.methods.base import BuildContext, register
from worker.methods.tasks import peft_task_type


class LoraMethod:
    name = "lora"

    def peft_config(self, spec: LoraSpec, ctx: BuildContext) -> LoraConfig:
        return LoraConfig(
            task_type=peft_task_type(ctx.task),
            r=spec.r,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
            lora_dropout=spec.dropout,
            target_modules=spec.target_modules,
            use_dora=spec.use_dora,
            use_rslora=spec.use_rslora,
        )

    def after_build(self, model: PeftModel, spec: LoraSpec, ctx: BuildContext) -> None:
        if not spec.freeze_a:
            return
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".lora_A." not in name:
                    continue
                rng = np.random.default_rng([ctx.seed, zlib.crc32(name.encode())])
                bound = 1.0 / math.sqrt(param.shape[1])  # kaiming_uniform(a=sqrt(5)), peft's default for A
                values = rng.uniform(-bound, bound, size=tuple(param.shape)).astype(np.float32)
                param.copy_(torch.from_numpy(values))
                param.requires_grad_(False)


METHOD = register(LoraMethod())
