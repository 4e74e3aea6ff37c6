"""Sending on a server stream of the asyncio server: bounded in time, and quiet when the client left.

A client that stops reading for `idle_seconds` loses its stream (IDLE_TIMEOUT, so a slow reader cannot
hold the server's buffers for ever). A write that fails because the client cancelled or closed the call
(a worker resuming a download elsewhere) raises ``ClientGone``, which ``aio_rpc_errors`` logs as a
cancelled call rather than as a server failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc.aio

from fedtune.errors import ClientGone, ErrorCode, FedtuneError


async def send(
    context: grpc.aio.ServicerContext[Any, Any], message: Any, idle_seconds: float, resume_hint: str
) -> None:
    """Write one message of a server stream within `idle_seconds`."""
    try:
        await asyncio.wait_for(context.write(message), idle_seconds)
    except TimeoutError:
        raise FedtuneError(
            ErrorCode.IDLE_TIMEOUT,
            f"the client read nothing for {idle_seconds:g} s (stream_idle_seconds); {resume_hint}",
        ) from None
    except (asyncio.CancelledError, FedtuneError):
        raise
    except Exception as err:  # grpc could not send: the call is over on the client's side
        raise ClientGone(str(err)) from err
