"""The budget under concurrency, over a real uvicorn server, a real broker and a real store.

A campaign with a small budget is served by 32 concurrent clients until it stops filling;
then every billable event of its auctions is sent by 32 concurrent clients (a CPC click after
its auction's impression: a click counts only after one), with retries (the same event_id
again), second billable events for the same auction, non-billable events, the same event
twice in one batch and events for auctions never served, while another client keeps asking
for auctions.

The campaign stops filling once what its reservations leave of the budget cannot pay one
more billable event, and the reservations overshoot the budget by up to one per auction that
passed the budget check while it was still open (at most one per concurrent request):
checked against the concurrency. Spend never passes the budget: a charge that would is
refused (``over_budget``), none is refused that would have fit in what is left, and once
what is left pays for no more charge the campaign serves few more ads (reservations freed
by refused charges may reopen it until the next reload; their events are refused too).
All is checked here, by hand, from the auctions the clients got back.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from adstream.contracts import Topic
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from tests.auction_service.conftest import (
    TOKEN,
    impression_time,
    instruction,
    live_server,
    open_service,
    signed_event,
    topic_records,
)

pytestmark = pytest.mark.slow
CLIENTS = 32
STATUSES = {"accepted", "duplicate", "rejected"}
REFUSED = {401, 403, 404, 410, 422}  # a single rejected event: the reason is the detail
Request = dict | list[dict]  # one event, or a batch


@dataclass(frozen=True)
class Case:
    campaign_id: str
    pricing_model: str
    bid_micros: int
    budget_micros: int  # total and daily; not a multiple of any reservation
    billable: str
    other: str  # a non-billable event type
    # (charge_status, ivt_reason) of a second billable event of a charged auction
    second_billable: tuple[str, str | None]


# A second click on one auction is GIVT, a second impression the auction's duplicate.
CPC = Case("budget-cpc", "CPC", 500_000, 12_345_678, "click", "impression", ("invalid_traffic", "duplicate_click"))
CPM = Case("budget-cpm", "CPM", 5_000_000, 123_457, "impression", "click", ("duplicate_auction", None))
CATEGORIES = {CPC.campaign_id: "Travel", CPM.campaign_id: "Finance"}


@pytest.fixture(scope="module")
def service(service_settings):
    state = open_service(
        service_settings,
        *(
            instruction(
                case.campaign_id,
                pricing_model=case.pricing_model,
                bid_micros=case.bid_micros,
                total_budget_micros=case.budget_micros,
                daily_budget_micros=case.budget_micros,
                category=CATEGORIES[case.campaign_id],
                frequency_cap_per_day=1000,
            )
            for case in (CPC, CPM)
        ),
    )
    state.start()
    try:
        with live_server(create_app(state=state)) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield state, http
    finally:
        state.stop()


def auction_request(http: httpx.Client, case: Case) -> dict:
    """Only ``case``'s campaign is eligible, and the floor puts its price near its bid."""
    other = next(campaign_id for campaign_id in CATEGORIES if campaign_id != case.campaign_id)
    context = {"device_type": "mobile", "blocked_categories": [CATEGORIES[other]]}
    predicted = http.post("/v1/predict_ctr", json={"context": context, "campaign_ids": [case.campaign_id]}).json()
    pctr = predicted["predictions"][0]["pctr"]
    ecpm_micros = case.bid_micros * pctr * 1000 if case.pricing_model == "CPC" else case.bid_micros
    return {**context, "floor_cpm": str(Decimal(int(ecpm_micros * 0.8)) / 1_000_000)}


