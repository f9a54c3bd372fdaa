"""POST /v1/events (one event or a batch) and the signed tracking URLs of served ads.

Every event carries its token (``adstream.signing``), issued with the auction for that one
event type. The device's user agent and address are the event's ``user_agent`` and ``ip``
(a server relaying events states them) or else the request's ``User-Agent`` and client address
(uvicorn takes ``X-Forwarded-For`` from the proxies in FORWARDED_ALLOW_IPS, 127.0.0.1 by default). An
OpenRTB billing notice (``notice=billing``) fired by an exchange's server states the bid request's device
instead, as ``device_ip``/``device_ua``, which its token was signed over (``tracking``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import RedirectResponse

from adstream.events import MICROS_PER_UNIT, EventType
from adstream.messaging import BrokerUnavailable
from adstream.signing import TokenError
from auction_service.api.schemas import (
    INVALID_REQUEST,
    STORE_UNAVAILABLE,
    UNREADABLE_BODY,
    EventBatch,
    EventBatchResult,
    refused,
)
from auction_service.serving.bodies import ID_PATTERN, EventIn, EventResult
from auction_service.serving.flows import Client, LedgerUnavailable, record_events

router = APIRouter(prefix="/v1/events", tags=["events"], responses={**INVALID_REQUEST, **STORE_UNAVAILABLE})
MAX_WIN_PRICE = Decimal(1000)  # USD CPM: as the largest bid (MAX_BID_MICROS)
RETRY = "retry the same events with the same event_id: a replay is never charged twice"
# Short enough that the derived event id "<auction_id>-<event_type>" is still a valid Id.
TrackedAuctionId = Annotated[str, Path(min_length=1, max_length=64 - len("-video_complete"), pattern=ID_PATTERN)]
# A refused event's status: no token 401, a token that is not this event's 403, an expired one 410.
REFUSAL_STATUS = {
    TokenError.MISSING: status.HTTP_401_UNAUTHORIZED,
    TokenError.MALFORMED: status.HTTP_403_FORBIDDEN,
    TokenError.UNKNOWN_KEY: status.HTTP_403_FORBIDDEN,
    TokenError.BAD_SIGNATURE: status.HTTP_403_FORBIDDEN,
    TokenError.EXPIRED: status.HTTP_410_GONE,
    "unknown_auction": status.HTTP_404_NOT_FOUND,
}
# The same refusals as documented answers of a single event (a batch lists them in its 202).
REFUSED: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: refused(
        "the event has no token", "token_missing: no event token: send the token of the ad's event URL"
    ),
    status.HTTP_403_FORBIDDEN: refused(
        "the token is not this event's", "token_malformed: the event token is malformed: send it as the auction gave it"
    ),
    status.HTTP_404_NOT_FOUND: refused("no such auction was served", "unknown_auction: no auction a1b2 was served"),
    status.HTTP_410_GONE: refused(
        "the token has expired", "token_expired: the event token has expired: events are accepted until its expiry"
    ),
}


def _client(request: Request) -> Client:
    address = request.client.host if request.client else None
    return Client(user_agent=request.headers.get("user-agent"), ip=address)


async def _record(request: Request, events: list[EventIn]) -> EventBatchResult:
    try:
        results = await record_events(request.app.state.service, events, datetime.now(UTC), _client(request))
    except (BrokerUnavailable, LedgerUnavailable) as exc:
        unavailable = status.HTTP_503_SERVICE_UNAVAILABLE
        raise HTTPException(unavailable, f"{exc}; {RETRY}", headers={"Retry-After": "1"}) from exc
    counts = {status_: sum(r.status == status_ for r in results) for status_ in ("accepted", "duplicate", "rejected")}
    return EventBatchResult(**counts, results=results)


def _refused(result: EventResult, otherwise: int) -> HTTPException:
    code = (result.reason or "").split(":", 1)[0]
    return HTTPException(REFUSAL_STATUS.get(code, otherwise), result.reason)


@router.post("", response_model=EventBatchResult, status_code=202, responses={**REFUSED, **UNREADABLE_BODY})
async def post_events(body: EventIn | EventBatch, request: Request) -> EventBatchResult:
    """One event, or ``{"events": [...]}`` (up to 1000). Rejected events are listed with their reason; a single
    rejected event answers 401 (no token), 403 (a token not this event's), 410 (expired), 404 (unknown auction)
    or 422 (its time)."""
    events = body.events if isinstance(body, EventBatch) else [body]
    result = await _record(request, events)
    if isinstance(body, EventIn) and result.rejected:
        raise _refused(result.results[0], status.HTTP_422_UNPROCESSABLE_CONTENT)
    return result


@router.get(
    "/track/{auction_id}/{event_type}",
    status_code=204,
    responses={
        204: {"description": "recorded"},
        302: {"description": "a click: recorded, and on to the campaign's landing page"},
        **REFUSED,
    },
)
async def track(
    auction_id: TrackedAuctionId,
    event_type: EventType,
    request: Request,
    t: Annotated[str | None, Query(max_length=128, description="the token the auction put in this URL")] = None,
    price: Annotated[
        str | None, Query(max_length=32, description="a win notice's clearing price, USD CPM (${AUCTION_PRICE})")
    ] = None,
    notice: Annotated[
        Literal["billing"] | None,
        Query(description="`billing` on an OpenRTB bid's burl: the impression, as the exchange's billing notice"),
    ] = None,
    device_ip: Annotated[str | None, Query(max_length=45, description="a burl's: the device's address")] = None,
    device_ua: Annotated[str | None, Query(max_length=512, description="a burl's: the device's agent")] = None,
) -> Response:
    """A signed tracking URL: the event id is derived from the auction, so a URL that fires twice counts once
    (an OpenRTB impression through its burl or its VAST Impression, whichever comes first). A click that has a
    landing page redirects there (302), even when it fires again."""
    if notice is not None and event_type != EventType.IMPRESSION:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "notice=billing is an impression's: fire the burl as given"
        )
    if notice is None and (device_ip is not None or device_ua is not None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "device_ip and device_ua are a burl's: fire the burl as given"
        )
    event = EventIn(
        event_id=f"{auction_id}-{event_type}", event_type=event_type, auction_id=auction_id, token=t,
        exchange_price_cpm_micros=_win_price(price) if event_type == EventType.WIN else None,
        billing_notice=notice == "billing", ip=device_ip, user_agent=device_ua,
    )  # fmt: skip
    result = await _record(request, [event])
    if result.rejected:
        raise _refused(result.results[0], status.HTTP_422_UNPROCESSABLE_CONTENT)
    if event_type == EventType.CLICK and (landing := _landing_page(request, result.results[0])):
        return RedirectResponse(landing, status_code=status.HTTP_302_FOUND)
    return Response(status_code=204)


def _win_price(price: str | None) -> int | None:
    """``price`` (USD CPM, as the exchange wrote it) in micros; 422 when it is not a price."""
    if price is None:
        return None
    if "AUCTION_PRICE" in price:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "price is the unsubstituted ${AUCTION_PRICE} macro: the exchange must replace it with the clearing price",
        )
    try:
        amount = Decimal(price)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0 or amount > MAX_WIN_PRICE:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"price {price!r} is not a clearing price: a decimal USD CPM from 0 to {MAX_WIN_PRICE}",
        )
    return int((amount * MICROS_PER_UNIT).to_integral_value(ROUND_HALF_UP))


def _landing_page(request: Request, result: EventResult) -> str | None:
    # The landing page comes from the campaign the token was signed for, never from the URL: no open redirect.
    campaign_id = result.campaign_id
    campaign = request.app.state.service.campaigns.by_id.get(campaign_id) if campaign_id else None
    return None if campaign is None else campaign.creative.landing_url
