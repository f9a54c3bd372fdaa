"""The signed event URLs of a served ad (``adstream.signing``): one per event type, each with its own token.

A conversion is accepted only through the URL issued for it, so the advertiser's postback
must carry the token the auction gave; a click's token cannot be turned into a conversion.

An exchange's bid also gets a win notice and a billing notice (``BILLING``). The billing notice records the
auction's impression, like the impression URL, but with a token of its own: an exchange fires it from its
servers, so the caller's user agent and address say nothing of the device (the bid request's ``device`` was
screened before the auction instead), and only the billing token lets an impression skip the caller's IVT
check. The device-side impression URL (a VAST ``Impression``) keeps its check.
"""

from __future__ import annotations

from datetime import datetime

from adstream.events import EventType
from adstream.signing import EventSigner

DISPLAY = (EventType.IMPRESSION.value, EventType.CLICK.value, EventType.CONVERSION.value)
VIDEO = (*DISPLAY, EventType.VIDEO_START.value, EventType.VIDEO_COMPLETE.value)
BILLING = "billing"  # the token of an exchange's billing notice: an impression, fired by the exchange
EXCHANGE_NOTICES = (EventType.WIN.value, BILLING)


def event_tokens(
    signer: EventSigner,
    auction_id: str,
    campaign_id: str,
    expires_at: datetime,
    *,
    video: bool = False,
    win: bool = False,
) -> dict[str, str]:
    """The tokens of a served ad's events: a video ad's video events too, and an exchange's win and billing
    notices."""
    event_types = (VIDEO if video else DISPLAY) + (EXCHANGE_NOTICES if win else ())
    return signer.sign_all(auction_id, event_types, campaign_id, int(expires_at.timestamp()))


def event_urls(base_url: str, auction_id: str, tokens: dict[str, str]) -> dict[str, str]:
    urls = {event_type: f"{base_url}/v1/events/track/{auction_id}/{event_type}?t={token}"
            for event_type, token in tokens.items()}  # fmt: skip
    if BILLING in tokens:  # the impression, as the exchange's billing notice
        # notice first: "&not" would read as an HTML entity ("¬") to whoever unescapes the URL
        urls[BILLING] = f"{base_url}/v1/events/track/{auction_id}/impression?notice=billing&t={tokens[BILLING]}"
    return urls
