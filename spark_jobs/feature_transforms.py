"""Pure transforms of the feature job (spark_jobs.features): gold features and the CTR training set,
taken as of each example's time. DataFrames in, DataFrame out: no I/O and no session here.

Documented rules:
- Rating-to-label (ADS-16): a rating of 4 or 5 is a click (label 1), 1 or 2 is not
  (label 0); 3 is ambiguous and left out of training.
- ADS-16 carries no time, so its examples are spread over the Advertising period
  (2016-01-01 .. 2016-07-24) by a hash of (user, ad): deterministic, and the
  time-based split cuts both sources alike.
- Point in time: every rate feature of an example (segment x category affinity,
  category CTR, ad CTR) uses only examples strictly earlier than it, smoothed
  toward a fixed prior (PRIOR_CTR with PRIOR_WEIGHT pseudo-examples), so no label
  from the example's own time or later leaks in. A test proves it.
- Logged examples (source ``logged``, dataset ``auctions``): every filled auction
  of silver/auctions whose ad was shown (an ``impression`` in silver/feedback_events)
  is one example at the auction's time; its label is 1 when a ``click`` on that
  auction arrives within ATTRIBUTION_WINDOW (30 min) of the impression, else 0.
  Clicks without an impression, and unfilled auctions, make no example.
- Serving features (gold/user_features, gold/ad_features) use all history: they
  are what the auction sees now.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from adstream.events import EventType
from ml.features import DATASET, EXAMPLE_ID, FEATURES, LABEL, LOGGED_SOURCE, SOURCE, TIME_COLUMN

PRIOR_CTR = 0.1
PRIOR_WEIGHT = 20.0
ADS16_PERIOD_START = "2016-01-01 00:00:00"
ADS16_PERIOD_SECONDS = 205 * 24 * 3600  # through 2016-07-24
UNKNOWN = "unknown"
ATTRIBUTION_WINDOW = timedelta(minutes=30)
# The training side's contract (ml.features) names the feature columns; this job adds the ids.
TRAINING_COLUMNS = (EXAMPLE_ID, SOURCE, DATASET, TIME_COLUMN, LABEL, "user_id", "ad_id", *FEATURES)


def age_band(age: Column) -> Column:
    return (
        F.when(age.isNull(), UNKNOWN)
        .when(age < 25, "18-24")
        .when(age < 35, "25-34")
        .when(age < 45, "35-44")
        .when(age < 55, "45-54")
        .otherwise("55+")
    )


def segment(gender: Column, age: Column) -> Column:
    """The demographic segment affinities are learned for: gender x age band."""
    return F.concat_ws("|", F.coalesce(gender, F.lit(UNKNOWN)), age_band(age))


def smoothed(clicks: Column, examples: Column) -> Column:
    return (F.coalesce(clicks, F.lit(0.0)) + PRIOR_CTR * PRIOR_WEIGHT) / (
        F.coalesce(examples, F.lit(0.0)) + PRIOR_WEIGHT
    )


def rating_label(rating: Column) -> Column:
    return F.when(rating >= 4, 1).when(rating <= 2, 0)


def ads16_examples(ratings: DataFrame, users: DataFrame) -> DataFrame:
    """ADS-16 ratings as labelled impressions of ADS-16 ads, with a hashed pseudo-time."""
    user_key = F.concat(F.lit("ads16-"), F.col("user_id"))
    spread = F.pmod(F.xxhash64(F.col("user_id"), F.col("ad_id")), F.lit(ADS16_PERIOD_SECONDS))
    start = F.unix_timestamp(F.lit(ADS16_PERIOD_START))
    return (
        ratings.where(rating_label(F.col("rating")).isNotNull())
        .select(
            F.concat_ws(":", F.lit("ads16"), F.col("user_id"), F.col("ad_id")).alias("example_id"),
            user_key.alias("user_id"),
            F.col("ad_id"),
            F.col("category_name").alias("ad_category"),
            F.timestamp_seconds(start + spread).alias("event_time"),
            rating_label(F.col("rating")).alias("label"),
            F.lit("bootstrap").alias("source"),
            F.lit("ads16").alias("dataset"),
            F.lit(None).cast("string").alias("device_type"),
        )
        .join(users, "user_id", "left")
    )


def advertising_examples(advertising: DataFrame, users: DataFrame) -> DataFrame:
    """Advertising rows as labelled impressions; the ad's category is not known."""
    return advertising.select(
        F.concat(F.lit("adv:"), F.col("source_row").cast("string")).alias("example_id"),
        F.concat(F.lit("adv-"), F.lpad(F.col("source_row").cast("string"), 6, "0")).alias("user_id"),
        F.concat(F.lit("adv-ad-"), F.col("source_row").cast("string")).alias("ad_id"),
        F.lit(UNKNOWN).alias("ad_category"),
        F.col("timestamp").alias("event_time"),
        F.col("clicked_on_ad").cast("int").alias("label"),
        F.lit("bootstrap").alias("source"),
        F.lit("advertising").alias("dataset"),
        F.lit(None).cast("string").alias("device_type"),
    ).join(users, "user_id", "left")


