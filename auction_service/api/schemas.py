"""The HTTP API's request and response bodies (our JSON; OpenRTB lives in ``auction_service.serving.openrtb``,
the event flow's own bodies and the shared field types in ``auction_service.serving.bodies``).

Requests are strict: unknown fields and wrong types are refused with 422 and a
message per field. Money in requests is a decimal string or number in currency
units (at most 6 decimals) and becomes integer micros at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, NotRequired

from fastapi import FastAPI
from pydantic import AwareDatetime, BaseModel, Field
from typing_extensions import TypedDict

from adstream.events import (
    MAX_BID_MICROS,
    MAX_BUDGET_MICROS,
    CampaignSpec,
    CampaignStatus,
    PacingMode,
    PricingModel,
)
from auction_service.serving.bodies import EventIn, EventResult, Id, StrictBody, UtcTime

Gender = Literal["F", "M"]
DeviceType = Literal["mobile", "desktop", "tablet", "ctv"]
Channel = Literal["web", "app"]
ContentType = Literal["display", "video"]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]
MAX_EVENTS_PER_BATCH = 1000


class AuctionRequest(StrictBody):
    """One ad request: who is asking and where. Unknown attributes may be left out."""

    user_id: Id | None = None
    country: str | None = Field(default=None, max_length=64)
    age: int | None = Field(default=None, ge=13, le=120)
    gender: Gender | None = None
    device_type: DeviceType | None = None
    channel: Channel | None = None
    content_type: ContentType = "display"
    floor_cpm: Money | None = Field(default=None, description="seller floor, currency units per 1000 impressions")
    blocked_categories: list[str] = Field(default_factory=list, max_length=50)
    blocked_advertisers: list[str] = Field(default_factory=list, max_length=50)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Refusal(BaseModel):
    """The body of every error answer (4xx, and 503 with Retry-After): what is wrong and what to do, in words;
    ``errors`` lists the fields of a request that does not validate."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list, description="absent unless the request did not validate")


class OpenRtbError(BaseModel):
    path: str = Field(description="the JSON path of the field, e.g. imp[0].banner.w; empty: the request as a whole")
    rule: str = Field(description="the OpenRTB 2.6 rule it breaks")


class OpenRtbRefusal(BaseModel):
    """A 400 of ``POST /openrtb2/auction``: the request breaks OpenRTB 2.6 (or is JSON too deep to parse)."""

    detail: str
    errors: list[OpenRtbError] = Field(
        default_factory=list, description="absent only for a body nested too deep to parse: there is no path to name"
    )


def openrtb_path(loc: Sequence[str | int]) -> str:
    """A validation error's location as a JSON path: ("body", "imp", 0, "banner", "w") -> imp[0].banner.w."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def openrtb_refusal(errors: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The body of an OpenRTB 400 for ``(path, rule)`` pairs."""
    return {
        "detail": "the bid request breaks OpenRTB 2.6: "
        + "; ".join(f"{path or 'request'}: {rule}" for path, rule in errors),
        "errors": [{"path": path, "rule": rule} for path, rule in errors],
    }


# --- the documented error answers: each a Refusal (OpenRTB's 400 an OpenRtbRefusal), with an example ---

Responses = dict[int | str, dict[str, Any]]
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before a retry", "schema": {"type": "integer"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}


def refused(
    description: str, example: str | dict[str, Any], *, model: type[BaseModel] = Refusal, headers: dict | None = None
) -> dict[str, Any]:
    """One documented error answer: its model, what it means, an example body (a string is its ``detail``)."""
    body = {"detail": example} if isinstance(example, str) else example
    answer: dict[str, Any] = {
        "model": model,
        "description": description,
        "content": {"application/json": {"example": body}},
    }
    if headers:
        answer["headers"] = headers
    return answer


# The app answers a request that does not validate with a Refusal (its own handler), not FastAPI's list.
INVALID_REQUEST: Responses = {
    422: refused(
        "the request does not validate (or, for one event, is refused): each field and what is wrong with it",
        {
            "detail": "age: Input should be greater than or equal to 13",
            "errors": [{"loc": ["body", "age"], "msg": "Input should be greater than or equal to 13",
                        "type": "greater_than_equal"}],
        },
    )
}  # fmt: skip
# Any JSON body: the size cap (AUCTION_MAX_BODY_BYTES) and JSON nested deeper than Python parses.
UNREADABLE_BODY: Responses = {
    400: refused("the body is JSON nested too deep to parse", "There was an error parsing the body"),
    413: refused("the body is over AUCTION_MAX_BODY_BYTES", "request body over 1048576 bytes; send smaller batches"),
}
CAMPAIGN_TOKEN: Responses = {
    401: refused(
        "no bearer token",
        "campaign endpoints need the header 'Authorization: Bearer <AUCTION_API_TOKEN>'",
        headers=WWW_AUTHENTICATE,
    ),
    403: refused("the bearer token is not AUCTION_API_TOKEN", "the bearer token is not AUCTION_API_TOKEN"),
}
STORE_UNAVAILABLE: Responses = {
    503: refused(
        "the campaign store, the shared store or Kafka did not answer: nothing was changed, retry after Retry-After",
        "the campaign store is unavailable (OperationalError); retry: nothing was changed",
        headers=RETRY_AFTER,
    )
}
MODEL_UNAVAILABLE: Responses = {
    503: refused(
        "no CTR model is loaded, or the campaign or shared store did not answer: retry after Retry-After",
        "no CTR model loaded: MLFLOW_TRACKING_URI http://mlflow:5000 does not answer and there is no local copy",
        headers=RETRY_AFTER,
    )
}


