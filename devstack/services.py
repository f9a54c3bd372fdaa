"""Local services behind `make up` / `make down` / `make status`.

Each service runs as its own process group, logs to ``.local/logs/<name>.log``,
keeps its pid in ``.local/run/<name>.pid`` and is healthy only when it answers
on its port. ``up`` is idempotent: a healthy service is left alone.

    adstream up [kafka mlflow airflow]
    adstream down
    adstream status
    adstream airflow dags list   # the airflow CLI, pointed at the local instance

The platform's own processes (ad manager, auction service, streaming job) run as `adstream` subcommands.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated

import httpx
import typer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from adstream.settings import Settings, child_process_env, get_settings
from auction_service.campaign_store import ad_manager
from cli.lazy import commands_app
from spark_jobs import streaming

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ADSTREAM = VENV_BIN / "adstream"  # the console script `make setup`'s editable install creates
BATCH_NICENESS = 10  # the streaming job and Airflow's tasks (feature builds, training, billing)


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says what to do."""


@dataclass(frozen=True)
class PortClaim:
    port: int
    setting: str  # the environment variable that moves it


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    ports: tuple[PortClaim, ...]
    command: tuple[str, ...]
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    start_timeout_s: float = 90.0
    needs_infrastructure: bool = False  # started only once Kafka/MLflow/Airflow are healthy
    # Batch work yields the CPU to the request path (auctions, events, Kafka) on a shared machine;
    # it only runs slower when that path is busy.
    niceness: int = 0


def settings_env(settings: Settings) -> dict[str, str]:
    """The project's settings as environment variables, with absolute paths, for child processes."""
    lake_root = settings.lake_root
    if "://" not in lake_root:
        lake_root = str(Path(lake_root).resolve())
    return {
        "ADSTREAM_ENV": settings.adstream_env.value,
        "LAKE_ROOT": lake_root,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "CAMPAIGN_DB_URL": settings.campaign_db_url,
        "SPARK_MASTER": settings.spark_master,
        "SPARK_SHUFFLE_PARTITIONS": str(settings.spark_shuffle_partitions),
        "KAGGLE_DIR": str(settings.kaggle_dir.resolve()),
        "LOCAL_DIR": str(settings.local_dir.resolve()),
        "JAR_CACHE_DIR": str(Path(settings.jar_cache_dir).resolve()),
        "REPORTS_DIR": str(settings.reports_dir.resolve()),
        "BIND_HOST": settings.bind_host,
        "AUCTION_PORT": str(settings.auction_port),
        "AUCTION_REPLICAS": str(settings.auction_replicas),
        "SHARED_STORE_URL": settings.shared_store_url,
        "SHARED_STORE_NAMESPACE": settings.shared_store_namespace,
        "AD_MANAGER_GROUP": settings.ad_manager_group,
        "STREAMING_METRICS_PORT": str(settings.streaming_metrics_port),
        "AD_MANAGER_METRICS_PORT": str(settings.ad_manager_metrics_port),
        "OPTIMIZER_METRICS_PORT": str(settings.optimizer_metrics_port),
        "AUCTION_METRICS_PORT": str(settings.auction_metrics_port),
    }


