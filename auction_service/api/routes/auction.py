"""POST /v1/auction (our JSON) and POST /openrtb2/auction (OpenRTB 2.6). No fill is 204.

Callers are known: a request carries its publisher's or exchange's API key in ``X-Api-Key``
(or ``Authorization: Bearer``), else 401, but for an anonymous caller in local mode with
AUCTION_ALLOW_ANONYMOUS. The key's caller is the auction's ``publisher_id``, and its policy
bounds the request: a floor above the caller's maximum is lowered to it (the auction still
runs, at the agreed ceiling; a caller cannot push the clearing price past it), and OpenRTB
``at=1`` (first price) gets no bid (204) unless the caller is allowed it. The key is
checked after the body validated, so a request that does not validate gets its 422 (OpenRTB: 400) first.

Both routes are ``async def`` and take the state from the request rather than through
``StateDep``: an auction is CPU work with no I/O to wait for (the auction log is sent
without waiting), and a sync route or a sync dependency would cost a hop to the thread
pool per request, where the threads then contend for the GIL. A filled auction returns
its response model (``AuctionResponse``, OpenRTB's ``BidResponse``), which both FastAPI
and the fast path serialize with pydantic, so the model that documents the 200 body in
OpenAPI is the one that writes it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from adstream.events import MICROS_PER_UNIT
from auction_service.api.schemas import (
    INVALID_REQUEST,
    MODEL_UNAVAILABLE,
    UNREADABLE_BODY,
    WWW_AUTHENTICATE,
    AuctionRequest,
    AuctionResponse,
    OpenRtbRefusal,
    openrtb_refusal,
    refused,
)
from auction_service.campaign_store.callers import CallerPolicy
from auction_service.domain import AuctionContext
from auction_service.serving import bid_filter, openrtb, openrtb_bids, tracking
from auction_service.serving.auction import deal_of
from auction_service.serving.callers import anonymous_policy
from auction_service.serving.flows import ServedAd, serve_auction
from auction_service.serving.state import ServiceState

UNKNOWN_CALLER: dict[int | str, dict[str, Any]] = {
    401: refused(
        "no API key (outside local mode), or a key unknown or revoked",
        "the API key is unknown or revoked: send a key in force, as `adstream callers add` printed it",
        headers=WWW_AUTHENTICATE,
    )
}
router = APIRouter(tags=["auction"], responses={**UNKNOWN_CALLER, **UNREADABLE_BODY, **MODEL_UNAVAILABLE})
NO_FILL = {204: {"description": "no campaign is eligible above the floor (no fill)"}}
SEND_A_KEY = (
    "the auction endpoints need the caller's API key: send the header 'X-Api-Key: <key_id>.<secret>' "
    "(or 'Authorization: Bearer <key_id>.<secret>'); `adstream callers add` makes one"
)


def to_micros(amount: Decimal | None) -> int:
    return 0 if amount is None else int(amount * MICROS_PER_UNIT)


def new_auction_id() -> str:
    return os.urandom(16).hex()  # 128 random bits as uuid4().hex, without building a UUID object


_BASE_URLS: dict[tuple[str, bytes, str], str] = {}


def _base_url(request: Request) -> str:
    # Starlette builds a URL object per call; a service sees a handful of (scheme, Host) pairs.
    scope = request.scope
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
            break
    if host is None:  # no Host (HTTP/1.0): the server's address, as Starlette gives it
        return str(request.base_url).rstrip("/")
    key = (scope["scheme"], host, scope.get("root_path", ""))
    base = _BASE_URLS.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/")
        if len(_BASE_URLS) < 256:  # bounded: Host is client-controlled
            _BASE_URLS[key] = base
    return base


def signed_events(
    request: Request, served: ServedAd, context: AuctionContext, *, win: bool = False,
    device: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:  # fmt: skip
    """The winner's event URLs and tokens (event type -> URL, token), signed for this auction, its campaign
    and its expiry; ``win`` adds an exchange's win and billing notices, the billing notice with the bid
    request's ``device`` (``tracking.device_parameters``). Plain dicts: the response model validates them in
    one pass, cheaper than models built here."""
    winner, auction_id = served.outcome.winner, served.auction_id
    assert winner is not None and served.expires_at is not None
    video = context.content_type == "video"
    tokens = tracking.event_tokens(_state(request).signer, auction_id, winner.campaign_id, served.expires_at,
                                   video=video, win=win, device=device)  # fmt: skip
    return tracking.event_urls(_base_url(request), auction_id, tokens, device), tokens


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key of a request's raw headers: ``X-Api-Key``, else an ``Authorization: Bearer`` credential."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = credential.decode("latin-1").strip()
    return bearer


async def caller_policy(request: Request) -> CallerPolicy:
    """The policy of the request's caller; 401 when it sent no key (outside local mode) or a key not in force."""
    api_key = presented_key(request.scope["headers"])
    if not api_key:
        anonymous = anonymous_policy(_state(request).settings)
        if anonymous is not None:
            return anonymous
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, SEND_A_KEY, headers={"WWW-Authenticate": "Bearer"})
    policy = await _state(request).caller_keys.policy(api_key)
    if policy is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the API key is unknown or revoked: send a key in force, as `adstream callers add` printed it",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return policy


