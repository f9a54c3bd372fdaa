"""A replica across a budget day's end: the day's spend in its campaign snapshot belongs to the day it was loaded.

On a real store, shared store and champion. In `make run`'s 2-day run, nine campaigns that had spent most of their
budget on day 1 served an auction in day 2 before the replica reloaded: the hold wrote day 1's spend into day 2's
mirror, the pacing controller read it as day 2's, and five of them were throttled for the whole of day 2.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adstream.days import DayClock
from auction_service.campaign_store import store
from auction_service.domain import AuctionContext
from auction_service.serving.flows import serve_auction
from tests.auction_service.conftest import instruction, open_service
from tests.conftest import shared_namespace

DAILY = 20_000_000
SPENT = 15_000_000  # of DAILY, today: 5 dollars are left, so the campaign still bids


@pytest.fixture
def replica(service_settings, tmp_path):
    settings = service_settings.model_copy(
        update={
            "local_dir": tmp_path / "local",
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
            "shared_store_namespace": shared_namespace(),
        }
    )
    campaign = instruction(
        "evening", pricing_model="CPM", bid_micros=2_000_000, daily_budget_micros=DAILY,
        total_budget_micros=10 * DAILY, frequency_cap_per_day=1_000,
    )  # fmt: skip
    state = open_service(settings, campaign)
    now = datetime.now(UTC)
    with state.sessions() as session:
        result = store.record_spend(
            session, event_id="e-today", auction_id="a-today", campaign_id="evening", event_type="impression",
            cost_micros=SPENT, event_time=now,
        )  # fmt: skip
    assert result.spent_today_micros == SPENT
    state.refresh_campaigns(force=True)
    assert state.campaigns.by_id["evening"].spent_today_micros == SPENT
    yield state
    state.stop()


def test_an_auction_of_the_next_day_served_from_the_days_snapshot_leaves_the_next_days_spend_at_zero(replica):
    days = DayClock.of(replica.settings)
    today = replica.campaigns.day
    tomorrow = days.budget_day(datetime.now(UTC) + timedelta(days=1))
    at = datetime.combine(tomorrow, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=1)
    assert days.budget_day(at) == tomorrow != today

    served = asyncio.run(serve_auction(replica, AuctionContext(auction_id="a-tomorrow", at=at)))

    assert served.outcome.winner is not None and served.outcome.winner.campaign_id == "evening"
    _, held_tomorrow, _, spent_tomorrow = replica.shared.exposure(tomorrow)
    assert held_tomorrow.get("evening", 0) > 0  # the auction's reservation, on its own day
    assert spent_tomorrow == {}  # not today's 15 dollars
    _, _, _, spent_today = replica.shared.exposure(today)
    assert spent_today.get("evening", 0) in (0, SPENT)  # today's mirror keeps what it knew


def test_the_pacing_controllers_wait_for_the_new_days_snapshot(replica):
    days = DayClock.of(replica.settings)
    at = datetime.combine(days.budget_day(datetime.now(UTC) + timedelta(days=1)), datetime.min.time(), tzinfo=UTC)
    replica.pace(at + timedelta(seconds=1))  # the snapshot is still today's: no update reads its spend
    assert replica.pacer.states(["evening"]) == {}
    replica.pace(datetime.now(UTC))  # today's snapshot, today's spend: the controller steps
    assert "evening" in replica.pacer.states(["evening"])
