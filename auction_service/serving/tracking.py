"""The signed event URLs of a served ad (``adstream.signing``): one per event type, each with its own token.

A conversion is accepted only through the URL issued for it, so the advertiser's postback
must carry the token the auction gave; a click's token cannot be turned into a conversion.
"""

from __future__ import annotations

from datetime import datetime

from adstream.events import EventType
from adstream.signing import EventSigner

DISPLAY = (EventType.IMPRESSION.value, EventType.CLICK.value, EventType.CONVERSION.value)
VIDEO = (*DISPLAY, EventType.VIDEO_START.value, EventType.VIDEO_COMPLETE.value)


def event_tokens(
    signer: EventSigner,
    auction_id: str,
    campaign_id: str,
    expires_at: datetime,
    *,
    video: bool = False,
    win: bool = False,
) -> dict[str, str]:
    """The tokens of a served ad's events: a video ad's video events too, and an exchange's win notice."""
    event_types = (VIDEO if video else DISPLAY) + ((EventType.WIN.value,) if win else ())
    return signer.sign_all(auction_id, event_types, campaign_id, int(expires_at.timestamp()))


def event_urls(base_url: str, auction_id: str, tokens: dict[str, str]) -> dict[str, str]:
    return {event_type: f"{base_url}/v1/events/track/{auction_id}/{event_type}?t={token}"
            for event_type, token in tokens.items()}  # fmt: skip
