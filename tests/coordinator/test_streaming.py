"""Server streams: a slow reader loses its stream, and a client that left is no server failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from coordinator.streaming import send
from fedtune.errors import ClientGone, aio_rpc_errors


class _Context:
    """The part of grpc.aio.ServicerContext that `send` and `aio_rpc_errors` use."""

    def __init__(self, write: Any) -> None:
        self.write = write
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)


async def _gone(_message: object) -> None:
    raise RuntimeError('Failed "execute_batch"')  # what grpc raises when the client already left


async def _stuck(_message: object) -> None:
    await asyncio.sleep(10)


def test_a_write_to_a_client_that_left_ends_the_call_quietly(caplog: pytest.LogCaptureFixture) -> None:
    context = _Context(_gone)

    async def handler() -> None:
        async with aio_rpc_errors(context, "FetchTensors"):  # type: ignore[arg-type]
            await send(context, object(), 5.0, "fetch again")  # type: ignore[arg-type]

    with caplog.at_level(logging.INFO, logger="fedtune"):
        asyncio.run(handler())
    assert context.aborted is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client left" in r.getMessage() for r in caplog.records)


def test_send_names_a_client_that_left() -> None:
    with pytest.raises(ClientGone):
        asyncio.run(send(_Context(_gone), object(), 5.0, "fetch again"))  # type: ignore[arg-type]


def test_a_client_that_reads_nothing_loses_its_stream_with_idle_timeout() -> None:
    context = _Context(_stuck)

    async def handler() -> None:
        async with aio_rpc_errors(context, "FetchTensors"):  # type: ignore[arg-type]
            await send(context, object(), 0.05, "fetch again from where it stopped")  # type: ignore[arg-type]

    asyncio.run(handler())
    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details.startswith("idle_timeout:") and "fetch again from where it stopped" in details
