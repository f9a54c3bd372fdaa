"""Pure transforms of the streaming job (spark_jobs.streaming): Kafka records to bronze, silver and
quarantine rows (refused events to quarantine/events), the stream's event-time watermark, and the
per-minute KPIs of gold/kpi_minute (SIVT tagging is spark_jobs.ivt_transforms').

No I/O, no session and no clock here: the caller passes the ingest time and the watermark.

Validation follows the record's pydantic model in adstream.events, so the stream accepts what the
auction service may publish and nothing else: the JSON is parsed with ``spark_ddl(model)``, and the
model's required fields, enums, literals and bounds (``ge``, ``le``, ``min_length``, …) become
checks. A record gets the first failing check as its quarantine reason, in the order of
QuarantineReason. Unknown extra fields are ignored: adding an optional field is not a new
schema version (adstream.events), so an older stream must keep reading such records.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import annotated_types
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from adstream.events import MICROS_PER_UNIT, EventType, spark_ddl
from spark_jobs.ivt_transforms import is_charged, is_delivered, is_invalid_traffic

# What the Kafka source of Structured Streaming hands each micro-batch.
KAFKA_RECORD_DDL = (
    "key binary, value binary, topic string, partition int, offset bigint, timestamp timestamp, timestampType int"
)
EVENT_TIME = "event_time"
KAFKA_LINEAGE = ("kafka_topic", "kafka_partition", "kafka_offset")
QUARANTINE_COLUMNS = (
    "reason", "detail", "raw_value", "kafka_key", *KAFKA_LINEAGE, "kafka_timestamp", "ingested_at",
)  # fmt: skip
MONEY = "decimal(18,6)"
KPI_DIMENSIONS = ("device_type", "channel", "content_type")
KPI_KEY = ("campaign_id", "minute", *KPI_DIMENSIONS)
UNKNOWN = "unknown"  # a KPI dimension the event did not state
# An ISO-8601 time must name its offset: the schema wants aware datetimes, and a bare local time is ambiguous.
UTC_OFFSET = r"(Z|z|[+-]\d{2}(:?\d{2})?)$"


class QuarantineReason(StrEnum):
    """Why a record is not in silver; the checks run in this order and the first failure is kept."""

    MALFORMED_JSON = "malformed_json"  # not a JSON object at all
    WRONG_SCHEMA_VERSION = "wrong_schema_version"  # missing, or a version this job cannot read
    MISSING_FIELD = "missing_field"  # a required field is absent or null
    WRONG_TYPE = "wrong_type"  # e.g. a string where a number belongs, a time without a UTC offset
    OUT_OF_RANGE = "out_of_range"  # a model bound, e.g. a negative cost_micros or a pctr above 1
    UNKNOWN_VALUE = "unknown_value"  # an enum value the schema does not know, e.g. an unknown event_type
    FUTURE = "future_event_time"  # the event time is ahead of its Kafka timestamp by more than the watermark
    LATE = "late"  # the event time is behind the stream's watermark


@dataclass(frozen=True)
class _Check:
    reason: QuarantineReason
    failed: Column  # true when the record violates the check (null counts as passed)
    detail: Column


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return inner
    return annotation


def _allowed_values(annotation: Any) -> tuple[Any, ...] | None:
    inner = _unwrap_optional(annotation)
    if typing.get_origin(inner) is Literal:
        return typing.get_args(inner)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return tuple(member.value for member in inner)
    return None


def _bound_checks(name: str, field: FieldInfo, value: Column) -> list[_Check]:
    inner = _unwrap_optional(field.annotation)
    is_list = typing.get_origin(inner) is list
    checks = []
    if is_list:
        (element,) = typing.get_args(inner)
        if isinstance(element, type) and issubclass(element, BaseModel):
            # A list of records: any element out of its own bounds puts the record out of range.
            for inner_name, inner_field in element.model_fields.items():
                bounded = _element_bounds(inner_field)
                if bounded:
                    failed = F.exists(value, _element_out(inner_field, inner_name))
                    detail = F.lit(f"{name}: an element's {inner_name} is out of its bounds ({bounded})")
                    checks.append(_Check(QuarantineReason.OUT_OF_RANGE, failed, detail))
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            failed, rule = value < F.lit(bound.ge), f"must be >= {bound.ge}"
        elif isinstance(bound, annotated_types.Gt):
            failed, rule = value <= F.lit(bound.gt), f"must be > {bound.gt}"
        elif isinstance(bound, annotated_types.Le):
            failed, rule = value > F.lit(bound.le), f"must be <= {bound.le}"
        elif isinstance(bound, annotated_types.Lt):
            failed, rule = value >= F.lit(bound.lt), f"must be < {bound.lt}"
        elif isinstance(bound, annotated_types.MinLen):
            unit = "elements" if is_list else "characters"
            size = F.size(value) if is_list else F.length(value)
            failed, rule = size < bound.min_length, f"must have at least {bound.min_length} {unit}"
        elif isinstance(bound, annotated_types.MaxLen):
            unit = "elements" if is_list else "characters"
            size = F.size(value) if is_list else F.length(value)
            failed, rule = size > bound.max_length, f"must have at most {bound.max_length} {unit}"
        else:
            continue
        detail = F.concat(F.lit(f"{name} = "), F.substring(value.cast("string"), 1, 80), F.lit(f" {rule}"))
        checks.append(_Check(QuarantineReason.OUT_OF_RANGE, failed, detail))
    return checks


def _element_bounds(field: FieldInfo) -> str:
    """The numeric bounds of a list element's field, as text (empty when it has none)."""
    texts = []
    for bound in field.metadata:
        for kind, attribute in ((annotated_types.Ge, "ge"), (annotated_types.Gt, "gt"), (annotated_types.Le, "le"),
                                (annotated_types.Lt, "lt")):  # fmt: skip
            if isinstance(bound, kind):
                texts.append(f"{attribute} {getattr(bound, attribute)}")
    return ", ".join(texts)


