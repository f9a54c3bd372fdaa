"""The simulated world's true behaviour: how likely a user is to click, convert and watch a video ad.

The user simulator draws every click from these probabilities, never from the pCTR the
service served, so the champion model is judged against a world it did not define.
``fit`` derives them from the bronze Kaggle tables; ``GroundTruth.probabilities`` answers
for one user and one shown ad. Pure: data frames in, numbers out, no I/O, no clock; the
fit is deterministic (the same tables give the same probabilities).

Click probability::

    click(user, ad) = min(1, BASE_CTR * propensity(user) * affinity(segment(user), category(ad)))

1. **propensity** (Advertising, ``bronze/advertising``): an L2 logistic regression
   (C = 1 on standardised features) of ``clicked_on_ad`` on age,
   daily_time_spent_on_site, daily_internet_usage, area_income and male. Advertising is
   50 % clicks by construction (500 / 500), so its fitted probability ``p`` is a ranking,
   not a rate: ``propensity = p(user) / mean p`` over the Advertising rows, which averages
   1 there. Why not the case-control correction (shift the intercept by the true rate's
   log-odds): the data are nearly separable, so that would give a few users a CTR near
   100 % and everyone else ~0; the ratio keeps the data's direction and ranking and caps a
   user at ``BASE_CTR / mean p`` (≈ 2x BASE_CTR) before the category affinity.
   Attributes a simulated user lacks (ADS-16 users have no time on site, internet usage
   or area income) take the Advertising mean, which adds nothing to the logit; a missing
   area_income takes the mean area_income of the Advertising rows in the user's income
   band (silver's cut points) when the band is known; an unknown age the mean age; an
   unknown gender the Advertising share of men.
2. **affinity** (ADS-16, ``bronze/ads16_ratings`` joined to ``bronze/ads16_users``): the
   interest in a category is ``rating - 1`` (1 is ADS-16's "not interested"), averaged per
   segment (gender x age band, the bands of the serving features) and category, smoothed
   toward the category's mean over all users with ``AFFINITY_PRIOR_RATINGS``
   pseudo-ratings (small segments lean on everyone), then divided by the segment's mean
   over categories: the multiplier averages exactly 1 in every segment, so it only moves
   clicks between categories and the level stays with the Advertising propensity (age and
   gender are not counted twice). An unknown gender or age band pools over it; a segment
   ADS-16 has no user in falls back to its gender, then its band, then everyone; a
   category ADS-16 does not rate (``Other``) gets 1.
3. **BASE_CTR** = 3 %: the mean click probability over the Advertising users (and about
   the mean over any population and category mix, as both factors average 1). High for
   display (0.1-1 %), near search and native ads (2-5 %): chosen so that a few minutes at
   20 auctions/s give enough clicks (~0.6/s) to measure a CTR and to train on.

Given a click, a **conversion** has probability ``CONVERSION_GIVEN_CLICK`` = 5 %, the
auction's default pCVR and a typical e-commerce click-to-order rate, times the **platform's**
factor (``PLATFORM_CONVERSION``, by channel and device; 1 when either is unknown): desktop 1.6,
tablet 1.1, a mobile app 1.2 and the mobile web 0.6 (checkout on a phone's browser is where
e-commerce loses most orders; published benchmarks put desktop at about twice mobile web),
connected TV 0.2 (no click path to a checkout). No Kaggle set measures conversions per device, so
these are documented assumptions, the same for web and app except on mobile; the campaign
optimizer must find them from the traffic, which is what the factors are for. On video content the
player **starts** with ``VIDEO_START`` = 95 % (the rest scroll away before the first
frame) and a started video **completes** with a per-device rate (``VIDEO_COMPLETION``:
CTV ~92 %, desktop 75 %, tablet 72 %, mobile 68 %, the order of published completion-rate
benchmarks). None of the Kaggle sets measures these, so they are documented constants.
Device type does not change the click probability: no data set here measures it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from adstream.events import EventType
from auction_service.serving.features import age_band

BASE_CTR = 0.03
CONVERSION_GIVEN_CLICK = 0.05
VIDEO_START = 0.95
PLATFORM_CONVERSION = {
    ("web", "desktop"): 1.6, ("app", "desktop"): 1.6, ("web", "tablet"): 1.1, ("app", "tablet"): 1.1,
    ("web", "mobile"): 0.6, ("app", "mobile"): 1.2, ("web", "ctv"): 0.2, ("app", "ctv"): 0.2,
}  # fmt: skip
VIDEO_COMPLETION = {"ctv": 0.92, "desktop": 0.75, "tablet": 0.72, "mobile": 0.68}
VIDEO_COMPLETION_UNKNOWN_DEVICE = 0.70
AFFINITY_PRIOR_RATINGS = 15.0  # one user's ratings of one category in ADS-16
L2_INVERSE_STRENGTH = 1.0  # sklearn's C, on standardised features
MIN_RATING = 1  # ADS-16's "not interested"
# spark_jobs.silver.INCOME_BANDS and AREA_INCOME_CUTS (not imported: that module pulls in pyspark).
INCOME_BANDS = ("low", "lower_mid", "upper_mid", "high")
AREA_INCOME_CUTS = (35_000.0, 50_000.0, 65_000.0)

CLICK_FEATURES = ("age", "daily_time_spent_on_site", "daily_internet_usage", "area_income", "male")
ADVERTISING_COLUMNS = (*CLICK_FEATURES, "clicked_on_ad")
RATING_COLUMNS = ("user_id", "category_name", "rating")
ADS16_USER_COLUMNS = ("user_id", "gender", "age")

Segment = tuple[str | None, str | None]  # (gender F/M, age band); None pools over it


@dataclass(frozen=True)
class UserProfile:
    """A simulated user, as silver/users describes them; any attribute may be unknown."""

    user_id: str
    age: int | None = None
    gender: str | None = None
    country: str | None = None
    income_band: str | None = None
    daily_time_spent_on_site: float | None = None
    daily_internet_usage: float | None = None
    area_income: float | None = None


@dataclass(frozen=True)
class ShownAd:
    """What the user saw: the ad's category and the placement (content type, device)."""

    category: str | None
    content_type: str = "display"
    device_type: str | None = None
    channel: str | None = None  # "web" or "app"


