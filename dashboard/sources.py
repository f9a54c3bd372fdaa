"""What the dashboard reads, and the snapshot it builds from it every DASHBOARD_REFRESH_S.

- Live state: the auction service's ``GET /v1/stats`` (JSON; never /metrics) of every replica, each on its own
  AUCTION_METRICS_PORT + i and added up into the fleet's (``fleet_stats``), the campaign store (status,
  spend, budgets: one query for every campaign) and the shared store (pacing states, the optimizer's
  multipliers: one HMGET and one HGETALL), the same stores ``GET /v1/campaigns/{id}`` reads.
- The lake through delta-rs (no Spark): gold/kpi_minute, gold/billing_hourly, gold/optimizer_decisions,
  gold/calibration and silver/auctions. A table is re-read only when its Delta version moved, so a
  refresh costs a log check per table while the stream is quiet.

A source that fails leaves its section's last numbers and names itself in ``errors``: the page says
what is stale and why instead of going blank.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from adstream.contracts import Table
from adstream.days import DayClock
from adstream.decisions import Served, serve_key, unpack_all
from adstream.events import CampaignStatus, PacingMode
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory
from auction_service.campaign_store.tables import Campaign
from auction_service.serving.books import latency_percentiles
from auction_service.serving.pacer import Pacer
from auction_service.serving.pacing import PacingController, PacingState, TrafficCurve
from dashboard import views
from ml.traffic_curve import traffic_counts
from spark_jobs.billing.reports import hour_status

log = logging.getLogger(__name__)

RECENT_AUCTIONS = timedelta(minutes=5)  # silver/auctions' newest minutes behind the latency percentiles
BILLED_HOURS = timedelta(hours=24)
CURVE_RELOAD_S = 60.0  # the traffic curve the plan follows changes once a day at most


class LakeTable:
    """One Delta table read with delta-rs, kept as a frame until its version moves."""

    def __init__(self, settings: Settings, table: str, load: Callable[[DeltaTable], pd.DataFrame]) -> None:
        self.location, self.options = settings.delta_rs_location(table)
        self.name = table
        self._load = load
        self._table: DeltaTable | None = None
        self._version: int | None = None
        self.frame = pd.DataFrame()

    def read(self) -> pd.DataFrame:
        """The table's frame; empty before the table exists."""
        if self._table is None:
            try:
                self._table = DeltaTable(self.location, storage_options=self.options or None)
            except TableNotFoundError:
                return self.frame
        else:
            self._table.update_incremental()
        version = self._table.version()
        if version != self._version:
            self.frame = self._load(self._table)
            self._version = version
        return self.frame


def _since(column: str, moment: datetime) -> pc.Expression:
    return pc.field(column) >= pa.scalar(moment, pa.timestamp("us", tz="UTC"))


def _from_date(column: str, day: date) -> pc.Expression:
    return pc.field(column) >= pa.scalar(day, pa.date32())


KPI_COLUMNS = ["campaign_id", "minute", "channel", "device_type", "content_type", "impressions", "clicks",
               "conversions", "video_starts", "video_completes", "spend_micros", "ad_relevance_score",
               "ivt_impressions", "ivt_clicks"]  # fmt: skip


def load_kpis(table: DeltaTable) -> pd.DataFrame:
    """gold/kpi_minute since the day before its newest row's (the charts' hour and the budget day)."""
    dataset = table.to_pyarrow_dataset()
    newest = pc.max(dataset.to_table(columns=["event_date"]).column("event_date")).as_py()
    if newest is None:
        return pd.DataFrame(columns=KPI_COLUMNS)
    rows = dataset.to_table(columns=KPI_COLUMNS, filter=_from_date("event_date", newest - timedelta(days=1)))
    return rows.to_pandas()


def load_recent_auctions(table: DeltaTable) -> pd.DataFrame:
    """silver/auctions' newest RECENT_AUCTIONS (by event time)."""
    columns = ["event_time", "filled", "candidate_count", "latency_ms", "bid_filter_score", "bid_filter_explored"]
    dataset = table.to_pyarrow_dataset()
    newest_day = pc.max(dataset.to_table(columns=["event_date"]).column("event_date")).as_py()
    if newest_day is None:
        return pd.DataFrame(columns=columns)
    rows = dataset.to_table(columns=columns, filter=_from_date("event_date", newest_day - timedelta(days=1)))
    newest = pc.max(rows.column("event_time")).as_py()
    return rows.filter(_since("event_time", newest - RECENT_AUCTIONS)).to_pandas()


