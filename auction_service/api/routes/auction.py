"""POST /v1/auction (our JSON) and POST /openrtb2/auction (OpenRTB 2.6 subset). No fill is 204.

Both routes are ``async def`` and take the state from the request rather than through
``StateDep``: an auction is CPU work with no I/O to wait for (the auction log is sent
without waiting), and a sync route or a sync dependency would cost a hop to the thread
pool per request, where the threads then contend for the GIL. A filled auction returns
its response model (``AuctionResponse``, OpenRTB's ``BidResponse``), which both FastAPI
and the fast path serialize with pydantic, so the model that documents the 200 body in
OpenAPI is the one that writes it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response

from adstream.events import MICROS_PER_UNIT
from auction_service.api.schemas import INVALID_REQUEST, AuctionRequest, AuctionResponse, TrackingUrls
from auction_service.domain import AuctionContext
from auction_service.serving import openrtb
from auction_service.serving.flows import serve_auction
from auction_service.serving.state import ServiceState

router = APIRouter(tags=["auction"], responses=INVALID_REQUEST)
NO_FILL = {204: {"description": "no campaign is eligible above the floor (no fill)"}}


def to_micros(amount: Decimal | None) -> int:
    return 0 if amount is None else int(amount * MICROS_PER_UNIT)


def new_auction_id() -> str:
    return os.urandom(16).hex()  # 128 random bits as uuid4().hex, without building a UUID object


_BASE_URLS: dict[tuple[Any, ...], str] = {}


def _base_url(request: Request) -> str:
    # Starlette builds a URL object per call; a service sees a handful of (scheme, Host) pairs.
    scope = request.scope
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    key = (scope["scheme"], host, tuple(scope.get("server") or ()), scope.get("root_path", ""))
    base = _BASE_URLS.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/")
        if len(_BASE_URLS) < 256:  # bounded: Host is client-controlled
            _BASE_URLS[key] = base
    return base


def tracking_urls(request: Request, auction_id: str) -> TrackingUrls:
    base = _base_url(request)
    return TrackingUrls(
        impression=f"{base}/v1/events/track/{auction_id}/impression",
        click=f"{base}/v1/events/track/{auction_id}/click",
    )


def _state(request: Request) -> ServiceState:
    return request.app.state.service


@router.post("/v1/auction", response_model=AuctionResponse, responses=NO_FILL)
async def auction(body: AuctionRequest, request: Request) -> AuctionResponse | Response:
    state = _state(request)
    auction_id = new_auction_id()
    context = AuctionContext(
        auction_id=auction_id, at=datetime.now(UTC), user_id=body.user_id, country=body.country, age=body.age,
        gender=body.gender, device_type=body.device_type, channel=body.channel, content_type=body.content_type,
        floor_cpm_micros=to_micros(body.floor_cpm), blocked_categories=frozenset(body.blocked_categories),
        blocked_advertisers=frozenset(body.blocked_advertisers),
    )  # fmt: skip
    served = serve_auction(state, context)
    winner = served.outcome.winner
    if winner is None:
        return Response(status_code=204)
    price = served.outcome.clearing_price_micros
    assert price is not None  # a winner always has a price
    return AuctionResponse(
        auction_id=auction_id, ad_id=winner.ad_id, campaign_id=winner.campaign_id,
        advertiser_id=winner.advertiser_id, category=winner.category, pricing_model=winner.pricing_model,
        clearing_price_micros=price, clearing_price=str(Decimal(price) / MICROS_PER_UNIT), currency="USD",
        pctr=float(served.outcome.pctr or 0.0), ecpm_micros=served.outcome.ecpm_micros or 0,
        model_version=served.model_version, tracking=tracking_urls(request, auction_id),
    )  # fmt: skip


@router.post("/openrtb2/auction", response_model=openrtb.BidResponse, responses=NO_FILL)
async def openrtb_auction(body: openrtb.BidRequest, request: Request) -> openrtb.BidResponse | Response:
    state = _state(request)
    auction_id = new_auction_id()
    context = openrtb.to_context(
        body,
        auction_id=auction_id,
        at=datetime.now(UTC),
        reserve_price_micros=state.settings.auction_reserve_price_micros,
    )
    served = serve_auction(state, context, first_price=body.first_price)
    if served.outcome.winner is None:
        return Response(status_code=204)
    impression = tracking_urls(request, auction_id).impression
    return openrtb.bid_response(body, served.outcome, ad_markup_url=impression, nurl=impression)
