"""The two hot paths of the service, on top of ``ServiceState``: serve an auction, record an event.

Auction: eligible campaigns -> one scoring batch -> ranked, priced (``auction_service.serving.auction``)
-> the winner's hold in the shared store (its expected cost, its frequency slot and the served auction,
at once; refused, the next best is priced and tried) -> publish the auction to ``auctions``.

Event: check it against the served auction (its signed token, its time) -> journal it, decide
its order and click rules and charge its billable type, in one store transaction
(``auction_service.campaign_store.journal``) -> publish the journaled record to ``ad-feedback``
and wait for the broker's ack -> free the reservation. The journal is the outbox: what Kafka
did not acknowledge (a broker outage, a kill -9 between commit and publish) the relay
(``relay_journal``) publishes later, so the ledger and the lake hold the same events with the same
times. A retry, at any delay, is answered from the journal and charges nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from adstream.contracts import Topic
from adstream.days import DayClock
from adstream.events import (
    BILLABLE_EVENT,
    NOT_DELIVERED,
    ChargeStatus,
    EventType,
    FeedbackEvent,
    PricingModel,
    RefusedEvent,
)
from adstream.messaging import BrokerUnavailable, PublishFailed
from adstream.settings import Settings
from adstream.signing import TokenError, TokenRefused
from auction_service.campaign_store import journal, store
from auction_service.domain import AuctionContext
from auction_service.serving import tracking
from auction_service.serving.auction import (
    DEFAULT_PCVR,
    AuctionOutcome,
    CampaignIndex,
    FilterReason,
    auction_record,
    run_auction,
)
from auction_service.serving.bodies import EventIn, EventResult
from auction_service.serving.books import billable_cost_micros, expected_cost_micros
from auction_service.serving.decisions import platform_of
from auction_service.serving.features import CampaignFeatures, candidate_columns
from auction_service.serving.pacer import Multipliers, throttled_rows
from auction_service.serving.pacing import PPM
from auction_service.serving.shared import Hold, HoldRefused, Settlement
from auction_service.serving.state import PUBLISH_TIMEOUT_S, ServiceState
from ml.calibration import CalibrationKind

log = logging.getLogger(__name__)
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
    auction_id: str
    expires_at: datetime | None = None  # when its events stop being accepted; None without a winner


HOLD_ATTEMPTS = 3  # winners refused by the shared store (another replica took the budget or the cap) before no fill
HOLD_REFUSED = {
    HoldRefused.TOTAL_BUDGET: FilterReason.TOTAL_BUDGET,
    HoldRefused.DAILY_BUDGET: FilterReason.DAILY_BUDGET,
    HoldRefused.FREQUENCY_CAP: FilterReason.FREQUENCY_CAP,
}


async def serve_auction(state: ServiceState, context: AuctionContext, *, first_price: bool = False) -> ServedAd:
    """Runs one auction; raises ``ModelNotReady`` when no model is loaded, ``SharedStoreUnavailable``
    when the shared store does not answer (nothing was held)."""
    began = time.perf_counter()
    loaded = state.model.current  # one snapshot for the whole auction, even if a swap lands meanwhile
    seen = await state.shared.frequency_today_async(context.user_id, context.at.date())
    with state.snapshot_lock:  # the spend of the snapshot and the exposure from the same moment
        snapshot, features = state.campaigns, state.features.current
        campaigns = snapshot.campaigns
        index = CampaignIndex.of(campaigns)
        rows, filtered = index.eligible_rows(
            context,
            impressions_today=seen,
            reserved_micros=state.exposure.reserved_micros,
            held_by_row=state.exposure.held_by_row(index.campaign_ids),
        )
    multipliers = state.pacer.multipliers(campaigns)
    if multipliers.any_throttled:
        sitting_out = throttled_rows(multipliers, rows, state.pacing_draws)
        if sitting_out.any():
            filtered[FilterReason.PACING_THROTTLE] += int(sitting_out.sum())
            rows = rows[~sitting_out]
    placed = None
    decided = state.decisions.table(campaigns).placed_bids(rows, platform_of(context))
    if decided is not None:  # the optimizer's bids for this platform; a paused campaign leaves here
        bidding, placed = decided
        if not bidding.all():
            filtered[FilterReason.OPTIMIZER_PAUSE] += int((~bidding).sum())
            rows = rows[bidding]
    candidates, bids = index.take(rows), index.bids.take(rows)
    if placed is not None:
        bids = bids.with_bids(placed)
    batch = candidate_columns(context, CampaignFeatures.of(campaigns, features), rows, features)
    pctr, raw = loaded.pctrs(batch, bids.pricing, bids.category) if candidates else (np.zeros(0), np.zeros(0))
    cold = state.settings.calibration_cold_start and (
        loaded.calibration is None or loaded.calibration.kind != CalibrationKind.PLATT
    )
    if cold:  # no online map yet: served winners are matched to the prior CTR (ml.calibration.ColdStart)
        pctr = state.cold_start.apply(loaded.version, pctr)
    scored = len(candidates)
    for _ in range(HOLD_ATTEMPTS):
        outcome = run_auction(
            context,
            candidates,
            pctr,
            reserve_price_micros=state.settings.auction_reserve_price_micros,
            first_price=first_price,
            filtered=filtered,
            bids=bids,
            pacing_ppm=_paced(multipliers, rows),
            bid_micros=placed,
        )
        if outcome.winner is None:
            break
        winner_raw = float(raw[np.searchsorted(rows, index.row_of[outcome.winner.campaign_id])])
        expires_at, refused = await _hold(state, context, outcome, loaded.version, winner_raw, snapshot.day)
        if refused is None:
            break
        # Taken meanwhile by another auction (any replica): the winner leaves, the rest are priced again.
        filtered[HOLD_REFUSED[refused]] += 1
        keep = np.array([c.campaign_id != outcome.winner.campaign_id for c in candidates], dtype=bool)
        candidates, pctr, raw, rows, bids = (
            [c for c, k in zip(candidates, keep, strict=True) if k],
            pctr[keep],
            raw[keep],
            rows[keep],
            bids.take(keep),
        )
        placed = None if placed is None else placed[keep]
    else:
        outcome = run_auction(
            context, [], [], reserve_price_micros=state.settings.auction_reserve_price_micros, filtered=filtered
        )
    if outcome.winner is None:
        expires_at, winner_raw = None, None
    elif cold:
        state.cold_start.observe(loaded.version, outcome.pctr or 0.0)
    latency_ms = (time.perf_counter() - began) * 1000
    record = auction_record(context, outcome, model_version=loaded.version, latency_ms=latency_ms, raw_pctr=winner_raw)
    if state.auction_log is not None:
        # Not awaited: the auction log is best effort on the request path; losses are counted.
        state.auction_log.send(Topic.AUCTIONS, context.auction_id, record.model_dump_json().encode())
    state.stats.auction(outcome.filled, outcome.pctr, scored, latency_ms)
    state.metrics.auctions.labels(outcome="filled" if outcome.filled else "no_fill").inc()
    state.metrics.auction_latency.observe(latency_ms / 1000)
    return ServedAd(outcome, loaded.version, context.auction_id, expires_at)


def _paced(multipliers: Multipliers, rows: np.ndarray) -> np.ndarray | None:
    """The candidates' λ, or None when none is paced (the unpaced auction is the cheaper one)."""
    lam = multipliers.lambda_ppm[rows]
    return lam if lam.size and int(lam.min()) < PPM else None


