"""Bronze table schemas: one Arrow schema per table, the single source of their columns and types.

Every table ends with the lineage columns; ``source_file`` + ``source_row`` is the
natural key (one row per source record), and ``source_file`` is the unit that a
re-ingest replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from adstream.contracts import Table, quarantine_table
from ingestion.records import LOAD_ID, LOADED_AT, SOURCE_FILE, SOURCE_ROW

LINEAGE = [
    pa.field(SOURCE_FILE, pa.string(), nullable=False),
    pa.field(SOURCE_ROW, pa.int64()),
    pa.field(LOAD_ID, pa.string(), nullable=False),
    pa.field(LOADED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
]
TEXT_LIST = pa.list_(pa.string())


@dataclass(frozen=True)
class BronzeTable:
    name: str  # the key parsers use in ParsedSource.frames
    table: Table
    columns: tuple[pa.Field, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([*self.columns, *LINEAGE])

    @property
    def quarantine(self) -> str:
        return quarantine_table(self.name)

    @property
    def data_columns(self) -> list[str]:
        return [field.name for field in self.columns]


ADVERTISING = BronzeTable(
    "advertising",
    Table.BRONZE_ADVERTISING,
    (
        pa.field("daily_time_spent_on_site", pa.float64()),
        pa.field("age", pa.int64()),
        pa.field("area_income", pa.float64()),
        pa.field("daily_internet_usage", pa.float64()),
        pa.field("ad_topic_line", pa.string()),
        pa.field("city", pa.string()),
        pa.field("male", pa.bool_()),
        pa.field("country", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("clicked_on_ad", pa.bool_()),
    ),
)

ADS16_USERS = BronzeTable(
    "ads16_users",
    Table.BRONZE_ADS16_USERS,
    (
        pa.field("user_id", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.int64()),
        pa.field("zip_code", pa.string()),
        pa.field("home_town", pa.string()),
        pa.field("home_country", pa.string()),
        pa.field("countries_visited", TEXT_LIST),
        pa.field("job_type", pa.string()),
        pa.field("weekly_working_hours", pa.string()),
        pa.field("income", pa.int64()),
        pa.field("timepass", TEXT_LIST),
        pa.field("fave_sports", TEXT_LIST),
        pa.field("most_visited_websites", TEXT_LIST),
        pa.field("most_listened_musics", TEXT_LIST),
        pa.field("most_watched_movies", TEXT_LIST),
        pa.field("most_watched_tv_programmes", TEXT_LIST),
        pa.field("most_read_books", TEXT_LIST),
        *(pa.field(f"tipi_{question}", pa.int64()) for question in range(1, 11)),
        pa.field("positive_captions", TEXT_LIST),
        pa.field("negative_captions", TEXT_LIST),
    ),
)

ADS16_RATINGS = BronzeTable(
    "ads16_ratings",
    Table.BRONZE_ADS16_RATINGS,
    (
        pa.field("user_id", pa.string()),
        pa.field("category_index", pa.int64()),
        pa.field("category_name", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("ad_id", pa.string()),
        pa.field("rating", pa.int64()),
    ),
)

ADS16_ADS = BronzeTable(
    "ads16_ads",
    Table.BRONZE_ADS16_ADS,
    (
        pa.field("ad_id", pa.string()),
        pa.field("category_index", pa.int64()),
        pa.field("category_name", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("image_path", pa.string()),
    ),
)

AMAZON_ADS = BronzeTable(
    "amazon_ads",
    Table.BRONZE_AMAZON_ADS,
    (
        pa.field("department", pa.string()),
        pa.field("subdepartment", pa.string()),
        pa.field("ad_text", pa.string()),
    ),
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("bronze_table", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
        *LINEAGE,
    ]
)

BRONZE_TABLES = {t.name: t for t in (ADVERTISING, ADS16_USERS, ADS16_RATINGS, ADS16_ADS, AMAZON_ADS)}
