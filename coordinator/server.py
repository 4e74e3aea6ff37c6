"""The gRPC server: Worker + Admin services, health, reflection, and the scheduler thread."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.admin_servicer import AdminServicer
from coordinator.blocking import BlockingPool
from coordinator.bootstrap import Services, bootstrap
from coordinator.clock import Clock
from coordinator.settings import CoordinatorSettings
from coordinator.worker_servicer import WorkerServicer
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.metrics_http import MetricsEndpoint, serve_metrics
from fedtune.tls import read_pem
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc

log = logging.getLogger("fedtune.coordinator.server")

MAX_MESSAGE_BYTES = 32 << 20
START_TIMEOUT_SECONDS = 30.0


class CoordinatorServer:
    """A running coordinator: the asyncio gRPC server on its own event-loop thread, and the scheduler.

    Capacity is not a thread count (docs/decisions.md 28): every open call lives on the event loop;
    threads are taken only for database and disk work, from pools of fixed size.
    """

    def __init__(self, services: Services, host: str) -> None:
        self.services = services
        self.host = host
        self.port = 0
        settings = services.settings
        self.worker_pool = BlockingPool(settings.rpc_threads, "fedtune-rpc")
        self.admin_pool = BlockingPool(settings.admin_threads, "fedtune-admin")
        self.worker_servicer = WorkerServicer(services, self.worker_pool)
        services.metrics.watch_calls(self.worker_servicer.limits.open_calls)
        self.metrics: MetricsEndpoint | None = None  # the Prometheus endpoint, when metrics_port is set
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._loop_thread = threading.Thread(target=self._run_loop, name="fedtune-grpc", daemon=True)
        self._stop_scheduler = threading.Event()
        self._scheduler_thread = threading.Thread(
            target=services.scheduler.run, args=(self._stop_scheduler,), name="fedtune-scheduler", daemon=True
        )
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _start(self, credentials: grpc.ServerCredentials | None) -> None:
        self._loop_thread.start()
        started = asyncio.run_coroutine_threadsafe(self._serve(credentials), self._loop)
        try:
            self.port = started.result(timeout=START_TIMEOUT_SECONDS)
            settings = self.services.settings
            if settings.metrics_port is not None:
                self.metrics = serve_metrics(
                    self.services.metrics.registry,
                    settings.metrics_host,
                    settings.metrics_port,
                    setting="metrics_port",
                )
        except BaseException:
            self._stop_grpc(0)
            self._close_loop()
            raise
        self._scheduler_thread.start()

    async def _serve(self, credentials: grpc.ServerCredentials | None) -> int:
        settings = self.services.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        worker_pb2_grpc.add_WorkerServicer_to_server(self.worker_servicer, server)  # type: ignore[no-untyped-call]
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.services, self.admin_pool), server)  # type: ignore[no-untyped-call]
        health_servicer = health.aio.HealthServicer()
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
            raise FedtuneError(ErrorCode.UNAVAILABLE, f"cannot listen on {settings.host}:{settings.port}")
        await server.start()
        for name in ["", *names[:2]]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        return int(port)

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, give running ones `grace` seconds, stop the scheduler, close the DB."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stop_scheduler.set()
            self.services.notifier.close()  # wakes long-polls and watchers
            self._stop_grpc(grace)
            if self.metrics is not None:
                self.metrics.close()
            self._scheduler_thread.join(timeout=10)
            self._close_loop()
            self.worker_pool.shutdown()
            self.admin_pool.shutdown()
            self.services.close()
            self._stopped.set()
        log.info("coordinator stopped")

    def _stop_grpc(self, grace: float | None) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True if it did within `timeout`."""
        return self._stopped.wait(timeout)


def start_server(
    settings: CoordinatorSettings, *, services: Services | None = None, clock: Clock | None = None
) -> CoordinatorServer:
    credentials = server_credentials(settings)  # bad TLS files fail before anything is opened
    services = services or bootstrap(settings, clock=clock)
    coordinator = CoordinatorServer(services, settings.host)
    try:
        coordinator._start(credentials)
    except BaseException:
        services.close()
        raise
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
