"""docker-compose.yml cannot run here (no Docker engine), so it is parsed and checked: with the Dockerfile it
builds from (who may write where), the code (which paths each service writes, which metrics it declares) and the
Prometheus and Grafana files it mounts. Each checker returns its findings, and a mutated copy of the stack shows
that it finds what it looks for.
"""

import ast
import configparser
import copy
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx
import mlflow.environment_variables
import psutil
import pytest
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from adstream.settings import Settings
from auction_service.campaign_store import ad_manager
from auction_service.serving.metrics import ServiceMetrics
from cli.main import COMMANDS, load_command
from devstack import services
from ml import calibrate
from optimizer import service as optimizer_service
from spark_jobs import streaming
from spark_jobs.session import spark_conf
from tests.conftest import free_port

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
    "ad-manager",
    "streaming-job",
    "calibrator",
    "optimizer",
    "prometheus",
    "grafana",
}
ONE_SHOT = {"airflow-init", "minio-init"}
# Variables read by MLflow in the project images, not by AdStream's settings (each checked to be MLflow's).
THIRD_PARTY_ENV = {
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def raw_compose() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_whole_stack_is_there(compose):
    assert set(compose["services"]) >= REQUIRED_SERVICES
    assert not any("zookeeper" in name for name in compose["services"])


def test_kafka_runs_in_kraft_mode_on_the_pinned_broker_version(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    pom = (ROOT / "infra/maven/pom.xml").read_text()
    broker_version = re.search(r"<kafka.broker.version>(.+?)<", pom).group(1)
    assert kafka["image"] == f"apache/kafka:{broker_version}"


def test_images_match_the_python_pins(compose, dockerfile):
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.sub(r"\[.*\]", "", dep).split("==") for dep in dependencies)
    spark_image = compose["services"]["spark-master"]["image"]
    assert spark_image.startswith(f"apache/spark:{pins['pyspark']}-")
    assert compose["services"]["spark-worker"]["image"] == spark_image
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


def services_without_restart_policy(compose: dict) -> list[str]:
    return [
        name
        for name, service in compose["services"].items()
        if name not in ONE_SHOT and service.get("restart") not in {"unless-stopped", "always", "on-failure"}
    ]


def test_every_long_running_service_restarts_after_a_crash(compose):
    assert services_without_restart_policy(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["grafana"]["restart"]
    assert services_without_restart_policy(broken) == ["grafana"]


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
    for variable in THIRD_PARTY_ENV:
        assert hasattr(mlflow.environment_variables, variable), f"{variable} is not an MLflow variable"


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
    for variable in re.findall(r"\$\{([A-Z_]+):\?", raw_compose):
        assert re.search(rf"^{variable}=", example, re.MULTILINE), f".env.example does not list {variable}"


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


# --- the images: what they copy, who they run as, what that user may write -----------------------------------


def first_party_imports(package_dirs: list[Path]) -> set[str]:
    """Top-level first-party packages the code in ``package_dirs`` imports."""
    first_party = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}
    found = set()
    for package in package_dirs:
        for source in package.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found & first_party


def copied_packages(dockerfile: str) -> set[str]:
    """Top-level folders the ``source`` stage copies into /opt/adstream."""
    return set(re.findall(r"^COPY (\w+) /opt/adstream/\1$", dockerfile, re.MULTILINE))


def test_the_image_holds_every_package_its_code_imports(dockerfile):
    copied = copied_packages(dockerfile)
    assert {"auction_service", "spark_jobs", "cli", "dags"} <= copied
    imported = first_party_imports([ROOT / name for name in copied])
    assert imported - copied == set(), "imported by the image's code but not copied by the Dockerfile"
    assert not {"simulator", "benchmarks", "devstack"} & copied, "the tools stay out of the product image"
    # Fails for the image before the optimizer was copied (`adstream optimize` imports it).
    assert "optimizer" in first_party_imports([ROOT / "cli"])


# The official images' user, working directory and the directories that user owns.
BASE_IMAGES: dict[str, dict] = {
    "python": {"user": "root", "workdir": "/"},
    "apache/airflow": {
        "user": "airflow",
        "workdir": "/opt/airflow",
        "owned": {"/opt/airflow": "airflow", "/opt/airflow/logs": "airflow"},
    },
    "prom/prometheus": {"user": "nobody", "workdir": "/prometheus", "owned": {"/prometheus": "nobody"}},
    "grafana/grafana": {"user": "472", "workdir": "/usr/share/grafana", "owned": {"/var/lib/grafana": "472"}},
}


@dataclass
class Stage:
    """What a Dockerfile stage leaves for its containers: user, working directory, environment, ownership."""

    user: str = "root"
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)  # user name -> uid, from useradd
    owned: dict[str, str] = field(default_factory=dict)  # directory -> owning user

    def _same_user(self, owner: str) -> bool:
        return self.uids.get(owner, owner) == self.uids.get(self.user, self.user)

    def can_write(self, path: PurePosixPath) -> bool:
        if self.user in {"root", "0"} or path == PurePosixPath("/tmp") or PurePosixPath("/tmp") in path.parents:
            return True
        return any(
            self._same_user(owner) and (path == PurePosixPath(d) or PurePosixPath(d) in path.parents)
            for d, owner in self.owned.items()
        )

    def owns(self, directory: PurePosixPath) -> bool:
        """Whether the user owns this very directory (a named volume mounted on it takes its owner)."""
        return self.user in {"root", "0"} or self._same_user(self.owned.get(str(directory), "root"))


