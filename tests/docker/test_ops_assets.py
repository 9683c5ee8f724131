"""docker/alerts.yml, its unit tests, the Prometheus configuration and the Grafana dashboard.

promtool (Debian's ``prometheus`` package; ``make services-prereq`` installs it as root) checks
the rules and runs docker/alerts.test.yml, where each alert fires on the series that should
trigger it. Every metric the rules and the dashboard query must be one a tandem process exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tandem.api.metrics import REGISTRY as API
from tandem.consumers.metrics import REGISTRY as MATERIALIZER
from tandem.streams.metrics import REGISTRY as WORKER

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
ALERTS = DOCKER / "alerts.yml"
ALERT_TESTS = DOCKER / "alerts.test.yml"
PROMETHEUS = DOCKER / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "tandem-dashboard.json"
PROVIDERS = DOCKER / "grafana" / "dashboards.yml"
COMPOSE = DOCKER / "compose.yaml"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None and shutil.which("apt-get") is None:
        pytest.skip("promtool is not installed and this is not a Debian system")
    assert found is not None, "promtool is missing: `make services-prereq` installs it (as root)"
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=DOCKER
    )


def test_promtool_accepts_the_rules() -> None:
    result = run("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr)


def test_each_alert_fires_when_it_should() -> None:
    result = run("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load(COMPOSE.read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]  # where compose mounts it, here
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def exported(*registries: CollectorRegistry) -> set[str]:
    """Every sample name the registries can export."""
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def queried(text: str) -> set[str]:
    return set(re.findall(r"\btandem_[a-z0-9_]+", text)) - {"tandem_api_", "tandem_worker_"}


def test_rules_and_dashboard_query_only_exported_metrics() -> None:
    known = exported(API, MATERIALIZER, WORKER)
    alerts = yaml.safe_load(ALERTS.read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = set().union(*(queried(expr) for expr in exprs))
    assert names, "no tandem metric queried"
    assert names - known == set()
    # What an operator needs first is on the dashboard.
    for needed in (
        "tandem_api_request_seconds_bucket",
        "tandem_api_degraded_total",
        "tandem_store_live_version_info",
        "tandem_store_live_version_published_timestamp_seconds",
        "tandem_materializer_consumer_lag",
        "tandem_worker_event_age_seconds_bucket",
    ):
        assert any(needed in t["expr"] for p in dashboard["panels"] for t in p["targets"]), needed


def test_the_dashboard_is_provisioned_and_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']} overlaps another"
        assert pos["x"] + pos["w"] <= 24
        cells |= area
        assert [t["refId"] for t in panel["targets"]], panel["title"]
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    volumes = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["volumes"]
    mounted = [v.split(":")[1] for v in volumes if v.startswith("./grafana/tandem-dashboard.json:")]
    assert mounted and Path(mounted[0]).parent == Path(provider["options"]["path"])
    assert any(
        v.startswith("./grafana/dashboards.yml:/etc/grafana/provisioning/dashboards/")
        for v in volumes
    )
