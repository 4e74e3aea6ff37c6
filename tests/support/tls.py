"""Coordinators serving TLS or mutual TLS from a certs folder made by the real `fedtune certs init`,
and channels to them. The fixtures (`certs`, `tls_server`, `mtls_server`) are in tests/security/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
from click.testing import CliRunner

from admin.certs import certs_group
from coordinator.server import CoordinatorServer, start_server
from coordinator.settings import CoordinatorSettings
from tests.support.cluster import ADMIN_TOKEN

__all__ = ["ADMIN_TOKEN", "SITE_TOKENS", "make_certs", "secure_channel", "serve"]

SITE_TOKENS = {"site-a": "token-a", "site-b": "token-b"}


def make_certs(out: Path) -> Path:
    """CA + coordinator (host `coord.test`) + admin + site-a + site-b under `out`."""
    args = ["init", "--out", str(out), "--coordinator-host", "coord.test"]
    for site in SITE_TOKENS:
        args += ["--site", site]
    result = CliRunner().invoke(certs_group, args)
    assert result.exit_code == 0, result.output
    return out


def serve(
    certs: Path, data_dir: Path, mutual: bool, admin_token: str | None = ADMIN_TOKEN
) -> Iterator[CoordinatorServer]:
    bundle = certs / "coordinator"
    settings = CoordinatorSettings(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        admin_token=admin_token,
        sites=",".join(f"{name}:{token}" for name, token in SITE_TOKENS.items()),
        max_pull_wait_seconds=1.0,
        tls_cert=bundle / "cert.pem",
        tls_key=bundle / "key.pem",
        tls_client_ca=bundle / "ca.pem" if mutual else None,
    )
    server = start_server(settings)
    try:
        yield server
    finally:
        server.stop(0)


def secure_channel(server: CoordinatorServer, certs: Path, client: str | Path | None = None) -> grpc.Channel:
    """A TLS channel trusting the CA; `client` = "admin", a site name or a bundle folder presents that
    party's cert."""
    ca = (certs / "ca.pem").read_bytes()
    if client is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        if isinstance(client, Path):
            bundle = client
        else:
            bundle = certs / "admin" if client == "admin" else certs / "sites" / client
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(bundle / "key.pem").read_bytes(),
            certificate_chain=(bundle / "cert.pem").read_bytes(),
        )
    return grpc.secure_channel(f"127.0.0.1:{server.port}", credentials)
