"""`adstream run` (`make run`): bring the platform up and push data through it, one visible stage at a time.

Each stage prints a progress line; a failing stage names itself and its log file.
Services are stopped at the end unless KEEP_UP=1.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import typer
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL, DagId, Table
from adstream.days import DayClock
from adstream.events import MICROS_PER_UNIT, NOT_DELIVERED, CampaignInstruction, CampaignStatus, InstructionAction
from adstream.settings import Settings, child_process_env, default_child_env, get_settings
from auction_service.campaign_store import callers, store
from auction_service.campaign_store.callers import MAX_FLOOR_CPM_MICROS, CallerKind
from auction_service.campaign_store.db import make_engine, make_session_factory
from auction_service.campaign_store.instructions import (
    SEED_INSTRUCTION_PREFIX,
    publish_instructions,
    read_ad_catalog,
    stop_instruction,
)
from auction_service.campaign_store.tables import AppliedInstruction, Campaign
from auction_service.serving.auction import DEFAULT_PCVR
from cli.lazy import commands_app
from devstack import forecast, services
from devstack.airflow_client import AirflowClient, AirflowRunFailed
from ml import calibrate
from ml.calibration import ALERT_BOUNDS, attributed_impressions, observed_over_expected
from simulator.bots import DEFAULT_DATACENTER_CIDRS, Behaviour
from simulator.ivt_scoring import (
    LANDED_STATUSES,
    MIN_GIVT_PRECISION,
    MIN_GIVT_RECALL,
    TRUTH_COLUMNS,
    IvtScore,
    LandedEvent,
    TruthEvent,
    usd,
)
from simulator.ivt_scoring import report_lines as ivt_report_lines
from simulator.ivt_scoring import score as score_ivt
from simulator.ivt_scoring import target_misses as ivt_target_misses
from simulator.traffic import DEFAULT_CONCURRENCY, parse_duration
from spark_jobs.billing import invoices
from spark_jobs.billing.reports import reconciliation_path
from spark_jobs.ivt import ivt_summary


class StageFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    action: Callable[[Settings, RunState], None]


def run_logged(settings: Settings, stage: str, *command: str) -> None:
    """Runs a step of the platform (an `adstream` command) as its own process, its output in
    .local/logs/run-<stage>.log."""
    log = services.log_file(settings, f"run-{stage}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        result = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_process_env(**services.settings_env(settings)),
            cwd=services.PROJECT_ROOT,
        )
    if result.returncode != 0:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
        shown = " ".join([Path(command[0]).name, *command[1:]])
        raise StageFailed(f"`{shown}` exited with {result.returncode}; log: {log}\n    {tail}")


# Seconds a visit may take before the simulator falls behind its rate: an auction and its events under
# load on 2 cores, plus the wait before a click (~1.5 s on ~3 % of people's visits, more for bots).
VISIT_BUDGET_S = 0.35
BOT_SHARE = 0.05  # of the visits: bots of every IVT behaviour, for the filter's precision and recall
SEED_CAMPAIGNS = 200
ASAP_SHARE = 0.5  # of the seeded campaigns: half pace asap, half even, for the pacing report's comparison
PACING_LEAD_S = 60  # the platform's start and the seeding (25 s here, 63 s under load) before the forecast
BOOKING_S = 20  # the forecast's stops and bookings, applied by the ad manager and the service (about 8 s here)
SEED = 7  # of the seeded campaigns and the simulated users
# Daily budgets are booked at this share of what each campaign can win at its full bid (devstack.forecast),
# so every campaign that wins is bound by its budget and the platform is budget-constrained.
BUDGET_PRESSURE = 0.6
SIM_EXCHANGE = "sim-exchange"  # the simulated exchange's caller id: its OpenRTB auctions, wins and invoice
OPTIMIZED_PAIRS = 20  # top CPC/CPM spenders of the forecast, booked as an optimized campaign and its static twin
# A pair's day counts as spent at equal spend when both arms spent this share of their daily budget at least.
BUDGET_BOUND = 0.9
DIURNAL_PEAK = 1.7  # the simulator's diurnal curve peaks near 1.64x its mean rate
INFRASTRUCTURE = ("kafka", "shared-store", "mlflow", "airflow")
PLATFORM = ("ad-manager", "auction", "streaming", "calibrator", "optimizer", "dashboard")
# Unpaused for the run; Airflow's scheduler starts feature_build and ctr_training from the
# Assets the one before publishes. hourly_billing stays paused (catchup would bill every
# hour since its start date); make run bills the hours it covered with `airflow dags test`.
BATCH_DAGS = (DagId.KAGGLE_INGESTION, DagId.FEATURE_BUILD, DagId.CTR_TRAINING)


@dataclass
class RunState:
    """What the stages learn for the ones after them and the summary."""

    simulation_start: datetime | None = None
    simulation_end: datetime | None = None
    simulation: dict = field(default_factory=dict)
    ground_truth_file: Path | None = None
    ivt: IvtScore | None = None
    ivt_misses: list[str] = field(default_factory=list)  # the IVT targets the run fell short of
    dag_seconds: dict[str, float] = field(default_factory=dict)
    billed_hours: list[datetime] = field(default_factory=list)
    day_origin: datetime | None = None  # when the run's pacing day starts (the simulation waits for it)
    day_length_s: float | None = None
    days: int = 1  # the run's whole pacing days (at least one)
    catalog: list[dict] = field(default_factory=list)  # silver/ads, which the campaigns are seeded on
    seeded_at: datetime | None = None
    probe: list[CampaignInstruction] | None = None  # the campaigns as the forecast served them
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (optimized campaign, its static twin)
    exchange_invoices: list[dict] = field(default_factory=list)  # the simulated exchange's, per simulation
    exchange_key: str | None = None  # the simulated exchange's API key: in memory only, passed by environment


def start_infrastructure(settings: Settings, state: RunState) -> None:
    services.up(settings, INFRASTRUCTURE)


def run_batch_dags(settings: Settings, state: RunState) -> None:
    """Triggers kaggle_ingestion through Airflow's REST API and waits for it and the runs it sets off."""
    client = AirflowClient(settings)
    try:
        client.wait_for_dags(BATCH_DAGS)
        for dag_id in BATCH_DAGS:
            client.unpause(dag_id)
        triggered = client.trigger(DagId.KAGGLE_INGESTION)
        after = triggered.queued_at or datetime.now(UTC)
        for dag_id in BATCH_DAGS:
            waited = (
                client.wait_for_run(dag_id, run_id=triggered.run_id, progress=_indent)
                if dag_id == DagId.KAGGLE_INGESTION
                else client.wait_for_run(dag_id, created_after=after, run_type="asset_triggered", progress=_indent)
            )
            state.dag_seconds[dag_id] = waited.seconds or 0.0
            after = waited.queued_at or after  # the next DAG's run is queued by this one's Asset events
            print(f"    {dag_id}: {waited.run_id} succeeded in {waited.seconds or 0:.0f}s", flush=True)
    except AirflowRunFailed as exc:
        raise StageFailed(str(exc)) from exc
    finally:
        client.close()


def _indent(line: str) -> None:
    print(f"    {line}", flush=True)


