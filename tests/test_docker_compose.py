"""docker-compose.yml cannot run here (no Docker engine), so it is parsed and checked."""

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from adstream.settings import Settings
from cli.main import COMMANDS, load_command

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_SERVICES = {
    "kafka",
    "shared-store",
    "spark-master",
    "spark-worker",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "mlflow",
    "postgres",
    "minio",
    "auction-service",
    "streaming-job",
}
ONE_SHOT = {"airflow-init", "minio-init"}
# Variables read by third-party code in project images, not by AdStream's settings.
THIRD_PARTY_ENV = {"MLFLOW_S3_ENDPOINT_URL"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def raw_compose() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def test_the_whole_stack_is_there(compose):
    assert set(compose["services"]) >= REQUIRED_SERVICES
    assert not any("zookeeper" in name for name in compose["services"])


def test_kafka_runs_in_kraft_mode_on_the_pinned_broker_version(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    pom = (ROOT / "infra/maven/pom.xml").read_text()
    broker_version = re.search(r"<kafka.broker.version>(.+?)<", pom).group(1)
    assert kafka["image"] == f"apache/kafka:{broker_version}"


def test_images_match_the_python_pins(compose):
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.sub(r"\[.*\]", "", dep).split("==") for dep in dependencies)
    spark_image = compose["services"]["spark-master"]["image"]
    assert spark_image.startswith(f"apache/spark:{pins['pyspark']}-")
    assert compose["services"]["spark-worker"]["image"] == spark_image
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"FROM apache/airflow:{pins['apache-airflow']}-python3.11 AS airflow" in dockerfile


def test_every_long_running_service_has_a_healthcheck_and_waits_on_conditions(compose):
    for name, service in compose["services"].items():
        if name not in ONE_SHOT:
            assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}, (name, dependency)
            if dependency not in ONE_SHOT:
                assert rule["condition"] == "service_healthy", (name, dependency)


def test_every_long_running_service_restarts_after_a_crash(compose):
    for name, service in compose["services"].items():
        if name not in ONE_SHOT:
            assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, f"{name} has no restart policy"


def test_no_image_floats_on_latest(compose):
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image!r})"


def test_project_services_pass_only_real_settings(compose):
    settings_env = {name.upper() for name in Settings.model_fields}
    built = {name: s for name, s in compose["services"].items() if "build" in s}
    assert {"auction-service", "streaming-job", "airflow-scheduler"} <= set(built)
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, service in built.items():
        assert f" AS {service['build']['target']}" in dockerfile, f"{name}: no Dockerfile target"
        for variable in service.get("environment", {}):
            if variable.startswith("AIRFLOW__") or variable in THIRD_PARTY_ENV:
                continue
            assert variable in settings_env, f"{name} passes {variable}, which no setting reads"


def test_secrets_must_come_from_the_environment(raw_compose, compose):
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if any(word in variable for word in ("PASSWORD", "SECRET")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}.{variable} must be ${{VAR:?…}}"
    # Connection strings embed the password through the same required variable.
    for url in re.findall(r"postgresql\+\w+://[^\s\"]+", raw_compose):
        assert "${POSTGRES_PASSWORD:?" in url, url
    example = (ROOT / ".env.example").read_text()
    for line in example.splitlines():
        if "PASSWORD" in line or "SECRET" in line:
            assert line.endswith("="), f".env.example must not carry a value: {line}"


def _commands(service: dict) -> list[list[str]]:
    """The command lines a service runs or health-checks (exec form, ``CMD`` dropped)."""
    lines = [service.get("command"), (service.get("healthcheck") or {}).get("test")]
    return [line[1:] if line[0] == "CMD" else line for line in lines if isinstance(line, list)]


def _python_modules(service: dict) -> list[str]:
    """The modules a service runs or health-checks with ``python -m``."""
    return [line[line.index("-m") + 1] for line in _commands(service) if line[0] == "python" and "-m" in line]


def _adstream_commands(service: dict) -> list[list[str]]:
    """The ``adstream`` subcommands (with their options) a service runs or health-checks."""
    return [line[1:] for line in _commands(service) if line[0] == "adstream"]


def test_every_command_a_service_runs_exists_in_the_product_image(compose):
    commands = {name: _adstream_commands(service) for name, service in compose["services"].items()}
    assert commands["streaming-job"] == [["stream"], ["stream", "--check"]]
    assert commands["ad-manager"] == [["ad-manager"], ["ad-manager", "--check"]]
    assert commands["auction-service"] == [["serve"]]
    for name, lines in commands.items():
        for name_and_options in lines:
            # Product commands only: the image ships without the tools that add the others.
            assert name_and_options[0] in COMMANDS, f"{name} runs adstream {name_and_options[0]}, not a product command"
            command = load_command(name_and_options[0])
            command.make_context("adstream", list(name_and_options[1:]))  # raises on an unknown option
    for name, service in compose["services"].items():
        for module in _python_modules(service):
            assert importlib.util.find_spec(module) is not None, f"{name} runs python -m {module}, which does not exist"


def test_the_auction_replicas_share_one_persistent_password_protected_store(compose):
    store = compose["services"]["shared-store"]
    assert store["image"].startswith("valkey/valkey:") and "--appendonly" in store["command"]
    assert "--requirepass" in store["command"] and "/data" in store["volumes"][0]
    auction = compose["services"]["auction-service"]
    assert auction["depends_on"]["shared-store"] == {"condition": "service_healthy"}
    assert auction["environment"]["SHARED_STORE_URL"].startswith("redis://:${SHARED_STORE_PASSWORD:?")
    assert auction["environment"]["AUCTION_REPLICAS"] == "${AUCTION_REPLICAS:-2}"
