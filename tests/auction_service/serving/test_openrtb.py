"""The OpenRTB 2.6 bidder's pure parts: request validation, no-bid rules, privacy, which campaigns fit an imp,
deal floors, the mapping to the auction context, and the bid with its markup."""

from __future__ import annotations

import base64
import copy
import dataclasses
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from adstream.events import BannerSize, CampaignStatus, Creative, Deal, PricingModel, VideoCreative
from auction_service.domain import AuctionContext, ServingCampaign
from auction_service.serving import openrtb
from auction_service.serving.auction import eligible, run_auction
from auction_service.serving.bid_filter import request_features
from auction_service.serving.openrtb import (
    IAB_CATEGORIES,
    BidRequest,
    CampaignFit,
    blocked_categories,
    no_bid_reason,
    personal_data_refused,
    screening_features,
    spec_errors,
    tcf_consents,
    to_context,
)
from auction_service.serving.openrtb_bids import bid
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
    request = BidRequest.model_validate(body)
    return to_context(request, request.imp[0], auction_id="auction-1", at=AT, reserve_price_micros=reserve)


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
        request_id="80ce30c53c16e6ede735f123ef6e32361bfc7b22",
        imp_id="1",
        domain="www.foobar.com",
        placement="300x250",
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
    # A multi-format imp (banner and video) is auctioned as a banner.
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
    body["imp"][0]["banner"]["ext"] = {"vcm": 1}
    body["imp"][0]["ext"] = {"gpid": "/1234/home#top", "skadn": {"version": "2.0"}}
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
        (remove("imp"), ("imp",), "required"),
        (sample(imp=[]), ("imp",), "at least 1"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloor": -0.01}]), ("imp", 0, "bidfloor"), "greater than or equal"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloor": "0.5"}]), ("imp", 0, "bidfloor"), "valid number"),
        (sample(imp=[{"id": "1", "banner": {"w": -300, "h": 250}}]), ("imp", 0, "banner", "w"), "greater than or"),
        (sample(imp=[{"id": "1", "banner": {"format": [{"w": 1, "h": -1}]}}]), ("imp", 0, "banner", "format", 0, "h"),
         "greater than or equal"),
        (sample(imp=[{"id": "1", "video": {"w": 640}}]), ("imp", 0, "video", "mimes"), "required"),
        (sample(imp=[{"id": "1", "banner": {}, "pmp": {"deals": [{"bidfloor": 1.0}]}}]),
         ("imp", 0, "pmp", "deals", 0, "id"), "required"),
        (sample(imp=[{"id": "1", "banner": {}, "pmp": {"private_auction": 2}}]),
         ("imp", 0, "pmp", "private_auction"), "0 or 1"),
        (sample(imp=[{"banner": {}}]), ("imp", 0, "id"), "required"),
        (sample(at=0), ("at",), "greater than or equal to 1"),
        (sample(at="2"), ("at",), "valid integer"),
        (sample(bcat=["IAB19", "gambling"]), ("bcat",), "not codes: ['gambling']"),
        (sample(device={"devicetype": 9}), ("device", "devicetype"), "device type 1-8"),
        (sample(device={"w": -1}), ("device", "w"), "greater than or equal"),
        (sample(device={"geo": {"country": "US"}}), ("device", "geo", "country"), "alpha-3"),
        (sample(user={"gender": "female"}), ("user", "gender"), "'M', 'F' or 'O'"),
        (sample(user={"yob": 85}), ("user", "yob"), "greater than or equal to 1000"),
        (sample(regs={"gdpr": 2}), ("regs", "gdpr"), "0 or 1"),
        (sample(id=""), ("id",), "at least 1 character"),
    ],
)  # fmt: skip
def test_invalid_requests_name_the_field_to_fix(body: dict[str, Any], loc: tuple[object, ...], fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        BidRequest.model_validate(body)
    errors = raised.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    assert fragment in errors[0]["msg"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (sample(imp=[{"id": "1", "banner": {}}, {"id": "1", "video": {"mimes": ["video/mp4"]}}]),
         [("imp[1].id", "imp ids are unique within a request: '1' is imp[0].id too")]),
        (sample(app={"bundle": "com.example"}), [("app", "at most one of site, app and dooh: got site and app")]),
        (sample(dooh={"id": "screen-1"}), [("dooh", "at most one of site, app and dooh: got site and dooh")]),
        (sample(imp=[{"id": "1", "ext": {}}]), [("imp[0]", "an imp needs a banner, video, audio or native object")]),
        (sample(imp=[{"id": "1", "video": {"mimes": ["video/mp4"], "minduration": 30, "maxduration": 15}}]),
         [("imp[0].video.maxduration", "maxduration is at least minduration")]),
    ],
)  # fmt: skip
def test_rules_across_fields_are_spec_errors_with_their_path(body: dict[str, Any], expected: list) -> None:
    assert spec_errors(BidRequest.model_validate(body)) == expected