def start_platform(settings: Settings, state: RunState, plan: Simulation) -> None:
    """The ad manager, the auction service, the streaming job and the calibrator; then the campaigns'
    probe (``devstack.forecast``), through Kafka.

    The run is one pacing day (``adstream.days``): PACING_DAY_LENGTH_S is the simulation's length and
    the day starts once the platform is up and the forecast is done (PACING_LEAD_S, the forecast's
    traffic and BOOKING_S from now), when the simulation will start (it waits for it), so the plan,
    the daily budgets and the traffic curve all begin with the traffic.
    """
    lead_s = PACING_LEAD_S + plan.forecast_s + BOOKING_S
    state.day_origin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead_s)
    state.day_length_s = plan.day_s
    state.days = max(1, int(plan.duration_s // plan.day_s))
    default_child_env("PACING_DAY_LENGTH_S", str(int(plan.day_s)))
    default_child_env("PACING_DAY_ORIGIN_S", str(int(state.day_origin.timestamp())))
    # A run of minutes: the online calibration refits every 15 s and serving picks it up within 5 s.
    default_child_env("CALIBRATION_REFRESH_S", "15")
    default_child_env("CALIBRATION_POLL_S", "5")
    default_child_env("AUCTION_TTL_S", str(plan.auction_ttl_s))
    services.up(settings, PLATFORM)
    with store_sessions(settings)() as session:  # a key per run: its secret is shown once and never stored
        state.exchange_key = callers.create_key(
            session, caller_id=SIM_EXCHANGE, kind=CallerKind.EXCHANGE, max_floor_cpm_micros=MAX_FLOOR_CPM_MICROS,
            first_price_allowed=False,
        ).api_key  # fmt: skip
    state.catalog = read_ad_catalog(settings)
    retired = retire_earlier_runs(settings)
    if retired:
        print(f"    stopped {retired} campaigns an earlier run seeded (they would compete in this run's day)")
    state.seeded_at = datetime.now(UTC)
    probe = forecast.probe_instructions(state.catalog, SEED_CAMPAIGNS, SEED, state.seeded_at)
    state.probe = forecast.for_run(probe, f"{state.seeded_at:%Y%m%dT%H%M%S.%f}")
    serving = _serving_campaigns(settings)
    publish_instructions(settings, state.probe)
    ready = wait_for_auction_service(settings, serving + SEED_CAMPAIGNS)
    version = ready["model_version"]
    print(f"    {SEED_CAMPAIGNS} campaigns serving unpaced for the forecast, ctr-model version {version}")


def seeded_serving_ids(session: Session) -> list[str]:
    """The campaigns not stopped that a run seeded (created by an instruction ``seed-<campaign id>``)."""
    created = (
        select(AppliedInstruction.campaign_id)
        .where(AppliedInstruction.action == InstructionAction.CREATE.value)
        .where(AppliedInstruction.instruction_id.startswith(SEED_INSTRUCTION_PREFIX))
    )
    query = select(Campaign.campaign_id).where(
        Campaign.status != CampaignStatus.STOPPED.value, Campaign.campaign_id.in_(created)
    )
    return sorted(session.scalars(query))


def retire_earlier_runs(settings: Settings, timeout_s: float = 120.0) -> int:
    """Stops what earlier runs seeded and still serves, through the ad manager like any stop, and waits
    until the store shows them stopped and the service has reloaded; the number stopped."""
    with store_sessions(settings)() as session:
        earlier = seeded_serving_ids(session)
    if not earlier:
        return 0
    publish_instructions(settings, [stop_instruction(cid, now=datetime.now(UTC)) for cid in earlier])
    deadline = time.monotonic() + timeout_s
    while True:
        with store_sessions(settings)() as session:
            left = seeded_serving_ids(session)
        if not left:
            time.sleep(4 * settings.campaign_refresh_s)  # the service's next reload drops them
            return len(earlier)
        if time.monotonic() > deadline:
            raise StageFailed(f"{len(left)} campaigns of an earlier run were not stopped after {timeout_s:.0f}s")
        time.sleep(1.0)


def forecast_and_book(settings: Settings, state: RunState, plan: Simulation) -> None:
    """What each campaign wins at its full bid over ``plan.forecast_s`` of traffic (its spend in the
    ledger), then its daily budget booked at BUDGET_PRESSURE of that over the day (``devstack.forecast``):
    the probe campaigns stop, and the same campaigns are booked under new ids, ASAP_SHARE of them asap."""
    if state.probe is None or state.seeded_at is None:
        raise StageFailed("no probe campaigns: the platform stage did not seed them")
    summary_file = settings.local_dir.resolve() / "run" / "forecast.json"
    began = datetime.now(UTC)
    log = services.log_file(settings, "run-forecast")
    run_simulator(settings, plan, plan.forecast_s, summary_file, summary_file.with_suffix(".csv"), log,
                  exchange_key=state.exchange_key)  # fmt: skip
    probe = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    probe_auctions = int(probe.get("auctions", 0))
    state.exchange_invoices.append(probe.get("exchange") or {})
    probe_ids = [instruction.campaign_id for instruction in state.probe]
    spend = _settled_spend(settings, probe_ids)
    if probe_auctions <= 0 or not any(spend.values()):
        raise StageFailed(f"the forecast's {probe_auctions} auctions since {began:%H:%M:%S} spent nothing; log: {log}")
    budgets = forecast.booked_budgets(
        spend,
        probe_ids,
        probe_auctions=probe_auctions,
        day_auctions=plan.rate * plan.day_s,
        pressure=BUDGET_PRESSURE,
        unit_charges_micros={i.campaign_id: forecast.unit_charge_micros(i.campaign) for i in state.probe if i.campaign},
    )
    bases = forecast.pair_bases(state.probe, spend, OPTIMIZED_PAIRS)
    state.pairs = [(forecast.booked_id(base), forecast.twin_id(base)) for base in bases]
    serving = _serving_campaigns(settings)
    publish_instructions(settings, [stop_instruction(cid, now=datetime.now(UTC)) for cid in probe_ids])
    wait_for_auction_service(settings, serving - len(probe_ids), at_most=True)
    booked = forecast.booked_instructions(
        state.catalog,
        state.probe,
        budgets,
        seed=SEED,
        now=state.seeded_at,
        asap_share=ASAP_SHARE,
        pairs=bases,
        days=state.days,
    )
    publish_instructions(settings, booked)
    ready = wait_for_auction_service(settings, serving - len(probe_ids) + len(booked))
    won = sum(1 for cid in probe_ids if spend.get(cid, 0) > 0)
    total = sum(budgets.values()) / MICROS_PER_UNIT
    print(
        f"    forecast: {probe_auctions:,} auctions, {won} of {len(probe_ids)} campaigns won; booked daily budgets of "
        f"{total:,.2f} USD in all ({BUDGET_PRESSURE:.0%} of what each can win at its full bid over the day), "
        f"{ready['campaigns']} campaigns serving",
        flush=True,
    )


def _settled_spend(settings: Settings, campaign_ids: list[str], timeout_s: float = 30.0) -> dict[str, int]:
    """The campaigns' spend in the ledger once the last charges of the traffic before have landed in it."""
    wanted, last, deadline = set(campaign_ids), None, time.monotonic() + timeout_s
    while True:
        with store_sessions(settings)() as session:
            total, _ = store.spend_totals(session, datetime.now(UTC).date())
        spend = {cid: micros for cid, micros in total.items() if cid in wanted}
        if spend == last or time.monotonic() > deadline:
            return spend
        last = spend
        time.sleep(3.0)


def _serving_campaigns(settings: Settings) -> int:
    try:
        return int(httpx.get(_readyz(settings), timeout=2.0).json().get("campaigns", 0))
    except (httpx.HTTPError, ValueError):
        return 0


def _readyz(settings: Settings) -> str:
    return f"http://{settings.bind_host}:{settings.auction_port}/readyz"


def wait_for_auction_service(
    settings: Settings, campaigns: int, timeout_s: float = 120.0, *, at_most: bool = False
) -> dict:
    """Until the service has loaded the champion and serves ``campaigns`` campaigns or more (``at_most``: or fewer)."""
    deadline, body = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            body = httpx.get(_readyz(settings), timeout=2.0).json()
        except httpx.HTTPError as exc:
            body = {"reason": str(exc)}
        serving = body.get("campaigns", -1 if at_most else 0)
        if body.get("ready") and (0 <= serving <= campaigns if at_most else serving >= campaigns):
            return body
        time.sleep(1.0)
    bound = "at most" if at_most else "at least"
    raise StageFailed(
        f"the auction service was not ready with {bound} {campaigns} campaigns after {timeout_s:.0f}s: {body}"
    )


@dataclass(frozen=True)
class Simulation:
    duration_s: float = 180.0
    rate: float = 20.0  # auction requests per second (the day's mean: traffic follows a diurnal curve)
    users: int = 500
    bot_share: float = BOT_SHARE
    day_length_s: float | None = None  # the pacing day; None: the simulation's length, so a run is one day

    @property
    def day_s(self) -> float:
        return max(60.0, round(self.day_length_s or self.duration_s))

    @property
    def auction_ttl_s(self) -> int:
        """How long an auction's events are accepted, and its reservation held: a 24th of the day, as
        AUCTION_TTL_S's hour is of a real one (60 s at the least; the simulator's events come within
        seconds). Until its billable event or this, a CPC or CPA auction holds its expected cost
        against the budget, so an hour's hold in a day of minutes would lock half of every CPC and
        CPA budget for the rest of the day (a 10-minute run's such campaigns stalled near 50 %)."""
        return max(60, round(self.day_s / 24))

    @property
    def forecast_s(self) -> float:
        """The forecast's traffic before the day: a twentieth of the day, from 30 s to 3 minutes."""
        return float(min(180, max(30, round(self.day_s / 20))))

    @property
    def concurrency(self) -> int:
        """Visits in flight: enough for ``rate`` when each visit (auction, then its event batch) takes
        up to VISIT_BUDGET_S, as under load on 2 cores; 16 at the least (Little's law)."""
        return max(DEFAULT_CONCURRENCY, math.ceil(self.rate * DIURNAL_PEAK * VISIT_BUDGET_S))


def simulate(settings: Settings, state: RunState, plan: Simulation) -> None:
    """Simulated users for ``plan.duration_s``; the streaming KPIs are printed while they run."""
    summary_file = settings.local_dir.resolve() / "run" / "simulation.json"
    state.ground_truth_file = summary_file.parent / "ivt_ground_truth.csv"
    if state.day_origin is not None and (wait := (state.day_origin - datetime.now(UTC)).total_seconds()) > 0:
        print(f"    the pacing day starts at {state.day_origin:%H:%M:%S}: waiting {wait:.0f}s", flush=True)
        time.sleep(wait)
    elif state.day_origin is not None:
        late = f"{-wait:.0f}s into the pacing day (the platform and the forecast took longer than planned)"
        print(f"    the traffic starts {late}: the plan expects spend from {state.day_origin:%H:%M:%S}", flush=True)
    state.simulation_start = datetime.now(UTC)
    log = services.log_file(settings, "run-simulator")
    run_simulator(settings, plan, plan.duration_s, summary_file, state.ground_truth_file, log, show_kpis=True,
                  exchange_key=state.exchange_key)  # fmt: skip
    state.simulation_end = datetime.now(UTC)
    state.simulation = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    state.exchange_invoices.append(state.simulation.get("exchange") or {})
    print(f"    {_last_line(log)}")
    sent = Counts(
        events=int(state.simulation.get("events_accepted_total", 0)),  # people's and bots'
        impressions=int(state.simulation.get("impressions", 0)),  # people's: gold leaves out what is tagged IVT
    )
    landed = wait_for_stream(settings, state.simulation_start, sent)
    print(f"    the stream caught up: {landed.events:,} events in silver/feedback_events, "
          f"{landed.impressions:,} impressions in gold/kpi_minute", flush=True)  # fmt: skip
    print(f"    KPIs (gold/kpi_minute): {kpi_line(settings)}", flush=True)


def run_simulator(
    settings: Settings,
    plan: Simulation,
    duration_s: float,
    summary_file: Path,
    ground_truth_file: Path,
    log: Path,
    *,
    show_kpis: bool = False,
    exchange_key: str | None = None,
) -> None:
    """`adstream simulate` for ``duration_s`` at the plan's rate, users and bots along the diurnal curve;
    its progress (and, ``show_kpis``, the streaming KPIs) printed while it runs. Its OpenRTB requests carry
    ``exchange_key`` (by environment, never on a command line)."""
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(services.ADSTREAM), "simulate", "--duration", f"{duration_s:.0f}s",
        "--rate", f"{plan.rate:g}", "--users", str(plan.users), "--seed", str(SEED),
        "--summary-file", str(summary_file),
        "--concurrency", str(plan.concurrency), "--bot-share", f"{plan.bot_share:g}",
        "--ground-truth-file", str(ground_truth_file), "--traffic-curve", "diurnal",
    ]  # fmt: skip
    with log.open("w") as out:
        simulator = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=services.PROJECT_ROOT,
            env=child_process_env(**services.settings_env(settings),
                                  **({"SIMULATOR_EXCHANGE_KEY": exchange_key} if exchange_key else {})),
        )  # fmt: skip
        while simulator.poll() is None:
            time.sleep(min(KPI_EVERY_S, duration_s / 3))
            progress = _last_line(log)
            if progress:
                print(f"    simulator: {progress}", flush=True)
            if show_kpis:
                print(f"    KPIs (gold/kpi_minute): {kpi_line(settings)}", flush=True)
    if simulator.returncode != 0:
        raise StageFailed(f"the simulator exited with {simulator.returncode}; log: {log}\n    {_last_line(log)}")


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else ""


