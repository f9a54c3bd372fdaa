"""The ledger and the lake agree by construction: a kill -9 of the service and a broker outage mid-batch.

A real ``adstream serve`` process on a broker of this module's own (it is stopped and started),
a SQLite campaign store, and the streaming job into Delta. After the crashes, the ledger's
charged events and silver's charged events are the same, event id by event id and time by time.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pyspark.sql import functions as F
from sqlalchemy import select

from adstream.contracts import Table, Topic
from adstream.messaging import ensure_topics
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.campaign_store.tables import FeedbackJournal, SpendLedgerEntry
from devstack import services
from spark_jobs import streaming
from tests.auction_service.conftest import impression_time, instruction, signed_event
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("crash-broker"))
    (kafka,) = services.build_services(settings, ["kafka"])
    services.start(settings, kafka)
    try:
        services.wait_healthy(settings, kafka)
        ensure_topics(settings, [Topic.AD_FEEDBACK, Topic.AUCTIONS, Topic.REFUSED_EVENTS])
        yield settings, kafka
    finally:
        services.stop(settings, kafka)


@pytest.fixture(scope="module")
def settings(service_settings, broker):
    broker_settings, _ = broker
    return service_settings.model_copy(
        update={
            "kafka_bootstrap_servers": broker_settings.kafka_bootstrap_servers,
            "kafka_port": broker_settings.kafka_port,
            "auction_port": free_port(),
            "spark_master": "local[2]",
        }
    )


def kill_9(settings) -> None:
    pid = services.running_pid(settings, "auction")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    while services.running_pid(settings, "auction") is not None:
        time.sleep(0.05)


def start_service(settings):
    (auction,) = services.build_services(settings, ["auction"])
    services.start(settings, auction)
    services.wait_healthy(settings, auction)
    deadline = time.monotonic() + 60
    while httpx.get(f"{auction.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.2)
    return auction


def serve_and_click(http: httpx.Client, tag: str) -> list[dict]:
    """An auction, then its impression and click as the client would send them (bodies kept for retries)."""
    answer = http.post("/v1/auction", json={"user_id": f"u-{tag}", "device_type": "mobile"})
    if answer.status_code != 200:
        return []
    auction = answer.json()
    return [signed_event(auction, "impression", at=impression_time()), signed_event(auction, "click")]


def post_until_answered(base_url: str, events: list[dict], deadline_s: float = 120) -> httpx.Response:
    """A client's retry loop: the same events, with the same ids, until the service answers other than 503."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            answer = httpx.post(f"{base_url}/v1/events", json={"events": events}, timeout=10)
            if answer.status_code != 503:
                return answer
        except httpx.TransportError:
            pass  # the service is down: retry
        assert time.monotonic() < deadline, "the events were never taken"
        time.sleep(0.2)


def test_after_a_kill_9_and_a_broker_outage_the_ledger_equals_silver_event_by_event(spark, settings, broker):
    broker_settings, kafka = broker
    engine = make_engine(settings)
    migrate(settings, engine)
    sessions = make_session_factory(engine)
    with sessions() as session:
        store.apply_instruction(session, instruction("crash-cpc", total_budget_micros=10**9, daily_budget_micros=10**9))
    auction = start_service(settings)
    base_url = auction.url
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            # 1. Normal traffic.
            for n in range(10):
                assert post_until_answered(base_url, serve_and_click(http, f"a{n}")).status_code == 202
            # 2. The broker goes away in the middle: the batch is journaled and charged, Kafka never acks.
            pending = [event for n in range(10) for event in serve_and_click(http, f"b{n}")]
            assert services.stop(broker_settings, kafka) == "stopped"
            began = time.monotonic()
            outage = http.post("/v1/events", json={"events": pending})
            assert outage.status_code == 503 and time.monotonic() - began < 6, outage.text
            assert outage.headers["Retry-After"]
            readiness = http.get("/readyz")  # a load balancer sees it too
            assert readiness.status_code == 503 and readiness.json()["checks"]["kafka"].startswith("no Kafka broker")
            assert readiness.json()["checks"]["store"] == "ok"
        # 3. kill -9 before the relay could publish anything: the journal holds what Kafka never got.
        kill_9(settings)
        with sessions() as session:
            unpublished = session.scalars(
                select(FeedbackJournal.event_id).where(FeedbackJournal.published_at.is_(None))
            )
            assert {event["event_id"] for event in pending} <= set(unpublished)
        services.start(broker_settings, kafka)
        services.wait_healthy(broker_settings, kafka)
        start_service(settings)
        # 4. The client retries the batch; meanwhile the restarted relay publishes the journal.
        retried = post_until_answered(base_url, pending).json()
        assert retried["rejected"] == 0 and retried["duplicate"] == len(pending)
        # 5. Load from 8 clients, with a kill -9 in the middle of it; each client retries until answered.
        with httpx.Client(base_url=base_url, timeout=30) as http:
            batches = [serve_and_click(http, f"c{n}") for n in range(40)]
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(post_until_answered, base_url, batch) for batch in batches if batch]
            time.sleep(0.5)
            kill_9(settings)
            start_service(settings)
            assert all(answer.result().status_code == 202 for answer in answers)
        deadline = time.monotonic() + 60
        while True:  # the relay marks every journaled event published
            with sessions() as session:
                left = session.scalars(select(FeedbackJournal.event_id).where(FeedbackJournal.published_at.is_(None)))
                if not list(left):
                    break
            assert time.monotonic() < deadline, "the relay did not publish the journal"
            time.sleep(0.5)
    finally:
        services.stop(settings, auction)

    lake = settings.model_copy(update={"lake_root": str(settings.local_dir.parent / f"lake-{uuid.uuid4().hex[:6]}")})
    streaming.run(spark, lake, [streaming.SOURCES["feedback"]], available_now=True)
    silver = (
        spark.read.format("delta")
        .load(lake.lake_path(Table.SILVER_FEEDBACK_EVENTS))
        .where(F.col("charge_status") == "charged")
        .select("event_id", F.unix_micros("event_time").alias("micros"), "cost_micros")
        .collect()
    )
    with sessions() as session:
        ledger = session.execute(
            select(SpendLedgerEntry.event_id, SpendLedgerEntry.event_time, SpendLedgerEntry.cost_micros)
        ).all()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ledger_events = {(e, (t - epoch) // timedelta(microseconds=1), c) for e, t, c in ledger}
    silver_events = {(row.event_id, row.micros, row.cost_micros) for row in silver}
    assert len(ledger_events) >= 20  # the phases above charged clicks
    assert silver_events == ledger_events
    assert len(silver) == len(silver_events)  # once each in silver
