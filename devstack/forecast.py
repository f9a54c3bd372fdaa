"""A delivery forecast for `make run`'s campaigns, and daily budgets booked from it.

An ad server forecasts what a campaign can deliver before it books its budget: a budget the campaign
cannot spend at its full bid is not one pacing can meet, and it says nothing about pacing. Here the
seeded campaigns first serve unpaced (asap, with daily budgets no run spends) to a few minutes of
traffic before the pacing day; each campaign's spend per auction there, times the auctions the day
expects, is what it can win at its full bid. Its daily budget is booked at a share of that
(``pressure``), so every campaign that wins is bound by its budget, not its bid, and the platform as
a whole is budget-constrained. The probe campaigns are then stopped, and the same campaigns are
booked under new ids: a fresh ledger and fresh frequency counts for the day.

A campaign the forecast saw win nothing is booked at the smallest budget booked, and at least
UNWON_CHARGES of its largest single charge (a click or conversion at its bid, a thousandth of its CPM
bid): pacing may still find it traffic once its competitors are held back, and a budget one charge can
mostly exhaust would say nothing about pacing.

**Optimized campaigns and their static twins.** The ``pairs`` CPC and CPM campaigns the forecast saw
spend most are each booked twice, with the same budget, bid, targeting and creative, pacing even:
once with ``goals.optimize`` on (the campaign optimizer re-bids it per platform) and once without
(its static twin), so the run can compare conversions per dollar at equal spend. The two are the
arms of an audience split (``Targeting.audience_split``): each serves its own half of the users with
half the campaign's budget, so they never bid against each other (with equal bids the auction's
tie-break would hand every shared auction to one of them, and each would set the other's price).
The optimized one values a conversion at what its bid implies at the optimizer's prior rates (CPC:
bid / 5 %; CPM: bid / 1000 / (3 % x 5 %)), so its multiplier is 1 where a platform clicks and
converts at those rates and moves with the platform's own, which the optimizer has to find. CPA
campaigns are not paired: they pay per conversion, the same price wherever it happens, so the
optimizer bids their value on every platform and there is nothing per platform to compare.

**Days.** A run of several pacing days books a total budget of that many daily budgets, so each day
has its own daily budget to pace.

Pure functions: the run (``devstack.run``) does the serving, reading and publishing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from adstream.events import (
    MAX_BID_MICROS,
    MICROS_PER_UNIT,
    AudienceSplit,
    CampaignGoals,
    CampaignInstruction,
    CampaignSpec,
    PacingMode,
    PricingModel,
)
from auction_service.campaign_store.instructions import (
    CENT_MICROS,
    SEED_INSTRUCTION_PREFIX,
    create_instruction,
    seed_instructions,
)
from optimizer.service import PRIOR_CTR, PRIOR_CVR

# A campaign the forecast saw win nothing can pay this many of its largest charges a day at least.
UNWON_CHARGES = 50

# The probe's daily budget: more than any campaign spends in a probe, so none is held back by it.
PROBE_DAILY_BUDGET_MICROS = 10_000 * MICROS_PER_UNIT


def probe_instructions(catalog: list[dict], n: int, seed: int, now: datetime) -> list[CampaignInstruction]:
    """The ``n`` seeded campaigns, unpaced and unbounded for the forecast."""
    budget = (PROBE_DAILY_BUDGET_MICROS, PROBE_DAILY_BUDGET_MICROS)
    return seed_instructions(catalog, n, seed, now, asap_share=1.0, daily_budget_micros=budget)


def for_run(probe: Sequence[CampaignInstruction], run: str) -> list[CampaignInstruction]:
    """The probe campaigns under ids of their own ``run``: a campaign id is created once in a store, so a
    rerun on the same store needs new ones (the campaigns themselves stay the seed's)."""
    renamed = []
    for instruction in probe:
        campaign_id = f"cmp-{hashlib.sha256(f'{run}:{instruction.campaign_id}'.encode()).hexdigest()[:16]}"
        update = {"campaign_id": campaign_id, "instruction_id": f"{SEED_INSTRUCTION_PREFIX}{campaign_id}"}
        renamed.append(instruction.model_copy(update=update))
    return renamed


def booked_id(probe_id: str) -> str:
    """The id the campaign is booked under after its probe ``probe_id`` (the run's: ``for_run``)."""
    return f"cmp-{hashlib.sha256(f'booked:{probe_id}'.encode()).hexdigest()[:16]}"


def booked_budgets(
    probe_spend_micros: Mapping[str, int],
    campaign_ids: Sequence[str],
    *,
    probe_auctions: int,
    day_auctions: float,
    pressure: float,
    unit_charges_micros: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Each campaign's daily budget in whole cents: ``pressure`` x its probe spend per auction x the
    auctions of the day; for one that spent nothing, the smallest such budget (a cent if none did) or
    UNWON_CHARGES x its largest single charge (``unit_charges_micros``), whichever is more."""
    if probe_auctions <= 0 or day_auctions <= 0:
        raise ValueError(f"the forecast needs auctions: probe {probe_auctions}, day {day_auctions}")
    if not 0 < pressure <= 1:
        raise ValueError(f"pressure must be in (0, 1], got {pressure}")
    scale = pressure * day_auctions / probe_auctions
    budgets = {
        cid: math.floor(probe_spend_micros.get(cid, 0) * scale / CENT_MICROS) * CENT_MICROS for cid in campaign_ids
    }
    floor = min((budget for budget in budgets.values() if budget > 0), default=CENT_MICROS)
    units = unit_charges_micros or {}

    def unwon(cid: str) -> int:
        return max(floor, math.ceil(UNWON_CHARGES * units.get(cid, 0) / CENT_MICROS) * CENT_MICROS)

    return {cid: budget if budget > 0 else unwon(cid) for cid, budget in budgets.items()}


def unit_charge_micros(spec: CampaignSpec) -> int:
    """The most one billable event can charge the campaign: its bid per click or conversion, a thousandth of its CPM."""
    if spec.pricing_model == PricingModel.CPM:
        return math.ceil(spec.bid_micros / 1000)
    return spec.bid_micros


def twin_id(probe_id: str) -> str:
    """The id of the static twin of the optimized campaign booked from ``probe_id``."""
    return f"cmp-{hashlib.sha256(f'twin:{probe_id}'.encode()).hexdigest()[:16]}"


def pair_bases(probe: Sequence[CampaignInstruction], spend_micros: Mapping[str, int], pairs: int) -> list[str]:
    """The probe ids of the ``pairs`` CPC and CPM campaigns that spent most (ties: the first seeded)."""
    candidates = [
        (-spend_micros.get(i.campaign_id, 0), n, i.campaign_id)
        for n, i in enumerate(probe)
        if i.campaign is not None and i.campaign.pricing_model in (PricingModel.CPC, PricingModel.CPM)
    ]
    return [campaign_id for spent, _, campaign_id in sorted(candidates)[:pairs] if spent < 0]


def conversion_value_micros(spec: CampaignSpec) -> int:
    """What the optimized campaign values a conversion at: what its bid implies at the optimizer's prior rates."""
    if spec.pricing_model == PricingModel.CPA:
        return spec.bid_micros
    per_click = spec.bid_micros if spec.pricing_model == PricingModel.CPC else spec.bid_micros / 1000 / PRIOR_CTR
    return min(MAX_BID_MICROS, round(per_click / PRIOR_CVR))


def booked_instructions(
    catalog: list[dict],
    probe: Sequence[CampaignInstruction],
    budgets: Mapping[str, int],
    *,
    seed: int,
    now: datetime,
    asap_share: float,
    pairs: Sequence[str] = (),
    days: int = 1,
) -> list[CampaignInstruction]:
    """The probe's campaigns again under their booked ids, with their booked daily budgets and pacing
    modes (``asap_share`` of them asap, as ``seed_instructions`` spreads them); each probe id in ``pairs``
    booked instead as an optimized campaign and its static twin, pacing even; total budgets of ``days``
    daily budgets. ``now`` is the probe's."""
    paced = seed_instructions(catalog, len(probe), seed, now, asap_share=asap_share)
    booked = []
    for probed, moded in zip(probe, paced, strict=True):
        assert probed.campaign is not None and moded.campaign is not None
        # The probe's ids are its run's (``for_run``): the campaigns themselves must be the seed's.
        seen, drawn = (
            (probed.campaign.advertiser_id, probed.campaign.ad_id),
            (moded.campaign.advertiser_id, moded.campaign.ad_id),
        )
        if seen != drawn:
            raise ValueError(
                f"the probe does not match seed {seed}: {probed.campaign_id} is {seen}, the seed drew {drawn}"
            )
        daily = budgets[probed.campaign_id]
        paired = probed.campaign_id in pairs
        mode = PacingMode.EVEN if paired else PacingMode(moded.campaign.pacing_mode)
        spec = probed.campaign.model_copy(
            update={"daily_budget_micros": daily, "total_budget_micros": daily * days, "pacing_mode": mode}
        )
        versions = [(booked_id(probed.campaign_id), spec)]
        if paired:
            versions = paired_versions(probed.campaign_id, spec, days)
        for campaign_id, version in versions:
            booked.append(
                create_instruction(
                    version, now=now, campaign_id=campaign_id, instruction_id=f"{SEED_INSTRUCTION_PREFIX}{campaign_id}"
                )
            )
    return booked


def paired_versions(probe_id: str, spec: CampaignSpec, days: int = 1) -> list[tuple[str, CampaignSpec]]:
    """The optimized campaign and its static twin booked from ``probe_id``: arms 0 and 1 of an audience
    split, so they never meet in one auction, each with half the daily budget for its half of the users
    (and ``days`` of those in all)."""
    experiment = f"optimizer-ab:{probe_id}"
    half = max(CENT_MICROS, spec.daily_budget_micros // 2 // CENT_MICROS * CENT_MICROS)
    goals = CampaignGoals(optimize=True, conversion_value_micros=conversion_value_micros(spec))

    def arm(n: int, **update: object) -> CampaignSpec:
        targeting = spec.targeting.model_copy(update={"audience_split": AudienceSplit(experiment=experiment, arm=n)})
        return spec.model_copy(
            update={"targeting": targeting, "daily_budget_micros": half, "total_budget_micros": half * days, **update}
        )

    return [(booked_id(probe_id), arm(0, goals=goals)), (twin_id(probe_id), arm(1))]
