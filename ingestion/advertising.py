"""Parser for the Advertising dataset (`tbyrnes/advertising`, one file: advertising.csv).

Columns are found by header name, so copies with reordered columns still load.
Tolerated: a UTF-8 BOM, leading blank lines, CRLF or mixed endings, whitespace
around values. Timestamps are parsed strictly as ``%Y-%m-%d %H:%M:%S``; the one
documented fallback is the day-first form some copies carry (``27/03/2016 0:53``,
with or without seconds). Times are taken as UTC (the file has no zone).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pandas as pd

from ingestion.records import SOURCE_FILE, SOURCE_ROW, ParsedSource, Rejection, SourceError, truncate_raw
from ingestion.tables import ADVERTISING

# Real header -> bronze column.
COLUMNS = {
    "Daily Time Spent on Site": "daily_time_spent_on_site",
    "Age": "age",
    "Area Income": "area_income",
    "Daily Internet Usage": "daily_internet_usage",
    "Ad Topic Line": "ad_topic_line",
    "City": "city",
    "Male": "male",
    "Country": "country",
    "Timestamp": "timestamp",
    "Clicked on Ad": "clicked_on_ad",
}
FLOATS = ("daily_time_spent_on_site", "area_income", "daily_internet_usage")
FLAGS = ("male", "clicked_on_ad")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
DAY_FIRST_FORMATS = ("%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")


def decode(raw: bytes) -> str:
    """UTF-8 with or without BOM; undecodable bytes become U+FFFD rather than failing the file."""
    return raw.decode("utf-8-sig", errors="replace")


def parse_timestamp(text: str) -> datetime:
    for fmt in (TIMESTAMP_FORMAT, *DAY_FIRST_FORMATS):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"timestamp {text!r} matches neither {TIMESTAMP_FORMAT} nor day-first dd/mm/yyyy HH:MM")


def parse_flag(text: str) -> bool:
    if text in ("0", "1"):
        return text == "1"
    raise ValueError(f"expected 0 or 1, got {text!r}")


def _convert(column: str, text: str) -> object:
    if column in FLOATS:
        return float(text)
    if column == "age":
        return int(text)
    if column in FLAGS:
        return parse_flag(text)
    if column == "timestamp":
        return parse_timestamp(text)
    if not text:
        raise ValueError("empty text")
    return text


def header_positions(header: list[str], source_file: str) -> dict[str, int]:
    found = {name.strip(): position for position, name in enumerate(header)}
    missing = [name for name in COLUMNS if name not in found]
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        delimiter = ";" if ";" in header[0] else "tab"
        raise SourceError(
            f"{source_file}: expected a comma-delimited header, found {delimiter}-delimited {header[0]!r}"
        )
    if missing:
        raise SourceError(f"{source_file}: missing required column(s) {missing}; header was {header}")
    return {COLUMNS[name]: found[name] for name in COLUMNS}


def parse_advertising(raw: bytes, source_file: str) -> ParsedSource:
    """advertising.csv bytes -> typed rows; each unparseable row becomes a Rejection with its reason."""
    if not raw.strip():
        raise SourceError(f"{source_file}: the file is empty")
    records = csv.reader(io.StringIO(decode(raw), newline=""))
    parsed = ParsedSource(frames={})
    header: list[str] | None = None
    rows: list[dict[str, object]] = []
    record_number = 0
    for record in records:
        if not any(cell.strip() for cell in record):
            parsed.skipped["blank line"] += 1
            continue
        if header is None:
            header = record
            positions = header_positions(header, source_file)
            continue
        record_number += 1
        if len(record) != len(header):
            parsed.rejections.append(
                Rejection(
                    source_file,
                    record_number,
                    f"{len(record)} fields, expected {len(header)}",
                    truncate_raw(",".join(record)),
                )
            )
            continue
        row: dict[str, object] = {SOURCE_FILE: source_file, SOURCE_ROW: record_number}
        try:
            for column, position in positions.items():
                text = record[position].strip()
                try:
                    row[column] = _convert(column, text)
                except ValueError as exc:
                    raise ValueError(f"column {column}: {exc}") from None
        except ValueError as exc:
            parsed.rejections.append(Rejection(source_file, record_number, str(exc), truncate_raw(",".join(record))))
            continue
        rows.append(row)
    if header is None:
        raise SourceError(f"{source_file}: no header line found")
    parsed.frames[ADVERTISING.name] = pd.DataFrame(rows, columns=[*ADVERTISING.data_columns, SOURCE_FILE, SOURCE_ROW])
    return parsed