def kafka_cluster_id() -> str:
    """A random KRaft cluster id. One starting with "-" would be read as an option by kafka-storage
    (1 in 64 of them), so, like Kafka's own Uuid.randomUuid, those are drawn again."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        continue
    return cluster_id


def kafka_server_properties(settings: Settings, data_dir: Path) -> str:
    """A single-node KRaft broker+controller on loopback."""
    host = settings.bind_host
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
            f"listeners=PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # One node: no point waiting for more group members to join.
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def _kafka(settings: Settings) -> Service:
    home = settings.local_dir.resolve() / "kafka"
    props = home / "server.properties"
    data_dir = home / "data"
    classpath = f"{Path(settings.kafka_jar_dir).resolve()}/*"
    java = _require_java()
    jvm = (
        java,
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        "-cp",
        classpath,
        f"-Dlog4j2.configurationFile={PROJECT_ROOT / 'infra/kafka/log4j2.properties'}",
    )

    def prepare() -> None:
        if not any(Path(settings.kafka_jar_dir).glob("kafka_*.jar")):
            raise ServiceError(f"no Kafka broker jars in {settings.kafka_jar_dir}; run `make setup` first")
        home.mkdir(parents=True, exist_ok=True)
        props.write_text(kafka_server_properties(settings, data_dir))
        if (data_dir / "meta.properties").exists():
            return
        cluster_id = kafka_cluster_id()
        formatted = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            raise ServiceError(f"formatting the Kafka storage in {data_dir} failed:\n{formatted.stderr[-2000:]}")

    return Service(
        name="kafka",
        url=settings.kafka_bootstrap_servers,
        ports=(
            PortClaim(settings.kafka_port, "KAFKA_PORT"),
            PortClaim(settings.kafka_controller_port, "KAFKA_CONTROLLER_PORT"),
        ),
        command=(*jvm, "kafka.Kafka", str(props)),
        healthy=lambda: _kafka_answers(settings),
        prepare=prepare,
        start_timeout_s=60.0,
    )


def shared_store_config(settings: Settings, data_dir: Path) -> str:
    """redis-server's configuration: loopback port, no password (local mode), appendonly persistence
    under ``data_dir`` fsynced every second, so a restart loses at most about a second of state
    (the service rebuilds what it lost from the campaign store; README "Shared store")."""
    return "\n".join(
        [
            f"bind {settings.bind_host}",
            f"port {settings.shared_store_port}",
            "protected-mode yes",
            f"dir {data_dir}",
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "maxmemory-policy noeviction",  # an evicted reservation or counter would be a silent overspend
            "daemonize no",
            "",
        ]
    )


def redis_server_binary(required: bool = True) -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        if not required:
            return "redis-server"
        raise ServiceError(
            "redis-server was not found: run `make setup` (it installs Debian's redis-server) "
            "or install Redis 7 / Valkey 8 and put redis-server on PATH"
        )
    return found


def _shared_store(settings: Settings) -> Service:
    home = settings.local_dir.resolve() / "shared-store"
    config = home / "redis.conf"

    def prepare() -> None:
        redis_server_binary()  # says how to install it
        (home / "data").mkdir(parents=True, exist_ok=True)
        config.write_text(shared_store_config(settings, home / "data"))

    return Service(
        name="shared-store",
        url=f"redis://{settings.bind_host}:{settings.shared_store_port}",
        ports=(PortClaim(settings.shared_store_port, "SHARED_STORE_PORT"),),
        command=(redis_server_binary(required=False), str(config)),
        healthy=lambda: _redis_answers(settings),
        prepare=prepare,
        start_timeout_s=30.0,
    )


def _redis_answers(settings: Settings) -> bool:
    try:
        with socket.create_connection((settings.bind_host, settings.shared_store_port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _mlflow(settings: Settings) -> Service:
    home = settings.local_dir.resolve() / "mlflow"
    url = f"http://{settings.bind_host}:{settings.mlflow_port}"

    def prepare() -> None:
        (home / "artifacts").mkdir(parents=True, exist_ok=True)

    return Service(
        name="mlflow",
        url=url,
        ports=(PortClaim(settings.mlflow_port, "MLFLOW_PORT"),),
        command=(
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            settings.bind_host,
            "--port",
            str(settings.mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--workers",
            "1",
        ),
        # MLflow's job runner (GenAI evaluation jobs; nothing here submits one) forks a pool of workers at start.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        healthy=lambda: _http_ok(f"{url}/health"),
        prepare=prepare,
    )


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow configuration for the local standalone instance and `airflow dags test`."""
    home = settings.airflow_home.resolve()
    return {
        "AIRFLOW_HOME": str(home),
        # `airflow standalone` launches its components as `airflow …` from PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{child_process_env().get('PATH', '')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": settings.bind_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://{settings.bind_host}:{settings.airflow_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{settings.bind_host}:{settings.airflow_port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # LocalExecutor forks one worker per parallelism slot up front; 2 cores need few.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.airflow_trigger_log_port),
        **settings_env(settings),
    }


def _airflow(settings: Settings) -> Service:
    url = f"http://{settings.bind_host}:{settings.airflow_port}"

    def prepare() -> None:
        settings.airflow_home.mkdir(parents=True, exist_ok=True)

    return Service(
        name="airflow",
        url=url,
        ports=(
            PortClaim(settings.airflow_port, "AIRFLOW_PORT"),
            PortClaim(settings.airflow_worker_log_port, "AIRFLOW_WORKER_LOG_PORT"),
            PortClaim(settings.airflow_trigger_log_port, "AIRFLOW_TRIGGER_LOG_PORT"),
        ),
        command=(str(VENV_BIN / "airflow"), "standalone"),
        env=airflow_env(settings),
        healthy=lambda: _airflow_healthy(url),
        prepare=prepare,
        start_timeout_s=150.0,
        niceness=BATCH_NICENESS,
    )