@dataclass(frozen=True)
class Probabilities:
    click: float
    conversion_given_click: float
    video_start: float  # 0 on display content
    video_complete_given_start: float  # 0 on display content


@dataclass(frozen=True)
class ClickModel:
    """The Advertising logistic regression, standardised, with what it imputes for missing attributes."""

    means: tuple[float, ...]  # per CLICK_FEATURES; also the imputed value
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]  # per standard deviation of each feature
    intercept: float
    mean_fitted_click: float  # mean p over the Advertising rows (≈ 0.5 by the data's construction)
    area_income_by_band: Mapping[str, float]

    def fitted_click(self, features: tuple[float, ...]) -> float:
        terms = zip(self.coefficients, features, self.means, self.scales, strict=True)
        logit = self.intercept + sum(weight * (value - mean) / scale for weight, value, mean, scale in terms)
        return 1.0 / (1.0 + math.exp(-logit))

    def features(self, user: UserProfile) -> tuple[float, ...]:
        mean_age, mean_time, mean_usage, mean_income, male_share = self.means
        band_income = self.area_income_by_band.get(user.income_band or "", mean_income)
        return (
            _or(user.age, mean_age),
            _or(user.daily_time_spent_on_site, mean_time),
            _or(user.daily_internet_usage, mean_usage),
            _or(user.area_income, band_income),
            {"M": 1.0, "F": 0.0}.get(user.gender or "", male_share),
        )