def without_site(**changes: Any) -> dict[str, Any]:
    body = sample(**changes)
    del body["site"]
    return body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (without_site(dooh={"id": "screen-1"}), "DOOH inventory is not bought"),
        (without_site(), "neither site nor app"),
        (sample(cattax=2), "cattax 2"),
        (sample(at=3), "auction type at=3"),
        (sample(at=501), "auction type at=501"),
        (sample(cur=["EUR"]), "USD only"),
        (sample(tmax=5), "tmax 5 ms"),
        (sample(imp=[{"id": "1", "native": {"request": "{}"}}, {"id": "2", "audio": {"mimes": ["audio/mp4"]}}]),
         "no imp we buy"),
        (sample(imp=[{"id": "1", "banner": {}, "bidfloorcur": "EUR"}]), "floors in USD only"),
    ],
)  # fmt: skip
def test_valid_requests_we_do_not_buy_have_a_no_bid_reason(body: dict[str, Any], fragment: str) -> None:
    request = BidRequest.model_validate(body)
    assert spec_errors(request) == []
    reason = no_bid_reason(request, min_tmax_ms=20)
    assert reason is not None and fragment in reason


def test_a_request_we_buy_has_no_no_bid_reason() -> None:
    assert no_bid_reason(BidRequest.model_validate(sample(tmax=20)), min_tmax_ms=20) is None


def tcf_string(purposes: set[int], version: int = 2) -> str:
    """A TCF v2 core segment: version, 146 bits of dates, CMP and list fields (zero here), then 24 purposes."""
    bits = format(version, "06b") + "0" * 146 + "".join("1" if p in purposes else "0" for p in range(1, 25))
    bits += "0" * (-len(bits) % 8 + 16)  # the vendor sections that follow, empty
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_tcf_consent_needs_purposes_1_3_and_4_of_a_version_2_string() -> None:
    assert tcf_consents(tcf_string({1, 2, 3, 4, 7}))
    assert not tcf_consents(tcf_string({1, 3}))
    assert not tcf_consents(tcf_string({1, 3, 4}, version=1))
    assert not tcf_consents("not base64 at all!")
    assert not tcf_consents("")
    assert not tcf_consents(tcf_string({1, 3, 4})[:10])  # too short to hold the purposes


@pytest.mark.parametrize(
    ("regs", "consent", "refused"),
    [
        ({"coppa": 1}, None, "coppa"),
        ({"gdpr": 1}, None, "gdpr"),
        ({"gdpr": 1}, tcf_string({1, 3}), "gdpr"),
        ({"gdpr": 1}, tcf_string({1, 3, 4}), None),
        ({"gdpr": 0}, None, None),
        ({"us_privacy": "1YYN"}, None, "us_privacy"),
        ({"us_privacy": "1YNN"}, None, None),
        ({"us_privacy": "1---"}, None, None),
        ({"gpp": "DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA", "gpp_sid": [2]}, None, "gpp"),
        ({"gpp": "DBAA", "gpp_sid": [-1]}, None, None),
    ],
)
def test_privacy_signals_make_the_auction_contextual(regs: dict, consent: str | None, refused: str | None) -> None:
    user = {"id": "u-1", "yob": 1990, "gender": "F"} | ({"consent": consent} if consent else {})
    body = sample(regs=regs, user=user)
    reason = personal_data_refused(BidRequest.model_validate(body))
    assert (reason is None) == (refused is None) and (refused is None or refused in reason)
    context = context_of(body)
    personal = (context.user_id, context.age, context.gender)
    assert personal == ((None, None, None) if refused else ("u-1", 34, "F"))
    assert (context.country, context.device_type) == ("United States", "mobile")  # contextual signals stay


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


VIDEO_15S = VideoCreative(url="https://cdn.shoes.example/spring.mp4", mime="video/mp4", duration_s=15)


