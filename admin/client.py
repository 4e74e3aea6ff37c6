"""`AdminClient`: typed methods over the Admin stub; gRPC failures become one-line `AdminError`s."""

from __future__ import annotations

import enum
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from fedtune.errors import FedtuneError
from fedtune.tls import ClientTls, looks_like_tls_failure, make_channel
from fedtune.v1 import admin_pb2, admin_pb2_grpc

MAX_MESSAGE_BYTES = 32 << 20  # 32 MiB, above the tensor stream's largest chunk

T = TypeVar("T")


class ExitCode(enum.IntEnum):
    """Process exit codes of `fedtune admin` (2 is click's usage error)."""

    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    INVALID = 5
    AUTH = 6


class AdminError(Exception):
    """A failed admin call, with a one-line message fit for stderr and the process exit code."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)


_EXIT_BY_STATUS: dict[grpc.StatusCode, ExitCode] = {
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.INVALID,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.AUTH,
}


def error_from_rpc(err: grpc.RpcError, target: str, timeout: float | None) -> AdminError:
    """One line saying what went wrong, from a gRPC status (and the details the server sent)."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else None) or ""
    details = " ".join(details.split())  # one line, whatever the server sent
    exit_code = _EXIT_BY_STATUS.get(code, ExitCode.ERROR)
    if code == grpc.StatusCode.UNAVAILABLE and looks_like_tls_failure(details):
        message = f"TLS with the coordinator at {target} failed: {details} "
        message += "(check --tls-ca, --tls-cert, --tls-key: the coordinator may require TLS or a client cert)"
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach the coordinator at {target} (is `fedtune coordinator serve` running?)"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the coordinator at {target} did not answer within {timeout:g} s (raise --timeout?)"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"the coordinator refused the admin token: {details or 'unauthenticated'} "
        message += "(set --admin-token or FEDTUNE_ADMIN_TOKEN)"
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        message = f"permission denied: {details or 'this admin token may not do that'}"
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        message = f"the coordinator at {target} does not implement this call (is it an older version?)"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("rate_limited"):
        message = f"the coordinator refused the call for now: {details}"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        message = f"message too large or server busy: {details or 'resource exhausted'}"
    elif details:
        message = details
    else:
        message = f"the coordinator answered {code.name if code else 'UNKNOWN'}"
    return AdminError(message, exit_code)