def load_bills(table: DeltaTable) -> pd.DataFrame:
    """gold/billing_hourly's newest BILLED_HOURS."""
    columns = ["hour", "campaign_id", "status", "spend_micros", "gross_spend_micros", "ivt_credit_micros"]
    dataset = table.to_pyarrow_dataset()
    newest = pc.max(dataset.to_table(columns=["hour"]).column("hour")).as_py()
    if newest is None:
        return pd.DataFrame(columns=columns)
    return dataset.to_table(columns=columns, filter=_since("hour", newest - BILLED_HOURS)).to_pandas()


def load_decisions(table: DeltaTable) -> pd.DataFrame:
    """gold/optimizer_decisions: each campaign's latest decision (highest version), one row per platform."""
    dataset = table.to_pyarrow_dataset()
    newest_day = pc.max(dataset.to_table(columns=["decided_date"]).column("decided_date")).as_py()
    if newest_day is None:
        return pd.DataFrame(columns=["campaign_id", "decided_at", "platform", "reason"])
    rows = dataset.to_table(
        columns=["campaign_id", "version", "decided_at", "platforms"],
        filter=_from_date("decided_date", newest_day - timedelta(days=1)),
    ).to_pandas()
    latest = rows.sort_values("version").drop_duplicates("campaign_id", keep="last")
    exploded = latest.explode("platforms").dropna(subset=["platforms"])
    return pd.DataFrame({
        "campaign_id": exploded["campaign_id"].to_numpy(),
        "decided_at": exploded["decided_at"].to_numpy(),
        "platform": [p["platform"] for p in exploded["platforms"]],
        "reason": [p["reason"] for p in exploded["platforms"]],
    })  # fmt: skip


def load_calibration(table: DeltaTable) -> pd.DataFrame:
    """gold/calibration's newest hour."""
    columns = ["model_version", "hour", "impressions", "expected_clicks", "clicks", "alert"]
    dataset = table.to_pyarrow_dataset()
    newest = pc.max(dataset.to_table(columns=["hour"]).column("hour")).as_py()
    if newest is None:
        return pd.DataFrame(columns=columns)
    return dataset.to_table(columns=columns, filter=_since("hour", newest)).to_pandas()


def replica_stats_urls(settings: Settings, auction_url: str) -> list[str]:
    """Where the fleet's /v1/stats are read: each replica's own port (AUCTION_METRICS_PORT + i on the service's
    host), or, with none, AUCTION_PORT, which reaches one replica at random."""
    if not settings.auction_metrics_port:
        return [f"{auction_url.rstrip('/')}/v1/stats"]
    host = urlsplit(auction_url).hostname or settings.bind_host
    host = f"[{host}]" if ":" in host else host
    ports = range(settings.auction_metrics_port, settings.auction_metrics_port + settings.auction_replicas)
    return [f"http://{host}:{port}/v1/stats" for port in ports]


SUMMED = ("auctions", "filled", "no_fill", "candidates_scored")
COUNTED = ("events", "rejected_events_by_reason", "openrtb_no_bids")
BID_FILTER_SUMMED = ("screened", "shed", "explored", "time_saved_s", "explored_revenue_cpm_micros",
                     "explored_revenue_below_threshold_cpm_micros")  # fmt: skip


