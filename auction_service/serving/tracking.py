"""The signed event URLs of a served ad (``adstream.signing``): one per event type, each with its own token.

A conversion is accepted only through the URL issued for it, so the advertiser's postback
must carry the token the auction gave; a click's token cannot be turned into a conversion.

An exchange's bid also gets a win notice and a billing notice (``BILLING``). The billing notice records the
auction's impression, like the impression URL, but with a token of its own: an exchange fires it from its
servers, so the caller's user agent and address say nothing of the device (the bid request's ``device`` was
screened before the auction instead), and only the billing token lets an impression skip the caller's IVT
check. The device-side impression URL (a VAST ``Impression``) keeps its check.

So that the billing notice's impression is still the device's, its URL carries the bid request's device
address and agent (``device_parameters``), and its token is signed over them (``billing_event_type``): the
event records them as its ``ip`` and ``user_agent``, and the per-device rules of the stream link it to the
device's other events. A rewritten, added or dropped address or agent does not match the token and is refused.
Without a stated device the billing token is the second half of the win notice's HMAC, so it costs none.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import quote

from adstream.events import EventType
from adstream.signing import EventSigner, bound_event_type

DISPLAY = (EventType.IMPRESSION.value, EventType.CLICK.value, EventType.CONVERSION.value)
VIDEO = (*DISPLAY, EventType.VIDEO_START.value, EventType.VIDEO_COMPLETE.value)
BILLING = "billing"  # the token of an exchange's billing notice: an impression, fired by the exchange
EXCHANGE_NOTICES = (EventType.WIN.value, BILLING)
DEVICE_IP, DEVICE_UA = "device_ip", "device_ua"  # the billing notice's device parameters


def device_parameters(ip: str | None, user_agent: str | None) -> dict[str, str]:
    """A device's address and agent as a billing notice's parameters; what the exchange left out stays out."""
    return {name: value for name, value in ((DEVICE_IP, ip), (DEVICE_UA, user_agent)) if value}


@functools.lru_cache(maxsize=4096)  # an exchange's traffic has few distinct agents; quoting one costs ~5 us
def _quoted(value: str) -> str:
    return quote(value, safe="")


def billing_event_type(device: Mapping[str, str]) -> str:
    """What a billing token signs: ``BILLING``, bound to the ``device_parameters`` its burl states."""
    return bound_event_type(BILLING, device) if device else BILLING


def event_tokens(
    signer: EventSigner,
    auction_id: str,
    campaign_id: str,
    expires_at: datetime,
    *,
    video: bool = False,
    win: bool = False,
    device: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The tokens of a served ad's events: a video ad's video events too, and an exchange's win and billing
    notices, the billing notice's signed over the bid request's ``device`` (``device_parameters``)."""
    expires_unix = int(expires_at.timestamp())
    event_types = (VIDEO if video else DISPLAY) + (EXCHANGE_NOTICES if win else ())
    tokens = signer.sign_all(auction_id, event_types, campaign_id, expires_unix)
    if win and device:  # a HMAC of its own, over the device the burl states
        tokens[BILLING] = signer.sign(auction_id, billing_event_type(device), campaign_id, expires_unix)
    return tokens


def event_urls(
    base_url: str, auction_id: str, tokens: dict[str, str], device: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Event type -> its signed URL; the billing notice carries ``device``, which its token was signed over."""
    urls = {event_type: f"{base_url}/v1/events/track/{auction_id}/{event_type}?t={token}"
            for event_type, token in tokens.items()}  # fmt: skip
    if BILLING in tokens:  # the impression, as the exchange's billing notice
        # notice first: "&not" would read as an HTML entity ("¬") to whoever unescapes the URL
        signed = "".join(f"{name}={_quoted(value)}&" for name, value in (device or {}).items())
        billing = f"{base_url}/v1/events/track/{auction_id}/impression?notice=billing&"
        urls[BILLING] = f"{billing}{signed}t={tokens[BILLING]}"
    return urls