@dataclass(frozen=True)
class GroundTruth:
    click_model: ClickModel
    affinity: Mapping[Segment, Mapping[str, float]]  # segment -> category -> multiplier (mean 1 per segment)
    base_ctr: float = BASE_CTR
    conversion_given_click: float = CONVERSION_GIVEN_CLICK
    video_start: float = VIDEO_START

    def propensity(self, user: UserProfile) -> float:
        """The user's click propensity relative to the average Advertising user (mean 1 there)."""
        model = self.click_model
        return model.fitted_click(model.features(user)) / model.mean_fitted_click

    def category_affinity(self, user: UserProfile, category: str | None) -> float:
        gender = user.gender if user.gender in ("F", "M") else None
        band = None if user.age is None else age_band(user.age)
        for segment in ((gender, band), (gender, None), (None, band), (None, None)):
            if segment in self.affinity:
                return self.affinity[segment].get(category or "", 1.0)
        return 1.0

    def probabilities(self, user: UserProfile, ad: ShownAd) -> Probabilities:
        click = min(1.0, self.base_ctr * self.propensity(user) * self.category_affinity(user, ad.category))
        video = ad.content_type == "video"
        completion = VIDEO_COMPLETION.get(ad.device_type or "", VIDEO_COMPLETION_UNKNOWN_DEVICE)
        return Probabilities(
            click=click,
            conversion_given_click=min(
                1.0, self.conversion_given_click * PLATFORM_CONVERSION.get((ad.channel, ad.device_type), 1.0)
            ),
            video_start=self.video_start if video else 0.0,
            video_complete_given_start=completion if video else 0.0,
        )

    def summary(self) -> dict[str, Any]:
        """The fitted numbers, for the simulator's report and the README."""
        model = self.click_model
        pooled = self.affinity.get((None, None), {})
        return {
            "base_ctr": self.base_ctr,
            "click_model": {
                "coefficient_per_sd": dict(zip(CLICK_FEATURES, (round(c, 4) for c in model.coefficients), strict=True)),
                "intercept": round(model.intercept, 4),
                "mean_fitted_click": round(model.mean_fitted_click, 4),
                "max_propensity": round(1 / model.mean_fitted_click, 4),
            },
            "affinity_segments": len(self.affinity),
            "affinity_range": [round(min(pooled.values()), 4), round(max(pooled.values()), 4)] if pooled else None,
            "conversion_given_click": self.conversion_given_click,
            "video_start": self.video_start,
            "video_completion": VIDEO_COMPLETION,
        }


def fit(
    advertising: pd.DataFrame,
    ads16_ratings: pd.DataFrame,
    ads16_users: pd.DataFrame,
    *,
    base_ctr: float = BASE_CTR,
    conversion_given_click: float = CONVERSION_GIVEN_CLICK,
) -> GroundTruth:
    """The ground truth from bronze/advertising, bronze/ads16_ratings and bronze/ads16_users (see the module doc)."""
    if not 0 < base_ctr <= 1:
        raise ValueError(f"base_ctr must be in (0, 1], got {base_ctr}")
    if not 0 <= conversion_given_click <= 1:
        raise ValueError(f"conversion_given_click must be in [0, 1], got {conversion_given_click}")
    return GroundTruth(
        click_model=fit_click_model(advertising),
        affinity=fit_affinity(ads16_ratings, ads16_users),
        base_ctr=base_ctr,
        conversion_given_click=conversion_given_click,
    )