def base_stage(image: str) -> Stage:
    name = image.split(":")[0]
    facts = copy.deepcopy(BASE_IMAGES.get(name, {}))
    return Stage(**facts)


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    for line in logical.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            yield keyword.upper(), rest.strip()


def _run(stage: Stage, words: list[str]) -> None:
    if not words:
        return
    if words[0] == "useradd" and "--uid" in words:
        stage.uids[words[-1]] = words[words.index("--uid") + 1]
    elif words[0] == "install" and "-d" in words:
        owner = words[words.index("-o") + 1] if "-o" in words else "root"
        takes_value = {"-o", "-g", "-m"}
        paths = [w for i, w in enumerate(words[1:], 1) if not w.startswith("-") and words[i - 1] not in takes_value]
        stage.owned.update(dict.fromkeys(paths, owner))
    elif words[0] == "chown":
        args = [w for w in words[1:] if not w.startswith("-")]
        stage.owned.update(dict.fromkeys(args[1:], args[0].split(":")[0]))


def dockerfile_stages(text: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current = Stage()
    for keyword, rest in _instructions(text):
        if keyword == "FROM":
            words = rest.split()
            base, name = words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else words[0]
            current = copy.deepcopy(stages[base]) if base in stages else base_stage(base)
            stages[name] = current
        elif keyword == "USER":
            current.user = rest.split(":")[0]
        elif keyword == "WORKDIR":
            current.workdir = rest
        elif keyword == "ENV":
            current.env.update(word.split("=", 1) for word in shlex.split(rest))
        elif keyword == "COPY":
            words = shlex.split(rest)
            if chown := next((w for w in words if w.startswith("--chown=")), None):
                current.owned[words[-1]] = chown.removeprefix("--chown=").split(":")[0]
        elif keyword == "RUN":
            for command in rest.split("&&"):
                _run(current, shlex.split(command))
    return stages


def interpolate(value: object) -> str:
    """A compose value as a container sees it: required variables get a stand-in, others their default."""

    def replace(match: re.Match) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        return argument if operator == ":-" else f"compose-test-{name.lower()}-0123456789abcdef0123456789abcdef"

    return re.sub(r"\$\{([A-Z_]+)(:[?-])?([^}]*)\}", replace, str(value)).replace("$$", "$")


def container_env(service: dict, stage: Stage) -> dict[str, str]:
    return {**stage.env, **{key: interpolate(value) for key, value in (service.get("environment") or {}).items()}}


def container_settings(service: dict, stage: Stage) -> Settings:
    env = container_env(service, stage)
    return Settings(**{key.lower(): value for key, value in env.items() if key.lower() in Settings.model_fields})


def spark_warehouse(settings: Settings, stage: Stage, extra: dict[str, str] | None = None) -> PurePosixPath:
    """Where Spark keeps its warehouse: unless configured, ``spark-warehouse`` in the working directory."""
    conf = spark_conf(settings, [], extra=extra)
    return PurePosixPath(conf.get("spark.sql.warehouse.dir", f"{stage.workdir}/spark-warehouse"))


@dataclass
class Writes:
    state: list[PurePosixPath] = field(default_factory=list)  # must outlive the container: on a named volume
    # Per container: heartbeats (a beat left by a former container must not pass a health check) and Spark's
    # scratch warehouse.
    scratch: list[PurePosixPath] = field(default_factory=list)


def _posix(path: Path) -> PurePosixPath:
    return PurePosixPath(str(path))


def service_writes(service: dict, stage: Stage) -> Writes:
    """The directories a service writes, asked of the code it runs with the container's settings."""
    command = service.get("command")
    words = shlex.split(interpolate(command)) if isinstance(command, str) else list(command or [])
    image = service.get("image", "").split(":")[0]
    if image == "prom/prometheus":
        flag = next(w for w in words if w.startswith("--storage.tsdb.path="))
        return Writes(state=[PurePosixPath(flag.split("=", 1)[1])])
    if image == "grafana/grafana":
        return Writes(state=[PurePosixPath(service.get("environment", {}).get("GF_PATHS_DATA", "/var/lib/grafana"))])
    settings = container_settings(service, stage)
    if words[:2] == ["mlflow", "server"]:
        if "--app-name" not in words:
            return Writes()
        ini = configparser.ConfigParser()
        ini.read(ROOT / container_env(service, stage)["MLFLOW_AUTH_CONFIG_PATH"].removeprefix("/opt/adstream/"))
        database = ini["mlflow"]["database_uri"]
        assert database.startswith("sqlite:////"), "a server-side user store needs no directory"
        return Writes(state=[PurePosixPath(database.removeprefix("sqlite:///")).parent])
    if words[:1] == ["airflow"]:
        writes = Writes(state=[PurePosixPath(stage.workdir) / "logs"])
        if words[1] == "scheduler":  # LocalExecutor: the DAGs' tasks run in the scheduler's container
            writes.state.append(_posix(settings.reports_dir))
            writes.scratch.append(spark_warehouse(settings, stage))
        return writes
    heartbeat = {
        "ad-manager": ad_manager.heartbeat_file,
        "stream": streaming.heartbeat_file,
        "calibrate": calibrate.heartbeat_file,
        "optimize": optimizer_service.heartbeat_file,
    }
    assert words[:1] == ["adstream"], f"say what {words} writes"
    verb = words[1]
    if verb == "serve":
        return Writes(state=[_posix(settings.model_cache_dir)])
    if verb == "dashboard":  # reads only: its reports volume is mounted read-only
        return Writes()
    assert verb in heartbeat, f"say what `adstream {verb}` writes"
    writes = Writes(scratch=[_posix(heartbeat[verb](settings).parent)])
    if verb == "stream":
        writes.scratch.append(spark_warehouse(settings, stage, streaming.spark_extra(settings)))
    return writes


@dataclass(frozen=True)
class Mount:
    source: str
    target: PurePosixPath
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith((".", "/"))


def mounts(service: dict) -> list[Mount]:
    found = []
    for spec in service.get("volumes") or []:
        source, target, *mode = spec.split(":")
        found.append(Mount(source, PurePosixPath(target), mode == ["ro"]))
    return found


def service_stage(service: dict, stages: dict[str, Stage]) -> Stage | None:
    if "build" in service:
        return stages[service["build"]["target"]]
    image = service.get("image", "").split(":")[0]
    return base_stage(service["image"]) if image in {"prom/prometheus", "grafana/grafana"} else None


def write_problems(compose: dict, dockerfile: str) -> list[str]:
    """Paths a service writes that its image's user may not, or state that a new container would lose."""
    stages = dockerfile_stages(dockerfile)
    problems = []
    for name, service in compose["services"].items():
        stage = service_stage(service, stages)
        if stage is None or name in ONE_SHOT:
            continue
        writes = service_writes(service, stage)
        for path in writes.state + writes.scratch:
            covering = [m for m in mounts(service) if m.target == path or m.target in path.parents]
            mount = max(covering, key=lambda m: len(m.target.parts), default=None)
            if mount is None:
                if not stage.can_write(path):
                    problems.append(f"{name}: {stage.user} cannot write {path}")
            elif mount.read_only:
                problems.append(f"{name}: writes {path} on a read-only mount")
            elif not mount.named:
                problems.append(f"{name}: writes {path} on a bind mount, which the host's user owns")
            elif not stage.owns(mount.target):
                problems.append(f"{name}: volume {mount.source} on {mount.target} is not {stage.user}'s")
            if path in writes.state and (mount is None or not mount.named):
                problems.append(f"{name}: {path} must outlive the container: put it on a named volume")
        for mount in mounts(service):
            if mount.named and mount.source not in (compose.get("volumes") or {}):
                problems.append(f"{name}: volume {mount.source} is not declared")
    return problems


def test_every_path_a_service_writes_is_its_users_and_state_is_on_volumes(compose, dockerfile):
    assert write_problems(compose, dockerfile) == []
    stages = dockerfile_stages(dockerfile)
    assert stages["app"].user == "adstream" and stages["app"].uids["adstream"] == "1000"
    assert stages["airflow"].user == "airflow"
    written = service_writes(compose["services"]["ad-manager"], stages["app"])
    assert written.scratch == [PurePosixPath("/opt/adstream/.local/run")]
    reports = service_writes(compose["services"]["airflow-scheduler"], stages["airflow"]).state
    assert PurePosixPath("/opt/adstream/reports") in reports


def _dockerfile_without(directory: str) -> Callable[[dict, str], str]:
    def mutate(compose: dict, dockerfile: str) -> str:
        assert f" {directory}" in dockerfile
        return dockerfile.replace(f" {directory}", "")

    return mutate


def _reports_on_a_bind_mount(compose: dict, dockerfile: str) -> str:
    volumes = compose["services"]["airflow-scheduler"]["volumes"]
    volumes[volumes.index("reports:/opt/adstream/reports")] = "./reports:/opt/adstream/reports"
    return dockerfile


def _no_model_cache_volume(compose: dict, dockerfile: str) -> str:
    del compose["services"]["auction-service"]["volumes"]
    return dockerfile


def _undeclared_volume(compose: dict, dockerfile: str) -> str:
    del compose["volumes"]["grafana-data"]
    return dockerfile


# Each fault, made on copies of docker-compose.yml and the Dockerfile, and what the checker must say about it.
WRITE_FAULTS: dict[str, tuple[Callable[[dict, str], str], str]] = {
    "heartbeats in a root-owned .local": (
        _dockerfile_without("/opt/adstream/.local/run"),
        "ad-manager: adstream cannot write /opt/adstream/.local/run",
    ),
    "the user owns nothing": (
        lambda compose, dockerfile: dockerfile.replace("USER adstream", "USER 1001"),
        "streaming-job: 1001 cannot write /opt/adstream/.local/run",
    ),
    "a volume on a root-owned directory": (
        _dockerfile_without("/var/lib/mlflow-auth"),
        "mlflow: volume mlflow-auth on /var/lib/mlflow-auth is not adstream's",
    ),
    "the model cache in the container": (
        _no_model_cache_volume,
        "auction-service: /opt/adstream/.local/models must outlive the container: put it on a named volume",
    ),
    "reports on a bind mount": (
        _reports_on_a_bind_mount,
        "airflow-scheduler: writes /opt/adstream/reports on a bind mount, which the host's user owns",
    ),
    "an undeclared volume": (_undeclared_volume, "grafana: volume grafana-data is not declared"),
}


@pytest.mark.parametrize("fault", WRITE_FAULTS)
def test_the_write_checker_finds(fault, compose, dockerfile):
    mutate, finding = WRITE_FAULTS[fault]
    broken = copy.deepcopy(compose)
    assert finding in write_problems(broken, mutate(broken, dockerfile))


def test_the_lake_and_every_store_keep_their_data_on_volumes(compose):
    for name, service in compose["services"].items():
        if "ADSTREAM_ENV" in (service.get("environment") or {}):
            assert container_env(service, Stage())["LAKE_ROOT"].startswith("s3a://"), f"{name}'s lake is not MinIO"
    data_dirs = {"minio": "/data", "postgres": "/var/lib/postgresql/data", "kafka": "/var/lib/kafka/data"}
    for name, directory in data_dirs.items():
        assert any(m.named and str(m.target) == directory for m in mounts(compose["services"][name])), name


def test_the_airflow_image_installs_its_packages_once(dockerfile):
    airflow = dockerfile[dockerfile.index(" AS airflow") :]
    assert ".venv" not in re.sub(r"#.*", "", airflow), "the app's .venv is dead weight in the Airflow image"
    assert "COPY --from=source" in airflow


# --- no API a stranger can write to ----------------------------------------------------------------------------

PUBLIC = {"auction-service"}  # the product's API: its own tokens guard campaigns and events
TRUE = {"true", "1", "yes"}


def _required_secret(value: object) -> bool:
    return bool(re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)))


