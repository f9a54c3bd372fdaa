"""The dashboard's sections, from what ``dashboard.sources`` read: no I/O, no session and no clock here.

Every section is a JSON-ready dict. Money stays integer micros (the page divides for display only);
ratios are None where their denominator is zero, as in gold/kpi_minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from adstream.decisions import MULTIPLIER_SCALE, Served
from adstream.events import MICROS_PER_UNIT, PLATFORMS

KPI_DIMENSIONS = ("channel", "device_type", "content_type")
KPI_NAMES = ("ctr", "ad_completion_rate", "rpai", "ad_relevance_score")
KPI_MINUTES = 60  # the charts' window, ending at the newest minute the table holds
CAMPAIGNS_SHOWN = 100  # rows of the campaign table: the day's biggest spenders (every campaign is counted)


@dataclass(frozen=True, slots=True)
class CampaignLine:
    """One campaign as the stores hold it now; pacing fields are None unless it is serving."""

    campaign_id: str
    status: str
    pricing_model: str
    pacing_mode: str
    spent_micros: int
    total_budget_micros: int
    spent_today_micros: int
    daily_budget_micros: int
    plan_micros: int | None = None
    pacing_multiplier: float | None = None  # λ
    throttle_rate: float | None = None
    conversion_value_micros: int | None = None  # what a conversion is worth to it (ROI); None: not stated


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def platform_kpis(kpis: pd.DataFrame) -> pd.DataFrame:
    """gold/kpi_minute rows summed per campaign and platform (``channel/device_type``), with eCPM (micros per
    thousand impressions, integer), CTR and CVR (conversions per click)."""
    columns = ["campaign_id", "platform", "impressions", "clicks", "conversions", "spend_micros"]
    if kpis.empty:
        return pd.DataFrame(columns=columns)
    frame = kpis.assign(platform=kpis["channel"].astype(str) + "/" + kpis["device_type"].astype(str))
    sums = frame.groupby(["campaign_id", "platform"], as_index=False)[columns[2:]].sum()
    return sums


def campaigns_section(
    lines: Sequence[CampaignLine],
    by_platform: pd.DataFrame,
    decided: Mapping[str, Served],
    reasons: Mapping[str, Mapping[str, str]],
    decided_at: Mapping[str, str],
    shown: int = CAMPAIGNS_SHOWN,
) -> dict[str, Any]:
    """Counts per status, and the ``shown`` campaigns that spent most today: budget, plan, pacing, and per
    platform eCPM, CTR, CVR, ROI, the optimizer's multiplier (live) and the reason of its latest decision."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.status] = counts.get(line.status, 0) + 1
    top = sorted(lines, key=lambda line: (-line.spent_today_micros, line.campaign_id))[:shown]
    wanted = {line.campaign_id for line in top}
    platforms: dict[str, dict[str, dict[str, Any]]] = {}
    for row in by_platform[by_platform["campaign_id"].isin(wanted)].itertuples(index=False):
        platforms.setdefault(row.campaign_id, {})[row.platform] = {
            "impressions": int(row.impressions), "clicks": int(row.clicks), "conversions": int(row.conversions),
            "spend_micros": int(row.spend_micros),
        }  # fmt: skip
    rows = []
    for line in top:
        served = decided.get(line.campaign_id)
        seen = platforms.get(line.campaign_id, {})
        per_platform = []
        for index, platform in enumerate(PLATFORMS):
            figures = seen.get(platform)
            multiplier = served.multipliers_ppm[index] / MULTIPLIER_SCALE if served else None
            reason = reasons.get(line.campaign_id, {}).get(platform)
            if figures is None and multiplier is None:
                continue
            figures = figures or {"impressions": 0, "clicks": 0, "conversions": 0, "spend_micros": 0}
            spend = figures["spend_micros"]
            value = line.conversion_value_micros
            per_platform.append({
                "platform": platform, **figures,
                "ecpm_micros": spend * 1000 // figures["impressions"] if figures["impressions"] else None,
                "ctr": ratio(figures["clicks"], figures["impressions"]),
                "cvr": ratio(figures["conversions"], figures["clicks"]),
                "roi": ratio(figures["conversions"] * value - spend, spend) if value else None,
                "multiplier": multiplier, "reason": reason,
            })  # fmt: skip
        rows.append({**asdict(line), "platforms": per_platform, "decided_at": decided_at.get(line.campaign_id)})
    return {"total": len(lines), "by_status": dict(sorted(counts.items())), "shown": len(rows), "rows": rows}


