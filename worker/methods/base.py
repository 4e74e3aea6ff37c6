"""What a PEFT method adapter provides, and the registry checked against the spec's method names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, get_args

from peft import PeftConfig, PeftModel

from fedtune.spec import PeftSpec


@dataclass(frozen=True)
class BuildContext:
    task: str  # "sequence-classification" | "causal-lm" | "instruction"
    model_path: str  # local folder of the base model (for text-initialised prompts)
    seed: int


class PeftMethod(Protocol):
    name: str

    def peft_config(self, spec: Any, ctx: BuildContext) -> PeftConfig:
        """The peft config for this method's spec section."""
        ...

    def after_build(self, model: PeftModel, spec: Any, ctx: BuildContext) -> None:
        """Adjust the freshly built model (freeze, re-initialise, check support). Default: nothing."""
        ...


def spec_method_names() -> set[str]:
    """The `method` literal of every member of the spec's PeftSpec union."""
    union = get_args(PeftSpec)[0]
    return {get_args(member.model_fields["method"].annotation)[0] for member in get_args(union)}


_REGISTRY: dict[str, PeftMethod] = {}


def register(method: PeftMethod) -> PeftMethod:
    if method.name not in spec_method_names():
        raise ValueError(
            f"PEFT method {method.name!r} is not a method of the spec ({sorted(spec_method_names())})"
        )
    _REGISTRY[method.name] = method
    return method


def registry() -> dict[str, PeftMethod]:
    return dict(_REGISTRY)