def _published(service: dict) -> list[str]:
    ports = service.get("ports") or []
    return [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}" for p in ports]


def _words(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(interpolate(command)) if isinstance(command, str) else [str(word) for word in command]


def _mlflow_guard(name: str, service: dict) -> list[str]:
    words, env = _words(service), service.get("environment") or {}
    app = words[words.index("--app-name") + 1] if "--app-name" in words else None
    if app != "basic-auth":
        return [f"{name}: MLflow without --app-name basic-auth lets anyone move an alias"]
    problems = [
        f"{name}: {variable} must be a required secret"
        for variable in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
        if not _required_secret(env.get(variable))
    ]
    ini = configparser.ConfigParser()
    ini.read(ROOT / str(env.get("MLFLOW_AUTH_CONFIG_PATH", "")).removeprefix("/opt/adstream/"))
    if not ini.has_section("mlflow"):
        return [*problems, f"{name}: MLFLOW_AUTH_CONFIG_PATH names no config in the repo"]
    if ini["mlflow"].get("default_permission") not in {"READ", "NO_PERMISSIONS"}:
        problems.append(f"{name}: a new MLflow user may write (default_permission)")
    if ini["mlflow"].get("admin_password"):
        problems.append(f"{name}: the MLflow admin password is in the repo")
    return problems


def _airflow_guard(name: str, service: dict) -> list[str]:
    env = service.get("environment") or {}
    if str(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "false")).lower() in TRUE:
        return [f"{name}: every Airflow caller is an admin"]
    return []


