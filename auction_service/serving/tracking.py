"""The signed event URLs of a served ad (``adstream.signing``): one per event type, each with its own token.

A conversion is accepted only through the URL issued for it, so the advertiser's postback
must carry the token the auction gave; a click's token cannot be turned into a conversion.
"""

from __future__ import annotations

from datetime import datetime

from adstream.events import EventType
from adstream.signing import EventSigner

TRACKED = (EventType.IMPRESSION, EventType.CLICK, EventType.CONVERSION, EventType.VIDEO_START,
           EventType.VIDEO_COMPLETE)  # fmt: skip


def event_tokens(signer: EventSigner, auction_id: str, campaign_id: str, expires_at: datetime) -> dict[str, str]:
    expires = int(expires_at.timestamp())
    return {str(event_type): signer.sign(auction_id, event_type, campaign_id, expires) for event_type in TRACKED}


def event_urls(base_url: str, auction_id: str, tokens: dict[str, str]) -> dict[str, str]:
    return {event_type: f"{base_url}/v1/events/track/{auction_id}/{event_type}?t={token}"
            for event_type, token in tokens.items()}  # fmt: skip
