"""A Prometheus scrape endpoint for one registry: the coordinator's and the worker's (docs/decisions.md 32).

Each process serves its *own* ``CollectorRegistry`` (never prometheus-client's global default), so
several coordinators or workers in one test process do not collide. The endpoint is plain HTTP on a
thread of its own (prometheus-client's WSGI server); it is off unless a port is set, and binds to
loopback unless a host is set. Any path answers with the metrics text (``/metrics`` by convention).
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from fedtune.errors import ErrorCode, FedtuneError

log = logging.getLogger("fedtune.metrics")

STOP_TIMEOUT_SECONDS = 5.0


class MetricsEndpoint:
    """A running scrape endpoint: ``.port`` (the bound one, also when 0 was asked) and ``.close()``."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = int(server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)


def serve_metrics(registry: CollectorRegistry, host: str, port: int, *, setting: str) -> MetricsEndpoint:
    """Serve `registry` on http://host:port/metrics (port 0: a free one); `setting` names the option
    to change in the error when the address cannot be bound."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"cannot serve metrics on {host}:{port} ({err.strerror or err}); choose another {setting} "
            "or leave it unset to turn the metrics endpoint off",
        ) from None
    endpoint = MetricsEndpoint(server, thread, host)
    log.info("serving Prometheus metrics on %s", endpoint.url)
    return endpoint