def _grafana_guard(name: str, service: dict) -> list[str]:
    env = service.get("environment") or {}
    problems = [] if _required_secret(env.get("GF_SECURITY_ADMIN_PASSWORD")) else [f"{name}: admin password not set"]
    anonymous = str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() in TRUE
    if anonymous and env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") != "Viewer":
        problems.append(f"{name}: anonymous Grafana users may edit")
    if str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() in TRUE:
        problems.append(f"{name}: anyone may sign up to Grafana")
    return problems


def _prometheus_guard(name: str, service: dict) -> list[str]:
    writable = ("--web.enable-admin-api", "--web.enable-lifecycle", "--web.enable-remote-write-receiver")
    return [f"{name}: {flag} opens a write API" for flag in writable if flag in _words(service)]


def _spark_guard(name: str, service: dict) -> list[str]:
    """The master's UI can kill applications (a worker's UI only shows)."""
    if "org.apache.spark.deploy.master.Master" not in _words(service):
        return []
    options = str((service.get("environment") or {}).get("SPARK_MASTER_OPTS", ""))
    if "-Dspark.ui.killEnabled=false" not in options or "spark.master.rest.enabled=true" in options:
        return [f"{name}: anyone reaching the Spark master may kill or submit applications"]
    return []


def _password_guard(variable: str) -> Callable[[str, dict], list[str]]:
    def guard(name: str, service: dict) -> list[str]:
        value = (service.get("environment") or {}).get(variable) or " ".join(_words(service))
        return [] if "${" + variable + ":?" in str(value) else [f"{name}: {variable} must be a required secret"]

    return guard


