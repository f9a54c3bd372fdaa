"""Auction-service load benchmark (`make bench-auction`): the real service over HTTP against an echo baseline.

A platform is built in a scratch directory:
- a SQLite campaign store with 1,000 active campaigns from ``campaigns.seed_instructions``
  (applied with ``store.apply_instruction``) over a synthetic ad catalog of the ADS-16
  categories (the bench never reads the real lake);
- gold/user_features and gold/ad_features with a distinct row per user and per ad, so
  every candidate of an auction has its own feature values;
- an MLflow SQLite store whose ``ctr-model@champion`` is the production family, fitted by
  ``ml.train.fit_and_register`` on 3,000 rows of ``simulator.ctr_examples.training_frame`` and made
  champion, unless ``--family`` names another (``--family best``: every family trained by
  ``ml.train.train``, the best promoted) or ``--tracking-uri`` names a store with a champion;
- a real Kafka broker (started like the tests start theirs): the service publishes every
  auction to ``auctions``. ``--no-kafka`` runs without one and says so;
- the shared store every replica keeps its reservations and counters in (devstack's
  ``shared-store``, a redis-server on a free port), emptied before each run.

The family. `make run` trains every family on the committed samples (data/kaggle/) and promotes the
best: gradient_boosted_trees (HistGradientBoosting), ``PRODUCTION_FAMILY``. Nothing in ml/ names
it (the promotion is decided on the data), and training on the samples takes the whole pipeline, so
the bench names it here. On the bench's synthetic frame the best family may be a cheaper one (logistic
regression scores a batch in microseconds), which would flatter the service: the bench serves the
production family by default and reports the family it served.

Each run starts the servers fresh (reservations and caches start empty each time) on a free loopback
port, warms them up, then drives ``POST /v1/auction`` with ``benchmarks/loadgen`` (autocannon,
installed by ``make setup``) at 32 connections for ``--duration`` seconds, over 2,000 request bodies
(users from a pool of 10,000, 80% of them in gold/user_features; countries, ages, genders and
devices each sometimes unstated; seller floors; blocked categories; anonymous requests), each with
an exchange's API key. The modes, for each replica count N of ``--replicas`` (default 1):
    echo      ``benchmarks/echo.py``: a minimal FastAPI app answering the request's body, on stock
              uvicorn, N worker processes on one SO_REUSEPORT port; the same client, bodies,
              connections and duration: what the machine serves when the service does nothing;
    compiled  the service as shipped (``ml.scorer.CompiledScorer``, one batch per auction),
              N ``adstream bench auction-serve`` replicas on one SO_REUSEPORT port;
    naive     (only with ``--modes naive``; 1 replica) the same service, each candidate scored alone:
              a one-row pandas frame through the MLflow pyfunc model's ``predict`` (a seed design's
              per-row scoring), for ``--naive-requests`` requests, as it answers under one auction per second.
Every repeat round runs echo-1, compiled-1, echo-N, compiled-N (then naive) in turn, so noise on the
shared machine hits every mode. Medians over ``--repeats`` (auctions/s or requests/s, p50/p99 latency,
fill rate, errors, cores used per process) are printed and written to reports/bench/auction.json.

The headline is ``auctions/s / echo requests/s`` for 1 replica and for N: the share of a bare
FastAPI server's rate the service keeps while it auctions. Targets: compiled-1 >= 0.30x echo-1 with
p99 <= 15 ms; compiled-N >= 0.30x echo-N. The naive baseline's ratio is printed, not the headline.

The cores. Nothing is pinned: the load generator (one node process), the Kafka broker, the shared
store and the N server processes share the machine's cores, and every run reports the cores each
used (CPU seconds per wall-clock second), with "other" for everything else on the machine.

    adstream bench auction [--duration 20] [--repeats 3] [--connections 32] [--replicas 1,2]
                           [--modes echo --modes compiled --modes naive] [--family NAME|best]
                           [--tracking-uri URI] [--no-kafka] [--workdir DIR]

The naive mode exists only in this module (its own ``adstream bench auction-serve --mode naive``
child process wraps the loaded model); the service has no setting for it.
"""

from __future__ import annotations

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
from typing import Annotated, Any, Literal

import httpx
import mlflow
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import redis
import typer
from deltalake import write_deltalake

from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL, Table, Topic
from adstream.messaging import ensure_topics
from adstream.settings import Settings, child_process_env, get_settings
from auction_service.api.app import create_app
from auction_service.campaign_store import callers, store
from auction_service.campaign_store.callers import CallerKind
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.campaign_store.instructions import TARGET_COUNTRIES, seed_instructions
from auction_service.fastpath import server
from auction_service.serving.features import segment
from auction_service.serving.openrtb import IAB_CATEGORIES
from auction_service.serving.state import ServiceState
from benchmarks.harness import (
    BUSY_MACHINE_CORES,
    check_choices,
    free_port,
    isolated_settings,
    launch,
    ratio,
    report_path,
    write_report,
)
from cli.lazy import commands_app
from devstack import services
from ml.features import FEATURES, INTEGER_FEATURES
from ml.pipelines import FAMILIES
from ml.registry import register_challenger
from ml.scorer import Coded
from ml.tracking import tracking_client
from ml.train import BASELINE_FAMILY, fit_and_register, train
from simulator.ctr_examples import training_frame