def _metrics_url(settings: Settings, url: str, port: int) -> str:
    """A background process's URL, with its Prometheus metrics' when it exports them (port not 0)."""
    return f"{url}, metrics http://{settings.bind_host}:{port}/metrics" if port else url


def _ad_manager(settings: Settings) -> Service:
    return Service(
        name="ad-manager",
        url=_metrics_url(settings, f"consumer group {settings.ad_manager_group}", settings.ad_manager_metrics_port),
        ports=(),
        command=(str(ADSTREAM), "ad-manager"),
        env=settings_env(settings),
        # No port to probe: healthy while it runs and its poll loop beats.
        healthy=lambda: running_pid(settings, "ad-manager") is not None and ad_manager.is_alive(settings),
        needs_infrastructure=True,
        start_timeout_s=60.0,
    )


def _auction(settings: Settings) -> Service:
    url = f"http://{settings.bind_host}:{settings.auction_port}"
    base = settings.auction_metrics_port  # replica i serves its own /metrics and /v1/stats on base + i
    replica_ports = [base + index for index in range(settings.auction_replicas)] if base else []
    metrics = ", ".join(f"http://{settings.bind_host}:{port}/metrics" for port in replica_ports)
    claims = [PortClaim(settings.auction_port, "AUCTION_PORT")]
    claims += [PortClaim(port, "AUCTION_METRICS_PORT") for port in replica_ports]
    return Service(
        name="auction",
        url=f"{url}, replica metrics {metrics}" if metrics else url,
        ports=tuple(claims),
        command=(str(ADSTREAM), "serve"),
        env=settings_env(settings),
        healthy=lambda: _http_ok(f"{url}/healthz"),
        needs_infrastructure=True,
        start_timeout_s=90.0,
    )


def _streaming(settings: Settings) -> Service:
    def healthy() -> bool:
        # No port to probe: healthy while it runs and its driver loop beats (once the JVM is up). The beat is
        # read here, as `adstream stream --check` reads it, and also matched to this job's pid.
        pid = running_pid(settings, "streaming")
        return pid is not None and streaming.is_alive(settings, pid)

    return Service(
        name="streaming",
        url=_metrics_url(settings, f"Kafka -> {settings.lake_root}", settings.streaming_metrics_port),
        ports=(),
        command=(str(ADSTREAM), "stream"),
        env=settings_env(settings),
        healthy=healthy,
        needs_infrastructure=True,
        start_timeout_s=150.0,
        niceness=BATCH_NICENESS,
    )


def _ticking(settings: Settings, name: str, verb: str, url: str, alive_in: str, niceness: int) -> Service:
    """A service with no port to probe: healthy while it runs and its heartbeat is fresh (``alive_in``'s
    ``is_alive``, imported only when asked: MLflow's client or Kafka's sit behind it)."""

    def healthy() -> bool:
        return running_pid(settings, name) is not None and importlib.import_module(alive_in).is_alive(settings)

    return Service(
        name=name,
        url=url,
        ports=(),
        command=(str(ADSTREAM), verb),
        env=settings_env(settings),
        healthy=healthy,
        needs_infrastructure=True,
        start_timeout_s=90.0,
        niceness=niceness,
    )


def _calibrator(settings: Settings) -> Service:
    url = f"{settings.lake_root}/gold/calibrators"
    return _ticking(settings, "calibrator", "calibrate", url, "ml.calibrate", BATCH_NICENESS)


def _optimizer(settings: Settings) -> Service:
    url = _metrics_url(
        settings, f"Kafka {settings.kafka_bootstrap_servers} -> campaign-decisions", settings.optimizer_metrics_port
    )
    return _ticking(settings, "optimizer", "optimize", url, "optimizer.service", 0)


def _dashboard(settings: Settings) -> Service:
    url = f"http://{settings.bind_host}:{settings.dashboard_port}"
    return Service(
        name="dashboard",
        url=url,
        ports=(PortClaim(settings.dashboard_port, "DASHBOARD_PORT"),),
        command=(str(ADSTREAM), "dashboard"),
        env={**settings_env(settings), "DASHBOARD_PORT": str(settings.dashboard_port)},
        healthy=lambda: _http_ok(f"{url}/healthz"),
        needs_infrastructure=True,
        # At batch priority it starts beside the streaming job's JVM, and gets the CPU only what that leaves.
        start_timeout_s=120.0,
        niceness=BATCH_NICENESS,  # a viewer: it never takes CPU from the auctions it shows
    )


