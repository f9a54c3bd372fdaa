"""The feedback job: refit each served model's Platt map on logged traffic, keep gold/calibration, and learn
the traffic curve pacing plans along (gold/traffic_curve).

    adstream calibrate [--once]
    adstream calibrate --check     # exit 0 if a running job refreshed recently

Every CALIBRATION_REFRESH_S it reads the last CALIBRATION_WINDOW_S of silver/feedback_events (from the
start of that window's first hour), attributes clicks to impressions by auction, and
- appends to gold/calibrators the Platt map of every model version whose impressions (with their
  raw score) hold CALIBRATION_MIN_CLICKS clicks, centred on the version's newest map fitted before the
  window (its data and the window's do not overlap, so no click counts twice), or on its registered
  calibration when it has none (ml.calibration); the auction service picks the newest map of the
  version it serves up within CALIBRATION_POLL_S;
- rewrites gold/calibration for the window's hours: per model version x hour x pricing model x ad
  category, impressions, expected clicks (Σ served pCTR), clicks and observed / expected, with
  ``alert`` set outside 0.8-1.25 (also logged as a warning). A recomputation of whole hours, so a
  refresh done twice, or a click landing late, corrects the row rather than counting twice;
- lands the pacing controllers' per-minute rows (``pacing:minutes`` in the shared store) in
  gold/pacing_minute: per campaign and minute, the mode, plan, spend today, λ, throttle rate and
  projected exhaustion;
- rewrites gold/traffic_curve: auctions per slot (24) of the pacing day (``adstream.days``) over the
  last CURVE_DAYS complete days of silver/auctions. The auction service's
  pacing controllers read it (``auction_service.serving.pacer``), flat until there is a whole day.

The ad category comes from silver/auctions (the winner's category), "unknown" where the auction
log lost the record. Reads and writes go through delta-rs: no Spark for a table of this size.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import pandas as pd
import pyarrow as pa
import redis
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from adstream.contracts import Table
from adstream.days import DayClock
from adstream.events import EventType
from adstream.settings import Settings
from ml.calibration import Calibration, attributed_impressions, calibration_by_hour, fit_versions
from ml.registry import registered_calibration

log = logging.getLogger(__name__)

EVENT_COLUMNS = [
    "event_type", "auction_id", "event_time", "event_date", "model_version", "pricing_model", "campaign_id",
    "pctr", "raw_pctr", "charge_status", "ivt_category",
]  # fmt: skip
CALIBRATOR_SCHEMA = pa.schema(
    [
        ("calibration_id", pa.string()),
        ("model_version", pa.string()),
        ("kind", pa.string()),
        ("slope", pa.float64()),
        ("intercept", pa.float64()),
        ("fitted_at", pa.string()),
        ("impressions", pa.int64()),
        ("clicks", pa.int64()),
        ("train_positive_rate", pa.float64()),
        ("prior_ctr", pa.float64()),
        ("offset_cpm", pa.float64()),
        ("offset_cpc", pa.float64()),
        ("offset_cpa", pa.float64()),
        ("category_offsets", pa.string()),  # JSON: ad category -> log-odds offset
    ]
)
COMPACT_EVERY = 60  # appends to gold/calibrators between compactions: serving reads it every few seconds


@dataclass(frozen=True)
class Refresh:
    """What one refresh did."""

    impressions: int
    clicks: int
    fitted: list[Calibration]
    hours: int  # gold/calibration rows rewritten
    alerts: list[str]


def _read(settings: Settings, table: Table, columns: list[str], since: datetime) -> pd.DataFrame | None:
    location, options = settings.delta_rs_location(table)
    try:
        frame = DeltaTable(location, storage_options=options).to_pandas(
            columns=columns, filters=[("event_date", ">=", since.date())]
        )
    except TableNotFoundError:
        return None
    return frame[frame["event_time"] >= pd.Timestamp(since)]


def read_window(settings: Settings, since: datetime) -> tuple[pd.DataFrame, dict[str, str]]:
    """silver/feedback_events' impressions and clicks since ``since``, and campaign -> ad category."""
    events = _read(settings, Table.SILVER_FEEDBACK_EVENTS, EVENT_COLUMNS, since)
    if events is None or events.empty:
        return pd.DataFrame(columns=EVENT_COLUMNS), {}
    if "raw_pctr" not in events:  # a silver from before the raw score was logged
        events = events.assign(raw_pctr=float("nan"))
    events = events[events["event_type"].isin([EventType.IMPRESSION.value, EventType.CLICK.value])]
    auctions = _read(settings, Table.SILVER_AUCTIONS, ["campaign_id", "ad_category", "event_time", "event_date"], since)
    category_of: dict[str, str] = {}
    if auctions is not None:
        known = auctions.dropna(subset=["campaign_id", "ad_category"]).drop_duplicates("campaign_id")
        category_of = dict(zip(known["campaign_id"], known["ad_category"], strict=True))
    return events, category_of


