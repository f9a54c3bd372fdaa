"""All access to the campaign store, in one module, with SQLAlchemy expressions only (no SQL from strings).

Writers commit their own transaction (one unit of work per call) and begin it with
``db.begin_write`` so SQLite takes the write lock up front. Counters move with
``UPDATE … SET x = x + :n`` in the database, never read-modify-write in Python, and
every spend transaction locks the campaign row first, so concurrent writers queue on
it (PostgreSQL) or on the database lock (SQLite) and no update is lost.
"""

from __future__ import annotations

import functools
import operator
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Insert, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adstream.days import UTC_DAYS, DayClock
from adstream.events import (
    AudienceSplit,
    CampaignGoals,
    CampaignInstruction,
    CampaignSpec,
    CampaignStatus,
    Creative,
    Deal,
    InstructionAction,
    PacingMode,
    PricingModel,
)
from auction_service.campaign_store.db import begin_write
from auction_service.campaign_store.tables import (
    AppliedInstruction,
    Campaign,
    DailySpend,
    QuarantinedInstruction,
    ServedAuction,
    SpendLedgerEntry,
    UtcDateTime,
)
from auction_service.domain import DEFAULT_CREATIVE, NO_GOALS, ServingCampaign

P = ParamSpec("P")
R = TypeVar("R")


class ApplyOutcome(StrEnum):
    CREATED = "created"
    STOPPED = "stopped"
    ALREADY_APPLIED = "already applied"  # this instruction_id was applied before: nothing changes
    CAMPAIGN_EXISTS = "campaign exists"  # a create for a campaign_id that another instruction created
    UNKNOWN_CAMPAIGN = "unknown campaign"  # a stop for a campaign the store never saw
    ALREADY_STOPPED = "already stopped"  # stopping is final; a second stop changes nothing


@dataclass(frozen=True, slots=True)
class ApplyResult:
    instruction_id: str
    campaign_id: str
    outcome: ApplyOutcome

    @property
    def changed(self) -> bool:
        return self.outcome in (ApplyOutcome.CREATED, ApplyOutcome.STOPPED)