def billable_cost(case: Case, auction: dict) -> int:
    price = auction["clearing_price_micros"]
    return -(-price // 1000) if case.pricing_model == "CPM" else price  # CPM: per impression, rounded up


def largest_charge(case: Case) -> int:
    """What one billable event costs at the campaign's bid: a price never passes it."""
    return -(-case.bid_micros // 1000) if case.pricing_model == "CPM" else case.bid_micros


def reservation(case: Case, auction: dict) -> int:
    cost = billable_cost(case, auction)
    return cost if case.pricing_model == "CPM" else min(cost, math.ceil(cost * Decimal(repr(auction["pctr"]))))


def serve_until_exhausted(http: httpx.Client, body: dict) -> list[dict]:
    def client() -> list[dict]:
        won = []
        while (response := http.post("/v1/auction", json=body)).status_code == 200:
            won.append(response.json())
        assert response.status_code == 204, response.text
        return won

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [auction for won in pool.map(lambda _: client(), range(CLIENTS)) for auction in won]


def event_requests(case: Case, auctions: list[dict]) -> tuple[list[Request], list[Request]]:
    """(sent first, then while billing): single events (dicts) and batches (lists).

    First, a CPC auction's impression, dated a few seconds back (its click is then neither out of
    order nor too fast); then every billable event twice, plus the traps listed above.
    """
    shown_at = impression_time()

    def event(auction: dict, event_type: str, event_id: str) -> dict:
        return signed_event(auction, event_type, event_id, at=shown_at if event_type == "impression" else None)

    first: list[Request] = []
    billing: list[Request] = []
    for n, auction in enumerate(auctions):
        auction_id = auction["auction_id"]
        billable = event(auction, case.billable, f"b-{auction_id}")
        if n % 4 == 0:
            billing.append([billable, billable])  # the same event twice in one batch: one copy is charged
        else:
            billing += [billable, billable]  # a retry
            billing.append(event(auction, case.billable, f"b2-{auction_id}"))  # a second billable event, same auction
        other = event(auction, case.other, f"o-{auction_id}")
        (first if case.other == "impression" else billing).append(other)
    for n in range(8):
        unknown = {"event_id": f"u-{case.campaign_id}-{n}", "event_type": case.billable, "auction_id": f"nope-{n}"}
        billing.append(unknown if n % 2 else [unknown])
    return first, billing


def send_events(http: httpx.Client, request: Request) -> list[tuple[dict, dict]]:
    """(event sent, its result) for every event of the request."""
    if isinstance(request, dict):
        response = http.post("/v1/events", json=request)
        if response.status_code in REFUSED:
            result = {"event_id": request["event_id"], "status": "rejected", "reason": response.json()["detail"]}
            return [(request, {**result, "charged_micros": 0})]
        assert response.status_code == 202, response.text
        return [(request, response.json()["results"][0])]
    response = http.post("/v1/events", json={"events": request})
    assert response.status_code == 202, response.text
    return list(zip(request, response.json()["results"], strict=True))


@pytest.mark.parametrize("case", [CPC, CPM], ids=lambda case: case.pricing_model)
def test_concurrent_billing_stays_within_the_bound_and_loses_no_event(service, case):
    state, http = service
    body = auction_request(http, case)

    auctions = serve_until_exhausted(http, body)
    assert {a["campaign_id"] for a in auctions} == {case.campaign_id} and len(auctions) >= 10
    reserved = sum(reservation(case, a) for a in auctions)
    # It stopped because what its reservations left of the budget could not pay one more billable event, not earlier...
    assert reserved > case.budget_micros - largest_charge(case)
    # ...and no later than the auctions already past the budget check when it closed: one per concurrent client.
    overshoot = reserved - case.budget_micros
    assert overshoot < CLIENTS * max(reservation(case, a) for a in auctions)
    assert all(http.post("/v1/auction", json=body).status_code == 204 for _ in range(10))

    # While the events are billed, reservations turn into spend: the campaign must stay closed throughout.
    billing_done = threading.Event()
    served_while_billing: Counter[int] = Counter()

    def keep_asking() -> None:
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            served_while_billing[http.post("/v1/auction", json=body).status_code] += 1
            if deadline is None and billing_done.is_set():
                deadline = time.monotonic() + 3 * state.settings.campaign_refresh_s

    prober = threading.Thread(target=keep_asking)
    prober.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            first, billing = event_requests(case, auctions)
            outcomes = [pair for requests in (first, billing)
                        for pairs in pool.map(lambda r: send_events(http, r), requests) for pair in pairs]  # fmt: skip
    finally:
        billing_done.set()
        prober.join()
    # Reservations freed by refused (over_budget) charges may reopen it for a reload's worth of auctions, whose
    # events the ledger then refuses too: a few, never more than the clients billing at once.
    assert served_while_billing[200] <= CLIENTS, f"served while billing: {dict(served_while_billing)}"
    assert set(served_while_billing) <= {200, 204}

    # Every event got a definite status; the rejected ones say why.
    assert all(result["status"] in STATUSES for _, result in outcomes)
    rejected = [(event, result) for event, result in outcomes if result["status"] == "rejected"]
    assert len(rejected) == 8 and all(result["reason"].startswith("unknown_auction: ") for _, result in rejected)
    assert all(event["auction_id"].startswith("nope-") for event, _ in rejected)

    # Only a charged event costs anything; a retry is answered as its event was journaled; a non-billable
    # event is free.
    journaled = {event["event_id"]: result for event, result in outcomes if result["status"] == "accepted"}
    billed: defaultdict[str, list[dict]] = defaultdict(list)
    for event, result in outcomes:
        if result["status"] == "rejected":
            continue
        charged = result["status"] == "accepted" and result["charge_status"] == "charged"
        assert (result["charged_micros"] > 0) == charged, result
        if result["status"] == "duplicate":
            assert result["charge_status"] == journaled[event["event_id"]]["charge_status"], (event, result)
        elif event["event_type"] == case.billable:
            billed[event["auction_id"]].append(result)
        else:
            assert result["charge_status"] != "charged", result
    assert billed.keys() == {a["auction_id"] for a in auctions}

    # Each auction is charged at most once, its billable cost; a first billable event that would pass the
    # budget is refused. Another billable event of a charged auction is never charged.
    charged_ids = {aid for aid, results in billed.items() if any(r["charge_status"] == "charged" for r in results)}
    misjudged = {}
    for n, auction in enumerate(auctions):
        results = billed[auction["auction_id"]]
        if auction["auction_id"] in charged_ids:
            expected = [("charged", None)] + [case.second_billable] * (n % 4 != 0)
            costs = [r["charged_micros"] for r in results if r["charged_micros"]]
            if costs != [billable_cost(case, auction)]:
                misjudged[auction["auction_id"]] = costs
        else:
            second = case.second_billable if case.pricing_model == "CPC" else ("over_budget", None)
            expected = [("over_budget", None)] + [second] * (n % 4 != 0)
        judged = sorted((r["charge_status"], r["ivt_reason"]) for r in results)
        if judged != sorted(expected):
            misjudged[auction["auction_id"]] = judged
    assert misjudged == {}

    # Spend is the sum of the charged auctions' prices, in the answers, the campaign and the ledger.
    expected_spend = sum(billable_cost(case, a) for a in auctions if a["auction_id"] in charged_ids)
    assert sum(result["charged_micros"] for _, result in outcomes) == expected_spend
    spent = http.get(f"/v1/campaigns/{case.campaign_id}", headers=TOKEN).json()["spent_micros"]
    assert spent == expected_spend
    now = datetime.now(UTC)
    with state.sessions() as session:
        ledger = store.spend_by_campaign_hour(session, now - timedelta(hours=2), now + timedelta(hours=1))
    assert sum(micros for (campaign_id, _), micros in ledger.items() if campaign_id == case.campaign_id) == spent

    # The bound: never past the budget; what is left pays no refused charge, nor one more at the bid.
    refused = [billable_cost(case, a) for a in auctions if a["auction_id"] not in charged_ids]
    assert spent <= case.budget_micros < spent + min(refused, default=largest_charge(case))

    # No event is lost: every accepted (and duplicate) event is on ad-feedback, charged as answered.
    published = {
        record["event_id"]: record
        for record in map(json.loads, (r.value for r in topic_records(state.settings, Topic.AD_FEEDBACK)))
    }
    kept = {event["event_id"] for event, result in outcomes if result["status"] != "rejected"}
    assert kept <= published.keys()
    assert sum(published[event_id]["cost_micros"] for event_id in kept) == spent

    # What is left of the budget pays for no more charge: still no auction.
    time.sleep(2 * state.settings.campaign_refresh_s)
    assert all(http.post("/v1/auction", json=body).status_code == 204 for _ in range(10))
