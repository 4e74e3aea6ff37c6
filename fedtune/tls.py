"""TLS for gRPC clients (worker, admin CLI): read PEM files, make a secure or plaintext channel.

TLS is on when a CA file is given (it verifies the coordinator's certificate); a client
certificate and key are added for mutual TLS. Errors name the file and the option to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedtune.errors import ErrorCode, FedtuneError


def read_pem(path: Path, what: str) -> bytes:
    """The bytes of a PEM file; INVALID_ARGUMENT naming `what` when it is missing or not PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"cannot read {what} {path}: {err.strerror}") from None
    if b"-----BEGIN " not in data:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{what} {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for TLS: the CA that signed the coordinator, optionally its own cert."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # verify the coordinator's cert for this name, not the dialled host

    @classmethod
    def from_options(
        cls,
        ca: Path | None,
        cert: Path | None = None,
        key: Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls | None:
        """None (plaintext) when no option is given; INVALID_ARGUMENT for an incomplete set."""
        if (cert is None) != (key is None):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                "a client certificate needs its key: give both --tls-cert and --tls-key",
            )
        if ca is None:
            if cert is not None or server_name:
                raise FedtuneError(
                    ErrorCode.INVALID_ARGUMENT,
                    "--tls-cert/--tls-server-name need --tls-ca (the CA that signed the coordinator)",
                )
            return None
        return cls(Path(ca), cert and Path(cert), key and Path(key), server_name or None)

    def credentials(self) -> grpc.ChannelCredentials:
        root = read_pem(self.ca, "TLS CA file")
        chain = read_pem(self.cert, "TLS client certificate") if self.cert else None
        key = read_pem(self.key, "TLS client key") if self.key else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def make_channel(target: str, options: Sequence[tuple[str, Any]], tls: ClientTls | None) -> grpc.Channel:
    """A secure channel when `tls` is given, else a plaintext one."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def looks_like_tls_failure(details: str) -> bool:
    """Whether a gRPC status detail string comes from a failed TLS handshake."""
    lowered = details.lower()
    return any(word in lowered for word in ("ssl", "handshake", "certificate", "tls"))