def kpi_line(settings: Settings) -> str:
    """Totals of gold/kpi_minute so far, read with delta-rs (no Spark)."""
    location, options = settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    try:
        frame = DeltaTable(location, storage_options=options).to_pandas(
            columns=["minute", "impressions", "clicks", "video_starts", "video_completes", "spend_micros"]
        )
    except TableNotFoundError:
        return "no rows yet (the streaming job writes them as events arrive)"
    if frame.empty:
        return "no rows yet"
    impressions, clicks = int(frame["impressions"].sum()), int(frame["clicks"].sum())
    starts, completes = int(frame["video_starts"].sum()), int(frame["video_completes"].sum())
    spend = Decimal(int(frame["spend_micros"].sum())) / MICROS_PER_UNIT
    return (
        f"{frame['minute'].nunique()} minutes, {impressions:,} impressions, {clicks:,} clicks, "
        f"CTR {clicks / impressions if impressions else 0:.2%}, "
        f"completion {completes / starts if starts else 0:.0%}, spend {spend:,.2f} USD, "
        f"RPAI {spend / impressions if impressions else 0:.4f} USD"
    )


def wait_for_stream(settings: Settings, since: datetime, expected: Counts, timeout_s: float = 180.0) -> Counts:
    """Until silver/feedback_events and gold/kpi_minute hold every event the simulator had accepted.

    Counting events since the simulation began, not the latest event time, is what tells a caught-up
    stream from one that has written a later micro-batch but not an earlier one's aggregates.
    """
    deadline, landed = time.monotonic() + timeout_s, Counts(0, 0)
    while time.monotonic() < deadline:
        landed = landed_counts(settings, since)
        if landed.events >= expected.events and landed.impressions >= expected.impressions:
            return landed
        time.sleep(3.0)
    raise StageFailed(
        f"the stream holds {landed.events:,} events ({landed.impressions:,} impressions in gold/kpi_minute) of the "
        f"{expected.events:,} ({expected.impressions:,}) the simulator sent: it did not catch up in {timeout_s:.0f}s; "
        f"log: {services.log_file(settings, 'streaming')}"
    )


@dataclass(frozen=True)
class Counts:
    events: int  # rows of silver/feedback_events
    impressions: int  # the sum of gold/kpi_minute's impressions


def landed_counts(settings: Settings, since: datetime) -> Counts:
    """Events since ``since`` in silver/feedback_events and impressions in gold/kpi_minute, read with delta-rs."""
    # A minute of slack: gold's rows are keyed by the minute the first event fell in.
    floor = since.replace(second=0, microsecond=0) - timedelta(minutes=1)
    counts = []
    for table, column, summed in (
        (Table.SILVER_FEEDBACK_EVENTS, "event_time", None),
        (Table.GOLD_KPI_MINUTE, "minute", "impressions"),
    ):
        location, options = settings.delta_rs_location(table)
        try:
            rows = DeltaTable(location, storage_options=options).to_pyarrow_table(
                columns=[column] + ([summed] if summed else [])
            )
        except TableNotFoundError:
            counts.append(0)
            continue
        recent = rows.filter(pc.greater_equal(rows.column(column), floor))
        counts.append(recent.num_rows if summed is None else int(pc.sum(recent.column(summed)).as_py() or 0))
    return Counts(events=counts[0], impressions=counts[1])


