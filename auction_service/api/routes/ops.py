"""Operations: liveness, readiness (with the reason when not ready), Prometheus metrics, stats, pCTR.

/metrics and /v1/stats are also served on the replica's own AUCTION_METRICS_PORT (``replica_port``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, HTTPException, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from auction_service.api.deps import StateDep
from auction_service.api.routes.auction import to_micros
from auction_service.api.schemas import (
    INVALID_REQUEST,
    MODEL_UNAVAILABLE,
    UNREADABLE_BODY,
    Prediction,
    PredictRequest,
    PredictResponse,
    not_found,
)
from auction_service.domain import AuctionContext
from auction_service.serving.features import candidate_batch
from auction_service.serving.metrics import serve_replica
from auction_service.serving.state import ServiceState
from ml.calibration import PRICING_MODELS, Calibration, category_codes, pricing_codes


@asynccontextmanager
async def replica_port(app: FastAPI) -> AsyncIterator[None]:
    """While the service runs, its /metrics and /v1/stats on AUCTION_METRICS_PORT too (0: not), where a scrape
    reaches this process, not a random replica of the fleet on AUCTION_PORT."""
    state: ServiceState = app.state.service
    settings = state.settings
    replica = serve_replica(
        state.metrics.registry, lambda: jsonable_encoder(replica_stats(state)), settings.bind_host,
        settings.auction_metrics_port,
    )  # fmt: skip
    try:
        yield
    finally:
        if replica is not None:
            replica.close()


router = APIRouter(tags=["operations"], lifespan=replica_port)
# Probes and scrapes are for the platform, not API clients: they stay out of the OpenAPI document.
PLATFORM_ONLY = {"include_in_schema": False}


@router.get("/healthz", **PLATFORM_ONLY)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", **PLATFORM_ONLY)
def readyz(state: StateDep) -> JSONResponse:
    """200 when the model is loaded and the campaign store and Kafka answer; else 503 with what is not ready.

    Each dependency is listed in ``checks``: auctions need the model, events need the store and Kafka.
    """
    model = state.model
    checks = {"model": "ok" if model.ready else (model.reason or "not loaded"), **state.dependencies()}
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, object] = {
        "ready": ready,
        "model_version": model.version,
        "campaigns": len(state.campaigns.campaigns),
        "features": state.features.reason or "loaded",
        "checks": checks,
    }
    if not ready:
        body["reason"] = "; ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


@router.get("/metrics", **PLATFORM_ONLY)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/stats")
def stats(state: StateDep) -> dict:
    """The replica's live counters. What only a fleet merge needs (``replica_stats``) stays off this public
    port: an API client has no use for the process id, and the raw latency window is thousands of numbers."""
    return {
        **state.stats.snapshot(),
        "model_version": state.model.version,
        "scorer": state.model.scorer_kind,
        "calibration": _calibration(state.model.calibration),
        "optimizer": {
            "campaigns_decided": state.decisions.decided_campaigns,
            "reads": state.decisions.reads,
            "decision_lag_s": state.decisions.lag_quantiles(),  # newest event seen -> served here
        },
        "campaigns": len(state.campaigns.campaigns),
        "bid_filter": state.metrics.bid_filter.snapshot(),
    }


def replica_stats(state: ServiceState) -> dict:
    """``stats``, and what a fleet's stats are merged from (``dashboard.sources.fleet_stats``), on the replica's
    own AUCTION_METRICS_PORT only: the latency window itself, whose percentiles are not averages of the
    replicas', and the process, to tell a restart. Not rounded: pooled percentiles of one replica are then its
    own, to the last digit."""
    return {
        **stats(state),
        "latency_window_ms": list(state.stats.latencies_ms.copy()),
        "replica": {"pid": os.getpid(), "metrics_port": state.settings.auction_metrics_port or None},
    }


def _calibration(calibration: Calibration | None) -> dict | None:
    if calibration is None:
        return None
    return {
        "id": calibration.calibration_id,
        "kind": calibration.kind,
        "slope": calibration.slope,
        "intercept": calibration.intercept,
        "offsets": dict(zip(PRICING_MODELS, map(float, calibration.offsets), strict=False)),
        "category_offsets": dict(calibration.category_offsets),
        "fitted_on_clicks": calibration.clicks,
    }


@router.post(
    "/v1/predict_ctr",
    response_model=PredictResponse,
    responses={
        **INVALID_REQUEST,
        **UNREADABLE_BODY,
        **not_found("none of the campaigns is active", "none of the campaigns is active: cmp-42"),
        **MODEL_UNAVAILABLE,
    },
)
def predict_ctr(body: PredictRequest, state: StateDep) -> PredictResponse:
    """pCTR of the given campaigns' ads for one request context, scored in one batch."""
    by_id = state.campaigns.by_id
    known = [by_id[campaign_id] for campaign_id in body.campaign_ids if campaign_id in by_id]
    unknown = [campaign_id for campaign_id in body.campaign_ids if campaign_id not in by_id]
    if not known:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"none of the campaigns is active: {', '.join(unknown)}")
    c = body.context
    context = AuctionContext(
        auction_id=uuid.uuid4().hex, at=datetime.now(UTC), user_id=c.user_id, country=c.country, age=c.age,
        gender=c.gender, device_type=c.device_type, channel=c.channel, content_type=c.content_type,
        floor_cpm_micros=to_micros(c.floor_cpm),
    )  # fmt: skip
    pricing = pricing_codes([campaign.pricing_model for campaign in known])
    category = category_codes([campaign.category for campaign in known])
    pctr, version = state.model.score(candidate_batch(context, known, state.features.current), pricing, category)
    return PredictResponse(
        model_version=version,
        predictions=[
            Prediction(campaign_id=campaign.campaign_id, ad_id=campaign.ad_id, pctr=float(p))
            for campaign, p in zip(known, pctr, strict=True)
        ],
        unknown_campaigns=unknown,
    )
