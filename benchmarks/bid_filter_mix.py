"""The OpenRTB route on a mix with unfillable requests (`make bench-bid-filter-mix`): the service without and
with the bid-request filter, in the same run.

The platform is the auction bench's (``benchmarks.auction``: 1,000 campaigns with the IAB fixed banner sizes,
40 % of them with an MP4 video, gold features, the production CTR champion, a real Kafka broker and the
shared store, one service process). The requests are ``BODIES`` OpenRTB BidRequests built by the simulator
(``simulator.traffic.openrtb_request``) for the auction bench's users, ``--unfillable-share`` of them
(default 0.6) unfillable as the simulator makes them (``simulator.traffic.Unfillable``, a quarter each: slots
in sizes no creative has, Flash-only video, DOOH screens, floors above any bid), each with an exchange's key.

1. The log run: the service without a filter (BID_FILTER_ENABLED false) under the load below for
   ``--log-duration`` seconds; every auction it runs goes to the ``auctions`` topic, which the bench reads
   back (the records the streaming job lands in silver/auctions; no Spark here).
2. The filter: ``ml.bid_filter_training.fit_and_register`` trains on those records (``ml.bid_filter``'s
   model, label and threshold at BID_FILTER_REVENUE_TARGET, pandas and scikit-learn) and registers
   ``bid-filter`` in the bench's MLflow store; ``ml.bid_filter_registry``'s guard promotes it champion.
3. Each repeat round runs ``unfiltered`` (BID_FILTER_ENABLED false) and ``filtered`` (the service loads
   ``bid-filter@champion`` at start, as it does in production, and explores BID_FILTER_EXPLORATION_SHARE),
   in alternating order, each on fresh processes with the shared store emptied, driven by
   ``benchmarks/loadgen`` (autocannon) with the same bodies, connections, warm-up and duration.

Per run: requests answered per second (200 and 204), p50/p99, the cores each process used and so the service's
CPU time per request, and per kind of body (fillable, and each unfillable kind) the answers: filled, no bid,
and shed by the filter (its ``X-No-Bid-Reason``); for the filtered runs the service's own count over the
measured seconds (``adstream_bid_filter_*`` on /metrics: screened, shed, explored, and the explored
requests' revenue above and below the threshold).
Headline (medians over ``--repeats``; DOOH is answered 204 before the filter, so its figures stand apart):
    speed-up   filtered requests/s / unfiltered requests/s            target >= 1.5x at 60 % unfillable
    shed       unfillable requests the filter shed / those it screened  target >= 80 %
    fill       of the fillable requests, unfiltered and filtered
    loss       revenue of explored requests below the threshold / explored revenue, pooled over the
               filtered runs (the service's own estimate of what the threshold costs)   target <= 1 %
Written to reports/bench/bid_filter_mix.json.

    adstream bench bid-filter-mix [--unfillable-share 0.6] [--duration 20] [--warmup 3] [--repeats 3]
                                  [--log-duration 20] [--connections 32] [--campaigns 1000] [--seed 7]
                                  [--family NAME] [--workdir DIR] [--output PATH]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer
from prometheus_client.parser import text_string_to_metric_families

from adstream.contracts import BID_FILTER_EXPERIMENT, Topic
from adstream.messaging import decode_json, read_to_end
from adstream.settings import Settings, get_settings
from benchmarks import auction
from benchmarks.auction import (
    BID_FILTER_MODES,
    SHARED_STORE,
    USERS,
    LoadGenerator,
    build_platform,
    busy_seconds,
    cpu_seconds,
    drive,
    empty_shared_store,
    has_shared_store,
    issue_api_key,
    kafka_broker,
    load_generator,
    platform_settings,
    server_processes,
    user_profiles,
)
from benchmarks.bid_filter import TARGET_REVENUE_RETAINED, TARGET_UNFILLABLE_SHED
from benchmarks.harness import check_choices, median_or_none, ratio, report_path, write_report
from cli.lazy import commands_app
from devstack import services
from ml.bid_filter import LOG_COLUMNS, TIME_COLUMN
from ml.bid_filter_registry import champion_version
from ml.bid_filter_training import fit_and_register, promote
from ml.pipelines import FAMILIES
from ml.tracking import tracking_client
from simulator.ground_truth import UserProfile
from simulator.traffic import SimulatedUser, Unfillable, choose_placement, draw_unfillable, openrtb_request

UNFILLABLE_SHARE = 0.6
TARGET_SPEEDUP = 1.5
TARGET_REVENUE_LOSS = round(1 - TARGET_REVENUE_RETAINED, 6)
MODES = tuple(BID_FILTER_MODES)  # unfiltered, filtered
BODIES = 2_000
FILLABLE = "fillable"
SCREENED_KINDS = tuple(kind.value for kind in Unfillable if kind is not Unfillable.DOOH)  # DOOH: 204 before it
# How the OpenRTB route's X-No-Bid-Reason names a request the filter answered.
SHED_REASON = "the bid-request filter"
ROUTE = "/openrtb2/auction"
INTEGER_COLUMNS = ("clearing_price_micros", "clearing_price_cpm_micros", "ecpm_micros")
METER = {  # the /metrics samples of ServiceMetrics.bid_filter this bench reads
    "screened": ("adstream_bid_filter_screened_total", {}),
    "shed": ("adstream_bid_filter_shed_total", {}),
    "explored": ("adstream_bid_filter_explored_total", {}),
    "explored_revenue_below_threshold": (
        "adstream_bid_filter_explored_revenue_cpm_micros_total", {"below_threshold": "true"}
    ),
    "explored_revenue_above_threshold": (
        "adstream_bid_filter_explored_revenue_cpm_micros_total", {"below_threshold": "false"}
    ),
}  # fmt: skip


# --- the request mix and the auction log (pure) ---


@dataclass(frozen=True)
class Mix:
    """The bodies sent, and for each its kind: ``FILLABLE`` or an ``Unfillable`` value."""

    bodies: list[dict[str, Any]]
    kinds: list[str]


def mix_bodies(profiles: Sequence[Mapping[str, Any]], n: int, seed: int, unfillable_share: float, year: int) -> Mix:
    """``n`` OpenRTB BidRequests as the simulator sends them (``--openrtb-share 1``): users drawn from
    ``profiles`` (the auction bench's), ``unfillable_share`` of them unfillable; the same for the same seed."""
    rng = random.Random(seed)
    bodies, kinds = [], []
    for i in range(n):
        user = rng.choice(profiles)
        profile = UserProfile(user["user_id"], age=user["age"], gender=user["gender"], country=user["country"])
        unfillable = draw_unfillable(rng, unfillable_share)
        placement = choose_placement(SimulatedUser(profile, user["device_type"]), rng, 1.0, unfillable)
        bodies.append(openrtb_request(profile, placement, f"mix-{seed}-{i}", year))
        kinds.append(FILLABLE if unfillable is None else unfillable.value)
    return Mix(bodies, kinds)


def auction_log(records: Iterable[Mapping[str, Any]], since: datetime) -> pd.DataFrame:
    """The ``auctions`` records (AuctionRecord as JSON) of requests at or after ``since``, as the columns
    ``ml.bid_filter`` reads from silver/auctions, typed as that table holds them."""
    frame = pd.DataFrame([{name: record.get(name) for name in LOG_COLUMNS} for record in records],
                         columns=list(LOG_COLUMNS))  # fmt: skip
    frame[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN], utc=True, format="ISO8601")
    for name in INTEGER_COLUMNS:
        frame[name] = pd.array(frame[name].tolist(), dtype="Int64")
    frame["bid_filter_explored"] = pd.array(frame["bid_filter_explored"].tolist(), dtype="boolean")
    frame["filled"] = frame["filled"].astype(bool)
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"])
    recent = frame[TIME_COLUMN] >= pd.Timestamp(since)
    return frame.loc[recent.to_numpy()].sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)


