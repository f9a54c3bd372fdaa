"""The running service: Kafka down during events, store changes within 1 s, hot swap, not ready, bad input."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from adstream.contracts import CHAMPION_ALIAS, REGISTERED_MODEL, Topic
from adstream.messaging import AckedProducer, LogProducer
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from auction_service.serving.champion import PollOutcome
from auction_service.serving.state import EventJournal
from ml.tracking import tracking_client
from tests.auction_service.conftest import (
    TOKEN,
    impression_time,
    instruction,
    live_server,
    mlflow_process_uri,
    open_service,
    running_service,
    signed_event,
    stop,
    topic_records,
)
from tests.conftest import free_port

pytestmark = pytest.mark.slow
KAFKA_CONTEXT = {"device_type": "desktop", "country": "Norway"}
KAFKA_TARGETING = {"device_types": ["desktop"], "countries": ["Norway"]}
NEW_CONTEXT = {"device_type": "ctv", "country": "Iceland"}


@pytest.fixture(scope="module")
def live(service_settings):
    """A started service (housekeeping every CAMPAIGN_REFRESH_S, real producer) and a client for it."""
    with (
        running_service(
            service_settings,
            instruction("live-kafka", targeting=KAFKA_TARGETING, category="Books"),
            instruction("live-stopped", category="Books"),
            stop("live-stopped"),
        ) as state,
        TestClient(create_app(state=state)) as client,
    ):
        yield state, client


def campaign_instructions_for(settings, campaign_ids: set[str]) -> list[dict]:
    records = topic_records(settings, Topic.CAMPAIGN_INSTRUCTIONS)
    return [json.loads(r.value) for r in records if r.key is not None and r.key.decode() in campaign_ids]


# --- the auction log ---


def test_every_auction_is_published_to_the_auctions_topic_with_its_outcome(live):
    state, client = live
    served = [client.post("/v1/auction", json=KAFKA_CONTEXT) for _ in range(5)]
    unfilled = client.post("/v1/auction", json={**KAFKA_CONTEXT, "country": "Atlantis"})
    assert [r.status_code for r in served] == [200] * 5 and unfilled.status_code == 204
    assert state.auction_log.flush(30) == 0
    records = [json.loads(r.value) for r in topic_records(state.settings, Topic.AUCTIONS)]
    by_id = {record["auction_id"]: record for record in records}
    for response in served:
        body = response.json()
        record = by_id[body["auction_id"]]  # one record per auction, keyed by it
        assert record["filled"] is True and record["campaign_id"] == "live-kafka"
        assert record["clearing_price_micros"] == body["clearing_price_micros"]
        assert record["country"] == "Norway" and record["device_type"] == "desktop"
        assert record["candidate_count"] >= 1 and record["model_version"] == body["model_version"]
        assert record["latency_ms"] > 0 and record["schema_version"] == 1
    no_fill = [r for r in records if r["country"] == "Atlantis"]
    assert no_fill and all(r["filled"] is False and r["campaign_id"] is None for r in no_fill)


def test_auctions_do_not_wait_for_a_broker_that_went_away(live):
    state, client = live
    unreachable = state.settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    lost: list[str] = []
    working, state.auction_log = (
        state.auction_log,
        LogProducer(unreachable, client_id="test-away", on_lost=lost.append, timeout_ms=1_000),
    )
    try:
        began = time.monotonic()
        assert all(client.post("/v1/auction", json=KAFKA_CONTEXT).status_code == 200 for _ in range(20))
        assert time.monotonic() - began < 5  # no send waits for the broker
        state.auction_log.flush(5)  # the records time out undelivered: counted as lost, not hidden
        assert len(lost) == 20
    finally:
        state.auction_log = working


# --- Kafka down during /v1/events ---


def test_kafka_down_during_events_is_503_with_retry_advice_and_the_journal_charges_once(live):
    state, client = live
    auctions = [client.post("/v1/auction", json=KAFKA_CONTEXT).json() for _ in range(3)]
    assert {a["campaign_id"] for a in auctions} == {"live-kafka"}
    shown = impression_time()
    events = [signed_event(a, "impression", f"k-imp-{a['auction_id']}", at=shown) for a in auctions]
    events += [signed_event(a, "click", f"k-{a['auction_id']}") for a in auctions]
    event_ids = {e["event_id"] for e in events}
    price = sum(a["clearing_price_micros"] for a in auctions)

    # A broker nobody listens on (no record is acknowledged within the timeout), then no
    # producer at all (a service that was not started).
    unreachable = state.settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    dead = AckedProducer(unreachable, client_id="test-dead", timeout_s=0.5)
    working = state.feedback_log
    try:
        for producer in (dead, None):
            state.feedback_log = producer
            for body in ({"events": events}, events[-1]):
                refused = client.post("/v1/events", json=body)
                assert refused.status_code == 503, refused.text
                assert refused.headers["Retry-After"] == "1"
                assert "retry the same events with the same event_id" in refused.json()["detail"]
        # Nothing reached the topic (the relay has no producer either) ...
        feedback = {json.loads(r.value)["event_id"] for r in topic_records(state.settings, Topic.AD_FEEDBACK)}
        assert not feedback & event_ids
    finally:
        state.feedback_log = working
        dead.close(timeout_s=1)

    # ... but the journal, the outbox, holds the events: each click charged once, in the transaction that journaled it.
    with state.sessions() as session:
        assert store.get_campaign(session, "live-kafka").spent_micros == price
        ledger = store.spend_by_campaign_hour(session, shown - timedelta(hours=2), shown + timedelta(hours=1))
    assert sum(spend for (campaign_id, _), spend in ledger.items() if campaign_id == "live-kafka") == price

    # Broker back: the retry is answered from the journal, charges nothing more and publishes the events.
    retried = client.post("/v1/events", json={"events": events}).json()["results"]
    as_journaled = [("duplicate", "not_billable")] * 3 + [("duplicate", "charged")] * 3
    assert [(r["status"], r["charge_status"]) for r in retried] == as_journaled
    assert sum(r["charged_micros"] for r in retried) == 0
    with state.sessions() as session:
        assert store.get_campaign(session, "live-kafka").spent_micros == price
    published = {
        record["event_id"]: record
        for record in map(json.loads, (r.value for r in topic_records(state.settings, Topic.AD_FEEDBACK)))
        if record["event_id"] in event_ids
    }
    assert published.keys() == event_ids  # the stream keeps one copy should the relay have sent one too
    assert sum(record["cost_micros"] for record in published.values()) == price
    # And the charged auctions' reservations are freed in the shared store: their spend is counted there now.
    reservations = state.shared.client.hmget(state.shared.key("res"), [a["auction_id"] for a in auctions])
    assert reservations == [None] * 3
    assert int(state.shared.client.hget(state.shared.key("spent"), "live-kafka")) == price


def test_a_store_that_refuses_the_charges_is_503_and_the_retry_charges_once(live, tmp_path):
    state, client = live
    auction = client.post("/v1/auction", json=KAFKA_CONTEXT).json()
    impression = signed_event(auction, "impression", f"l-imp-{auction['auction_id']}", at=impression_time())
    assert client.post("/v1/events", json=impression).status_code == 202
    click = signed_event(auction, "click", f"l-{auction['auction_id']}")
    with state.sessions() as session:
        spent_before = store.get_campaign(session, "live-kafka").spent_micros
    working = state.spend_ledger
    # A store that cannot be opened: every write raises OperationalError.
    gone = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'gone' / 'campaigns.db'}"))
    state.spend_ledger = EventJournal(gone, working.min_click_delay)
    try:
        refused = client.post("/v1/events", json=click)
    finally:
        state.spend_ledger = working
    assert refused.status_code == 503, refused.text
    assert refused.json()["detail"].startswith("the campaign store did not record the events (OperationalError)")
    assert "retry the same events with the same event_id" in refused.json()["detail"]
    with state.sessions() as session:
        assert store.get_campaign(session, "live-kafka").spent_micros == spent_before

    retried = [client.post("/v1/events", json=click).json()["results"][0] for _ in range(2)]
    assert [(r["status"], r["charged_micros"]) for r in retried] == [
        ("accepted", auction["clearing_price_micros"]), ("duplicate", 0),
    ]  # fmt: skip
    with state.sessions() as session:
        assert store.get_campaign(session, "live-kafka").spent_micros == spent_before + auction["clearing_price_micros"]


def test_an_event_for_an_auction_no_longer_in_the_shared_store_is_judged_from_the_campaign_store(live):
    state, client = live
    auction = client.post("/v1/auction", json=KAFKA_CONTEXT).json()
    state.flush_served()
    state.shared.client.delete(state.shared.key("auction", auction["auction_id"]))  # as at SERVED_IN_MEMORY_S
    assert state.served_auctions_shared([auction["auction_id"]]) == {auction["auction_id"]: None}
    impression = signed_event(auction, "impression", f"s-imp-{auction['auction_id']}", at=impression_time())
    click = signed_event(auction, "click", f"s-{auction['auction_id']}")
    results = client.post("/v1/events", json={"events": [impression, click]}).json()["results"]
    assert [(r["status"], r["charge_status"], r["charged_micros"]) for r in results] == [
        ("accepted", "not_billable", 0), ("accepted", "charged", auction["clearing_price_micros"]),
    ]  # fmt: skip
    unknown = client.post("/v1/events", json={**click, "event_id": "s-x", "auction_id": "never-served"})
    assert unknown.status_code == 404 and "no auction never-served was served" in unknown.json()["detail"]


# --- store changes reach the auction within 1 s ---


def first_time(condition, limit_s: float) -> float:
    """Seconds until ``condition()`` held, polling every 20 ms; fails past ``limit_s``."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < limit_s, f"not within {limit_s} s"
        time.sleep(0.02)
    return time.monotonic() - began


