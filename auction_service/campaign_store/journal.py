"""The feedback journal: each accepted event, its charge and its place in its auction, in one transaction.

It is the outbox of ``ad-feedback``. An event is journaled with what the ledger decided (charged,
over budget, out of order, invalid traffic ...) in the transaction that charges it, and the
record published to Kafka is the journal's payload, byte for byte. So the ledger and the lake
cannot disagree: a charge without its record is published by the relay (``unpublished``), and
a retry of an event_id, at any delay, finds its row and neither charges nor stamps anything new.

Order and the click rules of general invalid traffic need every earlier event of the auction,
whichever replica took it, so they are decided here, inside the write transaction, too:
- a click counts only after an impression of its auction, a conversion only after a click
  (the window is the auction's: events are taken until ``expires_at``); earlier, it is
  recorded as ``out_of_order``;
- a second click on one impression is GIVT ``duplicate_click``; a click sooner than
  ``min_click_delay`` after its impression is GIVT ``fast_click``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from adstream.days import UTC_DAYS, DayClock
from adstream.events import ChargeStatus, EventType, FeedbackEvent, IvtCategory
from auction_service.campaign_store.db import begin_write
from auction_service.campaign_store.store import (
    _LEDGER,
    Charge,
    SpendOutcome,
    SpendResult,
    _budget_day,
    _charge,
    _insert_new,
    fresh_read,
)
from auction_service.campaign_store.tables import FeedbackJournal

_JOURNAL = FeedbackJournal.__table__
_CHARGE_STATUS = {
    SpendOutcome.RECORDED: ChargeStatus.CHARGED,
    SpendOutcome.DUPLICATE: ChargeStatus.DUPLICATE_AUCTION,
    SpendOutcome.OVER_BUDGET: ChargeStatus.OVER_BUDGET,
    SpendOutcome.UNKNOWN_CAMPAIGN: ChargeStatus.UNKNOWN_CAMPAIGN,
}
# What must come before each event type in its auction.
_NEEDS = {
    EventType.CLICK: EventType.IMPRESSION,
    EventType.VIDEO_START: EventType.IMPRESSION,
    EventType.VIDEO_COMPLETE: EventType.IMPRESSION,
    EventType.CONVERSION: EventType.CLICK,
}


class JournalConflict(RuntimeError):
    """Another writer journaled one of these event ids meanwhile (replicas on PostgreSQL): nothing was
    written; a retry finds the row and answers it as a duplicate."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An event the service checked (signed, in time, of a served auction), to journal and maybe charge."""

    event: FeedbackEvent  # cost_micros: what it costs if charged; the journal sets the charge fields
    billable: bool  # the type its campaign's pricing model pays for
    request_ivt: str | None = None  # a GIVT reason found from the request alone (agent, address)


@dataclass(frozen=True, slots=True)
class JournalResult:
    event: FeedbackEvent  # as journaled and published
    new: bool  # False: the event_id was journaled before; nothing changed
    published: bool  # False: still to publish (new, or a retry of one whose publish failed)
    # The campaign's spend right after this event's charge was tried (new billable events only): the
    # figures the shared store's mirror of the ledger takes.
    spend: SpendResult | None = None


@dataclass(slots=True)
class _Seen:
    event_type: str
    event_time: datetime
    charge_status: str | None = None


def record_events(
    session: Session,
    entries: Sequence[JournalEntry],
    *,
    min_click_delay: timedelta,
    published: Collection[str] = (),
    now: datetime | None = None,
    days: DayClock = UTC_DAYS,
) -> list[JournalResult]:
    """Journals and charges ``entries`` in one committed transaction; a result per entry, in order.

    ``published``: event ids Kafka has acknowledged since the last call, marked in the same commit.
    A charge counts against the daily budget of its event's budget day (``adstream.days``).
    """
    now = now or datetime.now(UTC)
    results: list[JournalResult | None] = [None] * len(entries)
    begin_write(session)
    try:
        event_ids = list({entry.event.event_id for entry in entries})
        stored = {
            row.event_id: row
            for row in session.execute(
                select(_JOURNAL.c.event_id, _JOURNAL.c.payload, _JOURNAL.c.published_at).where(
                    _JOURNAL.c.event_id.in_(event_ids)
                )
            )
        }
        history: dict[str, list[_Seen]] = defaultdict(list)
        auctions = list({entry.event.auction_id for entry in entries})
        for row in session.execute(
            select(_JOURNAL.c.auction_id, _JOURNAL.c.event_type, _JOURNAL.c.event_time, _JOURNAL.c.charge_status).where(
                _JOURNAL.c.auction_id.in_(auctions), _JOURNAL.c.charge_status != ChargeStatus.OUT_OF_ORDER
            )
        ):
            history[row.auction_id].append(_Seen(row.event_type, row.event_time, row.charge_status))
        journal_insert, taken = _insert_new(session, _JOURNAL), {}
        # By event time, so an impression and its click in one batch are seen in their order.
        for index in sorted(range(len(entries)), key=lambda i: entries[i].event.event_time):
            entry = entries[index]
            event_id = entry.event.event_id
            if event_id in taken:  # the same event twice in one batch
                results[index] = JournalResult(taken[event_id], new=False, published=False)
                continue
            if event_id in stored:
                row = stored[event_id]
                previous = FeedbackEvent.model_validate_json(row.payload)
                results[index] = JournalResult(previous, new=False, published=row.published_at is not None)
                continue
            final, spend = _decide(session, entry, history[entry.event.auction_id], min_click_delay, now, days)
            journaled = {
                "event_id": event_id, "auction_id": final.auction_id, "campaign_id": final.campaign_id,
                "event_type": final.event_type, "event_time": final.event_time, "recorded_at": now,
                "charge_status": final.charge_status, "cost_micros": final.cost_micros,
                "ivt_category": final.ivt_category, "payload": final.model_dump_json(), "published_at": None,
            }  # fmt: skip
            if session.execute(journal_insert, journaled).first() is None:
                raise JournalConflict(f"event {event_id} was journaled by another writer meanwhile")
            if final.charge_status != ChargeStatus.OUT_OF_ORDER:  # it cannot open the way for a later event
                history[final.auction_id].append(_Seen(final.event_type, final.event_time, final.charge_status))
            taken[event_id] = final
            results[index] = JournalResult(final, new=True, published=False, spend=spend)
        if published:
            session.execute(_MARK_PUBLISHED, {"b_ids": list(published), "b_now": now})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return results  # type: ignore[return-value]


