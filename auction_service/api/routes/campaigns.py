"""Campaign management over HTTP: instructions go through Kafka to the ad manager, like the CLI's.

Bearer token required (AUCTION_API_TOKEN). Create and stop answer 202 once the broker has
the instruction; the ad manager applies it within about a second.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, status
from redis.exceptions import RedisError

from adstream.days import DayClock
from adstream.events import CampaignSpec, CampaignStatus
from adstream.messaging import BrokerUnavailable, PublishFailed
from auction_service.api.deps import CampaignAuth, StateDep
from auction_service.api.schemas import (
    CAMPAIGN_TOKEN,
    INVALID_REQUEST,
    STORE_UNAVAILABLE,
    UNREADABLE_BODY,
    CampaignAccepted,
    CampaignCreate,
    CampaignView,
    PacingView,
    conflict,
    not_found,
)
from auction_service.campaign_store import store
from auction_service.campaign_store.instructions import create_instruction, publish_instructions, stop_instruction
from auction_service.serving.pacer import plan_budget
from auction_service.serving.state import INSTRUCTION_ACK_TIMEOUT_S

router = APIRouter(
    prefix="/v1/campaigns",
    tags=["campaigns"],
    dependencies=[CampaignAuth],
    responses={**CAMPAIGN_TOKEN, **STORE_UNAVAILABLE},
)
NO_CAMPAIGN = not_found("no such campaign (a created one appears within about a second)", "no campaign cmp-42")


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "1"})


def _publish(state, instruction) -> CampaignAccepted:
    try:
        producer = state.instruction_producer()
    except BrokerUnavailable as exc:
        raise _unavailable(f"Kafka does not answer ({exc}); retry: the instruction is not applied") from exc
    try:
        publish_instructions(state.settings, [instruction], producer=producer, timeout_s=INSTRUCTION_ACK_TIMEOUT_S)
    except PublishFailed as exc:
        # A record sent but not acknowledged in time may still have been stored by the broker.
        raise _unavailable(
            f"Kafka did not acknowledge the instruction ({exc}); it may still be applied: read the campaign"
            f" (GET /v1/campaigns/{instruction.campaign_id}) before retrying"
        ) from exc
    return CampaignAccepted(
        campaign_id=instruction.campaign_id, instruction_id=instruction.instruction_id, action=instruction.action
    )


@router.post(
    "",
    response_model=CampaignAccepted,
    status_code=202,
    responses={
        **INVALID_REQUEST,
        **UNREADABLE_BODY,
        **conflict("the campaign_id is taken", "campaign cmp-42 already exists"),
    },
)
def create_campaign(body: CampaignCreate, state: StateDep) -> CampaignAccepted:
    ads = state.features.current.ads
    if ads and body.ad_id not in ads:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"ad_id {body.ad_id!r} is not in the ad catalog (silver/ads)"
        )
    if body.campaign_id is not None:
        with state.sessions() as session:
            if store.get_campaign(session, body.campaign_id) is not None:
                raise HTTPException(status.HTTP_409_CONFLICT, f"campaign {body.campaign_id} already exists")
    spec = CampaignSpec(**body.model_dump(exclude={"campaign_id"}))
    return _publish(state, create_instruction(spec, now=datetime.now(UTC), campaign_id=body.campaign_id))


@router.post(
    "/{campaign_id}/stop",
    response_model=CampaignAccepted,
    status_code=202,
    responses={
        **NO_CAMPAIGN,
        **conflict("the campaign is stopped already", "campaign cmp-42 is already stopped (stopping is final)"),
        413: UNREADABLE_BODY[413],  # it reads no body, but the size cap answers before the route
    },
)
def stop_campaign(campaign_id: str, state: StateDep) -> CampaignAccepted:
    with state.sessions() as session:
        campaign = store.get_campaign(session, campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id}")
    if campaign.status == CampaignStatus.STOPPED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"campaign {campaign_id} is already stopped (stopping is final)")
    return _publish(state, stop_instruction(campaign_id, now=datetime.now(UTC)))


@router.get("/{campaign_id}", response_model=CampaignView, responses=NO_CAMPAIGN)
def get_campaign(campaign_id: str, state: StateDep) -> CampaignView:
    now = datetime.now(UTC)
    with state.sessions() as session:
        campaign = store.get_campaign(session, campaign_id, now=now, days=DayClock.of(state.settings))
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id} (created ones appear within ~1 s)")
    return CampaignView(
        campaign_id=campaign.campaign_id, status=campaign.status, spec=campaign.spec,
        spent_micros=campaign.spent_micros, remaining_budget_micros=campaign.remaining_budget_micros,
        spent_today_micros=campaign.spent_today_micros, pacing=_pacing(state, campaign_id, now),
    )  # fmt: skip


def _pacing(state, campaign_id: str, now: datetime) -> PacingView | None:
    serving = state.campaigns.by_id.get(campaign_id)
    if serving is None:
        return None
    try:
        report = state.pacer.report(serving, now, state.spent_today_mirror.get(campaign_id))
    except RedisError as exc:
        raise _unavailable(f"the shared store holding pacing did not answer ({type(exc).__name__}); retry") from exc
    return PacingView(
        mode=report.mode, day_start=DayClock.of(state.settings).start(now),
        daily_budget_micros=plan_budget(serving), plan_micros=report.plan_micros,
        spent_today_micros=report.spent_micros, pacing_multiplier=report.pacing_multiplier,
        throttle_rate=report.throttle_rate, exhausts_at=report.exhausts_at,
    )  # fmt: skip
