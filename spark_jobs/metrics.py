"""Prometheus metrics of the streaming job, from Spark's own progress reports.

``StreamingMetrics`` is a ``StreamingQueryListener``: after every micro-batch of every query Spark hands it
the batch's progress (``StreamingQueryProgress``), and it records the batch's duration, its input rows and,
for a Kafka source, how many records the query is behind the end of its topic once the batch is done
(the source's ``latestOffset`` minus its ``endOffset``, summed over partitions). ``adstream stream`` serves
its registry on BIND_HOST:STREAMING_METRICS_PORT (``adstream.exporter``).
"""

from __future__ import annotations

import json
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
)

from adstream.exporter import process_registry

# From a small stream's sub-second batches to a cluster's batches of minutes.
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
ROWS_BUCKETS = (0, 10, 100, 1_000, 10_000, 100_000, 500_000)  # MAX_RECORDS_PER_BATCH is 500,000


def kafka_offsets_behind(end_offset: str | None, latest_offset: str | None) -> dict[str, int]:
    """Topic -> records between a Kafka source's end offsets (read up to) and its latest ones, summed over
    partitions; {} when either is missing or not a Kafka source's offsets ({"topic": {"partition": offset}})."""
    try:
        end, latest = json.loads(end_offset or "null"), json.loads(latest_offset or "null")
    except ValueError:
        return {}
    if not isinstance(end, dict) or not isinstance(latest, dict):
        return {}
    behind = {}
    for topic, partitions in latest.items():
        read = end.get(topic)
        if not isinstance(partitions, dict) or not isinstance(read, dict):
            return {}
        behind[topic] = sum(max(0, int(latest) - int(read.get(p, 0))) for p, latest in partitions.items())
    return behind


def _epoch_seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class StreamingMetrics(StreamingQueryListener):
    """The job's metric families, moved by Spark's progress events (one per micro-batch of each query)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry()
        r = self.registry
        self.batch_duration = Histogram(
            "adstream_streaming_batch_duration_seconds", "Time of one micro-batch, from its trigger to its commit",
            ["query"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "adstream_streaming_batch_input_rows", "Input rows of one micro-batch (_count: batches, _sum: rows)",
            ["query"], buckets=ROWS_BUCKETS, registry=r,
        )  # fmt: skip
        self.offsets_behind = Gauge(
            "adstream_streaming_offsets_behind_latest",
            "Kafka records not read yet when the query's last batch was done (latest minus end offsets)",
            ["query", "topic"], registry=r,
        )  # fmt: skip
        self.last_progress = Gauge(
            "adstream_streaming_last_batch_timestamp_seconds", "When the query's last micro-batch was triggered",
            ["query"], registry=r,
        )  # fmt: skip
        self.terminated = Counter(
            "adstream_streaming_queries_terminated_total", "Queries that ended, by whether with an error",
            ["query", "failed"], registry=r,
        )  # fmt: skip
        self._names: dict[str, str] = {}  # query id -> name (a terminated event carries the id only)

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        self._names[str(event.id)] = event.name or str(event.id)

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        progress = event.progress
        query = progress.name or str(progress.id)
        self._names[str(progress.id)] = query
        self.batch_duration.labels(query=query).observe(progress.batchDuration / 1000)
        self.batch_rows.labels(query=query).observe(progress.numInputRows)
        self.last_progress.labels(query=query).set(_epoch_seconds(progress.timestamp))
        for source in progress.sources:
            for topic, behind in kafka_offsets_behind(source.endOffset, source.latestOffset).items():
                self.offsets_behind.labels(query=query, topic=topic).set(behind)

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass  # no batch ran: nothing moved

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        query = self._names.get(str(event.id), str(event.id))
        self.terminated.labels(query=query, failed=str(event.exception is not None).lower()).inc()