def _internal_only(name: str, service: dict) -> list[str]:
    return [f"{name}: has no authentication; publish no port"] if _published(service) else []


def _guard(service: dict) -> Callable[[str, dict], list[str]] | None:
    image, words = service.get("image", "").split(":")[0], _words(service)
    if words[:2] == ["mlflow", "server"]:
        return _mlflow_guard
    if words[:1] == ["airflow"]:
        return _airflow_guard
    if words[:2] == ["adstream", "dashboard"]:  # read-only, and outside local mode behind the campaign API's token
        return _password_guard("AUCTION_API_TOKEN")
    rules = {
        "grafana/grafana": _grafana_guard,
        "prom/prometheus": _prometheus_guard,
        "apache/spark": _spark_guard,
        "minio/minio": _password_guard("MINIO_ROOT_PASSWORD"),
        "postgres": _password_guard("POSTGRES_PASSWORD"),
        "valkey/valkey": _password_guard("SHARED_STORE_PASSWORD"),
        "apache/kafka": _internal_only,
    }
    return rules.get(image)


def open_write_apis(compose: dict) -> list[str]:
    """Services a caller with no credentials could change, on the compose network or through a published port."""
    problems = []
    for name, service in compose["services"].items():
        if name not in PUBLIC:
            beyond = [port for port in _published(service) if not port.startswith("127.0.0.1:")]
            problems += [f"{name}: publishes {port} beyond the host" for port in beyond]
        guard = _guard(service)
        if guard is not None:
            problems += guard(name, service)
        elif _published(service) and name not in PUBLIC:
            problems.append(f"{name}: publishes a port and no rule here says what guards it")
    return problems


