"""The user simulator: its command line, its handling of a failing service, and a run against the real one."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import ipaddress
import json
import math
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pandas as pd
import pytest
from deltalake import write_deltalake
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from typer.testing import CliRunner

from adstream.contracts import Table, Topic
from adstream.events import STANDARD_BANNER_SIZES, EventType, FeedbackEvent
from adstream.settings import Settings
from auction_service.api.app import create_app
from auction_service.campaign_store import callers, store
from auction_service.campaign_store.callers import CallerKind
from auction_service.campaign_store.instructions import seed_instructions
from auction_service.serving import openrtb
from auction_service.serving.auction import ecpm_micros
from auction_service.serving.openrtb import micros_rounded_up
from simulator import bots, cli, traffic
from simulator.ground_truth import UserProfile, fit
from simulator.ivt_scoring import TRUTH_COLUMNS, LandedEvent, TruthEvent, report_lines, score, target_misses
from simulator.traffic import (
    Placement,
    SimulatedUser,
    SimulationStats,
    Unfillable,
    auction_request,
    choose_placement,
    draw_unfillable,
    openrtb_request,
    parse_duration,
    served_ad,
    simulate,
)
from tests.auction_service.conftest import instruction, live_server, running_service, topic_records
from tests.conftest import free_port, make_settings

# The lake the live run reads. Advertising has no signal (each profile clicked once and not once),
# so every user's click propensity is exactly 1; every ADS-16 user rates Automotive 4, Kitchen & Home
# 3 and Grocery 2, i.e. interest 3 against a mean of 2. So an Automotive ad is clicked with
# probability BASE_CTR * 1.5, whoever sees it.
BASE_CTR = 0.1
AUTOMOTIVE_CTR = BASE_CTR * 1.5
CAMPAIGNS = ("sim-cpc", "sim-cpm", "sim-cpa")


def advertising_without_signal(profiles: int = 40, seed: int = 1) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = [
        {
            "daily_time_spent_on_site": rng.uniform(32, 92),
            "age": rng.randint(19, 61),
            "area_income": rng.uniform(14_000, 80_000),
            "daily_internet_usage": rng.uniform(104, 270),
            "male": rng.random() < 0.5,
        }
        for _ in range(profiles)
    ]
    return pd.DataFrame([{**row, "clicked_on_ad": clicked} for row in rows for clicked in (True, False)])


def ads16_tables(users: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings = {"Automotive": 4, "Kitchen & Home": 3, "Grocery": 2}
    rated = pd.DataFrame(
        [
            {"user_id": f"U{u:04d}", "category_name": category, "position": position, "rating": rating}
            for u in range(users)
            for category, rating in ratings.items()
            for position in range(15)
        ]
    )
    people = pd.DataFrame(
        [{"user_id": f"U{u:04d}", "gender": "FM"[u % 2], "age": 20 + 6 * u} for u in range(users)]
    ).astype({"age": "int64"})
    return rated, people


def silver_users(count: int = 60) -> pd.DataFrame:
    """Advertising-like users with every attribute and ADS-16-like ones without the numeric ones."""
    countries = ("Norway", "France", "United States", "Atlantis")  # Atlantis has no ISO code
    rows = []
    for i in range(count):
        full = i % 3 != 0
        rows.append(
            {
                "user_id": f"adv-{i:06d}" if full else f"ads16-U{i:04d}",
                "source": "advertising" if full else "ads16",
                "age": 18 + i % 50,
                "gender": "FM"[i % 2],
                "income_band": ("low", "high")[i % 2],
                "country": countries[i % len(countries)],
                "daily_time_spent_on_site": 40.0 + i if full else None,
                "daily_internet_usage": 120.0 + 2 * i if full else None,
                "area_income": 20_000.0 + 900 * i if full else None,
            }
        )
    return pd.DataFrame(rows).astype({"age": "int32"})


def write_lake(settings: Settings) -> None:
    ratings, people = ads16_tables()
    for table, frame in (
        (Table.BRONZE_ADVERTISING, advertising_without_signal()),
        (Table.BRONZE_ADS16_RATINGS, ratings),
        (Table.BRONZE_ADS16_USERS, people),
        (Table.SILVER_USERS, silver_users()),
    ):
        uri, _ = settings.delta_rs_location(table)
        write_deltalake(uri, frame, mode="overwrite")


def population(count: int = 10) -> list[SimulatedUser]:
    return [
        SimulatedUser(UserProfile(f"u{i}", age=30 + i, gender="FM"[i % 2], country="Norway"), "mobile")
        for i in range(count)
    ]


def truth():
    return fit(advertising_without_signal(), *ads16_tables(), base_ctr=BASE_CTR)


# --- the command line ---


def wait_admitted(url: str, api_key: str, limit_s: float = 30) -> None:
    """Until the service knows a key just made (it reloads its keys every few seconds): an empty body is then
    refused as a bad request (400), not as an unknown caller (401)."""
    deadline = time.monotonic() + limit_s
    while (status := httpx.post(f"{url}/openrtb2/auction", json={}, headers={"X-Api-Key": api_key}).status_code) == 401:
        assert time.monotonic() < deadline, "the service never admitted the key"
        time.sleep(0.5)
    assert status == 400, status


def simulate_command(monkeypatch, settings: Settings, argv: list[str]):
    """`adstream simulate ARGV` with ``settings``."""
    monkeypatch.setattr(traffic, "get_settings", lambda: settings)
    return CliRunner().invoke(cli.app, ["simulate", *argv])


def test_durations_read_seconds_minutes_and_hours():
    assert [parse_duration(text) for text in ("90", "90s", "5m", "1h", "1.5m")] == [90, 90, 300, 3600, 90]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--duration", "abc"], "'--duration': Value error, 'abc' is not a duration above 0: use e.g. 90s, 5m or 1h"),
        (["--duration", "0s"], "'--duration': Value error, '0s' is not a duration above 0"),
        (["--rate", "0"], "--rate must be a number of requests per second above 0"),
        (["--users", "0"], "--users must be at least 1"),
        (["--concurrency", "0"], "--concurrency must be between 1 and"),
        (["--openrtb-share", "1.5"], "--openrtb-share must be between 0 and 1"),
        (["--bot-share", "-0.1"], "--bot-share must be between 0 and 1"),
        (["--rate", "fast"], "Invalid value for '--rate': Input should be a valid number"),
        (["--traffic-curve", "hourly"], "'--traffic-curve': Value error, 'hourly' is not one of 'flat', 'diurnal'"),
        (["--day-length", "0s"], "'--day-length': Value error, '0s' is not a duration above 0"),
    ],
)
def test_bad_arguments_are_a_clear_error(tmp_path, monkeypatch, argv, message):
    result = simulate_command(monkeypatch, make_settings(tmp_path), argv)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_lake_without_users_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    result = simulate_command(monkeypatch, make_settings(tmp_path), ["--duration", "1s"])
    assert result.exit_code == 1
    err = result.stderr
    assert "silver/users does not exist" in err and "adstream ingest all" in err


@pytest.mark.parametrize(
    ("argv", "curve", "day_length_s"),
    [
        ([], "flat", 240),  # the day PACING_DAY_LENGTH_S
        (["--traffic-curve", "diurnal"], "diurnal", 240),
        (["--traffic-curve", "diurnal", "--day-length", "2.4"], "diurnal", 2.4),
    ],
)
def test_the_summary_states_the_traffic_curve_and_counts_diurnal_visits_by_hour(
    tmp_path, monkeypatch, argv, curve, day_length_s
):
    settings = make_settings(tmp_path, pacing_day_length_s=240)
    write_lake(settings)
    summary_file = tmp_path / "summary.json"
    unreachable = f"http://127.0.0.1:{free_port()}"
    run = ["--base-url", unreachable, "--duration", "0.3s", "--rate", "40", "--summary-file", str(summary_file)]
    result = simulate_command(monkeypatch, settings, [*run, *argv])
    assert result.exit_code == 1  # nothing answered
    summary = json.loads(summary_file.read_text())
    assert (summary["run"]["traffic_curve"], summary["run"]["day_length_s"]) == (curve, day_length_s)
    if curve == "flat":
        assert summary["visits_by_slot"] is None
    else:  # every visit counted once, in the hour of the simulated day it was due in
        assert len(summary["visits_by_slot"]) == 24 and sum(summary["visits_by_slot"]) == summary["visits"] > 0
    if day_length_s == 2.4:  # 0.3 s is three hours of this day: visits in at most four of them
        assert 1 <= sum(visits > 0 for visits in summary["visits_by_slot"]) <= 4


def test_requests_state_what_is_known_of_the_user():
    known = UserProfile("adv-000007", age=41, gender="F", country="Norway")
    unknown = UserProfile("ads16-U0003", age=None, gender="unknown", country="Atlantis")
    video_app = Placement("tablet", "app", "video", openrtb=True)
    assert auction_request(known, video_app) == {
        "user_id": "adv-000007",
        "device_type": "tablet",
        "channel": "app",
        "content_type": "video",
        "age": 41,
        "gender": "F",
        "country": "Norway",
    }
    assert set(auction_request(unknown, video_app)) == {"user_id", "device_type", "channel", "content_type", "country"}
    bid_request = openrtb_request(known, video_app, "req-1", year=2026)
    assert bid_request == {
        "id": "req-1",
        "imp": [
            {
                "id": "1",
                "video": {
                    "mimes": ["video/mp4"],
                    "minduration": 5,
                    "maxduration": 30,
                    "protocols": [2, 3, 5, 6, 7, 8],
                    "w": 1920,
                    "h": 1080,
                },
            }
        ],
        "app": {"bundle": "com.example.news"},
        "device": {"devicetype": 5, "geo": {"country": "NOR"}},
        "user": {"id": "adv-000007", "yob": 1985, "gender": "F"},
    }
    web = openrtb_request(unknown, Placement("desktop", "web", "display", openrtb=True), "req-2", year=2026)
    assert web["site"] == {"domain": "news.example"}
    assert web["imp"] == [
        {"id": "1", "banner": {"w": 728, "h": 90, "format": [{"w": 728, "h": 90}, {"w": 300, "h": 250}]}}
    ]
    assert web["user"] == {"id": "ads16-U0003"} and "geo" not in web["device"]


def test_an_openrtb_bid_is_placed_in_its_category():
    known: dict[str, str] = {}
    served_ad({"auction_id": "a1", "campaign_id": "c1", "category": "Jewellery & Watches", "pctr": 0.2}, False, known)
    bid = {"bidid": "a2", "seatbid": [{"bid": [{"id": "a2", "cid": "c1", "cat": ["IAB18"]}]}]}
    assert served_ad(bid, True, known).category == "Jewellery & Watches"  # learnt from an earlier answer
    unseen = {"bidid": "a3", "seatbid": [{"bid": [{"id": "a3", "cid": "c9", "cat": ["IAB2"]}]}]}
    assert served_ad(unseen, True, known).category == "Automotive"  # the only category with IAB2
    shared = {"bidid": "a4", "seatbid": [{"bid": [{"id": "a4", "cid": "c8", "cat": ["IAB18"]}]}]}
    assert served_ad(shared, True, known).category is None  # three categories share IAB18: neutral affinity


# --- unfillable requests (--unfillable-share) ---


def seeded_creatives() -> list:
    """The campaigns `make run` seeds: their creatives and bids."""
    ads = [{"ad_id": f"ad-{i}", "category": category} for i, category in enumerate(("Automotive", "Books", "Travel"))]
    return [i.campaign for i in seed_instructions(ads, 300, seed=4, now=datetime(2026, 12, 1, tzinfo=UTC))]


def unfillable_request(kind: Unfillable, device: str = "mobile", channel: str = "web") -> dict:
    content = "video" if device == "ctv" else "display"
    placement = Placement(device, channel, content, openrtb=True, unfillable=kind)
    return openrtb_request(UserProfile("u1", age=30, country="Norway"), placement, "req-u", year=2026)


@pytest.mark.parametrize("device", ["mobile", "desktop", "tablet", "ctv"])
def test_an_unfillable_slot_asks_only_for_sizes_no_seeded_creative_is_made_in(device):
    body = unfillable_request(Unfillable.SIZE, device)
    request = openrtb.BidRequest.model_validate(body)
    assert openrtb.spec_errors(request) == [] and openrtb.no_bid_reason(request, min_tmax_ms=20) is None
    (imp,) = request.imp
    assert imp.media == "banner" and imp.banner.sizes()  # a banner with sizes, none of them ours
    made_in = {(size.w, size.h) for campaign in seeded_creatives() for size in campaign.creative.banner_sizes}
    assert made_in == set(STANDARD_BANNER_SIZES) and not set(imp.banner.sizes()) & made_in
    assert body["site"] == {"domain": traffic.SITE_DOMAIN}  # the usual site: the slot alone is the reason


def test_an_unfillable_video_asks_for_a_mime_type_no_seeded_campaign_has():
    body = unfillable_request(Unfillable.VIDEO_MIME, "ctv", "app")
    request = openrtb.BidRequest.model_validate(body)
    (imp,) = request.imp
    assert openrtb.no_bid_reason(request, min_tmax_ms=20) is None and imp.media == "video"
    videos = [campaign for campaign in seeded_creatives() if campaign.creative.video is not None]
    assert videos and not {campaign.creative.video.mime for campaign in videos} & set(imp.video.mimes)
    # Everything else about it a seeded video would take: only the MIME type keeps them out.
    fitting_mime = imp.video.model_copy(update={"mimes": ["video/mp4"]})
    assert any(openrtb.video_fits(campaign, fitting_mime) for campaign in videos)
    assert body["app"] == {"bundle": traffic.UNFILLABLE_INVENTORY[Unfillable.VIDEO_MIME][1]}


def test_a_dooh_screen_is_answered_no_bid_before_any_auction():
    body = unfillable_request(Unfillable.DOOH)
    request = openrtb.BidRequest.model_validate(body)
    assert openrtb.spec_errors(request) == []
    assert "site" not in body and "app" not in body and "user" not in body
    assert "DOOH" in openrtb.no_bid_reason(request, min_tmax_ms=20)


def test_an_unfillable_floor_is_above_what_any_seeded_campaign_can_bid():
    body = unfillable_request(Unfillable.FLOOR, "desktop")
    request = openrtb.BidRequest.model_validate(body)
    assert openrtb.no_bid_reason(request, min_tmax_ms=20) is None
    # A CPC or CPA bid at a pCTR of 1 is the most any seeded campaign can offer per thousand impressions.
    highest = max(ecpm_micros(c.pricing_model, c.bid_micros, 1.0) for c in seeded_creatives())
    assert micros_rounded_up(request.imp[0].bidfloor) > highest
    assert body["site"] == {"domain": traffic.UNFILLABLE_INVENTORY[Unfillable.FLOOR][0]}
    assert body["imp"][0]["banner"] == traffic.OPENRTB_BANNERS["desktop"]  # an ordinary slot, at a price


def test_the_unfillable_share_of_openrtb_visits_is_drawn_apart_from_the_rest_of_the_visit():
    user = population(1)[0]
    draws = [(random.Random(f"7:{n}"), random.Random(f"7:{n}:unfillable")) for n in range(4_000)]
    placements = [choose_placement(user, rng, 0.5, draw_unfillable(apart, 0.6)) for rng, apart in draws]
    openrtb_visits = [p for p in placements if p.openrtb]
    kinds = Counter(p.unfillable for p in openrtb_visits if p.unfillable is not None)
    assert abs(sum(kinds.values()) / len(openrtb_visits) - 0.6) < 0.03
    assert set(kinds) == set(Unfillable) and min(kinds.values()) > 0.8 * max(kinds.values())  # evenly
    assert all(p.unfillable is None for p in placements if not p.openrtb)  # /v1/auction visits stay as they were
    ordinary = [choose_placement(user, random.Random(f"7:{n}"), 0.5) for n in range(4_000)]
    assert [(p.device_type, p.channel, p.content_type, p.openrtb) for p in placements] == [
        (p.device_type, p.channel, p.content_type, p.openrtb) for p in ordinary
    ]
    assert draw_unfillable(random.Random(1), 0.0) is None


def test_unfillable_visits_count_in_the_auctions_and_apart_with_their_no_bids():
    seen = Counter[str]()

    async def answer(path: str, body: dict) -> Response:
        if path == "/openrtb2/auction":
            seen[kind_of(body)] += 1
            if kind_of(body) == "fillable":
                bid = {"id": "a", "impid": "1", "price": 1.5, "cid": "c"}  # no event URLs: no events follow
                return JSONResponse({"id": body["id"], "seatbid": [{"bid": [bid]}]})
        return Response(status_code=204)

    with live_server(fake_service(answer)) as url:
        stats, elapsed = asyncio.run(
            simulate(
                url, population(), truth(), duration_s=1.0, rate=200, concurrency=8, seed=3, openrtb_share=0.5,
                progress_every_s=60, out=io.StringIO(), unfillable_share=0.6,
            )
        )  # fmt: skip
    summary = stats.summary(elapsed_s=elapsed, run={}, truth=truth())
    unfillable = sum(count for kind, count in seen.items() if kind != "fillable")
    assert unfillable > 0 and summary["unfillable_requests"] == unfillable == summary["unfillable_no_bid"]
    assert summary["unfillable_by_kind"] == {
        kind: {"requests": seen[kind], "no_bid": seen[kind]} for kind in sorted(Unfillable) if seen[kind]
    }
    assert summary["openrtb_auctions"] == sum(seen.values()) and stats.filled == seen["fillable"]


def kind_of(body: dict) -> str:
    """What makes a BidRequest unfillable, read off the request alone."""
    (imp,) = body["imp"]
    if "dooh" in body:
        return Unfillable.DOOH
    if imp.get("bidfloor", 0) > 100:
        return Unfillable.FLOOR
    if "video" in imp:
        return Unfillable.VIDEO_MIME if "video/mp4" not in imp["video"]["mimes"] else "fillable"
    sizes = [(f["w"], f["h"]) for f in imp["banner"].get("format", [])] + [(imp["banner"]["w"], imp["banner"]["h"])]
    return Unfillable.SIZE if not set(sizes) & set(STANDARD_BANNER_SIZES) else "fillable"


# --- a failing service (a real HTTP server answering as told) ---


def fake_service(answer) -> FastAPI:
    """An app that hands every POST to ``answer(path, body)`` and returns what it answers."""
    app = FastAPI()

    @app.post("/{path:path}")
    async def post(path: str, request: Request) -> Response:
        return await answer(f"/{path}", json.loads(await request.body()))

    return app


def test_errors_are_counted_by_kind_and_refused_events_retried_with_the_same_ids():
    auctions = Counter[str]()
    event_attempts: dict[tuple[str, ...], int] = Counter()

    async def answer(path: str, body: dict) -> Response:
        if path == "/openrtb2/auction":
            await asyncio.sleep(0.5)  # beyond the client's 0.1 s timeout
            return Response(status_code=204)
        if path == "/v1/auction":
            auctions["n"] += 1
            n = auctions["n"]
            if n % 4 == 0:
                return JSONResponse({"detail": "boom"}, status_code=500)
            if n % 4 == 1:
                return Response(status_code=204)
            return JSONResponse(
                {"auction_id": f"a{n}", "campaign_id": "c", "category": "Automotive", "pctr": 0.5,
                 "event_tokens": {kind: f"t-{n}-{kind}" for kind in EventType}}
            )  # fmt: skip
        ids = tuple(event["event_id"] for event in body["events"])
        event_attempts[ids] += 1
        if event_attempts[ids] == 1:  # Kafka is "down" for every batch's first attempt
            return JSONResponse({"detail": "retry"}, status_code=503, headers={"Retry-After": "0"})
        results = [{"event_id": i, "status": "accepted", "charged_micros": 0} for i in ids]
        return JSONResponse({"accepted": len(ids), "duplicate": 0, "rejected": 0, "results": results}, status_code=202)

    with live_server(fake_service(answer)) as url:
        stats, _ = asyncio.run(
            simulate(
                url, population(), truth(), duration_s=1.0, rate=60, concurrency=16, seed=5, openrtb_share=0.25,
                progress_every_s=60, out=io.StringIO(), http_timeout_s=0.1,
            )
        )  # fmt: skip
    openrtb_visits = stats.errors["openrtb_timeout"]
    assert openrtb_visits > 0 and stats.visits == openrtb_visits + auctions["n"]
    assert stats.errors["auction_500"] == auctions["n"] // 4
    assert stats.auctions == auctions["n"] - stats.errors["auction_500"]
    assert stats.filled == stats.auctions - (auctions["n"] + 3) // 4  # the 204s
    # Every batch was refused once, then accepted with exactly the same event ids: one batch with the
    # impression per filled auction, and later ones with its clicks and conversions.
    assert set(event_attempts.values()) == {2}
    shown = [ids for ids in event_attempts if ids[0].endswith("-impression")]
    assert len(shown) == stats.filled and all(ids[0] == f"sim-{ids[0].split('-')[1]}-impression" for ids in shown)
    assert stats.errors["events_503"] == len(event_attempts) > stats.filled  # BASE_CTR: some clicks
    # One auction request per visit, two event requests per batch (the refused and the retry).
    assert stats.requests == stats.visits + 2 * len(event_attempts)
    assert stats.impressions == stats.filled and sum(stats.events.rejected.values()) == 0


class RuleBook:
    """A stand-in for the service's event side: checks tokens and tags GIVT by the contract's rules
    (known bot or non-browser agent, data-center address, repeated or too fast click)."""

    DATACENTERS = bots.parse_networks("203.0.113.0/24")
    FAST_S = 0.5

    def __init__(self) -> None:
        self.landed: list[LandedEvent] = []
        self.seen: list[dict] = []  # every request: path, headers, body
        self.auctions = 0
        self.shown: dict[str, float] = {}  # auction -> when its impression arrived
        self.clicked: set[str] = set()
        self.served_to: dict[str, str] = {}  # auction -> the X-Forwarded-For of its request

    def tag(self, event: dict, now: float) -> tuple[str | None, str | None]:
        agent, auction = event["user_agent"], event["auction_id"]
        if re.search(r"bot|crawl|spider", agent, re.IGNORECASE):
            return "givt", "known_bot_ua"
        if not agent.startswith("Mozilla/"):
            return "givt", "non_browser_ua"
        if any(ipaddress.ip_address(event["ip"]) in network for network in self.DATACENTERS):
            return "givt", "datacenter_ip"
        if event["event_type"] == "click":
            if auction in self.clicked:
                return "givt", "duplicate_click"
            self.clicked.add(auction)
            if now - self.shown[auction] < self.FAST_S:
                return "givt", "fast_click"
        return None, None

    async def answer(self, path: str, request: Request, body: dict, base_url: str) -> Response:
        self.seen.append({"path": path, "headers": dict(request.headers), "body": body})
        if path in ("/v1/auction", "/openrtb2/auction"):
            self.auctions += 1
            auction = f"a{self.auctions}"
            self.served_to[auction] = request.headers["x-forwarded-for"]
            urls = {kind: f"{base_url}/v1/events/track/{auction}/{kind}?t=t-{auction}-{kind}" for kind in EventType}
            if path == "/openrtb2/auction":  # the impression in the billing notice, the click around the creative
                adm = f'<a href="{html.escape(urls["click"])}"><img src="{base_url}/v1/creatives/ad/image"></a>'
                nurl = urls["win"] + "&price=${AUCTION_PRICE}"
                bid = {"id": auction, "impid": "1", "price": 1.5, "cid": "c", "cat": ["IAB2"], "nurl": nurl,
                       "burl": urls["impression"], "adm": adm}  # fmt: skip
                return JSONResponse({"id": body["id"], "bidid": auction, "seatbid": [{"bid": [bid]}]})
            tokens = {kind: f"t-{auction}-{kind}" for kind in EventType}
            return JSONResponse({"auction_id": auction, "campaign_id": "c", "category": "Automotive", "pctr": 0.5,
                                 "tracking": urls, "event_tokens": tokens})  # fmt: skip
        now, results = time.monotonic(), []
        for event in body["events"]:
            if event["token"] != f"t-{event['auction_id']}-{event['event_type']}":
                results.append({"event_id": event["event_id"], "status": "rejected", "reason": "signature_invalid"})
                continue
            if event["event_type"] == "impression":
                self.shown[event["auction_id"]] = now
            category, reason = self.tag(event, now)
            cost = 0 if category else 1_000
            self.landed.append(LandedEvent(event["event_id"], category, reason, cost))
            results.append({"event_id": event["event_id"], "status": "accepted", "charged_micros": cost,
                            "ivt_category": category, "ivt_reason": reason})  # fmt: skip
        return JSONResponse({"results": results}, status_code=202)


def test_bots_carry_their_ground_truth_and_each_trips_its_rule(tmp_path):
    rules = RuleBook()
    app = FastAPI()
    base: list[str] = []

    @app.post("/{path:path}")
    async def post(path: str, request: Request) -> Response:
        return await rules.answer(f"/{path}", request, json.loads(await request.body()), base[0])

    truth_file = tmp_path / "truth.csv"
    with live_server(app) as url, truth_file.open("w", newline="") as written:
        base.append(url)
        csv.writer(written).writerow(TRUTH_COLUMNS)
        stats, _ = asyncio.run(
            simulate(
                url, population(), truth(), duration_s=2.0, rate=60, concurrency=48, seed=11, openrtb_share=0.25,
                progress_every_s=60, out=io.StringIO(), bot_share=0.5, datacenters=RuleBook.DATACENTERS,
                min_click_delay_s=RuleBook.FAST_S, ground_truth=written,
            )
        )  # fmt: skip
    assert stats.errors == Counter() and set(stats.bots) == set(bots.BOT_BEHAVIOURS)
    assert all(bot.filled >= 5 for bot in stats.bots.values())

    # Every request says who sent it, and every event carries the same in its body.
    for request in rules.seen:
        assert request["headers"]["user-agent"] and request["headers"]["x-forwarded-for"]
        for event in request["body"].get("events", []):
            assert (event["user_agent"], event["ip"]) == (
                request["headers"]["user-agent"],
                request["headers"]["x-forwarded-for"],
            )
    addresses: dict[str, set[str]] = {}
    for request in rules.seen:
        user = request["body"].get("user_id") or request["body"].get("user", {}).get("id") or ""
        if not user.startswith("u"):
            continue  # an event batch, or a bot's auction
        addresses.setdefault(user, set()).add(request["headers"]["x-forwarded-for"])
        if "device" in request["body"]:  # OpenRTB: the exchange states the browser in device
            assert request["body"]["device"]["ua"] == request["headers"]["user-agent"]
    assert len(addresses) >= 5 and all(len(ips) == 1 for ips in addresses.values())  # stable per user

    # The ground truth has every event sent, and the rules find exactly the bots it names.
    with truth_file.open() as read:
        rows = list(csv.DictReader(read))
    assert len(rows) == len(rules.landed) and {row["status"] for row in rows} == {"accepted"}
    sent = [TruthEvent(r["event_id"], r["event_type"], r["behaviour"], r["expected"] or None) for r in rows]
    result = score(sent, rules.landed)
    # No stream and no billing here: the spammer's clicks are charged and only billing's credit takes them back.
    assert target_misses(result, billed=False) == []
    assert result.behaviours["click_spammer"].billed_micros > 0
    assert result.givt_precision.value == 1.0 and result.givt_recall.value == 1.0
    for behaviour in ("crawler", "non_browser", "datacenter", "fast_clicker"):
        assert result.behaviours[behaviour].givt_recall.total > 0, behaviour
    assert result.behaviours["click_spammer"].givt_recall.total > 0  # its repeated clicks
    assert result.behaviours["human"].tagged == {} and result.behaviours["human"].landed > 50
    by_reason = {key.split(":")[1] for key in result.precision_by_reason}
    assert by_reason == {"known_bot_ua", "non_browser_ua", "datacenter_ip", "duplicate_click", "fast_click"}
    # What the service's answers said is counted per behaviour.
    crawled = stats.bot("crawler").events
    assert crawled.ivt == Counter({"givt:known_bot_ua": crawled.accepted.total()}) and crawled.accepted.total() > 0
    # The bids' adm carried a click URL here, so every ad a person saw could be clicked, OpenRTB ones too.
    assert stats.clicks > 0 and stats.clickable_impressions == stats.impressions


def test_a_service_that_cannot_be_reached_is_counted_not_raised():
    stats, _ = asyncio.run(
        simulate(
            f"http://127.0.0.1:{free_port()}", population(), truth(), duration_s=0.2, rate=20, concurrency=2, seed=1,
            progress_every_s=60, out=io.StringIO(),
        )
    )  # fmt: skip
    assert stats.visits > 0 and stats.auctions == 0
    assert sum(stats.errors.values()) == stats.visits
    assert set(stats.errors) <= {"auction_connect", "openrtb_connect"}


def test_visits_in_flight_never_exceed_the_concurrency():
    in_flight, peak = 0, 0

    async def slow(path: str, body: dict) -> Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return Response(status_code=204)

    async def run(url: str) -> tuple[SimulationStats, float, int]:
        tasks, done = 0, asyncio.Event()

        async def count_tasks() -> None:
            nonlocal tasks
            while not done.is_set():
                tasks = max(tasks, len(asyncio.all_tasks()))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(count_tasks())
        stats, elapsed = await simulate(
            url, population(), truth(), duration_s=1.0, rate=1_000, concurrency=4, seed=1, progress_every_s=60,
            out=io.StringIO(),
        )  # fmt: skip
        done.set()
        await sampler
        return stats, elapsed, tasks

    with live_server(fake_service(slow)) as url:
        stats, elapsed, tasks = asyncio.run(run(url))
    # Per worker its wait for the due time; the reporter, this sampler and the main task.
    assert peak == 4 and tasks <= 2 * 4 + 3
    # Far below the asked 1,000/s: 4 at a time, 50 ms each; late visits are run, never queued as tasks.
    assert stats.visits == stats.auctions == stats.requests and 40 <= stats.visits <= 4 / 0.05 * elapsed + 4


# --- against the running service ---


DATACENTER_CIDRS = "198.51.100.0/24"


@pytest.fixture(scope="module")
def simulation_service(service_settings):
    service_settings = service_settings.model_copy(update={"ivt_datacenter_cidrs": DATACENTER_CIDRS})
    write_lake(service_settings)
    big = {"total_budget_micros": 10_000_000_000, "daily_budget_micros": 10_000_000_000, "frequency_cap_per_day": 1000,
           "creative": {"video": {"url": "https://cdn.cars.example/spot.mp4", "duration_s": 15}}}  # fmt: skip
    campaigns = (
        instruction("sim-cpc", **big),
        instruction("sim-cpm", pricing_model="CPM", bid_micros=4_000_000, **big),
        instruction("sim-cpa", pricing_model="CPA", bid_micros=20_000_000, **big),
    )
    with running_service(service_settings, *campaigns) as state, live_server(create_app(state=state)) as url:
        yield state, url


@pytest.mark.slow
def test_simulated_users_click_as_the_ground_truth_says_not_as_the_model_predicts(
    simulation_service, tmp_path, monkeypatch
):
    state, url = simulation_service
    summary_file = tmp_path / "summary.json"
    # The simulated exchange sends its OpenRTB requests with its own key, read from the environment.
    with state.sessions() as session:
        key = callers.create_key(session, caller_id="sim-exchange", kind=CallerKind.EXCHANGE,
                                 max_floor_cpm_micros=100_000_000, first_price_allowed=False)  # fmt: skip
    monkeypatch.setenv("SIMULATOR_EXCHANGE_KEY", key.api_key)
    wait_admitted(url, key.api_key)
    argv = [
        "--base-url",
        url,
        "--duration",
        "5s",
        "--rate",
        "80",
        "--concurrency",
        "32",
        "--users",
        "40",
        "--seed",
        "3",
        "--openrtb-share",
        "0.25",
        "--base-ctr",
        str(BASE_CTR),
        "--progress-every",
        "2s",
        "--summary-file",
        str(summary_file),
    ]
    result = simulate_command(monkeypatch, state.settings, argv)
    assert result.exit_code == 0

    summary = json.loads(summary_file.read_text())
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("simulation done: auctions ")  # what `make run` prints
    assert sum("] auctions " in line and "RSS" in line for line in lines) >= 2  # progress lines
    for key in ("auctions", "fill_rate", "impressions", "clicks", "ctr", "expected_ctr", "errors", "rss_mb", "run"):
        assert key in summary
    assert summary["errors"] == 0 and summary["errors_by_kind"] == {}
    assert 300 <= summary["auctions"] <= 401 and summary["openrtb_auctions"] > 30
    assert summary["filled"] == summary["auctions"] == summary["impressions"]  # every user is eligible
    assert summary["events"]["rejected"] == summary["events"]["duplicate"] == 0
    assert summary["events"]["ivt_tagged_by_service"] == {}  # people's browsers, from home
    # OpenRTB bids link their signed click URL in adm, so every ad served can be clicked.
    assert summary["clickable_impressions"] == summary["impressions"] > 0
    assert 0 < summary["video_completes"] <= summary["video_starts"]

    # The service saw the same: every event accepted, and what it charged is what the answers said.
    service_stats = httpx.get(f"{url}/v1/stats").json()
    assert service_stats["auctions"] == summary["auctions"] and service_stats["filled"] == summary["filled"]
    # ... and the exchange's win notices, one per OpenRTB bid, each with a price within our bid.
    wins = summary["exchange"]["win_notices"]
    assert set(wins) == {"204"} and 30 < wins["204"] <= summary["openrtb_auctions"]
    # The simulated exchange's invoice is what the service recorded from its win notices, a price per thousand
    # each, rounded once. The broker is the whole run's: this module's campaigns say which wins are this run's
    # (the first on this service).
    feedback = [FeedbackEvent.model_validate_json(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    recorded = {e.event_id: e for e in feedback if e.event_type == EventType.WIN and e.campaign_id in CAMPAIGNS}
    assert len(recorded) == wins["204"]
    invoiced = sum(e.exchange_price_cpm_micros for e in recorded.values())
    assert summary["exchange"]["media_cost_cpm_micros"] == invoiced > 0
    assert summary["exchange"]["media_cost_micros"] == (invoiced + 500) // 1000
    # Its auctions and wins are the exchange's (its key's caller), and so is what it invoices: each impression
    # its billing notice delivered (here every ad served is shown), per hour, at its win notice's price.
    assert {e.publisher_id for e in recorded.values()} == {"sim-exchange"} and summary["run"]["exchange_keyed"]
    invoice = summary["exchange"]["invoice"]
    assert sum(line["impressions"] for line in invoice) == wins["204"]
    assert sum(line["media_cost_cpm_micros"] for line in invoice) == invoiced
    for line in invoice:
        start = datetime.fromisoformat(line["period_start"])
        assert start.minute == 0 and datetime.fromisoformat(line["period_end"]) - start == timedelta(hours=1)
        assert Decimal(line["amount"]) * 1_000_000 == (line["media_cost_cpm_micros"] + 500) // 1000
    assert service_stats["events"]["accepted"] == summary["events"]["accepted"] + wins["204"]
    with state.sessions() as session:
        spent = sum(store.get_campaign(session, campaign_id).spent_micros for campaign_id in CAMPAIGNS)
    assert spent == summary["charged_micros"] > 0 and Decimal(summary["spend"]) * 1_000_000 == spent

    # Clicks follow the ground truth (BASE_CTR x Automotive's affinity), not the served pCTR.
    impressions, served_pctr = summary["clickable_impressions"], service_stats["average_pctr"]
    tolerance = 4 * math.sqrt(AUTOMOTIVE_CTR * (1 - AUTOMOTIVE_CTR) / impressions)
    assert abs(served_pctr - AUTOMOTIVE_CTR) > 3 * tolerance  # else this test could not tell them apart
    assert summary["expected_ctr"] == pytest.approx(AUTOMOTIVE_CTR, rel=1e-3)
    assert abs(summary["ctr"] - AUTOMOTIVE_CTR) < tolerance


@pytest.mark.slow
def test_the_services_givt_rules_find_the_simulated_bots(simulation_service, tmp_path, monkeypatch):
    """Every bot against the real service: what it published to ad-feedback, scored against the ground truth."""
    state, url = simulation_service
    summary_file, truth_file = tmp_path / "summary.json", tmp_path / "truth.csv"
    argv = ["--base-url", url, "--duration", "6s", "--rate", "40", "--concurrency", "48", "--users", "40",
            "--seed", "5", "--openrtb-share", "0", "--bot-share", "0.5", "--progress-every", "10s",
            "--summary-file", str(summary_file), "--ground-truth-file", str(truth_file)]  # fmt: skip
    result = simulate_command(monkeypatch, state.settings, argv)
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_file.read_text())
    assert summary["errors"] == 0 and set(summary["bots"]["by_behaviour"]) == set(bots.BOT_BEHAVIOURS)

    with truth_file.open() as read:
        rows = [row for row in csv.DictReader(read)]
    assert {row["status"] for row in rows} == {"accepted"}  # every token was good
    sent = [TruthEvent(r["event_id"], r["event_type"], r["behaviour"], r["expected"] or None) for r in rows]
    deadline = time.monotonic() + 30
    while True:  # the outbox publishes an accepted event soon after it answered
        records = topic_records(state.settings, Topic.AD_FEEDBACK)
        published = [FeedbackEvent.model_validate_json(record.value) for record in records]
        ivt = score(sent, [LandedEvent(e.event_id, e.ivt_category, e.ivt_reason, e.cost_micros) for e in published])
        if ivt.missing == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    print("\n".join(report_lines(ivt)))  # shown by pytest -rP
    assert ivt.missing == 0
    assert target_misses(ivt) == [], "\n".join(report_lines(ivt))
    for behaviour in ("crawler", "non_browser", "datacenter", "fast_clicker", "click_spammer"):
        assert ivt.behaviours[behaviour].givt_recall.total > 0, behaviour
    assert ivt.behaviours["human"].tagged == {}
    reasons = {key.split(":")[1] for key in ivt.precision_by_reason}
    assert reasons == {"known_bot_ua", "non_browser_ua", "datacenter_ip", "duplicate_click", "fast_click"}
    # The service's answers said the same, and no bot event the rules could see was charged.
    assert sum(bot.charged_givt_micros for bot in ivt.bots()) == 0
    assert summary["bots"]["by_behaviour"]["crawler"]["events"]["ivt_tagged_by_service"] == {
        "givt:known_bot_ua": summary["bots"]["by_behaviour"]["crawler"]["events"]["accepted"]
    }


def test_a_population_larger_than_the_sample_adds_lookalikes_under_new_ids():
    rows = [{"user_id": f"u{i}", "age": 20 + i, "gender": "F", "country": "France"} for i in range(5)]
    assert [u.profile.user_id for u in traffic.population(rows, 3, seed=7)] == [
        u.profile.user_id for u in traffic.population(rows, 3, seed=7)
    ]
    assert len({u.profile.user_id for u in traffic.population(rows, 3, seed=7)}) == 3
    users = traffic.population(rows, 12, seed=7)
    ids = [u.profile.user_id for u in users]
    assert len(ids) == len(set(ids)) == 12
    assert sorted(ids[:5]) == [f"u{i}" for i in range(5)]  # every profile once before any lookalike
    assert all(re.fullmatch(r"u[0-4]@([1-7])", i) for i in ids[5:]) and [i.split("@")[1] for i in ids[5:]] == [
        str(n) for n in range(1, 8)
    ]
    for user in users[5:]:  # a lookalike is its profile's attributes under the new id
        original = rows[int(user.profile.user_id[1])]
        assert (user.profile.age, user.profile.gender, user.profile.country) == (
            original["age"], original["gender"], original["country"],
        )  # fmt: skip
    assert re.fullmatch(r"^[A-Za-z0-9._:@-]+$", ids[-1])  # the auction API's id pattern