def campaigns_for_fit() -> tuple[ServingCampaign, ...]:
    return (
        make_campaign("any-size"),  # the standard IAB sizes
        make_campaign("leaderboard", creative=Creative(banner_sizes=[BannerSize(w=728, h=90)])),
        make_campaign("video", creative=Creative(video=VIDEO_15S)),
        make_campaign("deal", advertiser_id="adv-deal", deals=(Deal(deal_id="D-1", floor_cpm_micros=3_000_000),)),
        make_campaign("deal-seat", advertiser_id="adv-s", deals=(Deal(deal_id="D-1", seats=["adv-other"]),)),
    )


def imp_terms(imp: dict[str, Any], max_floor: int | None = None, *, first_price_allowed: bool = True):
    request = BidRequest.model_validate(sample(imp=[imp]))
    return CampaignFit().terms(campaigns_for_fit(), request.imp[0], max_floor_cpm_micros=max_floor,
                               first_price_allowed=first_price_allowed)  # fmt: skip


def test_banner_sizes_pick_the_campaigns_made_for_them() -> None:
    assert imp_terms({"id": "1", "banner": {"w": 728, "h": 90}}).eligible == {
        "any-size", "leaderboard", "video", "deal", "deal-seat"
    }  # fmt: skip
    assert imp_terms({"id": "1", "banner": {"format": [{"w": 728, "h": 90}]}}).eligible >= {"leaderboard"}
    assert "leaderboard" not in imp_terms({"id": "1", "banner": {"w": 300, "h": 250}}).eligible
    assert imp_terms({"id": "1", "banner": {"w": 301, "h": 251}}).eligible == frozenset()
    assert imp_terms({"id": "1", "banner": {}}).eligible is None  # no size: any


def test_a_new_snapshot_is_judged_on_its_own_creatives_while_the_fits_it_shares_are_kept() -> None:
    fit, slot = CampaignFit(), BidRequest.model_validate(sample(imp=[{"id": "1", "banner": {"w": 728, "h": 90}}]))
    video = BidRequest.model_validate(sample(imp=[{"id": "1", "video": {"mimes": ["video/mp4"]}}]))
    campaigns = campaigns_for_fit()
    assert "leaderboard" in fit.terms(campaigns, slot.imp[0], max_floor_cpm_micros=None).eligible
    # A charge: the same creatives in a new snapshot, and the same answer.
    charged = (*campaigns[:1], dataclasses.replace(campaigns[1], spent_micros=5), *campaigns[2:])
    assert "leaderboard" in fit.terms(charged, slot.imp[0], max_floor_cpm_micros=None).eligible
    # The advertiser changes the creative to a skyscraper, and adds a 30 s WebM video elsewhere.
    skyscraper = Creative(banner_sizes=[BannerSize(w=160, h=600)])
    webm = VideoCreative(url="https://cdn.example.com/ad.webm", mime="video/webm", duration_s=30)
    changed = (*campaigns[:1], dataclasses.replace(campaigns[1], creative=skyscraper), campaigns[2],
               dataclasses.replace(campaigns[3], creative=Creative(video=webm)), campaigns[4])  # fmt: skip
    assert "leaderboard" not in fit.terms(changed, slot.imp[0], max_floor_cpm_micros=None).eligible
    assert fit.terms(changed, video.imp[0], max_floor_cpm_micros=None).eligible == {"video"}
    webm_slot = BidRequest.model_validate(sample(imp=[{"id": "1", "video": {"mimes": ["video/webm"]}}]))
    assert fit.terms(changed, webm_slot.imp[0], max_floor_cpm_micros=None).eligible == {"deal"}
    # Gone: campaigns no longer in the snapshot fit nothing (the others keep the standard sizes too).
    assert fit.terms(changed[2:], slot.imp[0], max_floor_cpm_micros=None).eligible == {"video", "deal", "deal-seat"}


@pytest.mark.parametrize(
    ("video", "fits"),
    [
        ({"mimes": ["video/mp4"]}, True),
        ({"mimes": ["video/webm"]}, False),
        ({"mimes": ["video/mp4"], "maxduration": 10}, False),
        ({"mimes": ["video/mp4"], "minduration": 20}, False),
        ({"mimes": ["video/mp4"], "minduration": 5, "maxduration": 30}, True),
        ({"mimes": ["video/mp4"], "protocols": [2, 3]}, False),  # no VAST 4.0
        ({"mimes": ["video/mp4"], "protocols": [3, 7]}, True),
    ],
)
def test_a_video_imp_is_filled_only_by_a_fitting_video_creative(video: dict, fits: bool) -> None:
    assert imp_terms({"id": "1", "video": video}).eligible == (frozenset({"video"}) if fits else frozenset())


