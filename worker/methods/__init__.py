"""PEFT method adapters, one module per method, registered under the spec's method names."""

from __future__ import annotations

from fedtune.errors import ErrorCode, FedtuneError
from worker.methods import ia3, lora, prefix_tuning, prompt_tuning  # noqa: F401  (registration)
from worker.methods.base import BuildContext, PeftMethod, registry, spec_method_names


def get_method(name: str) -> PeftMethod:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise FedtuneError(
            ErrorCode.INVALID_SPEC, f"peft.method {name!r} is not supported; use one of {known}"
        ) from None


__all__ = ["BuildContext", "PeftMethod", "get_method", "registry", "spec_method_names"]