def test_a_created_or_stopped_campaign_reaches_the_auction_within_a_second(live):
    state, client = live
    assert client.post("/v1/auction", json=NEW_CONTEXT).status_code == 204

    def winner() -> str | None:
        response = client.post("/v1/auction", json=NEW_CONTEXT)
        return response.json()["campaign_id"] if response.status_code == 200 else None

    with state.sessions() as session:
        store.apply_instruction(session, instruction("live-new", targeting={"countries": ["Iceland"]}))
    assert first_time(lambda: winner() == "live-new", limit_s=1.0) < 1.0
    with state.sessions() as session:
        store.apply_instruction(session, stop("live-new"))
    assert first_time(lambda: winner() is None, limit_s=1.0) < 1.0


# --- bad input: a clear 4xx and no state change ---


def test_an_instruction_for_a_stopped_campaign_is_409_and_changes_nothing(live):
    state, client = live
    with state.sessions() as session:
        before = store.get_campaign(session, "live-stopped")
    assert before is not None and before.status == "stopped"

    again = client.post("/v1/campaigns/live-stopped/stop", headers=TOKEN)
    assert again.status_code == 409 and "already stopped" in again.json()["detail"]
    spec = before.spec.model_dump(mode="json")
    recreate = client.post("/v1/campaigns", json={**spec, "campaign_id": "live-stopped"}, headers=TOKEN)
    assert recreate.status_code == 409 and "already exists" in recreate.json()["detail"]

    with state.sessions() as session:
        assert store.get_campaign(session, "live-stopped") == before
    assert campaign_instructions_for(state.settings, {"live-stopped"}) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bid_micros": 10**15}, "bid_micros"),
        ({"total_budget_micros": 10**20, "daily_budget_micros": 10**6}, "total_budget_micros"),
        ({"daily_budget_micros": 60_000_000}, "daily_budget_micros cannot exceed total_budget_micros"),
        ({"bid_micros": 0}, "bid_micros"),
        ({"flight_start": "0001-01-01T00:00:00+01:00"}, "flight_start"),
    ],
)
def test_absurd_bids_and_budgets_are_422_naming_the_field_and_publish_nothing(live, change, field):
    state, client = live
    campaign_id = f"absurd-{uuid.uuid4().hex[:8]}"
    spec = instruction(campaign_id).campaign.model_dump(mode="json")
    response = client.post("/v1/campaigns", json={**spec, **change, "campaign_id": campaign_id}, headers=TOKEN)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert campaign_instructions_for(state.settings, {campaign_id}) == []


