"""Conformance: a client built from the generated stubs and docs/protocol.md alone drives a real
coordinator through a whole experiment, and sees the documented answer to each documented mistake.

The client (tests/conformance/minimal_client.py) imports no fedtune code but the generated stubs; this
file starts the coordinator in-process and uses the Admin stubs directly for the operator's side.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from coordinator.server import CoordinatorServer, start_server
from coordinator.settings import CoordinatorSettings
from fedtune.v1 import admin_pb2, admin_pb2_grpc, common_pb2, worker_pb2
from tests.conformance.minimal_client import (
    FINAL,
    GIVE_UP_TASK,
    REGISTER,
    RETRY,
    CallFailed,
    Encoded,
    MinimalClient,
    chunks,
    encode,
    make_chunk,
)

ADMIN_TOKEN = "conformance-admin"
SITES = {"alpha": "token-alpha", "beta": "token-beta"}
ADAPTER_CONFIG = b'{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}'
T = TypeVar("T")


def spec(rounds: int, min_sites: int) -> str:
    return f"""
name: conformance
base_model: {{name: tiny}}
task: causal-lm
seed: 3
stages:
  - kind: finetune
    rounds: {rounds}
    deadline_seconds: 60
    strategy: {{name: fedavg}}
    selection: {{min_sites: {min_sites}}}
"""


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return value


class Operator:
    """The Admin side, straight from the admin stubs."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)

    def submit(self, spec_yaml: str) -> str:
        request = admin_pb2.SubmitExperimentRequest(spec_yaml=spec_yaml, start=True)
        return str(self.call("SubmitExperiment", request).experiment_id)

    def experiment(self, experiment_id: str) -> admin_pb2.Experiment:
        experiment: admin_pb2.Experiment = self.call(
            "GetExperiment", admin_pb2.ExperimentRef(experiment_id=experiment_id)
        )
        return experiment

    def committed_version(self, experiment_id: str, round_number: int) -> str:
        def committed() -> str | None:
            rounds = self.call("ListRounds", admin_pb2.ListRoundsRequest(experiment_id=experiment_id)).rounds
            for rnd in rounds:
                assert not (rnd.round == round_number and rnd.state == "failed"), rnd.reason
                if rnd.round == round_number and rnd.state == "committed":
                    return str(rnd.model_version_id)
            return None

        return wait_for(committed)

    def worker_state(self, site: str) -> str:
        workers = self.call("ListWorkers", admin_pb2.ListWorkersRequest()).workers
        return str(next(w.state for w in workers if w.site == site))


@pytest.fixture
def start(tmp_path: Path, database_url: str) -> Iterator[Callable[..., CoordinatorServer]]:
    """Start a coordinator on 127.0.0.1 (free port), SQLite in tmp_path or a fresh PostgreSQL."""
    yield from _starter(tmp_path, database_url)


