"""Amazon CSVs: every quirk of the real crawl is parsed or counted, never silently lost."""

import pytest

from ingestion.amazon import category_from_path, parse_amazon_file
from ingestion.records import SourceError

PATH = "amazon/scrapped_data/scrapped_data/electronics__monitors/amazon_electronics_monitors.csv"


def parse(raw: bytes, path: str = PATH):
    return parse_amazon_file(raw, path)


def titles(parsed) -> list[str]:
    return list(parsed.frames["amazon_ads"]["ad_text"])


def test_department_and_subdepartment_come_from_the_folder():
    assert category_from_path(PATH) == ("electronics", "monitors")
    nested = "amazon/scrapped_data/scrapped_data/home__kitchen/cookware/amazon_home_kitchen_cookware.csv"
    assert category_from_path(nested) == ("home", "kitchen/cookware")
    assert category_from_path("amazon/scrapped_data/scrapped_data/books/amazon_books.csv") == ("books", None)


def test_plain_file_keeps_record_numbers_and_lineage():
    parsed = parse(b'ad\n"Dell P Series 27-Inch Monitor (P2719H), Black"\nLogitech Mouse\n')
    frame = parsed.frames["amazon_ads"]
    assert titles(parsed) == ["Dell P Series 27-Inch Monitor (P2719H), Black", "Logitech Mouse"]
    assert list(frame.source_row) == [1, 2]
    assert set(frame.department) == {"electronics"} and set(frame.subdepartment) == {"monitors"}
    assert set(frame.source_file) == {PATH}


def test_nul_padding_is_stripped_and_counted():
    parsed = parse(b"ad\nMonitor A\nMonitor B\n" + b"\x00" * 150_000)
    assert titles(parsed) == ["Monitor A", "Monitor B"]
    assert parsed.skipped["NUL bytes stripped"] == 150_000


def test_tab_ad_header_is_recognised_and_any_other_header_still_gives_column_0():
    parsed = parse(b"\tad\nMonitor A\n")
    assert titles(parsed) == ["Monitor A"] and not parsed.skipped and not parsed.rejections
    parsed = parse(b"title\nMonitor A\n")
    assert titles(parsed) == ["Monitor A"]
    assert parsed.skipped["unexpected header ['title'], column 0 taken as the title"] == 1


def test_repeated_headers_and_empty_rows_are_skipped_with_counts():
    parsed = parse(b"ad\nMonitor A\n\nad\nMonitor B\n\n\nad\n")
    assert titles(parsed) == ["Monitor A", "Monitor B"]
    assert parsed.skipped["repeated header"] == 2
    assert parsed.skipped["empty row"] == 3
    assert list(parsed.frames["amazon_ads"].source_row) == [1, 4]


def test_quoted_newlines_doubled_quotes_and_mixed_line_endings():
    raw = b'ad\r\n"Desk Lamp,\nLED"\r\n"Dell 27"" Monitor"\nPlain\r\n'
    assert titles(parse(raw)) == ["Desk Lamp,\nLED", 'Dell 27" Monitor', "Plain"]


def test_duplicate_titles_are_kept_as_separate_records():
    assert titles(parse(b"ad\nSame Title\nSame Title\n")) == ["Same Title", "Same Title"]


def test_undecodable_bytes_are_replaced_and_counted():
    parsed = parse("ad\nCafé Press\n".encode() + b"Bad \xff byte\n")
    assert titles(parsed) == ["Café Press", "Bad \ufffd byte"]
    assert parsed.skipped["undecodable bytes replaced"] == 1


def test_a_row_with_extra_fields_is_rejected_not_truncated():
    parsed = parse(b"ad\nGood title\nbroken,row,here\n")
    assert titles(parsed) == ["Good title"]
    (rejection,) = parsed.rejections
    assert (rejection.source_row, rejection.reason, rejection.raw) == (2, "3 fields, expected 1", "broken,row,here")


def test_an_empty_file_is_an_error_naming_it():
    with pytest.raises(SourceError, match="the file is empty") as failure:
        parse(b"\x00\x00\n")
    assert PATH in str(failure.value)
