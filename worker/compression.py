"""Compressing a trained update for upload, as the spec's `transport` asks (docs/decisions.md 40).

A TRAIN output's trained tensors become their deltas from the round's model version, plus the site's
error-feedback residual when that is on, encoded by ``fedtune.compression.codec``. Plain fp32 outputs,
class-statistics (fedncm) rounds and INIT outputs go out unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from fedtune.compression.codec import encode_update
from fedtune.compression.encoding import UpdateEncoding
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, TransportSpec
from worker.error_feedback import ResidualStore
from worker.task_io import TaskOutput

log = logging.getLogger("fedtune.worker.compression")


def wire_encoding(transport: TransportSpec) -> UpdateEncoding:
    """The header encoding that `transport` asks for."""
    block = transport.int8_block_size if transport.update_encoding == "int8" else 0
    return UpdateEncoding(transport.update_encoding, block, transport.topk_fraction is not None)


def compress_output(
    output: TaskOutput,
    global_arrays: dict[str, np.ndarray],
    transport: TransportSpec,
    *,
    residuals: ResidualStore | None = None,
    experiment_id: str = "",
    stage_index: int = 0,
) -> TaskOutput:
    """`output` with its arrays encoded (deltas from `global_arrays`); unchanged when fp32 dense.

    With error feedback (`residuals` given and the transport asks for it) the stored residual is added
    before encoding and the new one is saved before this returns."""
    encoding = wire_encoding(transport)
    if encoding.is_plain:
        return output
    if list(output.arrays) != list(global_arrays):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            "the trained tensors are not the model version's (names or order differ); cannot send a delta",
        )
    deltas = {
        name: np.asarray(array, dtype=np.float32) - np.asarray(global_arrays[name], dtype=np.float32)
        for name, array in output.arrays.items()
    }
    feedback = residuals is not None and transport.uses_error_feedback
    if feedback:
        assert residuals is not None
        stored = residuals.load(experiment_id, stage_index, {n: d.shape for n, d in deltas.items()})
        if stored is not None:
            deltas = {n: d + stored[n] for n, d in deltas.items()}
    encoded = encode_update(deltas, encoding, transport.topk_fraction)
    metrics = dict(output.metrics)
    if feedback:
        assert residuals is not None
        residual = {n: deltas[n] - encoded.decoded[n] for n in deltas}
        residuals.save(experiment_id, stage_index, residual)
        metrics["compression_residual_norm"] = float(
            np.sqrt(sum(float(np.square(r, dtype=np.float64).sum()) for r in residual.values()))
        )
    plain_bytes = sum(int(a.size) * 4 for a in output.arrays.values())
    sent_bytes = sum(int(a.nbytes) for a in encoded.arrays.values())
    metrics["compression_ratio"] = plain_bytes / sent_bytes if sent_bytes else 0.0
    log.info("update encoded as %s: %d -> %d bytes", encoding.describe(), plain_bytes, sent_bytes)
    return replace(output, arrays=encoded.arrays, dtypes=encoded.dtypes, encoding=encoding, metrics=metrics)


def compress_train_output(
    output: TaskOutput,
    spec: ExperimentSpec,
    stage_index: int,
    global_arrays: dict[str, np.ndarray],
    residuals: ResidualStore,
    experiment_id: str,
) -> TaskOutput:
    """A TRAIN task's output as the spec's transport sends it (class statistics always go as fp32)."""
    if spec.transport.is_plain or spec.training_for(stage_index).class_statistics:
        return output
    return compress_output(
        output,
        global_arrays,
        spec.transport,
        residuals=residuals,
        experiment_id=experiment_id,
        stage_index=stage_index,
    )
