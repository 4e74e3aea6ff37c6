"""Write an ExportModel stream to a directory: one safetensors file plus side files.

Tensor bytes go straight through `StreamDecoder` to disk, so memory stays O(chunk) whatever the
model's size. The result is what `PeftModel.from_pretrained(base, out_dir)` (adapter) or
`AutoModel.from_pretrained(out_dir)` (base, with its config side files) loads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from admin.client import AdminError, ExitCode
from fedtune.v1 import admin_pb2

TENSOR_FILE_BY_KIND: dict[str, str] = {
    "adapter": "adapter_model.safetensors",
    "personalized": "adapter_model.safetensors",
    "base": "model.safetensors",
}


def tensor_file_for(kind: str) -> str:
    try:
        return TENSOR_FILE_BY_KIND[kind]
    except KeyError:
        known = ", ".join(sorted(TENSOR_FILE_BY_KIND))
        raise AdminError(f"cannot export a model of kind {kind!r} (known kinds: {known})") from None


def _safe_side_file(out_dir: Path, name: str, tensor_file: str) -> Path:
    """A side file's path inside `out_dir`; names that could escape it are refused."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name == tensor_file:
        raise AdminError(f"the coordinator sent a side file with a bad name {name!r}; export aborted")
    return out_dir / name


def _write_atomically(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_export(kind: str, stream: Iterable[admin_pb2.ExportModelResponse], out_dir: Path) -> list[Path]:
    """Consume `stream` (manifest, chunks, side files) into `out_dir`; return the files written."""
    from fedtune.errors import FedtuneError
    from fedtune.tensorstream.decoder import StreamDecoder
    from fedtune.tensorstream.serde import chunk_from_proto, manifest_from_proto

    tensor_file = tensor_file_for(kind)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdminError(f"cannot create {out_dir}: {err.strerror or err}") from None
    tensor_path = out_dir / tensor_file
    decoder: StreamDecoder | None = None
    side_files: list[Path] = []
    finished = False
    try:
        for item in stream:
            which = item.WhichOneof("item")
            if which == "manifest":
                if decoder is not None:
                    raise AdminError("the coordinator sent two manifests in one export; export aborted")
                decoder = StreamDecoder(manifest_from_proto(item.manifest), tensor_path)
            elif which == "chunk":
                if decoder is None:
                    raise AdminError("the coordinator sent tensor bytes before the manifest; export aborted")
                decoder.add(chunk_from_proto(item.chunk))
            elif which == "file":
                path = _safe_side_file(out_dir, item.file.name, tensor_file)
                _write_atomically(path, item.file.content)
                side_files.append(path)
        if decoder is None:
            raise AdminError("the coordinator ended the export without sending a manifest")
        decoder.finish()  # checks completeness and the manifest's sha256, then renames into place
        decoder = None
        finished = True
    except FedtuneError as err:
        raise AdminError(f"export of a corrupt stream stopped: {err.message}", ExitCode.ERROR) from None
    except OSError as err:
        raise AdminError(f"cannot write the export to {out_dir}: {err.strerror or err}") from None
    finally:
        if not finished:
            if decoder is not None:
                decoder.abort()
            for path in side_files:
                path.unlink(missing_ok=True)
    return [tensor_path, *side_files]