def test_no_service_offers_a_write_api_to_anonymous_callers(compose):
    assert open_write_apis(compose) == []
    guarded = {name for name, service in compose["services"].items() if _guard(service)}
    assert {"mlflow", "airflow-api-server", "grafana", "prometheus", "spark-master", "minio", "kafka", "dashboard"} <= (
        guarded
    )


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def mutate(compose: dict) -> None:
        node = compose["services"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return mutate


MLFLOW_COMMAND = "mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///m.db"
API_FAULTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "dashboard token defaulted": (
        _set(["dashboard", "environment", "AUCTION_API_TOKEN"], "${AUCTION_API_TOKEN:-local}"),
        "dashboard: AUCTION_API_TOKEN must be a required secret",
    ),
    "MLflow without auth": (_set(["mlflow", "command"], MLFLOW_COMMAND), "mlflow: MLflow without --app-name"),
    "MLflow on every interface": (_set(["mlflow", "ports"], ["5000:5000"]), "mlflow: publishes 5000:5000 beyond"),
    "MLflow admin password defaulted": (
        _set(["mlflow", "environment", "MLFLOW_AUTH_ADMIN_PASSWORD"], "${MLFLOW_TRACKING_PASSWORD:-admin}"),
        "mlflow: MLFLOW_AUTH_ADMIN_PASSWORD must be a required secret",
    ),
    "Airflow all admins": (
        _set(["airflow-api-server", "environment", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"], "True"),
        "airflow-api-server: every Airflow caller is an admin",
    ),
    "Grafana anonymous admins": (
        lambda c: c["services"]["grafana"]["environment"].update(
            GF_AUTH_ANONYMOUS_ENABLED="true", GF_AUTH_ANONYMOUS_ORG_ROLE="Admin"
        ),
        "grafana: anonymous Grafana users may edit",
    ),
    "Grafana default admin": (
        _set(["grafana", "environment", "GF_SECURITY_ADMIN_PASSWORD"], "${GRAFANA_ADMIN_PASSWORD:-admin}"),
        "grafana: admin password not set",
    ),
    "Prometheus admin API": (
        lambda c: c["services"]["prometheus"]["command"].append("--web.enable-admin-api"),
        "prometheus: --web.enable-admin-api opens a write API",
    ),
    "Spark kill links": (
        _set(["spark-master", "environment"], {}),
        "spark-master: anyone reaching the Spark master may kill",
    ),
    "Kafka published": (_set(["kafka", "ports"], ["127.0.0.1:9092:9092"]), "kafka: has no authentication"),
    "an unknown UI": (
        _set(["notebook"], {"image": "jupyter/base-notebook:2024-01-01", "ports": ["127.0.0.1:8888:8888"]}),
        "notebook: publishes a port and no rule here says what guards it",
    ),
}


@pytest.mark.parametrize("fault", API_FAULTS)
def test_the_api_checker_finds(fault, compose):
    mutate, finding = API_FAULTS[fault]
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert any(problem.startswith(finding) for problem in open_write_apis(broken)), open_write_apis(broken)


def test_the_platform_logs_in_to_mlflow_as_the_admin_the_server_creates(compose):
    mlflow_env = compose["services"]["mlflow"]["environment"]
    for name, service in compose["services"].items():
        if "build" in service and name != "mlflow":
            env = service["environment"]
            assert env["MLFLOW_TRACKING_USERNAME"] == mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], name
            assert env["MLFLOW_TRACKING_PASSWORD"] == mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"], name


# --- MLflow's unused job runner stays off -------------------------------------------------------------------


def test_the_mlflow_job_runner_is_off_wherever_a_server_starts(compose, tmp_path):
    variable = mlflow.environment_variables.MLFLOW_SERVER_ENABLE_JOB_EXECUTION
    assert variable.default is True  # on unless turned off
    assert compose["services"]["mlflow"]["environment"][variable.name] == "false"
    (server,) = services.build_services(Settings(local_dir=tmp_path), ["mlflow"])
    assert server.env[variable.name] == "false"


@pytest.fixture(scope="module")
def compose_mlflow(compose, tmp_path_factory) -> Iterator[tuple[str, dict[str, str], psutil.Process]]:
    """The compose MLflow server as configured there (basic auth, its auth config, its environment), on SQLite
    and local artifacts in a temporary directory instead of PostgreSQL and MinIO."""
    work = tmp_path_factory.mktemp("compose-mlflow")
    service = compose["services"]["mlflow"]
    ini = (ROOT / "infra/mlflow/basic_auth.ini").read_text()
    (work / "auth.ini").write_text(ini.replace("/var/lib/mlflow-auth", str(work)))
    env = {key: interpolate(value) for key, value in service["environment"].items()}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(work / "auth.ini"))
    credentials = {"username": env["MLFLOW_AUTH_ADMIN_USERNAME"], "password": env["MLFLOW_AUTH_ADMIN_PASSWORD"]}
    words, port = _words(service), free_port()
    options = dict(zip(words[2::2], words[3::2], strict=True))
    assert options["--app-name"] == "basic-auth"
    options.update({
        "--host": "127.0.0.1", "--port": str(port), "--workers": "1",
        "--backend-store-uri": f"sqlite:///{work / 'mlflow.db'}", "--artifacts-destination": str(work / "artifacts"),
        "--allowed-hosts": f"127.0.0.1:{port}",
    })  # fmt: skip
    command = [str(Path(sys.executable).parent / "mlflow"), "server", *(w for pair in options.items() for w in pair)]
    process = subprocess.Popen(
        command, env={**services.child_process_env(), **env}, stdout=(work / "log").open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not services._http_ok(f"{url}/health"):
            assert process.poll() is None and time.monotonic() < deadline, (work / "log").read_text()[-3000:]
            time.sleep(0.5)
        yield url, credentials, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()


@pytest.mark.slow
def test_the_compose_mlflow_server_moves_an_alias_only_for_its_admin(compose_mlflow):
    url, admin, server = compose_mlflow
    api = f"{url}/api/2.0/mlflow"
    with httpx.Client(auth=(admin["username"], admin["password"]), timeout=30) as as_admin:
        as_admin.post(f"{api}/registered-models/create", json={"name": "ctr-model"}).raise_for_status()
        experiment = as_admin.post(f"{api}/experiments/create", json={"name": "ctr"}).json()["experiment_id"]
        run = as_admin.post(f"{api}/runs/create", json={"experiment_id": experiment}).json()["run"]["info"]
        source = f"{run['artifact_uri']}/model"
        for _ in range(2):
            version = {"name": "ctr-model", "source": source, "run_id": run["run_id"]}
            created = as_admin.post(f"{api}/model-versions/create", json=version)
            assert created.status_code == 200, created.text
        alias = {"name": "ctr-model", "alias": "champion", "version": "1"}
        assert as_admin.post(f"{api}/registered-models/alias", json=alias).status_code == 200
        viewer = {"username": "analyst", "password": "analyst-password-0123456789"}
        as_admin.post(f"{url}/api/2.0/mlflow/users/create", json=viewer).raise_for_status()
    moved = {**alias, "version": "2"}
    anonymous = httpx.post(f"{api}/registered-models/alias", json=moved, timeout=30)
    assert anonymous.status_code == 401
    assert httpx.get(f"{api}/registered-models/get", params={"name": "ctr-model"}, timeout=30).status_code == 401
    with httpx.Client(auth=(viewer["username"], viewer["password"]), timeout=30) as as_viewer:
        champion = as_viewer.get(f"{api}/registered-models/alias", params={"name": "ctr-model", "alias": "champion"})
        assert champion.json()["model_version"]["version"] == "1"  # default_permission READ: it reads
        assert as_viewer.post(f"{api}/registered-models/alias", json=moved).status_code == 403
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # the compose health check needs no login
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false from the compose file: no job runner among the server's processes.
    runners = [p for p in server.children(recursive=True) if "mlflow.server.jobs" in " ".join(p.cmdline())]
    assert runners == []


# --- Prometheus and Grafana: what they scrape, chart and alert on ------------------------------------------------

PROMETHEUS_DIR = ROOT / "infra/prometheus"
DASHBOARD_DIR = ROOT / "infra/grafana/dashboards"
REQUIRED_DASHBOARDS = {"auctions", "spend-and-pacing", "stream-lag", "invalid-traffic", "calibration"}
REQUIRED_ALERTS = {"StreamStalled", "CalibrationOutOfBand", "Overspend", "AdManagerLag"}
PRODUCT_PACKAGES = ["adstream", "auction_service", "spark_jobs", "ml", "optimizer", "ingestion", "cli", "dags"]
METRIC_CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "Enum": "stateset",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
    "StateSetMetricFamily": "stateset",
}
BUILT_IN_COLLECTORS = {"ProcessCollector", "PlatformCollector", "GCCollector"}
# Series Prometheus adds to every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf",
    "nan", "atan2",
}  # fmt: skip