def bill_hours(settings: Settings, state: RunState) -> None:
    """`airflow dags test hourly_billing <hour>` for each hour the simulation touched."""
    assert state.simulation_start is not None and state.simulation_end is not None
    hour = state.simulation_start.replace(minute=0, second=0, microsecond=0)
    while hour <= state.simulation_end:
        stage = f"billing-{hour:%Y%m%dT%H}"
        log = services.log_file(settings, f"run-{stage}")
        with log.open("w") as out:
            # The run at H+1 bills [H, H+1): the data interval of the hourly timetable.
            run_at = (hour + timedelta(hours=1)).isoformat()
            done = services.airflow_cli(
                settings, "dags", "test", DagId.HOURLY_BILLING, run_at, check=False, capture_output=True
            )
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
            raise StageFailed(
                f"hourly_billing for {hour:%Y-%m-%d %H}:00 exited with {done.returncode}; log: {log}\n    {tail}"
            )
        state.billed_hours.append(hour)
        print(f"    hourly_billing {hour:%Y-%m-%d %H}:00 done; {bill_line(settings, hour)}", flush=True)
        hour += timedelta(hours=1)


def bill_line(settings: Settings, hour: datetime) -> str:
    location, options = settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)
    frame = DeltaTable(location, storage_options=options).to_pandas()
    rows = frame[frame["hour"] == pd.Timestamp(hour)] if "hour" in frame else frame.iloc[0:0]
    if rows.empty:
        return "no bill rows"
    status = ", ".join(sorted(rows["status"].astype(str).unique())) if "status" in rows else "?"
    published = published_rows(rows)
    spend = Decimal(int(published["spend_micros"].sum())) / MICROS_PER_UNIT if "spend_micros" in rows else Decimal(0)
    held = len(rows) - len(published)
    return (
        f"{len(rows)} campaign rows ({held} held back), billed {spend:,.2f} USD, status {status}; "
        f"{reconciliation_line(settings, hour)}"
    )


def published_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The bill's rows that count: a held-back row waits for its reason to be resolved and bills nothing yet."""
    return rows[rows["status"].astype(str) != "held_back"] if "status" in rows else rows


def reconciliation_line(settings: Settings, hour: datetime) -> str:
    """What the DAG's reconcile task found: a final hour with a mismatch fails the DAG; a provisional one is listed."""
    path = reconciliation_path(settings.reports_dir.resolve(), hour)
    if not path.exists():
        return "not reconciled"
    found = json.loads(path.read_text())
    against = " and ".join(name for name in found.get("checked", []) if name != "bill") or "nothing"
    mismatches = found.get("mismatches", [])
    return f"{len(mismatches)} campaign(s) differ from the {against}" + (
        "" if not mismatches else f": {', '.join(str(m.get('campaign_id', m)) for m in mismatches[:5])}"
    )


def score_invalid_traffic(settings: Settings, state: RunState) -> None:
    """Precision and recall of the IVT tags in silver/feedback_events against the simulator's bots
    (``simulator.ivt_scoring``); the run fails at the end when the GIVT targets are missed."""
    if state.ground_truth_file is None or not state.ground_truth_file.exists():
        raise StageFailed("the simulator wrote no ground truth: no IVT score")
    truth = read_ground_truth(state.ground_truth_file)
    if not any(event.behaviour != Behaviour.HUMAN for event in truth):
        print("    no bot events in this run (bot share 0): nothing to score", flush=True)
        return
    assert state.simulation_start is not None
    state.ivt = score_ivt(truth, landed_ivt_tags(settings, state.simulation_start, {e.event_id for e in truth}))
    state.ivt_misses = ivt_target_misses(state.ivt)
    for line in [*ivt_report_lines(state.ivt), ivt_verdict(state.ivt_misses)]:
        print(f"    {line}", flush=True)


