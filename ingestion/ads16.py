"""Parse the ADS-16 dataset (``groffo/ads16-dataset``) into users, ratings and ad-catalog frames.

Layout as unzipped from Kaggle (the folder names really are doubled)::

    <root>/ADS16_Benchmark_part<p>/ADS16_Benchmark_part<p>/Ads/Ads/<k>/<n>.png
    <root>/ADS16_Benchmark_part<p>/ADS16_Benchmark_part<p>/Corpus/Corpus/U<nnnn>/U<nnnn>-<KIND>.csv

Ad folder ``k`` holds category ``k-1`` and image ``n.png`` is position ``n-1``. Each user folder
holds INF (demographics), PREF (preferences), B5 (TIPI personality), RT (300 ad ratings) and
IM-POS / IM-NEG (captions of images the user liked / disliked). Every CSV is ``;``-delimited with
``"`` quotes and may carry a BOM, leading blank lines, CRLF endings, HTML entities, U+200E marks
and undecodable bytes. A value that cannot be used becomes a ``Rejection``; a file that is unusable
as a whole makes the granular parsers raise ``SourceError``, which the folder parser records as a
file-level ``Rejection``. Zipped copies, PDFs and other stray files are counted in ``skipped``.

Personal data is dropped on purpose: INF.csv's ``Name``, ``Last Name`` and ``Paypal`` columns
are never read into any frame.

Everything here is pure: files are read, and nothing else happens (no clock, Spark or network).
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Generic, TypeVar

import pandas as pd

from adstream.taxonomy import ADS16_CATEGORIES, ADS_PER_CATEGORY
from ingestion.records import SOURCE_FILE, SOURCE_ROW, ParsedSource, Rejection, SourceError, truncate_raw

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

USERS_TABLE = "ads16_users"
RATINGS_TABLE = "ads16_ratings"
ADS_TABLE = "ads16_ads"

# Pandas nullable dtypes; "object" columns hold Python lists of strings.
USERS_SCHEMA: dict[str, str] = {
    "user_id": "string",
    "gender": "string",
    "age": "Int64",
    "zip_code": "string",
    "home_town": "string",
    "home_country": "string",
    "countries_visited": "object",
    "job_type": "string",
    "weekly_working_hours": "string",
    "income": "Int64",
    "timepass": "object",
    "fave_sports": "object",
    "most_visited_websites": "object",
    "most_listened_musics": "object",
    "most_watched_movies": "object",
    "most_watched_tv_programmes": "object",
    "most_read_books": "object",
    **{f"tipi_{question}": "Int64" for question in range(1, 11)},
    "positive_captions": "object",
    "negative_captions": "object",
    SOURCE_FILE: "string",
    SOURCE_ROW: "Int64",
}
RATINGS_SCHEMA: dict[str, str] = {
    "user_id": "string",
    "category_index": "Int64",
    "category_name": "string",
    "position": "Int64",
    "ad_id": "string",
    "rating": "Int64",
    SOURCE_FILE: "string",
    SOURCE_ROW: "Int64",
}
ADS_SCHEMA: dict[str, str] = {
    "ad_id": "string",
    "category_index": "Int64",
    "category_name": "string",
    "position": "Int64",
    "image_path": "string",
    SOURCE_FILE: "string",
    SOURCE_ROW: "Int64",
}
_LIST_COLUMNS = frozenset(column for column, dtype in USERS_SCHEMA.items() if dtype == "object")

# Output column -> INF.csv header. Name, Last Name and Paypal are deliberately absent.
_DEMOGRAPHIC_HEADERS: dict[str, str] = {
    "gender": "Gender",
    "age": "Age",
    "zip_code": "Cap/Zip-Code",
    "home_town": "Home town",
    "home_country": "Home country",
    "countries_visited": "Countries visited",
    "job_type": "Type of Job",
    "weekly_working_hours": "Weekly working hours",
    "income": "Income",
    "timepass": "Timepass",
    "fave_sports": "Fave Sports",
}
_PREFERENCE_HEADERS: dict[str, str] = {
    "most_visited_websites": "Most visited websites",
    "most_listened_musics": "Most listened musics",
    "most_watched_movies": "Most watched movies",
    "most_watched_tv_programmes": "Most watched tv programmes",
    "most_read_books": "Most read books",
}
_INTEGER_DEMOGRAPHICS = frozenset({"age", "income"})
_GENDERS = frozenset({"F", "M"})
_TIPI_QUESTIONS = range(1, 11)
_TIPI_ANSWERS = range(-2, 3)
_RATINGS = range(1, 6)

_PART_GLOB = "ADS16_Benchmark_part*"
_USER_FOLDER = re.compile(r"U\d+")
_AD_IMAGE = re.compile(r"(\d+)\.png", re.IGNORECASE)
_CATEGORY_HEADER = re.compile(r"cat ?(\d+)")
_CAPTION_HEADER = re.compile(r"((?:un)?fave) ?(\d+)")
_INTEGER = re.compile(r"[+-]?\d+")
_WHITESPACE_RUN = re.compile(r"\s+")
_INVISIBLE_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\ufeff"))  # LRM, RLM, BOM / zero-width no-break space

T = TypeVar("T")


@dataclass
class ParsedFile(Generic[T]):
    """What one user CSV yielded: its value, plus what was rejected or skipped on the way."""

    value: T
    rejections: list[Rejection] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def ads16_ad_id(category_index: int, position: int) -> str:
    """Stable ad id from category index (0..19) and position in the category (0..14)."""
    return f"ads16-{category_index:02d}-{position:02d}"


def clean_text(text: str) -> str:
    """Unescape HTML entities, drop direction marks and BOMs, collapse whitespace runs, strip."""
    text = html.unescape(text).translate(_INVISIBLE_MARKS)
    return _WHITESPACE_RUN.sub(" ", text).strip()


def split_multi_select(text: str) -> list[str]:
    """Split a multi-select answer on commas outside parentheses, cleaning each item and dropping empties."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    # Unescape before splitting so that entity-encoded parentheses still count.
    for char in clean_text(text):
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def read_csv_records(raw: bytes, source_file: str) -> ParsedFile[list[list[str]]]:
    """Decode an ADS-16 CSV and split it into ';'-delimited records, skipping blank lines."""
    rejections: list[Rejection] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        text = raw.decode("utf-8", errors="replace")
        context = raw[max(err.start - 40, 0) : err.start + 40].decode("utf-8", errors="replace")
        rejections.append(
            Rejection(
                source_file,
                None,
                f"undecodable bytes at offset {err.start} replaced with U+FFFD; values kept",
                truncate_raw(context),
            )
        )
    skipped: Counter[str] = Counter()
    records: list[list[str]] = []
    try:
        for record in csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), delimiter=";", quotechar='"'):
            # A row of empty cells (";;;;") is data, e.g. a user who wrote no captions; an empty line is not.
            if len(record) <= 1 and not "".join(record).strip():
                skipped["blank line"] += 1
            else:
                records.append(record)
    except csv.Error as err:
        raise SourceError(f"{_file_name(source_file)} is not a readable CSV: {err}") from err
    return ParsedFile(records, rejections, skipped)


