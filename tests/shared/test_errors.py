"""The error catalogue: every code has a status, and unknown errors never leak details."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fedtune.errors import ErrorCode, FedtuneError, aio_rpc_errors, grpc_status_for


class _AbortCalled(Exception):
    pass


class _RecordingContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _AbortCalled


def _handle(context: _RecordingContext, method: str, error: Exception) -> None:
    """Run a handler that raises `error` inside ``aio_rpc_errors``."""

    async def handler() -> None:
        async with aio_rpc_errors(context, method):  # type: ignore[arg-type]
            raise error

    asyncio.run(handler())


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_maps_to_a_grpc_status(code: ErrorCode) -> None:
    assert isinstance(grpc_status_for(code), grpc.StatusCode)
    assert grpc_status_for(code) is not grpc.StatusCode.OK


def test_domain_error_becomes_its_status_with_the_public_message() -> None:
    context = _RecordingContext()

    with pytest.raises(_AbortCalled):
        _handle(
            context,
            "PushUpdate",
            FedtuneError(ErrorCode.CHECKSUM_MISMATCH, "chunk 3 of tensor 'w' has a bad crc32"),
        )

    assert context.code is grpc.StatusCode.DATA_LOSS
    assert context.details == "checksum_mismatch: chunk 3 of tensor 'w' has a bad crc32"


def test_unexpected_error_becomes_internal_without_its_text() -> None:
    context = _RecordingContext()

    with pytest.raises(_AbortCalled):
        _handle(context, "PullTask", KeyError("secret path /var/lib/fedtune/db"))

    assert context.code is grpc.StatusCode.INTERNAL
    assert "secret" not in context.details
    assert "PullTask" in context.details