def not_found(description: str, example: str) -> Responses:
    return {404: refused(description, example)}


def conflict(description: str, example: str) -> Responses:
    return {409: refused(description, example)}


class TrackingUrls(TypedDict):
    """The served ad's event URLs, each signed for its one event type (GET fires it, no body needed).
    Video ads alone have ``video_start`` and ``video_complete``."""

    impression: str
    click: str
    conversion: Annotated[str, Field(description="the advertiser's postback: a conversion is accepted only through it")]
    video_start: NotRequired[str]
    video_complete: NotRequired[str]


class EventTokens(TypedDict):
    """The same tokens for ``POST /v1/events`` (field ``token``), one per event type; video ads alone have
    ``video_start`` and ``video_complete``."""

    impression: str
    click: str
    conversion: str
    video_start: NotRequired[str]
    video_complete: NotRequired[str]


class AuctionResponse(BaseModel):
    auction_id: str
    ad_id: str
    campaign_id: str
    advertiser_id: str
    category: str
    pricing_model: PricingModel
    clearing_price_micros: int = Field(description="in the winner's billing unit (CPM: per 1000 impressions)")
    clearing_price: str = Field(description="the same, as a decimal string in currency units")
    currency: str = "USD"
    pctr: float
    ecpm_micros: int
    model_version: str
    expires_at: AwareDatetime = Field(description="events are accepted until then; the tokens expire with it")
    # TypedDicts, not models: the auction path hands them over as dicts, validated in the response's one pass.
    tracking: TrackingUrls
    event_tokens: EventTokens


class EventBatch(StrictBody):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class EventBatchResult(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    results: list[EventResult]


class CampaignCreate(CampaignSpec):
    """A campaign to create; ``campaign_id`` is generated when left out.

    Tighter than ``CampaignSpec``: an instruction the store cannot hold must be refused here
    with a 422, not published for the ad manager to fail on.
    """

    bid_micros: int = Field(gt=0, le=MAX_BID_MICROS)
    total_budget_micros: int = Field(gt=0, le=MAX_BUDGET_MICROS)
    daily_budget_micros: int = Field(gt=0, le=MAX_BUDGET_MICROS)
    flight_start: UtcTime
    flight_end: UtcTime
    campaign_id: Id | None = None


class CampaignAccepted(BaseModel):
    campaign_id: str
    instruction_id: str
    action: str
    status: Literal["published"] = "published"
    detail: str = "applied by the ad manager within about a second; GET /v1/campaigns/{id} shows it"


class PacingView(BaseModel):
    """Where a campaign's pacing stands (auction_service.serving.pacing); money in micros."""

    mode: PacingMode
    day_start: AwareDatetime  # of the budget day (PACING_DAY_LENGTH_S long)
    daily_budget_micros: int  # what the day's plan spreads (less than the daily budget when the total left is)
    plan_micros: int  # what the plan has it spend by now
    spent_today_micros: int
    pacing_multiplier: float  # λ: its eCPM in the ranking is multiplied by this
    throttle_rate: float  # the share of auctions it sits out
    exhausts_at: AwareDatetime | None  # at the last interval's spend rate; now when spent; None: not today


class CampaignView(BaseModel):
    campaign_id: str
    status: CampaignStatus
    spec: CampaignSpec
    spent_micros: int
    remaining_budget_micros: int
    spent_today_micros: int | None = None
    pacing: PacingView | None = None  # while the campaign serves


class PredictRequest(StrictBody):
    context: AuctionRequest = Field(default_factory=AuctionRequest)
    campaign_ids: list[Id] = Field(min_length=1, max_length=500)


class Prediction(BaseModel):
    campaign_id: str
    ad_id: str
    pctr: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]
    unknown_campaigns: list[str] = Field(default_factory=list)


def openapi_as_answered(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` without FastAPI's default 422 (``HTTPValidationError``), which it adds to every route
    with parameters or a body that does not document a 422 itself. This app never answers with that body: its
    own handler answers a request that does not validate with a Refusal (422), documented where it can happen,
    or for OpenRTB with an OpenRtbRefusal (400); a route whose parameters cannot fail has no 422 at all."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            default = {"$ref": "#/components/schemas/HTTPValidationError"}
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                answer = operation["responses"].get("422", {})
                if answer.get("content", {}).get("application/json", {}).get("schema") == default:
                    del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    return openapi
