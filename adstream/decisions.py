"""The optimizer's multipliers as every auction replica reads them from the shared store.

The optimizer (``optimizer``) publishes each decision to ``campaign-decisions`` (``CampaignDecision``,
the durable record the lake keeps) and then writes what serving needs to the shared store: per
campaign, in the hash ``<namespace>:optimizer:serve``, the decision's version and one multiplier per
platform in millionths (0: paused there), and it bumps ``<namespace>:optimizer:version`` so replicas
re-read the hash only when something changed. A replica applies a campaign's multipliers only while
the campaign has ``goals.optimize`` on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adstream.events import PLATFORMS

MULTIPLIER_SCALE = 1_000_000  # multipliers are integer millionths
MAX_MULTIPLIER_PPM = 2 * MULTIPLIER_SCALE


def serve_key(namespace: str) -> str:
    return f"{namespace}:optimizer:serve"


def version_key(namespace: str) -> str:
    return f"{namespace}:optimizer:version"


def pack(version: int, multipliers_ppm: Sequence[int]) -> str:
    """``version`` and the multipliers in PLATFORMS order, as the hash's value."""
    if len(multipliers_ppm) != len(PLATFORMS):
        raise ValueError(f"one multiplier per platform ({len(PLATFORMS)}), got {len(multipliers_ppm)}")
    if any(not 0 <= m <= MAX_MULTIPLIER_PPM for m in multipliers_ppm):
        raise ValueError(f"multipliers must be in [0, {MAX_MULTIPLIER_PPM}] millionths")
    return " ".join(str(int(value)) for value in (version, *multipliers_ppm))


def unpack(value: bytes | str) -> tuple[int, tuple[int, ...]]:
    """(version, multipliers) of a hash value; ValueError when it is not one ``pack`` wrote."""
    text = value.decode() if isinstance(value, bytes) else value
    version, *multipliers = (int(part) for part in text.split(" "))
    if len(multipliers) != len(PLATFORMS) or any(not 0 <= m <= MAX_MULTIPLIER_PPM for m in multipliers):
        raise ValueError(f"not a decision: {text[:80]!r}")
    return version, tuple(multipliers)


def unpack_all(raw: Mapping[bytes | str, bytes | str]) -> dict[str, tuple[int, ...]]:
    """The hash as campaign -> multipliers; an entry that does not parse is left out (and counted by the caller)."""
    decided = {}
    for campaign_id, value in raw.items():
        try:
            decided[campaign_id.decode() if isinstance(campaign_id, bytes) else campaign_id] = unpack(value)[1]
        except ValueError:
            continue
    return decided