def _element_out(field: FieldInfo, key: str) -> typing.Callable[[Column], Column]:
    """Whether a list element's ``key`` breaks ``field``'s bounds, as Spark's higher-order functions take it
    (a function of the element alone)."""

    def out(item: Column) -> Column:
        return _any_out(field, item[key])

    return out


def _any_out(field: FieldInfo, value: Column) -> Column:
    """Whether ``value`` breaks one of ``field``'s numeric bounds (null never does)."""
    out = F.lit(False)
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            out = out | (value < F.lit(bound.ge))
        elif isinstance(bound, annotated_types.Gt):
            out = out | (value <= F.lit(bound.gt))
        elif isinstance(bound, annotated_types.Le):
            out = out | (value > F.lit(bound.le))
        elif isinstance(bound, annotated_types.Lt):
            out = out | (value >= F.lit(bound.lt))
    return F.coalesce(out, F.lit(False))


def schema_checks(model: type[BaseModel], raw: Column, typed: Column) -> list[_Check]:
    """The model's rules as column checks, in QuarantineReason order.

    ``raw`` is the record as a ``map<string,string>`` (null when it is not a JSON object) and
    ``typed`` the struct parsed with ``spark_ddl(model)``: a value present in ``raw`` but null in
    ``typed`` did not fit the field's type.
    """
    fields = model.model_fields
    hints = typing.get_type_hints(model, include_extras=True)
    spark_types = dict(column.split(" ", 1) for column in spark_ddl(model).split(", "))
    checks = [_Check(QuarantineReason.MALFORMED_JSON, raw.isNull(), F.lit("not a JSON object"))]
    if "schema_version" in fields:
        # Required here although the model defaults it: every producer writes it, and a reader
        # must not guess the version of a record.
        versions = _allowed_values(hints["schema_version"]) or ()
        checks.append(
            _Check(
                QuarantineReason.WRONG_SCHEMA_VERSION,
                typed["schema_version"].isNull() | ~typed["schema_version"].isin(*versions),
                F.concat(
                    F.lit("schema_version "),
                    F.coalesce(F.substring(raw["schema_version"], 1, 20), F.lit("is missing")),
                    F.lit(f"; this job reads {', '.join(map(str, versions))}"),
                ),
            )
        )
    for name, field in fields.items():
        if field.is_required():
            checks.append(_Check(QuarantineReason.MISSING_FIELD, raw[name].isNull(), F.lit(f"{name} is missing")))
    for name in fields:
        detail = F.concat(F.lit(f"{name} = "), F.substring(raw[name], 1, 80), F.lit(f" is not a {spark_types[name]}"))
        checks.append(_Check(QuarantineReason.WRONG_TYPE, raw[name].isNotNull() & typed[name].isNull(), detail))
        if _unwrap_optional(hints[name]) in (datetime, AwareDatetime):
            checks.append(
                _Check(
                    QuarantineReason.WRONG_TYPE,
                    raw[name].isNotNull() & ~raw[name].rlike(UTC_OFFSET),
                    F.concat(F.lit(f"{name} = "), F.substring(raw[name], 1, 80), F.lit(" has no UTC offset")),
                )
            )
    for name, field in fields.items():
        checks.extend(_bound_checks(name, field, typed[name]))
    for name in fields:
        allowed = _allowed_values(hints[name])
        if allowed is None or name == "schema_version":
            continue
        checks.append(
            _Check(
                QuarantineReason.UNKNOWN_VALUE,
                typed[name].isNotNull() & ~typed[name].isin(*allowed),
                F.concat(
                    F.lit(f"{name} = "), F.substring(typed[name].cast("string"), 1, 80),
                    F.lit(f" is not one of {', '.join(map(str, allowed))}"),
                ),
            )
        )  # fmt: skip
    return checks