def read_ground_truth(path: Path) -> list[TruthEvent]:
    """The events of the simulator's ground-truth CSV that the service took (so silver should hold them)."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(TRUTH_COLUMNS))
    taken = rows[rows["status"].isin(LANDED_STATUSES)]
    return [
        TruthEvent(row.event_id, row.event_type, row.behaviour, row.expected or None)
        for row in taken.itertuples(index=False)
    ]


def landed_ivt_tags(settings: Settings, since: datetime, event_ids: set[str]) -> list[LandedEvent]:
    """The IVT tags and cost that silver/feedback_events holds for ``event_ids`` (events since ``since``)."""
    floor = since.replace(second=0, microsecond=0) - timedelta(minutes=1)  # as landed_counts
    rows = ivt_summary(settings, floor, datetime.now(UTC) + timedelta(minutes=1))
    rows = rows[rows["event_id"].isin(event_ids)]
    tags = rows[["event_id", "ivt_category", "ivt_reason", "cost_micros"]].astype(object)
    return [
        LandedEvent(event_id, _or_none(category), _or_none(reason), int(_or_none(cost) or 0))
        for event_id, category, reason, cost in tags.itertuples(index=False)
    ]


def _or_none(value: Any) -> Any:
    return None if pd.isna(value) else value


KPI_EVERY_S = 20.0


def dashboard_screenshot(settings: Settings, state: RunState) -> None:
    """The dashboard's page, full height, in reports/dashboard/make_run.png, taken with headless chromium once
    the page has had two updates; said and skipped where there is no chromium (``make setup`` installs it)."""
    url = f"http://{settings.bind_host}:{settings.dashboard_port}/"
    path = settings.reports_dir.resolve() / "dashboard" / "make_run.png"
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service as ChromeService
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        print("    no screenshot: selenium is not installed (the dev extra)")
        return
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        print("    no screenshot: no chromium-driver on PATH (`make setup` installs Debian's chromium and its driver)")
        return
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=chromedriver))
    except WebDriverException as exc:
        print(f"    no screenshot: headless chromium did not start ({exc.msg}); `make setup` installs it")
        return
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: int(d.execute_script("return +document.body.dataset.updates||0")) > 1)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 8000))
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        print(f"    {url} -> {path}")
    except WebDriverException as exc:
        print(f"    no screenshot of {url}: {exc.msg}")
    finally:
        driver.quit()


def stages(plan: Simulation) -> tuple[Stage, ...]:
    return (
        Stage("start Kafka, the shared store, MLflow and Airflow", start_infrastructure),
        Stage("Airflow: kaggle_ingestion -> feature_build -> ctr_training (ctr-model@champion)", run_batch_dags),
        Stage(
            f"start the ad manager, auction service, streaming job and calibrator; seed campaigns for a "
            f"{plan.day_s:.0f}s pacing day",
            lambda settings, state: start_platform(settings, state, plan),
        ),
        Stage(
            f"forecast what each campaign wins at its full bid over {plan.forecast_s:.0f}s, then book daily budgets",
            lambda settings, state: forecast_and_book(settings, state, plan),
        ),
        Stage(
            f"simulate {plan.users} users, {plan.rate:g} auctions/s for {plan.duration_s:.0f}s (KPIs from the stream)",
            lambda settings, state: simulate(settings, state, plan),
        ),
        Stage("hourly_billing for the hours covered", bill_hours),
        Stage("IVT: the filter's precision and recall on the simulator's bots (silver/feedback_events)",
              score_invalid_traffic),
        Stage("dashboard: a screenshot of the page as the run left it", dashboard_screenshot),
    )  # fmt: skip


def summary(settings: Settings, state: RunState) -> str:
    password_file = settings.airflow_home.resolve() / "simple_auth_manager_passwords.json.generated"
    sim = state.simulation
    lines = ["Summary:"]
    if sim:
        lines += [
            f"  auctions           {sim.get('auctions', 0):,}  (fill rate {sim.get('fill_rate', 0):.1%})",
            f"  HTTP requests      {sim.get('requests', 0):,}  ({sim.get('requests_per_s', 0):,.1f}/s, auctions"
            f" and event batches; {sim.get('achieved_rate', 0):,.1f} visits/s)",
            f"  impressions/clicks {sim.get('impressions', 0):,} / {sim.get('clicks', 0):,}"
            f"  (CTR {sim.get('ctr', 0):.2%})",
            f"  spend              {sim.get('spend', '0')} USD  (errors {sim.get('errors', 0)})",
        ]
        bots = sim.get("bots", {})
        if bots.get("visits"):
            lines.append(
                f"  bots               {bots['visits']:,} visits ({bots.get('share', 0):.0%}), "
                f"{bots.get('events_accepted', 0):,} events accepted, charged {bots.get('spend', '0')} USD "
                "as the service answered"
            )
    lines += calibration_lines(settings, state)
    lines += pacing_lines(settings, state)
    lines += optimizer_lines(settings, state)
    lines += clearing_cpm_line(settings, state)
    lines += invalid_traffic_lines(state)
    lines += top_campaigns(settings, state)
    lines += [
        "Where things are:",
        f"  Lake (Delta)       {services.settings_env(settings)['LAKE_ROOT']}"
        "  (bronze/, silver/, gold/kpi_minute, gold/billing_hourly, quarantine/)",
        f"  Bill reports       {settings.reports_dir.resolve() / 'billing'}",
        f"  MLflow UI          http://{settings.bind_host}:{settings.mlflow_port}"
        f"  (experiment '{MLFLOW_EXPERIMENT}', model '{REGISTERED_MODEL}@{CHAMPION_ALIAS}')",
        f"  Airflow UI         http://{settings.bind_host}:{settings.airflow_port}"
        f"  (user admin, password in {password_file})",
        f"  Auction API        http://{settings.bind_host}:{settings.auction_port}/docs",
        f"  Dashboard          http://{settings.bind_host}:{settings.dashboard_port}"
        f"  (screenshot in {settings.reports_dir.resolve() / 'dashboard'})",
        f"  Service logs       {settings.log_dir.resolve()}",
    ]
    return "\n".join(lines)


def invalid_traffic_lines(state: RunState) -> list[str]:
    """The IVT filter's score on the simulator's bots, and whether it met the targets."""
    if state.ivt is None:
        return []
    bots = state.ivt.bots()
    charged = sum(bot.charged_micros for bot in bots)
    charged_givt = sum(bot.charged_givt_micros for bot in bots)
    billed = sum(bot.billed_micros for bot in bots)
    lines = ["  invalid traffic (silver's tags, and billing's after the fact, against the simulator's bots):"]
    lines += [f"    {line}" for line in ivt_report_lines(state.ivt)]
    lines.append(
        f"    bots' events charged {usd(charged)} USD in all, {usd(charged_givt)} USD on GIVT-detectable ones "
        f"(target 0); billed after the IVT credit {usd(billed)} USD (target 0)"
    )
    lines.append(f"    {ivt_verdict(state.ivt_misses)}")
    return lines


def ivt_verdict(misses: list[str]) -> str:
    verdict = "met" if not misses else "MISSED: " + "; ".join(misses)
    return (
        f"GIVT targets (precision >= {MIN_GIVT_PRECISION}, recall >= {MIN_GIVT_RECALL} per bot, "
        f"nothing charged for GIVT, nothing billed for bots): {verdict}"
    )


def top_campaigns(settings: Settings, state: RunState, n: int = 5) -> list[str]:
    """The bill's top campaigns by spend over the hours billed, and each hour's status."""
    location, options = settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)
    try:
        bill = DeltaTable(location, storage_options=options).to_pandas()
    except TableNotFoundError:
        return ["  (no bill yet)"]
    if bill.empty or "spend_micros" not in bill:
        return ["  (the bill is empty)"]
    lines = ["  bills:"]
    media_total = 0
    for hour, rows in bill.groupby("hour"):
        status = ", ".join(sorted(rows["status"].astype(str).unique())) if "status" in rows else "?"
        spend = Decimal(int(published_rows(rows)["spend_micros"].sum())) / MICROS_PER_UNIT
        media = int(published_rows(rows)["media_cost_micros"].sum()) if "media_cost_micros" in rows else 0
        media_total += media
        lines.append(f"    {hour:%Y-%m-%d %H}:00  {status:<12} billed {spend:,.2f} USD, "
                     f"media cost {usd(media)} USD")  # fmt: skip
    lines += exchange_invoice_lines(settings, state, media_total)
    top = published_rows(bill).groupby("campaign_id")["spend_micros"].sum().nlargest(n)
    lines.append(f"  top {len(top)} campaigns by billed spend:")
    lines += [f"    {cid:<28} {Decimal(int(v)) / MICROS_PER_UNIT:>10,.2f} USD" for cid, v in top.items()]
    return lines


def exchange_invoice_lines(settings: Settings, state: RunState, media_total: int) -> list[str]:
    """The simulated exchange's invoice (its billing notices per hour, at its win notices' prices), written as
    the CSV an exchange sends and judged by `adstream invoice` against gold/exchange_costs_hourly."""
    hours: dict[str, list[int]] = {}
    for summary in state.exchange_invoices:
        for line in (summary or {}).get("invoice", []):
            merged = hours.setdefault(line["period_start"], [0, 0, line["period_end"]])
            merged[0] += int(line["impressions"])
            merged[1] += int(line["media_cost_cpm_micros"])
    if not hours:
        return [f"  media cost: bills {usd(media_total)} USD; the simulated exchange sent no invoice"]
    rows = [
        f"{start},{end},{count},{Decimal((cpm + 500) // 1000) / MICROS_PER_UNIT:.6f},USD"
        for start, (count, cpm, end) in sorted(hours.items())
    ]
    path = settings.local_dir.resolve() / "run" / "exchange-invoice.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("period_start,period_end,impressions,amount,currency\n" + "".join(f"{row}\n" for row in rows))
    result = invoices.reconcile_invoice(settings, SIM_EXCHANGE, path.read_text(), str(path))
    report = invoices.write_report(settings, result)
    verdicts = Counter(line.verdict.value for line in result.lines)
    totals = result.totals()
    return [
        f"  media cost: bills {usd(media_total)} USD; the simulated exchange's invoice ({path}), by `adstream "
        f"invoice {SIM_EXCHANGE}`: {len(result.lines)} hourly lines, "
        + ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
        + f"; judged lines invoiced {usd(totals['invoiced_micros'])} USD against ours {usd(totals['our_micros'])}"
        f" USD, disputed {usd(totals['disputed_micros'])} USD{_open_lines(result)} (report {report})"
    ]


def _open_lines(result: invoices.InvoiceReconciliation) -> str:
    """The figures of the lines not judged yet (a run ends before its last hour's bill is final), as they stand."""
    waiting = [line for line in result.lines if line.verdict == invoices.Verdict.OPEN]
    if not waiting:
        return ""
    invoiced, ours = sum(line.invoiced_micros for line in waiting), sum(line.our_micros for line in waiting)
    shown = (sum(line.invoiced_impressions for line in waiting), sum(line.our_impressions for line in waiting))
    return (
        f"; open lines (a provisional bill) so far: invoiced {usd(invoiced)} USD for {shown[0]:,} impressions,"
        f" ours {usd(ours)} USD for {shown[1]:,}"
    )


def _ratio_line(label: str, impressions: pd.DataFrame) -> str:
    expected, clicks = float(impressions["pctr"].sum()), int(impressions["clicked"].sum())
    ratio = observed_over_expected(clicks, expected)
    low, high = ALERT_BOUNDS
    flag = "" if low <= ratio <= high else "  (outside 0.8-1.25: calibration alert)"
    return (
        f"    {label:<26} observed / expected clicks {ratio:.3f}  ({clicks:,} clicks, {expected:,.1f} expected, "
        f"{len(impressions):,} impressions){flag}"
    )


def calibration_lines(settings: Settings, state: RunState) -> list[str]:
    """Observed / expected clicks of the run's impressions, from the lake: over the run, per pricing model,
    and from the first online calibration on; the served mean pCTR beside the CTR; the map in force."""
    if state.simulation_start is None:
        return []
    events, _ = calibrate.read_window(settings, state.simulation_start)
    impressions = attributed_impressions(events)
    if impressions.empty:
        return ["  calibration        (no impressions in the lake)"]
    lines = [
        f"  calibration        served mean pCTR {impressions['pctr'].mean():.2%} against CTR "
        f"{impressions['clicked'].mean():.2%} (silver/feedback_events, gold/calibration)",
        _ratio_line("over the run", impressions),
    ]
    lines += [_ratio_line(f"  {model}", rows) for model, rows in impressions.groupby("pricing_model")]
    version = str(impressions["model_version"].iloc[-1])
    latest = calibrate.latest_calibration(settings, version)
    first = calibrate.first_calibration_since(settings, state.simulation_start)
    if first is not None:
        since = impressions[impressions["event_time"] >= pd.Timestamp(first)]
        if not since.empty:
            lines.append(_ratio_line(f"from the first refresh ({first:%H:%M:%S})", since))
            lines += [_ratio_line(f"  {model}", rows) for model, rows in since.groupby("pricing_model")]
    if latest is not None:
        lines.append(
            f"    map in force for version {version}: logit(pCTR) = {latest.slope:.3f} x logit(score) "
            f"{latest.intercept:+.3f} + offset (CPM {latest.offset_cpm:+.3f}, CPC {latest.offset_cpc:+.3f}, "
            f"CPA {latest.offset_cpa:+.3f}) + category offset, fitted on {latest.clicks:,} clicks at {latest.fitted_at}"
        )
        if latest.category_offsets:
            by_category = ", ".join(f"{name} {offset:+.2f}" for name, offset in latest.category_offsets)
            lines.append(f"      category offsets: {by_category}")
    else:
        lines.append(f"    version {version} served its registered calibration only (no online refit yet)")
    return lines


def store_sessions(settings: Settings) -> sessionmaker[Session]:
    return make_session_factory(make_engine(settings))


def pacing_report(
    minutes: pd.DataFrame,
    kpis: pd.DataFrame,
    day_start: datetime,
    day_s: float,
    ledger_spend: Mapping[str, int] | None = None,
    cohorts: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Per pacing mode, over the campaigns of one day: spend / daily budget at the end (median, min, max),
    the deviation of spend from plan (per campaign the median over its minutes of |spent - plan| / budget;
    then median and p90 over campaigns), how many exhausted their budget and the earliest share of the
    day they did, overspend, and eCPC and eCPA. ``minutes`` are gold/pacing_minute's rows of the day,
    ``kpis`` gold/kpi_minute's (campaign_id, minute, spend_micros, clicks, conversions); ``ledger_spend``
    the ledger's spend of the day per campaign, exact where minutes cut the day's edges (else the KPIs').

    Even campaigns are also reported in two parts (``bound``), by where the day left them: "budget", those
    their controller was holding back at the day's end (λ under 1 or a throttle in its last tenth or its last
    minute) or that exhausted their budget: bound by their budget, the ones pacing decides; and "bid", those
    at full bid through the day's end: bound by their bid, they could not keep up with the plan, and no pacing
    can spend their budget. "bid, held earlier" are those of "bid" held back at some earlier point (a
    campaign that stops winning after pacing held it early). "all" is every one. ``cohorts`` (name -> campaign
    ids) adds a row per named group of even campaigns, ``bound`` its name.
    """
    ordered = minutes.sort_values("at")
    last = ordered.groupby("campaign_id").last()
    deviation = (
        ((minutes["spent_today_micros"] - minutes["plan_micros"]).abs() / minutes["plan_budget_micros"].clip(lower=1))
        .groupby(minutes["campaign_id"])
        .median()
    )
    holding = (minutes["pacing_multiplier"] < 0.999) | (minutes["throttle_rate"] > 0)
    held = holding.groupby(minutes["campaign_id"]).any()
    end = minutes["at"] >= pd.Timestamp(day_start) + pd.Timedelta(seconds=0.9 * day_s)
    end |= minutes.index.isin(ordered.groupby("campaign_id").tail(1).index)
    held_at_end = holding[end].groupby(minutes.loc[end, "campaign_id"]).any().reindex(last.index, fill_value=False)
    kpis = kpis[kpis["campaign_id"].isin(last.index)].sort_values("minute")
    spent = kpis.groupby("campaign_id")["spend_micros"].sum().reindex(last.index, fill_value=0)
    if ledger_spend is not None:
        spent = pd.Series({cid: ledger_spend.get(cid, 0) for cid in last.index}, dtype="int64")
    share = exhaustion_share(kpis, last["plan_budget_micros"], day_start, day_s)
    by_budget = held_at_end | last.index.isin(share.index)
    groups = []
    for mode, campaigns in last.groupby("mode"):
        groups.append((mode, "all", campaigns.index))
        if mode == "even":
            even = campaigns.index
            groups += [(mode, "budget", even[by_budget[even]]), (mode, "bid", even[~by_budget[even]]),
                       (mode, "bid, held earlier", even[~by_budget[even] & held[even]])]  # fmt: skip
            groups += [
                (mode, name, campaigns.index[campaigns.index.isin(ids)]) for name, ids in (cohorts or {}).items()
            ]
    rows = []
    for mode, bound, ids in groups:
        if not len(ids):
            continue
        campaigns = last.loc[ids]
        ratio = spent[ids] / campaigns["plan_budget_micros"].clip(lower=1)
        over = (spent[ids] - campaigns["daily_budget_micros"]).clip(lower=0)
        clicks = kpis[kpis["campaign_id"].isin(ids)]["clicks"].sum()
        conversions = kpis[kpis["campaign_id"].isin(ids)]["conversions"].sum()
        mode_share = share.reindex(ids).dropna()
        rows.append({
            "mode": mode, "bound": bound, "campaigns": len(ids), "spend_ratio_median": ratio.median(),
            "spend_ratio_min": ratio.min(), "spend_ratio_max": ratio.max(),
            "within_95_100": int(((ratio >= 0.95) & (ratio <= 1.0)).sum()), "deviation_median": deviation[ids].median(),
            "deviation_p90": deviation[ids].quantile(0.9), "exhausted": len(mode_share),
            "first_exhausted_at": mode_share.min() if len(mode_share) else None,
            "exhausted_before_90": int((mode_share < 0.9).sum()),
            "overspent": int((over > 0).sum()), "overspend_usd": over.sum() / MICROS_PER_UNIT,
            "ecpc_usd": spent[ids].sum() / MICROS_PER_UNIT / clicks if clicks else None,
            "ecpa_usd": spent[ids].sum() / MICROS_PER_UNIT / conversions if conversions else None,
        })  # fmt: skip
    return pd.DataFrame(rows)


def exhaustion_share(kpis: pd.DataFrame, budgets: pd.Series, day_start: datetime, day_s: float) -> pd.Series:
    """Per campaign that spent 99 % of its budget, the share of the day at which it did: within the minute
    that crossed it, in proportion to that minute's spend (a minute's end would put a minute cut by the
    day's end after it)."""
    cumulative = kpis.groupby("campaign_id")["spend_micros"].cumsum()
    target = 0.99 * kpis["campaign_id"].map(budgets)
    crossed = kpis[(cumulative >= target) & (cumulative - kpis["spend_micros"] < target)]
    if crossed.empty:
        return pd.Series(dtype=float)
    before = (cumulative - kpis["spend_micros"])[crossed.index]
    into_minute = 60 * (target[crossed.index] - before) / crossed["spend_micros"].clip(lower=1)
    at = (crossed["minute"] - pd.Timestamp(day_start)).dt.total_seconds() + into_minute
    return (at.clip(0, day_s) / day_s).groupby(crossed["campaign_id"]).min()


def pacing_lines(settings: Settings, state: RunState) -> list[str]:
    """The pacing report of each of the run's days, per mode side by side (``pacing_report``), from the lake.
    Only the first day plans on the flat prior; the later ones on the traffic curve learned from the first."""
    if state.day_origin is None or state.day_length_s is None:
        return []
    day_s = float(state.day_length_s)
    try:
        location, options = settings.delta_rs_location(Table.GOLD_PACING_MINUTE)
        minutes = DeltaTable(location, storage_options=options).to_pandas()
        location, options = settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
        kpis = DeltaTable(location, storage_options=options).to_pandas(
            columns=["campaign_id", "minute", "spend_micros", "clicks", "conversions"]
        )
    except TableNotFoundError:
        return ["  pacing             (no gold/pacing_minute yet)"]
    lines = []
    for n in range(state.days):
        origin = state.day_origin + timedelta(seconds=n * day_s)
        label = f"day {n + 1} of {state.days}"
        lines += _pacing_day_lines(settings, minutes, kpis, origin, day_s, label, state.pairs)
    return lines


def _pacing_day_lines(
    settings: Settings,
    minutes: pd.DataFrame,
    kpis: pd.DataFrame,
    origin: datetime,
    day_s: float,
    label: str,
    pairs: Sequence[tuple[str, str]] = (),
) -> list[str]:
    day_end = origin + timedelta(seconds=day_s)
    # The controllers' minutes of this day; the KPIs' minutes overlapping it (the first begins before it).
    minutes = minutes[minutes["day_start"] == pd.Timestamp(origin)]
    kpis = kpis[
        (kpis["minute"] > pd.Timestamp(origin - timedelta(minutes=1))) & (kpis["minute"] < pd.Timestamp(day_end))
    ]
    if minutes.empty:
        return [f"  pacing             (no pacing rows for the run's {label})"]
    day = DayClock(int(day_s), int(origin.timestamp())).budget_day(origin)
    with store_sessions(settings)() as session:  # the ledger's spend of this budget day, exact
        _, ledger_spend = store.spend_totals(session, day)
    cohorts = {"optimized": [o for o, _ in pairs], "static twin": [t for _, t in pairs]} if pairs else None
    report = pacing_report(minutes, kpis, origin, day_s, ledger_spend, cohorts)
    lines = [f"  pacing             {label}: {day_s:.0f}s from {origin:%H:%M:%S} (gold/pacing_minute)"]

    def cell(value: object, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    for row in report.itertuples():
        bound = {"all": f"{row.mode:<5}", "budget": "  held back at the day's end (bound by budget)",
                 "bid": "  at full bid at the day's end (bound by bid)",
                 "bid, held earlier": "    of which held back earlier in the day"}.get(
            row.bound, f"  {row.bound} (pairs)")  # fmt: skip
        lines.append(
            f"    {bound} {row.campaigns:>3} campaigns: spend / daily budget median {row.spend_ratio_median:.1%} "
            f"[{row.spend_ratio_min:.1%}, {row.spend_ratio_max:.1%}], {row.within_95_100} within 95-100%, "
            f"deviation from plan median {row.deviation_median:.1%} p90 {row.deviation_p90:.1%}, "
            f"exhausted {row.exhausted} ({row.exhausted_before_90} before 90% of the day, first at "
            f"{cell(row.first_exhausted_at, '.0%')}), overspent {row.overspent} ({row.overspend_usd:.2f} USD), "
            f"eCPC {cell(row.ecpc_usd, '.3f')}, eCPA {cell(row.ecpa_usd, '.2f')} USD"
        )
    return lines


def _paired_events(events: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The pairs' valid, delivered events (silver/feedback_events' columns) with their side, platform, conversion
    (0/1) and spend as charged (USD)."""
    side = {optimized: "optimized" for optimized, _ in pairs} | {twin: "static" for _, twin in pairs}
    valid = events[events["campaign_id"].isin(side) & events["ivt_category"].isna()
                   & ~events["charge_status"].isin(NOT_DELIVERED)]  # fmt: skip
    return valid.assign(
        side=valid["campaign_id"].map(side),
        platform=valid["channel"].fillna("?") + "/" + valid["device_type"].fillna("?"),
        conversions=(valid["event_type"] == "conversion").astype(int),
        spend_usd=valid["cost_micros"].where(valid["charge_status"] == "charged", 0) / MICROS_PER_UNIT,
    )


def optimizer_comparison(events: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Per platform and in all ("all"), the optimized campaigns against their static twins: conversions,
    spend (USD) and conversions per dollar of each side, from ``events`` (silver/feedback_events' rows of the
    day: event_type, campaign_id, channel, device_type, cost_micros, charge_status, ivt_category); valid,
    delivered events only, spend as charged."""
    frame = _paired_events(events, pairs)
    rows = []
    for platform, part in [("all", frame), *frame.groupby("platform")]:
        row: dict[str, Any] = {"platform": platform}
        for name in ("optimized", "static"):
            mine = part[part["side"] == name]
            conversions, spend = int(mine["conversions"].sum()), float(mine["spend_usd"].sum())
            row |= {f"{name}_conversions": conversions, f"{name}_spend_usd": spend,
                    f"{name}_per_usd": conversions / spend if spend else math.nan}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def equal_spend_comparison(
    events: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    daily_budgets_usd: Mapping[str, float],
    origin: datetime,
    day_s: float,
    days: int,
    bound: float = BUDGET_BOUND,
) -> dict[str, Any]:
    """The pairs' days on which both arms spent ``bound`` of their daily budget at least: budget-bound on both
    sides, so spend is equal within 1 - ``bound`` by construction and conversions per dollar compare at equal
    spend. A pair's day where an arm could not spend its budget at its bids (bid-bound) compares what the
    optimizer's bids bought more of, not how well a budget was spent. ``events`` as ``optimizer_comparison``'s,
    with event_time; day k runs from ``origin`` + k ``day_s``."""
    frame = _paired_events(events, pairs)
    since = (frame["event_time"] - pd.Timestamp(origin)).dt.total_seconds()
    frame = frame.assign(day=(since // day_s).astype(int))
    frame = frame[(frame["day"] >= 0) & (frame["day"] < days)]
    per = frame.groupby(["campaign_id", "day"])[["conversions", "spend_usd"]].sum()
    totals = {f"{name}_{what}": 0.0 for name in ("optimized", "static") for what in ("conversions", "spend_usd")}
    bound_days = 0
    for optimized, twin in pairs:
        for day in range(days):
            arms = {name: per.loc[(cid, day)] if (cid, day) in per.index else None
                    for name, cid in (("optimized", optimized), ("static", twin))}  # fmt: skip
            spent = {name: 0.0 if arm is None else float(arm["spend_usd"]) for name, arm in arms.items()}
            budgets = {"optimized": daily_budgets_usd.get(optimized, 0.0), "static": daily_budgets_usd.get(twin, 0.0)}
            if not all(budgets[name] > 0 and spent[name] >= bound * budgets[name] for name in arms):
                continue
            bound_days += 1
            for name, arm in arms.items():
                assert arm is not None
                totals[f"{name}_conversions"] += int(arm["conversions"])
                totals[f"{name}_spend_usd"] += float(arm["spend_usd"])
    result: dict[str, Any] = {"pair_days": bound_days, "of": len(pairs) * days} | totals
    for name in ("optimized", "static"):
        result[f"{name}_conversions"] = int(totals[f"{name}_conversions"])
        spend = totals[f"{name}_spend_usd"]
        result[f"{name}_per_usd"] = result[f"{name}_conversions"] / spend if spend else math.nan
    return result


def optimizer_lines(settings: Settings, state: RunState) -> list[str]:
    """The optimized campaigns against their static twins over the run's days (``optimizer_comparison``)."""
    if not state.pairs or state.day_origin is None or state.day_length_s is None:
        return []
    day_end = state.day_origin + timedelta(seconds=state.days * state.day_length_s)
    location, options = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    try:
        events = DeltaTable(location, storage_options=options).to_pandas(
            columns=["event_type", "event_time", "campaign_id", "channel", "device_type", "cost_micros",
                     "charge_status", "ivt_category"],
            filters=[("event_date", ">=", state.day_origin.date())],
        )  # fmt: skip
    except TableNotFoundError:
        return []
    events = events[(events["event_time"] >= pd.Timestamp(state.day_origin)) & (events["event_time"] < day_end)]
    table = optimizer_comparison(events, state.pairs).set_index("platform")
    with store_sessions(settings)() as session:
        budgets = {cid: view.spec.daily_budget_micros / MICROS_PER_UNIT for pair in state.pairs for cid in pair
                   if (view := store.get_campaign(session, cid)) is not None}  # fmt: skip
    equal = equal_spend_comparison(events, state.pairs, budgets, state.day_origin, state.day_length_s, state.days)
    opt, static = "optimized", "static"

    def versus(sides: Mapping[str, Any]) -> str:
        per = {name: sides[f"{name}_per_usd"] for name in (opt, static)}
        spent = {name: sides[f"{name}_spend_usd"] for name in (opt, static)}
        gain = per[opt] / per[static] - 1 if per[static] else math.nan
        more = spent[opt] / spent[static] - 1 if spent[static] else math.nan
        return (
            f"{opt} {per[opt]:.4f} ({int(sides[f'{opt}_conversions']):,} for {spent[opt]:,.2f} USD), {static} "
            f"{per[static]:.4f} ({int(sides[f'{static}_conversions']):,} for {spent[static]:,.2f} USD): {gain:+.1%} "
            f"at {more:+.1%} spend"
        )

    lines = [
        f"  optimizer          {len(state.pairs)} optimized campaigns against their static twins "
        "(silver/feedback_events)",
        f"    conversions per USD: {versus(table.loc['all'])}",
        f"    at equal spend, the {equal['pair_days']} of {equal['of']} pair-days both arms spent >= "
        f"{BUDGET_BOUND:.0%} of their daily budget: {versus(equal)}",
    ]
    lag = _decision_lag(settings)
    if lag is not None:
        lines.append(
            f"    decision lag (Kafka as the decision had read it -> this replica serving it): p50 {lag['p50']:.1f} s, "
            f"p95 {lag['p95']:.1f} s over {lag['decisions']:,} decisions (target p95 <= 5 s; /v1/stats)"
        )
    for platform, row in table.drop(index="all").iterrows():
        lines.append(
            f"      {platform:<12} {opt} {int(row[f'{opt}_conversions']):>4} conv / "
            f"{row[f'{opt}_spend_usd']:>9,.2f} USD, {static} {int(row[f'{static}_conversions']):>4} conv / "
            f"{row[f'{static}_spend_usd']:>9,.2f} USD"
        )
    return lines


def _decision_lag(settings: Settings) -> dict | None:
    try:
        stats = httpx.get(f"http://{settings.bind_host}:{settings.auction_port}/v1/stats", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    return (stats.get("optimizer") or {}).get("decision_lag_s")


def clearing_cpm_line(settings: Settings, state: RunState) -> list[str]:
    """The distribution of the run's clearing prices per thousand impressions (every pricing model)."""
    if state.simulation_start is None:
        return []
    location, options = settings.delta_rs_location(Table.SILVER_AUCTIONS)
    try:
        auctions = DeltaTable(location, storage_options=options).to_pandas(
            columns=["event_time", "filled", "pricing_model", "clearing_price_micros", "pctr"],
            filters=[("event_date", ">=", state.simulation_start.date())],
        )
    except TableNotFoundError:
        return []
    filled = auctions[auctions["filled"] & (auctions["event_time"] >= pd.Timestamp(state.simulation_start))]
    if filled.empty:
        return []
    cpm = clearing_cpm_usd(filled)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(cpm, [10, 50, 90, 99]))
    return [
        f"  clearing CPM       p10 {p10:.2f}, median {p50:.2f}, p90 {p90:.2f}, p99 {p99:.2f}, max {cpm.max():.2f} USD"
        f"  ({len(filled):,} filled auctions, every pricing model at its pCTR)"
    ]


def clearing_cpm_usd(filled: pd.DataFrame) -> np.ndarray:
    """What each filled auction's price is worth per thousand impressions, in USD (a display, not money:
    CPC and CPA prices at the pCTR, and the default pCVR, the auction priced them with)."""
    price = filled["clearing_price_micros"].to_numpy(dtype=float) / MICROS_PER_UNIT
    pctr = filled["pctr"].fillna(0.0).to_numpy()
    per_impression = np.select(
        [filled["pricing_model"] == "CPM", filled["pricing_model"] == "CPC"],
        [price / 1000, price * pctr],
        price * pctr * DEFAULT_PCVR,
    )
    return per_impression * 1000


def run(settings: Settings, plan: Simulation, keep_up: bool = False) -> int:
    """Every stage in turn; 1 as soon as one fails (it names itself), else 0. Services are stopped at the end
    unless ``keep_up``."""
    state = RunState()
    planned = stages(plan)
    if not settings.ivt_datacenter_cidrs:
        # The services and the simulator started from here share the data-center ranges: the simulator's
        # data-center bots come from them, and the service tags their events GIVT.
        default_child_env("IVT_DATACENTER_CIDRS", DEFAULT_DATACENTER_CIDRS)
    began = time.monotonic()
    timings: list[tuple[str, float]] = []
    try:
        for number, stage in enumerate(planned, start=1):
            print(f"[{number}/{len(planned)}] {stage.name} ...", flush=True)
            stage_began = time.monotonic()
            try:
                stage.action(settings, state)
            except (StageFailed, services.ServiceError) as exc:
                print(f"[{number}/{len(planned)}] FAILED: {stage.name}\n    {exc}", file=sys.stderr)
                return 1
            timings.append((stage.name, time.monotonic() - stage_began))
            print(f"[{number}/{len(planned)}] done in {timings[-1][1]:.1f}s", flush=True)
        print(f"\nAdStream ran end to end in {time.monotonic() - began:.1f}s.")
        print("Stage times:\n" + "\n".join(f"  {seconds:7.1f}s  {name}" for name, seconds in timings))
        print(summary(settings, state))
        if state.ivt_misses:
            print(f"\nFAILED: the IVT filter missed its targets: {'; '.join(state.ivt_misses)}", file=sys.stderr)
            return 1
    finally:
        if keep_up:
            print("\nServices left running (KEEP_UP=1); stop them with `make down`.")
        else:
            print("\nStopping services (KEEP_UP=1 keeps them running) ...")
            services.down(settings)
    return 0


# --- the commands (`adstream run`; devstack.cli loads this module when one runs) ---

commands = commands_app()


@commands.command("run")
def run_command(
    keep_up: Annotated[bool, typer.Option("--keep-up", help="leave the services running (make run KEEP_UP=1)")] = False,
    duration: Annotated[
        float,
        typer.Option(
            parser=parse_duration,
            metavar="DURATION",
            help="how long users are simulated, e.g. 90s, 5m, 1h (make run DURATION=...; default 3m)",
            show_default=False,
        ),
    ] = f"{Simulation.duration_s:g}s",  # type: ignore[assignment]  # click parses defaults too
    rate: Annotated[float, typer.Option(help="auction requests per second (RATE=...)")] = Simulation.rate,
    users: Annotated[int, typer.Option(help="simulated users (USERS=...)")] = Simulation.users,
    bot_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of visits made by bots (BOT_SHARE=...)")
    ] = Simulation.bot_share,
    day_length: Annotated[
        float | None,
        typer.Option(
            parser=parse_duration,
            metavar="DURATION",
            help="the pacing day, e.g. 60m (DAY_LENGTH=...; default: the simulation's length)",
        ),
    ] = None,
) -> None:
    """Bring the platform up and push data through it, one visible stage at a time (`make run`)."""
    plan = Simulation(duration_s=duration, rate=rate, users=users, bot_share=bot_share, day_length_s=day_length)
    raise typer.Exit(run(get_settings(), plan, keep_up=keep_up))
