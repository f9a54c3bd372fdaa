"""OpenRTB 2.6 protocol cases of ``POST /openrtb2/auction``, one JSON file per case, as Prebid Server keeps its
sample requests: ``fixtures/exemplary`` holds the bids we make, ``fixtures/supplemental`` the requests we do not
buy (204), privacy rules and requests that break OpenRTB 2.6 (400).

A file holds ``description``, ``campaigns``, ``request`` and ``expected``:

- ``campaigns``: partial campaign specs (``CampaignSpec``) with a ``campaign_id``, completed by
  ``CAMPAIGN_DEFAULTS`` and the service tests' ``instruction`` (a CPM bid, paced ASAP so that every auction sees
  the full bid; the creative's ``adomain`` is ``<campaign_id>.example`` unless given). Campaign ids are distinct
  across files.
- ``expected`` for 200: ``bids``; the response has as many, and each listed bid's keys equal those of a bid of
  its own (order-free). ``seat`` is the bid's ``seatbid.seat``, ``min_price`` a lower bound of ``price``, and
  ``null`` says the key is absent. Every bid must carry the fields ``REQUIRED_BID_FIELDS``, ``${AUCTION_PRICE}``
  in its ``nurl`` and ``cattax`` 1, and a video bid (``mtype`` 2) a VAST 4 ``adm``. The body is checked against
  the OpenRTB 2.6 schema by the run-wide check of ``tests/conftest.py``.
- ``expected`` for 204: an empty body. For 400: ``error_paths``, each in the body's ``errors[*].path`` (a list
  of paths there: any one of them).

One service for the module, as the API tests build it (Kafka, SQLite store, the MLflow champion, the shared
store, the fast path on); each case creates its campaigns, posts its request and stops them, so no case bids
with another's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from adstream.events import CampaignInstruction
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from auction_service.campaign_store.store import ApplyOutcome
from auction_service.serving.state import ServiceState
from tests.auction_service.conftest import instruction, running_service, stop
from tests.openrtb.conformance import validate_bid_request

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(FIXTURES.glob("*/*.json"))
CAMPAIGN_DEFAULTS: dict[str, Any] = {
    "pricing_model": "CPM",
    "bid_micros": 2_000_000,
    "pacing_mode": "asap",
    "frequency_cap_per_day": 1000,
}
REQUIRED_BID_FIELDS = ("nurl", "burl", "adm", "crid", "cid", "cat", "cattax", "adomain", "mtype")
PRICE_MACRO = "${AUCTION_PRICE}"
MTYPE_VIDEO = 2


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def campaign_instruction(entry: dict[str, Any]) -> CampaignInstruction:
    spec = dict(entry)
    campaign_id = spec.pop("campaign_id")
    domain = f"{campaign_id}.example"
    creative = {"adomain": domain, "landing_url": f"https://{domain}/", **spec.pop("creative", {})}
    return instruction(campaign_id, **{**CAMPAIGN_DEFAULTS, **spec, "creative": creative})


def apply(state: ServiceState, instructions: list[CampaignInstruction], outcome: ApplyOutcome) -> None:
    with state.sessions() as session:
        for applied in instructions:
            assert store.apply_instruction(session, applied).outcome == outcome, applied.campaign_id
    state.refresh_campaigns(force=True)


@contextmanager
def campaigns_of(state: ServiceState, case: dict[str, Any]) -> Iterator[None]:
    """The case's campaigns serving meanwhile, stopped afterwards."""
    created = [campaign_instruction(entry) for entry in case["campaigns"]]
    apply(state, created, ApplyOutcome.CREATED)
    try:
        yield
    finally:
        apply(state, [stop(applied.campaign_id) for applied in created], ApplyOutcome.STOPPED)