def fleet_stats(replicas: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The /v1/stats of the replicas that answered (by URL) as the fleet's: counts summed, ratios taken of the
    sums, latency percentiles of the replicas' windows pooled (not averaged: a slow replica's tail must show).
    What every replica serves alike (model, calibration, optimizer reads) is the first one's."""
    answers = list(replicas.values())
    fleet = {key: value for key, value in answers[0].items() if key not in ("latency_window_ms", "replica")}
    for key in SUMMED:
        fleet[key] = sum(int(answer.get(key) or 0) for answer in answers)
    for key in COUNTED:
        fleet[key] = dict(sum((Counter(answer.get(key) or {}) for answer in answers), Counter()))
    fleet["fill_rate"] = fleet["filled"] / fleet["auctions"] if fleet["auctions"] else 0.0
    pctr_sum = sum((answer.get("average_pctr") or 0.0) * int(answer.get("filled") or 0) for answer in answers)
    fleet["average_pctr"] = pctr_sum / fleet["filled"] if fleet["filled"] else None
    fleet["latency_ms"] = fleet_latency(answers)
    meters = [answer["bid_filter"] for answer in answers if answer.get("bid_filter")]
    if meters:
        fleet["bid_filter"] = fleet_bid_filter(meters)
    fleet["replicas"] = [
        {"url": url, "pid": (answer.get("replica") or {}).get("pid"), "auctions": answer.get("auctions"),
         "latency_ms": answer.get("latency_ms")}
        for url, answer in replicas.items()
    ]  # fmt: skip
    return fleet


