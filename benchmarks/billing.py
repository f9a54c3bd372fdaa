"""Billing benchmark (`make bench-billing`): one hour of 1,000,000 feedback events billed on local[2].

Generates, in a scratch lake, silver/feedback_events (impressions of every auction, clicks,
conversions and re-delivered duplicates, over 300 campaigns in CPM, CPC and CPA) and the
silver/auctions they belong to, plus a campaign store with those campaigns. Then, per repeat:
  bill      `spark_jobs.billing.job.bill_hour` end to end (watermark, Spark aggregation, budgets from the
            store, GX gate, MERGE into gold/billing_hourly); the first repeat creates the table,
            the others replace the hour, as a re-run does;
  baseline  one DuckDB query computing the same per-campaign figures over the same Delta snapshot's
            parquet files (no gate, no write): what a bare engine takes for the arithmetic.
Medians go to stdout and reports/bench/billing.json. Target: the hour billed in <= 60 s.

    adstream bench billing [--repeats 3] [--events 1000000]
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import duckdb
import numpy as np
import pyarrow as pa
import typer
from deltalake import DeltaTable, write_deltalake

from adstream.contracts import Table
from adstream.events import (
    AuctionRecord,
    CampaignInstruction,
    CampaignSpec,
    FeedbackEvent,
    PricingModel,
    spark_ddl,
)
from adstream.settings import Settings, get_settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from benchmarks.harness import median_of, ratio, report_path, write_report
from cli.lazy import commands_app
from spark_jobs.billing import job as billing
from spark_jobs.billing.reports import read_bill
from spark_jobs.session import get_spark

HOUR = datetime(2026, 11, 24, 10, tzinfo=UTC)
TARGET_S = 60.0
CAMPAIGNS = 300
ADVERTISERS = 60
CLICK_RATE, CONVERSION_RATE, DUPLICATE_SHARE = 0.08, 0.2, 0.0136
MODELS = np.array([PricingModel.CPM.value, PricingModel.CPC.value, PricingModel.CPA.value])
ARROW_TYPES = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def arrow_schema(model: type) -> pa.Schema:
    """The silver columns the streaming job writes (``spark_ddl``), as Arrow types."""
    return pa.schema([(name, ARROW_TYPES[kind]) for name, kind in (c.split() for c in spark_ddl(model).split(", "))])


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pa.array([f"{prefix}{n:09d}" for n in numbers.tolist()])


def _times(seconds: np.ndarray) -> pa.Array:
    micros = (HOUR.timestamp() * 1_000_000 + seconds * 1_000_000).astype("int64")
    return pa.array(micros, pa.timestamp("us", tz="UTC"))


def generate(events: int, seed: int = 7) -> tuple[pa.Table, pa.Table]:
    """(feedback events, auctions) of one hour; exactly ``events`` feedback rows."""
    rng = np.random.default_rng(seed)
    per_auction = 1 + CLICK_RATE + CLICK_RATE * CONVERSION_RATE
    auctions = int(events * (1 - DUPLICATE_SHARE) / per_auction)
    campaign = rng.integers(0, CAMPAIGNS, auctions)
    model = MODELS[campaign % 3]
    price = rng.integers(100_000, 3_000_000, auctions)
    auction_s = rng.uniform(0, 3300, auctions)  # the hour's first 55 minutes

    clicked = np.flatnonzero(rng.random(auctions) < CLICK_RATE)
    converted = clicked[rng.random(clicked.size) < CONVERSION_RATE]
    auction_of = np.concatenate([np.arange(auctions), clicked, converted])
    kind = np.concatenate([np.zeros(auctions, int), np.ones(clicked.size, int), np.full(converted.size, 2)])
    delay = np.concatenate(
        [np.full(auctions, 1.0), rng.uniform(2, 120, clicked.size), rng.uniform(130, 600, converted.size)]
    )
    event_number = np.arange(auction_of.size)
    duplicates = rng.choice(auction_of.size, events - auction_of.size - 1, replace=False)  # re-delivered as-is
    rows = np.concatenate([event_number, duplicates])
    auction_of, kind, delay = auction_of[rows], kind[rows], delay[rows]

    event_type = np.array(["impression", "click", "conversion"])[kind]
    billable = event_type == np.array(["impression", "click", "conversion"])[campaign[auction_of] % 3]
    cost = np.where(model[auction_of] == PricingModel.CPM.value, -(-price[auction_of] // 1000), price[auction_of])
    # One more impression, 20 min after the hour: it moves the stream's watermark past the hour end.
    late = auctions - 1
    feedback = {
        "event_id": _ids("e", np.append(rows, auction_of.size)),
        "event_type": pa.array([*event_type.tolist(), "impression"]),
        "event_time": _times(np.append(auction_s[auction_of] + delay, 4800.0)),
        "auction_id": _ids("a", np.append(auction_of, late)),
        "campaign_id": _ids("cmp", np.append(campaign[auction_of], campaign[late])),
        "advertiser_id": _ids("adv", np.append(campaign[auction_of], campaign[late]) % ADVERTISERS),
        "ad_id": _ids("ad", np.append(campaign[auction_of], campaign[late])),
        "pricing_model": pa.array([*model[auction_of].tolist(), model[late]]),
        "cost_micros": pa.array(np.append(np.where(billable, cost, 0), 0)),
    }
    auction_log = {
        "auction_id": _ids("a", np.arange(auctions)),
        "event_time": _times(auction_s),
        "floor_micros": pa.array(np.full(auctions, 10_000)),
        "candidate_count": pa.array(np.full(auctions, 3)),
        "filled": pa.array(np.ones(auctions, bool)),
        "campaign_id": _ids("cmp", campaign),
        "advertiser_id": _ids("adv", campaign % ADVERTISERS),
        "ad_id": _ids("ad", campaign),
        "pricing_model": pa.array(model),
        "bid_micros": pa.array(price * 2),
        "clearing_price_micros": pa.array(price),
        "latency_ms": pa.array(np.full(auctions, 1.5)),
    }
    return _filled(feedback, FeedbackEvent), _filled(auction_log, AuctionRecord)


def _filled(columns: dict[str, pa.Array], model: type) -> pa.Table:
    """A table of the model's full schema; columns not generated are null (or their default)."""
    schema = arrow_schema(model)
    rows = len(next(iter(columns.values())))
    defaults = {"schema_version": 1, "currency": "USD"}
    arrays = [columns.get(f.name, pa.array([defaults.get(f.name)] * rows, f.type)).cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def seed_store(settings: Settings) -> None:
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        for number in range(CAMPAIGNS):
            spec = CampaignSpec(
                advertiser_id=f"adv{number % ADVERTISERS:09d}", ad_id=f"ad{number:09d}", category="Automotive",
                pricing_model=MODELS[number % 3], bid_micros=6_000_000, total_budget_micros=10**12,
                daily_budget_micros=10**12, flight_start=HOUR - timedelta(days=1), flight_end=HOUR + timedelta(days=7),
            )  # fmt: skip
            campaign_id = f"cmp{number:09d}"
            store.apply_instruction(
                session,
                CampaignInstruction(
                    instruction_id=f"create-{campaign_id}", action="create", campaign_id=campaign_id,
                    issued_at=HOUR, campaign=spec,
                ),
            )  # fmt: skip
    engine.dispose()


BASELINE_SQL = """
WITH events AS (
    SELECT * FROM read_parquet($files) WHERE event_time >= $since AND event_time < $until
), billable AS (
    SELECT DISTINCT ON (event_id) * FROM events
    WHERE cost_micros > 0 AND (
        (pricing_model = 'CPM' AND event_type = 'impression') OR (pricing_model = 'CPC' AND event_type = 'click')
        OR (pricing_model = 'CPA' AND event_type = 'conversion'))
), charged AS (
    SELECT campaign_id, count(*) AS billable_events, sum(cost_micros) AS spend_micros FROM (
        SELECT *, row_number() OVER (PARTITION BY auction_id ORDER BY event_time, event_id) AS charge FROM billable
    ) WHERE charge = 1 AND event_time >= $hour GROUP BY campaign_id
), activity AS (
    SELECT advertiser_id, campaign_id, pricing_model, currency,
        count(DISTINCT auction_id) FILTER (WHERE event_type = 'impression') AS impressions,
        count(DISTINCT auction_id) FILTER (WHERE event_type = 'click') AS clicks,
        count(DISTINCT auction_id) FILTER (WHERE event_type = 'conversion') AS conversions
    FROM events WHERE event_time >= $hour GROUP BY ALL
)
SELECT activity.*, coalesce(billable_events, 0) AS billable_events, coalesce(spend_micros, 0) AS spend_micros
FROM activity LEFT JOIN charged USING (campaign_id)
"""


def duckdb_baseline(settings: Settings) -> tuple[dict[str, int], float]:
    """The same figures with DuckDB over the current snapshot's parquet files; (spend per campaign, seconds)."""
    began = time.perf_counter()
    uri, options = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    files = DeltaTable(uri, storage_options=options or None).file_uris()
    lookback = timedelta(seconds=settings.auction_ttl_s)
    parameters = {"files": files, "since": HOUR - lookback, "until": HOUR + timedelta(hours=1), "hour": HOUR}
    rows = duckdb.connect().execute(BASELINE_SQL, parameters).fetchall()
    spend = {row[1]: int(row[-1]) for row in rows}
    return spend, time.perf_counter() - began


def run(base: Settings, repeats: int, workdir: Path, events: int) -> dict[str, object]:
    shutil.rmtree(workdir, ignore_errors=True)
    settings = base.model_copy(
        update={
            "lake_root": str(workdir / "lake"),
            "reports_dir": workdir / "reports",
            "campaign_db_url": f"sqlite:///{workdir / 'campaigns.db'}",
            "spark_master": "local[2]",
            "spark_shuffle_partitions": 2,
        }
    )
    began = time.perf_counter()
    feedback, auctions = generate(events)
    write_deltalake(settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)[0], feedback)
    write_deltalake(settings.delta_rs_location(Table.SILVER_AUCTIONS)[0], auctions)
    seed_store(settings)
    generate_s = time.perf_counter() - began
    print(f"generated {feedback.num_rows:,} events, {auctions.num_rows:,} auctions in {generate_s:.1f}s", flush=True)

    spark = get_spark("bench-billing", settings, extra=billing.SPARK_CONF)
    now = HOUR + timedelta(hours=2)
    measurements = []
    for repeat in range(1, repeats + 1):
        began = time.perf_counter()
        bill = billing.bill_hour(spark, settings, HOUR, now=now)
        bill_s = time.perf_counter() - began
        baseline_spend, baseline_s = duckdb_baseline(settings)
        billed = finance_spend(settings)
        agrees = billed == baseline_spend
        measurements.append(
            {"bill_s": round(bill_s, 2), "baseline_duckdb_s": round(baseline_s, 2), "status": bill.status.value,
             "campaigns": bill.campaigns, "spend_micros": bill.spend_micros, "baseline_agrees": agrees}
        )  # fmt: skip
        print(
            f"repeat {repeat}: bill {bill_s:.1f}s ({bill.status.value}, {bill.campaigns} campaigns, "
            f"{bill.spend_micros:,} micros) | DuckDB baseline {baseline_s:.2f}s "
            f"({'same spend per campaign' if agrees else 'DIFFERENT spend'})",
            flush=True,
        )
    spark.stop()
    bill_median = median_of(measurements, "bill_s")
    baseline_median = median_of(measurements, "baseline_duckdb_s")
    return {
        "events": feedback.num_rows,
        "auctions": auctions.num_rows,
        "campaigns": CAMPAIGNS,
        "spark_master": settings.spark_master,
        "shuffle_partitions": settings.spark_shuffle_partitions,
        "generate_s": round(generate_s, 1),
        "repeats": measurements,
        "median_bill_s": bill_median,
        "median_baseline_duckdb_s": baseline_median,
        "bill_vs_baseline": ratio(bill_median, baseline_median, 1),
        "target_s": TARGET_S,
        "target_met": bill_median <= TARGET_S,
    }


