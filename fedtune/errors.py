"""The one error catalogue: domain errors carry a code; one table maps codes to gRPC statuses.

Domain code raises ``FedtuneError(ErrorCode.X, "what is wrong and how to fix it")``.
Servicers wrap their handler in ``with rpc_errors(context, "PushUpdate"):``; anything that is
not a ``FedtuneError`` becomes INTERNAL with a generic message (the traceback goes to the log,
never to the client).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator
from typing import NoReturn

import grpc

log = logging.getLogger("fedtune.errors")


class ErrorCode(enum.Enum):
    INVALID_SPEC = "invalid_spec"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    TASK_CLOSED = "task_closed"
    WRONG_STATE = "wrong_state"
    BAD_MANIFEST = "bad_manifest"
    BAD_CHUNK = "bad_chunk"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NON_FINITE = "non_finite"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    INCOMPLETE_STREAM = "incomplete_stream"
    STORAGE = "storage"
    UNAVAILABLE = "unavailable"


# code -> (gRPC status, public prefix)
_STATUS_BY_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_SPEC: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.TASK_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.WRONG_STATE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.BAD_MANIFEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.BAD_CHUNK: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.CHECKSUM_MISMATCH: grpc.StatusCode.DATA_LOSS,
    ErrorCode.NON_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INCOMPLETE_STREAM: grpc.StatusCode.DATA_LOSS,
    ErrorCode.STORAGE: grpc.StatusCode.INTERNAL,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class FedtuneError(Exception):
    """A domain error whose message is safe to show to the caller."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def grpc_status_for(code: ErrorCode) -> grpc.StatusCode:
    return _STATUS_BY_CODE[code]


@contextlib.contextmanager
def rpc_errors(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Turn domain errors into a gRPC status with a public message; hide everything else."""
    try:
        yield
    except FedtuneError as err:
        log.info("%s rejected: %s", method, err)
        context.abort(grpc_status_for(err.code), f"{err.code.value}: {err.message}")
    except Exception:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the coordinator log")


def raise_for(code: ErrorCode, message: str) -> NoReturn:
    raise FedtuneError(code, message)