MODES = ("echo", "compiled", "naive")
# A closed loop of C connections at R auctions/s has a mean latency of C / R (Little's law), so its p99 says
# how loaded the service was as much as how fast it is. Each compiled run is followed by an open-rate run
# at this share of the rate it just measured, on the same processes: the latency of a service not saturated.
PACED_SHARE = 0.5
PACED = "paced"
DEFAULT_MODES = ("echo", "compiled")
SERVICE_MODES = ("compiled", "naive")  # the auction service; echo is benchmarks/echo.py
# benchmarks.bid_filter_mix's runs: the compiled service with BID_FILTER_ENABLED false, and true.
BID_FILTER_MODES = {"unfiltered": False, "filtered": True}
PRODUCTION_FAMILY = "gradient_boosted_trees"  # what `make run` promotes on the committed samples (docstring)
BEST_FAMILY = "best"  # --family best: every family trained, the best promoted
TARGET_RATIO = 0.30  # compiled-N auctions/s over echo-N requests/s, for every N
TARGET_P99_MS = 15.0  # compiled-1
MAX_REPLICAS = 64  # as AUCTION_REPLICAS
SHARED_STORE = "shared-store"  # devstack's service name
CAMPAIGNS = 1_000
ADS = 2_000
TRAINING_ROWS = 3_000
USERS = 10_000
KNOWN_USER_SHARE = 0.8  # users with a row in gold/user_features; the others get the request's attributes
BODIES = 2_000
LOADGEN = Path(__file__).resolve().parent / "loadgen"

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
    frame = training_frame(rows, seed=seed)
    rng = np.random.default_rng(seed)
    frame["country"] = rng.choice(COUNTRIES, rows)
    frame["ad_category"] = rng.choice(CATEGORIES, rows)
    return frame


# --- the schedule and the statistics (pure) ---


def parse_replicas(value: str) -> tuple[int, ...]:
    """``--replicas``: replica counts, comma-separated ("1,2"), each once, in the order given."""
    counts: list[int] = []
    for part in value.split(","):
        try:
            count = int(part.strip())
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a replica count") from None
        if not 1 <= count <= MAX_REPLICAS:
            raise ValueError(f"a replica count is between 1 and {MAX_REPLICAS}, not {count}")
        if count not in counts:
            counts.append(count)
    return tuple(counts)


def label(mode: str, replicas: int) -> str:
    """A run's name in the report: the mode and its number of server processes ("compiled-2")."""
    return f"{mode}-{replicas}"


def schedule(modes: Sequence[str], replicas: Sequence[int]) -> list[tuple[str, int]]:
    """One repeat round's runs, in order: for each replica count the echo then the service, the naive last
    (1 replica). Every round runs them all, so a noisy moment on the machine hits one of each, not one mode."""
    order = [(mode, n) for n in replicas for mode in ("echo", "compiled") if mode in modes]
    return order + ([("naive", 1)] if "naive" in modes else [])


@dataclass(frozen=True)
class RunResult:
    """One measured load run against freshly started server processes."""

    mode: str
    replicas: int
    repeat: int
    duration_s: float
    responses: int
    per_s: float  # auctions/s (the service: 200 filled, 204 no fill) or requests/s (the echo: 200)
    p50_ms: float
    p99_ms: float
    fill_rate: float | None  # None for the echo
    errors: int  # connection errors and timeouts, plus responses other than those counted in per_s
    cpu_share: dict[str, float]  # CPU seconds per wall-clock second during the run, per process

    @property
    def label(self) -> str:
        return label(self.mode, self.replicas)


def run_result(
    mode: str, replicas: int, repeat: int, loadgen: Mapping[str, Any], cpu_share: Mapping[str, float] | None = None
) -> RunResult:
    """Summarises one output of benchmarks/loadgen/drive.js. For the service an auction is a 200 (filled) or a
    204 (no fill) and throughput counts those; for the echo, a 200. The latency percentiles cover every response."""
    status = {int(code): count for code, count in loadgen["status"].items()}
    answered = (200,) if mode == "echo" else (200, 204)
    counted = sum(status.get(code, 0) for code in answered)
    latencies = np.asarray(loadgen["latencies_ms"], dtype=np.float64)
    p50, p99 = np.percentile(latencies, [50, 99]).tolist() if latencies.size else (float("nan"), float("nan"))
    fill_rate = None if mode == "echo" else (status.get(200, 0) / counted if counted else 0.0)
    return RunResult(
        mode=mode,
        replicas=replicas,
        repeat=repeat,
        duration_s=float(loadgen["duration_s"]),
        responses=int(latencies.size),
        per_s=counted / float(loadgen["duration_s"]),
        p50_ms=p50,
        p99_ms=p99,
        fill_rate=fill_rate,
        errors=int(loadgen["errors"]) + sum(count for code, count in status.items() if code not in answered),
        cpu_share=dict(cpu_share or {}),
    )


