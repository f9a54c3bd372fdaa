"""Parser for Amazon's advertisements (`sachsene/amazons-advertisements`).

Layout: ``scrapped_data/scrapped_data/<dept>__<subdept>/amazon_<dept>[_<sub>…].csv``,
one column of product titles under a header that is usually ``ad`` (one real file
has ``\\tad``). The category exists only in the folder name.

Real-file quirks handled: NUL padding (stripped before parsing, as Python's csv
rejects NULs), quoted fields with newlines and doubled quotes (a real CSV parser),
mixed CRLF/LF endings, the ``ad`` header repeated mid-file by appended crawl runs
and empty rows (both counted as skipped, not data), undecodable bytes (replaced).
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath

import pandas as pd

from ingestion.records import SOURCE_FILE, SOURCE_ROW, ParsedSource, Rejection, SourceError, truncate_raw
from ingestion.tables import AMAZON_ADS

HEADER = "ad"
CORPUS_PREFIX = ("scrapped_data", "scrapped_data")

# Titles reach ~900 characters; a quoted field left open by a broken file must not
# swallow the rest of the file, so cap a field well above any real title.
csv.field_size_limit(1_000_000)


def category_from_path(relative_path: str) -> tuple[str, str | None]:
    """``…/scrapped_data/scrapped_data/computers__monitors/x.csv`` -> ("computers", "monitors")."""
    parts = PurePosixPath(relative_path).parts
    for start in range(len(parts) - 1):
        if parts[start : start + 2] == CORPUS_PREFIX:
            folders = parts[start + 2 : -1]
            break
    else:
        folders = parts[:-1][-1:]
    if not folders:
        raise SourceError(f"{relative_path}: not inside a <department>__<subdepartment> folder")
    department, _, subdepartment = folders[0].partition("__")
    # Deeper nested folders refine the subdepartment rather than being lost.
    nested = "/".join(folders[1:])
    subdepartment = "/".join(part for part in (subdepartment, nested) if part) or None
    return department, subdepartment


def parse_amazon_file(raw: bytes, source_file: str) -> ParsedSource:
    """One Amazon CSV -> rows of (department, subdepartment, ad_text) with lineage."""
    parsed = ParsedSource(frames={})
    department, subdepartment = category_from_path(source_file)
    nul_count = raw.count(b"\x00")
    if nul_count:
        parsed.skipped["NUL bytes stripped"] += nul_count
        raw = raw.replace(b"\x00", b"")
    if not raw.strip():
        raise SourceError(f"{source_file}: the file is empty")
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        parsed.skipped["undecodable bytes replaced"] += text.count("\ufffd")

    titles: list[str] = []
    record_numbers: list[int] = []
    records = csv.reader(io.StringIO(text, newline=""))
    header = next(records, None)
    if header is None or len(header) != 1 or header[0].strip() != HEADER:
        parsed.skipped[f"unexpected header {header!r}, column 0 taken as the title"] += 1
    try:
        for record_number, record in enumerate(records, start=1):
            if len(record) == 1:
                title = record[0].strip()
                if not title:
                    parsed.skipped["empty row"] += 1
                elif title == HEADER:
                    parsed.skipped["repeated header"] += 1
                else:
                    titles.append(title)
                    record_numbers.append(record_number)
            elif not record or not any(cell.strip() for cell in record):
                parsed.skipped["empty row"] += 1
            else:
                parsed.rejections.append(
                    Rejection(
                        source_file, record_number, f"{len(record)} fields, expected 1", truncate_raw(",".join(record))
                    )
                )
    except csv.Error as exc:
        # The rows before the break are good; the rest of the file cannot be trusted.
        parsed.rejections.append(Rejection(source_file, None, f"CSV error after record {len(titles)}: {exc}"))

    size = len(titles)
    parsed.frames[AMAZON_ADS.name] = pd.DataFrame(
        {
            "department": pd.Series([department] * size, dtype="string"),
            "subdepartment": pd.Series([subdepartment] * size, dtype="string"),
            "ad_text": pd.Series(titles, dtype="string"),
            SOURCE_FILE: pd.Series([source_file] * size, dtype="string"),
            SOURCE_ROW: pd.Series(record_numbers, dtype="int64"),
        }
    )
    return parsed