def finance_spend(settings: Settings) -> dict[str, int]:
    bill = read_bill(settings, start=HOUR, end=HOUR + timedelta(hours=1))
    return {row.campaign_id: int(row.spend_micros) for row in bill.itertuples() if row.campaign_id is not None}


def bench(settings: Settings, repeats: int = 3, events: int = 1_000_000, workdir: Path | None = None) -> int:
    """`adstream bench billing`: the repeats in a scratch lake (default LOCAL_DIR/bench/billing), the medians to
    REPORTS_DIR/bench/billing.json."""
    result = run(settings, repeats, (workdir or settings.local_dir / "bench" / "billing").resolve(), events)
    out = write_report(result, report_path(settings, "billing"))
    print(
        f"median: bill {result['median_bill_s']:.1f}s for {result['events']:,} events "
        f"(target <= {TARGET_S:.0f}s: {'met' if result['target_met'] else 'MISSED'}); "
        f"DuckDB baseline {result['median_baseline_duckdb_s']:.2f}s; ratio {result['bill_vs_baseline']}; "
        f"written to {out}"
    )
    return 0


# --- the command (`adstream bench billing`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("billing", help=__doc__.splitlines()[0])
def billing_command(
    repeats: int = 3,
    events: int = 1_000_000,
    workdir: Annotated[Path | None, typer.Option(help="scratch lake (default: LOCAL_DIR/bench/billing)")] = None,
) -> None:
    raise typer.Exit(bench(get_settings(), repeats, events, workdir))
