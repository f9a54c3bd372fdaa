"""Streaming benchmark (`make bench-streaming`): the real Kafka -> Delta job (spark_jobs.streaming) on local[2].

Everything runs in a scratch directory (``--workdir``, default LOCAL_DIR/bench/streaming, emptied first and
removed at the end unless ``--keep``): its own Kafka broker on free ports, its own lakes and checkpoints. It
never touches the project's lake, its broker or the ports of a running `make up`.

Phases:
  throughput  a backlog of ``--events`` ad-feedback records (valid events from 300 campaigns, ~1 % re-sent
              copies of recent events, ~0.5 % malformed records of several kinds) is produced once to a
              private topic (3 partitions, as the job's topics). Then, ``--repeats`` times, each on a fresh
              lake and checkpoint:
                job       ``adstream stream --source feedback --topic T --available-now``, the
                          production job unchanged (silver dedupe and append, bronze append, quarantine, then
                          the KPI query's gold MERGEs; maxOffsetsPerTrigger = streaming.MAX_RECORDS_PER_BATCH);
                baseline  the same topic read by the same Kafka source options and batch bound, in a session
                          built the same way, appended as-is to one Delta table (no parsing, no dedupe, no
                          MERGE): what this machine does for Kafka -> Delta at all.
              Throughput is measured from the Delta logs, not the process clock: rows committed to
              silver/feedback_events (baseline: to its table) by every batch after the first, over the time
              between the first and the last batch's commit, so the JVM start and the first batch's warm-up
              are excluded (the wall rate including them is reported too). The job's batches are also broken
              down by the commit times of the three tables each writes in order (silver, bronze with the
              event clock, quarantine); the KPI query's run after them is reported as the time gold took
              to cover the last silver commit.
  continuous  ``adstream stream --source feedback --topic T --trigger-s 5`` runs while records
              are produced at ``--rate`` per second (default 2,000, or half the job's measured throughput
              when lower), steadily: ``--warmup-s`` (not measured), then
              ``--latency-s`` (latency), then ``--soak`` (memory; latency measured too). Each event's
              event_id carries the microsecond it was handed to the producer; it is visible when the
              silver/feedback_events commit that added its file is committed (``commitInfo`` timestamp of the
              ``_delta_log`` version whose ``add`` actions list the file). Latency = visible - produced, per
              event, p50/p95/p99/max. The RSS of the job's Python process and of its JVM is sampled every
              ``--sample-s``; reported: start, end, peak and the least-squares slope (MB/min) over the second
              half of the soak.

Targets (reported, never asserted): >= 20,000 events/s into silver; latency p95 <= 10 s with a 5 s trigger;
RSS flat over a 30-minute soak (second-half slope <= 2 MB/min). Medians and ratios go to stdout and to
reports/bench/streaming.json.

    adstream bench streaming [--repeats 3] [--events 2000000] [--soak 30m] [--rate N]
        [--latency-s 120] [--warmup-s 30] [--only throughput|continuous] [--max-records-per-batch N]
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import confluent_kafka
import psutil
import pyarrow.parquet as pq
import typer

from adstream.contracts import Table, quarantine_table
from adstream.messaging import ensure_topics
from adstream.settings import Settings, get_settings
from benchmarks.harness import (
    BUSY_MACHINE_CORES,
    isolated_settings,
    launch,
    median_or_none,
    ratio,
    report_path,
    write_report,
)
from cli.lazy import commands_app
from devstack import services
from spark_jobs import streaming
from spark_jobs.session import get_spark

TARGET_EVENTS_PER_S = 20_000.0
TARGET_P95_S = 10.0
TARGET_TRIGGER_S = 5.0
FLAT_MB_PER_MIN = 2.0  # a second-half RSS slope at most this is "flat" (60 MB over 30 minutes)
FULL_SOAK_S = 30 * 60
DEFAULT_RATE = 2_000  # records/s of the continuous phase: a busy hour of the platform, well below the target
CAMPAIGNS = 300
ADVERTISERS = 60
DUPLICATE_SHARE = 0.01  # re-sent copies of a recent event (same event_id), as a retrying producer makes
MALFORMED_SHARE = 0.005
RECENT_WINDOW = 5_000  # a copy repeats one of the last this many events, well within the watermark
BACKLOG_ARRIVAL_PER_S = 2_000  # the backlog's event times are spread as if it had arrived at this rate
BACKLOG_MAX_SPAN_S = 540  # ... but within one watermark (10 min), so no record of it is late
BASELINE_TABLE = "bench/kafka_raw"
BASELINE_QUERY = "bench_baseline"
PRICING = ("CPM", "CPC", "CPA")
BILLABLE = {"CPM": "impression", "CPC": "click", "CPA": "conversion"}
DEVICES = ("mobile", "mobile", "desktop", "tablet", "ctv", None)


# --- pure helpers: durations, statistics ---


def parse_duration(text: str) -> float:
    """Seconds in "30m", "90s", "1h", "1h30m", "45" (seconds) or "0"."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 90s, 1h)")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need two or more points")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("all xs are equal")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | int | None]:
    if not latencies_s:
        return {"events": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    return {
        "events": len(latencies_s),
        "p50_s": round(percentile(latencies_s, 50), 3),
        "p95_s": round(percentile(latencies_s, 95), 3),
        "p99_s": round(percentile(latencies_s, 99), 3),
        "max_s": round(max(latencies_s), 3),
        "mean_s": round(statistics.fmean(latencies_s), 3),
    }


def memory_summary(samples: Sequence[tuple[float, float]]) -> dict[str, float | int | None]:
    """(seconds, MB) samples -> start, end, peak and the least-squares slope (MB/min) over the second half
    (the samples at or after the midpoint of the sampled time span)."""
    if not samples:
        return {"samples": 0, "start_mb": None, "end_mb": None, "peak_mb": None, "slope_mb_per_min_second_half": None}
    first, last = samples[0][0], samples[-1][0]
    middle = first + (last - first) / 2
    second_half = [(t, mb) for t, mb in samples if t >= middle]
    trend = None
    if len(second_half) >= 2 and second_half[-1][0] > second_half[0][0]:
        trend = round(slope([t / 60 for t, _ in second_half], [mb for _, mb in second_half]), 3)
    return {
        "samples": len(samples),
        "start_mb": round(samples[0][1], 1),
        "end_mb": round(samples[-1][1], 1),
        "peak_mb": round(max(mb for _, mb in samples), 1),
        "slope_mb_per_min_second_half": trend,
    }


# --- reading a Delta table's log (pure: files only, no Spark) ---


@dataclass(frozen=True)
class DeltaCommit:
    """One ``_delta_log/<version>.json``: when it committed, what it added, and its idempotent-write version."""

    version: int
    timestamp_ms: int
    operation: str
    added: tuple[tuple[str, int | None], ...]  # (path relative to the table, numRecords from the stats)
    txn_version: int | None  # the batch id of a streaming write (txnVersion, or the Delta sink's own)
    metrics: dict[str, str] = field(default_factory=dict)  # commitInfo.operationMetrics

    @property
    def rows_added(self) -> int:
        counted = [records for _, records in self.added if records is not None]
        if len(counted) == len(self.added) and self.added:
            return sum(counted)
        for key in ("numTargetRowsInserted", "numOutputRows"):
            if key in self.metrics:
                return int(self.metrics[key])
        return sum(counted)


def read_delta_log(table_dir: Path, after_version: int = -1) -> list[DeltaCommit]:
    """The commits of the table at ``table_dir`` newer than ``after_version``, oldest first."""
    log_dir = Path(table_dir) / "_delta_log"
    if not log_dir.is_dir():
        return []
    commits = []
    for path in sorted(log_dir.glob("*.json")):
        if not re.fullmatch(r"\d{20}\.json", path.name) or int(path.stem) <= after_version:
            continue
        timestamp, operation, metrics, txn, added = None, "", {}, None, []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "commitInfo" in action:
                info = action["commitInfo"]
                timestamp = info.get("inCommitTimestamp", info.get("timestamp"))
                operation = info.get("operation", "")
                metrics = info.get("operationMetrics", {}) or {}
            elif "txn" in action:
                txn = int(action["txn"]["version"])
            elif "add" in action:
                stats = json.loads(action["add"].get("stats") or "{}")
                added.append((unquote(action["add"]["path"]), stats.get("numRecords")))
        if timestamp is None:  # no commitInfo: the file's own time is the next best thing
            timestamp = int(path.stat().st_mtime * 1000)
        commits.append(DeltaCommit(int(path.stem), int(timestamp), operation, tuple(added), txn, metrics))
    return commits


def batch_commits(commits: Iterable[DeltaCommit]) -> dict[int, DeltaCommit]:
    """The commits streaming batches made, by batch id (a replayed batch commits nothing the second time)."""
    return {commit.txn_version: commit for commit in commits if commit.txn_version is not None}


# --- event ids that carry their produce time ---


def latency_event_id(tag: str, seq: int, produced_us: int) -> str:
    """``<tag><seq>.<epoch µs handed to the producer>``, e.g. ``l000000042.1764000000123456``."""
    return f"{tag}{seq:09d}.{produced_us}"


def produced_at_us(event_id: str, tags: str) -> int | None:
    """The produce time an event_id of one of ``tags`` carries; None for other ids."""
    if not event_id or event_id[0] not in tags or "." not in event_id:
        return None
    try:
        return int(event_id.rsplit(".", 1)[1])
    except ValueError:
        return None


def read_ids(path: Path, column: str = "event_id") -> list[str]:
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


def produced_and_visible(
    table_dir: Path, commits: Iterable[DeltaCommit], tags: str, ids_of: Callable[[Path], list[str]] = read_ids
) -> dict[str, list[tuple[int, int]]]:
    """Per tag, (produced, visible) epoch µs of each event: visible is the commit time of the version that
    added the file holding it (a file is visible from its commit on)."""
    events: dict[str, list[tuple[int, int]]] = {tag: [] for tag in tags}
    for commit in commits:
        committed_us = commit.timestamp_ms * 1000
        for relative, _ in commit.added:
            for event_id in ids_of(Path(table_dir) / relative):
                produced = produced_at_us(event_id, tags)
                if produced is not None:
                    events[event_id[0]].append((produced, committed_us))
    return events


def visibility_latencies(
    table_dir: Path, commits: Iterable[DeltaCommit], tags: str, ids_of: Callable[[Path], list[str]] = read_ids
) -> dict[str, list[float]]:
    """Per tag, the seconds from each event's produce time to its visibility (``produced_and_visible``)."""
    pairs = produced_and_visible(table_dir, commits, tags, ids_of)
    return {tag: [(visible - produced) / 1e6 for produced, visible in events] for tag, events in pairs.items()}


def latency_slices(events: Sequence[tuple[int, int]], slices: int) -> list[dict[str, Any]]:
    """The latency summary of each of ``slices`` equal spans of produce time (how latency moves over a run)."""
    if not events or slices < 1:
        return []
    first = min(produced for produced, _ in events)
    span = max(produced for produced, _ in events) - first + 1
    buckets: list[list[float]] = [[] for _ in range(slices)]
    for produced, visible in events:
        buckets[min((produced - first) * slices // span, slices - 1)].append((visible - produced) / 1e6)
    return [
        {"from_s": round(i * span / slices / 1e6, 1), **latency_summary(bucket)} for i, bucket in enumerate(buckets)
    ]


# --- per-batch analysis of a job run (pure, over commits) ---

# A batch's steps in order. "planning" (the previous batch's Spark commit -> this batch's offsets written) and
# "spark_commit" (the batch's last table commit -> Spark's commit of the batch) come from the checkpoint's
# offsets/ and commits/ files; "to_silver" holds the Kafka fetch, the JSON parse and classification (its count
# per outcome is collected), the dedupe against silver and silver's append; then the bronze append, which
# carries the event clock. gold/kpi_minute is written by a query of its own (``kpi_lag``).
STAGES = ("planning", "to_silver", "silver_to_bronze", "bronze_to_quarantine", "spark_commit")
TABLE_STAGES = (("to_silver", "silver"), ("silver_to_bronze", "bronze"), ("bronze_to_quarantine", "quarantine"))


def checkpoint_marks(checkpoint: Path) -> dict[str, dict[int, int]]:
    """When Spark wrote each batch's offsets (batch start) and commit (batch end) files, epoch ms."""
    marks: dict[str, dict[int, int]] = {}
    for kind in ("offsets", "commits"):
        folder = Path(checkpoint) / kind
        files = [path for path in folder.iterdir() if path.name.isdigit()] if folder.is_dir() else []
        marks[kind] = {int(path.name): path.stat().st_mtime_ns // 1_000_000 for path in files}
    return marks


def kpi_read_ends(checkpoint: Path) -> dict[int, int]:
    """Per batch of the KPI query, the first silver version it had not read: the Delta source's end offset in
    the checkpoint's offsets/ file (a starting snapshot at version v includes v)."""
    folder = Path(checkpoint) / "offsets"
    ends = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.isdigit():
            offset = json.loads(path.read_text().splitlines()[-1])
            ends[int(path.name)] = int(offset["reservoirVersion"]) + bool(offset.get("isStartingVersion"))
    return ends


def kpi_lags(silver: Iterable[DeltaCommit], gold: Iterable[DeltaCommit], read_ends: dict[int, int]) -> list[float]:
    """Per silver commit that added rows, the seconds until gold committed the KPI batch that first read it
    (silver and gold commit times); silver commits no KPI batch has covered yet are left out."""
    gold_by_batch = batch_commits(gold)
    lags = []
    for commit in silver:
        if commit.txn_version is None or commit.rows_added == 0:
            continue
        covering = [batch for batch, end in read_ends.items() if end > commit.version and batch in gold_by_batch]
        if covering:
            lags.append((gold_by_batch[min(covering)].timestamp_ms - commit.timestamp_ms) / 1000)
    return lags


def steady_rate(commits: Sequence[DeltaCommit]) -> dict[str, float | int | None]:
    """Rows/s committed by the batches after the first (the first is measured from, not counted)."""
    batches = sorted((c for c in commits if c.rows_added > 0), key=lambda c: c.timestamp_ms)
    result: dict[str, float | int | None] = {"batches": len(batches), "rows": sum(c.rows_added for c in batches)}
    if len(batches) < 2:
        result.update(steady_rows=None, steady_s=None, rows_per_s=None)
        return result
    rows = sum(c.rows_added for c in batches[1:])
    seconds = (batches[-1].timestamp_ms - batches[0].timestamp_ms) / 1000
    result.update(
        steady_rows=rows, steady_s=round(seconds, 3), rows_per_s=round(rows / seconds, 1) if seconds else None
    )
    return result


def batch_breakdown(
    tables: dict[str, list[DeltaCommit]], marks: dict[str, dict[int, int]] | None = None
) -> list[dict[str, Any]]:
    """Per batch of the job (after its first), the seconds between the steps it takes in order (STAGES): the
    commits it makes to silver, bronze and quarantine (when it had rejects), each measured from the step
    before; with the checkpoint's ``marks``, also Spark's own steps around them. Without marks, a batch
    starts at the previous batch's last table commit."""
    by_table = {name: batch_commits(tables.get(name, [])) for _, name in TABLE_STAGES}
    offsets, spark_commits = (marks or {}).get("offsets", {}), (marks or {}).get("commits", {})

    def last_commit_ms(batch_id: int) -> int:
        return max(by_table[name][batch_id].timestamp_ms for name in by_table if batch_id in by_table[name])

    rows = []
    for batch_id in sorted(by_table["bronze"]):
        if batch_id - 1 not in by_table["bronze"]:
            continue
        previous = spark_commits.get(batch_id - 1, last_commit_ms(batch_id - 1))
        steps: list[tuple[str, int | None]] = [("planning", offsets.get(batch_id))]
        steps += [
            (stage, commit.timestamp_ms if (commit := by_table.get(name, {}).get(batch_id)) else None)
            for stage, name in TABLE_STAGES
        ]
        steps.append(("spark_commit", spark_commits.get(batch_id)))
        seconds: dict[str, float | None] = {}
        mark = previous
        for stage, at in steps:
            seconds[stage] = None if at is None else (at - mark) / 1000
            mark = mark if at is None else at
        bronze, silver = by_table["bronze"][batch_id], by_table["silver"].get(batch_id)
        rows.append(
            {
                "batch_id": batch_id,
                "records": bronze.rows_added,
                "silver_rows": silver.rows_added if silver else 0,
                "total_s": (mark - previous) / 1000,
                **seconds,
            }
        )
    return rows


def breakdown_medians(batches: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    keys = ("records", "silver_rows", "total_s", *STAGES)
    return {key: median_or_none(batch[key] for batch in batches) for key in keys}


# --- synthetic ad-feedback records ---


@dataclass
class Tally:
    valid: int = 0
    duplicate: int = 0
    malformed: int = 0

    @property
    def records(self) -> int:
        return self.valid + self.duplicate + self.malformed


def iso_time(micros: int) -> str:
    """As the auction service's ``model_dump_json`` writes an event time."""
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class RecordFactory:
    """Ad-feedback records as the auction service publishes them (key: auction_id), plus re-sent copies of
    recent events and malformed records at the module's shares. Seeded: the same run, the same records."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.recent: deque[tuple[str, bytes]] = deque(maxlen=RECENT_WINDOW)
        self.tally = Tally()
        self._auctions = 0

    def _event(self, event_id: str, at_us: int) -> dict[str, Any]:
        rng = self.rng
        campaign = rng.randrange(CAMPAIGNS)
        pricing = PRICING[campaign % 3]
        draw = rng.random()
        event_type = (
            "impression" if draw < 0.82 else "click" if draw < 0.9 else "video_start" if draw < 0.95
            else "video_complete" if draw < 0.98 else "conversion"
        )  # fmt: skip
        self._auctions += 1
        return {
            "schema_version": 1,
            "event_id": event_id,
            "event_type": event_type,
            "event_time": iso_time(at_us),
            "auction_id": f"bench-a{self._auctions:010d}",
            "campaign_id": f"cmp{campaign:04d}",
            "advertiser_id": f"adv{campaign % ADVERTISERS:03d}",
            "ad_id": f"ad{campaign:04d}",
            "user_id": f"u{rng.randrange(100_000):06d}",
            "device_type": rng.choice(DEVICES),
            "channel": "app" if rng.random() < 0.4 else "web",
            "content_type": "video" if rng.random() < 0.15 else "display",
            "pricing_model": pricing,
            "cost_micros": rng.randrange(100, 3_000_000) if BILLABLE[pricing] == event_type else 0,
            "currency": "USD",
            "pctr": round(rng.random() * 0.2, 6) if event_type == "impression" else None,
            "model_version": "bench",
        }

    def _malformed(self, event: dict[str, Any]) -> bytes:
        kind = self.rng.randrange(5)
        if kind == 0:
            return json.dumps(event).encode()[:40]  # truncated JSON
        if kind == 1:
            event = {k: v for k, v in event.items() if k != "campaign_id"}  # a required field missing
        elif kind == 2:
            event = {**event, "cost_micros": -5}  # out of range
        elif kind == 3:
            event = {**event, "event_type": "hover"}  # unknown enum value
        else:
            return b"null"
        return json.dumps(event).encode()

    def record(self, event_id: str, at_us: int) -> tuple[str, bytes]:
        """The next record: usually a new valid event ``event_id`` at ``at_us``, sometimes a copy of a recent
        one or a malformed record."""
        draw = self.rng.random()
        if draw < DUPLICATE_SHARE and self.recent:
            self.tally.duplicate += 1
            return self.recent[self.rng.randrange(len(self.recent))]
        event = self._event(event_id, at_us)
        if draw < DUPLICATE_SHARE + MALFORMED_SHARE:
            self.tally.malformed += 1
            return event["auction_id"], self._malformed(event)
        self.tally.valid += 1
        record = (event["auction_id"], json.dumps(event, separators=(",", ":"), sort_keys=True).encode())
        self.recent.append(record)
        return record


# --- Kafka (I/O) ---


def make_producer(settings: Settings, *, linger_ms: int, errors: list[str]):
    def delivered(error, _message) -> None:
        if error is not None:
            errors.append(error.str())

    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": "bench-streaming",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "on_delivery": delivered,
            "log_level": 2,
        }
    )
    return producer


def send(producer, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)


def produce_backlog(settings: Settings, topic: str, events: int, seed: int = 7) -> dict[str, Any]:
    """``events`` records, event times spread as if they had arrived at BACKLOG_ARRIVAL_PER_S up to now."""
    factory = RecordFactory(seed)
    errors: list[str] = []
    producer = make_producer(settings, linger_ms=50, errors=errors)
    span_us = int(min(events / BACKLOG_ARRIVAL_PER_S, BACKLOG_MAX_SPAN_S) * 1e6)
    first_us = time.time_ns() // 1000 - span_us - 5_000_000
    step = span_us / max(events, 1)
    began = time.perf_counter()
    for i in range(events):
        key, value = factory.record(f"b{i:09d}", first_us + int(i * step))
        send(producer, topic, key, value)
        if i % 10_000 == 0:
            producer.poll(0)
    undelivered = producer.flush(300)
    seconds = time.perf_counter() - began
    if undelivered or errors:
        raise RuntimeError(f"backlog: {undelivered} undelivered, {len(errors)} errors ({errors[:3]})")
    tally = factory.tally
    return {
        "records": tally.records,
        "unique_valid": tally.valid,
        "duplicates": tally.duplicate,
        "malformed": tally.malformed,
        "event_time_span_s": round(span_us / 1e6, 1),
        "produce_s": round(seconds, 1),
        "produce_per_s": round(tally.records / seconds, 1),
    }


# --- processes (I/O) ---


def bench_settings(workdir: Path) -> Settings:
    """The project's settings (driver memory, shuffle partitions, watermark...) moved into ``workdir``: its own
    lake, state, reports and ports; Spark local[2]."""
    return isolated_settings(workdir, spark_master="local[2]")


def job_command(*args: str, max_records: int | None) -> list[str]:
    """`adstream stream ARGS`, or with another batch bound the bench's variant of it (the job is not edited)."""
    if max_records is None:
        return [str(services.ADSTREAM), "stream", *args]
    return [str(services.ADSTREAM), "bench", "streaming-job", "--max-records-per-batch", str(max_records), *args]


def job_variant(
    settings: Settings, max_records: int, source: str, topic: str | None, available_now: bool, trigger_s: float | None
) -> int:
    """What `adstream stream` runs, with MAX_RECORDS_PER_BATCH set to ``max_records`` in this process only."""
    streaming.MAX_RECORDS_PER_BATCH = max_records
    sources = streaming.sources_for(source, topic)
    streaming.configure_logging()

    def start_spark():
        return get_spark(streaming.SPARK_APP, settings, extra=streaming.spark_extra(settings), long_running=True)

    return streaming.run_until_stopped(settings, sources, start_spark, available_now=available_now, trigger_s=trigger_s)


def stop_group(proc: subprocess.Popen, timeout_s: float = 90.0) -> int | None:
    """SIGTERM to the child's group (the job stops after its running batch), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode


def log_tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


class CpuWatch:
    """CPU used by the bench's processes (the job's tree, the broker's tree, this process) and by everything
    else on the machine, sampled every second in a thread; the others' share flags a busy machine."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self._seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> last cpu seconds
        self._first: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _busy(self) -> float:
        times = psutil.cpu_times()._asdict()
        # guest time is already counted in user time; idle and iowait are not busy.
        return sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))

    def _sample(self) -> None:
        for root in self.roots:
            try:
                parent = psutil.Process(root)
                processes = [parent, *parent.children(recursive=True)]
            except psutil.Error:
                continue
            for process in processes:
                try:
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
                    used = times.user + times.system
                except psutil.Error:
                    continue
                self._first.setdefault(key, 0.0 if self._started else used)  # a process born later: all of its CPU
                self._seen[key] = used

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> CpuWatch:
        self._started = False
        self._sample()
        self._started = True
        self._wall, self._busy0 = time.monotonic(), self._busy()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self._wall
        ours = sum(self._seen[key] - self._first.get(key, 0.0) for key in self._seen)
        total = self._busy() - self._busy0
        self.result = {
            "bench_cores": round(ours / wall, 2) if wall else None,
            "other_cores": round(max(total - ours, 0.0) / wall, 2) if wall else None,
        }


# --- phase 1: throughput ---


def table_dir(settings: Settings, table: str) -> Path:
    return Path(settings.lake_path(table))


def job_tables(settings: Settings) -> dict[str, list[DeltaCommit]]:
    return {
        "bronze": read_delta_log(table_dir(settings, Table.BRONZE_FEEDBACK_RAW)),
        "quarantine": read_delta_log(table_dir(settings, quarantine_table("feedback"))),
        "silver": read_delta_log(table_dir(settings, Table.SILVER_FEEDBACK_EVENTS)),
        "gold": read_delta_log(table_dir(settings, Table.GOLD_KPI_MINUTE)),
    }


def run_to_completion(settings: Settings, command: Sequence[str], log: Path, broker_pid: int, timeout_s: float):
    began = time.time()
    proc = launch(settings, log, command, new_session=True)
    with CpuWatch([proc.pid, broker_pid, os.getpid()]) as cpu:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc, timeout_s=30)
            raise RuntimeError(f"{command} did not finish in {timeout_s:.0f}s; {log}:\n{log_tail(log)}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited {proc.returncode}; {log}:\n{log_tail(log)}")
    return time.time() - began, cpu.result


def measure_job(
    settings: Settings, topic: str, expected_silver: int, broker_pid: int, log: Path, max_records: int | None
) -> dict[str, Any]:
    command = job_command("--source", "feedback", "--topic", topic, "--available-now", max_records=max_records)
    wall_s, cpu = run_to_completion(settings, command, log, broker_pid, timeout_s=max(900.0, expected_silver / 500))
    tables = job_tables(settings)
    silver = [c for c in tables["silver"] if c.txn_version is not None]
    rate = steady_rate(silver)
    batches = batch_breakdown(tables, checkpoint_marks(Path(settings.checkpoint_path("feedback_stream"))))
    steady = [batch for batch in batches if batch["batch_id"] >= 1]
    silver_rows = sum(c.rows_added for c in silver)
    gold_lags = kpi_lags(silver, tables["gold"], kpi_read_ends(Path(settings.checkpoint_path(streaming.KPI_QUERY))))
    return {
        "silver_rows": silver_rows,
        "silver_rows_expected": expected_silver,
        "silver_complete": silver_rows == expected_silver,
        "bronze_rows": sum(c.rows_added for c in tables["bronze"] if c.txn_version is not None),
        "quarantined_rows": sum(c.rows_added for c in tables["quarantine"] if c.txn_version is not None),
        "batches": rate["batches"],
        "events_per_s": rate["rows_per_s"],
        "steady_rows": rate["steady_rows"],
        "steady_s": rate["steady_s"],
        "wall_s": round(wall_s, 1),
        "wall_events_per_s": round(silver_rows / wall_s, 1),
        "cpu": cpu,
        "batch_medians_s": breakdown_medians(steady),
        # The KPI query runs after the topic's (available-now): how long gold took to cover silver's last commit.
        "gold_after_last_silver_s": gold_lags[-1] if gold_lags else None,
        "per_batch": batches,
    }


def measure_baseline(
    settings: Settings, topic: str, records: int, broker_pid: int, log: Path, max_records: int | None
) -> dict[str, Any]:
    command = [str(services.ADSTREAM), "bench", "streaming", "--baseline-job", topic]
    if max_records is not None:
        command += ["--max-records-per-batch", str(max_records)]
    wall_s, cpu = run_to_completion(settings, command, log, broker_pid, timeout_s=max(900.0, records / 500))
    commits = [c for c in read_delta_log(table_dir(settings, BASELINE_TABLE)) if c.rows_added > 0]
    rate = steady_rate(commits)
    rows = sum(c.rows_added for c in commits)
    return {
        "rows": rows,
        "rows_expected": records,
        "complete": rows == records,
        "batches": rate["batches"],
        "events_per_s": rate["rows_per_s"],
        "steady_rows": rate["steady_rows"],
        "steady_s": rate["steady_s"],
        "wall_s": round(wall_s, 1),
        "wall_events_per_s": round(rows / wall_s, 1),
        "cpu": cpu,
    }


def baseline_job(settings: Settings, topic: str, max_records: int | None) -> int:
    """Kafka -> one Delta table as-is, with the job's Kafka options, batch bound and session (child process)."""
    spark = get_spark(
        "streaming",
        settings,
        extra={"spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions)},
    )
    try:
        query = (
            streaming.kafka_records(spark, settings, topic, max_records)
            .writeStream.format("delta")
            .queryName(BASELINE_QUERY)
            .option("checkpointLocation", settings.checkpoint_path(BASELINE_QUERY))
            .trigger(availableNow=True)
            .start(settings.lake_path(BASELINE_TABLE))
        )
        query.awaitTermination()
    finally:
        spark.stop()
    return 0


def throughput_phase(settings: Settings, workdir: Path, broker_pid: int, args: Options) -> dict[str, Any]:
    topic = "bench-feedback-backlog"
    ensure_topics(settings, [topic])
    backlog = produce_backlog(settings, topic, args.events)
    print(
        f"backlog: {backlog['records']:,} records ({backlog['unique_valid']:,} unique valid, "
        f"{backlog['duplicates']:,} re-sent copies, {backlog['malformed']:,} malformed) produced in "
        f"{backlog['produce_s']}s ({backlog['produce_per_s']:,.0f}/s)",
        flush=True,
    )
    repeats = []
    for repeat in range(1, args.repeats + 1):
        lake = workdir / f"lake-throughput-{repeat}"
        job_settings = settings.model_copy(update={"lake_root": str(lake / "job")})
        job = measure_job(
            job_settings, topic, backlog["unique_valid"], broker_pid, workdir / "logs" / f"job-{repeat}.log",
            args.max_records_per_batch,
        )  # fmt: skip
        base_settings = settings.model_copy(update={"lake_root": str(lake / "baseline")})
        baseline = measure_baseline(
            base_settings, topic, backlog["records"], broker_pid, workdir / "logs" / f"baseline-{repeat}.log",
            args.max_records_per_batch,
        )  # fmt: skip
        if not args.keep:
            shutil.rmtree(lake, ignore_errors=True)
        over = ratio(baseline["events_per_s"], job["events_per_s"], 2) if baseline["events_per_s"] else None
        repeats.append({"repeat": repeat, "job": job, "baseline": baseline, "baseline_over_job": over})
        medians = job["batch_medians_s"]
        print(
            f"repeat {repeat}: job {_rate(job['events_per_s'])} events/s into silver over {job['batches']} batches "
            f"(wall {job['wall_s']}s incl. JVM start: {_rate(job['wall_events_per_s'])}/s; silver "
            f"{'complete' if job['silver_complete'] else 'INCOMPLETE'}; cores: job+broker {job['cpu']['bench_cores']}, "
            f"others {job['cpu']['other_cores']}) | baseline {_rate(baseline['events_per_s'])} rows/s "
            f"(wall {baseline['wall_s']}s) | baseline/job {over}",
            flush=True,
        )
        print("  median batch (s): " + ", ".join(f"{k} {_num(v)}" for k, v in medians.items()), flush=True)
        print(f"  gold/kpi_minute covered the last silver commit {_num(job['gold_after_last_silver_s'])}s after it",
              flush=True)  # fmt: skip
    job_median = median_or_none(r["job"]["events_per_s"] for r in repeats)
    baseline_median = median_or_none(r["baseline"]["events_per_s"] for r in repeats)
    return {
        "backlog": backlog,
        "topic_partitions": 3,
        "max_records_per_batch": args.max_records_per_batch or streaming.MAX_RECORDS_PER_BATCH,
        "max_records_per_batch_is_the_jobs": args.max_records_per_batch is None,
        "repeats": repeats,
        "median_job_events_per_s": job_median,
        "median_job_wall_events_per_s": median_or_none(r["job"]["wall_events_per_s"] for r in repeats),
        "median_baseline_events_per_s": baseline_median,
        "baseline_over_job": ratio(baseline_median, job_median, 2) if baseline_median else None,
        "job_share_of_baseline": ratio(job_median, baseline_median, 3) if job_median else None,
        "median_batch_s": {
            key: median_or_none(r["job"]["batch_medians_s"][key] for r in repeats)
            for key in repeats[0]["job"]["batch_medians_s"]
        },
        "median_gold_after_last_silver_s": median_or_none(r["job"]["gold_after_last_silver_s"] for r in repeats),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_met": job_median is not None and job_median >= TARGET_EVENTS_PER_S,
    }


# --- phase 2: latency and soak ---


def rss_mb(pid: int) -> dict[str, float] | None:
    """RSS of the job's Python process and of its descendants (the JVM), MB."""
    try:
        parent = psutil.Process(pid)
        python = parent.memory_info().rss
        children = 0
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children += child.memory_info().rss
    except psutil.Error:
        return None
    return {"python_mb": python / 2**20, "jvm_mb": children / 2**20, "total_mb": (python + children) / 2**20}


def silver_rows(commits: Iterable[DeltaCommit]) -> int:
    return sum(commit.rows_added for commit in commits if commit.txn_version is not None)


def continuous_phase(settings: Settings, workdir: Path, broker_pid: int, args: Options) -> dict[str, Any]:
    settings = settings.model_copy(update={"lake_root": str(workdir / "lake-continuous")})
    topic = "bench-feedback-live"
    ensure_topics(settings, [topic])
    log = workdir / "logs" / "continuous.log"
    command = job_command("--source", "feedback", "--topic", topic, "--trigger-s", f"{args.trigger_s:g}",
                          max_records=args.max_records_per_batch)  # fmt: skip
    silver_dir = table_dir(settings, Table.SILVER_FEEDBACK_EVENTS)
    proc = launch(settings, log, command, new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not streaming.is_alive(settings, proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the continuous job did not come up; {log}:\n{log_tail(log)}")
            time.sleep(0.5)
        print(f"continuous job up (trigger {args.trigger_s:g}s); producing {args.rate:,}/s", flush=True)
        errors: list[str] = []
        producer = make_producer(settings, linger_ms=5, errors=errors)
        factory = RecordFactory(seed=11)
        started = time.monotonic()
        samples: list[dict[str, float]] = []
        next_sample = started
        windows = [("w", args.warmup_s), ("l", args.latency_s), ("s", args.soak_s)]
        valid_by_tag: dict[str, int] = {}
        window_bounds: dict[str, tuple[float, float]] = {}
        seq = 0
        with CpuWatch([proc.pid, broker_pid, os.getpid()]) as cpu:
            for tag, seconds in windows:
                if seconds <= 0:
                    continue
                before = factory.tally.valid
                began = time.monotonic()
                sent = 0
                while (elapsed := time.monotonic() - began) < seconds:
                    for _ in range(int(elapsed * args.rate) - sent):
                        now_us = time.time_ns() // 1000
                        key, value = factory.record(latency_event_id(tag, seq, now_us), now_us)
                        send(producer, topic, key, value)
                        seq += 1
                        sent += 1
                    producer.poll(0)
                    if time.monotonic() >= next_sample:
                        memory = rss_mb(proc.pid)
                        if memory is not None:
                            samples.append({"t_s": round(time.monotonic() - started, 1), "window": tag, **memory})
                        next_sample += args.sample_s
                    if proc.poll() is not None:
                        raise RuntimeError(f"the continuous job exited {proc.returncode}; {log}:\n{log_tail(log)}")
                    time.sleep(0.005)
                valid_by_tag[tag] = factory.tally.valid - before
                window_bounds[tag] = (round(began - started, 1), round(time.monotonic() - started, 1))
                print(f"  window {tag}: {sent:,} records in {seconds:.0f}s", flush=True)
            producer.flush(60)
            expected = factory.tally.valid
            deadline = time.monotonic() + max(120.0, 6 * args.trigger_s)
            commits = read_delta_log(silver_dir)
            while silver_rows(commits) < expected and time.monotonic() < deadline:
                time.sleep(1.0)
                commits = read_delta_log(silver_dir)
        drained_s = round(time.monotonic() - started - sum(s for _, s in windows if s > 0), 1)
        returncode = stop_group(proc)
    finally:
        stop_group(proc)
    commits = read_delta_log(silver_dir)
    gold_lags = kpi_lags(
        commits,
        read_delta_log(table_dir(settings, Table.GOLD_KPI_MINUTE)),
        kpi_read_ends(Path(settings.checkpoint_path(streaming.KPI_QUERY))),
    )
    pairs = produced_and_visible(silver_dir, [c for c in commits if c.txn_version is not None], "wls")
    latencies = {tag: [(visible - produced) / 1e6 for produced, visible in events] for tag, events in pairs.items()}
    batches = [c for c in commits if c.txn_version is not None and c.rows_added > 0]
    intervals = [(b.timestamp_ms - a.timestamp_ms) / 1000 for a, b in itertools.pairwise(batches)]
    tally = factory.tally
    measured = latencies["l"] + latencies["s"] if args.latency_s <= 0 else latencies["l"]
    soak_samples = [s for s in samples if s["window"] == "s"] or samples
    memory = {
        kind: memory_summary([(s["t_s"], s[f"{kind}_mb"]) for s in soak_samples]) for kind in ("total", "jvm", "python")
    }
    trend = memory["total"]["slope_mb_per_min_second_half"]
    p95 = percentile(measured, 95) if measured else None
    return {
        "rate_per_s": args.rate,
        "trigger_s": args.trigger_s,
        "windows_s": {tag: seconds for tag, seconds in windows},
        "window_bounds_s": window_bounds,
        "records": tally.records,
        "unique_valid": tally.valid,
        "duplicates": tally.duplicate,
        "malformed": tally.malformed,
        "produce_errors": len(errors),
        "silver_rows": silver_rows(commits),
        "all_visible": silver_rows(commits) == tally.valid,
        "drain_s_after_last_record": drained_s,
        "job_exit_code": returncode,
        "cpu": cpu.result,
        "batches": len(batches),
        "median_batch_interval_s": median_or_none(intervals),
        "median_batch_rows": median_or_none(b.rows_added for b in batches),
        "latency": latency_summary(measured),
        "silver_to_gold_s": latency_summary(gold_lags),
        "latency_missing": valid_by_tag.get("l", 0) - len(latencies["l"]),
        "latency_during_soak": latency_summary(latencies["s"]),
        "latency_during_soak_by_sixth": latency_slices(pairs["s"], 6),
        "batch_interval_by_sixth_of_run_s": [
            median_or_none(part)
            for part in (intervals[i * len(intervals) // 6 : (i + 1) * len(intervals) // 6] for i in range(6))
        ]
        if len(intervals) >= 6
        else None,
        "latency_target_p95_s": TARGET_P95_S,
        "latency_target_met": (
            p95 is not None
            and p95 <= TARGET_P95_S
            and args.trigger_s == TARGET_TRIGGER_S
            and silver_rows(commits) == tally.valid
        ),
        "memory": memory,
        "memory_samples": samples,
        "memory_flat_threshold_mb_per_min": FLAT_MB_PER_MIN,
        "memory_target_met": trend is not None and trend <= FLAT_MB_PER_MIN,
        "soak_full_length": args.soak_s >= FULL_SOAK_S,
    }


# --- the run ---


@dataclass
class Options:
    """What a run of the bench is asked for (the options of `adstream bench streaming`). ``rate`` None is decided
    by the run (DEFAULT_RATE, or half the measured throughput when lower); ``sample_s`` None is about 1/40 of the
    soak, between 5 and 30 s."""

    repeats: int = 3
    events: int = 2_000_000
    soak: str = "30m"
    rate: int | None = None
    latency_s: float = 120.0
    warmup_s: float = 30.0
    trigger_s: float = TARGET_TRIGGER_S
    sample_s: float | None = None
    only: str | None = None
    max_records_per_batch: int | None = None
    keep: bool = False
    soak_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.soak_s = parse_duration(self.soak)  # a ValueError says what a duration looks like
        if self.sample_s is None:
            self.sample_s = min(30.0, max(5.0, self.soak_s / 40))


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, int) else f"{value:.2f}"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    throughput = result.get("throughput")
    if throughput:
        rows.append(
            {
                "target": f"throughput into silver >= {TARGET_EVENTS_PER_S:,.0f} events/s (local[2])",
                "measured": throughput["median_job_events_per_s"],
                "met": throughput["target_met"],
            }
        )
    continuous = result.get("continuous")
    if continuous:
        rows.append(
            {
                "target": f"produce -> visible in silver p95 <= {TARGET_P95_S:g}s (trigger {TARGET_TRIGGER_S:g}s)",
                "measured": continuous["latency"]["p95_s"],
                "met": continuous["latency_target_met"],
            }
        )
        soak = continuous["windows_s"]["s"]
        rows.append(
            {
                "target": f"RSS flat over a 30-minute soak (second-half slope <= {FLAT_MB_PER_MIN:g} MB/min)",
                "measured": continuous["memory"]["total"]["slope_mb_per_min_second_half"],
                "met": continuous["memory_target_met"] if soak > 0 else None,
                "note": None if continuous["soak_full_length"] else f"soak was {soak / 60:.1f} min, not 30",
            }
        )
    return rows


def run(args: Options, workdir: Path) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = bench_settings(workdir)
    result: dict[str, Any] = {
        "setup": {
            "spark_master": settings.spark_master,
            "shuffle_partitions": settings.spark_shuffle_partitions,
            "driver_memory": settings.spark_driver_memory,
            "watermark_s": settings.stream_watermark_s,
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "kafka": f"private broker at {settings.kafka_bootstrap_servers}",
            "workdir": str(workdir),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    }
    with services.running(settings, "kafka") as broker_pid:
        print(f"Kafka: a private broker at {settings.kafka_bootstrap_servers}; scratch in {workdir}", flush=True)
        if args.only in (None, "throughput"):
            result["throughput"] = throughput_phase(settings, workdir, broker_pid, args)
        if args.rate is None:
            measured = result.get("throughput", {}).get("median_job_events_per_s")
            args.rate = DEFAULT_RATE if not measured else max(100, min(DEFAULT_RATE, int(measured / 2)))
            if args.rate != DEFAULT_RATE:
                print(f"continuous rate {args.rate:,}/s: half the throughput measured above", flush=True)
        if args.only in (None, "continuous") and (args.latency_s > 0 or args.soak_s > 0):
            result["continuous"] = continuous_phase(settings, workdir, broker_pid, args)
    result["targets"] = targets(result)
    others = [r[kind]["cpu"]["other_cores"] for r in result.get("throughput", {}).get("repeats", []) for kind in
              ("job", "baseline")]  # fmt: skip
    if "continuous" in result:
        others.append(result["continuous"]["cpu"]["other_cores"])
    present = [value for value in others if value is not None]
    result["other_cores_max"] = max(present) if present else None
    result["busy_machine"] = bool(present) and max(present) > BUSY_MACHINE_CORES
    return result


def summary(result: dict[str, Any], out: Path) -> str:
    lines = []
    throughput = result.get("throughput")
    if throughput:
        lines.append(
            f"throughput (median of {len(throughput['repeats'])}): job {_rate(throughput['median_job_events_per_s'])} "
            f"events/s into silver (wall incl. JVM start {_rate(throughput['median_job_wall_events_per_s'])}/s); "
            f"baseline Kafka -> Delta as-is {_rate(throughput['median_baseline_events_per_s'])} rows/s; "
            f"job = {throughput['job_share_of_baseline']} x baseline "
            f"(maxOffsetsPerTrigger {throughput['max_records_per_batch']:,})"
        )
        lines.append(
            "  median batch (s): " + ", ".join(f"{k} {_num(v)}" for k, v in throughput["median_batch_s"].items())
        )
        lines.append(
            f"  gold/kpi_minute covered the last silver commit {_num(throughput['median_gold_after_last_silver_s'])}s "
            "after it (the KPI query runs after the topic's)"
        )
    continuous = result.get("continuous")
    if continuous:
        latency, memory = continuous["latency"], continuous["memory"]["total"]
        lines.append(
            f"latency ({latency['events']:,} events at {continuous['rate_per_s']:,}/s, trigger "
            f"{continuous['trigger_s']:g}s): p50 {latency['p50_s']}s p95 {latency['p95_s']}s "
            f"p99 {latency['p99_s']}s max {latency['max_s']}s; batches every "
            f"{_num(continuous['median_batch_interval_s'])}s of {_num(continuous['median_batch_rows'])} rows"
        )
        gold = continuous["silver_to_gold_s"]
        lines.append(
            f"gold/kpi_minute after silver ({gold['events']:,} silver commits): p50 {gold['p50_s']}s "
            f"p95 {gold['p95_s']}s max {gold['max_s']}s"
        )
        soak = continuous["latency_during_soak"]
        if soak["events"]:
            lines.append(
                f"latency during the soak ({soak['events']:,} events): p50 {soak['p50_s']}s p95 {soak['p95_s']}s "
                f"max {soak['max_s']}s; p95 by sixth of the soak: "
                + ", ".join(str(part["p95_s"]) for part in continuous["latency_during_soak_by_sixth"])
            )
        if not continuous["all_visible"]:
            lines.append(
                f"NOT ALL VISIBLE: silver holds {continuous['silver_rows']:,} of {continuous['unique_valid']:,}"
            )
        lines.append(
            f"memory (job + JVM RSS, {memory['samples']} samples): start {memory['start_mb']} MB, end "
            f"{memory['end_mb']} MB, peak {memory['peak_mb']} MB, second-half slope "
            f"{memory['slope_mb_per_min_second_half']} MB/min (JVM "
            f"{continuous['memory']['jvm']['slope_mb_per_min_second_half']}, Python "
            f"{continuous['memory']['python']['slope_mb_per_min_second_half']})"
        )
    busy = result.get("other_cores_max")
    if busy is not None and busy > BUSY_MACHINE_CORES:
        lines.append(
            f"WARNING: other processes used up to {busy} of {result['setup']['cores']} cores during the run; "
            "the figures understate what the job does on an idle machine"
        )
    for row in result["targets"]:
        verdict = "n/a" if row["met"] is None else "met" if row["met"] else "MISSED"
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(f"target: {row['target']}: measured {row['measured']} -> {verdict}{note}")
    lines.append(f"written to {out}")
    return "\n".join(lines)


def bench(settings: Settings, args: Options, workdir: Path | None = None, out: Path | None = None) -> int:
    """`adstream bench streaming`: the phases in a scratch directory (default LOCAL_DIR/bench/streaming, removed
    unless ``args.keep``), the report to ``out`` (default REPORTS_DIR/bench/streaming.json)."""
    scratch = (workdir or settings.local_dir / "bench" / "streaming").resolve()
    report = (out or report_path(settings, "streaming")).resolve()
    try:
        result = run(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    given = {"workdir": workdir, "out": out}
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in {**asdict(args), **given}.items()}
    write_report(result, report)
    print(summary(result, report), flush=True)
    return 0


# --- the command (`adstream bench streaming`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("streaming", help=__doc__.splitlines()[0])
def streaming_command(
    repeats: int = 3,
    events: Annotated[
        int, typer.Option(help="backlog records for the throughput phase (four batches of the job)")
    ] = 2_000_000,
    soak: Annotated[str, typer.Option(help="soak duration, e.g. 30m, 2m, 0 (none)")] = "30m",
    rate: Annotated[
        int | None,
        typer.Option(
            help=f"records/s in the continuous phase (default {DEFAULT_RATE:,}, or half the throughput "
            "measured in this run when that is lower, so the job can keep up)"
        ),
    ] = None,
    latency_s: Annotated[float, typer.Option(help="latency window of the continuous phase")] = 120.0,
    warmup_s: Annotated[float, typer.Option(help="production before latency is measured")] = 30.0,
    trigger_s: float = TARGET_TRIGGER_S,
    sample_s: Annotated[float | None, typer.Option(help="RSS sampling interval (default ~30 s)")] = None,
    only: Literal["throughput", "continuous"] | None = None,
    max_records_per_batch: Annotated[
        int | None,
        typer.Option(help="run the job with another maxOffsetsPerTrigger (a variant; default: the job's own)"),
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="scratch (default: LOCAL_DIR/bench/streaming)")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="keep the scratch directory")] = False,
    out: Annotated[Path | None, typer.Option(help="report (default: REPORTS_DIR/bench/streaming.json)")] = None,
    baseline_topic: Annotated[str | None, typer.Option("--baseline-job", metavar="TOPIC", hidden=True)] = None,
) -> None:
    settings = get_settings()
    if baseline_topic:  # the bench's own child process: Kafka -> Delta as-is
        raise typer.Exit(baseline_job(settings, baseline_topic, max_records_per_batch))
    try:
        options = Options(
            repeats=repeats,
            events=events,
            soak=soak,
            rate=rate,
            latency_s=latency_s,
            warmup_s=warmup_s,
            trigger_s=trigger_s,
            sample_s=sample_s,
            only=only,
            max_records_per_batch=max_records_per_batch,
            keep=keep,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--soak'") from None
    raise typer.Exit(bench(settings, options, workdir, out))


@commands.command("streaming-job", hidden=True)
def streaming_job(
    max_records_per_batch: Annotated[int, typer.Option()],
    source: Literal["feedback", "auctions", "all"] = "all",  # spark_jobs.streaming.SOURCE_CHOICES
    topic: str | None = None,
    available_now: Annotated[bool, typer.Option("--available-now")] = False,
    trigger_s: float | None = None,
) -> None:
    """(internal) `adstream stream` with another batch bound: the bench's --max-records-per-batch variant."""
    try:
        code = job_variant(get_settings(), max_records_per_batch, source, topic, available_now, trigger_s)
    except ValueError as exc:  # --topic with more than one source
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(code)