SERVICE_FACTORIES: dict[str, Callable[[Settings], Service]] = {
    "kafka": _kafka,
    "shared-store": _shared_store,
    "mlflow": _mlflow,
    "airflow": _airflow,
    "ad-manager": _ad_manager,
    "auction": _auction,
    "streaming": _streaming,
    "calibrator": _calibrator,
    "optimizer": _optimizer,
    "dashboard": _dashboard,
}


def build_services(settings: Settings, names: Sequence[str] = ()) -> list[Service]:
    unknown = set(names) - set(SERVICE_FACTORIES)
    if unknown:
        raise ServiceError(f"unknown service(s) {sorted(unknown)}; choose from {list(SERVICE_FACTORIES)}")
    return [SERVICE_FACTORIES[name](settings) for name in (names or SERVICE_FACTORIES)]


# --- process control -------------------------------------------------------


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.local_dir.resolve() / "run" / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.log_dir.resolve() / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if _group_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader of a group with no other members is not alive.
    try:
        waited, _ = os.waitpid(pgid, os.WNOHANG)
        if waited == pgid:
            return _group_alive(pgid)
    except ChildProcessError:
        pass  # not our child: killpg's answer stands
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(service: Service, host: str) -> None:
    for claim in service.ports:
        if port_in_use(host, claim.port):
            raise ServiceError(
                f"{service.name}: port {claim.port} on {host} is already taken by another process; "
                f"stop that process or choose another port with {claim.setting}=<port>"
            )


def start(settings: Settings, service: Service) -> int:
    """Start ``service`` unless it is already running; returns its process group id."""
    pid = running_pid(settings, service.name)
    if pid is not None:
        return pid
    check_ports_free(service, settings.bind_host)
    if service.prepare:
        service.prepare()
    log = log_file(settings, service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path = _pid_file(settings, service.name)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            service.command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_process_env(**service.env),
            cwd=PROJECT_ROOT,
            start_new_session=True,
            preexec_fn=partial(_lower_priority, service.niceness) if service.niceness else None,
        )
    pid_path.write_text(str(proc.pid))
    return proc.pid


def _lower_priority(niceness: int) -> None:
    """Runs in the child after setsid. With autogroup scheduling (on by default in many kernels, and
    here) a session is scheduled as one group whose own nice is all that counts against other
    sessions, so the group's nice is set as well as the process's."""
    os.nice(niceness)
    with contextlib.suppress(OSError):
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
        try:
            os.write(fd, str(niceness).encode())
        finally:
            os.close(fd)


def wait_healthy(settings: Settings, service: Service, began: float | None = None) -> float:
    """Seconds from ``began`` (default: now) until ``service`` answered; raises with the log's tail if it never did."""
    began = time.monotonic() if began is None else began
    while True:
        # Checked before the clock: a wave's later services are waited for after its slower ones, and one
        # that came up meanwhile is healthy even when its timeout has passed.
        if running_pid(settings, service.name) is None:
            raise ServiceError(f"{service.name} exited during start-up{_log_tail(settings, service.name)}")
        if service.healthy():
            return time.monotonic() - began
        if time.monotonic() - began >= service.start_timeout_s:
            break
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} was not healthy after {service.start_timeout_s:.0f}s{_log_tail(settings, service.name)}"
    )


def stop(settings: Settings, service: Service, timeout_s: float = 30.0) -> str:
    """Stops the whole process group: "stopped", "killed" (did not exit in time) or "not running"."""
    pid = running_pid(settings, service.name)
    if pid is None:
        return "not running"
    # The whole group: `airflow standalone` would leave its components behind on SIGTERM alone,
    # while each component shuts down gracefully on its own SIGTERM.
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.25)
    outcome = "stopped"
    if _group_alive(pid):
        outcome = f"killed (still running {timeout_s:.0f}s after SIGTERM)"
        _signal_group(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    _pid_file(settings, service.name).unlink(missing_ok=True)
    return outcome


@contextlib.contextmanager
def running(settings: Settings, name: str) -> Iterator[int]:
    """One service for the length of a ``with`` block (benchmarks' private brokers); yields its pid."""
    (service,) = build_services(settings, [name])
    pid = start(settings, service)
    try:
        wait_healthy(settings, service)
        yield pid
    finally:
        stop(settings, service)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone, which is the goal
        os.killpg(pgid, sig)


def _log_tail(settings: Settings, name: str, lines: int = 25) -> str:
    path = log_file(settings, name)
    if not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"; see {path}. Last lines:\n  " + "\n  ".join(tail)


# --- health probes ----------------------------------------------------------


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _airflow_healthy(base_url: str) -> bool:
    try:
        body = httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    return all(
        (body.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor")
    )


def _kafka_answers(settings: Settings) -> bool:
    host, port = settings.bind_host, settings.kafka_port
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    # The port answering is not enough: a starting broker accepts connections before it serves metadata.
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "log_level": 0})
    try:
        admin.list_topics(timeout=3.0)
    except KafkaException:
        return False
    return True


