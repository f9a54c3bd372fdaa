"""The optimizer's multipliers as every auction replica reads them from the shared store.

The optimizer (``optimizer``) publishes each decision to ``campaign-decisions`` (``CampaignDecision``,
the durable record the lake keeps) and then writes what serving needs to the shared store: per
campaign, in the hash ``<namespace>:optimizer:serve``, the decision's version, the time of the newest
event it had seen and one multiplier per platform in millionths (0: paused there); and it bumps
``<namespace>:optimizer:version`` so replicas re-read the hash only when something changed. A replica
applies a campaign's multipliers only while the campaign has ``goals.optimize`` on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from adstream.events import CHANNELS, DEVICE_TYPES, PLATFORMS

MULTIPLIER_SCALE = 1_000_000  # multipliers are integer millionths
MAX_MULTIPLIER_PPM = 2 * MULTIPLIER_SCALE


def platform_index(channel: str | None, device_type: str | None) -> int:
    """The index of (channel, device type) in PLATFORMS; -1 for a pair outside them."""
    if channel not in CHANNELS or device_type not in DEVICE_TYPES:
        return -1
    return CHANNELS.index(channel) * len(DEVICE_TYPES) + DEVICE_TYPES.index(device_type)


def serve_key(namespace: str) -> str:
    return f"{namespace}:optimizer:serve"


def version_key(namespace: str) -> str:
    return f"{namespace}:optimizer:version"


class Served(NamedTuple):
    """One campaign's entry in the hash: its decision's version, the newest event time (microseconds since the
    epoch) the decision had seen, and one multiplier per platform in millionths."""

    version: int
    data_until_us: int
    multipliers_ppm: tuple[int, ...]


def pack(version: int, data_until_us: int, multipliers_ppm: Sequence[int]) -> str:
    """``version``, ``data_until_us`` and the multipliers in PLATFORMS order, as the hash's value."""
    if len(multipliers_ppm) != len(PLATFORMS):
        raise ValueError(f"one multiplier per platform ({len(PLATFORMS)}), got {len(multipliers_ppm)}")
    if any(not 0 <= m <= MAX_MULTIPLIER_PPM for m in multipliers_ppm):
        raise ValueError(f"multipliers must be in [0, {MAX_MULTIPLIER_PPM}] millionths")
    return " ".join(str(int(value)) for value in (version, data_until_us, *multipliers_ppm))


def unpack(value: bytes | str) -> Served:
    """The entry of a hash value; ValueError when it is not one ``pack`` wrote."""
    text = value.decode() if isinstance(value, bytes) else value
    version, data_until_us, *multipliers = (int(part) for part in text.split(" "))
    if len(multipliers) != len(PLATFORMS) or any(not 0 <= m <= MAX_MULTIPLIER_PPM for m in multipliers):
        raise ValueError(f"not a decision: {text[:80]!r}")
    return Served(version, data_until_us, tuple(multipliers))


def unpack_all(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Served]:
    """The hash as campaign -> entry; an entry that does not parse is left out."""
    decided = {}
    for campaign_id, value in raw.items():
        try:
            decided[campaign_id.decode() if isinstance(campaign_id, bytes) else campaign_id] = unpack(value)
        except ValueError:
            continue
    return decided
