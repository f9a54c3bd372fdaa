"""The OpenRTB bidder over HTTP with real parts (Kafka, the campaign and shared stores, an MLflow champion, a Delta
ad catalog): what an exchange renders, its notices, the click's landing page, several imps, and the 400s."""

from __future__ import annotations

import json
import re
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd
import pytest
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from adstream.contracts import Table, Topic
from auction_service.api.app import create_app
from auction_service.campaign_store import callers, store
from auction_service.campaign_store.callers import CallerKind
from auction_service.serving.bid_filter import ServedBidFilter
from ml.bid_filter import BidFilter
from tests.auction_service.conftest import BROWSER_UA, instruction, running_service, stop, topic_records

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24  # the file's bytes only matter, not that it decodes
SHOES = {"adomain": "shoes.example", "landing_url": "https://www.shoes.example/spring?utm=rtb",
         "video": {"url": "https://cdn.shoes.example/spring.mp4", "duration_s": 15}}  # fmt: skip
BANNER_300 = {"id": "1", "banner": {"w": 300, "h": 250}}


def bid_request(*imps: dict, **fields: object) -> dict:
    return {"id": "req-1", "imp": list(imps) or [BANNER_300], "site": {"domain": "news.example"},
            "device": {"devicetype": 2}, "user": {"id": "u-42"}, **fields}  # fmt: skip


@pytest.fixture(scope="module")
def bidder(service_settings, tmp_path_factory):
    kaggle = tmp_path_factory.mktemp("kaggle")
    (kaggle / "ads16" / "Ads").mkdir(parents=True)
    (kaggle / "ads16" / "Ads" / "3.png").write_bytes(PNG)
    settings = service_settings.model_copy(update={"kaggle_dir": kaggle})
    catalog = pd.DataFrame({
        "ad_id": ["ad-shoes", "ad-cars"], "category": ["Clothing & Shoes", "Automotive"],
        "ad_ctr_smoothed": [0.05, 0.04], "category_ctr_smoothed": [0.05, 0.04],
        "title": ["Spring shoes", 'Cars "R" <Us> & more'], "image_path": ["ads16/Ads/3.png", None],
    })  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_AD_FEATURES)[0], catalog, mode="overwrite")
    campaigns = (
        instruction("shoes", ad_id="ad-shoes", category="Clothing & Shoes", pricing_model="CPM",
                    bid_micros=6_000_000, creative=SHOES),
        instruction("cars", ad_id="ad-cars", pricing_model="CPM", bid_micros=2_000_000,
                    creative={"adomain": "cars.example", "banner_sizes": [{"w": 300, "h": 250}, {"w": 728, "h": 90}]}),
    )  # fmt: skip
    with running_service(settings, *campaigns) as state, TestClient(create_app(state=state)) as client:
        yield state, client


def only_bid(response) -> dict:
    assert response.status_code == 200, response.text
    (seat,) = response.json()["seatbid"]
    (one,) = seat["bid"]
    return one


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def test_a_banner_bid_renders_the_creative_and_its_click_lands_on_the_campaigns_page(bidder):
    _, client = bidder
    one = only_bid(client.post("/openrtb2/auction", json=bid_request()))
    assert (one["cid"], one["adomain"], one["mtype"], one["w"], one["h"]) == ("shoes", ["shoes.example"], 1, 300, 250)
    assert (one["crid"], one["cat"], one["cattax"]) == ("ad-shoes", ["IAB18"], 1)
    assert "Spring shoes" in one["adm"]
    image_url = unescape(re.search(r'<img src="([^"]+)"', one["adm"])[1])
    assert image_url.endswith("/v1/creatives/ad-shoes/image")
    image = client.get(local(image_url))
    assert (image.status_code, image.headers["content-type"], image.content) == (200, "image/png", PNG)
    click_url = unescape(re.search(r'<a href="([^"]+)"', one["adm"])[1])
    landing = client.get(local(click_url), follow_redirects=False)
    assert (landing.status_code, landing.headers["location"]) == (302, "https://www.shoes.example/spring?utm=rtb")
    again = client.get(local(click_url), follow_redirects=False)  # a second click counts once, and still lands
    assert (again.status_code, again.headers["location"]) == (302, SHOES["landing_url"])


def test_an_ad_without_an_image_is_its_title_drawn_as_svg(bidder):
    _, client = bidder
    svg = client.get("/v1/creatives/ad-cars/image")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "Cars &quot;R&quot; &lt;Us&gt; &amp; more" in svg.text or 'Cars "R" &lt;Us&gt; &amp; more' in svg.text
    assert client.get("/v1/creatives/no-such-ad/image").status_code == 404