def _require_java() -> str:
    java = shutil.which("java")
    if not java:
        raise ServiceError(
            "java was not found on PATH; install OpenJDK 17 (e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    return java


# --- what `adstream up|down|status|airflow` do ---------------------------------


def up(settings: Settings, names: Sequence[str] = ()) -> None:
    services = build_services(settings, names)
    began = time.monotonic()
    started = {s.name: running_pid(settings, s.name) is None for s in services}
    # Infrastructure first, all at once (they warm up in parallel); then what needs it.
    for wave in (False, True):
        batch = [service for service in services if service.needs_infrastructure is wave]
        wave_began = time.monotonic()  # each wave's start-up timeouts count from its own start
        for service in batch:
            start(settings, service)
        for service in batch:
            took = wait_healthy(settings, service, wave_began) + (wave_began - began)
            verb = "started" if started[service.name] else "already running"
            log = log_file(settings, service.name)
            print(f"  {service.name:<10} {verb:<16} {service.url:<32} ready {took:4.1f}s after `up`  log: {log}")
    print(f"all {len(services)} service(s) healthy {time.monotonic() - began:.1f}s after `up`", flush=True)


def down(settings: Settings, names: Sequence[str] = ()) -> None:
    for service in reversed(build_services(settings, names)):
        print(f"  {service.name:<10} {stop(settings, service)}", flush=True)


def status(settings: Settings, names: Sequence[str] = ()) -> int:
    """Prints each service's state; returns how many are not healthy."""
    unhealthy = 0
    for service in build_services(settings, names):
        pid = running_pid(settings, service.name)
        state = "down" if pid is None else ("healthy" if service.healthy() else "starting/unhealthy")
        unhealthy += state != "healthy"
        print(f"  {service.name:<8} {state:<18} {service.url:<32} pid={pid or '-'}")
    return unhealthy


def airflow_cli(
    settings: Settings, *args: str, check: bool = True, capture_output: bool = False
) -> subprocess.CompletedProcess[str]:
    """Runs the `airflow` CLI against the local instance (its home, DAG folder and database)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(VENV_BIN / "airflow"), *args],
        env=child_process_env(**airflow_env(settings)),
        cwd=PROJECT_ROOT,
        check=check,
        text=True,
        capture_output=capture_output,
    )


# --- the commands (`adstream up|down|status|airflow`; devstack.cli loads this module when one runs) ---

commands = commands_app()

SERVICES_HELP = f"services, a subset of {list(SERVICE_FACTORIES)} (default: all)"
Names = Annotated[list[str] | None, typer.Argument(help=SERVICES_HELP, show_default=False)]


def _managed(action: str, names: list[str] | None) -> int:
    """``action`` on the named services; a ServiceError is reported as `error: ...` with exit status 2."""
    settings = get_settings()
    try:
        if action == "up":
            up(settings, names or ())
        elif action == "down":
            down(settings, names or ())
        else:
            return 1 if status(settings, names or ()) else 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


@commands.command("up")
def up_command(names: Names = None) -> None:
    """Start the local services (idempotent: a healthy service is left alone)."""
    raise typer.Exit(_managed("up", names))


@commands.command("down")
def down_command(names: Names = None) -> None:
    """Stop the local services (each one's whole process group)."""
    raise typer.Exit(_managed("down", names))


@commands.command("status")
def status_command(names: Names = None) -> None:
    """Each service's state; exit status 1 when one is not healthy."""
    raise typer.Exit(_managed("status", names))


@commands.command(
    "airflow",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
def airflow_command(ctx: typer.Context) -> None:
    """The airflow CLI, pointed at the local instance (its home, DAG folder and database)."""
    raise typer.Exit(airflow_cli(get_settings(), *ctx.args, check=False).returncode)
