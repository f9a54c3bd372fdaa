"""The bodies the event flow takes and gives (``flows.record_events``), and the field types the API's bodies share.

They are HTTP bodies (``auction_service.api.schemas`` documents them with the rest), kept
here so that serving does not import the API that is built on it. Requests are strict:
unknown fields and wrong types are refused with a message per field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from adstream.events import ChargeStatus, EventType, IvtCategory

ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before the first representable UTC time
        raise ValueError("out of range once converted to UTC") from exc


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class StrictBody(BaseModel):
    """A request body: unknown fields refused, immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EventIn(StrictBody):
    """A user event on a served ad. The event_id makes retries safe: a replay charges nothing."""

    event_id: Id
    event_type: EventType
    auction_id: Id
    token: str | None = Field(
        default=None, max_length=128, description="the event's token from the auction's event_tokens; required"
    )
    event_time: UtcTime | None = Field(default=None, description="UTC; default: when the service receives it")
    user_agent: str | None = Field(default=None, max_length=512, description="the device's; default: User-Agent")
    ip: str | None = Field(default=None, max_length=45, description="the device's; default: the client address")
    exchange_price_cpm_micros: int | None = Field(
        default=None, ge=0, le=1_000_000_000, description="a win notice's clearing price, USD micros per 1000"
    )
    billing_notice: bool = Field(
        default=False,
        description="an impression sent as an exchange's billing notice (burl): its token is the burl's, signed over "
        "the burl's device_ip and device_ua, which go in ip and user_agent (left out when the burl has none); the "
        "caller's user agent and address are neither judged nor recorded (the bid request's device was screened)",
    )


EventStatus = Literal["accepted", "duplicate", "rejected"]


class EventResult(BaseModel):
    event_id: str
    status: EventStatus
    reason: str | None = None  # why it was rejected (a code, then what to fix), or why it was not charged
    charged_micros: int = 0
    charge_status: ChargeStatus | None = None  # accepted and duplicate events: what the ledger did with it
    ivt_category: IvtCategory | None = None
    ivt_reason: str | None = None
    campaign_id: str | None = None  # accepted and duplicate events: the campaign of their auction