def parse_demographics_csv(raw: bytes, source_file: str) -> ParsedFile[dict[str, object]]:
    """INF.csv (one header, one data row, read by header name) -> demographic fields of a user row."""
    record = _read_single_record(raw, source_file, _DEMOGRAPHIC_HEADERS)
    fields = _empty_fields(_DEMOGRAPHIC_HEADERS)
    rejections = record.rejections
    for column, cell in record.value.items():
        label = _DEMOGRAPHIC_HEADERS[column]
        value = clean_text(cell)
        if column in _LIST_COLUMNS:
            fields[column] = split_multi_select(cell)
        elif not value:
            fields[column] = None
        elif column in _INTEGER_DEMOGRAPHICS:
            number = _parse_int(value)
            fields[column] = number
            if number is None:
                rejections.append(Rejection(source_file, 1, f"{label} {value!r} is not an integer", truncate_raw(cell)))
        elif column == "gender":
            gender = value.upper()
            fields[column] = gender if gender in _GENDERS else None
            if gender not in _GENDERS:
                rejections.append(Rejection(source_file, 1, f"{label} {value!r} is not F or M", truncate_raw(cell)))
        else:
            fields[column] = value
    return ParsedFile(fields, rejections, record.skipped)


def parse_preferences_csv(raw: bytes, source_file: str) -> ParsedFile[dict[str, object]]:
    """PREF.csv (one header, one data row, read by header name) -> five multi-select lists."""
    record = _read_single_record(raw, source_file, _PREFERENCE_HEADERS)
    fields = _empty_fields(_PREFERENCE_HEADERS)
    fields.update({column: split_multi_select(cell) for column, cell in record.value.items()})
    return ParsedFile(fields, record.rejections, record.skipped)


