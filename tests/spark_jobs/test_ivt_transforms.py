"""Invalid traffic tagged after the fact: a click-rate outlier's burst and a fast-clicked auction, in Spark
(spark_jobs.ivt_transforms, what billing and gold/ivt_hourly use) and in pandas (spark_jobs.ivt, what a run's
summary reads), each against the same tags worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from spark_jobs import ivt
from spark_jobs.ivt_transforms import tagged_between, with_later_ivt

pytestmark = pytest.mark.slow

T = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)
WINDOW_S = 300
SCHEMA = (
    "event_id string, event_type string, event_time timestamp, auction_id string, user_id string, ip string, "
    "ivt_category string, ivt_reason string"
)
SIVT, GIVT = "sivt", "givt"


def at(seconds: int) -> datetime:
    return T + timedelta(seconds=seconds)


# (event_id, event_type, time, auction_id, user_id, ip, ivt_category, ivt_reason) -> the tag expected after
EVENTS = [
    # u-spam's click at T is a user-rate outlier: its user's events less than 300 s from it, either side.
    (("s1", "click", at(0), "a1", "u-spam", "10.0.0.9", SIVT, "user_click_rate"), (SIVT, "user_click_rate")),
    (("b-299", "impression", at(-299), "a2", "u-spam", "10.0.0.9", None, None), (SIVT, "click_burst")),
    (("b-299", "impression", at(-299), "a2", "u-spam", "10.0.0.9", None, None), (SIVT, "click_burst")),  # a copy
    (("b-300", "impression", at(-300), "a3", "u-spam", None, None, None), (None, None)),  # 300 s: outside
    (("b+299", "click", at(299), "a4", "u-spam", None, None, None), (SIVT, "click_burst")),
    (("b+300", "impression", at(300), "a5", "u-spam", None, None, None), (None, None)),
    (("g1", "click", at(-10), "a6", "u-spam", None, GIVT, "duplicate_click"), (GIVT, "duplicate_click")),  # kept
    # A user's rate says nothing of the others behind its IP; an event without user or IP matches nothing.
    (("other", "impression", at(0), "a7", "u-human", "10.0.0.9", None, None), (None, None)),
    (("no-keys", "impression", at(0), "a8", None, None, None, None), (None, None)),
    # An IP-rate outlier: every user behind that IP, and only that IP.
    (("s2", "click", at(0), "a9", "u-nat-1", "192.0.2.7", SIVT, "ip_click_rate"), (SIVT, "ip_click_rate")),
    (("ip1", "impression", at(60), "a10", "u-nat-2", "192.0.2.7", None, None), (SIVT, "click_burst")),
    (("ip2", "impression", at(60), "a11", "u-nat-1", "192.0.2.8", None, None), (None, None)),
    # A fast click: its auction's other events were a script's, and so was its user's traffic around it.
    (("fi", "impression", at(1000), "a12", "u-f", None, None, None), (GIVT, "fast_click_auction")),
    (("fv", "video_start", at(1000), "a12", "u-f", None, None, None), (GIVT, "fast_click_auction")),
    (("fc", "click", at(1000), "a12", "u-f", None, GIVT, "fast_click"), (GIVT, "fast_click")),
    (("fo", "impression", at(1299), "a15", "u-f", None, None, None), (GIVT, "fast_clicker")),
    (("fo2", "impression", at(1300), "a16", "u-f", None, None, None), (None, None)),
    # In a burst and a fast-clicked auction (clicked by someone without a user id): the auction's tag wins.
    (("fb", "impression", at(100), "a13", "u-spam", None, None, None), (GIVT, "fast_click_auction")),
    (("fbc", "click", at(100), "a13", None, None, GIVT, "fast_click"), (GIVT, "fast_click")),
    # A human clicking now and then: nothing.
    (("h1", "impression", at(5), "a14", "u-h", "198.51.100.1", None, None), (None, None)),
    (("h2", "click", at(7), "a14", "u-h", "198.51.100.1", None, None), (None, None)),
]
EXPECTED = sorted((row[0], *tag) for row, tag in EVENTS)


def tags(rows) -> list[tuple]:
    return sorted((row[0], row[1], row[2]) for row in rows)


def test_spark_tags_bursts_and_fast_clicked_auctions(spark):
    frame = spark.createDataFrame([row for row, _ in EVENTS], SCHEMA)
    tagged = with_later_ivt(frame, frame, window_s=WINDOW_S)
    assert tagged.columns == frame.columns
    assert tags(tagged.select("event_id", "ivt_category", "ivt_reason").collect()) == EXPECTED


def test_spark_reads_the_deciding_clicks_outside_the_range_it_tags(spark):
    frame = spark.createDataFrame([row for row, _ in EVENTS], SCHEMA)
    # [T + 250 s, T + 400 s): the outlier click at T lies before it, and still puts b+299 in its burst.
    tagged = tagged_between(frame, at(250), at(400), window_s=WINDOW_S)
    assert tags(tagged.select("event_id", "ivt_category", "ivt_reason").collect()) == [
        ("b+299", SIVT, "click_burst"),
        ("b+300", None, None),
    ]
    # With a window too short to reach it, nothing.
    short = tagged_between(frame, at(250), at(400), window_s=200)
    assert tags(short.select("event_id", "ivt_category", "ivt_reason").collect()) == [
        ("b+299", None, None),
        ("b+300", None, None),
    ]


def test_pandas_tags_the_same_events_as_spark():
    columns = [column.split()[0] for column in SCHEMA.split(", ")]
    frame = pd.DataFrame([row for row, _ in EVENTS], columns=columns)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    tagged = ivt.with_later_ivt_frame(frame, window_s=WINDOW_S)
    assert len(tagged) == len(frame)
    rows = tagged[["event_id", "ivt_category", "ivt_reason"]].astype(object).where(tagged.notna(), None)
    assert tags(rows.itertuples(index=False)) == EXPECTED
    assert frame["ivt_reason"].isna().sum() == 16  # the input is left as it was: 21 rows, 5 tagged