def _calibrators(settings: Settings, filters: list[tuple[str, str, object]]) -> pd.DataFrame:
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATORS)
    try:
        return DeltaTable(location, storage_options=options).to_pandas(filters=filters or None)
    except TableNotFoundError:
        return pd.DataFrame(columns=CALIBRATOR_SCHEMA.names)


def latest_calibration(settings: Settings, model_version: str) -> Calibration | None:
    """The newest online calibration of ``model_version`` in gold/calibrators, None when there is none."""
    rows = _calibrators(settings, [("model_version", "=", model_version)])
    return None if rows.empty else _calibration(rows.sort_values("fitted_at").iloc[-1].to_dict())


def calibrations_before(settings: Settings, since: datetime) -> dict[str, Calibration]:
    """Per model version, the newest online calibration fitted before ``since``: what the traffic before a
    refresh's window taught, which that refresh starts from (its fit saw none of the window's clicks)."""
    rows = _calibrators(settings, [])
    rows = rows[pd.to_datetime(rows["fitted_at"], utc=True, format="ISO8601") < pd.Timestamp(since)]
    newest = rows.sort_values("fitted_at").groupby("model_version").tail(1)
    return {str(row["model_version"]): _calibration(row) for row in newest.to_dict("records")}


def _calibration(row: dict[str, object]) -> Calibration:
    newest = dict(row)
    newest.pop("calibration_id")
    fields = {name: (None if pd.isna(value) else value) for name, value in newest.items()}
    offsets = {name: float(fields.get(name) or 0.0) for name in ("offset_cpm", "offset_cpc", "offset_cpa")}
    counts = {"impressions": int(fields["impressions"]), "clicks": int(fields["clicks"])}
    by_category = json.loads(fields.get("category_offsets") or "{}")
    return Calibration(**{**fields, **counts, **offsets, "category_offsets": by_category})


def first_calibration_since(settings: Settings, since: datetime) -> datetime | None:
    """When the first online calibration fitted at or after ``since`` was fitted (any version)."""
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATORS)
    try:
        fitted = DeltaTable(location, storage_options=options).to_pandas(columns=["fitted_at"])["fitted_at"]
    except TableNotFoundError:
        return None
    times = pd.to_datetime(fitted, utc=True)
    times = times[times >= pd.Timestamp(since)]
    return None if times.empty else times.min().to_pydatetime()


def write_calibrators(settings: Settings, calibrations: list[Calibration]) -> None:
    if not calibrations:
        return
    rows = [
        {"calibration_id": c.calibration_id, **asdict(c), "category_offsets": json.dumps(dict(c.category_offsets))}
        for c in calibrations
    ]
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATORS)
    # Merged: a table from before the per-pricing or per-category offsets gains their columns (its rows read as 0).
    write_deltalake(location, pa.Table.from_pylist(rows, schema=CALIBRATOR_SCHEMA), mode="append",
                    schema_mode="merge", storage_options=options)  # fmt: skip
    table = DeltaTable(location, storage_options=options)
    if table.version() % COMPACT_EVERY == 0:
        table.optimize.compact()


def write_gold(settings: Settings, rows: pd.DataFrame, since_hour: datetime) -> None:
    """Replaces gold/calibration's rows from ``since_hour`` on with ``rows`` (the hours recomputed)."""
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATION)
    predicate = f"hour >= '{since_hour.strftime('%Y-%m-%d %H:%M:%S')}'"
    data = pa.Table.from_pandas(rows, preserve_index=False)
    try:
        DeltaTable(location, storage_options=options)
    except TableNotFoundError:
        write_deltalake(location, data, mode="overwrite", partition_by=["event_date"], storage_options=options)
        return
    write_deltalake(location, data, mode="overwrite", predicate=predicate, storage_options=options)


# --- the traffic curve pacing plans along ---

CURVE_DAYS = 7  # complete days of silver/auctions the curve is learned from
CURVE_SLOTS = 24
# A day teaches the curve only when it saw auctions in this share of its slots: a day the platform
# served part of (it started, stopped or was down mid-day) would teach it the shape of that outage.
CURVE_MIN_SLOT_SHARE = 0.75
CURVE_SCHEMA = pa.schema([("slot", pa.int32()), ("auctions", pa.int64()), ("days", pa.int32()),
                          ("day_length_s", pa.int64()), ("day_origin_s", pa.int64()),
                          ("learned_at", pa.string())])  # fmt: skip


