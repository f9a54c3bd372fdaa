"""Change detection: which source files are new, changed or gone since their last successful load.

A file whose size and modification time match the manifest is unchanged without
being read. When they differ the content hash decides, so a `touch` or a fresh
copy of identical bytes does not trigger a reload. The manifest is a Delta table
(`_ingestion/manifest`) written only after the bronze writes succeed, so a load
that dies half-way is simply redone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from adstream.settings import Settings
from ingestion.bronze import read_table, replace_sources, table_exists

MANIFEST_TABLE = "_ingestion/manifest"
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("load_id", pa.string(), nullable=False),
        pa.field("loaded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    relative: str  # relative to KAGGLE_DIR, '/'-separated: the source_file of its rows
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Changes:
    changed: list[SourceFile]  # new, or different content
    unchanged: list[SourceFile]
    restatted: list[SourceFile]  # unchanged content under a new size/mtime stat (e.g. a fresh copy)
    removed: list[str]  # relative paths loaded before, absent now
    hashes: dict[str, str]  # relative path -> sha256 of every present file

    @property
    def nothing_to_do(self) -> bool:
        return not self.changed and not self.removed


def list_source_files(root: Path, relative_to: Path) -> list[SourceFile]:
    """Every regular file under ``root``, sorted; a missing root is an error naming it."""
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; set KAGGLE_DIR or fetch the dataset (see README)")
    files = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                stat = path.stat()
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            except OSError:
                size, mtime_ns = -1, -1  # unreadable (e.g. a broken link): the parser reports it
            files.append(SourceFile(path, path.relative_to(relative_to).as_posix(), size, mtime_ns))
    return sorted(files, key=lambda source: source.relative)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(settings: Settings, dataset: str) -> pd.DataFrame:
    if not table_exists(settings, MANIFEST_TABLE):
        return pd.DataFrame(columns=MANIFEST_SCHEMA.names)
    manifest = read_table(settings, MANIFEST_TABLE)
    return manifest[manifest["dataset"] == dataset]


def detect_changes(files: list[SourceFile], manifest: pd.DataFrame) -> Changes:
    known = {row.source_file: row for row in manifest.itertuples(index=False)}
    changed, unchanged, restatted, hashes = [], [], [], {}
    for source in files:
        previous = known.get(source.relative)
        if previous is not None and (previous.size, previous.mtime_ns) == (source.size, source.mtime_ns):
            unchanged.append(source)
            hashes[source.relative] = previous.sha256
            continue
        try:
            hashes[source.relative] = sha256_of(source.path)
        except OSError:
            hashes[source.relative] = "unreadable"
        if previous is not None and previous.sha256 == hashes[source.relative]:
            unchanged.append(source)
            restatted.append(source)
        else:
            changed.append(source)
    removed = sorted(set(known) - {source.relative for source in files})
    return Changes(changed, unchanged, restatted, removed, hashes)


def record_loaded(settings: Settings, dataset: str, changes: Changes, load_id: str, loaded_at: datetime) -> None:
    """Stores the fingerprint of every file loaded or re-statted now, and forgets removed ones."""
    rows = pd.DataFrame(
        [
            (s.relative, dataset, s.size, s.mtime_ns, changes.hashes[s.relative], load_id, loaded_at)
            for s in (*changes.changed, *changes.restatted)
        ],
        columns=MANIFEST_SCHEMA.names,
    )
    table = pa.Table.from_pandas(rows, schema=MANIFEST_SCHEMA, preserve_index=False)
    replace_sources(settings, MANIFEST_TABLE, table, [*rows["source_file"], *changes.removed])
