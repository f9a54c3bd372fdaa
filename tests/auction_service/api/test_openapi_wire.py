"""The OpenAPI document against the wire: every route driven into every status it documents, each body checked
against the schema ``/openapi.json`` gives for that status, and every status seen documented.

A real service (Kafka, the campaign and shared stores, an MLflow champion, a Delta ad catalog) answers, fast
path on as deployed; the 503s come from the same app with its campaign store and Kafka producer gone, or from a
service whose model is not loaded. Bodies are validated with jsonschema, ``$ref``s resolved in the document's own
components. The last test checks that the others, together, drove every documented status: run the module whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pandas as pd
import pytest
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from adstream.contracts import Table
from auction_service.api.app import create_app
from auction_service.campaign_store.db import make_engine, make_session_factory
from tests.auction_service.conftest import (
    BROWSER,
    TOKEN,
    impression_time,
    instruction,
    open_service,
    running_service,
    signed_event,
    stop,
)
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
SHOES = {"adomain": "shoes.example", "landing_url": "https://www.shoes.example/spring"}
DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested past what Python parses
JSON = {"content-type": "application/json"}
UNKNOWN_KEY = {"X-Api-Key": "nobody.secret"}
BAD_TOKEN = {"Authorization": "Bearer not-the-token"}
OPEN = ["/v1/auction", "/openrtb2/auction", "/v1/events", "/v1/campaigns", "/v1/predict_ctr"]


def local(url: str) -> str:
    """An absolute URL the service wrote, as the test client's path and query."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def bid_request(**fields: object) -> dict[str, Any]:
    return {"id": "req-1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": {"domain": "news.example"},
            "device": {"devicetype": 2}, "user": {"id": "u-42"}, **fields}  # fmt: skip


@dataclass
class Wire:
    client: TestClient
    state: Any
    openapi: dict[str, Any]
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def call(self, method: str, template: str, expected: int, *, url: str | None = None, **kwargs: Any) -> Any:
        """Sends one request to the route ``template``; checks its status, and its body against the schema."""
        return answered(self, self.client, method, template, expected, url=url, **kwargs)


def answered(
    wire: Wire, client: TestClient, method: str, template: str, expected: int, *, url: str | None, **kwargs: Any
) -> httpx.Response:
    response = client.request(method, url or template, follow_redirects=False, **kwargs)
    assert response.status_code == expected, (method, url or template, response.status_code, response.text[:300])
    wire.seen.add((method.lower(), template, response.status_code))
    documented = wire.openapi["paths"][template][method.lower()]["responses"]
    assert str(response.status_code) in documented, f"{method} {template} answered {response.status_code}, undocumented"
    content = documented[str(response.status_code)].get("content", {})
    if not content:
        assert response.content == b"", f"{method} {template} {response.status_code}: a body the schema has not"
        return response
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type in content, (method, template, response.status_code, media_type, sorted(content))
    schema = content[media_type].get("schema")
    if media_type == "application/json":
        assert schema, f"{method} {template} {response.status_code}: a JSON body with no schema"
        # The schema with the document's components beside it: its "#/components/..." refs resolve there.
        validator = jsonschema.Draft202012Validator({**schema, "components": wire.openapi["components"]})
        errors = sorted(validator.iter_errors(response.json()), key=str)
        assert not errors, f"{method} {template} {response.status_code}: {errors[0].message} in {response.text[:300]}"
    for header in documented[str(response.status_code)].get("headers", {}):
        assert header in response.headers, (method, template, response.status_code, header)
    return response


@pytest.fixture(scope="module")
def wire(service_settings, tmp_path_factory) -> Iterator[Wire]:
    kaggle = tmp_path_factory.mktemp("kaggle")
    (kaggle / "ads16" / "Ads").mkdir(parents=True)
    (kaggle / "ads16" / "Ads" / "3.png").write_bytes(PNG)
    settings = service_settings.model_copy(update={"kaggle_dir": kaggle})
    catalog = pd.DataFrame({
        "ad_id": ["ad-shoes"], "category": ["Clothing & Shoes"], "ad_ctr_smoothed": [0.05],
        "category_ctr_smoothed": [0.05], "title": ["Spring shoes"], "image_path": ["ads16/Ads/3.png"],
    })  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_AD_FEATURES)[0], catalog, mode="overwrite")
    campaigns = (
        instruction("shoes", ad_id="ad-shoes", category="Clothing & Shoes", pricing_model="CPM",
                    bid_micros=6_000_000, creative=SHOES),
        # Whichever of the two wins, its click has a landing page; "spare" is the one a test stops.
        instruction("spare", ad_id="ad-shoes", creative=SHOES),
        instruction("stopped", ad_id="ad-shoes"), stop("stopped"),
    )  # fmt: skip
    with running_service(settings, *campaigns) as state, TestClient(create_app(state=state)) as client:
        yield Wire(client, state, client.get("/openapi.json").json())


