"""docker/: the compose file, the Prometheus configuration, the image and its build context.

``docker compose config`` (or docker-compose) validates the file where one is installed. The
other tests need no Docker: they read the files with PyYAML and check what a working deployment
needs: data on volumes, a fixed KRaft cluster id, the topics
created before the tandem processes start, a memory limit on Redis, a health check on every
service, the three-broker profile, and metrics that Prometheus can reach.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tandem.contracts import topics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
CLUSTER_ENV = DOCKER / "cluster.env"
PROMETHEUS = DOCKER / "prometheus.yml"
GRAFANA_DATASOURCES = DOCKER / "grafana" / "datasources.yml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TANDEM_IMAGE = "tandem:local"
BASE_TOPICS = (topics.EVENTS, topics.VERSIONS, topics.DLQ, topics.IMPRESSIONS, topics.HIDDEN)


def read_yaml(text: str) -> object:
    """One YAML document (PyYAML's safe loader)."""
    return yaml.safe_load(text)


# --- typed access ----------------------------------------------------------------------------


def _map(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return value


def _list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


def _strs(value: object) -> list[str]:
    items = _list(value)
    assert all(isinstance(item, str) for item in items), items
    return [str(item) for item in items]


def _str(value: object) -> str:
    assert isinstance(value, str), value
    return value


def _default(value: str) -> str:
    """The value compose uses when the variable is unset: ``${NAME:-default}`` -> ``default``."""
    found = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    return found.group(1) if found else value


def _option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def _compose() -> dict[str, object]:
    return _map(read_yaml(COMPOSE.read_text()))


def _services() -> dict[str, dict[str, object]]:
    return {name: _map(body) for name, body in _map(_compose()["services"]).items()}


def _env(service: dict[str, object]) -> dict[str, str]:
    return {key: _str(value) for key, value in _map(service.get("environment", {})).items()}


def _named_volume_at(service: dict[str, object], target: str) -> str:
    """The named volume mounted at ``target`` (declared at the top level), else fail."""
    for volume in _strs(service.get("volumes", [])):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            assert source in _map(_compose()["volumes"]), f"{source} is not a named volume"
            return source
    raise AssertionError(f"nothing is mounted at {target}")


def _tandem_services() -> dict[str, dict[str, object]]:
    return {n: s for n, s in _services().items() if s.get("image") == TANDEM_IMAGE}


def _one_shot(service: dict[str, object]) -> bool:
    return service.get("restart") == "no"


def _cluster_brokers() -> dict[str, dict[str, object]]:
    return {
        name: service
        for name, service in _services().items()
        if "cluster" in _strs(service.get("profiles", []))
    }


def _cluster_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in CLUSTER_ENV.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


# --- docker compose config -------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    """The compose command this machine has: the docker plugin, or docker-compose."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


@pytest.mark.skipif(
    _compose_command() is None, reason="neither docker compose nor docker-compose here"
)
@pytest.mark.parametrize(
    "options",
    [[], ["--profile", "batch"], ["--env-file", str(CLUSTER_ENV), "--profile", "cluster"]],
    ids=["default", "batch", "cluster"],
)
def test_compose_config_is_valid(options: list[str]) -> None:
    command = _compose_command()
    assert command is not None
    env = {**os.environ, "TANDEM_ADMIN_TOKEN": "example"}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), *options, "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- the compose file ------------------------------------------------------------------------


def test_docker_compose_1_29_can_read_it() -> None:
    assert "name" not in _compose(), "a top-level name: is refused by docker-compose 1.29"


def test_every_process_is_wired_through_the_environment() -> None:
    services = _tandem_services()
    assert set(services) >= {"api", "materializer", "worker", "guard", "batch"}
    for name, service in services.items():
        env = _env(service)
        for variable in ("TANDEM_KAFKA", "TANDEM_REDIS_URL", "TANDEM_REPLICATION_FACTOR"):
            assert env.get(variable), f"{name}: {variable}"
        assert env["TANDEM_ADMIN_TOKEN"].startswith("${TANDEM_ADMIN_TOKEN:?"), name


def test_every_service_has_a_health_check() -> None:
    for name, service in _services().items():
        check = _map(service.get("healthcheck"))
        if _one_shot(service):  # judged by its exit code, and not left with the image's probe
            assert check == {"disable": True}, name
            continue
        assert check.get("disable") is not True, name
        test = _strs(check["test"])
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        for timing in ("interval", "timeout", "retries"):
            assert timing in check, f"{name}: {timing}"


def test_tandem_health_checks_probe_the_port_the_process_serves() -> None:
    services = _tandem_services()
    api_port = _option(_strs(services["api"]["command"]), "--port")
    expected = {
        "api": f"127.0.0.1:{api_port}/healthz",
        "materializer": "127.0.0.1:{}/metrics",
        "worker": "127.0.0.1:{}/metrics",
        "guard": "127.0.0.1:{}/metrics",
    }
    for name, pattern in expected.items():
        command = _strs(services[name]["command"])
        url = pattern.format(_option(command, "--metrics-port")) if "{}" in pattern else pattern
        probe = " ".join(_strs(_map(services[name]["healthcheck"])["test"]))
        assert url in probe, f"{name}: {probe}"


def test_kafka_keeps_its_data_on_the_volume_under_a_fixed_cluster_id() -> None:
    brokers = {"kafka": _services()["kafka"], **_cluster_brokers()}
    for name, broker in brokers.items():
        env = _env(broker)
        _named_volume_at(broker, env["KAFKA_LOG_DIRS"])
        cluster_id = _default(env["CLUSTER_ID"])
        raw = base64.urlsafe_b64decode(cluster_id + "==")
        assert len(cluster_id) == 22 and len(raw) == 16, f"{name}: {cluster_id} is not a UUID"
        assert uuid.UUID(bytes=raw).int != 0, name
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        host = env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://").split(":")[0]
        assert host == name, f"{name} advertises {host}"
    sources = [_named_volume_at(b, _env(b)["KAFKA_LOG_DIRS"]) for b in brokers.values()]
    assert len(set(sources)) == len(sources), "two brokers share a volume"


def test_the_cluster_profile_has_three_combined_brokers_of_one_cluster() -> None:
    brokers = _cluster_brokers()
    assert len(brokers) == 3, sorted(brokers)
    envs = {name: _env(broker) for name, broker in brokers.items()}
    voters = {
        (int(node), host, int(port))
        for env in envs.values()
        for node, host, port in re.findall(
            r"(\d+)@([\w-]+):(\d+)", env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        )
    }
    controller_port = {
        int(re.findall(r"CONTROLLER://[^:]*:(\d+)", env["KAFKA_LISTENERS"])[0])
        for env in envs.values()
    }
    assert len(controller_port) == 1
    assert voters == {
        (int(env["KAFKA_NODE_ID"]), name, *controller_port) for name, env in envs.items()
    }
    assert {int(env["KAFKA_NODE_ID"]) for env in envs.values()} == {1, 2, 3}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    for name, env in envs.items():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
    # The tandem services point at them through docker/cluster.env.
    cluster = _cluster_env()
    advertised = {
        env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://") for env in envs.values()
    }
    assert set(cluster["KAFKA_BOOTSTRAP"].split(",")) == advertised
    assert cluster["KAFKA_REPLICATION_FACTOR"] == "3"
    for name, service in _tandem_services().items():
        env = _env(service)
        assert env["TANDEM_KAFKA"].startswith("${KAFKA_BOOTSTRAP:-"), name
        assert env["TANDEM_REPLICATION_FACTOR"].startswith("${KAFKA_REPLICATION_FACTOR:-"), name


def test_a_job_creates_the_topics_before_the_tandem_services_start() -> None:
    services = _services()
    topics = services["topics"]
    assert _one_shot(topics)
    script = "\n".join(_strs(topics["command"]))
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--if-not-exists" in script
    for topic in BASE_TOPICS:
        assert f"--topic {topic}" in script, topic
    assert "tandem.versions --partitions 1 --config cleanup.policy=compact" in script
    assert "tandem.hidden --partitions 1 --config cleanup.policy=compact" in script
    # It reads the same settings as the tandem services...
    env, tandem_env = _env(topics), _env(services["api"])
    assert env["BOOTSTRAP"] == tandem_env["TANDEM_KAFKA"]
    assert env["REPLICATION_FACTOR"] == tandem_env["TANDEM_REPLICATION_FACTOR"]
    assert env["EVENTS_PARTITIONS"] == tandem_env["TANDEM_EVENTS_PARTITIONS"]
    for variable in ("BOOTSTRAP", "REPLICATION_FACTOR", "EVENTS_PARTITIONS"):
        assert f'"$${variable}"' in script, variable  # $$: compose leaves it to the shell
    # ...and waits for the brokers itself: nothing depends on a broker service, so the same
    # services run with either Kafka (and `--scale kafka=0` leaves the single broker out).
    brokers = {"kafka", *_cluster_brokers()}
    for name, service in services.items():
        assert not brokers & set(_map(service.get("depends_on", {}))), name
    for name, service in _tandem_services().items():
        depends = _map(service["depends_on"])
        assert _map(depends["topics"]) == {"condition": "service_completed_successfully"}, name
        assert _map(depends["redis"]) == {"condition": "service_healthy"}, name


def test_redis_has_a_memory_limit_and_keeps_its_data() -> None:
    redis = _services()["redis"]
    command = _strs(redis["command"])
    assert command[0] == "redis-server"
    assert re.fullmatch(r"\d+[kmg]b", _default(_option(command, "--maxmemory")))
    assert _default(_option(command, "--maxmemory-policy"))
    assert _option(command, "--appendonly") == "yes"
    _named_volume_at(redis, "/data")


def test_metrics_ports_are_reachable_from_other_containers() -> None:
    services = _tandem_services()
    for name in ("materializer", "worker", "guard"):
        port = _option(_strs(services[name]["command"]), "--metrics-port")
        assert _env(services[name])["TANDEM_METRICS_HOST"] == "0.0.0.0", name
        assert port in _strs(services[name].get("expose", [])), name
    assert _option(_strs(services["api"]["command"]), "--host") == "0.0.0.0"


def _scrape_targets() -> Iterator[tuple[str, int, str]]:
    """(host, port, metrics path) of every target in docker/prometheus.yml."""
    for entry in _list(_map(read_yaml(PROMETHEUS.read_text()))["scrape_configs"]):
        job = _map(entry)
        path = _str(job.get("metrics_path", "/metrics"))
        for sd_entry in _list(job.get("dns_sd_configs", [])):
            sd = _map(sd_entry)
            assert sd["type"] == "A"
            for host in _strs(sd["names"]):
                yield host, int(str(sd["port"])), path
        for static in _list(job.get("static_configs", [])):
            for target in _strs(_map(static)["targets"]):
                host, _, port = target.rpartition(":")
                yield host, int(port), path


def test_prometheus_scrapes_every_long_running_tandem_process() -> None:
    services = _services()
    expected = {
        ("api", int(_option(_strs(services["api"]["command"]), "--port")), "/metrics"),
        *(
            (name, int(_option(_strs(services[name]["command"]), "--metrics-port")), "/metrics")
            for name in ("materializer", "worker", "guard")
        ),
    }
    assert expected <= set(_scrape_targets())
    prometheus = services["prometheus"]
    config = _option(
        [part for arg in _strs(prometheus["command"]) for part in arg.split("=", 1)],
        "--config.file",
    )
    assert f"./prometheus.yml:{config}:ro" in _strs(prometheus["volumes"])
    _named_volume_at(prometheus, "/prometheus")


def test_grafana_reads_from_prometheus() -> None:
    grafana = _services()["grafana"]
    mounted = [v for v in _strs(grafana["volumes"]) if v.startswith("./grafana/datasources.yml:")]
    assert mounted and ":/etc/grafana/provisioning/datasources/" in mounted[0]
    sources = _list(_map(read_yaml(GRAFANA_DATASOURCES.read_text()))["datasources"])
    assert [_map(s)["url"] for s in sources] == ["http://prometheus:9090"]
    assert "prometheus" in _map(grafana["depends_on"])


# --- the image -------------------------------------------------------------------------------


def test_the_image_has_a_health_check() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert any(line.startswith("ENV HEALTHCHECK_URL=") for line in lines)


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything is left out first, then what the image needs"
    kept = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert kept == copied
    assert not kept & {".venv", ".state", ".git", "data", "docker"}
