"""The two hot paths of the service, on top of ``ServiceState``: serve an auction, record an event.

Auction: eligible campaigns -> one scoring batch -> ranked, priced (``auction_service.serving.auction``)
-> reserve the winner's expected cost -> remember the auction -> publish it to ``auctions``.

Event: validate against the served auction -> publish to ``ad-feedback`` and wait for the
broker's ack -> for the billable type, charge the ledger (once per event id and once per
auction) -> free the reservation. Kafka first: when the broker is down nothing is charged and
the client gets 503 and retries with the same event_id; a retry after a charge is a
duplicate in the ledger (free) and at most a duplicate record downstream, deduplicated there
by event_id.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from adstream.contracts import Topic
from adstream.events import BILLABLE_EVENT, FeedbackEvent, PricingModel
from adstream.messaging import BrokerUnavailable, PublishFailed
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.domain import AuctionContext
from auction_service.serving.auction import DEFAULT_PCVR, AuctionOutcome, CampaignIndex, auction_record, run_auction
from auction_service.serving.bodies import EventIn, EventResult
from auction_service.serving.books import Reservation, billable_cost_micros, expected_cost_micros
from auction_service.serving.features import CampaignFeatures, candidate_columns
from auction_service.serving.state import ServiceState

CLOCK_SKEW = timedelta(seconds=5)  # events may carry a client time slightly before the auction's


class LedgerUnavailable(RuntimeError):
    """The campaign store did not take the charges (locked, full, gone): nothing was charged, retry.

    The events are on the topic already; the retry publishes them again under the same ids,
    which the stream keeps once, and the ledger then charges each once.
    """


@dataclass(frozen=True)
class ServedAd:
    outcome: AuctionOutcome
    model_version: str


def serve_auction(state: ServiceState, context: AuctionContext, *, first_price: bool = False) -> ServedAd:
    """Runs one auction; raises ``ModelNotReady`` when no model is loaded."""
    began = time.perf_counter()
    loaded = state.model.current  # one snapshot for the whole auction, even if a swap lands meanwhile
    with state.snapshot_lock:  # the spend of the snapshot and the reservations from the same moment
        campaigns, features = state.campaigns.campaigns, state.features.current
        index = CampaignIndex.of(campaigns)
        rows, filtered = index.eligible_rows(
            context,
            impressions_today=state.frequency.impressions_today(context.user_id, context.at),
            reserved_micros=state.exposure.reserved_micros,
            held_by_row=state.exposure.held_by_row(index.campaign_ids),
        )
    candidates = index.take(rows)
    batch = candidate_columns(context, CampaignFeatures.of(campaigns, features), rows, features)
    pctr = loaded.scorer.score(batch) if candidates else []
    outcome = run_auction(
        context,
        candidates,
        pctr,
        reserve_price_micros=state.settings.auction_reserve_price_micros,
        first_price=first_price,
        filtered=filtered,
        bids=index.bids.take(rows),
    )
    if outcome.winner is not None:
        _hold(state, context, outcome, loaded.version)
    latency_ms = (time.perf_counter() - began) * 1000
    record = auction_record(context, outcome, model_version=loaded.version, latency_ms=latency_ms)
    if state.auction_log is not None:
        # Not awaited: the auction log is best effort on the request path; losses are counted.
        state.auction_log.send(Topic.AUCTIONS, context.auction_id, record.model_dump_json().encode())
    state.stats.auction(outcome.filled, outcome.pctr, len(candidates))
    state.metrics.auctions.labels(outcome="filled" if outcome.filled else "no_fill").inc()
    state.metrics.fill_rate.set(state.stats.fill_rate)
    return ServedAd(outcome, loaded.version)


def _hold(state: ServiceState, context: AuctionContext, outcome: AuctionOutcome, model_version: str) -> None:
    winner = outcome.winner
    assert winner is not None
    cost = billable_cost_micros(winner.pricing_model, outcome.clearing_price_micros)
    reserved = expected_cost_micros(
        winner.pricing_model, outcome.clearing_price_micros, outcome.pctr or 0.0, DEFAULT_PCVR
    )
    expires_at = context.at + timedelta(seconds=state.settings.auction_ttl_s)
    state.exposure.reserve(Reservation(context.auction_id, winner.campaign_id, reserved, expires_at))
    state.remember_served(
        store.ServedAuctionRow(
            auction_id=context.auction_id, campaign_id=winner.campaign_id, advertiser_id=winner.advertiser_id,
            ad_id=winner.ad_id, pricing_model=PricingModel(winner.pricing_model).value,
            clearing_price_micros=outcome.clearing_price_micros, billable_cost_micros=cost, reserved_micros=reserved,
            pctr=float(outcome.pctr or 0.0), user_id=context.user_id, device_type=context.device_type,
            channel=context.channel, content_type=context.content_type, model_version=model_version,
            served_at=context.at, expires_at=expires_at,
        )
    )  # fmt: skip


def max_lateness_s(settings: Settings) -> int:
    """How old an event may be when it arrives: half the stream's watermark.

    An older event would be quarantined as late by the stream, so it is refused here and
    never charged: the ledger and silver/feedback_events then hold the same billable events.
    The other half of the watermark absorbs the stream's lag and clock skew.
    """
    return settings.stream_watermark_s // 2


def _rejected(state: ServiceState, event: EventIn, reason: str) -> EventResult:
    state.stats.event("rejected", reason.split(":")[0])
    state.metrics.events.labels(event_type=event.event_type, status="rejected").inc()
    return EventResult(event_id=event.event_id, status="rejected", reason=reason)


async def record_events(state: ServiceState, events: list[EventIn], received_at: datetime) -> list[EventResult]:
    """Validates, publishes (waiting for the acks) and bills a batch of events; one result per event.

    Raises ``BrokerUnavailable`` (``adstream.messaging``) before anything is charged when Kafka does not
    acknowledge in time, and ``LedgerUnavailable`` when the store does not take the charges (then nothing
    is charged either); the client retries both with the same event ids.
    """
    checked: list[tuple[int, EventIn, store.ServedAuctionRow, FeedbackEvent, bool]] = []
    results: dict[int, EventResult] = {}
    served_by_id = {event.auction_id: state.served_in_memory(event.auction_id) for event in events}
    older = [auction_id for auction_id, served in served_by_id.items() if served is None]
    if older:  # the store, in a thread: the event loop does not wait on disk
        served_by_id.update(await asyncio.to_thread(_served_from_store, state, older))
    for index, event in enumerate(events):
        served = served_by_id[event.auction_id]
        event_time = (event.event_time or received_at).astimezone(UTC)
        if served is None:
            results[index] = _rejected(state, event, f"unknown auction_id: no auction {event.auction_id} was served")
            continue
        if event_time > received_at + CLOCK_SKEW:
            results[index] = _rejected(state, event, "event_time is in the future: send the time in UTC")
            continue
        if event_time < received_at - timedelta(seconds=max_lateness_s(state.settings)):
            late = max_lateness_s(state.settings)
            results[index] = _rejected(state, event, f"event_time too old: events must arrive within {late} s")
            continue
        if event_time > served.expires_at:
            ttl = state.settings.auction_ttl_s
            results[index] = _rejected(state, event, f"auction expired: events are accepted for {ttl} s after it")
            continue
        if event_time < served.served_at - CLOCK_SKEW:
            results[index] = _rejected(state, event, "event_time is before its auction: send the time in UTC")
            continue
        billable = BILLABLE_EVENT[PricingModel(served.pricing_model)] == event.event_type
        feedback = FeedbackEvent(
            event_id=event.event_id, event_type=event.event_type, event_time=event_time,
            auction_id=served.auction_id, campaign_id=served.campaign_id, advertiser_id=served.advertiser_id,
            ad_id=served.ad_id, user_id=served.user_id, device_type=served.device_type, channel=served.channel,
            content_type=served.content_type, pricing_model=served.pricing_model,
            cost_micros=served.billable_cost_micros if billable else 0, pctr=served.pctr,
            model_version=served.model_version,
        )  # fmt: skip
        checked.append((index, event, served, feedback, billable))
        results[index] = EventResult(event_id=event.event_id, status="accepted")
    await _publish(state, [feedback for _, _, _, feedback, _ in checked])
    # By position, not event_id: an event sent twice in one batch is charged once, and the copy that
    # was charged must say so.
    billable = [(index, served, feedback) for index, _, served, feedback, billable in checked if billable]
    try:
        charged = await _bill_all(state, billable) if billable else {}
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"the campaign store did not record the charges ({exc.__class__.__name__})") from exc
    for index, outcome in charged.items():
        results[index] = results[index].model_copy(
            update={"status": "duplicate" if outcome is None else "accepted", "charged_micros": outcome or 0}
        )
    for _, event, served, _, _ in checked:
        if event.event_type == "impression" and served.user_id is not None:
            state.frequency.record_impression(served.user_id, served.campaign_id, received_at)
    for index in sorted(results):
        result = results[index]
        if result.status != "rejected":
            state.stats.event(result.status)
            state.metrics.events.labels(event_type=events[index].event_type, status=result.status).inc()
    return [results[index] for index in sorted(results)]


def _served_from_store(state: ServiceState, auction_ids: list[str]) -> dict[str, store.ServedAuctionRow | None]:
    return {auction_id: state.served_auction(auction_id) for auction_id in auction_ids}


async def _publish(state: ServiceState, feedback: list[FeedbackEvent]) -> None:
    if not feedback:
        return
    if state.feedback_log is None:
        raise BrokerUnavailable("no Kafka producer for ad-feedback: the service was not started")
    records = [(event.auction_id, event.model_dump_json().encode()) for event in feedback]
    try:
        await state.feedback_log.publish(Topic.AD_FEEDBACK, records)
    except PublishFailed as exc:
        raise BrokerUnavailable(f"Kafka did not acknowledge the events ({exc})") from exc


async def _bill_all(
    state: ServiceState, billable: list[tuple[int, store.ServedAuctionRow, FeedbackEvent]]
) -> dict[int, int | None]:
    """Charges the billable events; by index, the micros charged, or None for a duplicate (nothing charged)."""
    charges = [_charge_of(served, feedback) for _, served, feedback in billable]
    results = await state.spend_ledger.record(charges)
    charged: dict[int, int | None] = {}
    for (index, served, feedback), result in zip(billable, results, strict=True):
        if result.outcome is not store.SpendOutcome.RECORDED:
            charged[index] = None
            continue
        state.release_when_reloaded(served.auction_id)
        state.metrics.spend.labels(pricing_model=served.pricing_model).inc(feedback.cost_micros)
        charged[index] = feedback.cost_micros
    return charged


def _charge_of(served: store.ServedAuctionRow, feedback: FeedbackEvent) -> store.Charge:
    return store.Charge(
        event_id=feedback.event_id, auction_id=served.auction_id, campaign_id=served.campaign_id,
        event_type=feedback.event_type, cost_micros=feedback.cost_micros, event_time=feedback.event_time,
    )  # fmt: skip
