"""The OpenRTB 2.6 subset: request validation, mapping to the auction context, and the bid response."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from adstream.events import CampaignStatus, PricingModel
from auction_service.domain import AuctionContext, ServingCampaign
from auction_service.serving.auction import eligible, run_auction
from auction_service.serving.openrtb import IAB_CATEGORIES, BidRequest, bid_response, blocked_categories, to_context
from ingestion.ads16 import ADS16_CATEGORIES

AT = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RESERVE = 10_000

# Shaped like the IAB's OpenRTB 2.6 examples: a 300x250 banner on a site, with the fields
# and extensions a real exchange sends that this subset does not use.
SAMPLE: dict[str, Any] = {
    "id": "80ce30c53c16e6ede735f123ef6e32361bfc7b22",
    "at": 2,
    "tmax": 120,
    "cur": ["USD"],
    "imp": [
        {
            "id": "1",
            "tagid": "leaderboard-top",
            "bidfloor": 0.5,
            "bidfloorcur": "USD",
            "secure": 1,
            "banner": {"w": 300, "h": 250, "pos": 1, "battr": [13], "format": [{"w": 300, "h": 250}]},
        }
    ],
    "site": {
        "id": "102855",
        "cat": ["IAB3-1"],
        "domain": "www.foobar.com",
        "page": "https://www.foobar.com/1234.html",
        "publisher": {"id": "8953", "name": "foobar.com", "domain": "foobar.com"},
    },
    "device": {
        "ua": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
        "ip": "123.145.167.10",
        "devicetype": 4,
        "os": "iOS",
        "geo": {"country": "USA", "region": "CA", "type": 2},
    },
    "user": {"id": "55816b39711f9b5acf3b90e313ed29e51665623f", "yob": 1985, "gender": "F"},
    "bcat": ["IAB25", "IAB26", "IAB14-1"],
    "badv": ["spammy-ads.example"],
    "regs": {"coppa": 0, "gdpr": 0},
    "source": {"tid": "9f8b5e5c-4b7a-4d4b-8a4e-7f4d3e2c1b0a"},
}


def sample(**changes: Any) -> dict[str, Any]:
    request = copy.deepcopy(SAMPLE)
    request.update(changes)
    return request


def context_of(body: dict[str, Any], reserve: int = RESERVE) -> AuctionContext:
    return to_context(BidRequest.model_validate(body), auction_id="auction-1", at=AT, reserve_price_micros=reserve)


def test_sample_request_maps_to_the_auction_context() -> None:
    assert context_of(SAMPLE) == AuctionContext(
        auction_id="auction-1",
        at=AT,
        user_id="55816b39711f9b5acf3b90e313ed29e51665623f",
        country="United States",
        age=39,  # 2024 - 1985
        gender="F",
        device_type="mobile",  # devicetype 4: phone
        channel="web",
        content_type="display",
        floor_cpm_micros=500_000,  # $0.50 CPM, above the $0.01 reserve
        blocked_categories=frozenset({"Dating Sites"}),  # IAB14-1 (Dating) blocks IAB14; IAB25/26 are none of ours
        blocked_advertisers=frozenset({"spammy-ads.example"}),
    )
    request = BidRequest.model_validate(SAMPLE)
    assert (request.tmax, request.first_price) == (120, False)


def test_app_video_request_with_sparse_user() -> None:
    body = sample(
        imp=[{"id": "v1", "video": {"mimes": ["video/mp4"], "w": 640, "h": 480}}, {"id": "2", "banner": {}}],
        device={"devicetype": 5, "geo": {"country": "zaf"}},
        user={"id": "u-7", "gender": "O"},
        bcat=[],
        badv=[],
        at=1,
    )
    del body["site"]
    body["app"] = {"id": "agltb3B1Yi1pbmNyDAsSA0FwcBiJkfIUDA", "bundle": "com.example.game"}
    context = context_of(body)
    assert (context.channel, context.content_type, context.device_type) == ("app", "video", "tablet")
    assert context.country == "ZAF"  # not in the name table: the code passes through
    assert (context.age, context.gender) == (None, None)  # no yob; "O" is not a gender campaigns target
    assert context.floor_cpm_micros == RESERVE  # no bidfloor: the reserve price
    assert (context.blocked_categories, context.blocked_advertisers) == (frozenset(), frozenset())
    assert BidRequest.model_validate(body).first_price
    # A multi-format imp (banner and video) is display: our creatives are images.
    body["imp"] = [{"id": "m1", "banner": {"w": 300, "h": 250}, "video": {"mimes": ["video/mp4"]}}]
    assert context_of(body).content_type == "display"


def test_floor_rounds_up_to_micros_and_never_below_the_reserve() -> None:
    # 0.0000011 USD = 1.1 micros -> 2: rounding to the nearest micro would undercut the seller.
    assert context_of(sample(imp=[{"id": "1", "banner": {}, "bidfloor": 0.0000011}]), reserve=0).floor_cpm_micros == 2
    assert context_of(sample(imp=[{"id": "1", "banner": {}, "bidfloor": 1}]), reserve=0).floor_cpm_micros == 1_000_000
    assert context_of(SAMPLE, reserve=750_000).floor_cpm_micros == 750_000


def test_user_geo_is_the_fallback_country_and_impossible_ages_are_unstated() -> None:
    body = sample(device={"devicetype": 2}, user={"yob": 2030, "geo": {"country": "GBR"}})
    context = context_of(body)
    assert (context.country, context.device_type, context.age, context.user_id) == (
        "United Kingdom",
        "desktop",
        None,  # born after the request
        None,
    )
    assert context_of(sample(device={"devicetype": 501})).device_type is None  # exchange-specific type


def test_extensions_and_unknown_fields_are_ignored() -> None:
    body = sample(ext={"prebid": {"targeting": {}}}, dooh_like_field=7)
    body["imp"][0]["ext"] = {"gpid": "/1234/home#top", "skadn": {"version": "2.0"}}
    body["imp"][0]["pmp"] = {"private_auction": 0, "deals": []}
    body["device"]["ext"] = {"atts": 3}
    body["device"]["geo"]["ext"] = {"dma": 807}
    body["user"]["ext"] = {"consent": "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"}
    body["site"]["ext"] = {"amp": 0}
    assert context_of(body) == context_of(SAMPLE)


def remove(key: str) -> dict[str, Any]:
    body = sample()
    del body[key]
    return body


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        (sample(imp=[{"id": "1", "banner": {}, "bidfloorcur": "EUR"}]), ("imp", 0, "bidfloorcur"), "only USD"),
        (sample(app={"id": "a1"}), (), "either site or app, not both"),
        (remove("site"), (), "needs a site or an app"),
        (remove("imp"), ("imp",), "required"),
        (sample(imp=[]), ("imp",), "at least 1"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloor": -0.01}]), ("imp", 0, "bidfloor"), "greater than or equal"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloor": 5000}]), ("imp", 0, "bidfloor"), "less than or equal"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloor": "0.5"}]), ("imp", 0, "bidfloor"), "valid number"),
        (sample(imp=[{"id": "1", "native": {"request": "{}"}}]), ("imp", 0), "needs a banner or a video"),
        (sample(imp=[{"banner": {}}]), ("imp", 0, "id"), "required"),
        (sample(at=3), ("at",), "1 (first price) or 2 (second price)"),
        (sample(at="2"), ("at",), "valid integer"),
        (sample(bcat=["IAB19", "gambling"]), ("bcat",), "not codes: ['gambling']"),
        (sample(cattax=2), ("cattax",), "only cattax 1"),
        (sample(device={"devicetype": 9}), ("device", "devicetype"), "device type 1-8"),
        (sample(device={"geo": {"country": "US"}}), ("device", "geo", "country"), "alpha-3"),
        (sample(user={"gender": "female"}), ("user", "gender"), "'M', 'F' or 'O'"),
        (sample(user={"yob": 85}), ("user", "yob"), "greater than or equal to 1900"),
        (sample(id=""), ("id",), "at least 1 character"),
    ],
)
def test_invalid_requests_name_the_field_to_fix(body: dict[str, Any], loc: tuple[object, ...], fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        BidRequest.model_validate(body)
    errors = raised.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    assert fragment in errors[0]["msg"]


def make_campaign(campaign_id: str, **overrides: object) -> ServingCampaign:
    values: dict[str, object] = {
        "campaign_id": campaign_id,
        "advertiser_id": "adv-1",
        "ad_id": f"ad-{campaign_id}",
        "category": "Automotive",
        "pricing_model": PricingModel.CPM,
        "bid_micros": 5_000_000,
        "flight_start": datetime(2024, 1, 1, tzinfo=UTC),
        "flight_end": datetime(2025, 1, 1, tzinfo=UTC),
        "frequency_cap_per_day": 3,
        "status": CampaignStatus.ACTIVE,
        "total_budget_micros": 100_000_000,
        "daily_budget_micros": 10_000_000,
        "spent_micros": 0,
        "spent_today_micros": 0,
    }
    values.update(overrides)
    return ServingCampaign(**values)  # type: ignore[arg-type]


def test_bcat_and_badv_block_campaigns() -> None:
    campaigns = [
        make_campaign("dating", category="Dating Sites"),
        make_campaign("spammy", advertiser_id="spammy-ads.example"),
        make_campaign("cars"),
    ]
    kept, filtered = eligible(context_of(SAMPLE), campaigns, impressions_today={}, reserved_micros={})
    assert [c.campaign_id for c in kept] == ["cars"]
    assert filtered == Counter({"blocked category": 1, "blocked advertiser": 1})


def test_a_tier2_code_blocks_every_category_of_its_tier1_parent() -> None:
    # IAB19-6 is one subcategory of Technology & Computing (IAB19); we only know our ads at tier 1.
    assert blocked_categories(["IAB19-6"]) == {"Consumer Electronics", "Computer Software"}
    assert blocked_categories(["IAB10"]) == {"DIY & Tools", "Garden & Outdoor living", "Kitchen & Home"}
    assert blocked_categories(["IAB18-4"]) == {"Clothing & Shoes", "Health & Beauty", "Jewellery & Watches"}
    assert blocked_categories(["IAB1-1", "IAB24"]) == {"Media (BMVD)", "Musical Instruments", "Other"}
    assert blocked_categories(["IAB25", "IAB26", "IAB190"]) == frozenset()


def test_every_category_of_the_taxonomy_has_iab_codes() -> None:
    assert set(IAB_CATEGORIES) == {*ADS16_CATEGORIES, "Other"}
    assert all(codes and all(code.startswith("IAB") for code in codes) for codes in IAB_CATEGORIES.values())


def test_bid_response_for_a_cpc_winner() -> None:
    # Only the first imp is auctioned, so the bid names it.
    imps = [SAMPLE["imp"][0], {"id": "2", "banner": {"w": 728, "h": 90}}]
    request = BidRequest.model_validate(sample(imp=imps, bcat=[], badv=[]))
    context = to_context(request, auction_id="auction-42", at=AT, reserve_price_micros=RESERVE)
    winner = make_campaign(
        "c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000, advertiser_id="adv-7", category="Grocery"
    )
    runner_up = make_campaign("c-cpm", bid_micros=6_000_001)
    outcome = run_auction(context, [runner_up, winner], [0.5, 0.02], reserve_price_micros=RESERVE)
    response = bid_response(
        request,
        outcome,
        ad_markup_url="https://ads.example/creatives/ad-c-cpc.png?a=1&b=2",
        nurl="https://ads.example/win/auction-42?price=${AUCTION_PRICE}",
    )
    assert response.model_dump() == {
        "id": "80ce30c53c16e6ede735f123ef6e32361bfc7b22",
        "bidid": "auction-42",
        "cur": "USD",
        "seatbid": [
            {
                "seat": "adv-7",
                "bid": [
                    {
                        "id": "auction-42",
                        "impid": "1",
                        # CPC eCPM 500_000 x 0.02 x 1000 = 10_000_000; the price per click is
                        # ceil((6_000_001 + 10_000) / 20) = 300_501 micros, i.e. 300_501 x 20 = 6_010_020 per
                        # thousand impressions = 6.01002 USD CPM.
                        "price": 6.01002,
                        "adid": "ad-c-cpc",
                        "crid": "ad-c-cpc",
                        "cid": "c-cpc",
                        "cat": ["IAB8"],
                        "adomain": ["adv-7"],
                        "nurl": "https://ads.example/win/auction-42?price=${AUCTION_PRICE}",
                        "adm": '<img src="https://ads.example/creatives/ad-c-cpc.png?a=1&amp;b=2" alt="">',
                    }
                ],
            }
        ],
    }


def test_the_markup_links_the_signed_click_url_when_given() -> None:
    request = BidRequest.model_validate(SAMPLE)
    context = to_context(request, auction_id="auction-44", at=AT, reserve_price_micros=RESERVE)
    outcome = run_auction(context, [make_campaign("c-1", bid_micros=6_000_000)], [0.1], reserve_price_micros=RESERVE)
    response = bid_response(
        request, outcome, ad_markup_url="https://x/i?t=a&b", nurl="https://x/i", click_url="https://x/c?t=k1.9.s&z"
    )
    assert (
        response.seatbid[0].bid[0].adm
        == '<a href="https://x/c?t=k1.9.s&amp;z"><img src="https://x/i?t=a&amp;b" alt=""></a>'
    )


def test_no_winner_has_no_bid_response() -> None:
    request = BidRequest.model_validate(SAMPLE)
    context = to_context(request, auction_id="auction-43", at=AT, reserve_price_micros=RESERVE)
    outcome = run_auction(context, [], [], reserve_price_micros=RESERVE)
    with pytest.raises(ValueError, match="204"):
        bid_response(request, outcome, ad_markup_url="https://ads.example/a.png", nurl="https://ads.example/win")