# --- the model: hot swap, and not ready ---


@pytest.fixture
def own_mlflow(champion_db, tmp_path):
    """A private copy of the champion's MLflow store, MLflow's process-wide URI meanwhile."""
    shutil.copyfile(champion_db, tmp_path / "mlflow.db")
    with mlflow_process_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") as uri:
        yield uri


def test_a_new_champion_is_swapped_in_without_failing_a_request(service_settings, own_mlflow, tmp_path):
    settings = service_settings.model_copy(
        update={
            "mlflow_tracking_uri": own_mlflow,
            "model_poll_s": 3600.0,  # only the poll below swaps
            "local_dir": tmp_path / "local",
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
        }
    )
    state = open_service(settings, instruction("swap"))
    state.start()
    seen: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]
    swapped, give_up = threading.Event(), threading.Event()

    def fire(log: list[tuple[int, str | None]], http: httpx.Client) -> None:
        after_swap = 0
        while not give_up.is_set() and after_swap < 20:
            # A user each: the frequency cap counts every ad served.
            response = http.post("/v1/auction", json={"user_id": f"u-swap-{len(log)}-{id(log)}"})
            log.append((response.status_code, response.json().get("model_version") if response.content else None))
            after_swap += swapped.is_set()

    try:
        with live_server(create_app(state=state)) as url, httpx.Client(base_url=url, timeout=30) as http:
            firing = [threading.Thread(target=fire, args=(log, http)) for log in seen]
            for thread in firing:
                thread.start()
            try:
                first_time(lambda: all(len(log) >= 10 for log in seen), limit_s=30)
                registry = tracking_client(own_mlflow)
                one = registry.get_model_version(REGISTERED_MODEL, "1")
                two = registry.create_model_version(
                    REGISTERED_MODEL, source=one.source, run_id=one.run_id, model_id=one.model_id
                )
                registry.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, two.version)
                assert state.watcher.poll_once() is PollOutcome.SWAPPED
                swapped.set()
            finally:
                if not swapped.is_set():  # a failure above: stop the clients now
                    give_up.set()
                for thread in firing:
                    thread.join(timeout=30)
    finally:
        state.stop()

    for log in seen:
        assert {status for status, _ in log} == {200}, Counter(log)
        versions = [version for _, version in log]
        # Each client sees version 1, then version 2, and never 1 again once it saw 2.
        assert versions[0] == "1" and versions[-1] == "2" and versions == sorted(versions)
    assert state.model.version == "2"


@pytest.mark.parametrize("fast_path_on", [True, False], ids=["fast-path-on", "fast-path-off"])
def test_without_mlflow_or_a_local_copy_the_service_is_not_ready_and_says_why(service_settings, tmp_path, fast_path_on):
    settings = service_settings.model_copy(
        update={
            "auction_fast_path": fast_path_on,  # the 503 comes from the app's handler either way
            "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}",
            "local_dir": tmp_path / "local",  # no local copy of the champion
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
        }
    )
    state = open_service(settings, instruction("unready"))
    client = TestClient(create_app(state=state))

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False and "MLFLOW_TRACKING_URI" in ready.json()["reason"]
    for path, body in (("/v1/auction", {}), ("/v1/predict_ctr", {"campaign_ids": ["unready"]})):
        refused = client.post(path, json=body)
        assert refused.status_code == 503, refused.text
        assert "MLFLOW_TRACKING_URI" in refused.json()["detail"] and refused.headers["Retry-After"]