def parse_big_five_csv(raw: bytes, source_file: str) -> ParsedFile[dict[str, object]]:
    """B5.csv (``Question#;Answer``, ten TIPI items answered -2..2) -> ``tipi_1`` .. ``tipi_10``."""
    table = read_csv_records(raw, source_file)
    name = _file_name(source_file)
    if not table.value:
        raise SourceError(f"{name} is empty")
    header, *rows = table.value
    question_col = _find_column(header, "Question#", name)
    answer_col = _find_column(header, "Answer", name)
    rejections = table.rejections
    answers: dict[int, int | None] = {}
    for record_no, row in enumerate(rows, start=1):
        raw_row = truncate_raw(";".join(row))
        question = _parse_int(clean_text(_cell(row, question_col)))
        if question not in _TIPI_QUESTIONS:
            rejections.append(Rejection(source_file, record_no, "question number is not 1..10", raw_row))
            continue
        if question in answers:
            rejections.append(Rejection(source_file, record_no, f"question {question} answered twice", raw_row))
            continue
        answer = _parse_int(clean_text(_cell(row, answer_col)))
        answers[question] = answer if answer in _TIPI_ANSWERS else None
        if answers[question] is None:
            reason = f"answer to question {question} is not an integer in -2..2"
            rejections.append(Rejection(source_file, record_no, reason, raw_row))
    for question in _TIPI_QUESTIONS:
        if question not in answers:
            rejections.append(Rejection(source_file, None, f"question {question} missing from {name}"))
    return ParsedFile(
        {f"tipi_{question}": answers.get(question) for question in _TIPI_QUESTIONS}, rejections, table.skipped
    )


def parse_image_captions_csv(raw: bytes, source_file: str) -> ParsedFile[list[str]]:
    """IM-POS.csv / IM-NEG.csv -> captions (line 3) in fave<n> / unfave<n> order.

    Captions are matched to images by column position only: the image-paths row (line 2) of some
    users was copied from another user, so it is never read.
    """
    table = read_csv_records(raw, source_file)
    name = _file_name(source_file)
    if len(table.value) < 3:
        raise SourceError(f"{name} has no captions line (expected header, image paths, captions)")
    header, _paths, captions_row, *extra = table.value
    rejections = table.rejections
    columns: dict[int, int] = {}  # image number n -> column index
    prefix = "fave"
    for col, label in enumerate(header):
        match = _CAPTION_HEADER.fullmatch(_header_key(label))
        if match is None:
            if _header_key(label):
                rejections.append(Rejection(source_file, None, f"column {label!r} in {name} is not fave<n>/unfave<n>"))
            continue
        prefix, number = match[1], int(match[2])
        if number in columns:
            rejections.append(Rejection(source_file, None, f"column {prefix}{number} repeated in {name}"))
            continue
        columns[number] = col
    for number in range(1, max(columns, default=0) + 1):
        if number not in columns:
            rejections.append(Rejection(source_file, None, f"column '{prefix}{number}' missing from {name}"))
    # Captions are data record 2 (record 1 is the paths row).
    for col in range(len(header), len(captions_row)):
        if clean_text(captions_row[col]):
            reason = f"caption in column {col + 1} of {name} has no header"
            rejections.append(Rejection(source_file, 2, reason, truncate_raw(captions_row[col])))
    for record_no, row in enumerate(extra, start=3):
        rejections.append(Rejection(source_file, record_no, f"unexpected extra line in {name}", _joined(row)))
    captions = [clean_text(_cell(captions_row, columns[number])) for number in sorted(columns)]
    return ParsedFile([caption for caption in captions if caption], rejections, table.skipped)


