"""Container health probe: asks a gRPC server's standard health service (grpc.health.v1) whether it serves.

Usage: python healthcheck.py [HOST:PORT] [SERVICE]   (defaults: 127.0.0.1:50051, "" = the whole server)
Exit 0 when the answer is SERVING, 1 otherwise (the Docker HEALTHCHECK convention).

Inside the coordinator container it dials the way the coordinator serves: TLS when FEDTUNE_TLS_CERT
is set, trusting FEDTUNE_TLS_CLIENT_CA (the one CA of a `fedtune certs` install) and, under mutual
TLS, presenting the coordinator's own certificate (made for both server and client auth).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(name: str) -> bytes | None:
    path = os.environ.get(name, "")
    return Path(path).read_bytes() if path else None


def channel_for(target: str) -> grpc.Channel:
    cert = _read("FEDTUNE_TLS_CERT")
    if cert is None:
        return grpc.insecure_channel(target)
    ca = _read("FEDTUNE_TLS_CLIENT_CA")
    key = _read("FEDTUNE_TLS_KEY") if ca is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert if key is not None else None
    )
    return grpc.secure_channel(target, credentials)


def check(target: str, service: str = "", timeout: float = 3.0) -> bool:
    try:
        channel = channel_for(target)
    except OSError as err:
        print(f"unhealthy: cannot read a TLS file: {err}", file=sys.stderr)
        return False
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as err:
            print(f"unhealthy: {target}: {err.code().name}", file=sys.stderr)
            return False
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        print(
            f"unhealthy: {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}",
            file=sys.stderr,
        )
        return False
    return True


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else "127.0.0.1:50051"
    service = argv[2] if len(argv) > 2 else ""
    return 0 if check(target, service) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
