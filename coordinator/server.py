"""The gRPC server: Worker + Admin services, health, reflection, and the scheduler thread."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.admin_servicer import AdminServicer
from coordinator.bootstrap import Services, bootstrap
from coordinator.clock import Clock
from coordinator.settings import CoordinatorSettings
from coordinator.worker_servicer import WorkerServicer
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tls import read_pem
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc

log = logging.getLogger("fedtune.coordinator.server")

MAX_MESSAGE_BYTES = 32 << 20
MAX_WORKERS = 64  # long-polls hold a thread each


class CoordinatorServer:
    def __init__(self, server: grpc.Server, services: Services, port: int, host: str) -> None:
        self._server = server
        self.services = services
        self.port = port
        self.host = host
        self._stop_scheduler = threading.Event()
        self._scheduler_thread = threading.Thread(
            target=services.scheduler.run, args=(self._stop_scheduler,), name="fedtune-scheduler", daemon=True
        )
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _start(self) -> None:
        self._server.start()
        self._scheduler_thread.start()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, give running ones `grace` seconds, stop the scheduler, close the DB."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stop_scheduler.set()
            self.services.notifier.close()  # wakes long-polls and watchers
            self._server.stop(grace).wait()
            self._scheduler_thread.join(timeout=10)
            self.services.close()
            self._stopped.set()
        log.info("coordinator stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True if it did within `timeout`."""
        return self._stopped.wait(timeout)


def start_server(
    settings: CoordinatorSettings, *, services: Services | None = None, clock: Clock | None = None
) -> CoordinatorServer:
    credentials = server_credentials(settings)  # bad TLS files fail before anything is opened
    services = services or bootstrap(settings, clock=clock)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="fedtune-rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        maximum_concurrent_rpcs=MAX_WORKERS * 4,
    )
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(services), server)  # type: ignore[no-untyped-call]
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(services), server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [
        worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        services.close()
        raise FedtuneError(ErrorCode.UNAVAILABLE, f"cannot listen on {settings.host}:{settings.port}")
    for name in ["", *names[:2]]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    coordinator = CoordinatorServer(server, services, port, settings.host)
    coordinator._start()
    log.info(
        "coordinator listening",
        extra={"address": coordinator.address, "data_dir": str(settings.data_dir), "tls": settings.tls_mode},
    )
    if settings.tls_mode == "plaintext":
        log.warning(
            "serving PLAINTEXT gRPC: tokens and model updates cross the network unencrypted; "
            "set tls_cert/tls_key/tls_client_ca (see `fedtune certs init`) outside a private network"
        )
    elif settings.tls_mode == "tls":
        log.warning("serving TLS without client certificates; set tls_client_ca for mutual TLS")
    else:
        log.info("serving mutual TLS: workers must present their site's certificate (CN = site name)")
    return coordinator


def server_credentials(settings: CoordinatorSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (
        read_pem(settings.tls_key, "TLS key (tls_key)"),
        read_pem(settings.tls_cert, "TLS cert (tls_cert)"),
    )
    if settings.tls_client_ca is None:
        return grpc.ssl_server_credentials([pair])
    client_ca = read_pem(settings.tls_client_ca, "TLS client CA (tls_client_ca)")
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=True)
