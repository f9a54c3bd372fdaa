"""advertising.csv: by header name, tolerant of the quirks of copies in the wild, strict otherwise."""

from datetime import UTC, datetime

import pytest

from ingestion.advertising import parse_advertising, parse_timestamp
from ingestion.records import SourceError

HEADER = (
    "Daily Time Spent on Site,Age,Area Income,Daily Internet Usage,Ad Topic Line,City,Male,Country,Timestamp,"
    "Clicked on Ad"
)
ROW_1 = "68.95,35,61833.9,256.09,Cloned fifth-generation orchestration,Wrightburgh,0,Tunisia,2016-03-27 00:53:11,0"
ROW_2 = '80.23,31,68441.85,193.77,Monitored national standardization,West Jodi,1,"Korea (North)",2016-04-04 01:39:02,1'


def parse(text: str | bytes):
    raw = text.encode() if isinstance(text, str) else text
    return parse_advertising(raw, "advertising/advertising.csv")


def test_clean_file_gives_typed_snake_case_rows_with_lineage():
    parsed = parse(f"{HEADER}\n{ROW_1}\n{ROW_2}\n")
    frame = parsed.frames["advertising"]
    assert list(frame.columns) == [
        "daily_time_spent_on_site",
        "age",
        "area_income",
        "daily_internet_usage",
        "ad_topic_line",
        "city",
        "male",
        "country",
        "timestamp",
        "clicked_on_ad",
        "source_file",
        "source_row",
    ]
    first = frame.iloc[0]
    assert first.daily_time_spent_on_site == 68.95 and first.age == 35 and first.area_income == 61833.9
    assert frame.male.tolist() == [False, True] and frame.clicked_on_ad.tolist() == [False, True]
    assert first.timestamp == datetime(2016, 3, 27, 0, 53, 11, tzinfo=UTC)
    assert frame.iloc[1].country == "Korea (North)"
    assert list(frame.source_row) == [1, 2]
    assert set(frame.source_file) == {"advertising/advertising.csv"}
    assert parsed.rejections == []


def test_bom_leading_blank_line_crlf_and_whitespace_around_flags_are_tolerated():
    quirky = "68.95, 35 ,61833.9,256.09,Cloned orchestration,Wrightburgh, 0 ,Tunisia,2016-03-27 00:53:11, 1 "
    raw = b"\xef\xbb\xbf\r\n" + f"{HEADER}\r\n{quirky}\r\n{ROW_2}\n".encode()
    parsed = parse(raw)
    frame = parsed.frames["advertising"]
    assert len(frame) == 2 and parsed.rejections == []
    assert frame.male.tolist() == [False, True] and frame.clicked_on_ad.tolist() == [True, True]
    assert frame.age.tolist() == [35, 31]
    assert parsed.skipped["blank line"] == 1


def test_columns_are_found_by_name_in_any_order():
    columns = HEADER.split(",")
    values = ROW_1.split(",")
    order = list(reversed(range(len(columns))))
    text = ",".join(columns[i] for i in order) + "\n" + ",".join(values[i] for i in order) + "\n"
    frame = parse(text).frames["advertising"]
    assert frame.iloc[0].city == "Wrightburgh" and frame.iloc[0].age == 35


def test_day_first_timestamps_are_the_documented_fallback():
    assert parse_timestamp("27/03/2016 0:53") == datetime(2016, 3, 27, 0, 53, tzinfo=UTC)
    assert parse_timestamp("2016-03-27 00:53:11") == datetime(2016, 3, 27, 0, 53, 11, tzinfo=UTC)
    with pytest.raises(ValueError, match="matches neither"):
        parse_timestamp("03-27-2016 00:53")


def test_bad_rows_are_rejected_with_a_reason_and_the_rest_kept():
    bad_flag = ROW_1.replace(",0,Tunisia", ",2,Tunisia")
    bad_time = ROW_2.replace("2016-04-04 01:39:02", "yesterday")
    short = "68.95,35,61833.9"
    parsed = parse(f"{HEADER}\n{ROW_1}\n{bad_flag}\n{bad_time}\n{short}\n")
    assert len(parsed.frames["advertising"]) == 1
    reasons = {r.source_row: r.reason for r in parsed.rejections}
    assert reasons[2] == "column male: expected 0 or 1, got '2'"
    assert reasons[3].startswith("column timestamp: timestamp 'yesterday' matches neither")
    assert reasons[4] == "3 fields, expected 10"
    assert all(r.raw for r in parsed.rejections)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        (HEADER.replace(",", ";") + "\n" + ROW_1.replace(",", ";") + "\n", "expected a comma-delimited header"),
        (HEADER.replace("Age,", "") + "\n", r"missing required column\(s\) \['Age'\]"),
    ],
)
def test_unusable_files_fail_naming_the_file(text, message):
    with pytest.raises(SourceError, match=message) as failure:
        parse(text)
    assert "advertising/advertising.csv" in str(failure.value)