@pytest.fixture
def start_on_sqlite(tmp_path: Path) -> Iterator[Callable[..., CoordinatorServer]]:
    """`start` for what does not depend on the database."""
    yield from _starter(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")


def _starter(tmp_path: Path, database_url: str) -> Iterator[Callable[..., CoordinatorServer]]:
    servers: list[CoordinatorServer] = []

    def make(**overrides: Any) -> CoordinatorServer:
        values: dict[str, Any] = dict(
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path / "data",
            database_url=database_url,
            admin_token=ADMIN_TOKEN,
            sites=",".join(f"{name}:{token}" for name, token in SITES.items()),
            scheduler_tick_seconds=0.05,
            heartbeat_seconds=0.25,
            max_pull_wait_seconds=2.0,
        )
        values.update(overrides)
        servers.append(start_server(CoordinatorSettings(**values)))
        return servers[-1]

    yield make
    for server in servers:
        server.stop(0)


@pytest.fixture
def clients() -> Iterator[list[MinimalClient]]:
    made: list[MinimalClient] = []
    yield made
    for client in made:
        client.close()


def initial_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A small LoRA-shaped adapter, peft save names, two dtypes and an odd-sized tensor."""
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {
        f"{prefix}.lora_A.weight": rng.standard_normal((4, 96)).astype(np.float32),  # 1,536 bytes
        f"{prefix}.lora_B.weight": rng.standard_normal((96, 4)).astype(np.float32),
        "base_model.model.model.norm.bias": rng.standard_normal(7).astype(np.float32),  # 28 bytes
        "base_model.model.score.weight": rng.standard_normal(10).astype(np.float16),  # 2-byte items
    }


def weighted_mean(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    first = updates[0][0]
    return {
        name: (np.sum([u[name].astype(np.float64) * n for u, n in updates], axis=0) / total).astype(
            first[name].dtype
        )
        for name in first
    }


def assert_tensors_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        tolerance = 2e-3 if value.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(got[name], value, rtol=tolerance, atol=tolerance, err_msg=name)


def pull(client: MinimalClient, kind: int) -> worker_pb2.Task:
    task = wait_for(lambda: client.pull_task(wait_seconds=1.0))
    assert task.kind == kind, task
    return task


def stream_cut_after(
    header: worker_pb2.PushUpdateRequest, encoded: Encoded, count: int
) -> Iterator[worker_pb2.PushUpdateRequest]:
    """A broken upload: the header and `count` chunks, then the stream ends."""
    yield header
    for chunk in list(chunks(encoded, 256))[:count]:
        yield worker_pb2.PushUpdateRequest(chunk=chunk)


def stream_aborted_after(
    client: MinimalClient, header: worker_pb2.PushUpdateRequest, encoded: Encoded, count: int
) -> Iterator[worker_pb2.PushUpdateRequest]:
    """The header and `count` chunks, then the client goes away (the call is cancelled).

    It aborts only once the coordinator has admitted the header (GetUploadStatus says in progress):
    an abort during admission leaves the task blocked, a coordinator bug pinned by
    `test_a_stream_aborted_while_its_header_is_admitted_does_not_block_its_task`."""
    yield from stream_cut_after(header, encoded, count)
    wait_for(lambda: client.upload_status(header.header.task_id).in_progress)
    raise ConnectionError("the client went away mid-stream")


def test_minimal_client_completes_an_experiment_from_the_written_contract(
    start: Callable[..., CoordinatorServer], clients: list[MinimalClient]
) -> None:
    # Prepare: a coordinator with a short lease, two sites running the minimal client
    lease = 2.0
    server = start(task_lease_seconds=lease)
    target = f"127.0.0.1:{server.port}"
    operator = Operator(target)
    alpha, beta = (MinimalClient(target, site, token) for site, token in SITES.items())
    clients.extend([alpha, beta])
    for client in clients:
        client.register()
        assert client.heartbeat_seconds == 0.25  # §2.1: the interval comes from RegisterResponse
        client.start_heartbeats()
    rng = np.random.default_rng(11)
    experiment_id = operator.submit(spec(rounds=2, min_sites=2))

    # Execute: INIT (§6) by whichever site the coordinator picks
    def init_task() -> tuple[MinimalClient, worker_pb2.Task] | None:
        for client in clients:
            task = client.pull_task(wait_seconds=0.2)
            if task is not None:
                return client, task
        return None

    init_client, task = wait_for(init_task)
    assert task.kind == worker_pb2.TASK_KIND_INIT and task.model_version_id == ""
    init_client.current_task = task.task_id
    current = initial_tensors(rng)
    answer = init_client.push_update(
        task.task_id,
        encode(current),
        num_examples=0,
        metrics={"trainable_parameters": float(sum(a.size for a in current.values()))},
        files={"adapter_config.json": ADAPTER_CONFIG},
        chunk_bytes=256,
    )
    init_client.current_task = ""
    assert answer is not None
    version = operator.call("GetModel", admin_pb2.ModelRef(version_id=answer.update_id))
    assert list(version.files) == ["adapter_config.json"]
    assert version.manifest == encode(current).manifest
    version_id = answer.update_id

    for round_number in (1, 2):
        tasks = {client.site: pull(client, worker_pb2.TASK_KIND_TRAIN) for client in clients}
        alpha.current_task = tasks["alpha"].task_id  # §3: only heartbeats naming a task extend its lease
        beta.current_task = tasks["beta"].task_id if round_number == 1 else ""
        pushed = []
        for client in clients:
            task = tasks[client.site]
            assert task.round == round_number and task.model_version_id == version_id
            # §7: fetch in small chunks, break the first stream, resume; crc32 and sha256 checked
            got = client.fetch_version(
                task.model_version_id,
                expected_digest=task.model_manifest.digest,
                chunk_size=256,
                break_after_chunks=3,
            )
            assert_tensors_equal(got, current)
            update = {
                name: (value.astype(np.float64) + rng.normal(0, 0.1, value.shape)).astype(value.dtype)
                for name, value in got.items()
            }
            pushed.append((update, int(rng.integers(1, 1000))))

        num_examples = {client.site: n for client, (_, n) in zip(clients, pushed, strict=True)}
        encoded = {client.site: encode(u) for client, (u, _) in zip(clients, pushed, strict=True)}
        if round_number == 1:
            # §5: a stream that ends early keeps its verified prefix: DATA_LOSS incomplete_stream, then
            # GetUploadStatus says where to go on, and a resume header continues there
            header = alpha.header(
                tasks["alpha"].task_id, encoded["alpha"], num_examples=num_examples["alpha"]
            )
            with pytest.raises(CallFailed) as ended:
                alpha.push_stream(stream_cut_after(header, encoded["alpha"], 3))
            assert ended.value.code == grpc.StatusCode.DATA_LOSS and ended.value.prefix == "incomplete_stream"
            status = alpha.upload_status(tasks["alpha"].task_id)
            assert status.in_progress and (status.next_tensor, status.next_offset) == (0, 3 * 256)
            resumed = alpha.header(
                tasks["alpha"].task_id, encoded["alpha"], num_examples=num_examples["alpha"], resume=True
            )
            rest = chunks(encoded["alpha"], 256, start=(status.next_tensor, status.next_offset))
            done = alpha.push_stream([resumed, *(worker_pb2.PushUpdateRequest(chunk=c) for c in rest)])
            assert done.received_bytes == sum(t.nbytes for t in encoded["alpha"].manifest.tensors)
            # a client that aborts its stream: whatever the coordinator verified, the resume finishes it
            header = beta.header(tasks["beta"].task_id, encoded["beta"], num_examples=num_examples["beta"])
            with pytest.raises(CallFailed):
                beta.push_stream(stream_aborted_after(beta, header, encoded["beta"], 4))
            assert (
                beta.push_update(
                    tasks["beta"].task_id,
                    encoded["beta"],
                    num_examples=num_examples["beta"],
                    chunk_bytes=256,
                    ask_status_first=True,
                )
                is not None
            )
        else:
            # §3: hold both tasks past the lease; alpha's heartbeats name its task, beta's do not
            time.sleep(lease + 1.0)
            assert (
                alpha.push_update(
                    tasks["alpha"].task_id,
                    encoded["alpha"],
                    num_examples=num_examples["alpha"],
                    chunk_bytes=512,
                )
                is not None
            )
            with pytest.raises(CallFailed) as closed:
                beta.push_update(
                    tasks["beta"].task_id, encoded["beta"], num_examples=num_examples["beta"], chunk_bytes=512
                )
            assert closed.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert closed.value.action == GIVE_UP_TASK and closed.value.prefix == "task_closed"
            assert beta.heartbeat(tasks["beta"].task_id)  # cancel_task: no longer this worker's
            again = pull(beta, worker_pb2.TASK_KIND_TRAIN)  # the expired task is back in the queue
            assert again.task_id == tasks["beta"].task_id
            beta.current_task = again.task_id
            assert (
                beta.push_update(
                    again.task_id, encoded["beta"], num_examples=num_examples["beta"], chunk_bytes=512
                )
                is not None
            )
        alpha.current_task = beta.current_task = ""

        # Assert: the committed version is the example-weighted mean of what the sites sent
        version_id = operator.committed_version(experiment_id, round_number)
        current = alpha.fetch_version(version_id, chunk_size=1000)
        assert_tensors_equal(current, weighted_mean(pushed))

    experiment = wait_for(
        lambda: e if (e := operator.experiment(experiment_id)).state == "completed" else None
    )
    assert experiment.current_round == 2 and experiment.latest_model_version_id == version_id
    assert all(client.heartbeats_sent > 0 for client in clients)
    operator.channel.close()


def test_documented_refusals_reach_the_minimal_client(
    start: Callable[..., CoordinatorServer], clients: list[MinimalClient]
) -> None:
    # Prepare: small limits so that each refusal is one call away
    server = start(max_site_pulls=1, max_chunk_bytes=1024, chunk_bytes=1024, worker_offline_after_seconds=1.0)
    target = f"127.0.0.1:{server.port}"
    operator = Operator(target)
    alpha, beta = (MinimalClient(target, site, token) for site, token in SITES.items())
    clients.extend([alpha, beta])
    alpha.register()
    alpha.start_heartbeats()
    beta.register()  # and then silent

    # Execute + Assert: §2.2, a worker silent for worker_offline_after_seconds is offline
    wait_for(lambda: operator.worker_state("beta") == "offline", timeout=5)
    assert operator.worker_state("alpha") != "offline"

    # §3: one long-poll more than max_site_pulls is RESOURCE_EXHAUSTED busy: (retry with backoff)
    request = worker_pb2.PullTaskRequest(worker_id=alpha.worker_id, wait_seconds=5.0)
    polls = [alpha.stub.PullTask.future(request, metadata=alpha.metadata, timeout=10)]

    def one_more_poll() -> grpc.RpcError | None:
        """None while the open poll has not reached the coordinator yet (this one then ends at once).
        On a loaded machine a probe can reach the coordinator first and take the place itself, and the
        open poll is then refused or ends: open another one before probing again."""
        if polls[-1].done():
            polls.append(alpha.stub.PullTask.future(request, metadata=alpha.metadata, timeout=10))
            return None
        try:
            alpha.stub.PullTask(
                worker_pb2.PullTaskRequest(worker_id=alpha.worker_id), metadata=alpha.metadata, timeout=10
            )
        except grpc.RpcError as err:
            return err
        return None

    busy = wait_for(one_more_poll)
    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert busy.details().startswith("busy:")
    assert CallFailed("PullTask", busy.code(), busy.details()).action == RETRY
    for poll in polls:
        poll.cancel()

    # §8: an unknown worker id is NOT_FOUND "unknown worker" (register again); a wrong token is
    # UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as unknown:
        alpha.stub.Heartbeat(worker_pb2.HeartbeatRequest(worker_id="wk-nobody"), metadata=alpha.metadata)
    assert CallFailed("Heartbeat", unknown.value.code(), unknown.value.details()).action == REGISTER
    stranger = MinimalClient(target, "alpha", "not-the-token")
    clients.append(stranger)
    with pytest.raises(grpc.RpcError) as wrong_token:
        stranger.stub.Heartbeat(
            worker_pb2.HeartbeatRequest(worker_id=alpha.worker_id), metadata=stranger.metadata
        )
    assert wrong_token.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # an INIT task to upload against
    operator.submit(spec(rounds=1, min_sites=1))
    task = pull(alpha, worker_pb2.TASK_KIND_INIT)  # retries busy: until the cancelled poll is gone
    alpha.current_task = task.task_id
    encoded = encode(initial_tensors(np.random.default_rng(5)))
    header = alpha.header(
        task.task_id, encoded, num_examples=0, files={"adapter_config.json": ADAPTER_CONFIG}
    )
    first = next(chunks(encoded, 256))

    def refused(*messages: worker_pb2.PushUpdateRequest) -> CallFailed:
        with pytest.raises(CallFailed) as caught:
            alpha.push_stream(messages)
        return caught.value

    def chunk(c: Any) -> worker_pb2.PushUpdateRequest:
        return worker_pb2.PushUpdateRequest(chunk=c)

    # §5: the first message must be the header
    err = refused(chunk(first))
    assert (err.code, err.prefix, err.action) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", FINAL)
    # §4: a chunk whose crc32 is wrong is DATA_LOSS checksum_mismatch, and the upload is discarded
    bad_crc = make_chunk(first.tensor_index, first.offset, first.data)
    bad_crc.crc32 ^= 1
    err = refused(header, chunk(bad_crc))
    assert (err.code, err.prefix, err.action) == (grpc.StatusCode.DATA_LOSS, "checksum_mismatch", FINAL)
    status = alpha.upload_status(task.task_id)
    assert not status.in_progress and not status.complete
    # §4: a chunk over max_chunk_bytes is RESOURCE_EXHAUSTED too_large: final, unlike busy:
    big = make_chunk(0, 0, encoded.raw[0][:1028])
    err = refused(header, chunk(big))
    assert (err.code, err.prefix, err.action) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large", FINAL)
    # §4: chunks come in stream order, item-aligned
    err = refused(header, chunk(make_chunk(0, 4, encoded.raw[0][4:260])))
    assert (err.code, err.prefix) == (grpc.StatusCode.INVALID_ARGUMENT, "bad_chunk")
    err = refused(header, chunk(make_chunk(0, 0, encoded.raw[0][:6])))
    assert (err.code, err.prefix) == (grpc.StatusCode.INVALID_ARGUMENT, "bad_chunk")
    # §4: the sha256 of the whole update must be the manifest's digest
    wrong_digest = Encoded(
        common_pb2.Manifest(tensors=encoded.manifest.tensors, digest="0" * 64), encoded.raw
    )
    err = refused(
        alpha.header(task.task_id, wrong_digest, num_examples=0),
        *(chunk(c) for c in chunks(wrong_digest, 1024)),
    )
    assert (err.code, err.prefix) == (grpc.StatusCode.DATA_LOSS, "checksum_mismatch")
    # §5: header limits: num_examples within bounds, metrics finite
    err = refused(alpha.header(task.task_id, encoded, num_examples=-1), chunk(first))
    assert (err.code, err.prefix) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument")
    assert "num_examples" in err.details
    err = refused(alpha.header(task.task_id, encoded, num_examples=0, metrics={"loss": float("nan")}))
    assert (err.code, err.prefix) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument")

    # after all that, the proper upload goes through; a replay is task_closed (give the task up)
    assert (
        alpha.push_update(
            task.task_id,
            encoded,
            num_examples=0,
            files={"adapter_config.json": ADAPTER_CONFIG},
            chunk_bytes=1024,
        )
        is not None
    )
    assert alpha.upload_status(task.task_id).complete
    err = refused(header, *(chunk(c) for c in chunks(encoded, 1024)))
    assert (err.code, err.prefix, err.action) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "task_closed",
        GIVE_UP_TASK,
    )
    operator.channel.close()


def test_a_stream_aborted_while_its_header_is_admitted_does_not_block_its_task(
    start_on_sqlite: Callable[..., CoordinatorServer],
    clients: list[MinimalClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: an INIT task, and an admission made slow enough for the client to abort during it
    server = start_on_sqlite()
    operator = Operator(f"127.0.0.1:{server.port}")
    alpha = MinimalClient(f"127.0.0.1:{server.port}", "alpha", SITES["alpha"])
    clients.append(alpha)
    alpha.register()
    operator.submit(spec(rounds=1, min_sites=1))
    task = pull(alpha, worker_pb2.TASK_KIND_INIT)
    encoded = encode(initial_tensors(np.random.default_rng(2)))
    header = alpha.header(task.task_id, encoded, num_examples=0)
    uploads = server.services.uploads
    admit = uploads.open

    def slow_admission(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return admit(*args, **kwargs)

    monkeypatch.setattr(uploads, "open", slow_admission)

    def aborted_during_admission() -> Iterator[worker_pb2.PushUpdateRequest]:
        yield header
        time.sleep(0.1)
        raise ConnectionError("the client went away")

    with pytest.raises(CallFailed):
        alpha.push_stream(aborted_during_admission())
    monkeypatch.setattr(uploads, "open", admit)
    wait_for(lambda: alpha.upload_status(task.task_id).in_progress)  # the admission has finished

    # Execute: the whole update again, as §5 says (nothing to resume: the aborted stream sent no chunk)
    requests = [header, *(worker_pb2.PushUpdateRequest(chunk=c) for c in chunks(encoded, 1024))]
    answer = alpha.stub.PushUpdate(iter(requests), metadata=alpha.metadata, timeout=3)

    # Assert
    assert answer.update_id
    operator.channel.close()


def test_the_minimal_client_is_built_from_the_generated_stubs_alone() -> None:
    # Prepare
    source = Path(__file__).with_name("minimal_client.py").read_text()
    allowed = {"__future__", "hashlib", "logging", "random", "re", "threading", "time", "zlib"}
    allowed |= {"collections.abc", "dataclasses", "typing", "grpc", "numpy", "fedtune.v1"}

    # Execute
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")

    # Assert: no fedtune.serde / tensorstream, no worker.*, no test helpers: only stubs and the stdlib
    assert imported <= allowed, imported - allowed
