"""Pure transforms of invalid traffic (IVT): what counts as charged and as delivered, the stream's SIVT-lite
tags, and the hourly IVT report of gold/ivt_hourly. No I/O, no session and no clock here.

Invalid traffic follows the IAB/MRC split (adstream.events.IvtCategory):
- GIVT (general) is decided by the auction service when the event arrives (known bot or non-browser
  user agent, data-center IP, duplicate or too-fast click). What it tags is never charged
  (charge_status ``invalid_traffic``, cost 0).
- SIVT-lite (sophisticated) is decided by the stream when a click lands in silver: a click whose user,
  or IP, had more than ``max_clicks`` clicks (itself included) in the ``window_s`` seconds ending at it,
  (t - window, t], is tagged ``sivt`` with reason ``user_click_rate`` (checked first) or
  ``ip_click_rate``. Every click counts towards a rate, GIVT ones too: the rate is the user's
  behaviour. A click already tagged GIVT keeps its GIVT tag. The ledger has charged an SIVT click
  when it was made; billing credits it back (spark_jobs.billing.transforms).
Tagged after the fact, by billing and the hourly IVT report, as later traffic shows
an earlier, untagged event invalid (``with_later_ivt``):
- a click-rate outlier's burst: an event (of any type) whose user is that of a ``user_click_rate``
  click, or whose IP is that of an ``ip_click_rate`` click, less than ``window_s`` before or after
  it, is tagged ``sivt``/``click_burst``. The outlier's first clicks (those up to ``max_clicks``,
  never flagged themselves) and the impressions around them are its traffic too;
- a fast clicker's traffic: an event whose user is that of a GIVT ``fast_click``, less than
  ``window_s`` from it, is tagged ``givt``/``fast_clicker`` (a script clicked: its other ads too);
- a fast-clicked auction: the other events of an auction whose click was ``fast_click`` (the
  impression a script fired with its click was never seen by a person) are tagged
  ``givt``/``fast_click_auction``, whoever sent them.
An event matched by several takes, in this order, ``fast_click_auction``, ``fast_clicker``,
``click_burst``; one tagged already keeps its tag. An hour's bill is so final only when the
stream's watermark has passed its end by ``window_s`` as well (spark_jobs.billing.transforms).

Events are tagged, never deleted: silver keeps every event, and billing and the KPIs leave the
tagged ones out of what they count (the minute KPIs, from the stream, know the tags of the first
two kinds; billing credits back what the ledger charged for an event tagged after its charge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from adstream.events import NOT_DELIVERED, ChargeStatus, EventType, IvtCategory

EVENT_TIME = "event_time"
# Columns of silver/feedback_events added after its first release: rows (and tables) from before
# have none, read as null (spark_jobs.billing reads tables that may predate them).
ADDED_EVENT_COLUMNS = {
    "charge_status": "string", "publisher_id": "string", "recorded_at": "timestamp", "ivt_category": "string",
    "ivt_reason": "string", "user_agent": "string", "ip": "string",
}  # fmt: skip
UNSPECIFIED_REASON = "unspecified"
MONEY = "decimal(18,6)"
IVT_HOURLY_KEY = ("hour", "campaign_id", "publisher_id")


class SivtReason(StrEnum):
    USER_CLICK_RATE = "user_click_rate"
    IP_CLICK_RATE = "ip_click_rate"


FAST_CLICK = "fast_click"  # the service's GIVT reason for a click too soon after its impression


class LaterReason(StrEnum):
    """Reasons of the tags given after the fact (``with_later_ivt``)."""

    CLICK_BURST = "click_burst"  # SIVT: a click-rate outlier's traffic around it
    FAST_CLICKER = "fast_clicker"  # GIVT: the traffic around a fast click of its user
    FAST_CLICK_AUCTION = "fast_click_auction"  # GIVT: another event of a fast-clicked auction


@dataclass(frozen=True)
class Burst:
    """What a deciding click tags: the events sharing its ``key`` (less than the window from it, if ``windowed``)."""

    key: str
    category: IvtCategory
    reason: LaterReason
    rank: int  # which tag wins when an event is in several: the highest
    windowed: bool = True


# A deciding click's reason -> what it tags.
BURSTS = {
    SivtReason.USER_CLICK_RATE.value: (Burst("user_id", IvtCategory.SIVT, LaterReason.CLICK_BURST, 1),),
    SivtReason.IP_CLICK_RATE.value: (Burst("ip", IvtCategory.SIVT, LaterReason.CLICK_BURST, 1),),
    FAST_CLICK: (
        Burst("user_id", IvtCategory.GIVT, LaterReason.FAST_CLICKER, 2),
        Burst("auction_id", IvtCategory.GIVT, LaterReason.FAST_CLICK_AUCTION, 3, windowed=False),
    ),
}
BURST_KEYS = tuple(sorted({burst.key for bursts in BURSTS.values() for burst in bursts}))


def with_event_columns(feedback: DataFrame) -> DataFrame:
    """``feedback`` with the ADDED_EVENT_COLUMNS it lacks, as nulls (a table from before they existed)."""
    absent = [name for name in ADDED_EVENT_COLUMNS if name not in feedback.columns]
    missing = {name: F.lit(None).cast(ADDED_EVENT_COLUMNS[name]) for name in absent}
    return feedback.withColumns(missing) if missing else feedback


def is_charged() -> Column:
    """The ledger charged the event: charge_status ``charged``, or, for records from before the status was
    published, a cost (only the charged event carried one then too)."""
    status = F.col("charge_status")
    return F.coalesce(status == ChargeStatus.CHARGED.value, status.isNull() & (F.col("cost_micros") > 0))


def is_invalid_traffic() -> Column:
    return F.col("ivt_category").isNotNull()


def is_delivered() -> Column:
    """A real delivery, counted as an impression, click or conversion: not invalid traffic and none of
    NOT_DELIVERED (an event not charged as over budget, or not the billable type, still counts)."""
    status = F.col("charge_status")
    return ~is_invalid_traffic() & (status.isNull() | ~status.isin(*NOT_DELIVERED))


# --- SIVT-lite, in the stream ---


def sivt_outliers(batch_clicks: DataFrame, held_clicks: DataFrame, *, window_s: int, max_clicks: int) -> DataFrame:
    """(event_id, reason) of the batch's click-rate outliers, new to silver.

    ``batch_clicks`` and ``held_clicks`` are clicks (event_id, user_id, ip, event_time): the batch's (copies
    included), and those silver holds from ``window_s`` before the batch's earliest click on, the history each
    click's window looks back at. Rates are taken over both, each event_id once; a click silver already holds
    is not judged again.
    """
    window_us = window_s * 1_000_000

    def clicks_of(frame: DataFrame, new: bool) -> DataFrame:
        return frame.select(
            "event_id", "user_id", "ip", F.unix_micros(EVENT_TIME).alias("_at"), F.lit(int(new)).alias("_new")
        )

    # One row per event_id (copies agree on user, IP and time), silver's copy first; three shuffles in
    # all, this one and one window per key.
    clicks = (
        clicks_of(batch_clicks, True)
        .unionByName(clicks_of(held_clicks, False))
        .groupBy("event_id")
        .agg(F.min("user_id").alias("user_id"), F.min("ip").alias("ip"), F.min("_at").alias("_at"),
             (F.min("_new") == 1).alias("_new"))
    )  # fmt: skip

    def clicks_in_window(key: str) -> Column:
        recent = Window.partitionBy(key).orderBy("_at").rangeBetween(-(window_us - 1), 0)
        return F.when(F.col(key).isNotNull(), F.count("*").over(recent))

    counted = clicks.withColumn("_user", clicks_in_window("user_id")).withColumn("_ip", clicks_in_window("ip"))
    by_user, by_ip = F.col("_user") > max_clicks, F.col("_ip") > max_clicks
    reason = F.when(by_user, F.lit(SivtReason.USER_CLICK_RATE.value)).otherwise(F.lit(SivtReason.IP_CLICK_RATE.value))
    return counted.where(F.col("_new") & (by_user | by_ip)).select("event_id", reason.alias("reason"))


def tag_sivt(new_events: DataFrame, outliers: DataFrame) -> DataFrame:
    """``new_events`` (silver rows about to land) with the ``outliers`` (event_id, reason) among them tagged SIVT;
    a GIVT tag is kept."""
    # Outliers are few: broadcast, so the batch is not shuffled for them.
    tagged = new_events.join(F.broadcast(outliers.withColumnRenamed("reason", "_sivt_reason")), "event_id", "left")
    was_ivt = is_invalid_traffic()
    sivt = F.col("_sivt_reason").isNotNull()
    return tagged.withColumns(
        {
            "ivt_category": F.when(was_ivt, F.col("ivt_category")).when(sivt, F.lit(IvtCategory.SIVT.value)),
            "ivt_reason": F.when(was_ivt, F.col("ivt_reason")).when(sivt, F.col("_sivt_reason")),
        }
    ).select(*new_events.columns)


def with_later_ivt(events: DataFrame, around: DataFrame, *, window_s: int) -> DataFrame:
    """``events`` with the untagged ones that later traffic shows invalid tagged (the module doc's rules, BURSTS).

    ``around`` holds the clicks that decide (silver's tags): it must reach ``window_s`` before and after
    ``events``. An event in several bursts takes the tag of highest rank.
    """
    window_us = window_s * 1_000_000
    reason = F.col("ivt_reason")
    opened = [
        F.when(reason == clicked, F.struct(F.lit(burst.key).alias("kind"), F.col(burst.key).alias("value"),
                                           F.lit(burst.windowed).alias("windowed"), _tag(burst)))
        for clicked, bursts in BURSTS.items() for burst in bursts
    ]  # fmt: skip
    # One row per deciding click and burst it opens; the events, one row per key they have. Then one equi-join
    # (deciding clicks are few: broadcast), so the events are read twice whatever the number of rules.
    deciding = (
        around.where((F.col("event_type") == EventType.CLICK.value) & reason.isin(*BURSTS))
        .select(F.unix_micros(EVENT_TIME).alias("_at"), F.explode(F.array(*opened)).alias("_burst"))
        .where(F.col("_burst.value").isNotNull())
        .select("_at", "_burst.*")
    )
    keys = [F.struct(F.lit(key).alias("kind"), F.col(key).alias("value")) for key in BURST_KEYS]
    keyed = (
        events.select("event_id", F.unix_micros(EVENT_TIME).alias("_event_at"), F.explode(F.array(*keys)).alias("_key"))
        .select("event_id", "_event_at", "_key.*")
        .where(F.col("value").isNotNull())
    )
    near = ~F.col("windowed") | (F.abs(F.col("_event_at") - F.col("_at")) < window_us)
    strongest = (
        keyed.join(F.broadcast(deciding), ["kind", "value"])
        .where(near)
        .groupBy("event_id")
        .agg(F.max("_tag").alias("_tag"))
    )
    later = ~is_invalid_traffic() & F.col("_tag").isNotNull()
    return (
        events.join(strongest, "event_id", "left")
        .withColumns(
            {
                "ivt_category": F.when(later, F.col("_tag.category")).otherwise(F.col("ivt_category")),
                "ivt_reason": F.when(later, F.col("_tag.reason")).otherwise(F.col("ivt_reason")),
            }
        )
        .select(*events.columns)
    )


def _tag(burst: Burst) -> Column:
    return F.struct(
        F.lit(burst.rank).alias("rank"), F.lit(burst.category.value).alias("category"),
        F.lit(burst.reason.value).alias("reason"),
    ).alias("_tag")  # fmt: skip


def tagged_between(feedback: DataFrame, start: datetime, end: datetime, *, window_s: int) -> DataFrame:
    """``feedback``'s events in [start, end), tagged by ``with_later_ivt`` (clicks read ``window_s`` either side)."""
    reach = timedelta(seconds=window_s)
    return with_later_ivt(_between(feedback, start, end), _between(feedback, start - reach, end + reach),
                          window_s=window_s)  # fmt: skip


def _between(feedback: DataFrame, start: datetime, end: datetime) -> DataFrame:
    return feedback.where((F.col(EVENT_TIME) >= F.lit(start)) & (F.col(EVENT_TIME) < F.lit(end)))


# --- gold/ivt_hourly ---


def _ratio(numerator: str, denominator: str) -> Column:
    """numerator / denominator as decimal(18,6), rounded half-up; null when dividing by zero."""
    quotient = F.col(numerator).cast("decimal(38,18)") / F.col(denominator)
    return F.when(F.col(denominator) > 0, F.round(quotient, 6).cast(MONEY))


def ivt_by_hour(feedback: DataFrame, hour: datetime, *, computed_at: datetime) -> DataFrame:
    """One row per campaign x publisher with events in the hour [hour, hour + 1 h) of ``feedback``
    (deduplicated silver events, already cut to the hour):

    - events, clicks; givt_events, sivt_events, ivt_events and ivt_clicks (tagged events);
    - ivt_rate = ivt_events / events, click_ivt_rate = ivt_clicks / clicks (decimal(18,6), null on 0);
    - ivt_by_reason: tagged events per reason (a map, so a new reason code needs no new column);
    - ivt_charged_micros: what the ledger charged for tagged events (SIVT, found after the charge), the
      credit billing gives back.
    """
    category, click = F.col("ivt_category"), F.col("event_type") == EventType.CLICK.value
    reason = F.when(is_invalid_traffic(), F.coalesce(F.col("ivt_reason"), F.lit(UNSPECIFIED_REASON)))
    per_reason = feedback.groupBy("campaign_id", "publisher_id", reason.alias("reason")).agg(
        F.count("*").alias("events"),
        F.count(F.when(click, True)).alias("clicks"),
        F.count(F.when(category == IvtCategory.GIVT.value, True)).alias("givt_events"),
        F.count(F.when(category == IvtCategory.SIVT.value, True)).alias("sivt_events"),
        F.count(F.when(click & is_invalid_traffic(), True)).alias("ivt_clicks"),
        F.sum(F.when(is_charged() & is_invalid_traffic(), F.col("cost_micros")).otherwise(0)).alias("ivt_charged"),
    )
    counts = ("events", "clicks", "givt_events", "sivt_events", "ivt_clicks")
    per_cell = per_reason.groupBy("campaign_id", "publisher_id").agg(
        *(F.sum(name).cast("bigint").alias(name) for name in counts),
        F.sum("ivt_charged").cast("bigint").alias("ivt_charged_micros"),
        F.map_from_entries(
            F.collect_list(F.when(F.col("reason").isNotNull(), F.struct("reason", F.col("events").cast("bigint"))))
        ).alias("ivt_by_reason"),
    )
    return per_cell.withColumn("ivt_events", F.col("givt_events") + F.col("sivt_events")).select(
        F.lit(hour).cast("timestamp").alias("hour"),
        "campaign_id",
        "publisher_id",
        "events",
        "clicks",
        "givt_events",
        "sivt_events",
        "ivt_events",
        "ivt_clicks",
        _ratio("ivt_events", "events").alias("ivt_rate"),
        _ratio("ivt_clicks", "clicks").alias("click_ivt_rate"),
        "ivt_by_reason",
        "ivt_charged_micros",
        F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )
