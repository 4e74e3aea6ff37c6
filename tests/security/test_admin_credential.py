"""The Admin API takes an admin credential only: the admin token, or under mutual TLS an admin
certificate (`fedtune certs add-admin`); a site certificate never (decision 27)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from admin.certs import certs_group, issue
from coordinator.server import CoordinatorServer
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.admin.harness import run_admin
from tests.support.cluster import Cluster
from tests.support.tls import ADMIN_TOKEN, SITE_TOKENS, secure_channel, serve


@pytest.fixture(scope="module")
def admin_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`certs init` + `certs add-admin alice` + two look-alikes: an admin CN without the admin OU, and
    the certificate of a site named like the old admin certificate (CN "fedtune-admin")."""
    out = tmp_path_factory.mktemp("admin-certs")
    runner = CliRunner()
    for args in (
        ["init", "--out", str(out), "--coordinator-host", "coord.test", "--site", "site-a"],
        ["add-admin", "--ca-dir", str(out), "alice"],
        ["add-site", "--ca-dir", str(out), "fedtune-admin"],
    ):
        result = runner.invoke(certs_group, args)
        assert result.exit_code == 0, result.output
    ca_cert, ca_key = issue.load_ca(out)
    cert, key = issue.make_leaf(ca_cert, ca_key, "fedtune-admin:mallory", 30)  # no OU
    issue.write_bundle(issue.Bundle(out / "no-ou"), ca_cert, cert, key)
    return out


@pytest.fixture
def mtls_no_token(admin_certs: Path, data_dir: Path) -> Iterator[CoordinatorServer]:
    yield from serve(admin_certs, data_dir, mutual=True, admin_token=None)


@pytest.fixture
def mtls_with_token(admin_certs: Path, data_dir: Path) -> Iterator[CoordinatorServer]:
    yield from serve(admin_certs, data_dir, mutual=True)


@pytest.fixture
def tls_no_token(admin_certs: Path, data_dir: Path) -> Iterator[CoordinatorServer]:
    yield from serve(admin_certs, data_dir, mutual=False, admin_token=None)


def _status(
    server: CoordinatorServer, certs: Path, client: str | Path | None, token: str | None = None
) -> admin_pb2.CoordinatorStatus:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with secure_channel(server, certs, client) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        answer: admin_pb2.CoordinatorStatus = stub.GetStatus(
            admin_pb2.GetStatusRequest(), metadata=metadata, timeout=5
        )
        return answer


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_mtls_without_admin_token_refuses_a_site_certificate_on_the_admin_api(
    mtls_no_token: CoordinatorServer, admin_certs: Path
) -> None:
    # Execute: site-a's certificate, with and without its own token as bearer
    bare = _refused(lambda: _status(mtls_no_token, admin_certs, "site-a"))
    with_token = _refused(lambda: _status(mtls_no_token, admin_certs, "site-a", SITE_TOKENS["site-a"]))

    # Assert
    for err in (bare, with_token):
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'site-a') is not an admin certificate" in (err.details() or "")


@pytest.mark.parametrize("client", ["admin", "admins/alice"])
def test_mtls_without_admin_token_accepts_an_admin_certificate(
    mtls_no_token: CoordinatorServer, admin_certs: Path, client: str
) -> None:
    bundle = admin_certs / client

    assert _status(mtls_no_token, admin_certs, bundle).version


@pytest.mark.parametrize("client", ["no-ou", "sites/fedtune-admin"])
def test_mtls_refuses_look_alike_admin_certificates(
    mtls_no_token: CoordinatorServer, admin_certs: Path, client: str
) -> None:
    err = _refused(lambda: _status(mtls_no_token, admin_certs, admin_certs / client))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_cli_over_mtls_with_an_admin_certificate_needs_no_token(
    mtls_no_token: CoordinatorServer, admin_certs: Path
) -> None:
    # Prepare
    def tls(bundle: Path) -> list[str]:
        return [
            f"--tls-{k}={bundle / f}" for k, f in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem"))
        ]

    target = f"127.0.0.1:{mtls_no_token.port}"

    # Execute
    admin = run_admin(target, *tls(admin_certs / "admins/alice"), "--json", "sites", "list")
    site = run_admin(target, *tls(admin_certs / "sites/site-a"), "--json", "sites", "list")

    # Assert
    assert admin.exit_code == 0, admin.stderr
    assert [s["name"] for s in admin.json["sites"]] == ["site-a", "site-b"]
    assert site.exit_code == 6 and "not an admin certificate" in site.stderr


def test_mtls_with_admin_token_takes_the_token_or_an_admin_certificate(
    mtls_with_token: CoordinatorServer, admin_certs: Path
) -> None:
    # Execute
    site_without_token = _refused(lambda: _status(mtls_with_token, admin_certs, "site-a"))
    site_with_token = _status(mtls_with_token, admin_certs, "site-a", ADMIN_TOKEN)
    admin_without_token = _status(mtls_with_token, admin_certs, "admin")

    # Assert
    assert site_without_token.code() == grpc.StatusCode.UNAUTHENTICATED
    assert site_with_token.version and admin_without_token.version


def test_tls_without_admin_token_closes_the_admin_api_but_not_the_worker_api(
    tls_no_token: CoordinatorServer, admin_certs: Path
) -> None:
    # Execute
    err = _refused(lambda: _status(tls_no_token, admin_certs, None))
    with secure_channel(tls_no_token, admin_certs) as channel:
        registered = worker_pb2_grpc.WorkerStub(channel).Register(  # type: ignore[no-untyped-call]
            worker_pb2.RegisterRequest(site="site-a", token=SITE_TOKENS["site-a"]), timeout=5
        )

    # Assert
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "Admin API is closed" in (err.details() or "")
    assert registered.worker_id


def test_plaintext_without_admin_token_stays_open_for_local_trials(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(admin_token=None)

    assert cluster.admin(token=None).GetStatus(admin_pb2.GetStatusRequest()).version


@pytest.mark.parametrize(
    ("mutual", "token", "level", "text"),
    [
        (True, None, logging.INFO, "admin credential: an admin certificate"),
        (True, ADMIN_TOKEN, logging.INFO, "admin credential: the admin token or an admin certificate"),
        (False, None, logging.ERROR, "admin credential: none accepted"),
    ],
)
def test_coordinator_logs_the_admin_credential_in_force_at_start(
    admin_certs: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mutual: bool,
    token: str | None,
    level: int,
    text: str,
) -> None:
    # Execute
    caplog.set_level(logging.INFO, logger="fedtune.coordinator")
    for _ in serve(admin_certs, tmp_path, mutual=mutual, admin_token=token):
        pass

    # Assert
    assert [r.levelno for r in caplog.records if r.getMessage().startswith(text)] == [level]


def test_certs_add_admin_marks_the_certificate_and_checks_the_name(admin_certs: Path) -> None:
    # Execute
    cert = x509.load_pem_x509_certificate((admin_certs / "admins/alice/cert.pem").read_bytes())
    bad = CliRunner().invoke(certs_group, ["add-admin", "--ca-dir", str(admin_certs), "Alice:root"])
    again = CliRunner().invoke(certs_group, ["add-admin", "--ca-dir", str(admin_certs), "alice"])

    # Assert
    subject = cert.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["fedtune-admin:alice"]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)] == [
        "fedtune-admin"
    ]
    assert bad.exit_code != 0 and "bad admin name" in bad.output
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