def test_deals_set_floors_and_a_private_auction_admits_only_them() -> None:
    deal = {"id": "D-1", "bidfloor": 2.5}
    open_market = imp_terms({"id": "1", "banner": {}, "pmp": {"private_auction": 0, "deals": [deal]}})
    # The campaign's own deal floor ($3) is above the request's ($2.50); deal-seat's seats exclude its seat.
    assert (open_market.eligible, dict(open_market.deals)) == (None, {"deal": ("D-1", 3_000_000)})
    private = imp_terms({"id": "1", "banner": {}, "pmp": {"private_auction": 1, "deals": [deal]}})
    assert (private.eligible, dict(private.deals)) == (frozenset({"deal"}), {"deal": ("D-1", 3_000_000)})
    walled = imp_terms({"id": "1", "banner": {}, "pmp": {"private_auction": 1, "deals": [deal | {"wseat": ["x"]}]}})
    assert (walled.eligible, dict(walled.deals)) == (frozenset(), {})
    unknown = imp_terms({"id": "1", "banner": {}, "pmp": {"private_auction": 1, "deals": [{"id": "D-9"}]}})
    assert unknown.eligible == frozenset()
    # The caller's maximum floor caps the request's deal floor, not the advertiser's own.
    capped = imp_terms({"id": "1", "banner": {}, "pmp": {"deals": [{"id": "D-1", "bidfloor": 9.0}]}}, max_floor=1)
    assert dict(capped.deals) == {"deal": ("D-1", 3_000_000)}


def test_a_deal_bid_clears_at_its_deal_floor_above_the_runner_up() -> None:
    deal = make_campaign("deal", bid_micros=8_000_000)
    rival = make_campaign("rival", bid_micros=2_000_000)
    context = AuctionContext(auction_id="a-1", at=AT, floor_cpm_micros=100_000, deals={"deal": ("D-1", 5_000_000)})
    outcome = run_auction(context, [deal, rival], [0.1, 0.1], reserve_price_micros=RESERVE)
    # GSP would charge the runner-up's $2.00 + 1 cent; the deal's $5.00 floor binds instead.
    assert (outcome.winner.campaign_id, outcome.clearing_price_cpm_micros) == ("deal", 5_000_000)
    below = AuctionContext(auction_id="a-2", at=AT, deals={"deal": ("D-1", 9_000_000)})
    outcome = run_auction(below, [deal, rival], [0.1, 0.1], reserve_price_micros=RESERVE)
    assert outcome.winner.campaign_id == "rival"  # the deal bid does not clear its floor; the open market does


def imp_with_deals(*deals: dict[str, Any], private_auction: int = 0) -> dict[str, Any]:
    return {"id": "1", "banner": {}, "pmp": {"private_auction": private_auction, "deals": list(deals)}}


def test_a_deals_auction_type_is_carried_and_a_first_price_deal_needs_a_caller_allowed_it() -> None:
    first, second, fixed = ({"id": "D-1", "at": at} for at in (1, 2, 3))
    by_type = lambda terms: (terms.first_price, terms.second_price, terms.fixed_price)  # noqa: E731
    assert by_type(imp_terms(imp_with_deals(first))) == ({"deal"}, set(), set())
    assert by_type(imp_terms(imp_with_deals(second))) == (set(), {"deal"}, set())
    assert by_type(imp_terms(imp_with_deals(fixed))) == (set(), set(), {"deal"})
    plain = imp_terms(imp_with_deals({"id": "D-1"}))  # no at: the request's type
    assert (by_type(plain), set(plain.deals)) == ((set(), set(), set()), {"deal"})
    # Not allowed first price: no bid through the deal, so a private auction has no campaign at all ...
    refused = imp_terms(imp_with_deals(first, private_auction=1), first_price_allowed=False)
    assert (refused.eligible, dict(refused.deals), refused.first_price) == (frozenset(), {}, frozenset())
    # ... and in an open auction the campaign bids on the open market, at the request's type.
    open_market = imp_terms(imp_with_deals(first), first_price_allowed=False)
    assert (open_market.eligible, dict(open_market.deals)) == (None, {})
    assert imp_terms(imp_with_deals({"id": "D-1", "at": 4}, private_auction=1)).eligible == frozenset()  # unknown type