def parse_ratings_csv(raw: bytes, source_file: str, user_id: str) -> ParsedFile[pd.DataFrame]:
    """RT.csv -> 300 rating rows: header Cat0..Cat19, the 20 category names, then 20 cells of 15 ratings.

    A cell that does not hold exactly 15 values cannot be lined up with ads, so all 15 of its slots
    are rejected; a single non-integer or out-of-range value rejects only its own slot.
    """
    table = read_csv_records(raw, source_file)
    name = _file_name(source_file)
    if not table.value:
        raise SourceError(f"{name} is empty")
    header = _trim_empty_tail(table.value[0])
    category_count = len(ADS16_CATEGORIES)
    if len(header) != category_count:
        raise SourceError(
            f"expected ';'-delimited {name} with {category_count} columns Cat0..Cat19, found {len(header)}"
        )
    categories = [_category_index(label) for label in header]
    if set(categories) != set(range(category_count)):
        raise SourceError(f"header of {name} is not Cat0..Cat19: {_joined(header)}")
    if len(table.value) < 3:
        raise SourceError(f"{name} has no ratings line (expected header, category names, ratings)")
    names_row, ratings_row, *extra = table.value[1:]
    for col, category_index in enumerate(categories):
        given, expected = clean_text(_cell(names_row, col)), ADS16_CATEGORIES[category_index]
        if given.casefold() != expected.casefold():
            raise SourceError(f"{name}: category name {given!r} under Cat{category_index} is not {expected!r}")

    rejections = table.rejections
    for record_no, row in enumerate(extra, start=4):
        rejections.append(Rejection(source_file, None, f"unexpected extra line {record_no} in {name}", _joined(row)))
    for col in range(category_count, len(ratings_row)):
        if ratings_row[col].strip():
            reason = f"ratings cell {col + 1} of {name} has no Cat header"
            rejections.append(Rejection(source_file, None, reason, truncate_raw(ratings_row[col])))
    rows: list[tuple[object, ...]] = []
    for col, category_index in enumerate(categories):
        cell = _cell(ratings_row, col)
        values = [value.strip() for value in cell.split(",")] if cell.strip() else []
        for position in range(ADS_PER_CATEGORY):
            source_row = category_index * ADS_PER_CATEGORY + position + 1
            if len(values) != ADS_PER_CATEGORY:
                reason = (
                    f"Cat{category_index} holds {len(values)} ratings, expected {ADS_PER_CATEGORY}: "
                    "they cannot be matched to ads by position"
                )
                rejections.append(Rejection(source_file, source_row, reason, truncate_raw(cell)))
                continue
            rating = _parse_int(values[position])
            if rating not in _RATINGS:
                reason = f"rating for Cat{category_index} position {position} is not an integer in 1..5"
                rejections.append(Rejection(source_file, source_row, reason, truncate_raw(values[position])))
                continue
            rows.append(
                (
                    user_id,
                    category_index,
                    ADS16_CATEGORIES[category_index],
                    position,
                    ads16_ad_id(category_index, position),
                    rating,
                    source_file,
                    source_row,
                )
            )
    ratings = _frame(rows, RATINGS_SCHEMA).sort_values(SOURCE_ROW, ignore_index=True)
    return ParsedFile(ratings, rejections, table.skipped)