def test_burl_is_the_billable_impression_and_nurl_records_the_exchanges_price(bidder):
    state, client = bidder
    one = only_bid(client.post("/openrtb2/auction", json=bid_request(user={"id": "u-notices"})))
    assert "${AUCTION_PRICE}" in one["nurl"] and "/win?" in one["nurl"]
    assert "/impression?notice=billing&t=" in one["burl"]
    with state.sessions() as session:
        before = store.get_campaign(session, one["cid"]).spent_micros
    # An exchange fires the burl from its servers: a non-browser agent, which would be GIVT on a device's call.
    exchange = {"User-Agent": "Go-http-client/1.1"}
    # The billing token is the burl's alone: without notice=billing it is no impression token, and back.
    as_device = client.get(local(one["burl"]).replace("notice=billing&", ""), headers=exchange)
    assert as_device.status_code == 403, as_device.text
    assert client.get(local(one["burl"]), headers=exchange).status_code == 204
    assert client.get(local(one["burl"]), headers=exchange).status_code == 204  # fired twice: charged once
    with state.sessions() as session:
        charged = store.get_campaign(session, one["cid"]).spent_micros - before
    assert charged == round(one["price"] * 1_000_000) // 1000  # a CPM impression: the bid's price per thousand
    feedback = [json.loads(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    # At least once on the topic (a replay may be published again); one event id, charged.
    (billed,) = {e["event_id"]: e for e in feedback if e["auction_id"] == one["id"] and e["event_type"] == "impression"
                 }.values()  # fmt: skip
    assert (billed["charge_status"], billed["ivt_category"]) == ("charged", None)
    wrong_type = local(one["burl"]).replace("/impression?", "/click?")
    assert client.get(wrong_type, headers=exchange).status_code == 422

    bid_cpm = one["price"]
    unsubstituted = client.get(local(one["nurl"]))
    assert unsubstituted.status_code == 422 and "unsubstituted" in unsubstituted.json()["detail"]
    above = client.get(local(one["nurl"].replace("${AUCTION_PRICE}", f"{bid_cpm + 0.01:.2f}")))
    assert above.status_code == 422 and "above our bid" in above.json()["detail"]
    assert client.get(local(one["nurl"].replace("${AUCTION_PRICE}", "abc"))).status_code == 422
    won = client.get(local(one["nurl"].replace("${AUCTION_PRICE}", "1.234567")))
    assert won.status_code == 204, won.text
    wins = [json.loads(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    (win,) = [event for event in wins if event["auction_id"] == one["id"] and event["event_type"] == "win"]
    assert (win["exchange_price_cpm_micros"], win["cost_micros"], win["charge_status"]) == (
        1_234_567, 0, "not_billable"
    )  # fmt: skip


def test_a_device_side_impression_keeps_the_callers_ivt_check_and_the_bid_request_is_screened(bidder):
    state, client = bidder
    video = {"id": "v", "video": {"mimes": ["video/mp4"], "maxduration": 30}}
    one = only_bid(client.post("/openrtb2/auction", json=bid_request(video, user={"id": "u-vast"})))
    vast_impression = unescape(re.search(r"<Impression><!\[CDATA\[([^\]]+)\]\]>", one["adm"])[1])
    assert "notice=billing" not in vast_impression and "notice=billing" not in one["adm"]
    # The player's call with a script's agent is GIVT: accepted (204), never charged.
    assert client.get(local(vast_impression), headers={"User-Agent": "python-requests/2.32"}).status_code == 204
    events = [json.loads(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    (seen,) = {e["event_id"]: e for e in events if e["auction_id"] == one["id"] and e["event_type"] == "impression"
               }.values()  # fmt: skip
    assert (seen["charge_status"], seen["ivt_reason"], seen["cost_micros"]) == ("invalid_traffic", "known_bot_ua", 0)
    # A billing token cannot be made from the device-side one.
    forged = local(vast_impression) + "&notice=billing"
    assert client.get(forged, headers={"User-Agent": "Go-http-client/1.1"}).status_code == 403

    # Before the auction: a device the exchange states as a crawler, or in a data center, gets no bid at all.
    crawler = {"devicetype": 2, "ua": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}
    no_bid = client.post("/openrtb2/auction", json=bid_request(device=crawler))
    assert (no_bid.status_code, no_bid.headers["x-no-bid-reason"]) == (204, "invalid traffic: device known_bot_ua")
    browser = {"devicetype": 2, "ua": BROWSER_UA, "ip": "203.0.113.9"}  # a documentation address: not a DC range
    assert client.post("/openrtb2/auction", json=bid_request(device=browser)).status_code == 200


def test_a_no_bid_is_a_200_with_its_reason_code_when_the_exchange_wants_one(bidder):
    state, client = bidder
    crawler = {"devicetype": 2, "ua": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"}
    script = {"devicetype": 2, "ua": "AcmeFetcher/1.0"}
    cases = [
        (bid_request(device=crawler), 3),  # known web crawler
        (bid_request(device=script), 4),  # suspected non-human traffic
        (bid_request(tmax=5), 15),  # insufficient auction time
        (bid_request(dooh={"id": "screens"}, site=None), 6),  # unsupported device
        (bid_request({"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 900.0}), 0),  # nothing clears
    ]
    assert client.post("/openrtb2/auction", json=cases[0][0]).status_code == 204  # the default
    default = state.settings
    state.settings = default.model_copy(update={"openrtb_no_bid_body": True})
    try:
        for request, code in cases:
            request = {key: value for key, value in request.items() if value is not None}
            answer = client.post("/openrtb2/auction", json=request)
            assert answer.status_code == 200, (request, answer.text)
            assert answer.json() == {"id": "req-1", "seatbid": [], "nbr": code}, answer.headers["x-no-bid-reason"]
        filled = client.post("/openrtb2/auction", json=bid_request(user={"id": "u-nbr"}))
        assert filled.status_code == 200 and "nbr" not in filled.json() and filled.json()["seatbid"]
    finally:
        state.settings = default


def test_every_imp_is_auctioned_and_one_campaign_fills_one_imp(bidder):
    _, client = bidder
    imps = [BANNER_300, {"id": "2", "banner": {"format": [{"w": 300, "h": 250}]}}, {"id": "3", "banner": {}}]
    response = client.post("/openrtb2/auction", json=bid_request(*imps, user={"id": "u-multi"}))
    bids = [one for seat in response.json()["seatbid"] for one in seat["bid"]]
    # Two campaigns, three imps: each campaign fills one, and the third imp gets no bid.
    assert sorted((one["impid"], one["cid"]) for one in bids) == [("1", "shoes"), ("2", "cars")]
    assert len({one["id"] for one in bids}) == 2  # an auction each


def test_a_video_imp_is_vast_from_the_campaign_with_a_video(bidder):
    _, client = bidder
    video = {"id": "v", "video": {"mimes": ["video/mp4"], "maxduration": 30, "protocols": [7]}}
    one = only_bid(client.post("/openrtb2/auction", json=bid_request(video)))
    assert (one["cid"], one["mtype"], one["dur"]) == ("shoes", 2, 15)
    assert one["adm"].startswith('<?xml version="1.0" encoding="UTF-8"?><VAST version="4.0">')
    webm = {"id": "v", "video": {"mimes": ["video/webm"]}}
    response = client.post("/openrtb2/auction", json=bid_request(webm))
    assert response.status_code == 204 and "no campaign clears" in response.headers["x-no-bid-reason"]


def test_a_request_that_breaks_the_spec_is_400_with_the_path(bidder):
    _, client = bidder
    twice = client.post("/openrtb2/auction", json=bid_request(BANNER_300, {"id": "1", "banner": {}}))
    assert twice.status_code == 400 and [e["path"] for e in twice.json()["errors"]] == ["imp[1].id"]
    negative = client.post("/openrtb2/auction", json=bid_request({"id": "1", "banner": {"w": -300, "h": 250}}))
    assert negative.status_code == 400 and negative.json()["errors"][0]["path"] == "imp[0].banner.w"
    assert "greater than or equal to 0" in negative.json()["errors"][0]["rule"]
    dooh = {k: v for k, v in bid_request().items() if k != "site"} | {"dooh": {"id": "screen"}}
    no_bid = client.post("/openrtb2/auction", json=dooh)
    assert (no_bid.status_code, no_bid.headers["x-no-bid-reason"]) == (
        204,
        "DOOH inventory is not bought: only site and app",
    )


def test_the_bid_filter_sheds_a_request_before_its_auction_and_tags_the_explored(bidder):
    state, client = bidder
    # A table that gives the junk domain a score of about 0.0025, every other request about 0.98.
    table = BidFilter(bias=4.0, weights={"dom=junk.example": -10.0}, threshold=0.1, time_saved_per_shed_s=0.004)
    meter, before = state.metrics.bid_filter, (state.metrics.bid_filter.shed, state.metrics.bid_filter.screened)
    junk = bid_request(site={"domain": "junk.example"}, user={"id": "u-junk"})
    try:
        state.bid_filter.current = ServedBidFilter(table, "9", exploration_share=0.0)
        shed = client.post("/openrtb2/auction", json=junk)
        assert (shed.status_code, shed.headers["x-no-bid-reason"]) == (
            204,
            "the bid-request filter: no imp is likely to fill",
        )
        assert (meter.shed, meter.screened) == (before[0] + 1, before[1] + 1)
        assert meter.time_saved_s >= 0.004
        passed = only_bid(client.post("/openrtb2/auction", json=bid_request(user={"id": "u-good"})))
        state.bid_filter.current = ServedBidFilter(table, "9", exploration_share=1.0)  # everything explored
        explored = only_bid(client.post("/openrtb2/auction", json=junk))
    finally:
        state.bid_filter.current = None
    assert state.auction_log.flush(30) == 0  # the auction log is sent behind the answer
    records = {
        json.loads(r.value)["auction_id"]: json.loads(r.value) for r in topic_records(state.settings, Topic.AUCTIONS)
    }
    good, tagged = records[passed["id"]], records[explored["id"]]
    assert (good["bid_filter_explored"], round(good["bid_filter_score"], 2)) == (False, 0.98)
    assert (tagged["bid_filter_explored"], tagged["domain"], tagged["placement"]) == (True, "junk.example", "300x250")
    assert tagged["bid_filter_score"] < 0.01 and tagged["request_id"] == "req-1" and tagged["imp_id"] == "1"
    # The explored junk request earned: its revenue counts against the threshold's estimate.
    assert meter.explored_revenue_below_threshold_cpm_micros >= round(explored["price"] * 1_000_000)


def test_a_no_bid_reason_quoting_the_request_cannot_inject_a_header(bidder):
    _, client = bidder
    response = client.post("/openrtb2/auction", json=bid_request(cur=["EUR\r\nSet-Cookie: a=1", "€"]))
    assert response.status_code == 204 and "set-cookie" not in response.headers
    assert response.headers["x-no-bid-reason"] == r"cur ['EUR\r\nSet-Cookie: a=1', '?']: bids are in USD only"


EXCHANGE = {"User-Agent": "Go-http-client/1.1"}  # an exchange's server fires the burl; TestClient's address is its


def feedback_of(state, auction_id: str, event_type: str) -> dict:
    events = [json.loads(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    (one,) = {e["event_id"]: e for e in events if e["auction_id"] == auction_id and e["event_type"] == event_type
              }.values()  # fmt: skip
    return one


def with_query(url: str, **changes: str | None) -> str:
    """``url`` (made local) with query parameters replaced, or dropped when None; the others in their order."""
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()} | changes
    return f"{parts.path}?{urlencode({name: value for name, value in query.items() if value is not None})}"


def test_billing_notices_from_one_exchange_are_attributed_to_their_devices_and_a_forged_device_is_refused(bidder):
    state, client = bidder
    phones = {"203.0.113.21": BROWSER_UA, "203.0.113.22": BROWSER_UA.replace("X11; Linux", "Windows NT 10.0")}
    bids = {
        ip: only_bid(client.post("/openrtb2/auction", json=bid_request(
            device={"devicetype": 2, "ua": ua, "ip": ip}, user={"id": f"u-device-{ip}"})))
        for ip, ua in phones.items()
    }  # fmt: skip
    for ip, one in bids.items():
        query = parse_qs(urlsplit(one["burl"]).query)
        assert (query["device_ip"], query["device_ua"], query["notice"]) == ([ip], [phones[ip]], ["billing"])
    # A forged device: another address or agent, one dropped, both stripped, or another auction's token.
    first, second = bids["203.0.113.21"], bids["203.0.113.22"]
    forged = [
        (with_query(first["burl"], device_ip="198.51.100.99"), 403),
        (with_query(first["burl"], device_ua="Mozilla/5.0 (forged)"), 403),
        (with_query(first["burl"], device_ua=None), 403),  # dropping a signed field changes what was signed
        (with_query(first["burl"], device_ip=None, device_ua=None), 403),  # stripped: the token still covers them
        (with_query(first["burl"], t=parse_qs(urlsplit(second["burl"]).query)["t"][0]), 403),  # another's token
        (with_query(first["burl"], notice=None), 422),  # device parameters belong to a billing notice only
    ]  # fmt: skip
    for url, status in forged:
        assert client.get(url, headers=EXCHANGE).status_code == status, url
    relayed = {"event_id": f"{first['id']}-relayed", "event_type": "impression", "auction_id": first["id"],
               "token": parse_qs(urlsplit(first["burl"]).query)["t"][0], "billing_notice": True,
               "ip": "198.51.100.99", "user_agent": BROWSER_UA}  # fmt: skip
    refused = client.post("/v1/events", json=relayed)
    assert refused.status_code == 403, refused.text  # relayed with a forged device: the same
    assert "device_ip and device_ua of its burl" in refused.json()["detail"]

    # The two burls, fired from the same exchange address with the same agent: each event is its own device's.
    for one in bids.values():
        assert client.get(local(one["burl"]), headers=EXCHANGE).status_code == 204
    for ip, one in bids.items():
        billed = feedback_of(state, one["id"], "impression")
        assert (billed["ip"], billed["user_agent"]) == (ip, phones[ip])
        assert (billed["charge_status"], billed["ivt_category"]) == ("charged", None)


def test_a_burl_without_a_stated_device_records_no_device(bidder):
    state, client = bidder
    one = only_bid(client.post("/openrtb2/auction", json=bid_request(user={"id": "u-no-device"})))
    assert "device_" not in one["burl"]
    assert client.get(local(one["burl"]), headers=EXCHANGE).status_code == 204
    billed = feedback_of(state, one["id"], "impression")
    # The caller is the exchange's server: its address and agent are not the device's, so none is recorded.
    assert (billed["ip"], billed["user_agent"], billed["charge_status"]) == (None, None, "charged")


FIRST_PRICE_DEAL = {"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.5,
                    "pmp": {"private_auction": 1, "deals": [{"id": "D-FIRST", "bidfloor": 1.0, "at": 1}]}}  # fmt: skip


def test_a_first_price_deal_needs_a_caller_allowed_first_price(bidder):
    state, client = bidder
    deal_campaign = instruction("deal-fp", ad_id="ad-cars", pricing_model="CPM", bid_micros=4_000_000,
                                frequency_cap_per_day=1000, deals=[{"deal_id": "D-FIRST", "floor_cpm_micros": 0}],
                                creative={"adomain": "deal.example"})  # fmt: skip
    with state.sessions() as session:
        store.apply_instruction(session, deal_campaign)
        no_first_price = callers.create_key(session, caller_id="ssp-second-only", kind=CallerKind.EXCHANGE,
                                            max_floor_cpm_micros=10**9, first_price_allowed=False)  # fmt: skip
    state.refresh_campaigns(force=True)
    keyed = {"X-Api-Key": no_first_price.api_key}
    try:
        # Anonymous local callers may ask for first price: in an at=2 request, the deal's at=1 prices it at the bid.
        allowed = only_bid(client.post("/openrtb2/auction", json=bid_request(FIRST_PRICE_DEAL, user={"id": "u-fp"})))
        assert (allowed["cid"], allowed["dealid"], allowed["price"]) == ("deal-fp", "D-FIRST", 4.0)
        deadline = time.monotonic() + 10
        while (refused := client.post("/openrtb2/auction", json=bid_request(FIRST_PRICE_DEAL), headers=keyed)
               ).status_code == 401 and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.2)  # the new key is in force within the key cache's reload
        assert refused.status_code == 204, refused.text
        assert refused.headers["x-no-bid-reason"] == (
            "no campaign clears the floor of any imp; deals D-FIRST are first price (at=1), which caller "
            "'ssp-second-only' may not ask for"
        )
        second = {**FIRST_PRICE_DEAL, "pmp": {"private_auction": 1, "deals": [{"id": "D-FIRST", "bidfloor": 1.0,
                                                                                "at": 2}]}}  # fmt: skip
        # The same caller through a second-price deal: alone, the deal bid clears at the deal's floor.
        through_second = client.post("/openrtb2/auction", json=bid_request(second, user={"id": "u-sp"}), headers=keyed)
        priced = only_bid(through_second)
        assert (priced["cid"], priced["price"]) == ("deal-fp", 1.0)
    finally:
        with state.sessions() as session:
            store.apply_instruction(session, stop("deal-fp"))
        state.refresh_campaigns(force=True)