def test_the_winners_deal_sets_its_price_whatever_the_requests_auction_type() -> None:
    deal, rival = make_campaign("deal", bid_micros=8_000_000), make_campaign("rival", bid_micros=3_000_000)
    deals = {"deal": ("D-1", 2_000_000)}

    def price(first_price: bool, **deal_types: frozenset[str]) -> tuple[str, int]:
        context = AuctionContext(auction_id="a-1", at=AT, floor_cpm_micros=100_000, deals=deals, **deal_types)
        outcome = run_auction(context, [deal, rival], [0.1, 0.1], reserve_price_micros=RESERVE, first_price=first_price)
        return outcome.winner.campaign_id, outcome.clearing_price_cpm_micros

    first, second = {"first_price_campaigns": frozenset({"deal"})}, {"second_price_campaigns": frozenset({"deal"})}
    assert price(False) == ("deal", 3_010_000)  # the request's second price: the runner-up + 1 cent
    assert price(False, **first) == ("deal", 8_000_000)  # a first-price deal in a second-price request: the bid
    assert price(True) == ("deal", 8_000_000)
    assert price(True, **second) == ("deal", 3_010_000)  # a second-price deal in a first-price request
    # The open market keeps the request's type when the first-price deal's campaign loses to it.
    context = AuctionContext(auction_id="a-2", at=AT, floor_cpm_micros=100_000, deals=deals, **first)
    outcome = run_auction(context, [make_campaign("deal", bid_micros=2_500_000), rival], [0.1, 0.1],
                          reserve_price_micros=RESERVE)  # fmt: skip
    assert (outcome.winner.campaign_id, outcome.clearing_price_cpm_micros) == ("rival", 2_510_000)


def test_to_context_carries_the_deals_auction_types() -> None:
    request = BidRequest.model_validate(sample(imp=[imp_with_deals({"id": "D-1", "at": 1})]))
    terms = CampaignFit().terms(campaigns_for_fit(), request.imp[0], max_floor_cpm_micros=None)
    context = to_context(request, request.imp[0], auction_id="a-1", at=AT, reserve_price_micros=RESERVE, terms=terms)
    assert (context.first_price_campaigns, context.second_price_campaigns) == (frozenset({"deal"}), frozenset())


def test_one_campaign_fills_one_imp_of_a_request() -> None:
    campaigns = [make_campaign("a"), make_campaign("b")]
    context = AuctionContext(auction_id="a-1", at=AT, excluded_campaigns=frozenset({"a"}))
    kept, filtered = eligible(context, campaigns, impressions_today={}, reserved_micros={})
    assert ([c.campaign_id for c in kept], filtered) == (["b"], Counter({"filled another imp": 1}))
    context = AuctionContext(auction_id="a-2", at=AT, eligible_campaigns=frozenset({"a"}))
    kept, filtered = eligible(context, campaigns, impressions_today={}, reserved_micros={})
    assert ([c.campaign_id for c in kept], filtered) == (["a"], Counter({"creative or deal": 1}))


def test_badv_blocks_the_advertisers_domain() -> None:
    campaigns = [make_campaign("shoes", creative=Creative(adomain="shoes.example")), make_campaign("cars")]
    context = context_of(sample(badv=["shoes.example"]))
    kept, filtered = eligible(context, campaigns, impressions_today={}, reserved_micros={})
    assert [c.campaign_id for c in kept] == ["cars"] and filtered["blocked advertiser"] == 1


URLS = {
    kind: f"https://bid.example/v1/events/track/a-9/{kind}?t=tok-{kind}&x=1"
    for kind in ("impression", "click", "conversion", "video_start", "video_complete", "win")
} | {"billing": "https://bid.example/v1/events/track/a-9/impression?notice=billing&t=tok-billing"}


