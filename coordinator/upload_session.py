"""One admitted PushUpdate stream on the coordinator: its chunks into the decoder, then verify and accept."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from coordinator.accept import UpdateRejected
from coordinator.admission import Admission
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord
from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.manifest import Chunk

if TYPE_CHECKING:
    from coordinator.uploads import UploadService

log = logging.getLogger("fedtune.coordinator.uploads")

UploadItem = UpdateHeaderRecord | Chunk


class UploadSession:
    """One admitted PushUpdate stream: ``add`` its chunks, then ``finish``; ``close`` always.

    A stream that breaks off (``close`` before ``finish``) keeps its verified prefix so that the
    upload can resume; a stream refused for its content leaves nothing in the spool. A round that
    closes under the stream (its spool is removed) is TASK_CLOSED ("round closed"), never INTERNAL:
    the worker moves on.
    """

    def __init__(
        self,
        service: UploadService,
        site_id: int,
        admission: Admission,
        header: UpdateHeaderRecord,
        decoder: StreamDecoder,
        *,
        restarted: bool = False,
    ) -> None:
        self._service = service
        self._restarted = restarted  # a resume header found nothing to resume: the stream must start at 0
        self._site_id = site_id
        self._admission = admission
        self._header = header
        self._decoder = decoder
        self._first_chunk = True
        self._closed = False

    @property
    def task_id(self) -> str:
        return self._admission.task_id

    def add(self, item: UploadItem) -> None:
        with self._rejections():
            if not isinstance(item, Chunk):
                raise FedtuneError(ErrorCode.BAD_CHUNK, "a second header inside one PushUpdate stream")
            position = (item.tensor_index, item.offset)
            if self._first_chunk and self._restarted and position != (0, 0):
                raise FedtuneError(
                    ErrorCode.BAD_CHUNK,
                    f"the coordinator holds no usable partial upload for task {self.task_id} (lost in a "
                    f"crash?), so it cannot continue at tensor {position[0]} offset {position[1]}; send the "
                    "update again from tensor 0 offset 0",
                )
            if self._first_chunk and self._header.resume:
                # the client may resume from a status read before its old stream was closed here
                self._decoder.rewind_to(item.tensor_index, item.offset)
            self._first_chunk = False
            self._decoder.add(item)

    def finish(self) -> tuple[str, int]:
        """Verify the whole update and accept it: (update id or model version id, bytes received)."""
        with self._rejections():
            decoder = self._decoder
            if not decoder.complete:
                tensor, offset = decoder.next_position
                raise FedtuneError(
                    ErrorCode.INCOMPLETE_STREAM,
                    f"the stream ended at tensor {tensor} offset {offset} before the update was complete; "
                    "resume it (GetUploadStatus, then a header with resume=true)",
                )
            received = decoder.received_bytes
            self._closed = True  # finish() consumes the partial either way
            digest = decoder.finish()  # CHECKSUM_MISMATCH removes the partial
            service, admission = self._service, self._admission
            service.decode(admission)  # a compressed update becomes the model's layout (or is refused)
            return service.accept(self._site_id, admission, self._header, digest, received), received

    def close(self) -> None:
        """End the stream: keep a broken stream's verified prefix; let a resume of the task in."""
        try:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):  # the round's spool may be gone already
                    self._decoder.close()
        finally:
            self._service.release(self._admission.task_id)

    @contextlib.contextmanager
    def _rejections(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            closed = self._service.round_closed(self._admission)
            if closed is None:
                raise
            log.info("upload of task %s ended: %s (%s)", self.task_id, closed.message, err)
            self._service.record_rejection(self._admission, closed)
            raise closed from None
        except FedtuneError as err:
            if err.code is not ErrorCode.INCOMPLETE_STREAM and not self._closed:
                self._closed = True
                self._decoder.abort()  # refused content: nothing of this stream stays in the spool
            if not isinstance(err, UpdateRejected):  # that one is recorded with its Update row
                self._service.record_rejection(self._admission, err)
            raise


def next_item(items: Iterator[UploadItem]) -> UploadItem | None:
    """The next stream item; a broken client stream becomes INCOMPLETE_STREAM."""
    try:
        return next(items, None)
    except FedtuneError:
        raise
    except Exception as err:  # the client went away mid-stream (grpc raises RpcError)
        raise FedtuneError(
            ErrorCode.INCOMPLETE_STREAM, f"the client stream broke off: {type(err).__name__}"
        ) from None