def fleet_latency(answers: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Latency percentiles of the replicas' windows pooled. The public AUCTION_PORT serves no window (only the
    replicas' own ports do): one answer from there is its own percentiles, several the worst of each, so a slow
    replica's tail still shows."""
    if all("latency_window_ms" in answer for answer in answers):
        return latency_percentiles(sorted(ms for answer in answers for ms in answer["latency_window_ms"] or ()))
    own = [answer["latency_ms"] for answer in answers if answer.get("latency_ms")]
    if not own:
        return None
    worst: dict[str, Any] = {key: max(latency[key] for latency in own) for key in ("p50", "p95", "p99")}
    return {**worst, "auctions": sum(int(latency.get("auctions") or 0) for latency in own)}


def fleet_bid_filter(meters: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``BidFilterMeter.snapshot`` of each replica as one: counts summed, shares of the sums; the version and
    threshold when every replica serves the same (None while a new filter reaches them one by one)."""
    total = {key: sum(meter.get(key) or 0 for meter in meters) for key in BID_FILTER_SUMMED}
    versions = {meter.get("version") for meter in meters}
    thresholds = {meter.get("threshold") for meter in meters}
    explored = total["explored_revenue_cpm_micros"]
    return {
        "version": versions.pop() if len(versions) == 1 else None,
        "threshold": thresholds.pop() if len(thresholds) == 1 else None,
        **total,
        "shed_share": total["shed"] / total["screened"] if total["screened"] else None,
        "revenue_retained_estimate": 1 - total["explored_revenue_below_threshold_cpm_micros"] / explored
        if explored else None,
    }  # fmt: skip


def auctions_per_s(previous: Mapping[str, Any] | None, current: Mapping[str, Any], elapsed_s: float) -> float | None:
    """The fleet's auctions/s between two ``fleet_stats``: each replica's increase, counting the whole count of one
    restarted meanwhile (a new pid: its counts began again at 0), as Prometheus' ``rate()`` takes a reset."""
    if previous is None or elapsed_s <= 0:
        return None
    before = {r["url"]: r for r in previous.get("replicas", [])}
    increase = 0
    for replica in current.get("replicas", []):
        last = before.get(replica["url"])
        if last is None:
            continue  # not read the last time: no interval to count over
        count, last_count = int(replica.get("auctions") or 0), int(last.get("auctions") or 0)
        restarted = last.get("pid") != replica.get("pid") or count < last_count
        increase += count if restarted else count - last_count
    return increase / elapsed_s


@dataclass
class Snapshot:
    """The page's sections as of ``at``, and how long building them took."""

    body: dict[str, Any]
    built_at: float  # time.monotonic()


class SnapshotBuilder:
    """Builds the page's sections from every source; one build serves every open page for a refresh
    interval (``latest``), so N viewers cost one build, not N."""

    def __init__(self, settings: Settings, auction_url: str | None = None) -> None:
        self.settings = settings
        local = f"http://{settings.bind_host}:{settings.auction_port}"
        self.auction_url = auction_url or settings.dashboard_auction_url or local
        self.stats_urls = replica_stats_urls(settings, self.auction_url)
        self.http = httpx.Client(timeout=2.0)
        self.sessions = make_session_factory(make_engine(settings))
        self.clock = DayClock.of(settings)
        self.controller = PacingController.of(self.clock)
        self.shared: redis.Redis | None = None
        self.pacer: Pacer | None = None
        if settings.shared_store_url:
            url = settings.shared_store_url
            self.shared = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self.pacer = Pacer(self.shared, settings.shared_store_namespace, self.controller, update_s=1.0)
        self.curve = TrafficCurve.flat()
        self._curve_read_at = -1e18
        self.tables = {
            "kpis": LakeTable(settings, Table.GOLD_KPI_MINUTE, load_kpis),
            "auctions": LakeTable(settings, Table.SILVER_AUCTIONS, load_recent_auctions),
            "bills": LakeTable(settings, Table.GOLD_BILLING_HOURLY, load_bills),
            "decisions": LakeTable(settings, Table.GOLD_OPTIMIZER_DECISIONS, load_decisions),
            "calibration": LakeTable(settings, Table.GOLD_CALIBRATION, load_calibration),
        }
        self._lock = threading.Lock()
        self._last: Snapshot | None = None
        self._last_stats: tuple[float, dict[str, Any]] | None = None  # (monotonic, fleet_stats) of the last read
        self._last_sections: dict[str, Any] = {}

    def close(self) -> None:
        self.http.close()
        if self.shared is not None:
            self.shared.close()

    def latest(self, max_age_s: float) -> Snapshot:
        """The last snapshot if younger than ``max_age_s``, else a new one (built once for every caller)."""
        with self._lock:
            if self._last is None or time.monotonic() - self._last.built_at >= max_age_s:
                self._last = self.build()
            return self._last

    def build(self, now: datetime | None = None) -> Snapshot:
        began = time.perf_counter()
        now = now or datetime.now(UTC)
        errors: dict[str, str] = {}

        def attempt(name: str, read: Callable[[], Any], fallback: Any) -> Any:
            try:
                return read()
            except (httpx.HTTPError, ValueError, RedisError, SQLAlchemyError, DeltaError, OSError) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("dashboard source %s failed: %s", name, errors[name])
                return fallback

        stats = attempt("auction service /v1/stats", self._stats, None)
        for url, reason in (stats or {}).pop("unread", {}).items():
            errors[f"auction replica {url}"] = reason  # the fleet's numbers lack its share meanwhile
        if len(self.stats_urls) < self.settings.auction_replicas:
            errors["auction replicas"] = (
                f"AUCTION_METRICS_PORT is 0: /v1/stats of one of {self.settings.auction_replicas} replicas, at random"
            )
        frames = {name: attempt(table.name, table.read, table.frame) for name, table in self.tables.items()}
        kpis = frames["kpis"]
        lines = attempt("campaign and shared stores", lambda: self._campaign_lines(now), None)
        decided = attempt("shared store (optimizer)", self._decided, {})
        sections = dict(self._last_sections)
        if lines is not None:
            today = kpis[kpis["minute"] >= pd.Timestamp(self.clock.start(now))] if not kpis.empty else kpis
            reasons, decided_at = _reasons(frames["decisions"])
            sections["campaigns"] = views.campaigns_section(
                lines, views.platform_kpis(today), decided, reasons, decided_at
            )
        sections["kpis"] = views.kpi_section(kpis)
        sections["serving"] = views.serving_section(stats, self._rate(stats), frames["auctions"])
        sections["quality"] = views.quality_section(stats, kpis, frames["calibration"])
        bills = frames["bills"]
        statuses = [(hour, hour_status(rows)) for hour, rows in bills.groupby("hour")] if not bills.empty else []
        sections["finance"] = views.finance_section(bills, statuses) if not bills.empty else {"hours": []}
        self._last_sections = sections
        body = {
            "at": now.isoformat(),
            "auction_url": self.auction_url,
            **sections,
            "errors": errors,
            "build_ms": (time.perf_counter() - began) * 1000,
        }
        return Snapshot(body, time.monotonic())

    def _stats(self) -> dict[str, Any]:
        """``fleet_stats`` of the replicas that answer, the others' errors in ``unread``; raises if none does."""
        answers: dict[str, dict[str, Any]] = {}
        unread: dict[str, str] = {}
        failure: Exception | None = None
        for url in self.stats_urls:
            try:
                response = self.http.get(url)
                response.raise_for_status()
                answers[url] = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                unread[url], failure = f"{type(exc).__name__}: {exc}"[:300], exc
        if not answers:
            raise failure or ValueError("no auction replica to read")
        return {**fleet_stats(answers), "unread": unread}

    def _rate(self, stats: dict[str, Any] | None) -> float | None:
        """The fleet's auctions per second between this read of /v1/stats and the one before; None while only
        AUCTION_PORT is read with several replicas behind it (a new pid there is another replica, not a restart)."""
        if stats is None or len(self.stats_urls) < self.settings.auction_replicas:
            return None
        now = time.monotonic()
        previous, self._last_stats = self._last_stats, (now, stats)
        if previous is None:
            return None
        return auctions_per_s(previous[1], stats, now - previous[0])

    def _decided(self) -> dict[str, Served]:
        if self.shared is None:
            return {}
        return unpack_all(self.shared.hgetall(serve_key(self.settings.shared_store_namespace)))

    def _campaign_lines(self, now: datetime) -> list[views.CampaignLine]:
        """Every campaign with its spend; pacing (λ, throttle, plan) for those serving, as
        ``GET /v1/campaigns/{id}`` reports it. Plain columns in one query, not the serving snapshot
        (``store.serving_campaigns``), whose targeting, creative and deals cost 5x as much to read."""
        self._reload_curve(now)
        columns = (Campaign.campaign_id, Campaign.status, Campaign.pricing_model, Campaign.pacing_mode,
                   Campaign.total_budget_micros, Campaign.daily_budget_micros, Campaign.spent_micros,
                   Campaign.flight_end, Campaign.goals)  # fmt: skip
        with self.sessions() as session:
            rows = session.execute(select(*columns)).all()
            _, today = store.spend_totals(session, self.clock.budget_day(now))
        # Serving as the auction service loads them (store.serving_campaigns): active, flight not ended.
        serving = [r.campaign_id for r in rows if r.status == CampaignStatus.ACTIVE and r.flight_end > now]
        states = self.pacer.states(serving) if self.pacer is not None and serving else {}
        serving_ids = set(serving)
        lines = []
        for row in rows:
            spent_today = int(today.get(row.campaign_id, 0))
            goals = row.goals or {}
            value = goals.get("conversion_value_micros") or goals.get("target_cpa_micros")
            pacing: dict[str, Any] = {}
            if row.campaign_id in serving_ids:
                # auction_service.serving.pacer.plan_budget: the daily budget, or the total left when that is less.
                budget = max(0, min(row.daily_budget_micros, row.total_budget_micros - row.spent_micros + spent_today))
                state = states.get(row.campaign_id, PacingState())
                report = self.controller.snapshot(
                    replace(state, mode=PacingMode(row.pacing_mode)), now=now, spent_today_micros=spent_today,
                    daily_budget_micros=budget, curve=self.curve,
                )  # fmt: skip
                pacing = {"plan_micros": report.plan_micros, "pacing_multiplier": report.pacing_multiplier,
                          "throttle_rate": report.throttle_rate}  # fmt: skip
            lines.append(views.CampaignLine(
                campaign_id=row.campaign_id, status=row.status, pricing_model=row.pricing_model,
                pacing_mode=row.pacing_mode, spent_micros=row.spent_micros, total_budget_micros=row.total_budget_micros,
                spent_today_micros=spent_today, daily_budget_micros=row.daily_budget_micros,
                conversion_value_micros=value, **pacing,
            ))  # fmt: skip
        return lines

    def _reload_curve(self, now: datetime) -> None:
        """The traffic curve the service's pacing plans along (gold/traffic_curve), re-read once a minute."""
        if time.monotonic() - self._curve_read_at < CURVE_RELOAD_S:
            return
        self._curve_read_at = time.monotonic()
        try:
            counts = traffic_counts(self.settings, self.clock)
        except (DeltaError, OSError, ValueError) as exc:
            log.warning("traffic curve not read (%s); the last one plans", exc)
            return
        self.curve = TrafficCurve.learn(counts) if counts else TrafficCurve.flat()


def _reasons(decisions: pd.DataFrame) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    reasons: dict[str, dict[str, str]] = {}
    decided_at: dict[str, str] = {}
    for row in decisions.itertuples(index=False):
        reasons.setdefault(row.campaign_id, {})[row.platform] = row.reason
        decided_at[row.campaign_id] = pd.Timestamp(row.decided_at).isoformat()
    return reasons, decided_at