def _decide(
    session: Session,
    entry: JournalEntry,
    history: list[_Seen],
    min_click_delay: timedelta,
    now: datetime,
    days: DayClock,
) -> tuple[FeedbackEvent, SpendResult | None]:
    event = entry.event
    spend = None
    ivt_reason = entry.request_ivt
    needed = _NEEDS.get(EventType(event.event_type))
    before = [seen for seen in history if seen.event_type == needed] if needed else []
    in_order = needed is None or bool(before)
    if event.event_type == EventType.CLICK and in_order and ivt_reason is None:
        if any(seen.event_type == EventType.CLICK for seen in history):
            ivt_reason = "duplicate_click"
        elif event.event_time - min(seen.event_time for seen in before) < min_click_delay:
            ivt_reason = "fast_click"
    cost = 0
    if not in_order:
        status = ChargeStatus.OUT_OF_ORDER
    elif ivt_reason is not None:
        status = ChargeStatus.INVALID_TRAFFIC
    elif not entry.billable:
        status = ChargeStatus.NOT_BILLABLE
    elif any(seen.charge_status == ChargeStatus.CHARGED for seen in history):
        status = ChargeStatus.DUPLICATE_AUCTION  # charged already: not "over budget" once the budget is spent
    else:
        charge = Charge(event.event_id, event.auction_id, event.campaign_id, event.event_type, event.cost_micros,
                        event.event_time)  # fmt: skip
        day = _budget_day(event.event_time, days)
        spend = _charge(session, _insert_new(session, _LEDGER), charge, day, now)
        status = _CHARGE_STATUS[spend.outcome]
        cost = event.cost_micros if status is ChargeStatus.CHARGED else 0
    decided = event.model_copy(
        update={
            "charge_status": status, "cost_micros": cost, "recorded_at": now,
            "ivt_category": IvtCategory.GIVT if ivt_reason else None, "ivt_reason": ivt_reason,
        }
    )  # fmt: skip
    return decided, spend


_MARK_PUBLISHED = (
    update(_JOURNAL)
    .where(_JOURNAL.c.event_id.in_(bindparam("b_ids", expanding=True)), _JOURNAL.c.published_at.is_(None))
    .values(published_at=bindparam("b_now", type_=_JOURNAL.c.published_at.type))
)


def mark_published(session: Session, event_ids: Collection[str], now: datetime | None = None) -> None:
    if not event_ids:
        return
    begin_write(session)
    try:
        session.execute(_MARK_PUBLISHED, {"b_ids": list(event_ids), "b_now": now or datetime.now(UTC)})
        session.commit()
    except BaseException:
        session.rollback()
        raise


@fresh_read
def unpublished(session: Session, recorded_before: datetime, limit: int = 1000) -> list[tuple[str, str, str]]:
    """(event_id, auction_id, payload) of journaled events not yet acknowledged by Kafka, oldest first."""
    rows = session.execute(
        select(_JOURNAL.c.event_id, _JOURNAL.c.auction_id, _JOURNAL.c.payload)
        .where(_JOURNAL.c.published_at.is_(None), _JOURNAL.c.recorded_at < recorded_before)
        .order_by(_JOURNAL.c.recorded_at)
        .limit(limit)
    )
    return [(row.event_id, row.auction_id, row.payload) for row in rows]


@fresh_read
def journaled(session: Session, start: datetime, end: datetime) -> list[FeedbackEvent]:
    """The journaled events with ``start <= event_time < end`` (reconciliation and tests)."""
    rows = session.execute(
        select(_JOURNAL.c.payload).where(_JOURNAL.c.event_time >= start, _JOURNAL.c.event_time < end)
    )
    return [FeedbackEvent.model_validate_json(row.payload) for row in rows]
