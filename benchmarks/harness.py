"""What every benchmark (and the test suite) needs around a measurement: isolated settings on free ports, medians,
ratios, child processes of the `adstream` command, and the report under REPORTS_DIR/bench/."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from adstream.settings import Settings, child_process_env, get_settings
from devstack.services import PROJECT_ROOT, settings_env

BUSY_MACHINE_CORES = 0.25  # CPU used by processes outside a bench above which a run is flagged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The jar cache `make setup` filled (JAR_CACHE_DIR, default .local/jars), resolved once, where the process
# started: a test fixture that changes directory must not move it.
JAR_CACHE = Path(get_settings().jar_cache_dir).resolve()


def isolated_settings(workdir: Path, **overrides: object) -> Settings:
    """Settings isolated in ``workdir``: its own lake, local state, reports, campaign store and MLflow store, and
    every port free, so nothing touches the project's lake or a running `make up`. The rest (jar cache, Spark
    tuning, watermark...) is as configured; ``overrides`` win."""
    kafka_port = free_port()
    values: dict[str, object] = {
        "lake_root": str(workdir / "lake"),
        "local_dir": workdir / "local",
        "reports_dir": workdir / "reports",
        "jar_cache_dir": JAR_CACHE,
        "campaign_db_url": f"sqlite:///{workdir / 'campaigns.db'}",
        "mlflow_tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "kafka_port": kafka_port,
        "kafka_controller_port": free_port(),
        "mlflow_port": free_port(),
        "airflow_port": free_port(),
        "airflow_worker_log_port": free_port(),
        "airflow_trigger_log_port": free_port(),
        "auction_port": free_port(),
        "shared_store_port": free_port(),
        "dashboard_port": free_port(),
        # No metrics exporters unless a test asks for one (on a free port of its own).
        "streaming_metrics_port": 0,
        "ad_manager_metrics_port": 0,
        "optimizer_metrics_port": 0,
        "auction_metrics_port": 0,
    }
    values.update(overrides)
    settings = Settings(**values)
    if "kafka_bootstrap_servers" in overrides:
        return settings
    # Set even where the environment names a broker: the isolated one is on this port.
    return settings.model_copy(update={"kafka_bootstrap_servers": f"{settings.bind_host}:{settings.kafka_port}"})


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the values present; None when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def median_of(rows: Iterable[Mapping[str, Any]], key: str) -> float:
    """The median of one figure over the repeats' rows."""
    return statistics.median(row[key] for row in rows)


def ratio(numerator: float | None, denominator: float | None, digits: int | None = None) -> float | None:
    """``numerator / denominator`` (rounded to ``digits``); None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    value = numerator / denominator
    return value if digits is None else round(value, digits)


def report_path(settings: Settings, name: str) -> Path:
    """REPORTS_DIR/bench/<name>.json: where a bench writes its figures unless told otherwise."""
    return settings.reports_dir / "bench" / f"{name}.json"


def write_report(result: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def check_choices(option: str, given: Sequence[str], choices: Sequence[str]) -> None:
    """A usage error naming the choices unless every value ``given`` to ``option`` is one of them."""
    unknown = [value for value in given if value not in choices]
    if unknown:
        raise typer.BadParameter(f"{unknown[0]!r} is not one of {', '.join(choices)}", param_hint=f"'{option}'")


def launch(settings: Settings, log: Path, command: Sequence[str], *, new_session: bool = False) -> subprocess.Popen:
    """A child process with ``settings`` as its environment, its output appended to ``log``; with ``new_session``,
    in a process group of its own (so the whole group can be stopped)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_process_env(**settings_env(settings)), cwd=PROJECT_ROOT, start_new_session=new_session,
        )  # fmt: skip
