"""Auction-service load benchmark (`make bench-auction`): the real service over HTTP, compiled scorer vs naive.

A platform is built in a scratch directory:
- a SQLite campaign store with 1,000 active campaigns from ``campaigns.seed_instructions``
  (applied with ``store.apply_instruction``) over a synthetic ad catalog of the ADS-16
  categories (the bench never reads the real lake);
- gold/user_features and gold/ad_features with a distinct row per user and per ad, so
  every candidate of an auction has its own feature values;
- an MLflow SQLite store whose ``ctr-model@champion`` is trained by ``ml.train.train`` on
  3,000 rows of ``simulator.ctr_examples.training_frame``: every family, the best one promoted
  (``--family`` forces one), unless ``--tracking-uri`` names a store with a champion;
- a real Kafka broker (started like the tests start theirs): the service publishes every
  auction to ``auctions``. ``--no-kafka`` runs without one and says so.

Each run starts the service fresh under uvicorn in its own process on a free loopback
port (reservations and caches start empty each time), warms it up, then drives
``POST /v1/auction`` with ``infra/loadgen`` (autocannon, installed by ``make setup``) at
32 connections for ``--duration`` seconds (naive: for ``--naive-requests`` requests, as
it answers under one auction per second), over 2,000 request bodies (users from a pool
of 10,000, 80% of them in gold/user_features; countries, ages, genders and devices each
sometimes unstated; seller floors; blocked categories; anonymous requests). Two modes,
alternated, ``--repeats`` times each:
    compiled  the service as shipped (``ml.scorer.CompiledScorer``, one batch per auction);
    naive     the same service, each candidate scored alone: a one-row pandas frame through
              the MLflow pyfunc model's ``predict`` (a seed design's per-row scoring).
Medians over the repeats (auctions/s, p50/p99 latency, fill rate, errors, CPU share per
process) and the compiled/naive ratios are printed and written to reports/bench/auction.json.
Targets (compiled): >= 1,500 auctions/s and p99 <= 25 ms.

    python -m benchmarks.auction [--duration 20] [--repeats 3] [--connections 32] [--family NAME]
                                    [--tracking-uri URI] [--no-kafka] [--workdir DIR]

The naive mode exists only in this module (its own ``serve --mode naive`` child process
wraps the loaded model); the service has no setting for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from adstream.settings import Settings, child_process_env, get_settings
from auction_service.campaign_store.instructions import TARGET_COUNTRIES
from auction_service.serving.features import segment
from auction_service.serving.openrtb import IAB_CATEGORIES

MODES = ("compiled", "naive")
TARGET_AUCTIONS_PER_S = 1_500
TARGET_P99_MS = 25.0
CAMPAIGNS = 1_000
ADS = 2_000
TRAINING_ROWS = 3_000
USERS = 10_000
KNOWN_USER_SHARE = 0.8  # users with a row in gold/user_features; the others get the request's attributes
BODIES = 2_000
BUSY_MACHINE_CORES = 0.25  # CPU used by processes outside the bench above which a run is flagged
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOADGEN = PROJECT_ROOT / "infra" / "loadgen"

CATEGORIES = tuple(IAB_CATEGORIES)  # the ADS-16 categories silver/ads carries
COUNTRIES = (*TARGET_COUNTRIES, "Brazil", "Japan", "Canada", "Spain", "Kenya")  # the last five no campaign targets
DEVICE_MIX = (("mobile", 55), ("desktop", 30), ("tablet", 10), ("ctv", 5))
INCOME_BANDS = ("low", "lower_mid", "upper_mid", "high")
STATED_SHARE = (("country", 0.95), ("age", 0.7), ("gender", 0.6), ("device_type", 0.95))


# --- the synthetic platform and request mix (pure: seeded, no I/O) ---


def ad_catalog(ads: int, seed: int) -> list[dict[str, str]]:
    """Rows shaped like silver/ads (ad_id, source, category, title); a few big categories, many small."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(CATEGORIES))]
    rows = []
    for i in range(ads):
        category = rng.choices(CATEGORIES, weights)[0]
        rows.append({"ad_id": f"bench-ad-{i:05d}", "source": "bench", "category": category, "title": f"{category} {i}"})
    return rows


