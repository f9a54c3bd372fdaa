"""The user simulator: its command line, its handling of a failing service, and a run against the real one."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
from collections import Counter
from decimal import Decimal

import httpx
import pandas as pd
import pytest
from deltalake import write_deltalake
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from typer.testing import CliRunner

from adstream.contracts import Table
from adstream.settings import Settings
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from simulator import cli, traffic
from simulator.ground_truth import UserProfile, fit
from simulator.traffic import (
    Placement,
    SimulatedUser,
    SimulationStats,
    auction_request,
    openrtb_request,
    parse_duration,
    served_ad,
    simulate,
)
from tests.auction_service.conftest import instruction, live_server, running_service
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
        (["--rate", "fast"], "Invalid value for '--rate': Input should be a valid number"),
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
        "imp": [{"id": "1", "video": {}}],
        "app": {},
        "device": {"devicetype": 5, "geo": {"country": "NOR"}},
        "user": {"id": "adv-000007", "yob": 1985, "gender": "F"},
    }
    web = openrtb_request(unknown, Placement("desktop", "web", "display", openrtb=True), "req-2", year=2026)
    assert web["site"] == {} and web["imp"] == [{"id": "1", "banner": {}}]
    assert web["user"] == {"id": "ads16-U0003"} and "geo" not in web["device"]


def test_an_openrtb_bid_is_placed_in_its_category():
    known: dict[str, str] = {}
    served_ad({"auction_id": "a1", "campaign_id": "c1", "category": "Jewellery & Watches", "pctr": 0.2}, False, known)
    bid = {"bidid": "a2", "seatbid": [{"bid": [{"cid": "c1", "cat": ["IAB18"]}]}]}
    assert served_ad(bid, True, known).category == "Jewellery & Watches"  # learnt from an earlier answer
    unseen = {"bidid": "a3", "seatbid": [{"bid": [{"cid": "c9", "cat": ["IAB2"]}]}]}
    assert served_ad(unseen, True, known).category == "Automotive"  # the only category with IAB2
    shared = {"bidid": "a4", "seatbid": [{"bid": [{"cid": "c8", "cat": ["IAB18"]}]}]}
    assert served_ad(shared, True, known).category is None  # three categories share IAB18: neutral affinity


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
            return JSONResponse({"auction_id": f"a{n}", "campaign_id": "c", "category": "Automotive", "pctr": 0.5})
        ids = tuple(event["event_id"] for event in body["events"])
        event_attempts[ids] += 1
        if event_attempts[ids] == 1:  # Kafka is "down" for every batch's first attempt
            return JSONResponse({"detail": "retry"}, status_code=503, headers={"Retry-After": "0"})
        results = [{"event_id": i, "status": "accepted", "charged_micros": 0} for i in ids]
        return JSONResponse({"accepted": len(ids), "duplicate": 0, "rejected": 0, "results": results}, status_code=202)

    with live_server(fake_service(answer)) as url:
        stats, _ = asyncio.run(
            simulate(
                url, population(), truth(), duration_s=1.0, rate=60, concurrency=4, seed=5, openrtb_share=0.25,
                progress_every_s=60, out=io.StringIO(), http_timeout_s=0.1,
            )
        )  # fmt: skip
    openrtb_visits = stats.errors["openrtb_timeout"]
    assert openrtb_visits > 0 and stats.visits == openrtb_visits + auctions["n"]
    assert stats.errors["auction_500"] == auctions["n"] // 4
    assert stats.auctions == auctions["n"] - stats.errors["auction_500"]
    assert stats.filled == stats.auctions - (auctions["n"] + 3) // 4  # the 204s
    # Every batch was refused once, then accepted with exactly the same event ids.
    assert set(event_attempts.values()) == {2} and len(event_attempts) == stats.filled
    assert stats.errors["events_503"] == stats.filled
    # One auction request per visit, two event requests per filled one (the refused and the retry).
    assert stats.requests == stats.visits + 2 * stats.filled
    assert all(ids[0] == f"sim-{ids[0].split('-')[1]}-impression" for ids in event_attempts)
    assert stats.impressions == stats.filled and sum(stats.rejected.values()) == 0


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


@pytest.fixture(scope="module")
def simulation_service(service_settings):
    write_lake(service_settings)
    big = {"total_budget_micros": 10_000_000_000, "daily_budget_micros": 10_000_000_000, "frequency_cap_per_day": 1000}
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
    argv = [
        "--base-url",
        url,
        "--duration",
        "5s",
        "--rate",
        "80",
        "--concurrency",
        "8",
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
    assert 0 < summary["video_completes"] <= summary["video_starts"]

    # The service saw the same: every event accepted, and what it charged is what the answers said.
    service_stats = httpx.get(f"{url}/v1/stats").json()
    assert service_stats["auctions"] == summary["auctions"] and service_stats["filled"] == summary["filled"]
    assert service_stats["events"]["accepted"] == summary["events"]["accepted"]
    with state.sessions() as session:
        spent = sum(store.get_campaign(session, campaign_id).spent_micros for campaign_id in CAMPAIGNS)
    assert spent == summary["charged_micros"] > 0 and Decimal(summary["spend"]) * 1_000_000 == spent

    # Clicks follow the ground truth (BASE_CTR x Automotive's affinity), not the served pCTR.
    impressions, served_pctr = summary["impressions"], service_stats["average_pctr"]
    tolerance = 4 * math.sqrt(AUTOMOTIVE_CTR * (1 - AUTOMOTIVE_CTR) / impressions)
    assert abs(served_pctr - AUTOMOTIVE_CTR) > 3 * tolerance  # else this test could not tell them apart
    assert summary["expected_ctr"] == pytest.approx(AUTOMOTIVE_CTR, rel=1e-3)
    assert abs(summary["ctr"] - AUTOMOTIVE_CTR) < tolerance
