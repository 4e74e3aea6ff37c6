"""Monitoring in docker/: the Grafana dashboard and the Prometheus scrape config, checked statically
against the metrics the code exposes and the compose services that serve them (no Docker engine)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from coordinator.metrics import CoordinatorMetrics
from tests.deploy.helpers import DOCKER_DIR, ENV_EXAMPLE, environment_of, load_compose, read_env_file
from tests.support.scrape import metric_names
from worker.metrics import WorkerMetrics

DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "fedtune.json"
DATASOURCES = DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "fedtune.yml"
PROMETHEUS_CONFIG = DOCKER_DIR / "prometheus" / "prometheus.yml"
SERVICES: dict[str, dict[str, Any]] = load_compose(read_env_file(ENV_EXAMPLE))["services"]
METRIC_NAME = re.compile(r"\b(?:fedtune|process)_[a-z0-9_]+\b")


def _exposed_names() -> set[str]:
    coordinator = CoordinatorMetrics()
    coordinator.watch_registry(lambda: {"open": 1}, lambda: [], lambda: 0.0)
    coordinator.watch_calls(lambda kind: 0)
    return metric_names([coordinator.registry, WorkerMetrics("site-a", "test").registry])


def _targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return list(panel.get("targets", []))


def test_the_dashboard_loads_and_queries_only_metrics_the_code_exposes() -> None:
    # Prepare
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = _exposed_names()

    # Execute
    panels = dashboard["panels"]
    queried = {
        name for panel in panels for target in _targets(panel) for name in METRIC_NAME.findall(target["expr"])
    }

    # Assert: a dashboard Grafana can load, every panel queries something, no query names a metric
    # that neither the coordinator nor the worker exposes (a rename shows up here, not as empty panels)
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert _targets(panel), f"panel {panel['title']!r} queries nothing"
    assert queried, "the dashboard queries no metric"
    assert sorted(queried - exposed) == []
    # the main signals of issue 13's operations list are on it
    for name in (
        "fedtune_rounds",
        "fedtune_updates_total",
        "fedtune_bytes_received_total",
        "fedtune_bytes_sent_total",
        "fedtune_fold_seconds_bucket",
        "fedtune_commit_seconds_bucket",
        "fedtune_site_lag_seconds",
        "fedtune_rpc_errors_total",
        "fedtune_open_streams",
        "fedtune_worker_tasks_total",
        "fedtune_worker_peak_rss_bytes",
    ):
        assert name in queried, name


def test_the_dashboard_uses_the_provisioned_prometheus_datasource() -> None:
    # Prepare
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    grafana_mounts = dict(str(v).split(":")[1::-1] for v in SERVICES["grafana"]["volumes"])

    # Assert
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        for target in _targets(panel):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_prometheus_scrapes_every_fedtune_service_on_its_metrics_port() -> None:
    # Prepare
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    scraped = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    serving = {name: environment_of(service) for name, service in SERVICES.items()}
    serving = {name: env for name, env in serving.items() if "FEDTUNE_METRICS_PORT" in env}
    prometheus_mounts = dict(str(v).split(":")[1::-1] for v in SERVICES["prometheus"]["volumes"])

    # Assert: the coordinator and both workers serve metrics, on all interfaces of the compose
    # network, and Prometheus scrapes exactly them
    assert {"coordinator", "worker-site-a", "worker-site-b"} <= set(serving)
    assert all(env.get("FEDTUNE_METRICS_HOST") == "0.0.0.0" for env in serving.values())
    assert scraped == {f"{name}:{env['FEDTUNE_METRICS_PORT']}" for name, env in serving.items()}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"


def test_monitoring_services_start_only_with_their_profile() -> None:
    # Assert: a plain `docker compose up` (and the compose smoke test) needs no monitoring image
    for name in ("prometheus", "grafana"):
        assert SERVICES[name].get("profiles") == ["monitoring"], name
        assert "build" not in SERVICES[name]
    for name in ("coordinator", "worker-site-a", "worker-site-b"):
        published = [str(port) for port in SERVICES[name].get("ports", [])]
        assert not any("9464" in port for port in published), f"{name} publishes its metrics on the host"