def meter_reading(metrics_text: str) -> dict[str, float]:
    """The ``METER`` figures of one /metrics page."""
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }
    return {name: samples[(sample, tuple(sorted(labels.items())))] for name, (sample, labels) in METER.items()}


def answers_by_kind(by_kind: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Per kind of body, from drive.js's ``by_kind``: answered (200 or 204), filled (200), no bid (204), and of
    those shed by the filter."""
    counts = {}
    for kind, answers in sorted(by_kind.items()):
        status = {int(code): count for code, count in answers["status"].items()}
        shed = sum(count for reason, count in answers["reasons"].items() if reason.startswith(SHED_REASON))
        filled, no_bid = status.get(200, 0), status.get(204, 0)
        counts[kind] = {"answered": filled + no_bid, "filled": filled, "no_bid": no_bid, "shed": shed}
    return counts


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class MixRun:
    """One measured run of the service on the mix."""

    mode: str
    repeat: int  # 0: the log run the filter is trained on
    duration_s: float
    per_s: float  # requests answered (200 or 204) per second
    p50_ms: float
    p99_ms: float
    errors: int
    by_kind: dict[str, dict[str, int]]
    meter: dict[str, float]  # the service's bid_filter counts over the measured seconds
    cpu_share: dict[str, float]

    def fill(self, kind: str = FILLABLE) -> float | None:
        counts = self.by_kind.get(kind, {})
        return _share(counts.get("filled", 0), counts.get("answered", 0))

    def shed_share(self, kinds: Sequence[str]) -> float | None:
        """Requests of ``kinds`` the filter shed / those answered."""
        shed = sum(self.by_kind.get(kind, {}).get("shed", 0) for kind in kinds)
        return _share(shed, sum(self.by_kind.get(kind, {}).get("answered", 0) for kind in kinds))

    def without_auction_share(self) -> float | None:
        """Unfillable requests answered with no auction run (shed by the filter, or DOOH) / those answered."""
        unfillable = [kind for kind in self.by_kind if kind != FILLABLE]
        spared = sum(self.by_kind[kind]["shed"] for kind in unfillable)
        spared += self.by_kind.get(Unfillable.DOOH.value, {}).get("no_bid", 0)
        return _share(spared, sum(self.by_kind[kind]["answered"] for kind in unfillable))


def mix_run(
    mode: str,
    repeat: int,
    loadgen: Mapping[str, Any],
    meter: Mapping[str, float] | None = None,
    cpu_share: Mapping[str, float] | None = None,
) -> MixRun:
    """Summarises one drive.js output (with ``by_kind``); ``meter``: the service's counts over the run."""
    base = auction.run_result(mode, 1, repeat, loadgen, cpu_share)
    return MixRun(
        mode=mode,
        repeat=repeat,
        duration_s=base.duration_s,
        per_s=base.per_s,
        p50_ms=base.p50_ms,
        p99_ms=base.p99_ms,
        errors=base.errors,
        by_kind=answers_by_kind(loadgen["by_kind"]),
        meter=dict(meter or {}),
        cpu_share=base.cpu_share,
    )


def medians(runs: Sequence[MixRun]) -> dict[str, Any]:
    """The median of each figure over one mode's runs."""
    processes = list(dict.fromkeys(name for run in runs for name in run.cpu_share))
    kinds = sorted({kind for run in runs for kind in run.by_kind})
    return {
        "mode": runs[0].mode,
        "repeats": len(runs),
        "per_s": statistics.median(run.per_s for run in runs),
        "p50_ms": statistics.median(run.p50_ms for run in runs),
        "p99_ms": statistics.median(run.p99_ms for run in runs),
        "errors": statistics.median(run.errors for run in runs),
        "fillable_fill": median_or_none(run.fill() for run in runs),
        "unfillable_shed_share": median_or_none(run.shed_share(SCREENED_KINDS) for run in runs),
        "fillable_shed_share": median_or_none(run.shed_share((FILLABLE,)) for run in runs),
        "unfillable_without_auction_share": median_or_none(run.without_auction_share() for run in runs),
        "shed_share_by_kind": {kind: median_or_none(run.shed_share((kind,)) for run in runs) for kind in kinds},
        "cpu_share": {name: statistics.median(run.cpu_share.get(name, 0.0) for run in runs) for name in processes},
        # The service's CPU time per request answered: what an unfiltered request costs against a filtered one.
        "service_cpu_us_per_request": statistics.median(
            run.cpu_share.get("service", 0.0) / run.per_s * 1e6 if run.per_s else 0.0 for run in runs
        ),
    }


def headline(runs: Sequence[MixRun]) -> dict[str, Any]:
    """The module doc's headline over the measured runs (repeat >= 1) against its targets."""
    measured = [run for run in runs if run.repeat >= 1]
    by_mode = {mode: [run for run in measured if run.mode == mode] for mode in MODES}
    if not all(by_mode.values()):
        raise ValueError(f"the headline needs runs of both {' and '.join(MODES)}")
    unfiltered, filtered = medians(by_mode["unfiltered"]), medians(by_mode["filtered"])
    rounds = sorted({run.repeat for run in measured})
    per_round = {run.repeat: {} for run in measured}
    for run in measured:
        per_round[run.repeat][run.mode] = run.per_s
    speedup = ratio(filtered["per_s"], unfiltered["per_s"])
    below = sum(run.meter.get("explored_revenue_below_threshold", 0.0) for run in by_mode["filtered"])
    above = sum(run.meter.get("explored_revenue_above_threshold", 0.0) for run in by_mode["filtered"])
    loss = _share(below, below + above)
    shed = filtered["unfillable_shed_share"]
    return {
        "unfiltered_per_s": unfiltered["per_s"],
        "filtered_per_s": filtered["per_s"],
        "speedup": speedup,
        "speedup_by_round": [ratio(per_round[r].get("filtered"), per_round[r].get("unfiltered")) for r in rounds],
        "target_speedup": TARGET_SPEEDUP,
        "speedup_met": speedup is not None and speedup >= TARGET_SPEEDUP,
        "unfillable_shed_share": shed,
        "target_unfillable_shed_share": TARGET_UNFILLABLE_SHED,
        "unfillable_shed_met": shed is not None and shed >= TARGET_UNFILLABLE_SHED,
        "unfillable_without_auction_share": filtered["unfillable_without_auction_share"],
        "fillable_fill_unfiltered": unfiltered["fillable_fill"],
        "fillable_fill_filtered": filtered["fillable_fill"],
        "fillable_shed_share": filtered["fillable_shed_share"],
        "explored": sum(run.meter.get("explored", 0.0) for run in by_mode["filtered"]),
        "explored_revenue_cpm_micros": below + above,
        "revenue_loss_estimate": loss,
        "target_revenue_loss": TARGET_REVENUE_LOSS,
        "revenue_loss_met": loss is not None and loss <= TARGET_REVENUE_LOSS,
        "medians": {"unfiltered": unfiltered, "filtered": filtered},
    }


def table(result: Mapping[str, Any]) -> str:
    """The printed summary: a row per mode, the headline against its targets, the filter served."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    def times(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    met = {True: "met", False: "MISSED"}
    h, setup, bid_filter = result["headline"], result["setup"], result["bid_filter"]
    lines = [
        f"{'run':<12}{'requests/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'fillable fill':>15}{'shed':>8}{'errors':>8}"
        f"{'service µs/req':>16}  CPU cores used"
    ]
    for mode in MODES:
        m = h["medians"][mode]
        cpu = ", ".join(f"{process} {share:.2f}" for process, share in m["cpu_share"].items())
        lines.append(
            f"{mode:<12}{m['per_s']:>12,.1f}{m['p50_ms']:>8.1f}{m['p99_ms']:>8.1f}{pct(m['fillable_fill']):>15}"
            f"{pct(m['unfillable_shed_share']):>8}{m['errors']:>8.0f}{m['service_cpu_us_per_request']:>16.0f}  {cpu}"
        )
    by_kind = h["medians"]["filtered"]["shed_share_by_kind"]
    rounds = ", ".join(times(r) for r in h["speedup_by_round"])
    lines += [
        f"mix: {setup['request_bodies']} OpenRTB bodies, {setup['unfillable_share']:.0%} unfillable "
        f"({', '.join(f'{kind} {count}' for kind, count in setup['bodies_by_kind'].items())})",
        f"speed-up: filtered {h['filtered_per_s']:,.1f} / unfiltered {h['unfiltered_per_s']:,.1f} requests/s = "
        f"{times(h['speedup'])} (target >= {h['target_speedup']:.1f}x: {met[h['speedup_met']]}); by round: {rounds}",
        f"unfillable shed: {pct(h['unfillable_shed_share'])} of the unfillable requests the filter screened "
        f"(target >= {h['target_unfillable_shed_share']:.0%}: {met[h['unfillable_shed_met']]}); by kind: "
        + ", ".join(f"{kind} {pct(share)}" for kind, share in by_kind.items() if kind in SCREENED_KINDS)
        + f"; with DOOH (204 before the filter) {pct(h['unfillable_without_auction_share'])} of all unfillable "
        "requests ran no auction",
        f"fillable requests: fill {pct(h['fillable_fill_unfiltered'])} unfiltered, {pct(h['fillable_fill_filtered'])} "
        f"filtered; {pct(h['fillable_shed_share'])} of them shed",
        f"revenue loss estimated on the exploration slice: {pct(h['revenue_loss_estimate'])} of the revenue of "
        f"{h['explored']:,.0f} explored requests (target <= {h['target_revenue_loss']:.0%}: "
        f"{met[h['revenue_loss_met']]})",
        f"filter: bid-filter version {bid_filter['version']}, threshold {bid_filter['threshold']:.6f}, trained on "
        f"{bid_filter['log_requests']:,} requests of the log run; on its holdout it kept "
        f"{bid_filter['holdout']['revenue_retained']:.2%} of the revenue and shed "
        f"{bid_filter['holdout']['shed_share']:.2%} of the requests (ROC AUC {bid_filter['holdout']['roc_auc']:.4f})",
        f"cores: {setup['cores']}, none pinned: the service, the load generator, the Kafka broker and the shared "
        "store share them",
    ]
    return "\n".join(lines)


# --- the service, the log and the filter (I/O) ---


@dataclass(frozen=True)
class Options:
    """What a run of the bench is asked for (the options of `adstream bench bid-filter-mix`)."""

    unfillable_share: float = UNFILLABLE_SHARE
    duration: float = 20.0  # seconds of load per measured run
    warmup: float = 3.0  # seconds of load before each run
    repeats: int = 3
    log_duration: float = 20.0  # seconds of the log run the filter is trained on
    connections: int = 32
    campaigns: int = auction.CAMPAIGNS
    seed: int = 7
    family: str = auction.PRODUCTION_FAMILY


def scrape_meter(url: str) -> dict[str, float]:
    return meter_reading(httpx.get(f"{url}/metrics", timeout=10).text)


def read_auction_records(settings: Settings, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Every record of the ``auctions`` topic up to its current end, read without a consumer group."""
    return [record.value for record in read_to_end(settings, Topic.AUCTIONS, timeout_s, value_deserializer=decode_json)]


def train_filter(settings: Settings, workdir: Path, log: pd.DataFrame) -> dict[str, Any]:
    """Trains, registers and promotes ``bid-filter`` on ``log`` in the bench's MLflow store; what was served."""
    uri = settings.mlflow_tracking_uri
    client = tracking_client(uri)
    if client.get_experiment_by_name(BID_FILTER_EXPERIMENT) is None:
        client.create_experiment(BID_FILTER_EXPERIMENT, artifact_location=str(workdir / "mlflow-artifacts"))
    cwd = Path.cwd()
    os.chdir(workdir)  # anything MLflow writes by default stays in the scratch directory
    try:
        candidate = fit_and_register(settings, log, None)
        promotion = promote(settings, candidate.run_id, candidate.model_version, candidate.trained.holdout)
    finally:
        os.chdir(cwd)
    print(candidate.summary(), flush=True)
    if champion_version(uri) != candidate.model_version:
        raise SystemExit(
            f"bid-filter version {candidate.model_version} was not made champion ({promotion.decision.reasons}); "
            "a reused --workdir keeps its champion: pass another --workdir"
        )
    model = candidate.trained.bid_filter
    return {
        "version": candidate.model_version,
        "threshold": model.threshold,
        "tokens": len(model.weights),
        "log_requests": len(log),
        "train_requests": len(candidate.trained.train),
        "holdout_requests": len(candidate.trained.holdout),
        "holdout": candidate.trained.metrics,
        "exploration_share": settings.bid_filter_exploration_share,
        "revenue_target": settings.bid_filter_revenue_target,
    }


def measure(
    settings: Settings,
    mode: str,
    repeat: int,
    sent: tuple[list[str], list[str]],
    options: Options,
    duration_s: float,
    side_pids: Mapping[str, int],
    loadgen: LoadGenerator,
    api_key: str,
) -> MixRun:
    """One run: a fresh service process of ``mode``, a warm-up, then ``duration_s`` seconds of the mix;
    the service's filter counts are read from /metrics before and after the measured seconds. ``sent``: the
    bodies as sent, and the kind of each."""
    bodies, kinds = sent
    if SHARED_STORE in side_pids:
        empty_shared_store(settings)
    log_stem = settings.local_dir / "logs" / f"{mode}-{repeat}"
    with server_processes(settings, mode, 1, log_stem) as (url, server_pids):
        target = f"{url}{ROUTE}"
        if options.warmup > 0:
            drive(loadgen, target, bodies, options.connections, options.warmup, 10, api_key=api_key, kinds=kinds)
        pids = {"service": server_pids} | {name: [pid] for name, pid in side_pids.items()}
        meter_before = scrape_meter(url)
        before, machine_before = cpu_seconds(pids), busy_seconds()
        measured = drive(loadgen, target, bodies, options.connections, duration_s, 10, api_key=api_key, kinds=kinds)
        after, machine_after = cpu_seconds(pids), busy_seconds()
        meter_after = scrape_meter(url)
    wall = measured["duration_s"]
    share = {"service": (after["service"] - before["service"]) / wall, "loadgen": measured["cpu_s"] / wall}
    share |= {name: (after[name] - before[name]) / wall for name in before if name != "service"}
    share["other"] = max(0.0, (machine_after - machine_before) / wall - sum(share.values()))
    meter = {name: meter_after[name] - meter_before[name] for name in METER}
    if not BID_FILTER_MODES[mode] and meter["screened"]:
        raise RuntimeError(f"the {mode} service screened {meter['screened']:.0f} requests: it served a filter")
    return mix_run(mode, repeat, measured, meter, share)


def _line(run: MixRun) -> str:
    fill, shed = run.fill(), run.shed_share(SCREENED_KINDS)
    return (
        f"{'log run' if run.repeat == 0 else f'repeat {run.repeat}'} {run.mode:<11} {run.per_s:>9,.1f} requests/s  "
        f"p50 {run.p50_ms:.1f} ms  p99 {run.p99_ms:.1f} ms  fillable fill {'n/a' if fill is None else f'{fill:.1%}'}"
        f"  unfillable shed {'n/a' if shed is None else f'{shed:.1%}'}  errors {run.errors}  cores: "
        + ", ".join(f"{name} {share:.2f}" for name, share in run.cpu_share.items())
    )


def run(base: Settings, options: Options, workdir: Path, loadgen: LoadGenerator) -> dict[str, Any]:
    settings = platform_settings(base, workdir, None)
    platform = build_platform(
        settings, workdir, auction.Options(campaigns=options.campaigns, seed=options.seed, family=options.family)
    )
    api_key = issue_api_key(settings)
    mix = mix_bodies(
        user_profiles(USERS, options.seed), BODIES, options.seed, options.unfillable_share, datetime.now(UTC).year
    )
    sent = ([json.dumps(body, separators=(",", ":")) for body in mix.bodies], mix.kinds)
    runs: list[MixRun] = []
    side_pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        side_pids["kafka"] = stack.enter_context(kafka_broker(settings))
        if has_shared_store():
            side_pids[SHARED_STORE] = stack.enter_context(services.running(settings, SHARED_STORE))
        log_began = datetime.now(UTC)
        log_run = measure(settings, "unfiltered", 0, sent, options, options.log_duration, side_pids, loadgen, api_key)
        print(_line(log_run), flush=True)
        log = auction_log(read_auction_records(settings), since=log_began)
        bid_filter = train_filter(settings, workdir, log)
        for repeat in range(1, options.repeats + 1):
            for mode in MODES if repeat % 2 else MODES[::-1]:  # alternating, so drift favours neither
                runs.append(measure(settings, mode, repeat, sent, options, options.duration, side_pids, loadgen,
                                    api_key))  # fmt: skip
                print(_line(runs[-1]), flush=True)
    return {
        "setup": {
            "campaigns": platform["campaigns"],
            "champion_family": platform["champion_family"],
            "route": ROUTE,
            "unfillable_share": options.unfillable_share,
            "request_bodies": len(mix.bodies),
            "bodies_by_kind": {kind: mix.kinds.count(kind) for kind in sorted(set(mix.kinds))},
            "kafka": "real broker",
            "shared_store": "redis-server, emptied before each run" if SHARED_STORE in side_pids else "none",
            "caller": "an exchange's API key in X-Api-Key",
            "replicas": 1,
            "connections": options.connections,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "log_duration_s": options.log_duration,
            "repeats": options.repeats,
            "order": "alternating per round: unfiltered first in odd rounds, filtered first in even ones",
            "cores": os.cpu_count(),
        },
        "bid_filter": bid_filter,
        "log_run": asdict(log_run) | {"auction_records": len(log)},
        "runs": [asdict(r) for r in runs],
        "headline": headline(runs),
    }


def bench(settings: Settings, options: Options, workdir: Path | None = None, output: Path | None = None) -> int:
    """`adstream bench bid-filter-mix`: the platform, the runs, the report (default REPORTS_DIR/bench/)."""
    loadgen = load_generator(settings)
    with contextlib.ExitStack() as stack:
        workdir = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bid-filter-mix-")))
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(settings, options, workdir.resolve(), loadgen)
    output = write_report(result, output or report_path(settings, "bid_filter_mix"))
    print(table(result))
    print(f"written to {output}")
    return 0


# --- the command (`adstream bench bid-filter-mix`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("bid-filter-mix", help=__doc__.splitlines()[0])
def bid_filter_mix_command(
    unfillable_share: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="share of the requests no campaign can fill")
    ] = UNFILLABLE_SHARE,
    duration: Annotated[float, typer.Option(min=0.5, help="seconds of load per measured run")] = 20.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="seconds of load before each run")] = 3.0,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    log_duration: Annotated[float, typer.Option(min=1.0, help="seconds of the log run the filter learns from")] = 20.0,
    connections: Annotated[int, typer.Option(min=1)] = 32,
    campaigns: Annotated[int, typer.Option(min=1)] = auction.CAMPAIGNS,
    seed: int = 7,
    family: Annotated[str, typer.Option(help="the CTR champion's family")] = auction.PRODUCTION_FAMILY,
    workdir: Annotated[
        Path | None, typer.Option(help="scratch directory, kept and reused (default: a temporary one)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="default: REPORTS_DIR/bench/bid_filter_mix.json")] = None,
) -> None:
    check_choices("--family", [family], list(FAMILIES))
    options = Options(
        unfillable_share=unfillable_share,
        duration=duration,
        warmup=warmup,
        repeats=repeats,
        log_duration=log_duration,
        connections=connections,
        campaigns=campaigns,
        seed=seed,
        family=family,
    )
    raise typer.Exit(bench(get_settings(), options, workdir, output))