def kpi_section(kpis: pd.DataFrame, minutes: int = KPI_MINUTES) -> dict[str, Any]:
    """Per dimension (channel, device type, content type) and value, the per-minute CTR, ad completion rate,
    RPAI (USD) and relevance over the ``minutes`` ending at the newest minute in ``kpis`` (gold/kpi_minute):
    sums over campaigns first, then the ratios; relevance weighted by impressions."""
    if kpis.empty:
        return {"minutes": [], "latest_minute": None, "series": {}, "latest": {}}
    newest = kpis["minute"].max()
    window = kpis[kpis["minute"] > newest - pd.Timedelta(minutes=minutes)]
    relevance = pd.to_numeric(window["ad_relevance_score"], errors="coerce")
    window = window.assign(
        relevance_weight=relevance.fillna(0.0) * window["impressions"],
        relevance_impressions=window["impressions"].where(relevance.notna(), 0),
    )
    stamps = sorted(window["minute"].unique())
    epoch = [int(pd.Timestamp(stamp).timestamp()) for stamp in stamps]
    sums = ["impressions", "clicks", "video_starts", "video_completes", "spend_micros", "relevance_weight",
            "relevance_impressions"]  # fmt: skip
    series: dict[str, dict[str, dict[str, list]]] = {}
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    for dimension in KPI_DIMENSIONS:
        grouped = window.groupby([dimension, "minute"])[sums].sum()
        series[dimension], latest[dimension] = {}, {}
        for value in sorted(grouped.index.get_level_values(0).unique()):
            part = grouped.loc[value].reindex(stamps)
            kpi = _kpis(part)
            series[dimension][str(value)] = {name: [_finite(v) for v in kpi[name]] for name in KPI_NAMES}
            if newest in part.index and not math.isnan(part.loc[newest, "impressions"]):
                row = kpi.loc[newest]
                latest[dimension][str(value)] = {
                    "impressions": int(part.loc[newest, "impressions"]),
                    **{name: _finite(row[name]) for name in KPI_NAMES},
                }
    return {
        "minutes": epoch,
        "latest_minute": pd.Timestamp(newest).isoformat(),
        "series": series,
        "latest": latest,
    }