def slot_counts(
    auction_times: pd.Series, *, now: datetime, clock: DayClock, slots: int = CURVE_SLOTS
) -> tuple[list[int], int]:
    """Auctions per slot of the pacing day over the complete days of ``clock`` before ``now``'s, at most
    CURVE_DAYS of them, each with auctions in CURVE_MIN_SLOT_SHARE of its slots; and how many days that is."""
    seconds = (pd.to_datetime(auction_times, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    since_phase = seconds - clock.phase_s
    today = clock.index(now)
    day = since_phase // clock.length_s
    complete = (day < today) & (day >= today - CURVE_DAYS)
    slot = (since_phase % clock.length_s) * slots // clock.length_s
    seen = pd.DataFrame({"day": day[complete], "slot": slot[complete]}).drop_duplicates().groupby("day").size()
    covered = seen[seen >= CURVE_MIN_SLOT_SHARE * slots].index
    learned = complete & day.isin(covered)
    counts = slot[learned].value_counts().reindex(range(slots), fill_value=0).sort_index()
    return [int(v) for v in counts], len(covered)


def write_traffic_curve(settings: Settings, now: datetime) -> int:
    """Rewrites gold/traffic_curve from silver/auctions; returns the days it was learned from."""
    clock = DayClock.of(settings)
    since = now - timedelta(seconds=clock.length_s * (CURVE_DAYS + 1))
    auctions = _read(settings, Table.SILVER_AUCTIONS, ["event_time", "event_date"], since)
    if auctions is None or auctions.empty:
        return 0
    counts, days = slot_counts(auctions["event_time"], now=now, clock=clock)
    if not days:
        return 0
    rows = [
        {"slot": slot, "auctions": count, "days": days, "day_length_s": clock.length_s,
         "day_origin_s": clock.origin_s, "learned_at": now.isoformat(timespec="seconds")}
        for slot, count in enumerate(counts)
    ]  # fmt: skip
    location, options = settings.delta_rs_location(Table.GOLD_TRAFFIC_CURVE)
    write_deltalake(location, pa.Table.from_pylist(rows, schema=CURVE_SCHEMA), mode="overwrite",
                    schema_mode="overwrite", storage_options=options)  # fmt: skip
    return days


# --- pacing, per campaign and minute, from the controllers' log in the shared store ---

PACING_SCHEMA = pa.schema(
    [
        ("campaign_id", pa.string()),
        ("minute", pa.timestamp("us", tz="UTC")),
        ("at", pa.timestamp("us", tz="UTC")),
        ("day_start", pa.timestamp("us", tz="UTC")),
        ("mode", pa.string()),
        ("daily_budget_micros", pa.int64()),
        ("plan_budget_micros", pa.int64()),
        ("plan_micros", pa.int64()),
        ("spent_today_micros", pa.int64()),
        ("pacing_multiplier", pa.float64()),
        ("throttle_rate", pa.float64()),
        ("exhausts_at", pa.timestamp("us", tz="UTC")),
        ("event_date", pa.date32()),
    ]
)
PACING_DRAIN = 50_000  # rows a refresh lands at most


def pacing_rows(raw: list[bytes]) -> pd.DataFrame:
    """The controllers' JSON rows as gold/pacing_minute's, the last of each (campaign, minute) kept."""
    frame = pd.DataFrame([json.loads(row) for row in raw])
    for column in ("minute", "at", "day_start", "exhausts_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    frame = frame.sort_values("at").drop_duplicates(["campaign_id", "minute"], keep="last")
    return frame.assign(event_date=frame["minute"].dt.date)[PACING_SCHEMA.names]


def land_pacing_minutes(settings: Settings, client: redis.Redis) -> int:
    """Moves the rows the pacing controllers logged (``pacing:minutes``) to gold/pacing_minute; returns how many.

    Written before they are trimmed, and as a rewrite of the minutes they cover: a refresh cut off
    between the two lands the same rows again over themselves, never twice.
    """
    key = f"{settings.shared_store_namespace}:pacing:minutes"
    raw = client.lrange(key, 0, PACING_DRAIN - 1)
    if not raw:
        return 0
    rows = pacing_rows(raw)
    first, last = rows["minute"].min(), rows["minute"].max()
    location, options = settings.delta_rs_location(Table.GOLD_PACING_MINUTE)
    data = pa.Table.from_pandas(rows, schema=PACING_SCHEMA, preserve_index=False)
    try:
        existing = DeltaTable(location, storage_options=options)
    except TableNotFoundError:
        write_deltalake(location, data, mode="overwrite", partition_by=["event_date"], storage_options=options)
    else:
        span = [("minute", ">=", first.to_pydatetime()), ("minute", "<=", last.to_pydatetime())]
        kept = existing.to_pandas(filters=span)
        if not kept.empty:  # rows of these minutes from an earlier drain (a batch can split a minute)
            rows = pd.concat([kept[PACING_SCHEMA.names], rows]).drop_duplicates(["campaign_id", "minute"], keep="last")
            data = pa.Table.from_pandas(rows, schema=PACING_SCHEMA, preserve_index=False)
        predicate = f"minute >= '{first:%Y-%m-%d %H:%M:%S}' AND minute <= '{last:%Y-%m-%d %H:%M:%S}'"
        write_deltalake(location, data, mode="overwrite", predicate=predicate, storage_options=options)
    client.ltrim(key, len(raw), -1)
    return len(raw)


class Priors:
    """Each model version's registered calibration, read from MLflow once."""

    def __init__(self, settings: Settings) -> None:
        self._tracking_uri = settings.mlflow_tracking_uri
        self._known: dict[str, Calibration] = {}

    def of(self, versions: list[str]) -> dict[str, Calibration]:
        for version in versions:
            if version not in self._known:
                try:
                    self._known[version] = registered_calibration(self._tracking_uri, version)
                except Exception as exc:  # MLflow down or the version gone: that version waits for the next refresh
                    log.warning("calibration prior of version %s unavailable: %s: %s", version, type(exc).__name__, exc)
        return {version: self._known[version] for version in versions if version in self._known}


def refresh_once(settings: Settings, priors: Priors, now: datetime) -> Refresh:
    since = (now - timedelta(seconds=settings.calibration_window_s)).replace(minute=0, second=0, microsecond=0)
    write_traffic_curve(settings, now)
    events, category_of = read_window(settings, since)
    impressions = attributed_impressions(events)
    if impressions.empty:
        return Refresh(0, 0, [], 0, [])
    versions = sorted(impressions["model_version"].dropna().astype(str).unique())
    # A version served before this window starts from its last map then, not from its registration: a
    # pricing model or category with few clicks in the window keeps what the earlier traffic taught.
    earlier = calibrations_before(settings, since)
    fitted = fit_versions(
        impressions,
        {**priors.of(versions), **{v: earlier[v] for v in versions if v in earlier}},
        now=now,
        half_life_s=settings.calibration_half_life_s,
        min_clicks=settings.calibration_min_clicks,
        category_of=category_of,
    )
    write_calibrators(settings, fitted)
    gold = calibration_by_hour(impressions, category_of)
    write_gold(settings, gold, since)
    alerts = [
        f"model {row.model_version} {row.hour:%Y-%m-%d %H:00} {row.pricing_model} {row.category}: observed / expected "
        f"clicks {row.observed_over_expected:.3f} over {row.impressions} impressions"
        for row in gold[gold["alert"].fillna(False)].itertuples()
    ]
    return Refresh(len(impressions), int(impressions["clicked"].sum()), fitted, len(gold), alerts)


def heartbeat_file(settings: Settings) -> Path:
    return settings.local_dir.resolve() / "run" / "calibrator.heartbeat"


def is_alive(settings: Settings) -> bool:
    """Whether a running job refreshed recently (its heartbeat file is younger than two refreshes and a minute)."""
    try:
        age = time.time() - heartbeat_file(settings).stat().st_mtime
    except FileNotFoundError:
        return False
    return age < 2 * settings.calibration_refresh_s + 60


def _beat(settings: Settings) -> None:
    path = heartbeat_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def run(settings: Settings, *, once: bool = False) -> int:
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    priors = Priors(settings)
    shared = redis.Redis.from_url(settings.shared_store_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    while True:
        try:
            landed = land_pacing_minutes(settings, shared)
        except Exception:  # the shared store or the lake down: the rows wait in the store for the next refresh
            log.exception("pacing rows not landed")
        else:
            if landed:
                log.info("landed %d pacing rows in gold/pacing_minute", landed)
        try:
            done = refresh_once(settings, priors, datetime.now(UTC))
        except Exception:  # a lake or MLflow hiccup must not end the loop; the next refresh tries again
            log.exception("calibration refresh failed")
        else:
            fits = ", ".join(
                f"v{c.model_version} slope {c.slope:.3f} intercept {c.intercept:.3f} offsets CPM {c.offset_cpm:+.3f} "
                f"CPC {c.offset_cpc:+.3f} CPA {c.offset_cpa:+.3f}, {len(c.category_offsets)} category offsets"
                for c in done.fitted
            )
            log.info("calibration refresh: %d impressions, %d clicks; %s; %d gold rows", done.impressions,
                     done.clicks, fits or "nothing refitted", done.hours)  # fmt: skip
            for alert in done.alerts:
                log.warning("calibration alert: %s", alert)
        _beat(settings)  # a failed refresh beats too: the loop is alive, and the log says what failed
        if once or stop.wait(settings.calibration_refresh_s):
            return 0