async def _hold(state: ServiceState, context: AuctionContext, outcome: AuctionOutcome, model_version: str,
                raw_pctr: float, ledger_day: date) -> tuple[datetime, HoldRefused | None]:  # fmt: skip
    winner = outcome.winner
    assert winner is not None
    cost = billable_cost_micros(winner.pricing_model, outcome.clearing_price_micros)
    reserved = expected_cost_micros(
        winner.pricing_model, outcome.clearing_price_micros, outcome.pctr or 0.0, DEFAULT_PCVR
    )
    expires_at = context.at + timedelta(seconds=state.settings.auction_ttl_s)
    served = store.ServedAuctionRow(
        auction_id=context.auction_id, campaign_id=winner.campaign_id, advertiser_id=winner.advertiser_id,
        ad_id=winner.ad_id, pricing_model=PricingModel(winner.pricing_model).value,
        clearing_price_micros=outcome.clearing_price_micros, billable_cost_micros=cost, reserved_micros=reserved,
        pctr=float(outcome.pctr or 0.0), user_id=context.user_id, device_type=context.device_type,
        channel=context.channel, content_type=context.content_type, model_version=model_version,
        publisher_id=context.publisher_id, served_at=context.at, expires_at=expires_at, raw_pctr=raw_pctr,
    )  # fmt: skip
    refused = await state.shared.hold_async(
        Hold(
            served, total_budget_micros=winner.total_budget_micros, daily_budget_micros=winner.daily_budget_micros,
            ledger_spent_micros=winner.spent_micros, ledger_spent_today_micros=winner.spent_today_micros,
            frequency_cap=None if context.user_id is None else winner.frequency_cap_per_day, ledger_day=ledger_day,
        )
    )  # fmt: skip
    if refused is None:
        state.remember_served(served)
    return expires_at, refused