def logged_examples(auctions: DataFrame, feedback: DataFrame, users: DataFrame) -> DataFrame:
    """Served auctions as labelled impressions: clicked within the attribution window or not."""
    impressions = (
        feedback.where(F.col("event_type") == EventType.IMPRESSION.value)
        .groupBy("auction_id")
        .agg(F.min("event_time").alias("impression_time"))
    )
    clicks = feedback.where(F.col("event_type") == EventType.CLICK.value).select(
        "auction_id", F.col("event_time").alias("click_time")
    )
    attributed = (
        impressions.join(clicks, "auction_id", "left")
        .groupBy("auction_id", "impression_time")
        .agg(
            F.max(
                (
                    (F.col("click_time") >= F.col("impression_time"))
                    & (F.col("click_time") <= F.col("impression_time") + F.expr(_interval(ATTRIBUTION_WINDOW)))
                ).cast("int")
            ).alias("label")
        )
    )
    served = auctions.where(F.col("filled") & F.col("ad_id").isNotNull()).dropDuplicates(["auction_id"])
    return (
        served.join(attributed, "auction_id")
        .select(
            F.concat(F.lit("auction:"), F.col("auction_id")).alias("example_id"),
            "user_id",
            "ad_id",
            F.coalesce(F.col("ad_category"), F.lit(UNKNOWN)).alias("ad_category"),
            "event_time",
            F.coalesce(F.col("label"), F.lit(0)).alias("label"),
            F.lit(LOGGED_SOURCE).alias("source"),
            F.lit("auctions").alias("dataset"),
            "device_type",
        )
        .join(users, "user_id", "left")
    )


def _interval(delta: timedelta) -> str:
    return f"INTERVAL {int(delta.total_seconds())} SECONDS"


def _rate_before(examples: DataFrame, keys: list[str], name: str) -> DataFrame:
    """Adds ``name``: the smoothed click rate of earlier examples sharing ``keys`` (strictly before)."""
    # Ties on event_time must not see each other: aggregate per (keys, time) first, then
    # accumulate over strictly earlier times only.
    per_time = examples.groupBy(*keys, "event_time").agg(
        F.sum("label").cast("double").alias("_clicks"), F.count("*").cast("double").alias("_n")
    )
    earlier = Window.partitionBy(*keys).orderBy("event_time").rowsBetween(Window.unboundedPreceding, -1)
    rates = per_time.select(
        *keys,
        "event_time",
        smoothed(F.sum("_clicks").over(earlier), F.sum("_n").over(earlier)).alias(name),
    )
    return examples.join(rates, [*keys, "event_time"], "left")


def build_training_set(
    advertising: DataFrame,
    ratings: DataFrame,
    users: DataFrame,
    auctions: DataFrame | None = None,
    feedback: DataFrame | None = None,
) -> DataFrame:
    """Bootstrap examples, and logged ones given the auction log and feedback, with every rate feature
    as of the example's time."""
    user_columns = users.select(
        "user_id", "age", "gender", "income_band", "country",
        "daily_time_spent_on_site", "daily_internet_usage", "area_income",
    )  # fmt: skip
    examples = advertising_examples(advertising, user_columns).unionByName(ads16_examples(ratings, user_columns))
    if auctions is not None and feedback is not None:
        examples = examples.unionByName(logged_examples(auctions, feedback, user_columns))
    examples = examples.withColumn("segment", segment(F.col("gender"), F.col("age")))
    examples = _rate_before(examples, ["segment", "ad_category"], "category_affinity")
    examples = _rate_before(examples, ["ad_category"], "category_ctr_smoothed")
    examples = _rate_before(examples, ["ad_id"], "ad_ctr_smoothed")
    return examples.select(
        "example_id",
        "source",
        "dataset",
        "event_time",
        F.col("label").cast("int").alias("label"),
        "user_id",
        "ad_id",
        F.col("age").cast("double").alias("age"),
        "daily_time_spent_on_site",
        "daily_internet_usage",
        "area_income",
        "category_affinity",
        "ad_ctr_smoothed",
        "category_ctr_smoothed",
        F.hour("event_time").alias("hour_of_day"),
        F.dayofweek("event_time").alias("day_of_week"),
        F.coalesce(F.col("gender"), F.lit(UNKNOWN)).alias("gender"),
        F.coalesce(F.col("income_band"), F.lit(UNKNOWN)).alias("income_band"),
        F.coalesce(F.col("country"), F.lit(UNKNOWN)).alias("country"),
        "ad_category",
        "device_type",
    )