def _kpis(part: pd.DataFrame) -> pd.DataFrame:
    def divide(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
        return numerator / denominator.where(denominator > 0)

    return pd.DataFrame({
        "ctr": divide(part["clicks"], part["impressions"]),
        "ad_completion_rate": divide(part["video_completes"], part["video_starts"]),
        "rpai": divide(part["spend_micros"] / MICROS_PER_UNIT, part["impressions"]),
        "ad_relevance_score": divide(part["relevance_weight"], part["relevance_impressions"]),
    }, index=part.index)  # fmt: skip


def serving_section(
    stats: Mapping[str, Any] | None, auctions_per_s: float | None, recent_auctions: pd.DataFrame
) -> dict[str, Any]:
    """Live counters of /v1/stats (fill rate, auctions, refusals) and the rate between two reads; latency
    percentiles, why auctions went unfilled and the bid filter's share over the newest minutes of
    silver/auctions (columns latency_ms, filled, candidate_count, bid_filter_score, bid_filter_explored)."""
    section: dict[str, Any] = {"auctions_per_s": auctions_per_s}
    if stats is not None:
        section |= {key: stats.get(key) for key in ("auctions", "filled", "no_fill", "fill_rate", "candidates_scored")}
        section["events"] = dict(stats.get("events") or {})
        section["rejected_events_by_reason"] = dict(stats.get("rejected_events_by_reason") or {})
        section["latency_live"] = stats.get("latency_ms")  # the fleet's newest auctions, pooled
        section["openrtb_no_bids"] = dict(stats.get("openrtb_no_bids") or {})
        if stats.get("bid_filter") is not None:  # BidFilterMeter.snapshot, where the service publishes it
            section["bid_filter_live"] = stats["bid_filter"]
    section["recent"] = recent_auctions_view(recent_auctions)
    return section


def recent_auctions_view(auctions: pd.DataFrame) -> dict[str, Any] | None:
    if auctions.empty:
        return None
    latency = auctions["latency_ms"].to_numpy(dtype=float)
    p50, p95, p99 = (float(v) for v in np.percentile(latency, [50, 95, 99]))
    unfilled = auctions[~auctions["filled"].astype(bool)]
    no_candidate = int((unfilled["candidate_count"] == 0).sum())
    screened = auctions["bid_filter_score"].notna()
    explored = int(auctions["bid_filter_explored"].eq(True).sum())
    return {
        "auctions": len(auctions),
        "from": pd.Timestamp(auctions["event_time"].min()).isoformat(),
        "to": pd.Timestamp(auctions["event_time"].max()).isoformat(),
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "no_fill_reasons": {
            "no campaign matched": no_candidate,
            "no candidate cleared the floor or pacing": len(unfilled) - no_candidate,
        },
        "bid_filter_share": float(screened.mean()),
        "bid_filter_explored_share": ratio(explored, int(screened.sum())),
    }


def quality_section(stats: Mapping[str, Any] | None, kpis: pd.DataFrame, calibration: pd.DataFrame) -> dict[str, Any]:
    """Invalid traffic's share of the impressions in gold/kpi_minute's newest hour, the served model version
    and its live calibration (/v1/stats), and observed / expected clicks of gold/calibration's newest hour."""
    section: dict[str, Any] = {
        "model_version": stats.get("model_version") if stats else None,
        "scorer": stats.get("scorer") if stats else None,
        "calibration": stats.get("calibration") if stats else None,
        "ivt": None,
        "observed_over_expected": None,
    }
    if not kpis.empty:
        hour = kpis[kpis["minute"] > kpis["minute"].max() - pd.Timedelta(hours=1)]
        valid, invalid = int(hour["impressions"].sum()), int(hour["ivt_impressions"].sum())
        section["ivt"] = {
            "impressions": valid, "ivt_impressions": invalid, "ivt_clicks": int(hour["ivt_clicks"].sum()),
            "ivt_rate": ratio(invalid, valid + invalid),
        }  # fmt: skip
    if not calibration.empty:
        newest = calibration[calibration["hour"] == calibration["hour"].max()]
        rows = []
        for version, part in newest.groupby("model_version"):
            clicks, expected = int(part["clicks"].sum()), float(part["expected_clicks"].sum())
            rows.append({
                "model_version": str(version), "hour": pd.Timestamp(part["hour"].iloc[0]).isoformat(),
                "impressions": int(part["impressions"].sum()), "clicks": clicks, "expected_clicks": expected,
                "observed_over_expected": ratio(clicks, expected), "alerts": int(part["alert"].fillna(False).sum()),
            })  # fmt: skip
        section["observed_over_expected"] = rows
    return section


def finance_section(bill: pd.DataFrame, statuses: Iterable[tuple[Any, str]]) -> dict[str, Any]:
    """Per billed hour (gold/billing_hourly), newest first: its status (``statuses``: hour -> the hour's
    status) and totals in micros; campaigns held back are counted apart."""
    status_of = {pd.Timestamp(hour): status for hour, status in statuses}
    hours = []
    for hour, rows in sorted(bill.groupby("hour"), key=lambda item: item[0], reverse=True):
        billed = rows[rows["campaign_id"].notna()]
        held = billed[billed["status"] == "held_back"]
        hours.append({
            "hour": pd.Timestamp(hour).isoformat(), "status": status_of.get(pd.Timestamp(hour)),
            "campaigns": int(billed["campaign_id"].nunique()), "held_back": int(held["campaign_id"].nunique()),
            "spend_micros": int(billed["spend_micros"].sum()),
            "gross_spend_micros": int(billed["gross_spend_micros"].sum()),
            "ivt_credit_micros": int(billed["ivt_credit_micros"].sum()),
        })  # fmt: skip
    return {"hours": hours}
