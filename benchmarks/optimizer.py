"""Optimizer benchmark (`make bench-optimizer`): a whole tick for 10,000 campaigns x 8 platforms, on one core.

The optimizer's tick (``optimizer.service.Optimizer``) is timed as the service runs it, without Kafka:
each tick first folds the events of its interval (``--events-per-s`` x the tick, ad-feedback rows as the
service decodes them: impressions, clicks and conversions at each campaign x platform's own rates), then
advances the windows, forecasts and decides for every campaign, and builds the records of the
decisions that changed. The process is pinned to one core (``os.sched_setaffinity``) and numpy's
threads to one. The windows start full: ``--warm-s`` of traffic is folded before the clock starts.

Figures, over ``--duration`` of ticks back to back: the tick's p50/p99/max (fold included, and decide
alone), decisions sent per tick, and the RSS every ``--rss-every-s``, with its growth over the run's
last nine tenths (after the windows and the caches filled). The ceiling measured in the same run:
one pass of numpy over the campaigns' window moments (a gather and a sum: the least any tick must
read), so ``tick / ceiling`` says how far the tick is from what this machine's memory allows. Targets: tick
p99 <= 200 ms; RSS growth <= 5 % over the run (flat).

    adstream bench optimizer [--campaigns 10000] [--duration 10m] [--events-per-s 2000] [--seed 7]
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import numpy as np
import psutil
import typer
from threadpoolctl import threadpool_limits

from adstream.events import CHANNELS, DEVICE_TYPES, PLATFORMS, CampaignGoals, CampaignStatus, PricingModel
from adstream.settings import get_settings
from auction_service.domain import ServingCampaign
from benchmarks.harness import report_path, write_report
from cli.lazy import commands_app
from optimizer.service import Optimizer
from simulator.traffic import parse_duration

TARGET_P99_MS = 200.0
TARGET_RSS_GROWTH = 0.05
CATEGORIES = 20
T0 = datetime(2026, 12, 6, tzinfo=UTC)


def synthetic_campaigns(n: int, rng: np.random.Generator) -> list[ServingCampaign]:
    """``n`` optimized campaigns: mostly CPC, some CPM and CPA, in CATEGORIES categories."""
    models = rng.choice([PricingModel.CPC, PricingModel.CPM, PricingModel.CPA], size=n, p=[0.6, 0.3, 0.1])
    bids = {PricingModel.CPC: (200_000, 2_000_000), PricingModel.CPM: (1_000_000, 8_000_000),
            PricingModel.CPA: (5_000_000, 40_000_000)}  # fmt: skip
    goals = [CampaignGoals(optimize=True, conversion_value_micros=int(v) * 1_000_000) for v in rng.integers(5, 60, n)]
    return [
        ServingCampaign(
            campaign_id=f"bench-{i:05d}",
            advertiser_id=f"adv-{i // 4}",
            ad_id=f"ad-{i}",
            category=f"cat-{i % CATEGORIES}",
            pricing_model=model,
            bid_micros=int(rng.integers(*bids[model])),
            flight_start=T0 - timedelta(days=1),
            flight_end=T0 + timedelta(days=30),
            frequency_cap_per_day=10,
            status=CampaignStatus.ACTIVE,
            total_budget_micros=10**12,
            daily_budget_micros=10**11,
            spent_micros=0,
            spent_today_micros=0,
            goals=goals[i],
        )
        for i, model in enumerate(models)
    ]


class Traffic:
    """Events at fixed per-cell rates: each campaign x platform has its share of traffic, its CTR and CVR."""

    def __init__(self, campaigns: list[ServingCampaign], rng: np.random.Generator) -> None:
        self.rng = rng
        self.ids = np.array([c.campaign_id for c in campaigns], dtype=object)
        cells = len(campaigns) * len(PLATFORMS)
        self.share = rng.pareto(1.2, size=cells) + 1e-3
        self.share /= self.share.sum()
        self.ctr = rng.beta(2, 60, size=cells)
        self.cvr = rng.beta(2, 30, size=cells)
        self.cpc = rng.uniform(100_000, 2_000_000, size=cells).astype(np.int64)

    def events(self, count: int, start_s: float, span_s: float) -> list[dict]:
        cell = self.rng.choice(len(self.share), size=count, p=self.share)
        kind = self.rng.random(count)
        clicked = kind < self.ctr[cell]
        converted = clicked & (self.rng.random(count) < self.cvr[cell])
        at = start_s + self.rng.random(count) * span_s
        rows = []
        for c, is_click, is_conversion, t in zip(
            cell.tolist(), clicked.tolist(), converted.tolist(), at.tolist(), strict=True
        ):
            campaign, platform = divmod(c, len(PLATFORMS))
            channel, device = CHANNELS[platform // len(DEVICE_TYPES)], DEVICE_TYPES[platform % len(DEVICE_TYPES)]
            base = {"campaign_id": self.ids[campaign], "channel": channel, "device_type": device,
                    "event_time": datetime.fromtimestamp(t, UTC)}  # fmt: skip
            rows.append(base | {"event_type": "impression", "charge_status": "not_billable"})
            if is_click:
                rows.append(base | {"event_type": "click", "charge_status": "charged", "cost_micros": int(self.cpc[c])})
            if is_conversion:
                rows.append(base | {"event_type": "conversion", "charge_status": "not_billable"})
        return rows


def ceiling_ms(optimizer: Optimizer, rows: np.ndarray, repeats: int = 5) -> float:
    """The least work any tick does: the window moments of ``rows`` gathered and summed (median ms)."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        optimizer.windows.moments[rows].sum(axis=-1)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds) * 1000


