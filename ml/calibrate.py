"""The online calibration job: refit each served model's Platt map on logged traffic, and keep gold/calibration.

    adstream calibrate [--once]
    adstream calibrate --check     # exit 0 if a running job refreshed recently

Every CALIBRATION_REFRESH_S it reads the last CALIBRATION_WINDOW_S of silver/feedback_events (from the
start of that window's first hour), attributes clicks to impressions by auction, and
- appends to gold/calibrators the Platt map of every model version whose impressions (with their
  raw score) hold CALIBRATION_MIN_CLICKS clicks, centred on the version's registered calibration
  (ml.calibration); the auction service picks the newest map of the version it serves up within
  CALIBRATION_POLL_S;
- rewrites gold/calibration for the window's hours: per model version x hour x pricing model x ad
  category, impressions, expected clicks (Σ served pCTR), clicks and observed / expected, with
  ``alert`` set outside 0.8-1.25 (also logged as a warning). A recomputation of whole hours, so a
  refresh done twice, or a click landing late, corrects the row rather than counting twice.

The ad category comes from silver/auctions (the winner's category), "unknown" where the auction
log lost the record. Reads and writes go through delta-rs: no Spark for a table of this size.
"""

from __future__ import annotations

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
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from adstream.contracts import Table
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


def latest_calibration(settings: Settings, model_version: str) -> Calibration | None:
    """The newest online calibration of ``model_version`` in gold/calibrators, None when there is none."""
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATORS)
    try:
        rows = DeltaTable(location, storage_options=options).to_pandas(filters=[("model_version", "=", model_version)])
    except TableNotFoundError:
        return None
    if rows.empty:
        return None
    newest = rows.sort_values("fitted_at").iloc[-1].to_dict()
    newest.pop("calibration_id")
    fields = {name: (None if pd.isna(value) else value) for name, value in newest.items()}
    return Calibration(**{**fields, "impressions": int(fields["impressions"]), "clicks": int(fields["clicks"])})


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
    rows = [{"calibration_id": c.calibration_id, **asdict(c)} for c in calibrations]
    location, options = settings.delta_rs_location(Table.GOLD_CALIBRATORS)
    write_deltalake(location, pa.Table.from_pylist(rows, schema=CALIBRATOR_SCHEMA), mode="append",
                    storage_options=options)  # fmt: skip
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
    events, category_of = read_window(settings, since)
    impressions = attributed_impressions(events)
    if impressions.empty:
        return Refresh(0, 0, [], 0, [])
    versions = sorted(impressions["model_version"].dropna().astype(str).unique())
    fitted = fit_versions(
        impressions,
        priors.of(versions),
        now=now,
        half_life_s=settings.calibration_half_life_s,
        min_clicks=settings.calibration_min_clicks,
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
    while True:
        try:
            done = refresh_once(settings, priors, datetime.now(UTC))
        except Exception:  # a lake or MLflow hiccup must not end the loop; the next refresh tries again
            log.exception("calibration refresh failed")
        else:
            fits = ", ".join(f"v{c.model_version} slope {c.slope:.3f} intercept {c.intercept:.3f}" for c in done.fitted)
            log.info("calibration refresh: %d impressions, %d clicks; %s; %d gold rows", done.impressions,
                     done.clicks, fits or "nothing refitted", done.hours)  # fmt: skip
            for alert in done.alerts:
                log.warning("calibration alert: %s", alert)
        _beat(settings)  # a failed refresh beats too: the loop is alive, and the log says what failed
        if once or stop.wait(settings.calibration_refresh_s):
            return 0