def parse_user_folder(folder: Path, relative_to: Path) -> ParsedSource:
    """One ``Corpus/Corpus/U<nnnn>`` folder -> one ``ads16_users`` row and its ``ads16_ratings`` rows.

    A missing or unusable file leaves its fields null (or empty lists) and is recorded as a Rejection.
    """
    user_id = folder.name
    folder_file = _relative(folder, relative_to)
    result = ParsedSource(frames={})
    entries = {entry.name.casefold(): entry for entry in sorted(folder.iterdir())}
    csv_names = {kind: f"{user_id}-{kind}.csv" for kind in ("INF", "PREF", "B5", "RT", "IM-POS", "IM-NEG")}
    # The user's own image folders are expected; the images themselves are not ingested.
    expected = {name.casefold() for name in csv_names.values()} | {
        f"{user_id}-IM-POS".casefold(),
        f"{user_id}-IM-NEG".casefold(),
    }
    for key, entry in entries.items():
        if key not in expected:
            default = "unexpected CSV" if entry.suffix.casefold() == ".csv" else "not a CSV"
            result.skipped[_stray_reason(entry, default)] += 1

    def parse_file(kind: str, parse: Callable[[bytes, str], ParsedFile[T]]) -> T | None:
        name = csv_names[kind]
        path = entries.get(name.casefold())
        source_file = _relative(path, relative_to) if path else f"{folder_file}/{name}"
        if path is None or not path.is_file():
            result.rejections.append(Rejection(source_file, None, f"missing file {name}"))
            return None
        try:
            parsed = parse(path.read_bytes(), source_file)
        except OSError as err:
            result.rejections.append(Rejection(source_file, None, f"{name} is unreadable: {err}"))
            return None
        except SourceError as err:
            result.rejections.append(Rejection(source_file, None, str(err)))
            return None
        result.rejections.extend(parsed.rejections)
        result.skipped.update(parsed.skipped)
        return parsed.value

    user: dict[str, object] = _empty_fields(USERS_SCHEMA)
    user.update({"user_id": user_id, SOURCE_FILE: folder_file, SOURCE_ROW: 1})
    for kind, parse in (
        ("INF", parse_demographics_csv),
        ("PREF", parse_preferences_csv),
        ("B5", parse_big_five_csv),
    ):
        user.update(parse_file(kind, parse) or {})
    user["positive_captions"] = parse_file("IM-POS", parse_image_captions_csv) or []
    user["negative_captions"] = parse_file("IM-NEG", parse_image_captions_csv) or []
    ratings = parse_file("RT", lambda raw, source_file: parse_ratings_csv(raw, source_file, user_id))

    result.frames = {
        USERS_TABLE: _frame([user], USERS_SCHEMA),
        RATINGS_TABLE: ratings if ratings is not None else _frame([], RATINGS_SCHEMA),
    }
    return result


def parse_ad_catalog(root: Path, relative_to: Path) -> ParsedSource:
    """Index the ad images under every ``Ads/Ads/<k>/``: folder k is category k-1, ``n.png`` is position n-1.

    A file that is not named ``<n>.png`` (n in 1..15) or does not start with the PNG signature is not an ad
    and becomes a Rejection.
    """
    result = ParsedSource(frames={})
    rows: dict[str, dict[str, object]] = {}
    for ads_dir in sorted(path for path in root.glob(f"{_PART_GLOB}/{_PART_GLOB}/Ads/Ads") if path.is_dir()):
        for folder in sorted(ads_dir.iterdir()):
            category_index = _ad_folder_category(folder)
            if category_index is None:
                reason = "not an ad category folder" if folder.is_dir() else _stray_reason(folder, "stray file")
                result.skipped[reason] += 1
                continue
            for image in sorted(folder.iterdir()):
                image_path = _relative(image, relative_to)
                if image.is_dir():
                    result.skipped["unexpected folder"] += 1
                    continue
                position, problem = _ad_position(image)
                if position is None:
                    result.rejections.append(Rejection(image_path, None, f"not an ad: {problem}", image.name))
                    continue
                ad_id = ads16_ad_id(category_index, position)
                if ad_id in rows:
                    reason = f"duplicate ad {ad_id}, already read from {rows[ad_id]['image_path']}"
                    result.rejections.append(Rejection(image_path, None, reason, image.name))
                    continue
                rows[ad_id] = {
                    "ad_id": ad_id,
                    "category_index": category_index,
                    "category_name": ADS16_CATEGORIES[category_index],
                    "position": position,
                    "image_path": image_path,
                    SOURCE_FILE: image_path,
                    SOURCE_ROW: 1,
                }
    ads = _frame(rows.values(), ADS_SCHEMA).sort_values(["category_index", "position"], ignore_index=True)
    result.frames = {ADS_TABLE: ads}
    return result