@pytest.fixture(scope="module")
def served(wire) -> dict[str, Any]:
    """A filled /v1/auction answer: its auction id, tokens and tracking URLs."""
    return wire.call("POST", "/v1/auction", 200, json={"user_id": "u-1", "device_type": "mobile"}).json()


def token(wire: Wire, auction_id: str, campaign_id: str, event_type: str, *, expired: bool = False) -> str:
    """A token signed by the service's own key: for an auction never served, or one that has expired."""
    expires = datetime.now(UTC) + timedelta(hours=-1 if expired else 1)
    return wire.state.signer.sign_all(auction_id, [event_type], campaign_id, int(expires.timestamp()))[event_type]


def test_the_schema_documents_the_error_bodies_and_hides_the_platforms_routes(wire):
    paths = wire.openapi["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)
    assert wire.client.get("/healthz").status_code == 200 and wire.client.get("/metrics").status_code == 200
    schemas = wire.openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 body, which this app never sends
    assert schemas["Refusal"]["required"] == ["detail"]
    assert schemas["OpenRtbError"]["required"] == ["path", "rule"]
    openrtb = paths["/openrtb2/auction"]["post"]["responses"]
    assert openrtb["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/BidResponse"}
    assert "422" not in openrtb  # a request that does not validate is OpenRTB's 400
    for path in paths.values():
        for operation in path.values():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["example"]["detail"], (status, answer)


def test_the_auction_routes(wire, served):
    assert served["tracking"]["click"]
    nothing = {"device_type": "ctv", "blocked_categories": ["Clothing & Shoes", "Automotive"]}
    wire.call("POST", "/v1/auction", 204, json=nothing)
    wire.call("POST", "/v1/auction", 401, json={}, headers=UNKNOWN_KEY)
    wire.call("POST", "/v1/auction", 422, json={"age": -3})
    wire.call("POST", "/openrtb2/auction", 200, json=bid_request())
    wire.call("POST", "/openrtb2/auction", 204, json=bid_request(tmax=1))
    refused = wire.call("POST", "/openrtb2/auction", 400, json=bid_request(imp=[]))
    assert refused.json()["errors"][0]["path"] == "imp"
    wire.call("POST", "/openrtb2/auction", 400, json={"id": "r", "imp": [{"id": "1", "banner": {"w": "wide"}}]})
    wire.call("POST", "/openrtb2/auction", 401, json=bid_request(), headers=UNKNOWN_KEY)


def test_the_event_routes(wire, served):
    auction_id, campaign_id = served["auction_id"], served["campaign_id"]
    event = signed_event(served, "impression", at=impression_time())
    expired = token(wire, auction_id, campaign_id, "impression", expired=True)
    ghost = token(wire, "ghost", campaign_id, "impression")
    wire.call("POST", "/v1/events", 202, json={"events": [event]})
    wire.call("POST", "/v1/events", 401, json={**event, "event_id": "no-token", "token": None})
    wire.call("POST", "/v1/events", 403, json={**event, "event_id": "bad-token", "token": "garbage"})
    wire.call("POST", "/v1/events", 410, json={**event, "event_id": "old", "token": expired})
    wire.call("POST", "/v1/events", 404, json={**event, "event_id": "ghost", "auction_id": "ghost", "token": ghost})
    wire.call("POST", "/v1/events", 422, json={"events": []})

    track = "/v1/events/track/{auction_id}/{event_type}"
    path = f"/v1/events/track/{auction_id}"
    wire.call("GET", track, 204, url=local(served["tracking"]["impression"]), headers=BROWSER)
    wire.call("GET", track, 401, url=f"{path}/click", headers=BROWSER)
    wire.call("GET", track, 403, url=f"{path}/click?t=garbage", headers=BROWSER)
    expired = token(wire, auction_id, campaign_id, "click", expired=True)
    wire.call("GET", track, 410, url=f"{path}/click?t={expired}", headers=BROWSER)
    ghost = token(wire, "ghost", campaign_id, "click")
    wire.call("GET", track, 404, url=f"/v1/events/track/ghost/click?t={ghost}", headers=BROWSER)
    wire.call("GET", track, 422, url=f"{path}/win?price=%24%7BAUCTION_PRICE%7D", headers=BROWSER)


def test_a_click_with_a_landing_page_is_a_302(wire):
    one = wire.call("POST", "/openrtb2/auction", 200, json=bid_request(id="req-click")).json()
    (seat,) = one["seatbid"]
    click = unescape(re.search(r'<a href="([^"]+)"', seat["bid"][0]["adm"])[1])
    landing = wire.call("GET", "/v1/events/track/{auction_id}/{event_type}", 302, url=local(click), headers=BROWSER)
    assert landing.headers["location"] == SHOES["landing_url"]


def test_the_campaign_routes(wire):
    spec = instruction("x", ad_id="ad-shoes").campaign.model_dump(mode="json")
    create, stopping, campaign = "/v1/campaigns", "/v1/campaigns/{campaign_id}/stop", "/v1/campaigns/{campaign_id}"
    wire.call("POST", create, 202, json=spec, headers=TOKEN)
    wire.call("POST", create, 401, json=spec)
    wire.call("POST", create, 403, json=spec, headers=BAD_TOKEN)
    wire.call("POST", create, 409, json={**spec, "campaign_id": "shoes"}, headers=TOKEN)
    wire.call("POST", create, 422, json={**spec, "bid_micros": -5}, headers=TOKEN)
    wire.call("POST", stopping, 202, url="/v1/campaigns/spare/stop", headers=TOKEN)
    wire.call("POST", stopping, 401, url="/v1/campaigns/spare/stop")
    wire.call("POST", stopping, 403, url="/v1/campaigns/spare/stop", headers=BAD_TOKEN)
    wire.call("POST", stopping, 404, url="/v1/campaigns/ghost/stop", headers=TOKEN)
    wire.call("POST", stopping, 409, url="/v1/campaigns/stopped/stop", headers=TOKEN)
    wire.call("GET", campaign, 200, url="/v1/campaigns/shoes", headers=TOKEN)
    wire.call("GET", campaign, 401, url="/v1/campaigns/shoes")
    wire.call("GET", campaign, 403, url="/v1/campaigns/shoes", headers=BAD_TOKEN)
    wire.call("GET", campaign, 404, url="/v1/campaigns/ghost", headers=TOKEN)


def test_the_creative_stats_and_prediction_routes(wire):
    image = "/v1/creatives/{ad_id}/image"
    assert wire.call("GET", image, 200, url="/v1/creatives/ad-shoes/image").content == PNG
    wire.call("GET", image, 404, url="/v1/creatives/no-such-ad/image")
    wire.call("GET", image, 422, url="/v1/creatives/not%20an%20id/image")
    wire.call("GET", "/v1/stats", 200)
    wire.call("POST", "/v1/predict_ctr", 200, json={"campaign_ids": ["shoes"]})
    wire.call("POST", "/v1/predict_ctr", 404, json={"campaign_ids": ["ghost"]})
    wire.call("POST", "/v1/predict_ctr", 422, json={"campaign_ids": []})


@pytest.mark.parametrize("path", [*OPEN, "/v1/campaigns/shoes/stop"])
def test_a_body_too_large_or_too_deep_is_documented_as_sent(wire, path):
    template = "/v1/campaigns/{campaign_id}/stop" if path.endswith("/stop") else path
    wire.call("POST", template, 413, url=path, content=b"x" * 2_000_000, headers={**JSON, **TOKEN})
    if template != "/v1/campaigns/{campaign_id}/stop":
        wire.call("POST", template, 400, url=path, content=DEEP, headers={**JSON, **TOKEN})


def test_with_the_campaign_store_or_kafka_down_the_routes_that_need_them_are_503_with_retry_after(
    wire, served, tmp_path
):
    # A PostgreSQL store nobody answers for: every connection is refused.
    nobody = f"postgresql+psycopg://x@127.0.0.1:{free_port()}/c"
    down = make_engine(make_settings(tmp_path, campaign_db_url=nobody))
    working, wire.state.sessions = wire.state.sessions, make_session_factory(down)
    producer, wire.state.feedback_log = wire.state.feedback_log, None  # no Kafka producer: events cannot be sent
    try:
        wire.call("POST", "/v1/events", 503, json={"events": [signed_event(served, "click", "e-down")]})
        click = local(served["tracking"]["click"])
        wire.call("GET", "/v1/events/track/{auction_id}/{event_type}", 503, url=click, headers=BROWSER)
        spec = instruction("y", ad_id="ad-shoes").campaign.model_dump(mode="json")
        wire.call("POST", "/v1/campaigns", 503, json={**spec, "campaign_id": "y"}, headers=TOKEN)
        wire.call("POST", "/v1/campaigns/{campaign_id}/stop", 503, url="/v1/campaigns/shoes/stop", headers=TOKEN)
        wire.call("GET", "/v1/campaigns/{campaign_id}", 503, url="/v1/campaigns/shoes", headers=TOKEN)
    finally:
        wire.state.sessions, wire.state.feedback_log = working, producer
        down.dispose()


def test_without_a_model_the_scoring_routes_are_a_503_with_retry_after(wire, service_settings, tmp_path):
    settings = service_settings.model_copy(
        update={
            "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}",
            "local_dir": tmp_path / "local",  # no local copy of the champion
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
        }
    )
    state = open_service(settings, instruction("unready", pricing_model="CPM", bid_micros=6_000_000))
    unready = TestClient(create_app(state=state))
    answered(wire, unready, "POST", "/v1/auction", 503, url=None, json={})
    answered(wire, unready, "POST", "/openrtb2/auction", 503, url=None, json=bid_request())
    answered(wire, unready, "POST", "/v1/predict_ctr", 503, url=None, json={"campaign_ids": ["unready"]})


def test_every_documented_status_was_answered_and_nothing_else(wire):
    documented = {
        (method, path, int(status))
        for path, operations in wire.openapi["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
    }
    assert wire.seen <= documented  # each call checks it too; this names the set
    assert documented - wire.seen == set(), "documented statuses no test drove the route into"