@router.post("/v1/auction", response_model=AuctionResponse, responses={**NO_FILL, **INVALID_REQUEST})
async def auction(body: AuctionRequest, request: Request) -> AuctionResponse | Response:
    caller = await caller_policy(request)
    state = _state(request)
    auction_id = new_auction_id()
    context = AuctionContext(
        auction_id=auction_id, at=datetime.now(UTC), user_id=body.user_id, country=body.country, age=body.age,
        gender=body.gender, device_type=body.device_type, channel=body.channel, content_type=body.content_type,
        floor_cpm_micros=caller.floor_cpm_micros(to_micros(body.floor_cpm)),
        blocked_categories=frozenset(body.blocked_categories), blocked_advertisers=frozenset(body.blocked_advertisers),
        publisher_id=caller.caller_id,
    )  # fmt: skip
    served = await serve_auction(state, context)
    winner = served.outcome.winner
    if winner is None:
        return Response(status_code=204)
    price = served.outcome.clearing_price_micros
    assert price is not None  # a winner always has a price
    urls, tokens = signed_events(request, served, context)
    return AuctionResponse(
        auction_id=auction_id, ad_id=winner.ad_id, campaign_id=winner.campaign_id,
        advertiser_id=winner.advertiser_id, category=winner.category, pricing_model=winner.pricing_model,
        clearing_price_micros=price, clearing_price=str(Decimal(price) / MICROS_PER_UNIT), currency="USD",
        pctr=float(served.outcome.pctr or 0.0), ecpm_micros=served.outcome.ecpm_micros or 0,
        model_version=served.model_version, expires_at=served.expires_at, tracking=urls, event_tokens=tokens,
    )  # fmt: skip