def parse_ads16(root: Path, relative_to: Path) -> ParsedSource:
    """Parse a whole ADS-16 download (``KAGGLE_DIR/ads16``) into ads16_users, ads16_ratings and ads16_ads.

    ``relative_to`` is KAGGLE_DIR; every ``source_file`` and ``image_path`` is relative to it.
    Raises SourceError if ``root`` does not exist or holds no ``Corpus/Corpus/U*`` user folder.
    """
    if not root.is_dir():
        raise SourceError(f"ADS-16 root {root} does not exist or is not a folder")
    if _relative(root, relative_to).startswith(".."):
        raise SourceError(f"ADS-16 root {root} is not inside {relative_to}")
    corpus_dirs = sorted(path for path in root.glob(f"{_PART_GLOB}/{_PART_GLOB}/Corpus/Corpus") if path.is_dir())
    if not any(path.is_dir() for corpus in corpus_dirs for path in corpus.glob("U*")):
        raise SourceError(f"no user folder in {root}: expected {_PART_GLOB}/{_PART_GLOB}/Corpus/Corpus/U<nnnn>/")

    result = ParsedSource(frames={}, skipped=_layout_strays(root))
    users: list[pd.DataFrame] = []
    ratings: list[pd.DataFrame] = []
    seen: dict[str, str] = {}  # user_id -> folder it was read from
    for corpus in corpus_dirs:
        for folder in sorted(corpus.iterdir()):
            if not (folder.is_dir() and _USER_FOLDER.fullmatch(folder.name)):
                result.skipped[_stray_reason(folder, "stray file")] += 1
                continue
            folder_file = _relative(folder, relative_to)
            if folder.name in seen:
                reason = f"duplicate user folder {folder.name}, already read from {seen[folder.name]}"
                result.rejections.append(Rejection(folder_file, None, reason))
                continue
            seen[folder.name] = folder_file
            user = parse_user_folder(folder, relative_to)
            users.append(user.frames[USERS_TABLE])
            ratings.append(user.frames[RATINGS_TABLE])
            result.rejections.extend(user.rejections)
            result.skipped.update(user.skipped)

    catalog = parse_ad_catalog(root, relative_to)
    result.rejections.extend(catalog.rejections)
    result.skipped.update(catalog.skipped)
    result.frames = {
        USERS_TABLE: _concat(users, USERS_SCHEMA).sort_values("user_id", ignore_index=True),
        RATINGS_TABLE: _concat(ratings, RATINGS_SCHEMA).sort_values(["user_id", SOURCE_ROW], ignore_index=True),
        ADS_TABLE: catalog.frames[ADS_TABLE],
    }
    return result


def _read_single_record(raw: bytes, source_file: str, headers: Mapping[str, str]) -> ParsedFile[dict[str, str]]:
    """Read a header + one data row CSV by header name -> {output column: raw cell} for the columns present."""
    table = read_csv_records(raw, source_file)
    name = _file_name(source_file)
    if len(table.value) < 2:
        raise SourceError(f"{name} has no data row under its header")
    header, row, *extra = table.value
    width = len(_trim_empty_tail(header))
    if len(_trim_empty_tail(row)) > width:
        # More values than headers means a value was split; matching by name would shift columns.
        raise SourceError(f"{name}: data row has {len(_trim_empty_tail(row))} cells for {width} header columns")
    rejections = table.rejections
    for record_no, record in enumerate(extra, start=2):
        rejections.append(Rejection(source_file, record_no, f"unexpected extra data row in {name}", _joined(record)))
    positions: dict[str, int] = {}
    for col, label in enumerate(header):
        positions.setdefault(_header_key(label), col)
    cells: dict[str, str] = {}
    for column, label in headers.items():
        col = positions.get(_header_key(label))
        if col is None:
            rejections.append(Rejection(source_file, None, f"column {label!r} missing from {name}"))
        else:
            cells[column] = _cell(row, col)
    return ParsedFile(cells, rejections, table.skipped)