def exposed_series(name: str, kind: str) -> set[str]:
    """The series names a metric family shows on /metrics (what a query can name)."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind in {"histogram", "gaugehistogram"}:
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "info":
        return {f"{name.removesuffix('_info')}_info"}
    return {name}


def _registry_series(registry: CollectorRegistry) -> set[str]:
    return {series for family in registry.collect() for series in exposed_series(family.name, family.type)}


def declared_series(packages: list[str] = PRODUCT_PACKAGES) -> set[str]:
    """Every series the product's code can expose: the auction service's registry as built, plus each metric a
    module that uses prometheus_client declares with a literal name (the other services' metrics)."""
    declared = _registry_series(ServiceMetrics().registry)
    uses_built_ins = False
    for package in packages:
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            if "prometheus_client" not in text:
                continue
            tree = ast.parse(text)
            aliases = {  # `from prometheus_client import Counter as PrometheusCounter`
                alias.asname: alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client")
                for alias in node.names
                if alias.asname
            }
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                called = aliases.get(called, called)
                uses_built_ins |= called in BUILT_IN_COLLECTORS
                first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
                if called in METRIC_CONSTRUCTORS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    declared |= exposed_series(first.value, METRIC_CONSTRUCTORS[called])
    if uses_built_ins:
        built_ins = CollectorRegistry()
        ProcessCollector(registry=built_ins)
        PlatformCollector(registry=built_ins)
        GCCollector(registry=built_ins)
        declared |= _registry_series(built_ins)
    return declared


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords, labels and ranges left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before, after = expr[: match.start()], expr[match.end() :].lstrip()
        if after.startswith("(") or match.group() in PROMQL_WORDS or re.search(r"[0-9.]$", before):
            continue
        names.add(match.group())
    return names


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def queries(boards: dict[str, dict], rules: list[dict]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every dashboard panel target and every alert expression."""
    for board_name, board in boards.items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{board_name}/{panel['title']}", target["expr"]
    for rule in rules:
        yield f"alert {rule['alert']}", rule["expr"]


def unknown_metrics(boards: dict[str, dict], rules: list[dict], declared: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, expr in queries(boards, rules)
        for name in sorted(metric_names(expr) - declared - SCRAPE_SERIES)
    ]


@pytest.fixture(scope="module")
def declared() -> set[str]:
    return declared_series()


def test_metric_names_are_read_from_promql():
    expr = (
        'sum by (outcome) (rate(adstream_auctions_total{outcome="filled"}[$__rate_interval])) * 60 / 1e6'
        " / on (job) group_left max_over_time(adstream_x_seconds[5m] offset 1h) > bool 0.8"
    )
    assert metric_names(expr) == {"adstream_auctions_total", "adstream_x_seconds"}


def test_the_declared_metrics_are_what_the_code_exposes(declared):
    assert {"adstream_auctions_total", "adstream_auction_latency_seconds_bucket"} <= declared
    assert "adstream_spend_micros" not in declared  # a counter is queried with its _total
    assert "process_resident_memory_bytes" in declared


def test_every_metric_a_dashboard_or_alert_names_is_one_the_code_declares(declared):
    boards, rules = dashboards(), alert_rules()
    assert set(boards) >= REQUIRED_DASHBOARDS
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    assert unknown_metrics(boards, rules, declared) == []


def test_a_renamed_metric_is_caught(declared):
    boards, rules = dashboards(), alert_rules()
    boards["auctions"]["panels"][0]["targets"][0]["expr"] = "rate(adstream_auctions[5m])"
    rules[0]["expr"] = "adstream_spend_micros > 0"
    found = unknown_metrics(boards, rules, declared)
    assert "auctions/Auctions per second, by outcome: adstream_auctions" in found
    assert f"alert {rules[0]['alert']}: adstream_spend_micros" in found


def test_every_panel_queries_the_provisioned_prometheus():
    datasources = yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for name, board in dashboards().items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        assert len({b["uid"] for b in dashboards().values()}) == len(dashboards())
        for panel in board["panels"]:
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, (name, panel["title"])


def test_every_alert_waits_and_says_what_to_do():
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: a blip must not page"
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_prometheus_scrapes_each_service_on_its_metrics_port_and_loads_the_rules(compose):
    prometheus = compose["services"]["prometheus"]
    config_mount = next(m for m in mounts(prometheus) if str(m.target) == "/etc/prometheus")
    assert (ROOT / config_mount.source).resolve() == PROMETHEUS_DIR and config_mount.read_only
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / PurePosixPath(rule_file).relative_to("/etc/prometheus")).exists(), rule_file
    scraped = set()
    targets = set()
    for job in config["scrape_configs"]:
        for target in (t for static in job["static_configs"] for t in static["targets"]):
            host, port = target.split(":")
            if host == "localhost":
                continue
            service = compose["services"][host]
            env = container_env(service, Stage())
            ports = {value for key, value in env.items() if key.endswith("_PORT")} | replica_ports(env)
            assert port in ports, f"{host} listens on none of {sorted(ports)}, not on {port}"
            assert env.get("BIND_HOST") == "0.0.0.0", f"{host} listens on its loopback only: Prometheus cannot reach it"
            scraped.add(host)
            targets.add(target)
    assert {"auction-service", "streaming-job", "ad-manager", "optimizer"} <= scraped
    # Every auction replica is a target of its own; AUCTION_PORT (one replica at random) is none.
    auction = container_env(compose["services"]["auction-service"], Stage())
    assert replica_ports(auction), "the auction replicas serve no metrics port of their own"
    assert {f"auction-service:{port}" for port in replica_ports(auction)} <= targets
    assert f"auction-service:{auction['AUCTION_PORT']}" not in targets
    # The dashboard reads the same replicas' /v1/stats.
    dashboard = container_env(compose["services"]["dashboard"], Stage())
    assert replica_ports(dashboard) == replica_ports(auction)


def replica_ports(env: dict[str, str]) -> set[str]:
    """The auction replicas' own metrics ports: AUCTION_METRICS_PORT + each one's index (none when 0)."""
    base = int(env.get("AUCTION_METRICS_PORT") or 0)
    return {str(base + index) for index in range(int(env.get("AUCTION_REPLICAS") or 1))} if base else set()


def test_grafana_loads_the_dashboards_it_is_given(compose):
    grafana = compose["services"]["grafana"]
    by_target = {str(m.target): m for m in mounts(grafana)}
    provider = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/adstream.yml").read_text())
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert (ROOT / by_target[path].source).resolve() == DASHBOARD_DIR
    assert (ROOT / by_target["/etc/grafana/provisioning"].source).resolve() == ROOT / "infra/grafana/provisioning"
