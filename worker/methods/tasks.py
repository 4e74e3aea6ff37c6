"""Spec task name -> peft TaskType."""

from __future__ import annotations

from peft import TaskType

from fedtune.errors import ErrorCode, FedtuneError

_TASK_TYPES = {
    "sequence-classification": TaskType.SEQ_CLS,
    "causal-lm": TaskType.CAUSAL_LM,
    "instruction": TaskType.CAUSAL_LM,
}


def peft_task_type(task: str) -> TaskType:
    try:
        return _TASK_TYPES[task]
    except KeyError:
        raise FedtuneError(ErrorCode.INVALID_SPEC, f"task {task!r} has no PEFT task type") from None