def _find_column(header: list[str], label: str, name: str) -> int:
    keys = [_header_key(cell) for cell in header]
    if _header_key(label) not in keys:
        raise SourceError(f"column {label!r} missing from {name}")
    return keys.index(_header_key(label))


def _header_key(label: str) -> str:
    """Header names compare regardless of case, whitespace, BOM and direction marks."""
    return clean_text(label).casefold()


def _category_index(label: str) -> int:
    """``Cat<k>`` -> k; -1 for any other header."""
    match = _CATEGORY_HEADER.fullmatch(_header_key(label))
    return int(match[1]) if match else -1


def _ad_folder_category(folder: Path) -> int | None:
    if folder.is_dir() and folder.name.isdigit() and 1 <= int(folder.name) <= len(ADS16_CATEGORIES):
        return int(folder.name) - 1
    return None


def _ad_position(image: Path) -> tuple[int | None, str]:
    """Position of an ad image, or None and why the file is not an ad."""
    match = _AD_IMAGE.fullmatch(image.name)
    if match is None:
        return None, "name is not <n>.png"
    position = int(match[1]) - 1
    if position not in range(ADS_PER_CATEGORY):
        return None, f"{image.name} is outside the {ADS_PER_CATEGORY} ads of a category"
    try:
        with image.open("rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
    except OSError as err:
        return None, f"unreadable: {err}"
    if head != PNG_SIGNATURE:
        return None, f"not a PNG (starts with {head!r})"
    return position, ""


def _layout_strays(root: Path) -> Counter[str]:
    """Count entries off the part/part/{Ads,Corpus}/{Ads,Corpus} path: zipped copies, PDFs, stray files."""
    skipped: Counter[str] = Counter()
    expected_at_depth: tuple[Callable[[Path], bool], ...] = (
        lambda entry: fnmatchcase(entry.name, _PART_GLOB),
        lambda entry: fnmatchcase(entry.name, _PART_GLOB),
        lambda entry: entry.name in ("Ads", "Corpus"),
        lambda entry: entry.name == entry.parent.name,
    )
    level = [root]
    for is_expected in expected_at_depth:
        next_level = []
        for folder in level:
            for entry in sorted(folder.iterdir()):
                if entry.is_dir() and is_expected(entry):
                    next_level.append(entry)
                else:
                    skipped[_stray_reason(entry, "stray file")] += 1
        level = next_level
    return skipped


def _stray_reason(entry: Path, default: str) -> str:
    if entry.is_dir():
        return "unexpected folder"
    suffix = entry.suffix.casefold()
    if suffix == ".zip":
        return "zipped copy"
    if suffix == ".pdf":
        return "PDF document"
    return default


def _empty_fields(columns: Iterable[str]) -> dict[str, object]:
    return {column: [] if column in _LIST_COLUMNS else None for column in columns}


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _cell(row: list[str], col: int) -> str:
    return row[col] if col < len(row) else ""


def _trim_empty_tail(row: list[str]) -> list[str]:
    """Drop trailing empty cells left by a trailing ';'."""
    end = len(row)
    while end and not row[end - 1].strip():
        end -= 1
    return row[:end]


def _joined(row: list[str]) -> str:
    return truncate_raw(";".join(row))


def _file_name(source_file: str) -> str:
    return source_file.rsplit("/", 1)[-1]


def _relative(path: Path, base: Path) -> str:
    # Lexical, not resolved: KAGGLE_DIR/ads16 may be a symlink to the real download.
    return Path(os.path.relpath(path, base)).as_posix()


def _frame(rows: Iterable[Mapping[str, object] | tuple[object, ...]], schema: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(schema)).astype(dict(schema))


def _concat(frames: list[pd.DataFrame], schema: Mapping[str, str]) -> pd.DataFrame:
    non_empty = [frame for frame in frames if len(frame)]
    if not non_empty:
        return _frame([], schema)
    return pd.concat(non_empty, ignore_index=True).astype(dict(schema))
