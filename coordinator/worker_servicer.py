"""Worker service (asyncio): thin. Each method authenticates, then awaits a plain service inside
``aio_rpc_errors``; blocking work runs on the Worker calls' thread pool (``coordinator.blocking``).

What an open call costs: a long-poll waits on its site's wake-up event and a stream waits for its next
message on the event loop, neither holding a thread. Each site has limits on open long-polls, uploads
and downloads (``coordinator.site_limits``), and a stream silent for ``stream_idle_seconds`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar

import grpc
import grpc.aio

from coordinator.auth import bearer, check_certificate_site
from coordinator.blocking import BlockingPool
from coordinator.bootstrap import Services
from coordinator.secagg.submit import SecAggAnswer
from coordinator.site_limits import DOWNLOAD, PULL, UPLOAD, SiteCallLimits
from coordinator.streaming import send
from coordinator.upload_session import UploadItem
from fedtune.errors import ErrorCode, FedtuneError, aio_rpc_errors
from fedtune.secagg.wire import boxes_from_proto, keys_from_proto, revealed_from_proto
from fedtune.serde import UpdateHeaderRecord, task_to_proto, update_header_from_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import chunk_from_proto, chunk_to_proto, manifest_to_proto
from fedtune.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("fedtune.coordinator.worker_api")
P = ParamSpec("P")
T = TypeVar("T")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, services: Services, pool: BlockingPool) -> None:
        self._services = services
        self._pool = pool
        self._on_error = services.metrics.rpc_error
        self._metrics = services.metrics
        self._received = services.metrics.bytes_received.labels(method="PushUpdate")
        self._sent = services.metrics.bytes_sent.labels(method="FetchTensors")
        settings = services.settings
        self._idle = settings.stream_idle_seconds
        self.limits = SiteCallLimits(
            {
                PULL: settings.max_site_pulls,
                UPLOAD: settings.max_site_uploads,
                DOWNLOAD: settings.max_site_downloads,
            },
        )
        # Uploads past `max_open_uploads` in all wait (a coroutine, no thread, no file) for a place
        # instead of being refused: a thousand sites finishing together are served in turn, not told
        # `busy:` thousands of times (decision 42). A site over its own limit is still refused at once.
        self._upload_places = asyncio.Semaphore(settings.max_open_uploads)

    # -- identity -------------------------------------------------------------------------------------
    def _authenticate_blocking(self, context: Context, site: str, token: str) -> int:
        """The site's id. Under mutual TLS the client certificate must be the site's (checked first, so
        a wrong certificate learns nothing about tokens); the token is required either way."""
        if self._services.settings.tls_client_ca is not None:
            check_certificate_site(context.auth_context(), site)
        return self._services.auth.authenticate_site(site, token, context.peer())

    async def _site(self, context: Context) -> tuple[int, str]:
        site, token = bearer(context.invocation_metadata() or ())
        return await self._pool.run(self._authenticate_blocking, context, site, token), site

    # -- unary calls ----------------------------------------------------------------------------------
    async def Register(
        self, request: worker_pb2.RegisterRequest, context: Context
    ) -> worker_pb2.RegisterResponse:
        async with aio_rpc_errors(context, "Register", self._on_error):
            site_id = await self._pool.run(self._authenticate_blocking, context, request.site, request.token)
            device = {
                "kind": request.device.kind,
                "name": request.device.name,
                "memory_bytes": request.device.memory_bytes,
                "bf16": request.device.bf16,
            }
            worker_id = await self._pool.run(
                self._services.tasks.register,
                site_id,
                worker_version=request.worker_version,
                device=device,
                dataset_sizes=dict(request.dataset_sizes),
            )
            return worker_pb2.RegisterResponse(
                worker_id=worker_id, heartbeat_seconds=self._services.settings.heartbeat_seconds
            )
        raise AssertionError("unreachable")

    async def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: Context
    ) -> worker_pb2.HeartbeatResponse:
        async with aio_rpc_errors(context, "Heartbeat", self._on_error):
            site_id, _ = await self._site(context)
            cancel = await self._pool.run(
                self._services.tasks.heartbeat, site_id, request.worker_id, request.task_id, request.progress
            )
            return worker_pb2.HeartbeatResponse(cancel_task=cancel)
        raise AssertionError("unreachable")

    async def PullTask(
        self, request: worker_pb2.PullTaskRequest, context: Context
    ) -> worker_pb2.PullTaskResponse:
        """Long-poll: lease a task now, or wait (no thread) for the site's wake-up, up to the wait asked.
        A client that goes away cancels the wait at once."""
        async with aio_rpc_errors(context, "PullTask", self._on_error):
            site_id, site = await self._site(context)
            tasks, notifier = self._services.tasks, self._services.notifier
            with self.limits.hold(site_id, site, PULL):
                cap = await self._pool.run(tasks.begin_pull, site_id, request.worker_id)
                loop = asyncio.get_running_loop()
                give_up = loop.time() + min(max(0.0, request.wait_seconds), cap)
                with notifier.site_wakeup(site_id) as woken:
                    while True:
                        woken.clear()  # set again by any news that arrives while we look
                        record = await self._pool.run(tasks.try_lease, site_id, request.worker_id)
                        remaining = give_up - loop.time()
                        if record is not None or remaining <= 0 or notifier.closed:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), remaining)
            if record is None:
                return worker_pb2.PullTaskResponse(has_task=False)
            return worker_pb2.PullTaskResponse(has_task=True, task=task_to_proto(record))
        raise AssertionError("unreachable")

    async def GetUploadStatus(
        self, request: worker_pb2.GetUploadStatusRequest, context: Context
    ) -> worker_pb2.GetUploadStatusResponse:
        async with aio_rpc_errors(context, "GetUploadStatus", self._on_error):
            site_id, _ = await self._site(context)
            status = await self._pool.run(self._services.uploads.status, site_id, request.task_id)
            return worker_pb2.GetUploadStatusResponse(
                in_progress=status.in_progress,
                next_tensor=status.next_tensor,
                next_offset=status.next_offset,
                complete=status.complete,
            )
        raise AssertionError("unreachable")

    async def ReportResult(
        self, request: worker_pb2.ReportResultRequest, context: Context
    ) -> worker_pb2.ReportResultResponse:
        async with aio_rpc_errors(context, "ReportResult", self._on_error):
            site_id, _ = await self._site(context)
            await self._pool.run(
                self._services.tasks.report_result,
                site_id,
                request.task_id,
                ok=request.ok,
                error=request.error,
                metrics=dict(request.metrics),
                num_examples=request.num_examples,
            )
            return worker_pb2.ReportResultResponse()
        raise AssertionError("unreachable")

    async def SubmitSecAgg(
        self, request: worker_pb2.SubmitSecAggRequest, context: Context
    ) -> worker_pb2.SubmitSecAggResponse:
        async with aio_rpc_errors(context, "SubmitSecAgg", self._on_error):
            site_id, _ = await self._site(context)
            answer = SecAggAnswer(
                keys=keys_from_proto(request.keys)[1] if request.HasField("keys") else None,
                boxes=boxes_from_proto(request.boxes),
                shares=revealed_from_proto(request.shares, holder=-1),  # the holder is the caller
            )
            await self._pool.run(self._services.secagg.submit, site_id, request.task_id, answer)
            return worker_pb2.SubmitSecAggResponse()
        raise AssertionError("unreachable")

    # -- streams --------------------------------------------------------------------------------------
    async def FetchTensors(self, request: worker_pb2.FetchTensorsRequest, context: Context) -> None:
        async with aio_rpc_errors(context, "FetchTensors", self._on_error):
            site_id, site = await self._site(context)
            with self.limits.hold(site_id, site, DOWNLOAD):
                items = await self._pool.run(
                    self._services.downloads.fetch,
                    request.version_id,
                    request.start_tensor,
                    request.start_offset,
                    request.chunk_size,
                    site_id=site_id,
                )
                async for item in self._pool.iterate(items):
                    if isinstance(item, Manifest):
                        message = worker_pb2.FetchTensorsResponse(manifest=manifest_to_proto(item))
                    else:
                        message = worker_pb2.FetchTensorsResponse(chunk=chunk_to_proto(item))
                    await send(
                        context,
                        message,
                        self._idle,
                        "fetch again from where it stopped (start_tensor, start_offset)",
                    )
                    self._sent.inc(message.ByteSize())

    async def PushUpdate(
        self, request_iterator: AsyncIterator[worker_pb2.PushUpdateRequest], context: Context
    ) -> worker_pb2.PushUpdateResponse:
        async with aio_rpc_errors(context, "PushUpdate", self._on_error):
            site_id, site = await self._site(context)
            with self.limits.hold(site_id, site, UPLOAD), self._metrics.counting_upload():
                async with self._upload_places:
                    return await self._push(site_id, aiter(request_iterator))
        raise AssertionError("unreachable")

    async def _push(
        self, site_id: int, messages: AsyncIterator[worker_pb2.PushUpdateRequest]
    ) -> worker_pb2.PushUpdateResponse:
        """One admitted upload stream, from its header to the accepted update (holding a place)."""
        uploads = self._services.uploads
        header = await self._next_item(messages)
        if not isinstance(header, UpdateHeaderRecord):
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "the first PushUpdate message must be the header")
        opening = asyncio.ensure_future(self._pool.run(uploads.open, site_id, header))
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the client left while the header was admitted
            await _settle(opening, on_result=lambda opened: self._pool.run(opened.close))
            raise
        try:
            while (item := await self._next_item(messages)) is not None:
                await self._step(session.add, item)
            update_id, received = await self._step(session.finish)
        finally:
            await asyncio.shield(self._pool.run(session.close))
        return worker_pb2.PushUpdateResponse(update_id=update_id, received_bytes=received)

    async def _step(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One blocking step of an upload session, carried to its end even if the call is cancelled
        meanwhile, so that the session is never closed under a step still running on its thread."""
        running = asyncio.ensure_future(self._pool.run(fn, *args, **kwargs))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await _settle(running)
            raise

    async def _next_item(self, messages: AsyncIterator[worker_pb2.PushUpdateRequest]) -> UploadItem | None:
        """The next header or chunk; None at the end of the stream. A stream silent for
        `stream_idle_seconds` ends with IDLE_TIMEOUT (the verified prefix is kept for a resume)."""
        while True:
            try:
                request = await asyncio.wait_for(anext(messages), self._idle)
            except StopAsyncIteration:
                return None
            except (FedtuneError, asyncio.CancelledError):
                raise
            except TimeoutError:
                raise FedtuneError(
                    ErrorCode.IDLE_TIMEOUT,
                    f"the PushUpdate stream sent nothing for {self._idle:g} s (stream_idle_seconds) and was "
                    "closed; what was verified is kept: resume with GetUploadStatus and a resume header",
                ) from None
            except Exception as err:  # the client stream broke off
                raise FedtuneError(
                    ErrorCode.INCOMPLETE_STREAM, f"the client stream broke off: {type(err).__name__}"
                ) from None
            self._received.inc(request.ByteSize())
            which = request.WhichOneof("item")
            if which == "header":
                return update_header_from_proto(request.header)
            if which == "chunk":
                return chunk_from_proto(request.chunk)


async def _settle(
    running: asyncio.Future[T], on_result: Callable[[T], Awaitable[object]] | None = None
) -> None:
    """Wait for a blocking step that a cancelled call started (its thread runs on regardless), then
    hand its result to `on_result` (e.g. close a session nobody will use); its errors are moot."""
    try:
        result = await running
    except Exception:
        return
    if on_result is not None:
        with contextlib.suppress(Exception):
            await on_result(result)
