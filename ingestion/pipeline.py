"""Write-audit-publish for one Kaggle dataset: detect changes, parse, gate, publish, remember.

1. list the dataset's files and compare them with the manifest: unchanged input stops here;
2. parse the changed files (every unparseable row becomes a rejection with a reason);
3. run the Great Expectations gate per table (row failures -> quarantine, table failures -> stop);
4. refuse the load if more than INGEST_MAX_REJECT_SHARE of a table's records were rejected;
5. replace exactly the changed files' rows in bronze and quarantine, delete removed files' rows;
6. record the files in the manifest.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pandas as pd

from adstream.contracts import quarantine_table
from adstream.settings import Settings
from ingestion import bronze, manifest, quality
from ingestion.ads16 import parse_ads16
from ingestion.advertising import parse_advertising
from ingestion.amazon import parse_amazon_file
from ingestion.records import SOURCE_FILE, ParsedSource, Rejection, SourceError
from ingestion.tables import (
    ADS16_ADS,
    ADS16_RATINGS,
    ADS16_USERS,
    ADVERTISING,
    AMAZON_ADS,
    QUARANTINE_SCHEMA,
    BronzeTable,
)


class IngestionFailed(RuntimeError):
    """The load was refused; nothing of it was published."""


Parser = Callable[[Path, Path, list[manifest.SourceFile]], ParsedSource]


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str  # under KAGGLE_DIR
    tables: tuple[BronzeTable, ...]
    parse: Parser


@dataclass
class IngestReport:
    dataset: str
    load_id: str
    files_seen: int
    files_changed: int
    files_removed: int
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_quarantined: dict[str, int] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    results: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unchanged(self) -> bool:
        return self.files_changed == 0 and self.files_removed == 0

    def summary(self) -> str:
        if self.unchanged:
            return f"{self.dataset}: {self.files_seen} files unchanged, nothing to do ({self.seconds:.2f}s)"
        written = ", ".join(f"{t}={n}" for t, n in self.rows_written.items())
        quarantined = ", ".join(f"{t}={n}" for t, n in self.rows_quarantined.items() if n)
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return (
            f"{self.dataset}: {self.files_changed} changed / {self.files_removed} removed of {self.files_seen} files; "
            f"rows written {written}; quarantined {quarantined or 'none'}; skipped {skipped or 'none'} "
            f"({self.seconds:.1f}s, load {self.load_id})"
        )


def _parse_each_file(parse_file: Callable[[bytes, str], ParsedSource], suffix: str) -> Parser:
    def parse(root: Path, kaggle_dir: Path, changed: list[manifest.SourceFile]) -> ParsedSource:
        merged = ParsedSource(frames={})
        parts: dict[str, list[pd.DataFrame]] = {}
        for source in changed:
            if not source.relative.lower().endswith(suffix):
                merged.skipped[f"not a {suffix} file: {PurePosixPath(source.relative).name}"] += 1
                continue
            try:
                parsed = parse_file(source.path.read_bytes(), source.relative)
            except OSError as exc:
                merged.rejections.append(Rejection(source.relative, None, f"unreadable: {exc.strerror or exc}"))
                continue
            except SourceError as exc:
                merged.rejections.append(Rejection(source.relative, None, str(exc)))
                continue
            for name, frame in parsed.frames.items():
                parts.setdefault(name, []).append(frame)
            merged.rejections.extend(parsed.rejections)
            merged.skipped.update(parsed.skipped)
        merged.frames = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
        return merged

    return parse


def _parse_ads16(root: Path, kaggle_dir: Path, changed: list[manifest.SourceFile]) -> ParsedSource:
    # ADS-16 is small (120 users): parse it whole, publish only what the changed files feed.
    return parse_ads16(root, kaggle_dir)


DATASETS = {
    "advertising": Dataset("advertising", "advertising", (ADVERTISING,), _parse_each_file(parse_advertising, ".csv")),
    "ads16": Dataset("ads16", "ads16", (ADS16_USERS, ADS16_RATINGS, ADS16_ADS), _parse_ads16),
    "amazon": Dataset("amazon", "amazon", (AMAZON_ADS,), _parse_each_file(parse_amazon_file, ".csv")),
}


def affected_sources(relative_paths: list[str]) -> set[str]:
    """A changed file affects rows sourced from it and from any folder holding it (ADS-16 user folders)."""
    affected = set()
    for relative in relative_paths:
        path = PurePosixPath(relative)
        affected.add(relative)
        affected.update(str(parent) for parent in path.parents if str(parent) != ".")
    return affected


def _is_affected(rejection: Rejection, affected: set[str]) -> bool:
    # A missing file is named by the path it should have had, inside a folder that was re-read.
    path = PurePosixPath(rejection.source_file)
    return rejection.source_file in affected or str(path.parent) in affected


def quarantine_rows(table_for: Callable[[Rejection], str], rejections: list[Rejection]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "bronze_table": [table_for(r) for r in rejections],
            "reason": [r.reason for r in rejections],
            "raw": [r.raw for r in rejections],
            SOURCE_FILE: [r.source_file for r in rejections],
            "source_row": pd.array([r.source_row for r in rejections], dtype="Int64"),
        }
    )


def owning_table(dataset: Dataset) -> Callable[[Rejection], str]:
    """Which bronze table a parse rejection belongs to (ADS-16 files feed three)."""

    def table_for(rejection: Rejection) -> str:
        if len(dataset.tables) == 1:
            return dataset.tables[0].name
        name = rejection.source_file.lower()
        if name.endswith("-rt.csv"):
            return ADS16_RATINGS.name
        if "/ads/ads/" in name:
            return ADS16_ADS.name
        return ADS16_USERS.name

    return table_for


def ingest(settings: Settings, dataset_name: str, load_id: str | None = None) -> IngestReport:
    began = time.monotonic()
    dataset = DATASETS[dataset_name]
    load_id = load_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    loaded_at = datetime.now(UTC)
    kaggle_dir = settings.kaggle_dir.resolve()
    root = kaggle_dir / dataset.folder
    files = manifest.list_source_files(root, kaggle_dir)
    changes = manifest.detect_changes(files, manifest.load_manifest(settings, dataset.name))
    report = IngestReport(dataset.name, load_id, len(files), len(changes.changed), len(changes.removed))
    if changes.nothing_to_do:
        if changes.restatted:
            manifest.record_loaded(settings, dataset.name, changes, load_id, loaded_at)
        report.seconds = time.monotonic() - began
        return report

    parsed = dataset.parse(root, kaggle_dir, changes.changed)
    report.skipped.update(parsed.skipped)
    affected = affected_sources([s.relative for s in changes.changed])
    removed = affected_sources(changes.removed)
    table_for = owning_table(dataset)

    # Audit every table before publishing any of them.
    publish: list[tuple[BronzeTable, pd.DataFrame, pd.DataFrame]] = []
    failures: list[str] = []
    for table in dataset.tables:
        frame = parsed.frames.get(table.name, pd.DataFrame(columns=[*table.data_columns, SOURCE_FILE, "source_row"]))
        frame = frame[frame[SOURCE_FILE].isin(affected)]
        outcome = quality.validate(table, frame) if len(frame) else None
        if outcome is not None:
            report.results.append(str(quality.save_result(outcome, settings.reports_dir, load_id)))
            failures.extend(f"{table.name}: {failure}" for failure in outcome.table_failures)
        rejections = [r for r in parsed.rejections if table_for(r) == table.name and _is_affected(r, affected)]
        rejections += outcome.quarantined if outcome else []
        accepted = outcome.accepted if outcome else frame
        records = len(accepted) + len(rejections)
        share = len(rejections) / records if records else 0.0
        if share > settings.ingest_max_reject_share:
            failures.append(
                f"{table.name}: {len(rejections)} of {records} records rejected ({share:.1%}), above "
                f"INGEST_MAX_REJECT_SHARE={settings.ingest_max_reject_share:.0%}; first reasons: "
                + "; ".join(f"{r.source_file}:{r.source_row}: {r.reason}" for r in rejections[:3])
            )
        publish.append((table, accepted, quarantine_rows(table_for, rejections)))
    if failures:
        raise IngestionFailed(f"{dataset.name} load {load_id} refused, nothing published:\n  " + "\n  ".join(failures))

    quarantine = quarantine_table(dataset.name)
    all_quarantined = pd.concat([q for _, _, q in publish], ignore_index=True)
    for table, accepted, _ in publish:
        rows = bronze.to_arrow(accepted, table.schema, load_id, loaded_at)
        bronze.replace_sources(settings, table.table, rows, affected)
        bronze.delete_sources(settings, table.table, removed)
        report.rows_written[table.name] = rows.num_rows
        report.rows_quarantined[table.name] = int((all_quarantined["bronze_table"] == table.name).sum())
    quarantined = bronze.to_arrow(all_quarantined, QUARANTINE_SCHEMA, load_id, loaded_at)
    bronze.replace_sources(settings, quarantine, quarantined, affected | set(all_quarantined[SOURCE_FILE]))
    bronze.delete_sources(settings, quarantine, removed)
    manifest.record_loaded(settings, dataset.name, changes, load_id, loaded_at)
    report.seconds = time.monotonic() - began
    return report


def ingest_summary(settings: Settings, dataset_name: str) -> dict[str, object]:
    """Loads one dataset, prints its summary and returns it as plain values; raises on a refused load."""
    report = ingest(settings, dataset_name)
    print(report.summary())
    return {
        "dataset": report.dataset,
        "load_id": report.load_id,
        "unchanged": report.unchanged,
        "rows_written": report.rows_written,
        "rows_quarantined": report.rows_quarantined,
        "validation_results": report.results,
    }
