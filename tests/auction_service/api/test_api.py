"""The auction service over HTTP with real parts: a Kafka broker, a SQLite campaign store, an MLflow champion.

Every test runs with the fast path on and off (the routing differs, the answers must not).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adstream.contracts import REGISTERED_MODEL, Topic
from auction_service.api.app import DefaultTokenOutsideLocal, create_app
from auction_service.campaign_store import ad_manager, store
from auction_service.campaign_store.db import make_engine, make_session_factory
from auction_service.serving.state import ServiceState
from ml.registry import NATIVE_ARTIFACT_TAG
from ml.tracking import tracking_client
from tests.auction_service.conftest import (
    BOTH_WAYS,
    BROWSER_UA,
    TOKEN,
    impression_time,
    instruction,
    running_service,
    signed_event,
    topic_records,
)
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", **BOTH_WAYS)
def fast_path(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_an_auction_fills_at_a_second_price_within_the_bid(client):
    response = client.post("/v1/auction", json={"user_id": "u-1", "device_type": "mobile", "country": "France"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["campaign_id"] in {"cpc-1", "cpc-2"} and body["pricing_model"] == "CPC"
    assert 0 < body["clearing_price_micros"] <= (500_000 if body["campaign_id"] == "cpc-1" else 300_000)
    assert body["model_version"] == "1" and 0 < body["pctr"] < 1
    click_url, token = body["tracking"]["click"].split("?t=")
    assert click_url.endswith(f"/v1/events/track/{body['auction_id']}/click")
    assert token == body["event_tokens"]["click"] and datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)


def test_no_eligible_campaign_is_204(client):
    response = client.post("/v1/auction", json={"device_type": "ctv", "blocked_categories": ["Automotive"]})
    assert response.status_code == 204


def test_a_click_is_charged_once_and_replays_are_free(client, service_settings):
    auction = client.post("/v1/auction", json={"user_id": "u-2", "device_type": "desktop"}).json()
    impression = signed_event(auction, "impression", "imp-1", at=impression_time())
    click = signed_event(auction, "click", "clk-1")
    shown = client.post("/v1/events", json=impression).json()["results"][0]
    assert (shown["charged_micros"], shown["charge_status"]) == (0, "not_billable")
    charged = client.post("/v1/events", json=click).json()["results"][0]
    assert (charged["status"], charged["charged_micros"]) == ("accepted", auction["clearing_price_micros"])
    assert (charged["charge_status"], charged["ivt_category"]) == ("charged", None)
    # A retry of the click is answered from the journal; another click on the auction is a duplicate click (GIVT).
    replay = client.post("/v1/events", json={"events": [click, {**click, "event_id": "clk-2"}]}).json()
    assert [(r["status"], r["charge_status"]) for r in replay["results"]] == [
        ("duplicate", "charged"), ("accepted", "invalid_traffic")
    ]  # fmt: skip
    assert replay["results"][1]["ivt_reason"] == "duplicate_click"
    assert sum(r["charged_micros"] for r in replay["results"]) == 0
    with ServiceState.open(service_settings).sessions() as session:
        ledger = store.spend_by_campaign_hour(session, datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC))
    assert sum(ledger.values()) == auction["clearing_price_micros"]


def test_events_land_on_the_feedback_topic_keyed_by_auction(client, service_settings):
    auction = client.post("/v1/auction", json={"user_id": "u-3", "device_type": "mobile"}).json()
    assert client.post("/v1/events", json=signed_event(auction, "impression", "imp-topic")).status_code == 202
    # 202: Kafka acknowledged the event, so it is on the topic already.
    records = [r for r in topic_records(service_settings, Topic.AD_FEEDBACK) if r.key == auction["auction_id"].encode()]
    (record,) = records
    published = json.loads(record.value)
    assert published["event_id"] == "imp-topic" and published["campaign_id"] == auction["campaign_id"]
    assert published["cost_micros"] == 0 and published["schema_version"] == 1
    assert (published["charge_status"], published["ivt_category"]) == ("not_billable", None)
    assert published["user_agent"] == BROWSER_UA


def test_an_event_for_an_unknown_auction_is_refused_saying_why(client):
    single = client.post("/v1/events", json={"event_id": "e-x", "event_type": "click", "auction_id": "nope"})
    assert single.status_code == 404 and single.json()["detail"].startswith("unknown_auction: no auction nope")
    batch = client.post(
        "/v1/events", json={"events": [{"event_id": "e-y", "event_type": "click", "auction_id": "nope"}]}
    ).json()
    assert batch["rejected"] == 1 and batch["results"][0]["status"] == "rejected"
    assert batch["results"][0]["reason"].startswith("unknown_auction: ")


def test_events_from_the_future_or_older_than_the_stream_watermark_are_refused(client, service_settings):
    auction = client.post("/v1/auction", json={"user_id": "u-4", "device_type": "mobile"}).json()
    now = datetime.now(UTC)
    late = now - timedelta(seconds=service_settings.stream_watermark_s / 2 + 30)  # half the watermark
    events = [
        signed_event(auction, "click", "t-future", at=now + timedelta(hours=1)),
        signed_event(auction, "click", "t-late", at=late),
    ]
    results = client.post("/v1/events", json={"events": events}).json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected"]
    assert "in the future" in results[0]["reason"] and "too old" in results[1]["reason"]
    assert sum(r["charged_micros"] for r in results) == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"user_id": ', "JSON decode error"),
        ('{"age": -3}', "age: Input should be greater than or equal to 13"),
        ('{"floor_cpm": "1.1234567"}', "floor_cpm"),
        ('{"surprise": 1}', "surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_auction_requests_are_422_with_what_to_fix(client, body, expected):
    response = client.post("/v1/auction", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert expected in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/auction", "/openrtb2/auction", "/v1/events"])
def test_deeply_nested_json_is_a_400_not_a_server_error(client, path):
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.status_code, response.text[:200])
        assert "parsing the body" in response.json()["detail"]


def test_an_oversized_body_is_413(client):
    response = client.post("/v1/events", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "smaller batches" in response.json()["detail"]


def test_a_chunked_body_is_capped_while_it_arrives_and_passed_on_whole_under_the_cap(client):
    def chunks(payload: bytes, size: int = 64 * 1024):
        yield from (payload[i : i + size] for i in range(0, len(payload), size))

    too_big = client.post("/v1/events", content=chunks(b"x" * 2_000_000), headers={"content-type": "application/json"})
    assert "content-length" not in too_big.request.headers  # really sent chunked
    assert too_big.status_code == 413 and "smaller batches" in too_big.json()["detail"]
    body = b'{"events": [{"event_id": "e-chunked", "event_type": "click", "auction_id": "no-such-auction"}]}'
    small = client.post("/v1/events", content=chunks(body, size=16), headers={"content-type": "application/json"})
    assert small.status_code == 202, small.text
    assert small.json()["results"][0]["reason"].startswith("unknown_auction: ")


def test_campaign_endpoints_need_the_token_and_reach_the_store_through_kafka(client, service_settings):
    assert client.get("/v1/campaigns/cpc-1").status_code == 401
    assert client.get("/v1/campaigns/cpc-1", headers={"Authorization": "Bearer wrong"}).status_code == 403
    shown = client.get("/v1/campaigns/cpc-1", headers=TOKEN).json()
    assert shown["status"] == "active"
    # Its pacing as the fleet's controller left it: even by default, a plan no larger than its budget.
    pacing = shown["pacing"]
    assert pacing["mode"] == "even" and 0 <= pacing["plan_micros"] <= pacing["daily_budget_micros"]
    assert 0 < pacing["pacing_multiplier"] <= 1 and 0 <= pacing["throttle_rate"] < 1
    assert pacing["spent_today_micros"] == shown["spent_today_micros"] >= 0
    stop_event = threading.Event()
    manager = threading.Thread(target=ad_manager.run, args=(service_settings, stop_event), daemon=True)
    manager.start()
    try:
        spec = instruction("x").campaign.model_dump(mode="json")
        # Its own id each run: the ad manager replays the topic, with the other way's instructions.
        api_1 = f"api-{uuid.uuid4().hex[:8]}"
        created = client.post("/v1/campaigns", json={**spec, "campaign_id": api_1}, headers=TOKEN)
        assert created.status_code == 202, created.text
        deadline = time.monotonic() + 30
        while client.get(f"/v1/campaigns/{api_1}", headers=TOKEN).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get(f"/v1/campaigns/{api_1}", headers=TOKEN).json()["status"] == "active"
        assert client.post(f"/v1/campaigns/{api_1}/stop", headers=TOKEN).status_code == 202
        assert client.post("/v1/campaigns/ghost/stop", headers=TOKEN).status_code == 404
        bad = client.post("/v1/campaigns", json={**spec, "bid_micros": -5}, headers=TOKEN)
        assert bad.status_code == 422 and "bid_micros" in bad.json()["detail"]
    finally:
        stop_event.set()
        manager.join(timeout=30)


def test_a_campaign_request_without_kafka_is_a_503_within_5_s(service_settings, tmp_path):
    # Kafka was away when the service started: nothing listens on this port.
    away = service_settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
            "local_dir": tmp_path / "local",
        }
    )
    with running_service(away) as state, TestClient(create_app(state=state)) as away_client:
        spec = instruction("x").campaign.model_dump(mode="json")
        for _ in range(2):  # each request tries the broker again, and gives up in time again
            started = time.monotonic()
            refused = away_client.post("/v1/campaigns", json=spec, headers=TOKEN)
            assert time.monotonic() - started < 5
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "1" and "not applied" in refused.json()["detail"]


def test_the_store_down_is_a_503_with_retry_advice_on_reads_and_events(client):
    state = client.app.state.service
    working = state.sessions
    # A PostgreSQL store nobody answers for: every connection is refused.
    down = make_engine(
        make_settings(Path(tempfile.mkdtemp()), campaign_db_url=f"postgresql+psycopg://x@127.0.0.1:{free_port()}/c")
    )
    state.sessions = make_session_factory(down)
    try:
        for response in (
            client.get("/v1/campaigns/cpc-1", headers=TOKEN),
            client.post(
                "/v1/events", json={"events": [{"event_id": "e-down", "event_type": "click", "auction_id": "old"}]}
            ),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
            assert "campaign store is unavailable" in response.json()["detail"]
    finally:
        state.sessions = working
        down.dispose()


def test_operations_endpoints(client, service_settings):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    metrics = client.get("/metrics").text
    assert "adstream_auction" in metrics and "adstream_model_version" in metrics
    stats = client.get("/v1/stats").json()
    assert stats["auctions"] >= 1 and 0 <= stats["fill_rate"] <= 1
    # The registry says whether training compiled the champion (a tree family) or left it to numpy (logistic).
    tags = tracking_client(service_settings.mlflow_tracking_uri).get_model_version(REGISTERED_MODEL, "1").tags
    assert stats["scorer"] == ("native" if NATIVE_ARTIFACT_TAG in tags else "numpy"), tags
    predicted = client.post("/v1/predict_ctr", json={"campaign_ids": ["cpc-1", "ghost"]}).json()
    assert predicted["unknown_campaigns"] == ["ghost"] and 0 < predicted["predictions"][0]["pctr"] < 1
    assert "/v1/auction" in client.get("/openapi.json").json()["paths"]


def test_the_default_token_is_refused_outside_local_mode(tmp_path):
    # A real event signing key: the default one is refused outside local mode too (test_attacks).
    signing = {"event_signing_keys": SecretStr("prod-1:" + "k" * 48), "event_signing_key_id": "prod-1"}
    with pytest.raises(DefaultTokenOutsideLocal, match="AUCTION_API_TOKEN"):
        create_app(make_settings(tmp_path, adstream_env="prod", **signing))
    assert (
        create_app(make_settings(tmp_path, adstream_env="prod", auction_api_token="s3cret-Xy9", **signing)) is not None
    )
