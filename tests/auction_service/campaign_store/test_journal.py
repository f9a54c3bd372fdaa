"""The feedback journal: event order, the click rules of GIVT, zero overspend and first-seen times, in the store.

SQLite and PostgreSQL alike (the ``settings`` fixture of test_store runs both).
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select

from adstream.events import FeedbackEvent
from auction_service.campaign_store import journal, store
from auction_service.campaign_store.journal import JournalEntry
from auction_service.campaign_store.tables import Campaign, FeedbackJournal, SpendLedgerEntry
from tests.auction_service.campaign_store.test_store import NOW, create

DELAY = timedelta(milliseconds=500)


def entry(
    event_id: str,
    event_type: str,
    auction_id: str = "a-1",
    *,
    seconds: float = 0,
    cost: int = 400_000,
    billable: bool | None = None,
    campaign_id: str = "c1",
    request_ivt: str | None = None,
) -> JournalEntry:
    event = FeedbackEvent(
        event_id=event_id, event_type=event_type, event_time=NOW + timedelta(seconds=seconds), auction_id=auction_id,
        campaign_id=campaign_id, advertiser_id="adv", ad_id="ad", pricing_model="CPC",
        cost_micros=cost if (billable if billable is not None else event_type == "click") else 0,
    )  # fmt: skip
    return JournalEntry(event, billable if billable is not None else event_type == "click", request_ivt)


def record(session, *entries: JournalEntry, **kwargs) -> list[journal.JournalResult]:
    return journal.record_events(session, list(entries), min_click_delay=DELAY, **kwargs)


def statuses(results: list[journal.JournalResult]) -> list[tuple[str, str | None]]:
    return [(r.event.charge_status, r.event.ivt_reason) for r in results]


def spent(session, campaign_id: str = "c1") -> int:
    return session.scalar(select(Campaign.spent_micros).where(Campaign.campaign_id == campaign_id))


def test_a_click_counts_only_after_an_impression_and_a_conversion_only_after_a_click(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        early = record(session, entry("clk-0", "click", "a-0"), entry("conv-0", "conversion", "a-0"))
        results = record(session, entry("imp-1", "impression"), entry("clk-1", "click", seconds=2),
                         entry("conv-1", "conversion", seconds=30))  # fmt: skip
        ledger = session.scalars(select(SpendLedgerEntry.event_id)).all()
        assert statuses(early) == [("out_of_order", None), ("out_of_order", None)]
        assert statuses(results) == [("not_billable", None), ("charged", None), ("not_billable", None)]
        assert [r.event.cost_micros for r in early + results] == [0, 0, 0, 400_000, 0]
        assert ledger == ["clk-1"] and spent(session) == 400_000


def test_an_impression_and_its_click_in_one_batch_are_taken_in_event_time_order(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        results = record(session, entry("clk-1", "click", seconds=3), entry("imp-1", "impression"))
        assert statuses(results) == [("charged", None), ("not_billable", None)]


def test_a_second_click_and_a_too_fast_click_are_general_invalid_traffic_never_charged(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        record(session, entry("imp-1", "impression"), entry("imp-2", "impression", "a-2"))
        results = record(
            session, entry("clk-1", "click", seconds=1), entry("clk-1b", "click", seconds=2),
            entry("clk-2", "click", "a-2", seconds=0.2),
        )  # fmt: skip
        assert statuses(results) == [
            ("charged", None), ("invalid_traffic", "duplicate_click"), ("invalid_traffic", "fast_click"),
        ]  # fmt: skip
        assert [r.event.ivt_category for r in results] == [None, "givt", "givt"]
        assert spent(session) == 400_000


def test_request_level_givt_is_tagged_and_not_charged(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        record(session, entry("imp-1", "impression", request_ivt="known_bot_ua"))
        (click,) = record(session, entry("clk-1", "click", seconds=3, request_ivt="known_bot_ua"))
        assert (click.event.charge_status, click.event.ivt_category, click.event.cost_micros) == (
            "invalid_traffic", "givt", 0,
        )  # fmt: skip
        assert spent(session) == 0


def test_a_charge_past_the_budget_is_recorded_as_over_budget_and_spend_never_passes_it(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=1_000_000, daily_budget_micros=1_000_000))
        for n in range(4):
            record(session, entry(f"imp-{n}", "impression", f"a-{n}"))
        results = record(session, *(entry(f"clk-{n}", "click", f"a-{n}", seconds=2) for n in range(4)))
        assert [r.event.charge_status for r in results] == ["charged", "charged", "over_budget", "over_budget"]
        assert [r.event.cost_micros for r in results] == [400_000, 400_000, 0, 0]
        assert spent(session) == 800_000


def test_a_retry_at_any_delay_is_answered_from_the_journal_with_its_first_time(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        record(session, entry("imp-1", "impression"))
        (first,) = record(session, entry("clk-1", "click", seconds=2))
        # The same event_id a day later, with another time and cost: nothing new is stamped or charged.
        (retry,) = record(session, entry("clk-1", "click", seconds=86_400, cost=999_000), now=NOW + timedelta(days=1))
        assert first.new and not retry.new
        assert retry.event == first.event and retry.event.event_time == NOW + timedelta(seconds=2)
        assert spent(session) == 400_000


def test_unpublished_events_are_relayed_until_marked_published(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        record(session, entry("imp-1", "impression"), entry("imp-2", "impression", "a-2"))
        later = NOW + timedelta(days=365)
        assert [event_id for event_id, _, _ in journal.unpublished(session, later)] == ["imp-1", "imp-2"]
        payload = dict((event_id, p) for event_id, _, p in journal.unpublished(session, later))["imp-1"]
        assert FeedbackEvent.model_validate_json(payload).charge_status == "not_billable"
        record(session, entry("imp-3", "impression", "a-3"), published=["imp-1"])
        journal.mark_published(session, ["imp-2"])
        (retry,) = record(session, entry("imp-2", "impression", "a-2"))
        assert [event_id for event_id, _, _ in journal.unpublished(session, later)] == ["imp-3"]
        assert retry.published and not retry.new


def test_concurrent_writers_charge_a_shared_budget_exactly_and_never_past_it(sessions):
    """8 threads, each its own session, race the clicks of 120 auctions (each sent twice) for a budget of 50 clicks."""
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=20_000_000, daily_budget_micros=20_000_000))
        record(session, *(entry(f"imp-{n}", "impression", f"a-{n}") for n in range(120)))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        mine = [entry(f"clk-{n}-{w % 2}", "click", f"a-{n}", seconds=2) for n in range(w, 120, 4)]
        with sessions() as session:
            for start in range(0, len(mine), 5):
                for _ in range(20):  # a writer that lost a race on PostgreSQL retries, as the service's client does
                    try:
                        results = record(session, *mine[start : start + 5])
                        break
                    except journal.JournalConflict:
                        continue
                with lock:
                    outcomes.extend(str(r.event.charge_status) for r in results if r.new)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        charged = session.scalar(select(func.count()).select_from(SpendLedgerEntry))
        journaled = session.scalar(select(func.count()).select_from(FeedbackJournal))
        assert spent(session) == charged * 400_000 == 20_000_000
    # Workers w and w + 4 send the same event ids for the auctions they share: each id is new once.
    unique_clicks = len({f"clk-{n}-{w % 2}" for w in range(8) for n in range(w, 120, 4)})
    assert outcomes.count("charged") == 50 and len(outcomes) == unique_clicks
    assert journaled == 120 + unique_clicks
