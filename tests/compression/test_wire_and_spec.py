"""The spec's transport options and the header's encoding on the wire."""

from __future__ import annotations

import pytest

from fedtune.compression.encoding import UpdateEncoding
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord, update_header_from_proto, update_header_to_proto
from fedtune.spec import load_spec_json, load_spec_yaml
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.v1 import worker_pb2

MINIMAL = """
name: t
base_model: {name: tiny-bert}
labels: [a, b]
stages: [{kind: finetune, rounds: 2}]
"""


def _spec_error(extra: str) -> str:
    with pytest.raises(FedtuneError) as caught:
        load_spec_yaml(MINIMAL + extra)
    assert caught.value.code is ErrorCode.INVALID_SPEC
    return caught.value.message


def test_transport_defaults_to_fp32_and_survives_the_stored_json() -> None:
    # Execute
    plain = load_spec_yaml(MINIMAL)
    topk = load_spec_yaml(
        MINIMAL + "transport: {update_encoding: int8, int8_block_size: 64, topk_fraction: 0.1}"
    )

    # Assert
    assert plain.transport.is_plain and not plain.transport.uses_error_feedback
    assert load_spec_json(topk.to_json()).transport == topk.transport
    assert topk.transport.uses_error_feedback  # on by default with top-k
    assert load_spec_json(load_spec_yaml(MINIMAL + "transport: {update_encoding: bf16}").to_json())


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            "transport: {update_encoding: int4}",
            "transport.update_encoding: Input should be 'fp32', 'bf16' or 'int8'",
        ),
        ("transport: {topk_fraction: 1.5}", "transport.topk_fraction: Input should be less than 1"),
        ("transport: {topk_fraction: 0}", "transport.topk_fraction: Input should be greater than 0"),
        ("transport: {update_encoding: int8, int8_block_size: -1}", "transport.int8_block_size"),
        (
            "transport: {update_encoding: bf16, int8_block_size: 64}",
            "applies to update_encoding int8, not bf16",
        ),
        ("transport: {error_feedback: true}", "transport.error_feedback needs a lossy encoding"),
        ("transport: {compress: yes}", "transport.compress: Extra inputs are not permitted"),
        (
            "transport: {update_encoding: int8}\nprivacy: {secure_aggregation: true}",
            "cannot be combined with privacy.secure_aggregation",
        ),
    ],
)
def test_bad_transport_settings_name_the_field(extra: str, words: str) -> None:
    assert words in _spec_error(extra)


def _header(encoding: UpdateEncoding) -> UpdateHeaderRecord:
    manifest = Manifest.of([TensorSpec("w", "int8", (4,), 4)], "a" * 64)
    return UpdateHeaderRecord(task_id="t", num_examples=3, manifest=manifest, encoding=encoding)


def test_a_plain_header_is_byte_for_byte_a_header_without_encoding() -> None:
    # Prepare
    header = _header(UpdateEncoding())
    before = worker_pb2.UpdateHeader(
        task_id="t", num_examples=3, manifest=update_header_to_proto(header).manifest, resume=False
    )

    # Execute / Assert
    assert update_header_to_proto(header).SerializeToString() == before.SerializeToString()
    assert update_header_from_proto(before).encoding.is_plain


@pytest.mark.parametrize(
    "encoding", [UpdateEncoding("bf16"), UpdateEncoding("int8", 128), UpdateEncoding("int8", 0, True)]
)
def test_an_encoding_round_trips_through_the_header(encoding: UpdateEncoding) -> None:
    assert update_header_from_proto(update_header_to_proto(_header(encoding))).encoding == encoding


@pytest.mark.parametrize(
    ("values", "block", "words"),
    [
        ("int4", 0, "encoding.values: 'int4' is not one of fp32, bf16, int8"),
        ("bf16", 64, "encoding.int8_block_size: set for values bf16"),
        ("int8", (1 << 24) + 1, "encoding.int8_block_size: 16777217 is outside"),
    ],
)
def test_a_bad_encoding_in_a_header_is_invalid_argument(values: str, block: int, words: str) -> None:
    # Prepare
    message = update_header_to_proto(_header(UpdateEncoding()))
    message.encoding.CopyFrom(worker_pb2.UpdateEncoding(values=values, int8_block_size=block))

    # Execute / Assert
    with pytest.raises(FedtuneError) as caught:
        update_header_from_proto(message)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and words in caught.value.message