class SpendOutcome(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # this event_id was charged before: nothing is charged again
    UNKNOWN_CAMPAIGN = "unknown campaign"
    OVER_BUDGET = "over budget"  # charging it would pass the total or the day's budget: nothing is charged


@dataclass(frozen=True, slots=True)
class SpendResult:
    """The campaign after the charge. A charge never takes spend past a budget: it is refused (OVER_BUDGET)."""

    outcome: SpendOutcome
    campaign_id: str
    spent_micros: int = 0
    remaining_micros: int = 0
    spent_today_micros: int = 0  # the event's UTC day
    daily_remaining_micros: int = 0


class CampaignView(BaseModel):
    """A campaign as its manager sees it (``show``, ``GET /v1/campaigns/{id}``)."""

    model_config = ConfigDict(frozen=True)

    campaign_id: str
    status: CampaignStatus
    spec: CampaignSpec
    spent_micros: int
    remaining_budget_micros: int
    spent_today_micros: int | None = None  # only when asked for a day
    created_at: AwareDatetime
    updated_at: AwareDatetime
    last_instruction_id: str


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw_value: bytes | None
    reason: str
    quarantined_at: datetime


def fresh_read(function: Callable[Concatenate[Session, P], R]) -> Callable[Concatenate[Session, P], R]:
    """Make a read end the transaction it began, so the next read sees newer commits.

    A SQLite transaction reads one snapshot for its whole life: a service that kept one
    open would never see the change marker move. Reads return plain values, so nothing is lost.
    """

    @functools.wraps(function)
    def read(session: Session, *args: P.args, **kwargs: P.kwargs) -> R:
        began = not session.in_transaction()
        try:
            return function(session, *args, **kwargs)
        finally:
            if began:
                session.rollback()

    return read


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _budget_day(moment: datetime, days: DayClock) -> date:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass a UTC-aware time")
    return days.budget_day(moment)


# --- campaign instructions (the ad manager) ---


def apply_instruction(session: Session, instruction: CampaignInstruction) -> ApplyResult:
    """Apply one campaign instruction exactly once and commit, recording it in ``applied_instructions``."""
    try:
        outcome = _apply_in_transaction(session, instruction)
    except IntegrityError:
        # PostgreSQL: a concurrent writer applied the same instruction or created the same campaign
        # first. Its commit is visible now, so applying again gives the replay's answer.
        outcome = _apply_in_transaction(session, instruction)
    return ApplyResult(instruction.instruction_id, instruction.campaign_id, outcome)


def _apply_in_transaction(session: Session, instruction: CampaignInstruction) -> ApplyOutcome:
    begin_write(session)
    try:
        outcome = _apply(session, instruction)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return outcome


def _apply(session: Session, instruction: CampaignInstruction) -> ApplyOutcome:
    if session.get(AppliedInstruction, instruction.instruction_id) is not None:
        return ApplyOutcome.ALREADY_APPLIED
    now = _utcnow()
    if instruction.action == InstructionAction.CREATE:
        outcome = _create(session, instruction, now)
    else:
        outcome = _stop(session, instruction, now)
    # Recorded whatever the outcome, so a refused instruction is not retried forever.
    session.add(
        AppliedInstruction(
            instruction_id=instruction.instruction_id,
            campaign_id=instruction.campaign_id,
            action=str(instruction.action),
            outcome=str(outcome),
            applied_at=now,
        )
    )
    session.flush()
    return outcome


def _create(session: Session, instruction: CampaignInstruction, now: datetime) -> ApplyOutcome:
    if session.get(Campaign, instruction.campaign_id) is not None:
        return ApplyOutcome.CAMPAIGN_EXISTS
    spec = instruction.campaign
    assert spec is not None  # CampaignInstruction validates that a create carries its campaign
    session.add(
        Campaign(
            campaign_id=instruction.campaign_id,
            advertiser_id=spec.advertiser_id,
            ad_id=spec.ad_id,
            category=spec.category,
            targeting=spec.targeting.model_dump(mode="json"),
            pricing_model=str(spec.pricing_model),
            bid_micros=spec.bid_micros,
            total_budget_micros=spec.total_budget_micros,
            daily_budget_micros=spec.daily_budget_micros,
            flight_start=spec.flight_start,
            flight_end=spec.flight_end,
            frequency_cap_per_day=spec.frequency_cap_per_day,
            currency=spec.currency,
            pacing_mode=PacingMode(spec.pacing_mode).value,
            goals=None if spec.goals == NO_GOALS else spec.goals.model_dump(mode="json"),
            creative=None if spec.creative == DEFAULT_CREATIVE else spec.creative.model_dump(mode="json"),
            deals=[deal.model_dump(mode="json") for deal in spec.deals] or None,
            status=CampaignStatus.ACTIVE.value,
            spent_micros=0,
            revision=1,
            created_at=now,
            updated_at=now,
            last_instruction_id=instruction.instruction_id,
        )
    )
    return ApplyOutcome.CREATED


def _stop(session: Session, instruction: CampaignInstruction, now: datetime) -> ApplyOutcome:
    stopped = session.execute(
        update(Campaign)
        .where(Campaign.campaign_id == instruction.campaign_id, Campaign.status != CampaignStatus.STOPPED.value)
        .values(
            status=CampaignStatus.STOPPED.value,
            updated_at=now,
            revision=Campaign.revision + 1,
            last_instruction_id=instruction.instruction_id,
        )
    )
    if stopped.rowcount == 1:
        return ApplyOutcome.STOPPED
    if session.get(Campaign, instruction.campaign_id) is None:
        return ApplyOutcome.UNKNOWN_CAMPAIGN
    return ApplyOutcome.ALREADY_STOPPED


def quarantine_instruction(
    session: Session,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw_value: bytes | None,
    reason: str,
) -> bool:
    """Keep a record the ad manager cannot apply, and commit. False if that record was already quarantined."""
    begin_write(session)
    try:
        session.execute(
            insert(QuarantinedInstruction).values(
                topic=topic,
                partition=partition,
                offset=offset,
                key=key,
                raw_value=raw_value,
                reason=reason,
                quarantined_at=_utcnow(),
            )
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    except BaseException:
        session.rollback()
        raise
    return True


@fresh_read
def quarantined_instructions(session: Session) -> list[QuarantinedRecord]:
    """Every quarantined record, in topic order."""
    rows = session.scalars(
        select(QuarantinedInstruction).order_by(
            QuarantinedInstruction.topic, QuarantinedInstruction.partition, QuarantinedInstruction.offset
        )
    )
    return [
        QuarantinedRecord(
            topic=row.topic,
            partition=row.partition,
            offset=row.offset,
            key=row.key,
            raw_value=row.raw_value,
            reason=row.reason,
            quarantined_at=row.quarantined_at,
        )
        for row in rows
    ]


# --- reads for managers and for the auction ---


@fresh_read
def get_campaign(
    session: Session, campaign_id: str, *, now: datetime | None = None, days: DayClock = UTC_DAYS
) -> CampaignView | None:
    """The campaign with its spend, or None if the store never saw it. ``now`` adds the spend of its budget
    day (``adstream.days``: the UTC day unless the simulation says otherwise)."""
    # populate_existing: a session reused across transactions must not answer from its identity map.
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        return None
    spent_today = None
    if now is not None:
        spent_today = session.scalar(
            select(DailySpend.spent_micros).where(
                DailySpend.campaign_id == campaign_id, DailySpend.day == _budget_day(now, days)
            )
        )
        spent_today = spent_today or 0
    return CampaignView(
        campaign_id=campaign.campaign_id,
        status=CampaignStatus(campaign.status),
        spec=CampaignSpec(
            advertiser_id=campaign.advertiser_id,
            ad_id=campaign.ad_id,
            category=campaign.category,
            targeting=campaign.targeting,
            pricing_model=PricingModel(campaign.pricing_model),
            bid_micros=campaign.bid_micros,
            total_budget_micros=campaign.total_budget_micros,
            daily_budget_micros=campaign.daily_budget_micros,
            flight_start=campaign.flight_start,
            flight_end=campaign.flight_end,
            frequency_cap_per_day=campaign.frequency_cap_per_day,
            currency=campaign.currency,
            pacing_mode=PacingMode(campaign.pacing_mode),
            goals=_goals(campaign.goals),
            creative=_creative(campaign.creative),
            deals=[Deal(**deal) for deal in campaign.deals or ()],
        ),
        spent_micros=campaign.spent_micros,
        remaining_budget_micros=max(0, campaign.total_budget_micros - campaign.spent_micros),
        spent_today_micros=spent_today,
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        last_instruction_id=campaign.last_instruction_id,
    )


_SERVING_COLUMNS = (
    Campaign.campaign_id,
    Campaign.advertiser_id,
    Campaign.ad_id,
    Campaign.category,
    Campaign.pricing_model,
    Campaign.bid_micros,
    Campaign.flight_start,
    Campaign.flight_end,
    Campaign.frequency_cap_per_day,
    Campaign.status,
    Campaign.total_budget_micros,
    Campaign.daily_budget_micros,
    Campaign.spent_micros,
    Campaign.targeting,
    Campaign.pacing_mode,
    Campaign.goals,
    Campaign.creative,
    Campaign.deals,
)


def _serving(now: datetime) -> ColumnElement[bool]:
    return and_(Campaign.status == CampaignStatus.ACTIVE.value, Campaign.flight_end > now)


@fresh_read
def serving_revisions(session: Session, now: datetime) -> dict[str, int]:
    """The revision of each campaign ``serving_campaigns`` returns: which of them changed since a load."""
    return dict(session.execute(select(Campaign.campaign_id, Campaign.revision).where(_serving(now))).tuples().all())


@fresh_read
def serving_campaigns(
    session: Session, now: datetime, only: Collection[str] | None = None, days: DayClock = UTC_DAYS
) -> list[ServingCampaign]:
    """Active campaigns whose flight has not ended at ``now``, with their spend on ``now``'s budget day.

    One query (campaigns left-joined to that day's spend), plain columns rather than ORM
    objects: the auction service calls it every time the change marker moves, for the
    campaigns in ``only`` when it knows which changed. Budget, flight start and targeting are
    left to the auction, which checks them per request.
    """
    today = _budget_day(now, days)
    serving = _serving(now) if only is None else and_(_serving(now), Campaign.campaign_id.in_(only))
    rows = session.execute(
        select(*_SERVING_COLUMNS, func.coalesce(DailySpend.spent_micros, 0))
        .outerjoin(DailySpend, and_(DailySpend.campaign_id == Campaign.campaign_id, DailySpend.day == today))
        .where(serving)
        .order_by(Campaign.campaign_id)
    )
    campaigns = []
    for (
        campaign_id,
        advertiser_id,
        ad_id,
        category,
        pricing_model,
        bid_micros,
        flight_start,
        flight_end,
        frequency_cap_per_day,
        status,
        total_budget_micros,
        daily_budget_micros,
        spent_micros,
        targeting,
        pacing_mode,
        goals,
        creative,
        deals,
        spent_today_micros,
    ) in rows:
        campaigns.append(
            ServingCampaign(
                campaign_id=campaign_id,
                advertiser_id=advertiser_id,
                ad_id=ad_id,
                category=category,
                pricing_model=PricingModel(pricing_model),
                bid_micros=bid_micros,
                flight_start=flight_start,
                flight_end=flight_end,
                frequency_cap_per_day=frequency_cap_per_day,
                status=CampaignStatus(status),
                total_budget_micros=total_budget_micros,
                daily_budget_micros=daily_budget_micros,
                spent_micros=spent_micros,
                spent_today_micros=spent_today_micros,
                countries=frozenset(targeting.get("countries") or ()),
                age_min=targeting.get("age_min"),
                age_max=targeting.get("age_max"),
                genders=frozenset(targeting.get("genders") or ()),
                device_types=frozenset(targeting.get("device_types") or ()),
                audience_split=AudienceSplit(**split) if (split := targeting.get("audience_split")) else None,
                pacing_mode=PacingMode(pacing_mode or PacingMode.EVEN),
                goals=_goals(goals),
                creative=_creative(creative),
                deals=tuple(Deal(**deal) for deal in deals or ()),
            )
        )
    return campaigns


def _goals(stored: dict[str, Any] | None) -> CampaignGoals:
    return NO_GOALS if not stored else CampaignGoals(**stored)


def _creative(stored: dict[str, Any] | None) -> Creative:
    return DEFAULT_CREATIVE if not stored else Creative(**stored)


@fresh_read
def campaign_change_marker(session: Session) -> tuple[int, int]:
    """A cheap value that changes whenever a campaign is created, stopped or charged.

    (campaign count, sum of per-campaign revisions): every change bumps one campaign's
    revision in the same transaction, so the pair only moves forward. It does not
    move at UTC midnight, when daily spend starts again from zero: a cache of
    ``serving_campaigns`` should also reload when the UTC day changes.
    """
    count, revisions = session.execute(select(func.count(), func.coalesce(func.sum(Campaign.revision), 0))).one()
    return int(count), int(revisions)


# --- spend (the auction service, per billable event) ---


# The statements of record_spend, built once: building and hashing a statement per billable
# event cost more than running it. Core (table-level) statements: there are no ORM objects to sync.
_CAMPAIGNS, _DAILY_SPEND = Campaign.__table__, DailySpend.__table__
# Guarded: the row is updated (and locked) only when the charge fits the total budget; a charge that
# does not fit changes nothing and is recorded as non-billable by the caller. Zero overspend, whatever
# the pricing model, because the check and the increment are one statement on the locked row.
_CHARGE_CAMPAIGN = (
    update(_CAMPAIGNS)
    .where(
        _CAMPAIGNS.c.campaign_id == bindparam("b_campaign_id"),
        _CAMPAIGNS.c.spent_micros + bindparam("b_cost") <= _CAMPAIGNS.c.total_budget_micros,
    )
    .values(
        spent_micros=_CAMPAIGNS.c.spent_micros + bindparam("b_cost"),
        revision=_CAMPAIGNS.c.revision + 1,
        updated_at=bindparam("b_now", type_=_CAMPAIGNS.c.updated_at.type),
    )
    .returning(_CAMPAIGNS.c.spent_micros, _CAMPAIGNS.c.total_budget_micros, _CAMPAIGNS.c.daily_budget_micros)
)
_UNDO_CHARGE = (
    update(_CAMPAIGNS)
    .where(_CAMPAIGNS.c.campaign_id == bindparam("b_campaign_id"))
    .values(spent_micros=_CAMPAIGNS.c.spent_micros - bindparam("b_cost"), revision=_CAMPAIGNS.c.revision - 1)
)
_CHARGE_DAY = (
    update(_DAILY_SPEND)
    .where(
        _DAILY_SPEND.c.campaign_id == bindparam("b_campaign_id"),
        _DAILY_SPEND.c.day == bindparam("b_day", type_=_DAILY_SPEND.c.day.type),
        _DAILY_SPEND.c.spent_micros + bindparam("b_cost") <= bindparam("b_daily_budget"),
    )
    .values(spent_micros=_DAILY_SPEND.c.spent_micros + bindparam("b_cost"))
    .returning(_DAILY_SPEND.c.spent_micros)
)
_DAY_WHERE = (
    _DAILY_SPEND.c.campaign_id == bindparam("b_campaign_id"),
    _DAILY_SPEND.c.day == bindparam("b_day", type_=_DAILY_SPEND.c.day.type),
)
_UNDO_DAY = (
    update(_DAILY_SPEND).where(*_DAY_WHERE).values(spent_micros=_DAILY_SPEND.c.spent_micros - bindparam("b_cost"))
)
_SPENT_ON_DAY = select(_DAILY_SPEND.c.spent_micros).where(*_DAY_WHERE)
_DAY_INSERT = insert(_DAILY_SPEND)
_LEDGER = SpendLedgerEntry.__table__
_BILLED = select(_LEDGER.c.event_id, _LEDGER.c.auction_id).where(
    _LEDGER.c.event_id.in_(bindparam("b_event_ids", expanding=True))
    | _LEDGER.c.auction_id.in_(bindparam("b_auction_ids", expanding=True))
)


def _insert_new(session: Session, table: Table) -> Insert:
    """INSERT .. ON CONFLICT DO NOTHING RETURNING the key: a row that breaks any unique key is
    skipped, and only the rows inserted come back (on SQLite and PostgreSQL alike)."""
    return _insert_new_for(session.get_bind().dialect.name, table)


@functools.cache
def _insert_new_for(dialect_name: str, table: Table) -> Insert:
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[dialect_name]
    return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


@dataclass(frozen=True, slots=True)
class Charge:
    """One billable event to charge: ``cost_micros`` to ``campaign_id``, once per event_id and per auction."""

    event_id: str
    auction_id: str
    campaign_id: str
    event_type: str
    cost_micros: int
    event_time: datetime


def record_spend(
    session: Session,
    *,
    event_id: str,
    auction_id: str,
    campaign_id: str,
    event_type: str,
    cost_micros: int,
    event_time: datetime,
) -> SpendResult:
    """Charge one billable event, once, in one committed transaction; see ``record_spends``."""
    charge = Charge(event_id, auction_id, campaign_id, event_type, cost_micros, event_time)
    return record_spends(session, [charge])[0]


def record_spends(session: Session, charges: Sequence[Charge], days: DayClock = UTC_DAYS) -> list[SpendResult]:
    """Charge billable events to their campaigns, each once, in one committed transaction; a result per charge.

    Per charge, the ledger row (unique on event_id and on auction_id), the campaign's total
    and the event's budget day (``adstream.days``) move together. A replayed event, or a second event of an auction
    already billed (also within ``charges``), charges nothing and reports ``duplicate`` with
    the campaign's spend. A batch is one commit however many charges it holds: the auction
    service groups the charges of concurrent requests this way.
    """
    for charge in charges:
        if charge.cost_micros < 0:
            raise ValueError(f"cost_micros must be >= 0, got {charge.cost_micros}")
    days = [_budget_day(charge.event_time, days) for charge in charges]
    now = _utcnow()
    results: list[SpendResult | None] = [None] * len(charges)
    ledger_insert = _insert_new(session, _LEDGER)
    begin_write(session)
    try:
        # One look at the ledger for the whole batch; then a replay touches no campaign row.
        event_ids, auction_ids = {c.event_id for c in charges}, {c.auction_id for c in charges}
        billed = session.execute(_BILLED, {"b_event_ids": list(event_ids), "b_auction_ids": list(auction_ids)}).all()
        billed_events, billed_auctions = {row.event_id for row in billed}, {row.auction_id for row in billed}
        # In (campaign, event) order: concurrent batches then take row locks in one order (PostgreSQL).
        for index in sorted(range(len(charges)), key=lambda i: (charges[i].campaign_id, charges[i].event_id)):
            charge, day = charges[index], days[index]
            if charge.event_id in billed_events or charge.auction_id in billed_auctions:
                results[index] = _current_spend(session, SpendOutcome.DUPLICATE, charge.campaign_id, day)
                continue
            results[index] = result = _charge(session, ledger_insert, charge, day, now)
            if result.outcome is SpendOutcome.RECORDED:
                billed_events.add(charge.event_id)
                billed_auctions.add(charge.auction_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return results  # type: ignore[return-value]


def _charge(session: Session, ledger_insert: Insert, charge: Charge, day: date, now: datetime) -> SpendResult:
    # The campaign row first: it is the lock every spend on this campaign queues on, and the
    # ledger's foreign key needs the campaign to exist.
    amount = {"b_campaign_id": charge.campaign_id, "b_cost": charge.cost_micros}
    charged = session.execute(_CHARGE_CAMPAIGN, {**amount, "b_now": now}).one_or_none()
    if charged is None:
        if session.get(Campaign, charge.campaign_id) is None:
            return SpendResult(SpendOutcome.UNKNOWN_CAMPAIGN, charge.campaign_id)
        return _current_spend(session, SpendOutcome.OVER_BUDGET, charge.campaign_id, day)
    spent, total_budget, daily_budget = charged
    day_amount = {**amount, "b_day": day, "b_daily_budget": daily_budget}
    spent_today = session.execute(_CHARGE_DAY, day_amount).scalar_one_or_none()
    if spent_today is None:
        # No row for that day, or one the charge does not fit. The campaign row lock taken above means
        # no concurrent insert can race this one.
        has_day = session.execute(_SPENT_ON_DAY, day_amount).first() is not None
        if has_day or charge.cost_micros > daily_budget:
            session.execute(_UNDO_CHARGE, amount)
            return _current_spend(session, SpendOutcome.OVER_BUDGET, charge.campaign_id, day)
        session.execute(
            _DAY_INSERT, {"campaign_id": charge.campaign_id, "day": day, "spent_micros": charge.cost_micros}
        )
        spent_today = charge.cost_micros
    row = {
        "event_id": charge.event_id, "auction_id": charge.auction_id, "campaign_id": charge.campaign_id,
        "event_type": str(charge.event_type), "cost_micros": charge.cost_micros, "event_time": charge.event_time,
        "recorded_at": now,
    }  # fmt: skip
    if session.execute(ledger_insert, row).first() is None:
        # Billed by a concurrent transaction since the look at the ledger (PostgreSQL; SQLite's writer
        # holds the database): take this charge back, the batch's other charges stand.
        session.execute(_UNDO_CHARGE, amount)
        session.execute(_UNDO_DAY, day_amount)
        return _current_spend(session, SpendOutcome.DUPLICATE, charge.campaign_id, day)
    return _spend_result(SpendOutcome.RECORDED, charge.campaign_id, spent, total_budget, spent_today, daily_budget)


def _current_spend(session: Session, outcome: SpendOutcome, campaign_id: str, day: date) -> SpendResult:
    row = session.execute(
        select(
            Campaign.spent_micros,
            Campaign.total_budget_micros,
            Campaign.daily_budget_micros,
            func.coalesce(DailySpend.spent_micros, 0),
        )
        .outerjoin(DailySpend, and_(DailySpend.campaign_id == Campaign.campaign_id, DailySpend.day == day))
        .where(Campaign.campaign_id == campaign_id)
    ).one()
    spent, total_budget, daily_budget, spent_today = row
    return _spend_result(outcome, campaign_id, spent, total_budget, spent_today, daily_budget)


def _spend_result(
    outcome: SpendOutcome, campaign_id: str, spent: int, total_budget: int, spent_today: int, daily_budget: int
) -> SpendResult:
    return SpendResult(
        outcome,
        campaign_id,
        spent_micros=spent,
        remaining_micros=max(0, total_budget - spent),
        spent_today_micros=spent_today,
        daily_remaining_micros=max(0, daily_budget - spent_today),
    )


@fresh_read
def spend_by_campaign_hour(session: Session, start: datetime, end: datetime) -> dict[tuple[str, datetime], int]:
    """Ledger spend per (campaign, UTC hour start) for events in ``[start, end)``, in integer micros.

    Hours are cut in Python rather than with a dialect's date function, so SQLite and
    PostgreSQL give the same answer; the ledger is read in one range scan on event_time.
    """
    totals: dict[tuple[str, datetime], int] = defaultdict(int)
    rows = session.execute(
        select(SpendLedgerEntry.campaign_id, SpendLedgerEntry.event_time, SpendLedgerEntry.cost_micros).where(
            SpendLedgerEntry.event_time >= start, SpendLedgerEntry.event_time < end
        )
    )
    for campaign_id, event_time, cost_micros in rows:
        hour = event_time.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        totals[(campaign_id, hour)] += cost_micros
    return dict(totals)


# --- served auctions (written behind by the auction service, read to validate events) ---


@dataclass(frozen=True, slots=True)
class ServedAuctionRow:
    auction_id: str
    campaign_id: str
    advertiser_id: str
    ad_id: str
    pricing_model: str
    clearing_price_micros: int
    billable_cost_micros: int
    reserved_micros: int
    pctr: float
    user_id: str | None
    device_type: str | None
    channel: str | None
    content_type: str | None
    model_version: str
    served_at: datetime
    expires_at: datetime
    publisher_id: str | None = None
    raw_pctr: float | None = None  # the model's score before calibration; pctr is what the auction priced

    def packed(self) -> tuple:
        """The fields as a plain tuple of str, int, float and datetime, for holding in memory.

        The garbage collector untracks such a tuple at its first collection; a dataclass stays
        tracked, and minutes of served auctions would be traversed by every collection.
        """
        return _pack_served(self)

    @classmethod
    def unpacked(cls, packed: tuple) -> ServedAuctionRow:
        return cls(*packed)


_SERVED_FIELDS = tuple(ServedAuctionRow.__dataclass_fields__)
_pack_served = operator.attrgetter(*_SERVED_FIELDS)


def record_served_auctions(session: Session, rows: Sequence[ServedAuctionRow]) -> int:
    """Inserts a batch of filled auctions in one transaction; ids already stored are skipped. Returns the count."""
    if not rows:
        return 0
    begin_write(session)
    try:
        if session.get_bind().dialect.name == "sqlite":
            inserted = _insert_served_sqlite(session, rows)
        else:
            # A Core INSERT .. ON CONFLICT DO NOTHING, not the ORM's bulk insert: a third of the CPU
            # per row, and no query for the ids already there. Shallow dicts on purpose:
            # dataclasses.asdict deep-copies every value.
            inserted = len(
                session.execute(
                    _insert_new(session, ServedAuction.__table__),
                    [{name: getattr(row, name) for name in _SERVED_FIELDS} for row in rows],
                ).all()
            )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return inserted


# The auction service writes every filled auction, thousands a second, from a thread beside the
# auctions: SQLAlchemy's per-row parameter pass held the GIL about 16 ms per 1,000 rows, a stall
# the auctions in flight felt as a periodic p99. On SQLite the rows go in as multi-row statements
# of plain values (about 5 ms); the text of a time is the one SQLAlchemy's DateTime writes and reads.
_SQLITE_SERVED_ROWS_PER_INSERT = 500  # x 18 columns, well under SQLite's 32,766 parameters
_SERVED_TIME_FIELDS = tuple(index for index, name in enumerate(_SERVED_FIELDS) if name in ("served_at", "expires_at"))


@functools.cache
def _sqlite_served_insert(rows: int) -> str:
    values = "(" + ", ".join("?" * len(_SERVED_FIELDS)) + ")"
    return (
        f"INSERT INTO {ServedAuction.__tablename__} ({', '.join(_SERVED_FIELDS)}) "
        f"VALUES {', '.join([values] * rows)} ON CONFLICT DO NOTHING"
    )


_UTC_DATETIME, _SQLITE_DIALECT = UtcDateTime(), sqlite.dialect()


def sqlite_utc_text(value: datetime) -> str:
    """An aware time as SQLite holds it: ``UtcDateTime``'s naive UTC, as DateTime's ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    naive = _UTC_DATETIME.process_bind_param(value, _SQLITE_DIALECT)
    assert naive is not None  # the rows' times are never None
    return naive.isoformat(" ", "microseconds")


def _insert_served_sqlite(session: Session, rows: Sequence[ServedAuctionRow]) -> int:
    width = len(_SERVED_FIELDS)
    values: list[object] = []
    for row in rows:
        fields = list(_pack_served(row))
        for index in _SERVED_TIME_FIELDS:
            fields[index] = sqlite_utc_text(fields[index])
        values.extend(fields)
    cursor = session.connection().connection.cursor()
    inserted = 0
    try:
        for start in range(0, len(rows), _SQLITE_SERVED_ROWS_PER_INSERT):
            part = values[start * width : (start + _SQLITE_SERVED_ROWS_PER_INSERT) * width]
            cursor.execute(_sqlite_served_insert(len(part) // width), part)
            inserted += cursor.rowcount  # rows inserted; the ones skipped on conflict are not counted
    finally:
        cursor.close()
    return inserted


def _served_row(row: ServedAuction) -> ServedAuctionRow:
    return ServedAuctionRow(**{name: getattr(row, name) for name in _SERVED_FIELDS})


@fresh_read
def spend_totals(session: Session, day: date) -> tuple[dict[str, int], dict[str, int]]:
    """Each campaign's charged micros, in all and on ``day``: the shared store's spend, rebuilt."""
    total = dict(session.execute(select(Campaign.campaign_id, Campaign.spent_micros)).tuples().all())
    today = session.execute(select(DailySpend.campaign_id, DailySpend.spent_micros).where(DailySpend.day == day))
    return total, dict(today.tuples().all())


REBUILD_ROWS_PER_FETCH = 10_000  # rows a rebuild reads at a time: its memory is this, not an hour of auctions


@dataclass(frozen=True, slots=True)
class OpenReservation:
    """A served auction whose reservation is still open: what a rebuilt shared store holds for it."""

    auction_id: str
    campaign_id: str
    served_at: datetime
    reserved_micros: int
    expires_at: datetime


def open_reservations(session: Session, since: datetime, now: datetime) -> Iterator[OpenReservation]:
    """Auctions served since ``since``, not expired at ``now``, holding micros, whose billable event was not
    charged: the reservations still open, streamed. A fleet's hour of auctions is millions of rows, so the
    caller reads them in one open session, ``REBUILD_ROWS_PER_FETCH`` at a time."""
    billed = select(SpendLedgerEntry.auction_id).where(SpendLedgerEntry.auction_id == ServedAuction.auction_id)
    rows = session.execute(
        select(
            ServedAuction.auction_id, ServedAuction.campaign_id, ServedAuction.served_at,
            ServedAuction.reserved_micros, ServedAuction.expires_at,
        )
        .where(
            ServedAuction.served_at >= since, ServedAuction.expires_at > now, ServedAuction.reserved_micros > 0,
            ~billed.exists(),
        )
        .execution_options(yield_per=REBUILD_ROWS_PER_FETCH)
    )  # fmt: skip
    for row in rows:
        yield OpenReservation(*row)


def served_per_user(session: Session, since: datetime) -> Iterator[tuple[str, str, int]]:  # (user, campaign, ads)
    """(user, campaign, ads served) since ``since``, by user: the frequency counters, rebuilt; streamed like
    ``open_reservations``."""
    rows = session.execute(
        select(ServedAuction.user_id, ServedAuction.campaign_id, func.count())
        .where(ServedAuction.served_at >= since, ServedAuction.user_id.is_not(None))
        .group_by(ServedAuction.user_id, ServedAuction.campaign_id)
        .order_by(ServedAuction.user_id)
        .execution_options(yield_per=REBUILD_ROWS_PER_FETCH)
    )
    yield from rows.tuples()


def served_auction(session: Session, auction_id: str) -> ServedAuctionRow | None:
    row = session.get(ServedAuction, auction_id)
    session.rollback()  # end the read transaction so later reads see new rows
    if row is None:
        return None
    return _served_row(row)