def segment_affinities(ratings: DataFrame, users: DataFrame) -> DataFrame:
    """Serving view: smoothed click rate per (segment, category) over all ADS-16 ratings."""
    labelled = ads16_examples(ratings, users.select("user_id", "age", "gender"))
    return (
        labelled.withColumn("segment", segment(F.col("gender"), F.col("age")))
        .groupBy("segment", "ad_category")
        .agg(smoothed(F.sum("label"), F.count("*")).alias("affinity"))
    )


def build_user_features(users: DataFrame, affinities: DataFrame) -> DataFrame:
    """One serving row per user, with the affinity map of the user's segment."""
    per_segment = affinities.groupBy("segment").agg(
        F.map_from_entries(F.collect_list(F.struct("ad_category", "affinity"))).alias("category_affinity")
    )
    return (
        users.withColumn("segment", segment(F.col("gender"), F.col("age")))
        .withColumn("age_band", age_band(F.col("age")))
        .join(per_segment, "segment", "left")
        .select(
            "user_id", "source", "age", "age_band", "gender", "income_band", "country", "segment",
            "daily_time_spent_on_site", "daily_internet_usage", "area_income",
            F.size("interests").alias("interest_count"),
            F.coalesce("category_affinity", F.create_map().cast("map<string,double>")).alias("category_affinity"),
        )
    )  # fmt: skip


def build_ad_features(ads: DataFrame, training_set: DataFrame, feedback: DataFrame | None = None) -> DataFrame:
    """One serving row per ad: category and smoothed CTRs from all labelled history (bootstrap and
    attributed auctions), plus the raw impression and click counts the feedback stream has logged."""
    by_ad = training_set.groupBy("ad_id").agg(smoothed(F.sum("label"), F.count("*")).alias("ad_ctr_smoothed"))
    by_category = training_set.groupBy(F.col("ad_category").alias("category")).agg(
        smoothed(F.sum("label"), F.count("*")).alias("category_ctr_smoothed")
    )
    if feedback is not None:
        counts = feedback.groupBy("ad_id").agg(
            F.count_distinct(F.when(F.col("event_type") == EventType.IMPRESSION.value, F.col("auction_id")))
            .alias("logged_impressions"),
            F.count_distinct(F.when(F.col("event_type") == EventType.CLICK.value, F.col("auction_id")))
            .alias("logged_clicks"),
        )  # fmt: skip
        counted = ads.join(counts, "ad_id", "left")
    else:
        counted = ads.withColumn("logged_impressions", F.lit(None)).withColumn("logged_clicks", F.lit(None))
    return (
        counted.join(by_ad, "ad_id", "left")
        .join(by_category, "category", "left")
        .select(
            "ad_id", "source", "category", "title", "image_path",
            F.coalesce("ad_ctr_smoothed", F.lit(PRIOR_CTR)).alias("ad_ctr_smoothed"),
            F.coalesce("category_ctr_smoothed", F.lit(PRIOR_CTR)).alias("category_ctr_smoothed"),
            F.coalesce(F.col("logged_impressions").cast("long"), F.lit(0)).alias("logged_impressions"),
            F.coalesce(F.col("logged_clicks").cast("long"), F.lit(0)).alias("logged_clicks"),
        )
    )  # fmt: skip


def in_interval(frame: DataFrame, start: datetime | None, end: datetime | None) -> DataFrame:
    if start is not None:
        frame = frame.where(F.col("event_time") >= F.lit(start))
    if end is not None:
        frame = frame.where(F.col("event_time") < F.lit(end))
    return frame