class AdminClient:
    """Typed wrapper of the Admin stub. Unary calls use `timeout`; streams (export, watch) have none.

    Use as a context manager (or call `close()`) to close the channel.
    """

    def __init__(
        self, target: str, admin_token: str | None = None, timeout: float = 30.0, tls: ClientTls | None = None
    ) -> None:
        """`tls`: verify the coordinator with its CA (and present a client cert); None = plaintext."""
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        )
        try:
            self._channel = make_channel(
                target,
                [
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
                tls,
            )
        except FedtuneError as err:
            raise AdminError(err.message, ExitCode.USAGE) from None
        self._stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------------

    def _unary(self, method: str, request: object, response_type: type[T]) -> T:
        """Call unary RPC `method` with the deadline and token; a gRPC error becomes an AdminError."""
        call: Any = getattr(self._stub, method)
        try:
            response = call(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.target, self.timeout) from None
        if not isinstance(response, response_type):
            raise AdminError(f"{method} answered a {type(response).__name__}, not a {response_type.__name__}")
        return response

    def _stream(self, method: str, request: object) -> Generator[Any, None, None]:
        """Iterate server-streaming RPC `method` (no deadline); closing the generator cancels the call."""
        call: Any = getattr(self._stub, method)(request, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.target, self.timeout) from None
        finally:
            call.cancel()

    # ---- experiments ----------------------------------------------------------------------------

    def submit_experiment(self, spec_yaml: str, start: bool = False) -> admin_pb2.Experiment:
        request = admin_pb2.SubmitExperimentRequest(spec_yaml=spec_yaml, start=start)
        return self._unary("SubmitExperiment", request, admin_pb2.Experiment)

    def list_experiments(self) -> list[admin_pb2.Experiment]:
        request = admin_pb2.ListExperimentsRequest()
        return list(self._unary("ListExperiments", request, admin_pb2.ListExperimentsResponse).experiments)

    def get_experiment(self, experiment_id: str) -> admin_pb2.Experiment:
        request = admin_pb2.ExperimentRef(experiment_id=experiment_id)
        return self._unary("GetExperiment", request, admin_pb2.Experiment)

    def start_experiment(self, experiment_id: str, reason: str = "") -> admin_pb2.Experiment:
        request = admin_pb2.ExperimentRef(experiment_id=experiment_id, reason=reason)
        return self._unary("StartExperiment", request, admin_pb2.Experiment)

    def pause_experiment(self, experiment_id: str, reason: str = "") -> admin_pb2.Experiment:
        request = admin_pb2.ExperimentRef(experiment_id=experiment_id, reason=reason)
        return self._unary("PauseExperiment", request, admin_pb2.Experiment)

    def resume_experiment(self, experiment_id: str, reason: str = "") -> admin_pb2.Experiment:
        request = admin_pb2.ExperimentRef(experiment_id=experiment_id, reason=reason)
        return self._unary("ResumeExperiment", request, admin_pb2.Experiment)

    def abort_experiment(self, experiment_id: str, reason: str = "") -> admin_pb2.Experiment:
        request = admin_pb2.ExperimentRef(experiment_id=experiment_id, reason=reason)
        return self._unary("AbortExperiment", request, admin_pb2.Experiment)

    def list_rounds(self, experiment_id: str) -> list[admin_pb2.RoundInfo]:
        """Every round of the experiment, page by page."""
        rounds: list[admin_pb2.RoundInfo] = []
        token = ""
        while True:
            request = admin_pb2.ListRoundsRequest(experiment_id=experiment_id, page_token=token)
            page = self._unary("ListRounds", request, admin_pb2.ListRoundsResponse)
            rounds.extend(page.rounds)
            token = page.next_page_token
            if not token:
                return rounds

    # ---- sites and workers ----------------------------------------------------------------------

    def add_site(self, name: str) -> admin_pb2.AddSiteResponse:
        return self._unary("AddSite", admin_pb2.AddSiteRequest(name=name), admin_pb2.AddSiteResponse)

    def list_sites(self) -> list[admin_pb2.SiteInfo]:
        return list(self._unary("ListSites", admin_pb2.ListSitesRequest(), admin_pb2.ListSitesResponse).sites)

    def revoke_site(self, name: str, reason: str = "") -> admin_pb2.RevokeSiteResponse:
        request = admin_pb2.SiteRef(name=name, reason=reason)
        return self._unary("RevokeSite", request, admin_pb2.RevokeSiteResponse)

    def rotate_site_token(self, name: str) -> admin_pb2.AddSiteResponse:
        return self._unary("RotateSiteToken", admin_pb2.SiteRef(name=name), admin_pb2.AddSiteResponse)

    def list_workers(self) -> list[admin_pb2.WorkerInfo]:
        request = admin_pb2.ListWorkersRequest()
        return list(self._unary("ListWorkers", request, admin_pb2.ListWorkersResponse).workers)

    # ---- models ---------------------------------------------------------------------------------

    def list_models(self, experiment_id: str = "") -> list[admin_pb2.ModelVersion]:
        request = admin_pb2.ListModelsRequest(experiment_id=experiment_id)
        return list(self._unary("ListModels", request, admin_pb2.ListModelsResponse).models)

    def get_model(self, version_id: str) -> admin_pb2.ModelVersion:
        return self._unary("GetModel", admin_pb2.ModelRef(version_id=version_id), admin_pb2.ModelVersion)

    def export_stream(self, version_id: str) -> Generator[admin_pb2.ExportModelResponse, None, None]:
        """The raw ExportModel stream (gRPC errors translated); `export_model` writes it to disk."""
        return self._stream("ExportModel", admin_pb2.ModelRef(version_id=version_id))

    def export_model(self, version_id: str, out_dir: Path) -> list[Path]:
        """Write model `version_id` into `out_dir` (a directory `PeftModel.from_pretrained` loads).

        Returns the files written: the safetensors file first, then the side files.
        """
        from admin.export import write_export

        model = self.get_model(version_id)
        return write_export(model.kind, self.export_stream(version_id), Path(out_dir))

    def pin_model(self, version_id: str, pinned: bool = True, reason: str = "") -> admin_pb2.ModelVersion:
        request = admin_pb2.PinModelRequest(version_id=version_id, pinned=pinned, reason=reason)
        return self._unary("PinModel", request, admin_pb2.ModelVersion)

    # ---- storage --------------------------------------------------------------------------------

    def storage_usage(self) -> admin_pb2.StorageUsage:
        return self._unary("GetStorageUsage", admin_pb2.GetStorageUsageRequest(), admin_pb2.StorageUsage)

    def collect_garbage(self, dry_run: bool = False) -> admin_pb2.CollectGarbageReport:
        request = admin_pb2.CollectGarbageRequest(dry_run=dry_run)
        return self._unary("CollectGarbage", request, admin_pb2.CollectGarbageReport)

    # ---- events and status ----------------------------------------------------------------------

    def watch_events(
        self, experiment_id: str = "", after_id: int = 0, follow: bool = True
    ) -> Generator[admin_pb2.Event, None, None]:
        """Past events after `after_id`, then (with `follow`) live ones until the generator is closed."""
        request = admin_pb2.WatchEventsRequest(experiment_id=experiment_id, after_id=after_id, follow=follow)
        return self._stream("WatchEvents", request)

    def get_status(self) -> admin_pb2.CoordinatorStatus:
        return self._unary("GetStatus", admin_pb2.GetStatusRequest(), admin_pb2.CoordinatorStatus)
