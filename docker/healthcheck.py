"""Container health probe: asks a gRPC server's standard health service (grpc.health.v1) whether it serves.

Usage: python healthcheck.py [HOST:PORT] [SERVICE]   (defaults: 127.0.0.1:50051, "" = the whole server)
Exit 0 when the answer is SERVING, 1 otherwise (the Docker HEALTHCHECK convention).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(target) as channel:
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