def user_profiles(users: int, seed: int) -> list[dict[str, Any]]:
    """The user pool: id, age, gender, country, device and the gold numerics of each user."""
    rng = random.Random(seed)
    country_weights = [
        8 if country == "United States" else 2 if country in TARGET_COUNTRIES else 1 for country in COUNTRIES
    ]
    devices, device_weights = zip(*DEVICE_MIX, strict=True)
    return [
        {
            "user_id": f"bench-u{i:05d}",
            "age": rng.randint(18, 70),
            "gender": rng.choice(("F", "M")),
            "country": rng.choices(COUNTRIES, country_weights)[0],
            "device_type": rng.choices(devices, device_weights)[0],
            "income_band": rng.choice(INCOME_BANDS),
            "daily_time_spent_on_site": round(rng.uniform(32, 92), 2),
            "daily_internet_usage": round(rng.uniform(104, 270), 2),
            "area_income": round(rng.uniform(14_000, 80_000), 1),
        }
        for i in range(users)
    ]


def request_bodies(profiles: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` POST /v1/auction bodies: users drawn from ``profiles`` with each attribute sometimes unstated
    (``STATED_SHARE``), 5% anonymous, a seller floor on 30%, one or two blocked categories on 10%."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        if rng.random() < 0.05:  # anonymous: only what the page knows
            body: dict[str, Any] = {"device_type": rng.choice(("mobile", "desktop")), "channel": "web"}
        else:
            user = rng.choice(profiles)
            body = {"user_id": user["user_id"], "channel": rng.choice(("web", "app"))}
            body |= {key: user[key] for key, share in STATED_SHARE if rng.random() < share}
        body["content_type"] = "video" if rng.random() < 0.15 else "display"
        if rng.random() < 0.3:
            body["floor_cpm"] = f"{rng.randint(10, 300) / 100:.2f}"
        if rng.random() < 0.1:
            body["blocked_categories"] = rng.sample(CATEGORIES, rng.randint(1, 2))
        bodies.append(body)
    return bodies


def segment_affinity(seed: int) -> dict[str, dict[str, float]]:
    """Per segment (gender x age band, as spark_jobs.features keys it), a CTR per ad category."""
    rng = random.Random(seed)
    segments = sorted({segment(gender, age) for gender in ("F", "M") for age in (20, 30, 40, 50, 60)})
    return {key: {category: round(rng.uniform(0.02, 0.3), 4) for category in CATEGORIES} for key in segments}


def user_feature_rows(
    profiles: Sequence[Mapping[str, Any]], affinity: Mapping[str, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """gold/user_features rows (the columns the service reads) for ``profiles``."""
    rows = []
    for user in profiles:
        key = segment(user["gender"], user["age"])
        rows.append(
            {
                "user_id": user["user_id"], "age": user["age"], "gender": user["gender"],
                "income_band": user["income_band"], "country": user["country"], "segment": key,
                "daily_time_spent_on_site": user["daily_time_spent_on_site"],
                "daily_internet_usage": user["daily_internet_usage"], "area_income": user["area_income"],
                "category_affinity": sorted(affinity[key].items()),
            }
        )  # fmt: skip
    return rows


def ad_feature_rows(ads: Sequence[Mapping[str, str]], seed: int) -> list[dict[str, Any]]:
    """gold/ad_features rows: a smoothed CTR per category, and a distinct one per ad around it."""
    rng = random.Random(seed)
    category_ctr = {category: round(rng.uniform(0.05, 0.2), 4) for category in CATEGORIES}
    return [
        {
            "ad_id": ad["ad_id"],
            "category": ad["category"],
            "ad_ctr_smoothed": category_ctr[ad["category"]] * math.exp(rng.gauss(0, 0.25)),
            "category_ctr_smoothed": category_ctr[ad["category"]],
        }
        for ad in ads
    ]


def champion_training_frame(rows: int, seed: int) -> pd.DataFrame:
    """``simulator.ctr_examples.training_frame`` with the bench's countries and ad categories drawn in place of its
    own, so every value the service sends was seen in training (the synthetic signal is elsewhere)."""
    from simulator.ctr_examples import training_frame

    frame = training_frame(rows, seed=seed)
    rng = np.random.default_rng(seed)
    frame["country"] = rng.choice(COUNTRIES, rows)
    frame["ad_category"] = rng.choice(CATEGORIES, rows)
    return frame


# --- statistics (pure) ---


@dataclass(frozen=True)
class RunResult:
    """One measured load run against one fresh service process."""

    mode: str
    repeat: int
    duration_s: float
    responses: int
    auctions_per_s: float
    p50_ms: float
    p99_ms: float
    fill_rate: float
    errors: int  # connection errors and timeouts, plus responses other than 200 and 204
    cpu_share: dict[str, float]  # CPU seconds per wall-clock second during the run, per process


def run_result(
    mode: str, repeat: int, loadgen: Mapping[str, Any], cpu_share: Mapping[str, float] | None = None
) -> RunResult:
    """Summarises one output of infra/loadgen/drive.js. An auction is a 200 (filled) or a 204 (no fill):
    throughput counts those; the latency percentiles cover every response."""
    status = {int(code): count for code, count in loadgen["status"].items()}
    filled, unfilled = status.get(200, 0), status.get(204, 0)
    latencies = np.asarray(loadgen["latencies_ms"], dtype=np.float64)
    p50, p99 = np.percentile(latencies, [50, 99]).tolist() if latencies.size else (float("nan"), float("nan"))
    return RunResult(
        mode=mode,
        repeat=repeat,
        duration_s=float(loadgen["duration_s"]),
        responses=int(latencies.size),
        auctions_per_s=(filled + unfilled) / float(loadgen["duration_s"]),
        p50_ms=p50,
        p99_ms=p99,
        fill_rate=filled / (filled + unfilled) if filled + unfilled else 0.0,
        errors=int(loadgen["errors"]) + sum(count for code, count in status.items() if code not in (200, 204)),
        cpu_share=dict(cpu_share or {}),
    )


def mode_medians(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The median of each figure over one mode's repeats."""
    processes = sorted({name for run in runs for name in run.cpu_share})
    return {
        "repeats": len(runs),
        "auctions_per_s": statistics.median(run.auctions_per_s for run in runs),
        "p50_ms": statistics.median(run.p50_ms for run in runs),
        "p99_ms": statistics.median(run.p99_ms for run in runs),
        "fill_rate": statistics.median(run.fill_rate for run in runs),
        "errors": statistics.median(run.errors for run in runs),
        "cpu_share": {name: statistics.median(run.cpu_share.get(name, 0.0) for run in runs) for name in processes},
    }


def comparison(compiled: Mapping[str, Any], naive: Mapping[str, Any] | None) -> dict[str, Any]:
    """The targets (compiled) and, with a naive baseline, the ratios: auctions/s compiled over naive,
    latency naive over compiled (so every ratio above 1 favours the compiled service)."""

    def ratio(numerator: float, denominator: float) -> float | None:
        return numerator / denominator if naive is not None and denominator else None

    return {
        "throughput_ratio": ratio(compiled["auctions_per_s"], naive["auctions_per_s"] if naive else 0),
        "p50_ratio": ratio(naive["p50_ms"] if naive else 0, compiled["p50_ms"]),
        "p99_ratio": ratio(naive["p99_ms"] if naive else 0, compiled["p99_ms"]),
        "target_auctions_per_s_met": compiled["auctions_per_s"] >= TARGET_AUCTIONS_PER_S,
        "target_p99_met": compiled["p99_ms"] <= TARGET_P99_MS,
    }


def table(medians: Mapping[str, Mapping[str, Any]], compared: Mapping[str, Any]) -> str:
    """The printed summary: a row per mode, the ratios, the targets, and a warning for a busy machine."""

    def times(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.1f}x"

    lines = [f"{'mode':<10}{'auctions/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'fill':>8}{'errors':>8}  CPU cores used"]
    for mode, m in medians.items():
        cpu = ", ".join(f"{name} {share:.2f}" for name, share in m["cpu_share"].items())
        lines.append(
            f"{mode:<10}{m['auctions_per_s']:>12,.1f}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}"
            f"{m['fill_rate']:>8.1%}{m['errors']:>8.0f}  {cpu}"
        )
    if compared["throughput_ratio"] is not None:
        lines.append(
            f"compiled vs naive: {times(compared['throughput_ratio'])} the auctions/s; "
            f"p50 {times(compared['p50_ratio'])} and p99 {times(compared['p99_ratio'])} lower "
            "(the naive latencies are queueing: 32 requests wait on seconds per auction)"
        )
    met = {True: "met", False: "MISSED"}
    lines.append(
        f"targets (compiled): >= {TARGET_AUCTIONS_PER_S:,} auctions/s {met[compared['target_auctions_per_s_met']]}, "
        f"p99 <= {TARGET_P99_MS:.0f} ms {met[compared['target_p99_met']]}"
    )
    busy = max((m["cpu_share"].get("other", 0.0) for m in medians.values()), default=0.0)
    if busy > BUSY_MACHINE_CORES:
        lines.append(
            f"WARNING: other processes used {busy:.2f} cores during the runs; the figures understate the service"
        )
    return "\n".join(lines)


# --- the naive baseline (installed only by this module's `serve --mode naive`) ---


class PerRowPyfuncScorer:
    """Scores each candidate alone: a one-row pandas frame through the MLflow pyfunc model's ``predict``."""

    def __init__(self, pyfunc_model: Any) -> None:
        self._model = pyfunc_model

    def score(self, batch: Mapping[str, Any]) -> np.ndarray:
        from ml.features import FEATURES, INTEGER_FEATURES
        from ml.scorer import Coded

        # The service hands categorical columns over as ``Coded``; the seed design had plain values.
        batch = {name: values.tolist() if isinstance(values, Coded) else values for name, values in batch.items()}
        pctr = np.empty(len(batch[FEATURES[0]]))
        for i in range(pctr.size):
            row = {name: batch[name][i] for name in FEATURES}
            for name in INTEGER_FEATURES:  # the model's signature takes them as integers
                row[name] = int(row[name])
            pctr[i] = np.asarray(self._model.predict(pd.DataFrame([row], columns=list(FEATURES))))[0, 1]
        return pctr


def install_naive_scorer(state: Any, tracking_uri: str) -> None:
    """Replaces the loaded champion's compiled scorer by ``PerRowPyfuncScorer`` on the same version.

    The model watcher swaps only when the alias moves, so the wrapper stays for the run.
    Refuses a baseline that does not score a probe like the compiled scorer (to 1e-9).
    """
    import mlflow

    from adstream.contracts import REGISTERED_MODEL
    from ml.features import FEATURES
    from simulator.ctr_examples import training_frame

    loaded = state.model.current
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    naive = PerRowPyfuncScorer(mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{loaded.version}"))
    probe = training_frame(20, seed=1)
    batch = {name: probe[name].tolist() for name in FEATURES}
    expected, actual = loaded.scorer.score(batch), naive.score(batch)
    if not np.allclose(expected, actual, rtol=0, atol=1e-9):
        raise RuntimeError(f"the pyfunc baseline scores {actual.tolist()}, the compiled scorer {expected.tolist()}")
    state.model.swap(replace(loaded, scorer=naive))


def serve(mode: str, port: int) -> int:
    """One service process under uvicorn, with the platform's settings from the environment."""
    from auction_service.api.app import create_app
    from auction_service.fastpath import server
    from auction_service.serving.state import ServiceState

    settings = get_settings()
    state = ServiceState.open(settings)
    if mode == "naive":
        install_naive_scorer(state, settings.mlflow_tracking_uri)
    state.start()
    try:
        server.run(create_app(settings, state=state), host=settings.bind_host, port=port)
    finally:
        state.stop()
    return 0


# --- building the platform (I/O) ---


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def platform_settings(base: Settings, workdir: Path, tracking_uri: str | None) -> Settings:
    """Settings isolated in ``workdir``, on free ports, sharing the project's jar cache and reports."""
    kafka_port = free_port()
    return base.model_copy(
        update={
            "local_dir": workdir / "local",
            "lake_root": str(workdir / "lake"),
            "jar_cache_dir": Path(base.jar_cache_dir).resolve(),
            "reports_dir": base.reports_dir.resolve(),
            "campaign_db_url": f"sqlite:///{workdir / 'campaigns.db'}",
            "mlflow_tracking_uri": tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}",
            "kafka_port": kafka_port,
            "kafka_controller_port": free_port(),
            "kafka_bootstrap_servers": f"{base.bind_host}:{kafka_port}",
        }
    )


def seed_campaigns(settings: Settings, n: int, seed: int) -> int:
    """``n`` campaigns from ``seed_instructions`` over the synthetic catalog, applied to the store."""
    from auction_service.campaign_store import store
    from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
    from auction_service.campaign_store.instructions import seed_instructions

    engine = make_engine(settings)
    migrate(settings, engine)
    instructions = seed_instructions(ad_catalog(ADS, seed), n, seed, datetime.now(UTC))
    with make_session_factory(engine)() as session:
        created = sum(store.apply_instruction(session, instruction).changed for instruction in instructions)
    engine.dispose()
    return created


def write_gold_features(settings: Settings, seed: int) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    from adstream.contracts import Table

    known_users = user_profiles(USERS, seed)[: int(USERS * KNOWN_USER_SHARE)]
    user_schema = pa.schema(
        [
            ("user_id", pa.string()), ("age", pa.int32()), ("gender", pa.string()), ("income_band", pa.string()),
            ("country", pa.string()), ("segment", pa.string()), ("daily_time_spent_on_site", pa.float64()),
            ("daily_internet_usage", pa.float64()), ("area_income", pa.float64()),
            ("category_affinity", pa.map_(pa.string(), pa.float64())),
        ]
    )  # fmt: skip
    users = pa.Table.from_pylist(user_feature_rows(known_users, segment_affinity(seed)), schema=user_schema)
    write_deltalake(settings.delta_rs_location(Table.GOLD_USER_FEATURES)[0], users, mode="overwrite")
    ads = pa.Table.from_pylist(ad_feature_rows(ad_catalog(ADS, seed), seed))
    write_deltalake(settings.delta_rs_location(Table.GOLD_AD_FEATURES)[0], ads, mode="overwrite")


def train_champion(settings: Settings, workdir: Path, seed: int, family: str | None) -> str:
    """A champion in a fresh MLflow store: ``ml.train.train`` over every family (the best is promoted),
    or ``family`` trained beside the baseline and made champion. Returns the champion's family."""
    from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL
    from ml.pipelines import FAMILIES
    from ml.registry import register_challenger
    from ml.tracking import tracking_client
    from ml.train import BASELINE_FAMILY, fit_and_register, train

    uri = settings.mlflow_tracking_uri
    tracking_client(uri).create_experiment(MLFLOW_EXPERIMENT, artifact_location=str(workdir / "mlflow-artifacts"))
    frame = champion_training_frame(TRAINING_ROWS, seed)
    cwd = Path.cwd()
    os.chdir(workdir)  # anything MLflow writes by default stays in the scratch directory
    try:
        if family is None:
            result = train(settings, frame, table_version=None)
            if not result.promotion.decision.promote:
                raise RuntimeError(f"the trained model was not promoted: {result.promotion.decision.reasons}")
            return result.best_family
        families = {name: FAMILIES[name] for name in {BASELINE_FAMILY, family}}
        candidate, _ = fit_and_register(settings, frame, None, families=families, register=False)
        run = candidate.runs[family]
        version = register_challenger(uri, run.model_uri, run.model_id, run.run_id, family)
        tracking_client(uri).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
        return family
    finally:
        os.chdir(cwd)


def build_platform(settings: Settings, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Store, gold features and champion in ``workdir``; a workdir that already holds them is reused."""
    marker = workdir / "platform.json"
    wanted = {"campaigns": args.campaigns, "seed": args.seed, "family": args.family, "tracking_uri": args.tracking_uri}
    if marker.exists():
        platform = json.loads(marker.read_text())
        if platform["wanted"] != wanted:
            raise SystemExit(f"{workdir} holds a platform built for {platform['wanted']}; pass another --workdir")
        print(f"reusing the platform in {workdir}", flush=True)
        return platform
    began = time.monotonic()
    platform = {
        "wanted": wanted,
        "campaigns": seed_campaigns(settings, args.campaigns, args.seed),
        "champion_family": "(given)"
        if args.tracking_uri
        else train_champion(settings, workdir, args.seed, args.family),
    }
    write_gold_features(settings, args.seed)
    marker.write_text(json.dumps(platform))
    print(f"platform built in {time.monotonic() - began:.0f}s in {workdir}", flush=True)
    return platform


@contextlib.contextmanager
def kafka_broker(settings: Settings) -> Iterator[int]:
    """A single-node broker for the run, with the auction log's topic; yields its pid."""
    from adstream.contracts import Topic
    from adstream.messaging import ensure_topics
    from devstack import services

    with services.running(settings, "kafka") as pid:
        ensure_topics(settings, [Topic.AUCTIONS])
        yield pid


# --- the service and the load generator (I/O) ---


def loadgen_modules() -> Path:
    return get_settings().local_dir.resolve() / "node" / "node_modules"  # where `make setup` installs it


def loadgen_command() -> list[str]:
    node = shutil.which("node")
    if node is None or not (loadgen_modules() / "autocannon").is_dir():
        raise SystemExit(
            f"the load generator is not installed (node: {node or 'not found'}; autocannon in {loadgen_modules()}): "
            "run `make setup`, which installs infra/loadgen with `npm ci` (Node.js 18 or later is needed)"
        )
    return [node, str(LOADGEN / "drive.js")]


def drive(
    url: str,
    bodies: Sequence[str],
    connections: int,
    duration_s: float,
    timeout_s: float,
    amount: int | None = None,
) -> dict[str, Any]:
    """One load-generator run against ``url``: ``duration_s`` seconds, or ``amount`` requests; its output."""
    spec = {
        "url": url,
        "method": "POST",
        "connections": connections,
        "duration_s": duration_s,
        "timeout_s": timeout_s,
        "amount": amount,
        "headers": {"content-type": "application/json"},
        "bodies": list(bodies),
    }
    done = subprocess.run(
        loadgen_command(),
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=child_process_env(NODE_PATH=str(loadgen_modules())),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


@contextlib.contextmanager
def service_process(settings: Settings, mode: str, log_path: Path) -> Iterator[tuple[str, int]]:
    """The service under uvicorn in its own process; yields (base URL, pid) once /readyz answers 200."""
    from devstack.services import settings_env

    port = free_port()
    url = f"http://{settings.bind_host}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.auction", "serve", "--mode", mode, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_process_env(**settings_env(settings)),
            cwd=PROJECT_ROOT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {mode} service exited during start-up; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} service was not ready after 120 s; see {log_path}")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # uvicorn finishes the requests in progress: a naive service may hold minutes of them.
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    import psutil

    seconds = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            seconds[name] = times.user + times.system
    return seconds


def busy_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait


def measure(
    settings: Settings, mode: str, repeat: int, bodies: Sequence[str], args: argparse.Namespace, kafka_pid: int | None
) -> RunResult:
    """One run: a fresh service process, a warm-up, then ``args.duration`` seconds of load (compiled)
    or ``args.naive_requests`` requests (naive)."""
    log_path = settings.local_dir / "logs" / f"service-{mode}-{repeat}.log"
    with service_process(settings, mode, log_path) as (url, pid):
        target = f"{url}/v1/auction"
        # An auction takes the naive service seconds, so its runs count requests instead of seconds:
        # one warm-up request, then ``naive_requests`` at the same concurrency, all answered (in a
        # run of fixed length the 32 connections' requests would all still be queued at its end).
        naive = mode == "naive"
        timeout_s = args.naive_timeout if naive else 10
        drive(target, bodies, 1 if naive else args.connections, args.warmup, timeout_s, amount=1 if naive else None)
        pids = {"service": pid} if kafka_pid is None else {"service": pid, "kafka": kafka_pid}
        before, machine_before = cpu_seconds(pids), busy_seconds()
        amount = args.naive_requests if naive else None
        loadgen = drive(target, bodies, args.connections, args.duration, timeout_s, amount=amount)
        after, machine_after = cpu_seconds(pids), busy_seconds()
    wall = loadgen["duration_s"]
    share = {name: (after[name] - before[name]) / wall for name in before if name in after}
    share["loadgen"] = loadgen["cpu_s"] / wall
    share["other"] = max(0.0, (machine_after - machine_before) / wall - sum(share.values()))
    return run_result(mode, repeat, loadgen, share)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = platform_settings(get_settings(), workdir, args.tracking_uri)
    platform = build_platform(settings, workdir, args)
    profiles = user_profiles(USERS, args.seed)
    bodies = [json.dumps(body, separators=(",", ":")) for body in request_bodies(profiles, BODIES, args.seed)]
    runs: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        kafka_pid = None
        if args.no_kafka:
            # Nothing listens there: the service logs that it runs without Kafka and publishes nothing.
            settings = settings.model_copy(update={"kafka_bootstrap_servers": f"{settings.bind_host}:{free_port()}"})
            print("Kafka: DISABLED (--no-kafka): auctions are not published to the auctions topic", flush=True)
        else:
            kafka_pid = stack.enter_context(kafka_broker(settings))
            print(f"Kafka: a real broker at {settings.kafka_bootstrap_servers}; every auction is published", flush=True)
        for repeat in range(1, args.repeats + 1):
            for mode in args.modes:
                result = measure(settings, mode, repeat, bodies, args, kafka_pid)
                runs.append(result)
                print(
                    f"repeat {repeat} {mode:<8} {result.auctions_per_s:>8,.1f} auctions/s  p50 {result.p50_ms:.1f} ms"
                    f"  p99 {result.p99_ms:.1f} ms  fill {result.fill_rate:.1%}  errors {result.errors}  cores: "
                    + ", ".join(f"{name} {share:.2f}" for name, share in result.cpu_share.items()),
                    flush=True,
                )
    medians = {mode: mode_medians([r for r in runs if r.mode == mode]) for mode in args.modes}
    compared = comparison(medians["compiled"], medians.get("naive")) if "compiled" in medians else {}
    return {
        "setup": {
            "campaigns": platform["campaigns"],
            "champion_family": platform["champion_family"],
            "tracking_uri": args.tracking_uri or "(scratch MLflow store)",
            "kafka": "disabled" if args.no_kafka else "real broker",
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "naive_requests": args.naive_requests,
            "repeats": args.repeats,
            "request_bodies": len(bodies),
            "cores": os.cpu_count(),
            "loadgen": "autocannon " + json.loads((LOADGEN / "package.json").read_text())["dependencies"]["autocannon"],
        },
        "runs": [asdict(r) for r in runs],
        "medians": medians,
        "comparison": compared,
    }


def _parser() -> argparse.ArgumentParser:
    from ml.pipelines import FAMILIES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.auction", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each compiled run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--campaigns", type=int, default=CAMPAIGNS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--naive-requests", type=int, default=32, help="requests per naive run (default 32)")
    parser.add_argument("--naive-timeout", type=float, default=600.0, help="request timeout of naive runs (s)")
    parser.add_argument("--family", choices=list(FAMILIES), help="champion family (default: the best one trained)")
    parser.add_argument("--tracking-uri", help="serve this MLflow store's ctr-model@champion instead of training one")
    parser.add_argument("--no-kafka", action="store_true", help="no broker: the service does not publish auctions")
    parser.add_argument("--workdir", type=Path, help="scratch directory, kept and reused (default: a temporary one)")
    parser.add_argument("--output", type=Path, help="default: REPORTS_DIR/bench/auction.json")
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) one service process of the bench")
    serve_parser.add_argument("--mode", choices=MODES, required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "serve" and args.naive_requests < args.connections:
        parser.error(f"--naive-requests ({args.naive_requests}) must be at least --connections ({args.connections})")
    if args.command == "serve":
        return serve(args.mode, args.port)
    loadgen_command()  # fails before anything is built when the load generator is missing
    output = args.output or get_settings().reports_dir / "bench" / "auction.json"
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-auction-")))
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, workdir.resolve())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    if result["comparison"]:
        print(table(result["medians"], result["comparison"]))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
