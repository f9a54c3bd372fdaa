"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): whatever a client sends, never a 5xx.

Every operation runs against a real uvicorn server over the real service state (Kafka
producer, SQLite store, MLflow champion, campaigns that fill auctions), without the
campaign token, and the campaign operations again with it, so that valid creates reach
Kafka and lookups reach the store.

The schema is the app's own ``openapi()``, taken at import: schemathesis's fixture-based
loader (``schemathesis.pytest.from_fixture``) does not run under pytest 9 (it sets
``Node._nodeid``, which pytest 9 removed), and building the schema needs no service state.
Everything runs with the fast path on and off: what reaches the route, and how, differs.

``POST /openrtb2/auction`` is fuzzed once more with bodies drawn from the vendored OpenRTB 2.6 schema
(``tests/openrtb/schema``) in place of the route's own model: requests as exchanges send them. Most are
valid requests we do not buy, so a second draw is narrowed to what we do buy (``BUYABLE``), to draw filled
auctions too. Every 200 must be an OpenRTB 2.6 BidResponse.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from adstream.settings import Environment, Settings
from auction_service.api.app import create_app
from tests.auction_service.conftest import BOTH_WAYS, TOKEN, instruction, live_server, running_service
from tests.openrtb.conformance import validate_bid_response, with_openrtb_request_body

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
OPENAPI = create_app(Settings(adstream_env=Environment.LOCAL)).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)

OPENRTB_AUCTION = "/openrtb2/auction"
# What the fuzzed service buys, as a schema the OpenRTB request must meet too: a site's banners of a size every
# campaign has, at a floor they clear, in a second-price auction with no privacy signals or blocks.
BUYABLE: dict[str, Any] = {
    "required": ["site"],
    "properties": {
        "id": {"minLength": 1, "maxLength": 64},
        "imp": {
            "maxItems": 3,
            "items": {
                "required": ["banner"],
                "properties": {
                    "id": {"minLength": 1, "maxLength": 64},
                    "banner": {"properties": {"w": {"const": 300}, "h": {"const": 250}, "format": False}},
                    "bidfloor": {"minimum": 0, "maximum": 1},
                    "bidfloorcur": {"const": "USD"},
                    "video": False, "native": False, "audio": False, "pmp": False,
                },
            },
        },
        "app": False, "dooh": False, "test": {"enum": [0, 1]}, "at": {"const": 2}, "cattax": {"const": 1},
        "cur": False, "tmax": {"minimum": 200}, "bcat": False, "badv": False, "regs": False, "user": False,
        "device": False,
    },
}  # fmt: skip
# Without the coverage phase (over the narrowed schema it sent 3,600 boundary cases, 10 s of one way's run on
# this 2-core machine), and, narrowed, valid requests only: the first draw sends invalid ones.
WITHOUT_COVERAGE: dict[str, Any] = {"phases": {"coverage": {"enabled": False}}}
openrtb_schema = schemathesis.openapi.from_dict(
    with_openrtb_request_body(OPENAPI, OPENRTB_AUCTION), config=SchemathesisConfig.from_dict(WITHOUT_COVERAGE)
).include(path=OPENRTB_AUCTION)
buyable_schema = schemathesis.openapi.from_dict(
    with_openrtb_request_body(OPENAPI, OPENRTB_AUCTION, narrowed_by=BUYABLE),
    config=SchemathesisConfig.from_dict({**WITHOUT_COVERAGE, "generation": {"mode": "positive"}}),
).include(path=OPENRTB_AUCTION)


TABLETS = {"device_types": ["tablet"]}


@pytest.fixture(scope="module", **BOTH_WAYS)
def fast_path(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture(scope="module")
def base_url(service_settings):
    with (
        running_service(
            service_settings,
            instruction("fuzz-cpc"),
            instruction("fuzz-cpm", pricing_model="CPM", bid_micros=2_000_000, category="Travel"),
            instruction(
                "fuzz-tablets", pricing_model="CPA", bid_micros=5_000_000, targeting={"device_types": ["tablet"]}
            ),
        ) as state,
        live_server(create_app(state=state), fast_path=service_settings.auction_fast_path) as url,
    ):
        yield url


@schema.parametrize()
@FUZZ
def test_no_request_gets_a_server_error(case, base_url):
    case.call_and_validate(base_url=base_url, checks=[not_a_server_error])


@schema.include(tag="campaigns").parametrize()
@FUZZ
def test_no_authenticated_campaign_request_gets_a_server_error(case, base_url):
    case.call_and_validate(base_url=base_url, headers=TOKEN, checks=[not_a_server_error])


def assert_no_server_error_and_a_conforming_bid(case, base_url: str) -> None:
    response = case.call_and_validate(base_url=base_url, checks=[not_a_server_error])
    if response.status_code == 200:
        validate_bid_response(response.json())


@openrtb_schema.parametrize()
@FUZZ
def test_no_openrtb_bid_request_gets_a_server_error(case, base_url):
    assert_no_server_error_and_a_conforming_bid(case, base_url)


@buyable_schema.parametrize()
@FUZZ
def test_every_bid_on_an_openrtb_request_we_buy_conforms(case, base_url):
    assert_no_server_error_and_a_conforming_bid(case, base_url)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/events/track/U%25%C2%B2m%C3%A9/click", None, "auction_id"),  # found by the fuzzer: was a 500
        ("POST", "/v1/events", {"event_id": "e", "event_type": "click", "auction_id": "a",
                                "event_time": "0001-01-01T00:00:00+01:00"}, "event_time"),  # was a 500
    ],
)  # fmt: skip
def test_inputs_that_once_were_server_errors_are_422_naming_the_field(base_url, method, path, body, field):
    response = httpx.request(method, base_url + path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
