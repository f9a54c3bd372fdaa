"""Bronze and quarantine writes: replace exactly the rows of the source files that were re-read.

Ingestion writes with delta-rs (no JVM start-up for a few hundred MB of CSV); the
tables are ordinary Delta tables that Spark reads for the feature builds.
A re-ingest overwrites with a ``source_file IN (…)`` predicate — Delta's
replaceWhere — so unchanged files' rows are untouched and a re-run never
duplicates. One writer per table at a time (the DAG runs one task per dataset),
which is what makes S3 without a lock table safe here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from adstream.settings import Settings
from ingestion.records import LOAD_ID, LOADED_AT, SOURCE_FILE


def to_arrow(frame: pd.DataFrame, schema: pa.Schema, load_id: str, loaded_at: datetime) -> pa.Table:
    """Adds the load lineage and casts to the table's declared schema (a wrong type fails here, loudly)."""
    frame = frame.assign(**{LOAD_ID: load_id, LOADED_AT: pd.Timestamp(loaded_at)})
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing} of the declared schema")
    arrays = [pa.array(frame[field.name], type=field.type, from_pandas=True) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def sql_in(values: Iterable[str]) -> str:
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in sorted(set(values)))
    return f"{SOURCE_FILE} IN ({quoted})"


def table_exists(settings: Settings, table: str) -> bool:
    uri, options = settings.delta_rs_location(table)
    return DeltaTable.is_deltatable(uri, storage_options=options)


def replace_sources(settings: Settings, table: str, rows: pa.Table, sources: Iterable[str]) -> None:
    """Makes ``table``'s rows for ``sources`` exactly ``rows`` (which may be empty)."""
    sources = sorted(set(sources))
    if not sources:
        return
    uri, options = settings.delta_rs_location(table)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        write_deltalake(uri, rows, mode="overwrite", storage_options=options)
        return
    write_deltalake(uri, rows, mode="overwrite", predicate=sql_in(sources), storage_options=options)


def delete_sources(settings: Settings, table: str, sources: Iterable[str]) -> None:
    """Removes the rows of source files that no longer exist."""
    sources = sorted(set(sources))
    uri, options = settings.delta_rs_location(table)
    if sources and DeltaTable.is_deltatable(uri, storage_options=options):
        DeltaTable(uri, storage_options=options).delete(sql_in(sources))


def read_table(settings: Settings, table: str) -> pd.DataFrame:
    uri, options = settings.delta_rs_location(table)
    return DeltaTable(uri, storage_options=options).to_pandas()
