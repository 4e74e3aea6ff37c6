"""A real coordinator over TLS and mutual TLS on 127.0.0.1: who gets in, and as which site."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coordinator.server import CoordinatorServer
from fedtune.tls import ClientTls
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.admin.harness import run_admin
from tests.support.tls import ADMIN_TOKEN, SITE_TOKENS, secure_channel
from worker.connection import Connection
from worker.settings import WorkerSettings

DEVICE = {"kind": "cpu", "name": "test", "memory_bytes": 0, "bf16": False}


def _status(channel: grpc.Channel) -> admin_pb2.CoordinatorStatus:
    stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
    answer: admin_pb2.CoordinatorStatus = stub.GetStatus(
        admin_pb2.GetStatusRequest(), metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")], timeout=5
    )
    return answer


def _register(channel: grpc.Channel, site: str, token: str) -> worker_pb2.RegisterResponse:
    stub = worker_pb2_grpc.WorkerStub(channel)  # type: ignore[no-untyped-call]
    answer: worker_pb2.RegisterResponse = stub.Register(
        worker_pb2.RegisterRequest(site=site, token=token, worker_version="test"), timeout=5
    )
    return answer


def _worker_settings(server: CoordinatorServer, certs: Path, tmp_path: Path, site: str) -> WorkerSettings:
    bundle = certs / "sites" / site
    return WorkerSettings(
        coordinator=f"127.0.0.1:{server.port}",
        site=site,
        token=SITE_TOKENS[site],
        data_root=tmp_path / "data",
        model_root=tmp_path / "models",
        tls_ca=bundle / "ca.pem",
        tls_cert=bundle / "cert.pem",
        tls_key=bundle / "key.pem",
    )


def test_tls_coordinator_answers_a_client_that_trusts_its_ca(
    tls_server: CoordinatorServer, certs: Path
) -> None:
    # Execute
    with secure_channel(tls_server, certs) as channel:
        status = _status(channel)

    # Assert
    assert status.version


def test_tls_coordinator_refuses_a_plaintext_client(tls_server: CoordinatorServer) -> None:
    # Execute
    with (
        grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        _status(channel)

    # Assert
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_worker_with_its_own_site_cert_registers_and_pulls(
    mtls_server: CoordinatorServer, certs: Path, tmp_path: Path
) -> None:
    # Prepare: the real worker client, configured as `fedtune worker run --tls-*` would be
    connection = Connection(_worker_settings(mtls_server, certs, tmp_path, "site-a"))

    # Execute
    try:
        worker_id = connection.register(DEVICE, {}, "test")
        task = connection.pull_task(wait=0.1)
    finally:
        connection.close()

    # Assert
    assert worker_id
    assert task is None  # no experiment: authenticated, nothing to do


def test_mtls_coordinator_fails_the_handshake_without_a_client_cert(
    mtls_server: CoordinatorServer, certs: Path
) -> None:
    # Execute
    with secure_channel(mtls_server, certs) as channel, pytest.raises(grpc.RpcError) as err:
        _register(channel, "site-a", SITE_TOKENS["site-a"])

    # Assert
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_site_cert_cannot_authenticate_as_another_site_even_with_its_token(
    mtls_server: CoordinatorServer, certs: Path
) -> None:
    # Execute: site-a's certificate, site-b's name and (stolen) token
    with secure_channel(mtls_server, certs, client="site-a") as channel, pytest.raises(grpc.RpcError) as err:
        _register(channel, "site-b", SITE_TOKENS["site-b"])

    # Assert
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "site-a" in (err.value.details() or "") and "site-b" in (err.value.details() or "")


def test_mtls_site_cert_cannot_use_another_site_on_metadata_authenticated_calls(
    mtls_server: CoordinatorServer, certs: Path
) -> None:
    # Prepare
    metadata = [("x-fedtune-site", "site-b"), ("authorization", f"Bearer {SITE_TOKENS['site-b']}")]

    # Execute
    with secure_channel(mtls_server, certs, client="site-a") as channel, pytest.raises(grpc.RpcError) as err:
        worker_pb2_grpc.WorkerStub(channel).PullTask(  # type: ignore[no-untyped-call]
            worker_pb2.PullTaskRequest(worker_id="w", wait_seconds=0), metadata=metadata, timeout=5
        )

    # Assert
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_mtls_still_requires_the_site_token(mtls_server: CoordinatorServer, certs: Path) -> None:
    # Execute
    with secure_channel(mtls_server, certs, client="site-a") as channel, pytest.raises(grpc.RpcError) as err:
        _register(channel, "site-a", "wrong-token")

    # Assert
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_admin_cli_status_over_mutual_tls(mtls_server: CoordinatorServer, certs: Path) -> None:
    # Prepare
    bundle = certs / "admin"
    tls = ["--tls-ca", str(bundle / "ca.pem"), "--tls-cert", str(bundle / "cert.pem")]
    tls += ["--tls-key", str(bundle / "key.pem")]
    target = f"127.0.0.1:{mtls_server.port}"

    # Execute
    ok = run_admin(target, *tls, "--json", "status", token=ADMIN_TOKEN)
    plaintext = run_admin(target, "--json", "status", token=ADMIN_TOKEN)

    # Assert
    assert ok.exit_code == 0, ok.stderr
    assert ok.json["version"]
    assert plaintext.exit_code == 4, plaintext.stderr


def test_admin_cli_rejects_a_client_cert_without_a_ca(certs: Path) -> None:
    # Execute
    key = ["--tls-key", str(certs / "admin/key.pem")]
    result = run_admin("127.0.0.1:1", "--tls-cert", str(certs / "admin/cert.pem"), *key, "status")

    # Assert
    assert result.exit_code == 2
    assert "--tls-ca" in result.stderr


def test_client_tls_needs_cert_and_key_together(certs: Path) -> None:
    with pytest.raises(Exception, match="--tls-key"):
        ClientTls.from_options(certs / "ca.pem", cert=certs / "admin/cert.pem")


def test_container_healthcheck_probes_a_mutual_tls_coordinator_with_its_own_cert(
    mtls_server: CoordinatorServer, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the coordinator container's environment (docker-compose.yml)
    from tests.deploy.test_healthcheck import probe

    bundle = certs / "coordinator"
    monkeypatch.setenv("FEDTUNE_TLS_CERT", str(bundle / "cert.pem"))
    monkeypatch.setenv("FEDTUNE_TLS_KEY", str(bundle / "key.pem"))
    monkeypatch.setenv("FEDTUNE_TLS_CLIENT_CA", str(bundle / "ca.pem"))

    # Execute / Assert
    assert probe.main(["healthcheck.py", f"127.0.0.1:{mtls_server.port}"]) == 0