def max_lateness_s(settings: Settings) -> int:
    """How old an event may be when it arrives: half the stream's watermark.

    An older event would be quarantined as late by the stream, so it is refused here and
    never charged: the ledger and silver/feedback_events then hold the same billable events.
    The other half of the watermark absorbs the stream's lag and clock skew.
    """
    return settings.stream_watermark_s // 2


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent the request: its agent and address (the event body may state the device's instead)."""

    user_agent: str | None = None
    ip: str | None = None


def _rejected(state: ServiceState, event: EventIn, code: str, message: str, client: Client) -> EventResult:
    state.stats.event("rejected", code)
    state.metrics.events.labels(event_type=event.event_type, status="rejected").inc()
    state.metrics.events_refused.labels(reason=code).inc()
    if state.auction_log is not None:
        # Best effort, like the auction log: a refused event moves no money; losses are counted there.
        refused = RefusedEvent(
            event_id=event.event_id, event_type=event.event_type, auction_id=event.auction_id, reason=code,
            detail=message[:512], refused_at=datetime.now(UTC), user_agent=(event.user_agent or client.user_agent),
            ip=(event.ip or client.ip),
        )  # fmt: skip
        state.auction_log.send(Topic.REFUSED_EVENTS, event.auction_id, refused.model_dump_json().encode())
    return EventResult(event_id=event.event_id, status="rejected", reason=f"{code}: {message}")


def _check(state: ServiceState, event: EventIn, served: store.ServedAuctionRow | None, received_at: datetime
           ) -> tuple[str, str] | None:  # fmt: skip
    """Why the event is refused (a code and what to fix), or None when it is a signed, timely event of its auction."""
    if served is None:
        return "unknown_auction", f"no auction {event.auction_id} was served"
    if event.billing_notice and event.event_type != EventType.IMPRESSION:
        return "billing_notice_not_impression", "a billing notice records an impression: send event_type impression"
    # A billing token is signed over the bid request's device as its burl states it (tracking.billing_event_type).
    device = tracking.device_parameters(event.ip, event.user_agent) if event.billing_notice else None
    try:
        signed_as = event.event_type if device is None else tracking.billing_event_type(device)
        state.signer.verify(event.token, event.auction_id, signed_as, served.campaign_id, received_at.timestamp())
    except TokenRefused as exc:
        if device is not None and exc.error is TokenError.BAD_SIGNATURE:
            return exc.error.value, (
                f"{exc}: a billing notice's token covers the device_ip and device_ua of its burl (ip and "
                "user_agent here), no more and no less: fire the burl as given"
            )
        return exc.error.value, str(exc)
    event_time = (event.event_time or received_at).astimezone(UTC)
    late = max_lateness_s(state.settings)
    if event_time > received_at + CLOCK_SKEW:
        return "event_time_future", "event_time is in the future: send the time in UTC"
    if event_time < received_at - timedelta(seconds=late):
        return "event_time_too_old", f"event_time too old: events must arrive within {late} s"
    if event_time > served.expires_at:
        return "auction_expired", f"events are accepted for {state.settings.auction_ttl_s} s after the auction"
    if event_time < served.served_at - CLOCK_SKEW:
        return "event_time_before_auction", "event_time is before its auction: send the time in UTC"
    if event.event_type == EventType.WIN:
        return _win_price_problem(event, served)
    return None


def _win_price_problem(event: EventIn, served: store.ServedAuctionRow) -> tuple[str, str] | None:
    """A win notice must state the exchange's price, and the price cannot pass what we bid: a second-price
    exchange charges at most the bid, and a notice above it is a mistake or an attack on our media cost."""
    price = event.exchange_price_cpm_micros
    if price is None:
        return "win_price_missing", "a win notice states the clearing price: price=${AUCTION_PRICE}, USD CPM"
    bid_cpm = served.clearing_price_micros  # CPM: the price we bid, per thousand impressions
    if served.pricing_model != PricingModel.CPM:  # the bid's CPM is price x pCTR (x pCVR) x 1000; 1 % slack
        value = served.pctr * (DEFAULT_PCVR if served.pricing_model == PricingModel.CPA else 1.0)
        bid_cpm = math.ceil(served.clearing_price_micros * value * 1000 * 1.01)
    if price > bid_cpm:
        return "win_price_above_bid", f"price {price / 1e6:.6f} is above our bid of {bid_cpm / 1e6:.6f} USD CPM"
    return None


async def record_events(
    state: ServiceState, events: list[EventIn], received_at: datetime, client: Client = Client()
) -> list[EventResult]:
    """Checks, journals and charges (one transaction), then publishes a batch of events; one result per event.

    Raises ``LedgerUnavailable`` when the store does not take the batch (nothing was journaled
    or charged), and ``BrokerUnavailable`` (``adstream.messaging``) when Kafka does not acknowledge
    in time: then the events are journaled and charged already, and the relay publishes them;
    the client retries both with the same event ids, and a retry is answered from the journal.
    """
    results: dict[int, EventResult] = {}
    entries: list[tuple[int, journal.JournalEntry]] = []
    # The shared store first: any replica may have served them; the shared store down is a 503 before
    # anything is journaled or charged.
    served_by_id = await state.shared.served_async(list({event.auction_id: None for event in events}))
    older = [auction_id for auction_id, served in served_by_id.items() if served is None]
    if older:  # the campaign store, in a thread: the event loop does not wait on disk
        served_by_id.update(await asyncio.to_thread(_served_from_store, state, older))
    for index, event in enumerate(events):
        served = served_by_id[event.auction_id]
        refused = _check(state, event, served, received_at)
        if refused is not None:
            results[index] = _rejected(state, event, *refused, client)
            continue
        assert served is not None
        billable = BILLABLE_EVENT[PricingModel(served.pricing_model)] == event.event_type
        user_agent = event.user_agent if event.user_agent is not None else client.user_agent
        ip = event.ip or client.ip
        if event.billing_notice:  # the signed device alone: the caller is the exchange's server, not the device
            user_agent, ip = event.user_agent, event.ip
        feedback = FeedbackEvent(
            event_id=event.event_id, event_type=event.event_type,
            event_time=(event.event_time or received_at).astimezone(UTC), auction_id=served.auction_id,
            campaign_id=served.campaign_id, advertiser_id=served.advertiser_id, ad_id=served.ad_id,
            user_id=served.user_id, device_type=served.device_type, channel=served.channel,
            content_type=served.content_type, pricing_model=served.pricing_model,
            cost_micros=served.billable_cost_micros if billable else 0, pctr=served.pctr,
            model_version=served.model_version, publisher_id=served.publisher_id, user_agent=user_agent, ip=ip,
            raw_pctr=served.raw_pctr, exchange_price_cpm_micros=event.exchange_price_cpm_micros,
        )  # fmt: skip
        # Win and billing notices come from the exchange's servers, not the user's device: the caller's agent
        # and address say nothing of the device (the bid request's was screened before the auction). A billing
        # notice records the device its token was signed over (checked above) as its agent and address instead.
        from_exchange = event.event_type == EventType.WIN or event.billing_notice
        ivt = None if from_exchange else state.request_ivt.reason(user_agent, ip)
        entries.append((index, journal.JournalEntry(feedback, billable, ivt)))
    try:
        journaled = await state.spend_ledger.record([entry for _, entry in entries]) if entries else []
    except (SQLAlchemyError, journal.JournalConflict) as exc:
        raise LedgerUnavailable(f"the campaign store did not record the events ({exc.__class__.__name__})") from exc
    days = DayClock.of(state.settings)
    settled = [_settlement(r, days) for r in journaled if r.event.charge_status in SETTLED]
    if settled:
        # After the commit: a charge the shared store missed (it went down, or this replica was killed)
        # is answered 503, and the retry frees its reservation; every hold heals the spend from the ledger.
        await state.shared.settle_async(settled)
    unpublished = {result.event.event_id: result.event for result in journaled if not result.published}
    await _publish(state, list(unpublished.values()))
    for (index, entry), result in zip(entries, journaled, strict=True):
        results[index] = _accepted(state, entry, result, received_at)
    for index in sorted(results):
        result = results[index]
        if result.status != "rejected":
            state.stats.event(result.status)
            state.metrics.events.labels(event_type=events[index].event_type, status=result.status).inc()
    return [results[index] for index in sorted(results)]


def _accepted(state: ServiceState, entry: journal.JournalEntry, result: journal.JournalResult, received_at: datetime
              ) -> EventResult:  # fmt: skip
    event = result.event
    status = ChargeStatus(event.charge_status) if event.charge_status else None
    if result.new:
        state.metrics.events_charged.labels(charge_status=str(status)).inc()
        if event.ivt_reason:
            state.metrics.events_ivt.labels(reason=event.ivt_reason).inc()
        if status is ChargeStatus.CHARGED:
            state.metrics.spend.labels(pricing_model=event.pricing_model).inc(event.cost_micros)
        if event.ivt_category is None and event.charge_status not in NOT_DELIVERED:
            _count_calibration(state, event)
    return EventResult(
        event_id=entry.event.event_id, status="accepted" if result.new else "duplicate",
        reason=None if status in (None, ChargeStatus.CHARGED) else NOT_CHARGED[status],
        charged_micros=event.cost_micros if result.new else 0, charge_status=status,
        ivt_category=event.ivt_category, ivt_reason=event.ivt_reason, campaign_id=event.campaign_id,
    )  # fmt: skip


def _count_calibration(state: ServiceState, event: FeedbackEvent) -> None:
    """Observed and expected clicks of a delivered event, as the lake's gold/calibration counts them
    (an impression expects its pCTR; a click is observed), for live observed / expected per replica."""
    labels = {"model_version": event.model_version or "unknown", "pricing_model": event.pricing_model}
    if event.event_type == EventType.IMPRESSION and event.pctr is not None:
        state.metrics.expected_clicks.labels(**labels).inc(event.pctr)
    elif event.event_type == EventType.CLICK:
        state.metrics.observed_clicks.labels(**labels).inc()


NOT_CHARGED = {
    ChargeStatus.NOT_BILLABLE: "not the event type its campaign pays for",
    ChargeStatus.DUPLICATE_AUCTION: "its auction's billable event was charged already",
    ChargeStatus.OVER_BUDGET: "charging it would pass its campaign's budget",
    ChargeStatus.OUT_OF_ORDER: "no impression (for a click) or click (for a conversion) of its auction came before it",
    ChargeStatus.INVALID_TRAFFIC: "general invalid traffic (see ivt_reason)",
    ChargeStatus.UNKNOWN_CAMPAIGN: "its campaign is not in the store",
}


SETTLED = (ChargeStatus.CHARGED, ChargeStatus.OVER_BUDGET)


def _settlement(result: journal.JournalResult, days: DayClock) -> Settlement:
    event, spend = result.event, result.spend
    return Settlement(
        event.auction_id, event.campaign_id, days.budget_day(event.event_time),
        -1 if spend is None else spend.spent_micros, -1 if spend is None else spend.spent_today_micros,
    )  # fmt: skip


def _served_from_store(state: ServiceState, auction_ids: list[str]) -> dict[str, store.ServedAuctionRow | None]:
    return state.served_in_campaign_store(auction_ids)


async def _publish(state: ServiceState, feedback: list[FeedbackEvent]) -> None:
    if not feedback:
        return
    if state.feedback_log is None:
        raise BrokerUnavailable("no Kafka producer for ad-feedback: the service was not started")
    records = [(event.auction_id, event.model_dump_json().encode()) for event in feedback]
    try:
        await state.feedback_log.publish(Topic.AD_FEEDBACK, records)
    except PublishFailed as exc:
        raise BrokerUnavailable(f"Kafka did not acknowledge the events ({exc}); they are recorded") from exc
    state.spend_ledger.acknowledged([event.event_id for event in feedback])


RELAY_EVERY_S = 2.0


async def relay_journal(state: ServiceState, every_s: float = RELAY_EVERY_S) -> None:
    """Publishes journaled events Kafka never acknowledged, and marks the acknowledged ones; runs until cancelled.

    A row is relayed once it is older than a request's own publish could still be waiting, so a
    healthy request's events are not sent twice; when they are (a slow ack, several replicas), the
    stream keeps one copy per event_id.
    """
    while True:
        try:
            await relay_once(state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store or broker outage: the next round retries
            log.warning("journal relay: %s", exc)
        await asyncio.sleep(every_s)


async def relay_once(state: ServiceState, limit: int = 1000) -> int:
    """One round of ``relay_journal``; returns how many events it published."""
    if state.feedback_log is None:
        return 0
    wait = timedelta(seconds=PUBLISH_TIMEOUT_S + 3)
    rows = await asyncio.to_thread(_unpublished, state, datetime.now(UTC) - wait, limit)
    if rows:
        await state.feedback_log.publish(
            Topic.AD_FEEDBACK, [(auction_id, payload.encode()) for _, auction_id, payload in rows]
        )
        state.spend_ledger.acknowledged([event_id for event_id, _, _ in rows])
        state.metrics.journal_relayed.inc(len(rows))
    acked = state.spend_ledger.take_acknowledged()
    if acked:
        try:
            await asyncio.to_thread(_mark_published, state, acked)
        except BaseException:
            state.spend_ledger.acknowledged(acked)
            raise
    return len(rows)


def _unpublished(state: ServiceState, before: datetime, limit: int) -> list[tuple[str, str, str]]:
    with state.sessions() as session:
        return journal.unpublished(session, before, limit)


def _mark_published(state: ServiceState, event_ids: list[str]) -> None:
    with state.sessions() as session:
        journal.mark_published(session, event_ids)
