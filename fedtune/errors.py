"""The one error catalogue: domain errors carry a code; one table maps codes to gRPC statuses.

Domain code raises ``FedtuneError(ErrorCode.X, "what is wrong and how to fix it")``.
The asyncio servicers wrap each handler in ``async with aio_rpc_errors(context, "PushUpdate"):``;
anything that is not a ``FedtuneError`` becomes INTERNAL with a generic message (the traceback goes
to the log, never to the client).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio

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
    BUSY = "busy"  # a limit on concurrent calls: retry with backoff (not TOO_LARGE, which is final)
    IDLE_TIMEOUT = "idle_timeout"  # a stream sent or read nothing for too long; resume it


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
    ErrorCode.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.IDLE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class FedtuneError(Exception):
    """A domain error whose message is safe to show to the caller."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class ClientGone(Exception):
    """A server stream could not send because the client already cancelled or closed the call."""


def grpc_status_for(code: ErrorCode) -> grpc.StatusCode:
    return _STATUS_BY_CODE[code]


def public_status(err: FedtuneError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and the message a caller sees: ``<code>: <message>``, the code first so that a
    client tells "busy" (retry) from "too_large" (give up) although both are RESOURCE_EXHAUSTED."""
    return grpc_status_for(err.code), f"{err.code.value}: {err.message}"


def internal_message(method: str) -> str:
    return f"internal error in {method}; see the coordinator log"


# Hears each error status a call ends with: (method, gRPC status, reason = the ErrorCode's value, or
# "internal"): a bounded set of values, e.g. for the coordinator's metrics (coordinator/metrics.py).
ErrorObserver = Callable[[str, grpc.StatusCode, str], None]
INTERNAL_REASON = "internal"


def _observe(on_error: ErrorObserver | None, method: str, status: grpc.StatusCode, reason: str) -> None:
    if on_error is None:
        return
    try:
        on_error(method, status, reason)
    except Exception:  # counting an error must never change the answer
        log.exception("error observer failed for %s", method)


@contextlib.asynccontextmanager
async def aio_rpc_errors(
    context: grpc.aio.ServicerContext[Any, Any], method: str, on_error: ErrorObserver | None = None
) -> AsyncIterator[None]:
    """Turn domain errors into a gRPC status with a public message (the table above); hide everything
    else as INTERNAL. `on_error` hears every error status the call ends with (not a client that left)."""
    try:
        yield
    except grpc.aio.AbortError:
        raise  # already aborted with its status
    except FedtuneError as err:
        log.info("%s rejected: %s", method, err)
        _observe(on_error, method, grpc_status_for(err.code), err.code.value)
        await context.abort(*public_status(err))
    except ClientGone:  # e.g. a worker that will resume its download: no fault here, nobody to tell
        log.info("%s ended: the client left the call", method)
    except Exception:
        log.exception("%s failed", method)
        _observe(on_error, method, grpc.StatusCode.INTERNAL, INTERNAL_REASON)
        await context.abort(grpc.StatusCode.INTERNAL, internal_message(method))


def raise_for(code: ErrorCode, message: str) -> NoReturn:
    raise FedtuneError(code, message)