@router.post(
    "/openrtb2/auction",
    response_model=openrtb_bids.BidResponse,
    response_model_exclude_none=True,
    responses={
        204: {
            "description": "no bid: nothing we buy, or no campaign clears (the reason is in X-No-Bid-Reason); with "
            "OPENRTB_NO_BID_BODY a 200 of id, an empty seatbid and nbr instead"
        },
        400: refused(
            "the request breaks OpenRTB 2.6: each JSON path and rule (none for JSON nested too deep to parse)",
            openrtb_refusal([("imp[0].banner.w", "Input should be greater than 0")]),
            model=OpenRtbRefusal,
        ),
    },
)
async def openrtb_auction(body: openrtb.BidRequest, request: Request) -> openrtb_bids.BidResponse | Response:
    """One auction per imp we buy (module ``auction_service.serving.openrtb`` lists what is honoured)."""
    if errors := openrtb.spec_errors(body):
        _state(request).metrics.rejected_requests.labels(reason="openrtb_spec").inc()
        return JSONResponse(openrtb_refusal(errors), status_code=status.HTTP_400_BAD_REQUEST)
    caller = await caller_policy(request)
    state = _state(request)
    reason = openrtb.no_bid_reason(body, min_tmax_ms=state.settings.openrtb_min_tmax_ms)
    if reason is None and body.first_price and not caller.first_price_allowed:
        reason = f"at=1 (first price) is not allowed for caller {caller.caller_id!r}: send at=2 (second price)"
    if reason is None and body.device is not None:
        # Invalid traffic is judged here, on the device the exchange states: its billing notice comes from the
        # exchange's servers later, and the caller of that tells nothing of the device.
        givt = state.request_ivt.device_reason(body.device.ua, body.device.ip)
        if givt is not None:
            reason = f"invalid traffic: device {givt}"
    if reason is not None:
        return _no_bid(state, body.id, reason)
    now, bids, shed, refused_deals = datetime.now(UTC), [], 0, []
    # The billing notice carries the device, signed: fired by the exchange, its event is still the device's.
    device = tracking.device_parameters(body.device.ip, body.device.ua) if body.device is not None else None
    filled: frozenset[str] = frozenset()
    screener = state.bid_filter.current  # one filter for the whole request, even if a swap lands meanwhile
    for imp in body.imp:
        if openrtb.imp_no_bid_reason(imp) is not None:
            continue
        screened = bid_filter.UNSCREENED
        if screener is not None:  # first of all: an imp that will not earn ends here, before any auction work
            features = openrtb.screening_features(body, imp, at=now, publisher_id=caller.caller_id)
            screened = bid_filter.screen(screener, features, random.random(), state.metrics.bid_filter)
            if not screened.passed:
                shed += 1
                continue
        terms = _FIT.terms(state.campaigns.campaigns, imp, max_floor_cpm_micros=caller.max_floor_cpm_micros,
                           first_price_allowed=caller.first_price_allowed)  # fmt: skip
        refused_deals += terms.first_price_refused
        context = openrtb.to_context(
            body, imp, auction_id=new_auction_id(), at=now,
            reserve_price_micros=state.settings.auction_reserve_price_micros, publisher_id=caller.caller_id,
            max_floor_cpm_micros=caller.max_floor_cpm_micros, terms=terms, excluded=filled,
        )  # fmt: skip
        if screener is not None:
            context = dataclasses.replace(context, **screened.record_fields())
        served = await serve_auction(state, context, first_price=body.first_price)
        winner, price = served.outcome.winner, served.outcome.clearing_price_cpm_micros
        if screener is not None and screened.explored:
            bid_filter.settle_explored(screener, screened, price or 0, state.metrics.bid_filter)
        if winner is None or price is None:
            continue
        filled |= {winner.campaign_id}
        urls, _ = signed_events(request, served, context, win=True, device=device)
        ad = state.features.current.ads.get(winner.ad_id)
        one = openrtb_bids.bid(
            auction_id=served.auction_id, imp_id=imp.id, campaign=winner, price_cpm_micros=price, urls=urls,
            image_url=f"{_base_url(request)}/v1/creatives/{winner.ad_id}/image",
            title=(ad.title if ad and ad.title else winner.category), size=openrtb.bid_size(imp, winner),
            video=context.content_type == "video", deal_id=deal_of(context, winner),
        )  # fmt: skip
        bids.append((winner.advertiser_id, one))
    if not bids:
        reason = "no campaign clears the floor of any imp"
        if shed:
            reason = "the bid-request filter: no imp is likely to fill"
        elif refused_deals:
            reason += (f"; deals {', '.join(dict.fromkeys(refused_deals))} are first price (at=1), which caller "
                       f"{caller.caller_id!r} may not ask for")  # fmt: skip
        return _no_bid(state, body.id, reason)
    return openrtb_bids.bid_response(body.id, bids[0][1].id, bids)


_FIT = openrtb.CampaignFit()


def _no_bid(state: ServiceState, request_id: str, reason: str) -> Response:
    # A reason may quote the request's own text: ASCII without control characters, so no header injection.
    safe = _CONTROL.sub(" ", reason.encode("ascii", "replace").decode())[:300]
    headers = {"X-No-Bid-Reason": safe}
    state.stats.no_bid(openrtb.no_bid_kind(reason))
    if state.settings.openrtb_no_bid_body:
        return JSONResponse(openrtb_bids.no_bid_response(request_id, openrtb.nbr(reason)), headers=headers)
    return Response(status_code=204, headers=headers)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