def bench(campaigns: int, duration_s: float, events_per_s: float, warm_s: float, tick_s: float, seed: int,
          rss_every_s: float) -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    served = synthetic_campaigns(campaigns, rng)
    traffic = Traffic(served, rng)
    optimizer = Optimizer()
    now = T0
    warm_events = int(events_per_s * warm_s)
    for start in range(0, warm_events, 50_000):  # the windows start full
        span = warm_s * min(50_000, warm_events - start) / warm_events
        optimizer.fold(
            traffic.events(min(50_000, warm_events - start), now.timestamp() - warm_s + start / events_per_s, span)
        )
    process = psutil.Process()
    ticks, decide_ms, sent, rss = [], [], [], []
    began = last_rss = time.monotonic()
    per_tick = int(events_per_s * tick_s)
    while time.monotonic() - began < duration_s:
        batch = traffic.events(per_tick, now.timestamp(), tick_s)
        now += timedelta(seconds=tick_s)
        t0 = time.perf_counter()
        optimizer.fold(batch)
        t1 = time.perf_counter()
        applied = optimizer.tick(served, now)
        optimizer.mark_sent(applied)
        t2 = time.perf_counter()
        ticks.append((t2 - t0) * 1000)
        decide_ms.append((t2 - t1) * 1000)
        sent.append(len(applied))
        if time.monotonic() - last_rss >= rss_every_s:
            rss.append((time.monotonic() - began, process.memory_info().rss))
            last_rss = time.monotonic()
    rows = np.arange(len(served))
    ceiling = ceiling_ms(optimizer, rows)
    settled = [value for at, value in rss if at >= duration_s / 10] or [value for _, value in rss]
    growth = (settled[-1] - settled[0]) / settled[0] if len(settled) > 1 else 0.0
    p99 = float(np.percentile(ticks, 99))
    return {
        "campaigns": campaigns, "platforms": len(PLATFORMS), "ticks": len(ticks), "events_per_tick": per_tick,
        "tick_ms": {"p50": float(np.median(ticks)), "p99": p99, "max": float(max(ticks)), "first": ticks[0]},
        "decide_ms": {"p50": float(np.median(decide_ms)), "p99": float(np.percentile(decide_ms, 99))},
        "decisions_sent_per_tick": {"median": float(np.median(sent)), "max": int(max(sent))},
        "ceiling_ms": ceiling, "tick_over_ceiling": float(np.median(ticks)) / ceiling,
        "rss_mb": [round(value / 2**20, 1) for _, value in rss], "rss_growth": growth,
        "targets": {"tick_p99_ms": TARGET_P99_MS, "rss_growth": TARGET_RSS_GROWTH,
                    "met": p99 <= TARGET_P99_MS and growth <= TARGET_RSS_GROWTH},
        "cores": 1,
    }  # fmt: skip


commands = commands_app()


@commands.command("optimizer", help=__doc__.splitlines()[0])
def optimizer_command(
    campaigns: Annotated[int, typer.Option(min=1)] = 10_000,
    duration: Annotated[float, typer.Option(parser=parse_duration, metavar="DURATION")] = "10m",  # type: ignore[assignment]
    events_per_s: Annotated[float, typer.Option(min=1)] = 2_000.0,
    warm: Annotated[float, typer.Option(parser=parse_duration, metavar="DURATION", help="traffic before")] = "30m",  # type: ignore[assignment]
    tick_s: Annotated[float, typer.Option(min=0.1)] = 2.0,
    seed: int = 7,
    rss_every: Annotated[float, typer.Option(parser=parse_duration, metavar="DURATION")] = "10s",  # type: ignore[assignment]
) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    with threadpool_limits(1):
        result = bench(campaigns, duration, events_per_s, warm, tick_s, seed, rss_every)
    path = write_report(result, report_path(get_settings(), "optimizer"))
    tick, decide = result["tick_ms"], result["decide_ms"]
    rss = result["rss_mb"] or [0.0]
    typer.echo(
        f"{campaigns:,} campaigns x {len(PLATFORMS)} platforms, {result['ticks']} ticks of "
        f"{result['events_per_tick']:,} events on one core: tick p50 {tick['p50']:.1f} ms, p99 {tick['p99']:.1f} ms "
        f"(target <= {TARGET_P99_MS:.0f}), decide alone p99 {decide['p99']:.1f} ms; ceiling (one numpy pass over "
        f"the moments) {result['ceiling_ms']:.1f} ms, tick/ceiling {result['tick_over_ceiling']:.1f}x; RSS "
        f"{rss[0]:.0f} -> {rss[-1]:.0f} MB ({result['rss_growth']:+.1%}, target <= {TARGET_RSS_GROWTH:.0%}); "
        f"targets {'met' if result['targets']['met'] else 'MISSED'}; {path}"
    )