def bids_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every bid of a BidResponse, with its seat (``seatbid.seat``) as ``seat``."""
    return [{**bid, "seat": seatbid.get("seat")} for seatbid in body.get("seatbid", []) for bid in seatbid["bid"]]


def matches(bid: dict[str, Any], expected: dict[str, Any]) -> bool:
    for key, value in expected.items():
        if key == "min_price":
            if not bid["price"] >= value:
                return False
        elif bid.get(key) != value:
            return False
    return True


def assert_carries_what_an_exchange_needs(bid: dict[str, Any]) -> None:
    missing = [field for field in REQUIRED_BID_FIELDS if bid.get(field) in (None, "", [])]
    assert not missing, f"bid {bid.get('id')} lacks {missing}: {bid}"
    assert PRICE_MACRO in bid["nurl"], f"bid {bid['id']}: no {PRICE_MACRO} in nurl {bid['nurl']}"
    assert bid["cattax"] == 1, f"bid {bid['id']}: cattax {bid['cattax']}, expected 1"
    if bid["mtype"] == MTYPE_VIDEO:
        vast = ElementTree.fromstring(bid["adm"])
        root = vast.tag.rpartition("}")[2]  # with or without the VAST 4 namespace
        version = vast.get("version", "")
        assert root == "VAST" and version.startswith("4"), f"bid {bid['id']}: adm is {root} {version}, not VAST 4"


def assert_bids(body: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    bids = bids_of(body)
    assert len(bids) == len(expected), f"{len(bids)} bids, expected {len(expected)}: {bids}"
    for bid in bids:
        assert_carries_what_an_exchange_needs(bid)
    unmatched = list(bids)
    for wanted in expected:
        match = next((bid for bid in unmatched if matches(bid, wanted)), None)
        assert match is not None, f"no bid matches {wanted} among {unmatched}"
        unmatched.remove(match)


def assert_error_paths(body: dict[str, Any], expected: list[str | list[str]]) -> None:
    paths = {error.get("path") for error in body.get("errors", [])}
    for wanted in expected:
        either = [wanted] if isinstance(wanted, str) else wanted
        assert paths.intersection(either), f"no error at {' or '.join(either)}: {body}"


@pytest.fixture(scope="module")
def service(service_settings) -> Iterator[tuple[ServiceState, TestClient]]:
    with running_service(service_settings) as state, TestClient(create_app(state=state)) as client:
        yield state, client


@pytest.mark.slow
@pytest.mark.parametrize("path", CASES, ids=case_id)
def test_case(path: Path, service: tuple[ServiceState, TestClient]):
    state, client = service
    case = load(path)
    expected = case["expected"]
    with campaigns_of(state, case):
        response = client.post("/openrtb2/auction", json=case["request"])
    assert response.status_code == expected["status"], f"{case['description']}\n{response.text}"
    if expected["status"] == 200:
        assert_bids(response.json(), expected["bids"])
    elif expected["status"] == 204:
        assert response.content == b""
    else:
        assert_error_paths(response.json(), expected["error_paths"])


def test_the_fixture_files_are_well_formed_and_their_campaigns_distinct():
    assert len(CASES) >= 25 and {path.parent.name for path in CASES} == {"exemplary", "supplemental"}
    campaign_ids = []
    for path in CASES:
        case = load(path)
        assert set(case) == {"description", "campaigns", "request", "expected"}, path
        assert case["expected"]["status"] in (200, 204, 400), path
        if case["expected"]["status"] == 200:
            assert case["expected"]["bids"], path
        if case["expected"]["status"] == 400:
            assert case["expected"]["error_paths"], path
        else:  # what we bid on or pass on is valid OpenRTB 2.6
            validate_bid_request(case["request"])
        campaign_ids.extend(campaign_instruction(entry).campaign_id for entry in case["campaigns"])
    assert len(campaign_ids) == len(set(campaign_ids)), "a campaign id in two fixture files"


A_BID: dict[str, Any] = {
    "id": "b1", "impid": "1", "price": 3.5, "nurl": f"https://bidder.example/win?p={PRICE_MACRO}",
    "burl": "https://bidder.example/bill", "adm": "<a></a>", "crid": "ad-1", "cid": "c-1", "cat": ["IAB2"],
    "cattax": 1, "adomain": ["shoes.example"], "mtype": 1, "dealid": "D-1",
}  # fmt: skip
VAST_4 = '<VAST xmlns="http://www.iab.com/VAST" version="4.2"><Ad id="1"/></VAST>'


def response_with(*bids: dict[str, Any]) -> dict[str, Any]:
    return {"id": "r", "seatbid": [{"seat": "adv-1", "bid": list(bids)}]}


@pytest.mark.parametrize(
    ("bids", "expected", "failure"),
    [
        ([A_BID], [{"cid": "c-2"}], "no bid matches"),
        ([A_BID], [{"cid": "c-1", "min_price": 4.0}], "no bid matches"),
        ([A_BID], [{"cid": "c-1", "dealid": None}], "no bid matches"),
        ([A_BID], [{"cid": "c-1", "seat": "adv-2"}], "no bid matches"),
        ([A_BID, {**A_BID, "id": "b2"}], [{"cid": "c-1"}], "2 bids, expected 1"),
        ([A_BID, {**A_BID, "id": "b2"}], [{"cid": "c-1"}, {"impid": "2"}], "no bid matches"),
        ([{**A_BID, "burl": ""}], [{"cid": "c-1"}], "lacks ['burl']"),
        ([{**A_BID, "nurl": "https://bidder.example/win"}], [{"cid": "c-1"}], "no ${AUCTION_PRICE} in nurl"),
        ([{**A_BID, "cattax": 2}], [{"cid": "c-1"}], "cattax 2, expected 1"),
        ([{**A_BID, "mtype": 2, "adm": VAST_4.replace("4.2", "3.0")}], [{"cid": "c-1"}], "adm is VAST 3.0"),
    ],
)
def test_the_runner_fails_a_response_short_of_the_expectation(bids, expected, failure):
    with pytest.raises(AssertionError, match=re.escape(failure)):
        assert_bids(response_with(*bids), expected)


def test_the_runner_passes_a_response_meeting_the_expectation():
    video = {**A_BID, "id": "b2", "impid": "2", "cid": "c-2", "mtype": 2, "adm": VAST_4}
    del video["dealid"]
    assert_bids(response_with(A_BID, video), [{"impid": "2", "dealid": None}, {"cid": "c-1", "min_price": 3.5}])
    assert_error_paths({"errors": [{"path": "app"}, {"path": "imp[1].id"}]}, [["site", "app"], "imp[1].id"])
    with pytest.raises(AssertionError, match="no error at site or dooh"):
        assert_error_paths({"errors": [{"path": "app"}]}, [["site", "dooh"]])