def mode_medians(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The median of each figure over one mode's repeats (at one replica count)."""
    processes = list(dict.fromkeys(name for run in runs for name in run.cpu_share))  # in the order measured
    fills = [run.fill_rate for run in runs if run.fill_rate is not None]
    return {
        "mode": runs[0].mode,
        "replicas": runs[0].replicas,
        "repeats": len(runs),
        "per_s": statistics.median(run.per_s for run in runs),
        "unit": "requests/s" if runs[0].mode == "echo" else "auctions/s",
        "p50_ms": statistics.median(run.p50_ms for run in runs),
        "p99_ms": statistics.median(run.p99_ms for run in runs),
        "fill_rate": statistics.median(fills) if fills else None,
        "errors": statistics.median(run.errors for run in runs),
        "cpu_share": {name: statistics.median(run.cpu_share.get(name, 0.0) for run in runs) for name in processes},
    }


def all_medians(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """``mode_medians`` per run label, in the order the labels first ran."""
    labels = list(dict.fromkeys(run.label for run in runs))
    return {name: mode_medians([run for run in runs if run.label == name]) for name in labels}


def headline(
    medians: Mapping[str, Mapping[str, Any]], replicas: Sequence[int], connections: int | None = None
) -> list[dict[str, Any]]:
    """Per replica count N with both runs: compiled-N auctions/s over echo-N requests/s against ``TARGET_RATIO``,
    and for 1 replica the p99 against ``TARGET_P99_MS``; with ``connections``, the closed loop's mean latency
    by Little's law; with a ``PACED`` run, its rate and latency."""
    rows = []
    for n in replicas:
        compiled, echo = medians.get(label("compiled", n)), medians.get(label("echo", n))
        if compiled is None or echo is None:
            continue
        paced = medians.get(label(PACED, n))
        share = ratio(compiled["per_s"], echo["per_s"])
        rows.append(
            {
                "replicas": n,
                "auctions_per_s": compiled["per_s"],
                "echo_requests_per_s": echo["per_s"],
                "ratio": share,
                "target_ratio": TARGET_RATIO,
                "ratio_met": share is not None and share >= TARGET_RATIO,
                "p99_ms": compiled["p99_ms"],
                "echo_p99_ms": echo["p99_ms"],
                "target_p99_ms": TARGET_P99_MS if n == 1 else None,
                "p99_met": compiled["p99_ms"] <= TARGET_P99_MS if n == 1 else None,
                "closed_loop_mean_ms": 1000 * connections / compiled["per_s"]
                if connections and compiled["per_s"]
                else None,
                "paced_auctions_per_s": None if paced is None else paced["per_s"],
                "paced_p50_ms": None if paced is None else paced["p50_ms"],
                "paced_p99_ms": None if paced is None else paced["p99_ms"],
                "paced_p99_met": paced["p99_ms"] <= TARGET_P99_MS if paced is not None and n == 1 else None,
                "errors": compiled["errors"],
            }
        )
    return rows


def naive_comparison(compiled: Mapping[str, Any] | None, naive: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """With a naive run (1 replica): auctions/s compiled over naive, latency naive over compiled (so every ratio
    above 1 favours the compiled service). Not the headline: the naive baseline is a design nobody ships."""
    if compiled is None or naive is None:
        return None
    return {
        "throughput_ratio": ratio(compiled["per_s"], naive["per_s"]),
        "p50_ratio": ratio(naive["p50_ms"], compiled["p50_ms"]),
        "p99_ratio": ratio(naive["p99_ms"], compiled["p99_ms"]),
    }


def table(
    medians: Mapping[str, Mapping[str, Any]],
    headlines: Sequence[Mapping[str, Any]],
    naive: Mapping[str, Any] | None = None,
    cores: int | None = None,
) -> str:
    """The printed summary: a row per run label, the headline ratios against their targets, the naive ratios,
    how the cores were shared, and a warning for a busy machine."""

    def times(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}x"

    met = {True: "met", False: "MISSED"}
    lines = [f"{'run':<12}{'rate':>12} {'unit':<11}{'p50 ms':>8}{'p99 ms':>8}{'fill':>8}{'errors':>8}  CPU cores used"]
    for name, m in medians.items():
        cpu = ", ".join(f"{process} {share:.2f}" for process, share in m["cpu_share"].items())
        fill = "-" if m["fill_rate"] is None else f"{m['fill_rate']:.1%}"
        lines.append(
            f"{name:<12}{m['per_s']:>12,.1f} {m['unit']:<11}{m['p50_ms']:>8.1f}{m['p99_ms']:>8.1f}"
            f"{fill:>8}{m['errors']:>8.0f}  {cpu}"
        )
    for row in headlines:
        n = row["replicas"]
        line = (
            f"{n} replica{'s' if n > 1 else ''}: compiled-{n} {row['auctions_per_s']:,.1f} auctions/s / "
            f"echo-{n} {row['echo_requests_per_s']:,.1f} requests/s = {times(row['ratio'], 2)} "
            f"(target >= {row['target_ratio']:.2f}x: {met[row['ratio_met']]})"
        )
        if row["target_p99_ms"] is not None:
            line += f"; p99 {row['p99_ms']:.1f} ms (target <= {row['target_p99_ms']:.0f} ms: {met[row['p99_met']]})"
        if row.get("closed_loop_mean_ms") is not None:
            line += f"; the closed loop's mean latency is connections / rate = {row['closed_loop_mean_ms']:.1f} ms"
        lines.append(line)
        if row.get("paced_p99_ms") is not None:
            paced = (
                f"  at an open rate of {row['paced_auctions_per_s']:,.1f} auctions/s: p50 {row['paced_p50_ms']:.1f} ms,"
                f" p99 {row['paced_p99_ms']:.1f} ms"
            )
            if row["paced_p99_met"] is not None:
                paced += f" (<= {row['target_p99_ms']:.0f} ms: {met[row['paced_p99_met']]})"
            lines.append(paced)
    if naive is not None:
        lines.append(
            f"compiled-1 vs the naive per-row baseline (not the headline): {times(naive['throughput_ratio'])} the "
            f"auctions/s; p50 {times(naive['p50_ratio'])} and p99 {times(naive['p99_ratio'])} lower "
            "(the naive latencies are queueing: the connections' requests wait on seconds per auction)"
        )
    lines.append(
        f"cores: {cores or os.cpu_count()}, none pinned: the server processes, the load generator (one node process), "
        "the Kafka broker and the shared store share them; the CPU column gives each one's median cores used"
    )
    busy = max((m["cpu_share"].get("other", 0.0) for m in medians.values()), default=0.0)
    if busy > BUSY_MACHINE_CORES:
        lines.append(
            f"WARNING: other processes used {busy:.2f} cores during the runs; the figures understate the servers"
        )
    return "\n".join(lines)


# --- the naive baseline (installed only by this module's `serve --mode naive`) ---


class PerRowPyfuncScorer:
    """Scores each candidate alone: a one-row pandas frame through the MLflow pyfunc model's ``predict``."""

    def __init__(self, pyfunc_model: Any) -> None:
        self._model = pyfunc_model

    def score(self, batch: Mapping[str, Any]) -> np.ndarray:
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


def serve(settings: Settings, mode: str, port: int, bid_filter: bool | None = None) -> int:
    """One service process under uvicorn, with the platform's settings (from the environment); ``bid_filter``
    True or False sets BID_FILTER_ENABLED (None: as configured)."""
    if bid_filter is not None:
        settings = settings.model_copy(update={"bid_filter_enabled": bid_filter})
    state = ServiceState.open(settings)
    if mode == "naive":
        install_naive_scorer(state, settings.mlflow_tracking_uri)
    state.start()
    try:
        server.run(
            create_app(settings, state=state), host=settings.bind_host, port=port, fast_path=settings.auction_fast_path
        )
    finally:
        state.stop()
    return 0


# --- building the platform (I/O) ---


def platform_settings(base: Settings, workdir: Path, tracking_uri: str | None) -> Settings:
    """Settings isolated in ``workdir``, on free ports, sharing the project's jar cache and reports."""
    given = {"mlflow_tracking_uri": tracking_uri} if tracking_uri else {}
    reports = base.reports_dir.resolve()
    settings = isolated_settings(workdir, reports_dir=reports, shared_store_port=free_port(), **given)
    # Set even where the environment names a store: the isolated one is on this port.
    return settings.model_copy(
        update={"shared_store_url": f"redis://{settings.bind_host}:{settings.shared_store_port}/0"}
    )


def seed_campaigns(settings: Settings, n: int, seed: int) -> int:
    """``n`` campaigns from ``seed_instructions`` over the synthetic catalog, applied to the store."""
    engine = make_engine(settings)
    migrate(settings, engine)
    instructions = seed_instructions(ad_catalog(ADS, seed), n, seed, datetime.now(UTC))
    with make_session_factory(engine)() as session:
        created = sum(store.apply_instruction(session, instruction).changed for instruction in instructions)
    engine.dispose()
    return created


def issue_api_key(settings: Settings) -> str:
    """A key for the load generator's exchange: the auctions are served as a real caller's are, key checked."""
    engine = make_engine(settings)
    migrate(settings, engine)  # a platform built before the callers table
    with make_session_factory(engine)() as session:
        issued = callers.create_key(
            session,
            caller_id="bench-exchange",
            kind=CallerKind.EXCHANGE,
            max_floor_cpm_micros=callers.MAX_FLOOR_CPM_MICROS,
            first_price_allowed=False,
        )
    engine.dispose()
    return issued.api_key


def write_gold_features(settings: Settings, seed: int) -> None:
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


def build_platform(settings: Settings, workdir: Path, options: Options) -> dict[str, Any]:
    """Store, gold features and champion in ``workdir``; a workdir that already holds them is reused."""
    marker = workdir / "platform.json"
    wanted = {
        "campaigns": options.campaigns,
        "seed": options.seed,
        "family": options.family,
        "tracking_uri": options.tracking_uri,
    }
    if marker.exists():
        platform = json.loads(marker.read_text())
        if platform["wanted"] != wanted:
            raise SystemExit(f"{workdir} holds a platform built for {platform['wanted']}; pass another --workdir")
        print(f"reusing the platform in {workdir}", flush=True)
        return platform
    began = time.monotonic()
    family = None if options.family == BEST_FAMILY else options.family
    campaigns = seed_campaigns(settings, options.campaigns, options.seed)
    champion = "(given)" if options.tracking_uri else train_champion(settings, workdir, options.seed, family)
    platform = {"wanted": wanted, "campaigns": campaigns, "champion_family": champion}
    write_gold_features(settings, options.seed)
    marker.write_text(json.dumps(platform))
    print(f"platform built in {time.monotonic() - began:.0f}s in {workdir}", flush=True)
    return platform


@contextlib.contextmanager
def kafka_broker(settings: Settings) -> Iterator[int]:
    """A single-node broker for the run, with the auction log's topic; yields its pid."""
    with services.running(settings, "kafka") as pid:
        ensure_topics(settings, [Topic.AUCTIONS])
        yield pid


def has_shared_store() -> bool:
    """Whether devstack knows the shared store (redis-server) the replicas keep their state in."""
    return SHARED_STORE in services.SERVICE_FACTORIES


def empty_shared_store(settings: Settings) -> None:
    """Flushes the shared store's database, so each run's fresh servers start from empty state, as they would
    from a fresh process without the store (a restarted service rebuilds what it needs from the campaign store)."""
    client = redis.Redis.from_url(settings.shared_store_url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


# --- the service and the load generator (I/O) ---


@dataclass(frozen=True)
class Options:
    """What a run of the bench is asked for (the options of `adstream bench auction`)."""

    duration: float = 20.0  # seconds of load per compiled run
    warmup: float = 3.0  # seconds of load before each compiled run
    repeats: int = 3
    connections: int = 32
    campaigns: int = CAMPAIGNS
    seed: int = 7
    modes: tuple[str, ...] = DEFAULT_MODES
    replicas: tuple[int, ...] = (1,)  # server processes per echo and compiled run, each count in turn
    naive_requests: int = 32  # requests per naive run
    naive_timeout: float = 600.0  # request timeout of naive runs (s)
    family: str = PRODUCTION_FAMILY  # champion family; BEST_FAMILY: the best one trained
    tracking_uri: str | None = None  # serve this MLflow store's champion instead of training one
    no_kafka: bool = False
    paced_share: float = PACED_SHARE  # 0: no open-rate run


@dataclass(frozen=True)
class LoadGenerator:
    """benchmarks/loadgen/drive.js under node, with the autocannon `make setup` installed."""

    command: tuple[str, ...]
    node_modules: Path


def load_generator(settings: Settings) -> LoadGenerator:
    node = shutil.which("node")
    modules = settings.local_dir.resolve() / "node" / "node_modules"  # where `make setup` installs it
    if node is None or not (modules / "autocannon").is_dir():
        raise SystemExit(
            f"the load generator is not installed (node: {node or 'not found'}; autocannon in {modules}): "
            "run `make setup`, which installs benchmarks/loadgen with `npm ci` (Node.js 18 or later is needed)"
        )
    return LoadGenerator((node, str(LOADGEN / "drive.js")), modules)


def drive(
    loadgen: LoadGenerator,
    url: str,
    bodies: Sequence[str],
    connections: int,
    duration_s: float,
    timeout_s: float,
    amount: int | None = None,
    api_key: str | None = None,
    kinds: Sequence[str] | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """One load-generator run against ``url``: ``duration_s`` seconds, or ``amount`` requests; its output.
    ``kinds``, a label per body: the answers are also counted per label (``by_kind``, drive.js). ``rate``:
    requests/s over all connections (an open rate, below capacity), instead of each connection's next
    request as soon as its answer comes."""
    headers = {"content-type": "application/json"} | ({"x-api-key": api_key} if api_key else {})
    spec = (
        {
            "url": url,
            "method": "POST",
            "connections": connections,
            "duration_s": duration_s,
            "timeout_s": timeout_s,
            "amount": amount,
            "headers": headers,
            "bodies": list(bodies),
        }
        | ({"kinds": list(kinds)} if kinds is not None else {})
        | ({"rate": rate} if rate else {})
    )
    done = subprocess.run(
        loadgen.command,
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=child_process_env(NODE_PATH=str(loadgen.node_modules)),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def serves_auctions(readiness: httpx.Response) -> bool:
    """Ready, or not ready for events alone: without a broker (--no-kafka) /readyz says 503 for Kafka's sake."""
    if readiness.status_code == 200:
        return True
    checks = readiness.json().get("checks", {}) if readiness.status_code == 503 else {}
    return bool(checks) and all(value == "ok" for name, value in checks.items() if name != "kafka")


ECHO_PROBE = b'{"probe":true}'


def answers(mode: str, url: str) -> bool:
    """One readiness probe on a new connection: the service's /readyz, or the echo echoing."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        if mode == "echo":
            echoed = httpx.post(f"{url}/v1/auction", content=ECHO_PROBE, timeout=2)
            return echoed.status_code == 200 and echoed.content == ECHO_PROBE
        return serves_auctions(httpx.get(f"{url}/readyz", timeout=2))
    return False


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a listening TCP socket on ``port``."""
    with contextlib.suppress(psutil.Error):
        return any(
            conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
            for conn in psutil.Process(pid).net_connections("tcp")
        )
    return False


def server_command(settings: Settings, mode: str, port: int) -> list[str]:
    if mode == "echo":
        return [sys.executable, "-m", "benchmarks.echo", "--host", settings.bind_host, "--port", str(port)]
    if mode in BID_FILTER_MODES:
        bid_filter = "--bid-filter" if BID_FILTER_MODES[mode] else "--no-bid-filter"
        return [str(services.ADSTREAM), "bench", "auction-serve", "--mode", "compiled", bid_filter, "--port", str(port)]
    return [str(services.ADSTREAM), "bench", "auction-serve", "--mode", mode, "--port", str(port)]


@contextlib.contextmanager
def server_processes(settings: Settings, mode: str, replicas: int, log_stem: Path) -> Iterator[tuple[str, list[int]]]:
    """``replicas`` processes of ``mode`` (the echo, or the service under uvicorn) on one free loopback port, bound
    with SO_REUSEPORT, each logging to ``<log_stem>-<i>.log``; yields (base URL, pids) once every process listens
    and ``2 x replicas`` probes in a row on new connections (spread over the processes by the kernel) were answered."""
    port = free_port()
    url = f"http://{settings.bind_host}:{port}"
    command = server_command(settings, mode, port)
    processes: list[subprocess.Popen] = []
    try:
        for i in range(1, replicas + 1):
            processes.append(launch(settings, log_stem.with_name(f"{log_stem.name}-{i}.log"), command))
        deadline, answered = time.monotonic() + 120, 0
        while answered < 2 * replicas:
            exited = [p for p in processes if p.poll() is not None]
            if exited:
                raise RuntimeError(f"a {mode} process exited during start-up; see {log_stem}-*.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} processes were not ready after 120 s; see {log_stem}-*.log")
            if all(listening(p.pid, port) for p in processes) and answers(mode, url):
                answered += 1
                continue
            answered = 0
            time.sleep(0.5)
        yield url, [p.pid for p in processes]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                # uvicorn finishes the requests in progress: a naive service may hold minutes of them.
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cpu_seconds(pids: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """User + system CPU seconds per name, summed over its processes and their children."""
    seconds: dict[str, float] = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for member in (process, *process.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        times = member.cpu_times()
                        total += times.user + times.system
        seconds[name] = total
    return seconds


def busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait


def measure(
    settings: Settings,
    mode: str,
    replicas: int,
    repeat: int,
    bodies: Sequence[str],
    options: Options,
    side_pids: Mapping[str, int],
    loadgen: LoadGenerator,
    api_key: str,
) -> list[RunResult]:
    """One run: ``replicas`` fresh server processes, a warm-up, then ``options.duration`` seconds of load (echo,
    compiled) or ``options.naive_requests`` requests (naive). ``side_pids``: the broker's and the store's.
    A compiled run is followed by a ``PACED`` one on the same processes (``options.paced_share``)."""
    settings = settings.model_copy(update={"auction_replicas": replicas})
    if SHARED_STORE in side_pids:
        empty_shared_store(settings)
    log_stem = settings.local_dir / "logs" / f"{mode}-{replicas}-{repeat}"
    with server_processes(settings, mode, replicas, log_stem) as (url, server_pids):
        target = f"{url}/v1/auction"
        # An auction takes the naive service seconds, so its runs count requests instead of seconds:
        # one warm-up request, then ``naive_requests`` at the same concurrency, all answered (in a
        # run of fixed length the 32 connections' requests would all still be queued at its end).
        naive = mode == "naive"
        timeout_s = options.naive_timeout if naive else 10
        connections = 1 if naive else options.connections
        drive(loadgen, target, bodies, connections, options.warmup, timeout_s, amount=1 if naive else None,
              api_key=api_key)  # fmt: skip
        server = "echo" if mode == "echo" else "service"
        pids = {server: server_pids} | {name: [pid] for name, pid in side_pids.items()}

        def measured_run(run_mode: str, rate: float | None = None) -> RunResult:
            before, machine_before = cpu_seconds(pids), busy_seconds()
            amount = options.naive_requests if naive else None
            measured = drive(loadgen, target, bodies, options.connections, options.duration, timeout_s,
                             amount=amount, api_key=api_key, rate=rate)  # fmt: skip
            after, machine_after = cpu_seconds(pids), busy_seconds()
            wall = measured["duration_s"]
            share = {server: (after[server] - before[server]) / wall, "loadgen": measured["cpu_s"] / wall}
            share |= {name: (after[name] - before[name]) / wall for name in before if name != server}
            share["other"] = max(0.0, (machine_after - machine_before) / wall - sum(share.values()))
            return run_result(run_mode, replicas, repeat, measured, share)

        runs = [measured_run(mode)]
        if mode == "compiled" and options.paced_share > 0 and runs[0].per_s > 0:
            runs.append(measured_run(PACED, rate=max(1.0, round(options.paced_share * runs[0].per_s))))
    return runs


def family_source(options: Options) -> str:
    if options.tracking_uri:
        return "the given MLflow store's champion"
    if options.family == BEST_FAMILY:
        return "the best of every family trained on the synthetic frame (--family best)"
    if options.family == PRODUCTION_FAMILY:
        return "the production family: what `make run` promotes on the committed samples"
    return "--family (not the production family)"


def run(base: Settings, options: Options, workdir: Path, loadgen: LoadGenerator) -> dict[str, Any]:
    settings = platform_settings(base, workdir, options.tracking_uri)
    platform = build_platform(settings, workdir, options)
    print(f"champion: {platform['champion_family']} ({family_source(options)})", flush=True)
    api_key = issue_api_key(settings)
    profiles = user_profiles(USERS, options.seed)
    bodies = [json.dumps(body, separators=(",", ":")) for body in request_bodies(profiles, BODIES, options.seed)]
    runs: list[RunResult] = []
    side_pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        if options.no_kafka:
            # Nothing listens there: the service logs that it runs without Kafka and publishes nothing.
            settings = settings.model_copy(update={"kafka_bootstrap_servers": f"{settings.bind_host}:{free_port()}"})
            print("Kafka: DISABLED (--no-kafka): auctions are not published to the auctions topic", flush=True)
        else:
            side_pids["kafka"] = stack.enter_context(kafka_broker(settings))
            print(f"Kafka: a real broker at {settings.kafka_bootstrap_servers}; every auction is published", flush=True)
        if has_shared_store():
            side_pids[SHARED_STORE] = stack.enter_context(services.running(settings, SHARED_STORE))
            print(f"shared store: {settings.shared_store_url}, emptied before each run", flush=True)
        else:
            print("shared store: NONE (devstack has no shared-store service): each replica keeps its own state")
        for repeat in range(1, options.repeats + 1):
            for mode, replicas in schedule(options.modes, options.replicas):
                for result in measure(settings, mode, replicas, repeat, bodies, options, side_pids, loadgen, api_key):
                    runs.append(result)
                    unit = "requests/s" if mode == "echo" else "auctions/s"
                    fill = "" if result.fill_rate is None else f"  fill {result.fill_rate:.1%}"
                    print(
                        f"repeat {repeat} {result.label:<12} {result.per_s:>9,.1f} {unit:<10}  p50 {result.p50_ms:.1f}"
                        f" ms  p99 {result.p99_ms:.1f} ms{fill}  errors {result.errors}  cores: "
                        + ", ".join(f"{name} {share:.2f}" for name, share in result.cpu_share.items()),
                        flush=True,
                    )
    medians = all_medians(runs)
    return {
        "setup": {
            "campaigns": platform["campaigns"],
            "champion_family": platform["champion_family"],
            "champion_source": family_source(options),
            "production_family": PRODUCTION_FAMILY,
            "tracking_uri": options.tracking_uri or "(scratch MLflow store)",
            "kafka": "disabled" if options.no_kafka else "real broker",
            "shared_store": "redis-server, emptied before each run" if SHARED_STORE in side_pids else "none",
            "caller": "an exchange's API key in X-Api-Key (checked on every auction; sent to the echo too)",
            "echo": "benchmarks/echo.py: FastAPI, one POST route answering the body, stock uvicorn (httptools)",
            "replicas": list(options.replicas),
            "modes": list(options.modes),
            "connections": options.connections,
            "paced_share": options.paced_share,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "naive_requests": options.naive_requests,
            "repeats": options.repeats,
            "request_bodies": len(bodies),
            "cores": os.cpu_count(),
            "core_sharing": "none pinned: the server processes, the load generator (one node process), the Kafka "
            "broker and the shared store share every core; cpu_share gives each one's cores used per run",
            "loadgen": "autocannon " + json.loads((LOADGEN / "package.json").read_text())["dependencies"]["autocannon"],
        },
        "runs": [asdict(r) | {"label": r.label} for r in runs],
        "medians": medians,
        "headline": headline(medians, options.replicas, options.connections),
        "naive_comparison": naive_comparison(medians.get(label("compiled", 1)), medians.get(label("naive", 1))),
    }


def bench(settings: Settings, options: Options, workdir: Path | None = None, output: Path | None = None) -> int:
    """`adstream bench auction`: the platform, the runs, the report (default REPORTS_DIR/bench/auction.json)."""
    loadgen = load_generator(settings)  # fails before anything is built when the load generator is missing
    with contextlib.ExitStack() as stack:
        workdir = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-auction-")))
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(settings, options, workdir.resolve(), loadgen)
    output = write_report(result, output or report_path(settings, "auction"))
    print(f"champion: {result['setup']['champion_family']} ({result['setup']['champion_source']})")
    print(table(result["medians"], result["headline"], result["naive_comparison"], result["setup"]["cores"]))
    print(f"written to {output}")
    return 0


# --- the command (`adstream bench auction`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


Mode = Literal["compiled", "naive"]  # SERVICE_MODES


@commands.command("auction", help=__doc__.splitlines()[0])
def auction_command(
    duration: Annotated[float, typer.Option(help="seconds of load per run (default 20)")] = 20.0,
    warmup: Annotated[float, typer.Option(help="seconds of load before each run")] = 3.0,
    repeats: int = 3,
    connections: int = 32,
    campaigns: int = CAMPAIGNS,
    seed: int = 7,
    modes: Annotated[
        list[str] | None,
        typer.Option(help=f"one of {', '.join(MODES)}; repeat it (default: {' and '.join(DEFAULT_MODES)})"),
    ] = None,
    replicas: Annotated[
        str, typer.Option(help="server processes per echo and compiled run, comma-separated counts: 1,2")
    ] = "1",
    naive_requests: Annotated[int, typer.Option(help="requests per naive run (default 32)")] = 32,
    naive_timeout: Annotated[float, typer.Option(help="request timeout of naive runs (s)")] = 600.0,
    family: Annotated[
        str,
        typer.Option(
            help=f"champion family, one of {', '.join(FAMILIES)}, or {BEST_FAMILY} (every family, the best promoted)"
        ),
    ] = PRODUCTION_FAMILY,
    tracking_uri: Annotated[
        str | None, typer.Option(help="serve this MLflow store's ctr-model@champion instead of training one")
    ] = None,
    no_kafka: Annotated[
        bool, typer.Option("--no-kafka", help="no broker: the service does not publish auctions")
    ] = False,
    paced_share: Annotated[
        float,
        typer.Option(help="after each compiled run, an open-rate run at this share of its auctions/s (0: none)"),
    ] = PACED_SHARE,
    workdir: Annotated[
        Path | None, typer.Option(help="scratch directory, kept and reused (default: a temporary one)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="default: REPORTS_DIR/bench/auction.json")] = None,
) -> None:
    check_choices("--family", [family], [*FAMILIES, BEST_FAMILY])
    check_choices("--modes", modes or [], MODES)
    if not 0 <= paced_share < 1:
        raise typer.BadParameter(f"--paced-share is in [0, 1), not {paced_share}")
    try:
        replica_counts = parse_replicas(replicas)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--replicas'") from None
    chosen = tuple(modes or DEFAULT_MODES)
    if "naive" in chosen and naive_requests < connections:
        raise typer.BadParameter(f"--naive-requests ({naive_requests}) must be at least --connections ({connections})")
    options = Options(
        duration=duration,
        warmup=warmup,
        repeats=repeats,
        connections=connections,
        campaigns=campaigns,
        seed=seed,
        modes=chosen,
        replicas=replica_counts,
        naive_requests=naive_requests,
        naive_timeout=naive_timeout,
        family=family,
        tracking_uri=tracking_uri,
        no_kafka=no_kafka,
        paced_share=paced_share,
    )
    raise typer.Exit(bench(get_settings(), options, workdir, output))


@commands.command("auction-serve", hidden=True)
def auction_serve(
    mode: Annotated[Mode, typer.Option()],
    port: Annotated[int, typer.Option()],
    bid_filter: Annotated[bool | None, typer.Option("--bid-filter/--no-bid-filter")] = None,
) -> None:
    """(internal) one service process (one replica) of the auction bench."""
    raise typer.Exit(serve(get_settings(), mode, port, bid_filter))
