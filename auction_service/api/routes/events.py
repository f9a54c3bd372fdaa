"""POST /v1/events (one event or a batch) and the tracking pixels of served ads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from adstream.events import EventType
from adstream.messaging import BrokerUnavailable
from auction_service.api.schemas import INVALID_REQUEST, EventBatch, EventBatchResult
from auction_service.serving.bodies import ID_PATTERN, EventIn
from auction_service.serving.flows import LedgerUnavailable, record_events

router = APIRouter(prefix="/v1/events", tags=["events"], responses=INVALID_REQUEST)
RETRY = "retry the same events with the same event_id: a replay is never charged twice"
# Short enough that the derived event id "<auction_id>-<event_type>" is still a valid Id.
TrackedAuctionId = Annotated[str, Path(min_length=1, max_length=64 - len("-video_complete"), pattern=ID_PATTERN)]


async def _record(request: Request, events: list[EventIn]) -> EventBatchResult:
    try:
        results = await record_events(request.app.state.service, events, datetime.now(UTC))
    except (BrokerUnavailable, LedgerUnavailable) as exc:
        unavailable = status.HTTP_503_SERVICE_UNAVAILABLE
        raise HTTPException(unavailable, f"{exc}; {RETRY}", headers={"Retry-After": "1"}) from exc
    counts = {status_: sum(r.status == status_ for r in results) for status_ in ("accepted", "duplicate", "rejected")}
    return EventBatchResult(**counts, results=results)


@router.post("", response_model=EventBatchResult, status_code=202)
async def post_events(body: EventIn | EventBatch, request: Request) -> EventBatchResult:
    """One event, or ``{"events": [...]}`` (up to 1000). Rejected events are listed with their reason;
    a single rejected event answers 422."""
    events = body.events if isinstance(body, EventBatch) else [body]
    result = await _record(request, events)
    if isinstance(body, EventIn) and result.rejected:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, result.results[0].reason)
    return result


@router.get("/track/{auction_id}/{event_type}", status_code=204, responses={204: {"description": "recorded"}})
async def track(auction_id: TrackedAuctionId, event_type: EventType, request: Request) -> Response:
    """A tracking pixel: the event id is derived from the auction, so a pixel that fires twice counts once."""
    event = EventIn(event_id=f"{auction_id}-{event_type}", event_type=event_type, auction_id=auction_id)
    result = await _record(request, [event])
    if result.rejected:
        raise HTTPException(status.HTTP_404_NOT_FOUND, result.results[0].reason)
    return Response(status_code=204)
