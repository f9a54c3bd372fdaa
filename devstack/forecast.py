"""A delivery forecast for `make run`'s campaigns, and daily budgets booked from it.

An ad server forecasts what a campaign can deliver before it books its budget: a budget the campaign
cannot spend at its full bid is not one pacing can meet, and it says nothing about pacing. Here the
seeded campaigns first serve unpaced (asap, with daily budgets no run spends) to a few minutes of
traffic before the pacing day; each campaign's spend per auction there, times the auctions the day
expects, is what it can win at its full bid. Its daily budget is booked at a share of that
(``pressure``), so every campaign that wins is bound by its budget, not its bid, and the platform as
a whole is budget-constrained. The probe campaigns are then stopped, and the same campaigns are
booked under new ids: a fresh ledger and fresh frequency counts for the day.

A campaign the forecast saw win nothing is booked at the smallest budget booked: pacing may still
find it traffic once its competitors are held back, and the pacing report tells such campaigns apart.

Pure functions: the run (``devstack.run``) does the serving, reading and publishing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from adstream.events import MICROS_PER_UNIT, CampaignInstruction, PacingMode
from auction_service.campaign_store.instructions import CENT_MICROS, create_instruction, seed_instructions

# The probe's daily budget: more than any campaign spends in a probe, so none is held back by it.
PROBE_DAILY_BUDGET_MICROS = 10_000 * MICROS_PER_UNIT


def probe_instructions(catalog: list[dict], n: int, seed: int, now: datetime) -> list[CampaignInstruction]:
    """The ``n`` seeded campaigns, unpaced and unbounded for the forecast."""
    budget = (PROBE_DAILY_BUDGET_MICROS, PROBE_DAILY_BUDGET_MICROS)
    return seed_instructions(catalog, n, seed, now, asap_share=1.0, daily_budget_micros=budget)


def booked_id(probe_id: str) -> str:
    """The id the campaign is booked under after its probe ``probe_id`` (stable, so a rerun books the same)."""
    return f"cmp-{hashlib.sha256(f'booked:{probe_id}'.encode()).hexdigest()[:16]}"


def booked_budgets(
    probe_spend_micros: Mapping[str, int],
    campaign_ids: Sequence[str],
    *,
    probe_auctions: int,
    day_auctions: float,
    pressure: float,
) -> dict[str, int]:
    """Each campaign's daily budget in whole cents: ``pressure`` x its probe spend per auction x the
    auctions of the day; the smallest such budget for one that spent nothing (a cent if none did)."""
    if probe_auctions <= 0 or day_auctions <= 0:
        raise ValueError(f"the forecast needs auctions: probe {probe_auctions}, day {day_auctions}")
    if not 0 < pressure <= 1:
        raise ValueError(f"pressure must be in (0, 1], got {pressure}")
    scale = pressure * day_auctions / probe_auctions
    budgets = {
        cid: math.floor(probe_spend_micros.get(cid, 0) * scale / CENT_MICROS) * CENT_MICROS for cid in campaign_ids
    }
    floor = min((budget for budget in budgets.values() if budget > 0), default=CENT_MICROS)
    return {cid: budget if budget > 0 else floor for cid, budget in budgets.items()}


def booked_instructions(
    catalog: list[dict],
    probe: Sequence[CampaignInstruction],
    budgets: Mapping[str, int],
    *,
    seed: int,
    now: datetime,
    asap_share: float,
) -> list[CampaignInstruction]:
    """The probe's campaigns again under their booked ids, with their booked daily budgets and pacing
    modes (``asap_share`` of them asap, as ``seed_instructions`` spreads them). ``now`` is the probe's."""
    paced = seed_instructions(catalog, len(probe), seed, now, asap_share=asap_share)
    booked = []
    for probed, moded in zip(probe, paced, strict=True):
        if probed.campaign_id != moded.campaign_id:
            raise ValueError(f"the probe does not match seed {seed}: {probed.campaign_id} != {moded.campaign_id}")
        assert probed.campaign is not None and moded.campaign is not None
        daily = budgets[probed.campaign_id]
        mode = moded.campaign.pacing_mode
        spec = probed.campaign.model_copy(
            update={"daily_budget_micros": daily, "total_budget_micros": daily, "pacing_mode": PacingMode(mode)}
        )
        campaign_id = booked_id(probed.campaign_id)
        booked.append(create_instruction(spec, now=now, campaign_id=campaign_id, instruction_id=f"seed-{campaign_id}"))
    return booked