def future_check(event_time: Column, kafka_timestamp: Column, max_ahead: timedelta) -> _Check:
    """An event too far ahead of its own Kafka timestamp: a bad clock that would drag the watermark forward."""
    ahead = event_time > kafka_timestamp + F.expr(f"INTERVAL {int(max_ahead.total_seconds())} SECONDS")
    return _Check(
        QuarantineReason.FUTURE,
        ahead,
        F.concat(F.lit("event_time "), event_time.cast("string"), F.lit(" is ahead of the Kafka timestamp "),
                 kafka_timestamp.cast("string")),
    )  # fmt: skip


def late_check(event_time: Column, watermark_micros: int) -> _Check:
    """An event behind the watermark: its minute and hour are settled."""
    watermark = F.timestamp_micros(F.lit(watermark_micros))
    return _Check(
        QuarantineReason.LATE,
        event_time < watermark,
        F.concat(F.lit("event_time "), event_time.cast("string"), F.lit(" is behind the watermark "),
                 watermark.cast("string")),
    )  # fmt: skip


def classify_records(
    kafka_records: DataFrame, model: type[BaseModel], *, max_ahead: timedelta, event_time: str | None = EVENT_TIME
) -> DataFrame:
    """Every Kafka record with its typed fields (``_typed``), its origin and, when it is rejected,
    its ``reason`` and ``detail`` (both null for a valid record), for every check but the watermark's.
    ``event_time`` names the field the future check reads (None: no such check, as for refusals).

    The watermark, which moves every batch, is ``apply_watermark``'s: as a literal here it would make
    the generated code of these ~50 checks new in every batch, recompiled and run cold by the JVM
    (+0.5 s a batch of 200k records)."""
    text = F.col("value").cast("string")
    staged = kafka_records.select(
        F.col("key").cast("string").alias("kafka_key"),
        text.alias("raw_value"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.from_json(text, "map<string,string>").alias("_raw"),
        F.from_json(text, spark_ddl(model)).alias("_typed"),
    )
    typed = F.col("_typed")
    checks = schema_checks(model, F.col("_raw"), typed)
    if event_time is not None:
        checks.append(future_check(typed[event_time], F.col("kafka_timestamp"), max_ahead))
    reasoned = staged.select(
        "*", F.coalesce(*[F.when(check.failed, F.lit(check.reason.value)) for check in checks]).alias("reason")
    )
    # The checks run again only for the few rejected records, to say which value failed.
    detail = F.when(F.col("reason").isNotNull(), F.coalesce(*[F.when(check.failed, check.detail) for check in checks]))
    return reasoned.select("*", detail.alias("detail")).drop("_raw")


def apply_watermark(classified: DataFrame, watermark_micros: int | None) -> DataFrame:
    """Classified records with the valid ones behind the watermark rejected as ``late`` (the last check)."""
    if watermark_micros is None:
        return classified
    late = late_check(F.col("_typed")[EVENT_TIME], watermark_micros)
    newly_late = F.col("reason").isNull() & late.failed
    return classified.withColumns(
        {
            "reason": F.when(newly_late, F.lit(late.reason.value)).otherwise(F.col("reason")),
            "detail": F.when(newly_late, late.detail).otherwise(F.col("detail")),
        }
    )


def _field_value(model: type[BaseModel], name: str) -> Column:
    default = model.model_fields[name].default
    value = F.col("_typed")[name]
    # A missing optional field with a default (currency "USD") reads as the default, as in pydantic.
    if default not in (None, PydanticUndefined):
        value = F.coalesce(value, F.lit(default.value if isinstance(default, enum.Enum) else default))
    return value.alias(name)


def valid_events(
    classified: DataFrame,
    model: type[BaseModel],
    ingested_at: datetime,
    *,
    event_time: str = EVENT_TIME,
    date_column: str = "event_date",
) -> DataFrame:
    """The accepted records as silver rows: the model's fields, then their origin and the date of
    ``event_time`` (the partition column ``date_column``)."""
    return (
        classified.where(F.col("reason").isNull())
        .select(
            *[_field_value(model, name) for name in model.model_fields],
            *KAFKA_LINEAGE,
            F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
        )
        .withColumn(date_column, F.to_date(event_time))
    )


def quarantined_records(classified: DataFrame, ingested_at: datetime) -> DataFrame:
    """The rejected records with their reason, raw value and origin."""
    return classified.where(F.col("reason").isNotNull()).select(
        "reason", "detail", "raw_value", "kafka_key", *KAFKA_LINEAGE, "kafka_timestamp",
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )  # fmt: skip


def parse_records(
    kafka_records: DataFrame,
    model: type[BaseModel],
    *,
    ingested_at: datetime,
    watermark_micros: int | None,
    max_ahead: timedelta,
) -> tuple[DataFrame, DataFrame]:
    """Kafka records -> (valid silver rows, quarantined rows with reasons)."""
    classified = apply_watermark(classify_records(kafka_records, model, max_ahead=max_ahead), watermark_micros)
    return valid_events(classified, model, ingested_at), quarantined_records(classified, ingested_at)


def bronze_records(classified: DataFrame, ingested_at: datetime) -> DataFrame:
    """Every classified record as it came from Kafka: key and value as text, origin, Kafka timestamp, ingest time."""
    return classified.select(
        "kafka_key",
        F.col("raw_value").alias("value"),
        *KAFKA_LINEAGE,
        "kafka_timestamp",
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
        F.to_date(F.lit(ingested_at).cast("timestamp")).alias("ingest_date"),
    )


def first_per_key(events: DataFrame, key: str) -> DataFrame:
    """One row per ``key``: the copy that reached Kafka first (lowest partition, then offset)."""
    earliest = Window.partitionBy(key).orderBy(*KAFKA_LINEAGE)
    return events.withColumn("_copy", F.row_number().over(earliest)).where(F.col("_copy") == 1).drop("_copy")


# --- the stream's event-time clock ---


@dataclass(frozen=True)
class EventClock:
    """The stream's event time after batch ``batch_id``, kept between batches.

    ``watermark_micros`` is what that batch compared event times with, so a replay of the batch
    sees the same watermark; ``max_event_time_micros`` is the latest valid event time up to and
    including it. Both are epoch microseconds (no time-zone conversion on the way).
    """

    batch_id: int
    watermark_micros: int | None
    max_event_time_micros: int | None


def watermark_for(batch_id: int, clock: EventClock | None, delay: timedelta) -> int | None:
    """The watermark batch ``batch_id`` uses: ``delay`` behind the latest event time of the batches
    before it (None until an event was seen), as Spark's own watermark would be."""
    if clock is None:
        return None
    if clock.batch_id == batch_id:  # a replay of the batch the clock last recorded
        return clock.watermark_micros
    if clock.max_event_time_micros is None:
        return clock.watermark_micros
    return clock.max_event_time_micros - int(delay.total_seconds() * 1_000_000)


def advance_clock(
    clock: EventClock | None, batch_id: int, watermark_micros: int | None, batch_max_micros: int | None
) -> EventClock:
    latest = [m for m in (clock.max_event_time_micros if clock else None, batch_max_micros) if m is not None]
    return EventClock(batch_id, watermark_micros, max(latest) if latest else None)


# --- gold/kpi_minute ---


def as_money(micros: Column) -> Column:
    """Integer micros as an exact decimal(18,6) amount."""
    return (micros.cast("decimal(20,0)") / F.lit(MICROS_PER_UNIT)).cast(MONEY)


def _ratio(numerator: str, denominator: str) -> Column:
    return F.when(F.col(denominator) > 0, F.col(numerator) / F.col(denominator))


def kpi_by_minute(feedback_events: DataFrame) -> DataFrame:
    """One row per campaign x minute x device_type x channel x content_type (a missing dimension is
    "unknown"), from deduplicated feedback events.

    Invalid traffic is left out, as billing leaves it out (spark_jobs.ivt_transforms): impressions,
    clicks, conversions and video events count deliveries only (``is_delivered``), and the tagged
    impressions and clicks are counted apart (ivt_impressions, ivt_clicks).
    - spend: the sum of ``cost_micros`` (integers) of the events the ledger charged that are not
      invalid traffic, also as decimal(18,6) (an event it did not charge carries no cost anyway);
    - ctr = clicks / impressions; ad_completion_rate = video_completes / video_starts;
    - rpai (revenue per ad impression) = spend / impressions, decimal(18,6) rounded half-up;
    - ad_relevance_score: the mean pCTR the model gave the impressions served (those carrying one),
      how relevant the ranker judged its ads, to set against the realised CTR.
    Ratios are null where their denominator is zero.
    """

    def count_of(event_type: EventType, counted: Column) -> Column:
        return F.count(F.when((F.col("event_type") == event_type.value) & counted, True))

    delivered, ivt = is_delivered(), is_invalid_traffic()

    per_minute = feedback_events.groupBy(
        "campaign_id",
        F.date_trunc("minute", EVENT_TIME).alias("minute"),
        *[F.coalesce(F.col(dimension), F.lit(UNKNOWN)).alias(dimension) for dimension in KPI_DIMENSIONS],
    ).agg(
        count_of(EventType.IMPRESSION, delivered).alias("impressions"),
        count_of(EventType.CLICK, delivered).alias("clicks"),
        count_of(EventType.CONVERSION, delivered).alias("conversions"),
        count_of(EventType.VIDEO_START, delivered).alias("video_starts"),
        count_of(EventType.VIDEO_COMPLETE, delivered).alias("video_completes"),
        F.coalesce(F.sum(F.when(is_charged() & ~ivt, F.col("cost_micros"))), F.lit(0))
        .cast("bigint")
        .alias("spend_micros"),
        F.avg(F.when((F.col("event_type") == EventType.IMPRESSION.value) & delivered, F.col("pctr"))).alias(
            "ad_relevance_score"
        ),
        count_of(EventType.IMPRESSION, ivt).alias("ivt_impressions"),
        count_of(EventType.CLICK, ivt).alias("ivt_clicks"),
    )
    rpai = F.col("spend_micros").cast("decimal(20,0)") / (F.col("impressions") * MICROS_PER_UNIT)
    return per_minute.select(
        *KPI_KEY,
        "impressions", "clicks", "conversions", "video_starts", "video_completes", "spend_micros",
        as_money(F.col("spend_micros")).alias("spend"),
        _ratio("clicks", "impressions").alias("ctr"),
        _ratio("video_completes", "video_starts").alias("ad_completion_rate"),
        F.when(F.col("impressions") > 0, rpai.cast(MONEY)).alias("rpai"),
        "ad_relevance_score",
        "ivt_impressions", "ivt_clicks",
        F.to_date("minute").alias("event_date"),
    )  # fmt: skip


def touched_minutes(feedback_events: DataFrame) -> DataFrame:
    """The (campaign_id, minute) pairs a batch of events falls in."""
    return feedback_events.select("campaign_id", F.date_trunc("minute", EVENT_TIME).alias("minute")).distinct()


def kpi_for_minutes(silver_events: DataFrame, minutes: DataFrame) -> DataFrame:
    """The KPI rows of ``minutes`` (campaign_id, minute), recomputed from all of silver's events in them."""
    in_minutes = silver_events.withColumn("minute", F.date_trunc("minute", EVENT_TIME)).join(
        minutes, ["campaign_id", "minute"], "left_semi"
    )
    return kpi_by_minute(in_minutes.drop("minute"))