def fit_click_model(advertising: pd.DataFrame) -> ClickModel:
    from sklearn.linear_model import LogisticRegression

    _require(advertising, ADVERTISING_COLUMNS, "bronze/advertising")
    rows = advertising.loc[:, list(ADVERTISING_COLUMNS)].dropna()
    clicked = rows["clicked_on_ad"].astype(bool).to_numpy()
    if clicked.all() or not clicked.any():
        raise ValueError("bronze/advertising needs rows with and without a click to fit the click model")
    x = rows.loc[:, list(CLICK_FEATURES)].astype(float).to_numpy()
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0  # a constant column carries no signal; keep it from dividing by zero
    standardised = (x - means) / scales
    model = LogisticRegression(C=L2_INVERSE_STRENGTH).fit(standardised, clicked)
    fitted = model.predict_proba(standardised)[:, 1]
    bands = _income_band(rows["area_income"].to_numpy())
    return ClickModel(
        means=tuple(float(m) for m in means),
        scales=tuple(float(s) for s in scales),
        coefficients=tuple(float(c) for c in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        mean_fitted_click=float(fitted.mean()),
        area_income_by_band={
            band: float(rows["area_income"].to_numpy()[bands == band].mean())
            for band in INCOME_BANDS
            if (bands == band).any()
        },
    )


def fit_affinity(ads16_ratings: pd.DataFrame, ads16_users: pd.DataFrame) -> dict[Segment, dict[str, float]]:
    """Per segment, each rated category's multiplier: smoothed mean interest / the segment's mean over categories."""
    _require(ads16_ratings, RATING_COLUMNS, "bronze/ads16_ratings")
    _require(ads16_users, ADS16_USER_COLUMNS, "bronze/ads16_users")
    ratings = (
        ads16_ratings.loc[:, list(RATING_COLUMNS)]
        .dropna()
        .merge(ads16_users.loc[:, list(ADS16_USER_COLUMNS)].drop_duplicates("user_id"), on="user_id", how="left")
    )
    if ratings.empty:
        return {}
    ratings["interest"] = (ratings["rating"].astype(float) - MIN_RATING).clip(lower=0)
    ratings["gender"] = ratings["gender"].where(ratings["gender"].isin(["F", "M"]))
    ratings["band"] = [None if pd.isna(age) else age_band(float(age)) for age in ratings["age"]]
    pooled = ratings.groupby("category_name")["interest"].mean().sort_index()
    segments: set[Segment] = {(None, None)}
    for gender, band in ratings[["gender", "band"]].drop_duplicates().itertuples(index=False):
        gender = None if pd.isna(gender) else gender
        segments |= {(gender, band), (gender, None), (None, band)}
    affinity: dict[Segment, dict[str, float]] = {}
    for gender, band in sorted(segments, key=lambda s: (s[0] or "", s[1] or "")):
        rows = ratings
        if gender is not None:
            rows = rows[rows["gender"] == gender]
        if band is not None:
            rows = rows[rows["band"] == band]
        if rows.empty:
            continue
        stats = rows.groupby("category_name")["interest"].agg(["sum", "count"]).reindex(pooled.index, fill_value=0)
        smoothed = (stats["sum"] + AFFINITY_PRIOR_RATINGS * pooled) / (stats["count"] + AFFINITY_PRIOR_RATINGS)
        level = smoothed.mean()
        affinity[(gender, band)] = {
            category: float(value / level) if level > 0 else 1.0 for category, value in smoothed.items()
        }
    return affinity


def draw_events(probabilities: Probabilities, rng: random.Random) -> list[EventType]:
    """The events one shown ad produces, in the order they happen; the same ``rng`` state, the same events."""
    events = [EventType.IMPRESSION]
    if rng.random() < probabilities.video_start:
        events.append(EventType.VIDEO_START)
        if rng.random() < probabilities.video_complete_given_start:
            events.append(EventType.VIDEO_COMPLETE)
    if rng.random() < probabilities.click:
        events.append(EventType.CLICK)
        if rng.random() < probabilities.conversion_given_click:
            events.append(EventType.CONVERSION)
    return events


def _require(frame: pd.DataFrame, columns: tuple[str, ...], table: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{table} lacks column(s) {missing}")


def _income_band(area_income: np.ndarray) -> np.ndarray:
    return np.array(INCOME_BANDS, dtype=object)[np.searchsorted(AREA_INCOME_CUTS, area_income, side="right")]


def _or(value: float | None, default: float) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
