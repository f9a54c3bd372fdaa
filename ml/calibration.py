"""pCTR calibration: the cheap monotone map from the model's score to the probability the auction prices.

Pure numpy: no I/O, no clock (times are passed in).

- **Prior correction** (cold start). The bootstrap training data is about half clicks, live
  traffic a few percent. A model fitted on data whose click rate is ``r`` predicts odds
  inflated by odds(r) / odds(prior) over traffic whose rate is ``prior``, as when negatives
  are down-sampled by w = odds(prior) / odds(r) (He et al., "Practical Lessons from
  Predicting Clicks on Ads at Facebook", 2014: q = p / (p + (1 - p) / w)). In log-odds the
  correction is a shift, logit(q) = logit(p) + log w: a Platt map with slope 1.
- **Online Platt scaling** (Platt 1999): logit(q) = a x logit(p) + b, fitted on the logged
  impressions of one model version and their attributed clicks, each weighted by recency
  (half-life ``half_life_s``) so the map follows drift, with a Gaussian prior pulling (a, b)
  toward the previous calibration so a few clicks cannot swing it. Platt rather than isotonic:
  two parameters are estimated well from the few hundred clicks minutes of traffic give at a
  few percent CTR, the map is strictly increasing (it never reorders candidates nor makes the
  ties a step function would, which matter in an auction that ranks by pCTR), it extrapolates
  to scores the window did not see, and applying it to 100 candidates costs a few microseconds.
  The slope is kept in [MIN_SLOPE, MAX_SLOPE], so the map stays increasing whatever the data.
- **Per pricing model** (the winner's curse). An auction serves the candidate it values most, and
  it values a CPC or CPA candidate by its pCTR: among them, the ones whose pCTR was overestimated
  win more often, so their served pCTRs run above their clicks even when the model is calibrated
  on average (a CPM candidate's value does not depend on its pCTR, so it is not selected on it).
  The map therefore adds a log-odds offset per pricing model, logit(q) = a x logit(p) + b + d[m],
  fitted jointly with (a, b), each offset with a Gaussian prior at the previous calibration's (sd
  PRIOR_SD_OFFSET; 0 at first): one pricing model's few clicks leave its offset where the earlier
  traffic put it, its thousands correct it.
- **Per ad category**. A model trained on the bootstrap data can be biased for a whole ad category on
  live traffic (live clicks follow users' affinity for a category, which the bootstrap measured
  differently); the auction then selects the categories it overrates, for CPC and CPA alike. The map
  adds a log-odds offset per ad category too, e[c], fitted jointly the same way (sd
  PRIOR_SD_CATEGORY): logit(q) = a x logit(p) + b + d[m] + e[c]. A category with no fitted offset,
  or a candidate without one, gets none.

Calibrating never retrains the model: ``Calibration`` is applied after the scorer.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property

import numpy as np
import pandas as pd

from adstream.events import NOT_DELIVERED, EventType

CLIP = 1e-7  # scores are clipped to [CLIP, 1 - CLIP] before the logit: 0 and 1 have none
MIN_SLOPE, MAX_SLOPE = 0.2, 5.0
NEWTON_STEPS = 25
# The prior's standard deviations on (slope, intercept): a refit moves (a, b) as far as the
# data asks once there are some hundreds of clicks, and little on a handful.
PRIOR_SD_SLOPE = 0.5
PRIOR_SD_INTERCEPT = 1.0
PRIOR_SD_OFFSET = 0.5
PRIOR_SD_CATEGORY = 0.5
# The pricing models the map has an offset for, in the order of the codes ``pricing_codes`` gives
# (a row of none of them, code -1, gets no offset).
PRICING_MODELS = ("CPM", "CPC", "CPA")
CALIBRATION_ARTIFACT = "calibration.json"  # beside the registered model in MLflow


class CalibrationKind:
    IDENTITY = "identity"  # no correction known (a model trained before calibration existed)
    PRIOR = "prior"  # the cold-start prior correction, logged at registration
    PLATT = "platt"  # fitted online on logged traffic


def logit(p: np.ndarray | float) -> np.ndarray:
    clipped = np.clip(np.asarray(p, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of -|z| only, so no overflow warning at either end
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


@dataclass(frozen=True)
class Calibration:
    """logit(served pCTR) = slope x logit(model score) + intercept, for one model version."""

    model_version: str
    kind: str
    slope: float = 1.0
    intercept: float = 0.0
    fitted_at: str = ""  # ISO time of the fit; "" for the prior
    impressions: int = 0  # the examples behind an online fit
    clicks: int = 0
    train_positive_rate: float | None = None  # for the prior: the training data's click rate
    prior_ctr: float | None = None  # for the prior: the live click rate it corrects toward
    # Log-odds added for candidates of each pricing model (module doc: the winner's curse).
    offset_cpm: float = 0.0
    offset_cpc: float = 0.0
    offset_cpa: float = 0.0
    # Log-odds added per ad category, (category, offset) sorted by category (module doc); a mapping is taken too.
    category_offsets: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        pairs = self.category_offsets
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        object.__setattr__(self, "category_offsets", tuple(sorted((str(c), float(o)) for c, o in items)))

    @property
    def calibration_id(self) -> str:
        """Names this calibration in the auction log: the version, the kind and when it was fitted."""
        return f"{self.model_version}:{self.kind}" + (f":{self.fitted_at}" if self.fitted_at else "")

    @cached_property
    def offsets(self) -> np.ndarray:
        """The offsets in PRICING_MODELS order, then 0 for a row of none of them (code -1 indexes it)."""
        return np.array([self.offset_cpm, self.offset_cpc, self.offset_cpa, 0.0])

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0 and not self.offsets.any() and not self.category_offsets

    def category_offsets_by_code(self) -> np.ndarray:
        """The category offsets indexed by ``category_codes``, then 0 (code -1) for a candidate without one."""
        cached = self.__dict__.get("_by_code")
        if cached is None or len(cached) <= len(_CATEGORY_CODES):  # the vocabulary grew since: rebuild
            with _CATEGORY_LOCK:
                vocabulary = dict(_CATEGORY_CODES)
            offsets = dict(self.category_offsets)
            cached = np.zeros(len(vocabulary) + 1)
            for category, code in vocabulary.items():
                cached[code] = offsets.get(category, 0.0)
            self.__dict__["_by_code"] = cached
        return cached

    def apply(
        self, scores: np.ndarray, pricing: np.ndarray | None = None, category: np.ndarray | None = None
    ) -> np.ndarray:
        """The served pCTRs of the model's scores; ``pricing``, the candidates' ``pricing_codes``, adds
        each one's pricing-model offset, and ``category``, their ``category_codes``, each one's category
        offset (without them the pooled map alone is applied)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.is_identity or scores.size == 0:
            return scores
        z = self.slope * logit(scores) + self.intercept
        if pricing is not None:
            z = z + self.offsets[pricing]
        if category is not None and self.category_offsets:
            z = z + self.category_offsets_by_code()[category]
        return sigmoid(z)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        fields = json.loads(text)
        calibration = cls(**fields)
        finite = (
            math.isfinite(calibration.intercept)
            and np.isfinite(calibration.offsets).all()
            and all(math.isfinite(offset) for _, offset in calibration.category_offsets)
        )
        if not (MIN_SLOPE <= calibration.slope <= MAX_SLOPE and finite):
            raise ValueError(f"calibration slope {calibration.slope} or intercept {calibration.intercept} out of range")
        return calibration