def test_a_banner_bid_carries_its_creative_and_notices() -> None:
    winner = make_campaign(
        "c-1", category="Grocery", advertiser_id="adv-7",
        creative=Creative(adomain="grocer.example", landing_url="https://grocer.example/deals"),
    )  # fmt: skip
    one = bid(
        auction_id="a-9", imp_id="1", campaign=winner, price_cpm_micros=6_010_020, urls=URLS,
        image_url="https://bid.example/v1/creatives/ad-c-1/image", title='Fresh "bread" & <jam>', size=(300, 250),
        video=False, deal_id=None,
    )  # fmt: skip
    dumped = one.model_dump(exclude_none=True)
    assert {key: dumped[key] for key in ("price", "crid", "cid", "cat", "cattax", "adomain", "mtype", "w", "h")} == {
        "price": 6.01002, "crid": "ad-c-1", "cid": "c-1", "cat": ["IAB8"], "cattax": 1,
        "adomain": ["grocer.example"], "mtype": 1, "w": 300, "h": 250,
    }  # fmt: skip
    assert "dealid" not in dumped and "dur" not in dumped
    assert dumped["nurl"] == "https://bid.example/v1/events/track/a-9/win?t=tok-win&x=1&price=${AUCTION_PRICE}"
    assert dumped["burl"] == URLS["billing"]  # the exchange's own notice, not the device's impression URL
    adm = dumped["adm"]
    assert 'href="https://bid.example/v1/events/track/a-9/click?t=tok-click&amp;x=1"' in adm
    assert 'src="https://bid.example/v1/creatives/ad-c-1/image"' in adm
    assert "Fresh &quot;bread&quot; &amp; &lt;jam&gt;" in adm and "<jam>" not in adm
    assert "impression" not in adm and "tok-billing" not in adm  # the billable impression is burl's


def test_a_video_bid_is_vast_4_inline() -> None:
    winner = make_campaign("v-1", creative=Creative(video=VIDEO_15S))
    one = bid(
        auction_id="a-9", imp_id="v", campaign=winner, price_cpm_micros=2_000_000, urls=URLS,
        image_url="unused", title="Spring <sale>", size=None, video=True, deal_id="D-1",
    )  # fmt: skip
    assert (one.mtype, one.dur, one.dealid, one.w, one.h) == (2, 15, "D-1", 1280, 720)
    vast = ET.fromstring(one.adm)
    assert vast.tag == "VAST" and vast.get("version") == "4.0"
    inline = vast.find("Ad/InLine")
    assert inline.findtext("AdTitle") == "Spring <sale>"
    assert inline.findtext("Impression") == URLS["impression"]
    linear = inline.find("Creatives/Creative/Linear")
    assert linear.findtext("Duration") == "00:00:15"
    assert {t.get("event"): t.text for t in linear.findall("TrackingEvents/Tracking")} == {
        "start": URLS["video_start"], "complete": URLS["video_complete"]
    }  # fmt: skip
    assert linear.findtext("VideoClicks/ClickThrough") == URLS["click"]
    media = linear.find("MediaFiles/MediaFile")
    assert (media.get("type"), media.text) == ("video/mp4", "https://cdn.shoes.example/spring.mp4")


@pytest.mark.parametrize("body", [SAMPLE, sample(regs={"coppa": 1}), sample(device={"devicetype": 3})])
def test_the_filters_features_from_the_request_equal_those_of_the_context(body: dict[str, Any]) -> None:
    request = BidRequest.model_validate(body)
    context = to_context(request, request.imp[0], auction_id="a", at=AT, reserve_price_micros=RESERVE,
                         publisher_id="pub-1")  # fmt: skip
    from_request = screening_features(request, request.imp[0], at=AT, publisher_id="pub-1")
    assert from_request == request_features(context, domain=context.domain, placement=context.placement)
    assert (from_request.domain, from_request.placement, from_request.publisher_id) == (
        "www.foobar.com", "300x250", "pub-1"
    )  # fmt: skip
    assert from_request.country == ("United States" if "geo" in body["device"] else None)


def test_a_flexible_format_takes_its_aspect_ratio_exactly_from_its_minimum_width():
    banner = openrtb.Banner(format=[openrtb.Format(wratio=16, hratio=9, wmin=320), openrtb.Format(w=300, h=250)])
    assert banner.ratios() == ((16, 9, 320),) and banner.sizes() == ((300, 250),) and not banner.takes_any()
    assert banner.fits(640, 360) and banner.fits(320, 180) and banner.fits(300, 250)
    assert not banner.fits(256, 144)  # 16:9, but narrower than wmin
    assert not banner.fits(640, 361)  # near 16:9 is not 16:9
    assert not banner.fits(728, 90)
    assert openrtb.Banner().takes_any() and openrtb.Banner(format=[openrtb.Format(wratio=16)]).takes_any()
