"""HMAC-SHA256 event tokens: what a served ad's event URLs carry so that only its events are charged.

A token is ``<key_id>.<expires_unix>.<signature>``. The signature is one 128-bit half (32 hex
characters; RFC 2104 allows truncating to half the hash) of HMAC-SHA256 over the auction, the
event types of its slot, the campaign and the expiry. Event types are signed in pairs, each
taking its own half of one HMAC (``SLOTS``): the halves of a MAC are independent, so holding the
impression's token tells nothing of the click's, and a filled auction costs two HMACs for its
three display tokens rather than three. A token for one auction's impression therefore cannot be
replayed as its click, as another auction's event, or after it expires. Keys are named, so they
can be rotated: sign with the current key, verify with any.

A token may also cover parameters its URL carries (``bound_event_type``): an OpenRTB billing notice carries
the bid request's device address and agent, which the exchange's server could otherwise rewrite.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from adstream.settings import LOCAL_SIGNING_SECRET, Settings

MIN_SECRET_BYTES = 32
SIGNATURE_BYTES = 16  # half of the HMAC: forging a token takes 2**128 tries on average
# event type -> (the HMAC's message label, which half); a type not listed has an HMAC of its own.
SLOTS = {
    "impression": ("impression+click", 0),
    "click": ("impression+click", 1),
    "conversion": ("conversion+video_start", 0),
    "video_start": ("conversion+video_start", 1),
    # An exchange's notices: the win (its own HMAC before billing notices existed, so its tokens are unchanged)
    # and the billing notice, whose token is in the bid response only, never in the markup a device sees.
    "win": ("win", 0),
    "billing": ("win", 1),
}


class TokenError(StrEnum):
    """Why a token was refused; the value is the reason code counted and quarantined."""

    MISSING = "token_missing"
    MALFORMED = "token_malformed"
    UNKNOWN_KEY = "token_unknown_key"
    BAD_SIGNATURE = "signature_invalid"
    EXPIRED = "token_expired"


class TokenRefused(ValueError):
    def __init__(self, error: TokenError, detail: str) -> None:
        super().__init__(detail)
        self.error = error


@dataclass(frozen=True)
class EventSigner:
    keys: dict[str, bytes]  # key id -> secret
    current: str  # the key id new tokens are signed with
    _pads_cache: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventSigner:
        keys = parse_keys(settings.event_signing_keys.get_secret_value())
        if settings.event_signing_key_id not in keys:
            raise ValueError(
                f"EVENT_SIGNING_KEY_ID={settings.event_signing_key_id!r} is not among EVENT_SIGNING_KEYS' key ids "
                f"({', '.join(sorted(keys))})"
            )
        if not settings.is_local:
            weak = [kid for kid, secret in keys.items() if secret == LOCAL_SIGNING_SECRET.encode() or
                    len(secret) < MIN_SECRET_BYTES]  # fmt: skip
            if weak:
                raise ValueError(
                    f"EVENT_SIGNING_KEYS has the local default or a secret under {MIN_SECRET_BYTES} bytes "
                    f"(key ids {', '.join(weak)}) while ADSTREAM_ENV={settings.adstream_env.value}; set real secrets"
                )
        return cls(keys, settings.event_signing_key_id)

    def sign(self, auction_id: str, event_type: str, campaign_id: str, expires_unix: int) -> str:
        return self.sign_all(auction_id, (event_type,), campaign_id, expires_unix)[event_type]

    def sign_all(
        self, auction_id: str, event_types: Iterable[str], campaign_id: str, expires_unix: int
    ) -> dict[str, str]:
        """A token per event type of one auction: the signatures ``_signature`` checks, one HMAC per slot,
        computed from the key's precomputed pads (the auction path signs three to five tokens per fill)."""
        inner, outer = self._pads(self.current)
        head, tail = f"{auction_id}\n".encode(), f"\n{campaign_id}\n{expires_unix}".encode()
        prefix = f"{self.current}.{expires_unix}."
        macs: dict[str, bytes] = {}
        tokens = {}
        for event_type in event_types:
            label, half = SLOTS.get(event_type, (event_type, 0))
            mac = macs.get(label)
            if mac is None:
                keyed = inner.copy()
                keyed.update(head + label.encode() + tail)
                digest = outer.copy()
                digest.update(keyed.digest())
                mac = macs[label] = digest.digest()
            tokens[event_type] = prefix + mac[half * SIGNATURE_BYTES : (half + 1) * SIGNATURE_BYTES].hex()
        return tokens

    def _pads(self, key_id: str) -> tuple[Any, Any]:
        # RFC 2104's inner and outer hashes, keyed once per key: each token then costs two hash copies.
        pads = self._pads_cache.get(key_id)
        if pads is None:
            block = hashlib.sha256().block_size
            key = self.keys[key_id]
            key = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
            pads = self._pads_cache[key_id] = (
                hashlib.sha256(bytes(byte ^ 0x36 for byte in key)),
                hashlib.sha256(bytes(byte ^ 0x5C for byte in key)),
            )
        return pads

    def verify(self, token: str | None, auction_id: str, event_type: str, campaign_id: str, now_unix: float) -> None:
        """Returns when ``token`` was issued for this event of this auction and has not expired; raises
        ``TokenRefused`` otherwise."""
        if not token:
            raise TokenRefused(TokenError.MISSING, "no event token: send the token of the ad's event URL")
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
            raise TokenRefused(TokenError.MALFORMED, "the event token is malformed: send it as the auction gave it")
        key_id, expires, signature = parts
        secret = self.keys.get(key_id)
        if secret is None:
            raise TokenRefused(
                TokenError.UNKNOWN_KEY, f"the event token's key {key_id[:32]!r} is not known (rotated out?)"
            )
        expected = _signature(secret, auction_id, event_type, campaign_id, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise TokenRefused(
                TokenError.BAD_SIGNATURE,
                f"the event token does not match this {event_type} of auction {auction_id}: "
                "each event type of each auction has its own token",
            )
        if int(expires) < now_unix:
            raise TokenRefused(TokenError.EXPIRED, "the event token has expired: events are accepted until its expiry")


def bound_event_type(event_type: str, parameters: Mapping[str, str]) -> str:
    """What to sign, and verify, for ``event_type`` with ``parameters`` its URL carries (an HMAC of their own):
    each name and value prefixed by its length, in name order, so no two sets of parameters read the same (a
    value holding a separator cannot pass its rest off as the next field)."""
    fields = "".join(f"{len(name)}:{name}{len(value)}:{value}" for name, value in sorted(parameters.items()))
    return f"{event_type}?{fields}"


def parse_keys(value: str) -> dict[str, bytes]:
    """``"id1:secret1,id2:secret2"`` -> {id: secret}; refuses empty ids or secrets and repeated ids."""
    keys: dict[str, bytes] = {}
    for pair in filter(None, (item.strip() for item in value.split(","))):
        key_id, sep, secret = pair.partition(":")
        if not sep or not key_id or not secret or "." in key_id:
            raise ValueError("EVENT_SIGNING_KEYS must be 'key_id:secret' pairs, comma-separated, ids without '.'")
        if key_id in keys:
            raise ValueError(f"EVENT_SIGNING_KEYS names key id {key_id!r} twice")
        keys[key_id] = secret.encode()
    if not keys:
        raise ValueError("EVENT_SIGNING_KEYS is empty: set at least one 'key_id:secret' pair")
    return keys


def _signature(secret: bytes, auction_id: str, event_type: str, campaign_id: str, expires_unix: int) -> str:
    label, half = SLOTS.get(event_type, (event_type, 0))
    message = f"{auction_id}\n{label}\n{campaign_id}\n{expires_unix}".encode()
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    return mac[half * SIGNATURE_BYTES : (half + 1) * SIGNATURE_BYTES].hex()