def pricing_codes(pricing_models: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """Each pricing model's index in PRICING_MODELS (int8), -1 for one not there (or None)."""
    index = {model: code for code, model in enumerate(PRICING_MODELS)}
    return np.fromiter((index.get(str(m), -1) for m in pricing_models), dtype=np.int8, count=len(pricing_models))


# Ad categories as small integers, for the hot path: one process-wide vocabulary, only ever appended to.
_CATEGORY_CODES: dict[str, int] = {}
_CATEGORY_LOCK = threading.Lock()


def category_codes(categories: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """Each ad category's code (int32) in the process's vocabulary (new ones appended), -1 for None."""
    with _CATEGORY_LOCK:
        codes = [-1 if c is None else _CATEGORY_CODES.setdefault(str(c), len(_CATEGORY_CODES)) for c in categories]
    return np.array(codes, dtype=np.int32)


def identity(model_version: str) -> Calibration:
    return Calibration(model_version, CalibrationKind.IDENTITY)


def prior_correction(model_version: str, train_positive_rate: float, prior_ctr: float) -> Calibration:
    """The cold-start shift from the training data's click rate to the live prior (module doc)."""
    for name, rate in (("train_positive_rate", train_positive_rate), ("prior_ctr", prior_ctr)):
        if not 0 < rate < 1:
            raise ValueError(f"{name} must be in (0, 1), got {rate}")
    shift = float(logit(prior_ctr) - logit(train_positive_rate))
    return Calibration(
        model_version,
        CalibrationKind.PRIOR,
        intercept=shift,
        train_positive_rate=train_positive_rate,
        prior_ctr=prior_ctr,
    )


def recency_weights(ages_s: np.ndarray, half_life_s: float) -> np.ndarray:
    """Weight 1 now, 1/2 one half-life ago; negative ages (clock skew) count as now."""
    return np.exp2(-np.maximum(np.asarray(ages_s, dtype=np.float64), 0.0) / half_life_s)


def fit_platt(
    scores: np.ndarray,
    clicked: np.ndarray,
    prior: Calibration,
    *,
    weights: np.ndarray | None = None,
    pricing: np.ndarray | None = None,
    categories: np.ndarray | None = None,
    fitted_at: datetime,
) -> Calibration:
    """The Platt map of ``prior.model_version`` fitted on (model score, clicked) pairs, by Newton's
    method on the weighted log-likelihood plus the Gaussian prior centred on ``prior``; with
    ``pricing`` (the rows' ``pricing_codes``) the offsets per pricing model too, and with ``categories``
    (the rows' ad categories, None where unknown) an offset per category, each centred on ``prior``'s
    (0 for a registered calibration, which has none)."""
    z = logit(scores)
    y = np.asarray(clicked, dtype=np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64)
    codes = np.full(z.shape, -1, dtype=np.int8) if pricing is None else np.asarray(pricing, dtype=np.int8)
    if not (z.shape == y.shape == w.shape == codes.shape and z.ndim == 1):
        raise ValueError(f"scores, clicked, weights and pricing must be 1-d and aligned, got {z.shape}, {y.shape}, "
                         f"{w.shape}, {codes.shape}")  # fmt: skip
    models = len(PRICING_MODELS) if pricing is not None else 0
    names: list[str] = []
    known = dict(prior.category_offsets)
    if categories is not None:
        labels = pd.Series(categories, dtype=object)
        if labels.shape != z.shape:
            raise ValueError(f"categories must align with the scores, got {labels.shape} for {z.shape}")
        # The prior's categories too: one the window did not serve keeps its offset rather than losing it.
        names = sorted({*labels.dropna().astype(str).unique(), *known})
        labels = labels.where(labels.isna(), labels.astype(str))
    centre = np.array([prior.slope, prior.intercept, *prior.offsets[:models], *[known.get(n, 0.0) for n in names]])
    precision = np.diag([1 / PRIOR_SD_SLOPE**2, 1 / PRIOR_SD_INTERCEPT**2, *[1 / PRIOR_SD_OFFSET**2] * models,
                         *[1 / PRIOR_SD_CATEGORY**2] * len(names)])  # fmt: skip
    theta = centre.copy()
    indicators = [(codes == code).astype(np.float64) for code in range(models)]
    indicators += [(labels == name).to_numpy(dtype=np.float64) for name in names]
    design = np.column_stack([z, np.ones_like(z), *indicators])

    def objective(at: np.ndarray) -> float:
        scores = design @ at
        deviation = at - centre
        return float(np.sum(w * (y * scores - np.logaddexp(0.0, scores))) - 0.5 * deviation @ precision @ deviation)

    def maximize(theta: np.ndarray, free: np.ndarray) -> np.ndarray:
        """Newton's method over the ``free`` parameters, the others held where ``theta`` has them."""
        current = objective(theta)
        for _ in range(NEWTON_STEPS):
            p = sigmoid(design @ theta)
            gradient = design.T @ (w * (y - p)) - precision @ (theta - centre)
            hessian = (design * (w * p * (1 - p))[:, None]).T @ design + precision
            step = np.zeros_like(theta)
            step[free] = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
            # Halved until it improves: a full Newton step from far off (a score far from the truth) overshoots.
            scale = 1.0
            while (candidate := objective(theta + scale * step)) < current:
                scale /= 2
                if scale < 1e-6:  # no step improves: at the optimum, to float precision
                    break
            else:
                theta, current = theta + scale * step, candidate
                if np.max(np.abs(scale * step)) >= 1e-9:
                    continue
            break
        return theta

    every = np.ones(theta.size, dtype=bool)
    theta = maximize(theta, every)
    if not MIN_SLOPE <= theta[0] <= MAX_SLOPE:
        # The slope at its bound and the rest fitted again with it there: the likelihood is concave, so that is
        # the best map with a slope in bounds. Clipping alone would keep an intercept and offsets fitted to the
        # other slope, off by (clipped - fitted) x logit(score): on high scores a map far above their clicks.
        theta[0] = np.clip(theta[0], MIN_SLOPE, MAX_SLOPE)
        theta = maximize(theta, every & (np.arange(theta.size) != 0))
    slope = float(theta[0])
    offsets = dict(zip(("offset_cpm", "offset_cpc", "offset_cpa"), map(float, theta[2 : 2 + models]), strict=False))
    by_category = tuple(zip(names, map(float, theta[2 + models :]), strict=True))
    return Calibration(
        prior.model_version,
        CalibrationKind.PLATT,
        slope=slope,
        intercept=float(theta[1]),
        fitted_at=fitted_at.isoformat(timespec="seconds"),
        impressions=int(z.size),
        clicks=int(y.sum()),
        train_positive_rate=prior.train_positive_rate,
        prior_ctr=prior.prior_ctr,
        category_offsets=by_category,
        **offsets,
    )


def observed_over_expected(clicks: float, expected_clicks: float) -> float:
    """Observed ÷ expected clicks (1.0 is calibrated); NaN when nothing was expected."""
    return clicks / expected_clicks if expected_clicks > 0 else math.nan


# --- observed and expected clicks of logged traffic (pandas frames, still no I/O) ---

UNKNOWN = "unknown"
CALIBRATION_KEY = ("model_version", "hour", "pricing_model", "category")
ALERT_BOUNDS = (0.8, 1.25)  # observed / expected clicks outside this raises the calibration alert
ALERT_MIN_EXPECTED_CLICKS = 20.0  # below it a cell's ratio is mostly noise (Poisson sd over 20 %)


def attributed_impressions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per delivered impression that carries a pCTR, with ``clicked`` (a delivered click of the
    same auction landed). ``events`` has silver/feedback_events' columns event_type, auction_id,
    event_time, model_version, pricing_model, campaign_id, pctr, raw_pctr, charge_status, ivt_category."""
    delivered = events["ivt_category"].isna() & ~events["charge_status"].isin(NOT_DELIVERED)
    impressions = events[delivered & (events["event_type"] == EventType.IMPRESSION.value) & events["pctr"].notna()]
    impressions = impressions.drop_duplicates("auction_id")  # one impression an auction; silver holds one anyway
    clicked_auctions = events.loc[delivered & (events["event_type"] == EventType.CLICK.value), "auction_id"]
    out = impressions[["auction_id", "event_time", "model_version", "pricing_model", "campaign_id", "pctr", "raw_pctr"]]
    return out.assign(clicked=out["auction_id"].isin(set(clicked_auctions)))


def calibration_by_hour(impressions: pd.DataFrame, category_of: Mapping[str, str]) -> pd.DataFrame:
    """gold/calibration's rows: per model version x hour x pricing model x ad category, the impressions,
    expected clicks (the sum of the pCTRs served), clicks, observed / expected and whether it alerts
    (outside ALERT_BOUNDS, on a cell expecting ALERT_MIN_EXPECTED_CLICKS clicks or more)."""
    frame = impressions.assign(
        hour=impressions["event_time"].dt.floor("h"),
        category=impressions["campaign_id"].map(category_of).fillna(UNKNOWN),
        model_version=impressions["model_version"].fillna(UNKNOWN),
        pricing_model=impressions["pricing_model"].fillna(UNKNOWN),
    )
    grouped = frame.groupby(list(CALIBRATION_KEY), as_index=False).agg(
        impressions=("auction_id", "size"), expected_clicks=("pctr", "sum"), clicks=("clicked", "sum")
    )
    grouped["impressions"] = grouped["impressions"].astype("int64")
    grouped["clicks"] = grouped["clicks"].astype("int64")
    ratio = grouped["clicks"] / grouped["expected_clicks"].where(grouped["expected_clicks"] > 0)
    low, high = ALERT_BOUNDS
    return grouped.assign(
        observed_over_expected=ratio,
        alert=((ratio < low) | (ratio > high)) & (grouped["expected_clicks"] >= ALERT_MIN_EXPECTED_CLICKS),
        event_date=grouped["hour"].dt.date,
    )


def fit_versions(
    impressions: pd.DataFrame,
    priors: Mapping[str, Calibration],
    *,
    now: datetime,
    half_life_s: float,
    min_clicks: int,
    category_of: Mapping[str, str] | None = None,
) -> list[Calibration]:
    """The online Platt map of every model version in ``priors`` whose logged impressions (with their
    raw score) hold at least ``min_clicks`` clicks, counted with their recency weights, centred on that
    version's prior, with an offset per pricing model and, given ``category_of`` (campaign id -> ad
    category), per ad category.

    Weighted, because after a pause the window can hold many clicks that all weigh next to nothing: a
    fit on them is the prior again, and would replace the map the pause left in force."""
    fitted = []
    usable = impressions[impressions["raw_pctr"].notna()]
    for version, rows in usable.groupby("model_version"):
        prior = priors.get(str(version))
        ages = (pd.Timestamp(now) - rows["event_time"]).dt.total_seconds().to_numpy()
        weights = recency_weights(ages, half_life_s)
        if prior is None or float(weights @ rows["clicked"].to_numpy(dtype=np.float64)) < min_clicks:
            continue
        fitted.append(
            fit_platt(
                rows["raw_pctr"].to_numpy(),
                rows["clicked"].to_numpy(),
                prior,
                weights=weights,
                pricing=pricing_codes(rows["pricing_model"].to_numpy()),
                categories=None if category_of is None else rows["campaign_id"].map(category_of).to_numpy(),
                fitted_at=now,
            )
        )
    return fitted


# --- cold start on served traffic, until an online map exists ---

COLD_START_RATE = 0.05  # per filled auction: the served mean follows about the last 20 winners


class ColdStart:
    """Prior matching on served traffic, for a model version served with no online map yet.

    Whatever the registered correction, the winners of an auction are the candidates the model
    scored highest, so a model sure of itself on data unlike the traffic (the bootstrap's) still
    serves pCTRs far above the traffic's click rate. Until the calibrator has the clicks to fit a
    Platt map, each replica shifts the log-odds of every pCTR it serves by ``offset``, moved after
    each filled auction so that the served winners' mean pCTR comes to the prior CTR (about the last
    20 winners' mean; the shift changes no ranking among candidates of one pricing model). It needs
    no clicks, so it is right from the first seconds when the traffic clicks at the prior's rate,
    and the online map replaces it at its first refresh. Not thread-safe: one event loop uses it.
    """

    def __init__(self, prior_ctr: float, rate: float = COLD_START_RATE) -> None:
        self.target = float(logit(prior_ctr))
        self.rate = rate
        self.version: str | None = None
        self.offset = 0.0
        self.served_mean: float | None = None  # a running mean of the winners' served pCTR

    def apply(self, version: str, pctr: np.ndarray) -> np.ndarray:
        if version != self.version:  # a new model: its scores start afresh
            self.version, self.offset, self.served_mean = version, 0.0, None
        if self.offset == 0.0 or pctr.size == 0:
            return pctr
        return sigmoid(logit(pctr) + self.offset)

    def observe(self, version: str, winner_pctr: float) -> None:
        """A filled auction's served pCTR (with the offset it was served with)."""
        if version != self.version:
            return
        mean = self.served_mean
        self.served_mean = mean = winner_pctr if mean is None else mean + self.rate * (winner_pctr - mean)
        self.offset += self.rate * (self.target - float(logit(mean)))
