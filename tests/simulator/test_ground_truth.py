"""The simulator's ground truth: fitted on small hand-built bronze tables whose signal the test chose."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from simulator import ground_truth
from simulator.ground_truth import Probabilities, ShownAd, UserProfile, draw_events, fit
from spark_jobs import silver_transforms

CATEGORIES = ("Baby Products", "Automotive", "Grocery")


def advertising(rows: int = 400, seed: int = 3, age_effect: float = 0.15) -> pd.DataFrame:
    """bronze/advertising columns; the click depends on age only, with the sign of ``age_effect``."""
    rng = np.random.default_rng(seed)
    age = rng.integers(19, 62, rows)
    clicked = rng.uniform(size=rows) < 1 / (1 + np.exp(-age_effect * (age - 40)))
    return pd.DataFrame(
        {
            "daily_time_spent_on_site": rng.uniform(32, 92, rows),
            "age": age,
            "area_income": rng.uniform(14_000, 80_000, rows),
            "daily_internet_usage": rng.uniform(104, 270, rows),
            "male": rng.uniform(size=rows) < 0.5,
            "clicked_on_ad": clicked,
        }
    )


def ads16(ratings_by_user: dict[tuple[str, str, int], dict[str, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """bronze/ads16_ratings and bronze/ads16_users: each (user_id, gender, age) rates each category's 15 ads alike."""
    ratings = [
        {"user_id": user_id, "category_name": category, "rating": rating, "position": position}
        for (user_id, _, _), by_category in ratings_by_user.items()
        for category, rating in by_category.items()
        for position in range(15)
    ]
    users = [{"user_id": user_id, "gender": gender, "age": age} for user_id, gender, age in ratings_by_user]
    return pd.DataFrame(ratings), pd.DataFrame(users)


def profiles(frame: pd.DataFrame) -> list[UserProfile]:
    return [
        UserProfile(
            user_id=f"adv-{i}",
            age=int(row.age),
            gender="M" if row.male else "F",
            daily_time_spent_on_site=row.daily_time_spent_on_site,
            daily_internet_usage=row.daily_internet_usage,
            area_income=row.area_income,
        )
        for i, row in enumerate(frame.itertuples())
    ]


@pytest.fixture(scope="module")
def segment_ratings() -> tuple[pd.DataFrame, pd.DataFrame]:
    # Women 25-34 love baby products, men 45-54 love cars and like everything more; groceries interest few.
    users = {}
    for i in range(6):
        users[(f"U{i:04d}", "F", 30)] = {"Baby Products": 5, "Automotive": 1, "Grocery": 2}
        users[(f"U{i + 10:04d}", "M", 50)] = {"Baby Products": 1, "Automotive": 5, "Grocery": 3}
    return ads16(users)


def test_probabilities_average_the_base_rate_and_stay_in_0_1(segment_ratings):
    frame = advertising()
    assert 0.3 < frame["clicked_on_ad"].mean() < 0.7  # Advertising-like: about half are clicks
    truth = fit(frame, *segment_ratings, base_ctr=0.04)
    users = profiles(frame)
    uncategorised = [truth.probabilities(user, ShownAd("Other")).click for user in users]
    # The propensity averages 1 over the Advertising rows, and each segment's affinity averages 1 over categories.
    assert np.mean(uncategorised) == pytest.approx(0.04, rel=1e-6)
    by_category = [truth.probabilities(user, ShownAd(category)).click for user in users for category in CATEGORIES]
    assert np.mean(by_category) == pytest.approx(0.04, rel=1e-6)
    assert all(0 <= p <= 1 for p in by_category) and max(by_category) > 0.04

    capped = fit(frame, *segment_ratings, base_ctr=0.9)
    clicks = [capped.probabilities(user, ShownAd(category)).click for user in users for category in CATEGORIES]
    assert max(clicks) == 1.0 and min(clicks) >= 0


@pytest.mark.parametrize("age_effect", [0.15, -0.15])
def test_the_users_the_data_says_click_more_click_more(segment_ratings, age_effect):
    truth = fit(advertising(age_effect=age_effect), *segment_ratings)
    young, old = (UserProfile("u", age=age, gender="F", daily_time_spent_on_site=60.0) for age in (22, 58))
    p_young = truth.probabilities(young, ShownAd("Other")).click
    p_old = truth.probabilities(old, ShownAd("Other")).click
    assert (p_old > 1.5 * p_young) if age_effect > 0 else (p_young > 1.5 * p_old)


def test_categories_a_segment_rates_higher_get_more_clicks(segment_ratings):
    truth = fit(advertising(), *segment_ratings)
    woman, man = UserProfile("f", age=29, gender="F"), UserProfile("m", age=52, gender="M")
    affinity = {user.user_id: {c: truth.category_affinity(user, c) for c in CATEGORIES} for user in (woman, man)}
    assert max(affinity["f"], key=affinity["f"].get) == "Baby Products"
    assert max(affinity["m"], key=affinity["m"].get) == "Automotive"
    assert affinity["f"]["Automotive"] < 1 < affinity["f"]["Baby Products"]
    for by_category in affinity.values():
        assert np.mean(list(by_category.values())) == pytest.approx(1.0)
    click = {c: truth.probabilities(woman, ShownAd(c)).click for c in CATEGORIES}
    assert click["Baby Products"] > click["Grocery"] > click["Automotive"]
    # A category ADS-16 does not rate is neutral; a user of unknown gender gets the pooled view,
    # where both loves balance out above groceries.
    assert truth.category_affinity(woman, "Other") == 1.0
    anonymous = {c: truth.category_affinity(UserProfile("x"), c) for c in CATEGORIES}
    assert anonymous["Grocery"] < min(anonymous["Baby Products"], anonymous["Automotive"])


def test_affinity_is_interest_above_the_lowest_rating_relative_to_the_segments_mean():
    # Everyone alike, so smoothing toward the pooled mean changes nothing: interests 4, 2, 0 -> mean 2.
    ratings, users = ads16(
        {(f"U{i}", gender, 35): {"Baby Products": 5, "Automotive": 3, "Grocery": 1} for i, gender in enumerate("FM")}
    )
    truth = fit(advertising(), ratings, users)
    for user in (UserProfile("f", age=35, gender="F"), UserProfile("x", age=None, gender=None)):
        assert [truth.category_affinity(user, c) for c in CATEGORIES] == pytest.approx([2.0, 1.0, 0.0])


def test_missing_attributes_take_the_advertising_means_or_the_income_bands_mean(segment_ratings):
    frame = advertising()
    truth = fit(frame, *segment_ratings)
    means = {column: frame[column].mean() for column in ("age", "daily_time_spent_on_site", "daily_internet_usage")}
    high_income = frame.loc[frame["area_income"] >= 65_000, "area_income"].mean()
    unknown = UserProfile("ads16-U1", gender="M", income_band="high")
    known = UserProfile(
        "same",
        age=means["age"],
        gender="M",
        daily_time_spent_on_site=means["daily_time_spent_on_site"],
        daily_internet_usage=means["daily_internet_usage"],
        area_income=high_income,
    )
    assert truth.propensity(unknown) == pytest.approx(truth.propensity(known))
    no_band = UserProfile("ads16-U2", gender="M")
    with_mean_income = UserProfile("same", gender="M", area_income=frame["area_income"].mean())
    assert truth.propensity(no_band) == pytest.approx(truth.propensity(with_mean_income))


def test_the_fit_and_the_draws_are_deterministic(segment_ratings):
    first, second = fit(advertising(), *segment_ratings), fit(advertising(), *segment_ratings)
    assert first.summary() == second.summary()
    user = UserProfile("u", age=44, gender="F", country="Norway")
    ad = ShownAd("Baby Products", "video", "mobile")
    assert first.probabilities(user, ad) == second.probabilities(user, ad)
    p = first.probabilities(user, ad)
    runs = [[draw_events(p, rng) for _ in range(200)] for rng in (random.Random(7), random.Random(7))]
    assert runs[0] == runs[1]
    assert [draw_events(p, random.Random(8)) for _ in range(200)] != runs[0]


def test_drawn_events_follow_the_probabilities_and_their_order():
    p = Probabilities(click=0.3, conversion_given_click=0.5, video_start=0.8, video_complete_given_start=0.25)
    rng, draws = random.Random(1), 20_000
    counts = {kind: 0 for kind in ("impression", "click", "conversion", "video_start", "video_complete")}
    for _ in range(draws):
        events = draw_events(p, rng)
        assert events[0] == "impression"
        assert "conversion" not in events or "click" in events
        assert "video_complete" not in events or "video_start" in events
        for kind in events:
            counts[kind] += 1
    assert counts["impression"] == draws

    def close(observed: int, trials: int, probability: float) -> bool:
        return abs(observed - trials * probability) < 4 * (trials * probability * (1 - probability)) ** 0.5

    assert close(counts["click"], draws, 0.3) and close(counts["conversion"], counts["click"], 0.5)
    assert close(counts["video_start"], draws, 0.8) and close(counts["video_complete"], counts["video_start"], 0.25)


def test_video_probabilities_only_on_video_content(segment_ratings):
    truth = fit(advertising(), *segment_ratings, conversion_given_click=0.1)
    user = UserProfile("u", age=30, gender="F")
    display = truth.probabilities(user, ShownAd("Grocery", "display", "ctv"))
    assert display.video_start == display.video_complete_given_start == 0
    ctv, mobile = (truth.probabilities(user, ShownAd("Grocery", "video", device)) for device in ("ctv", "mobile"))
    assert ctv.video_complete_given_start > mobile.video_complete_given_start > 0 and ctv.video_start > 0
    assert ctv.click == display.click and ctv.conversion_given_click == 0.1


def test_bad_tables_are_refused_with_the_reason(segment_ratings):
    with pytest.raises(ValueError, match=r"bronze/advertising lacks column\(s\) \['area_income'\]"):
        fit(advertising().drop(columns="area_income"), *segment_ratings)
    with pytest.raises(ValueError, match="rows with and without a click"):
        fit(advertising().assign(clicked_on_ad=True), *segment_ratings)
    ratings, users = segment_ratings
    with pytest.raises(ValueError, match=r"bronze/ads16_ratings lacks column\(s\) \['rating'\]"):
        fit(advertising(), ratings.drop(columns="rating"), users)
    with pytest.raises(ValueError, match="base_ctr"):
        fit(advertising(), ratings, users, base_ctr=0)


def test_income_bands_are_silvers():
    assert ground_truth.INCOME_BANDS == silver_transforms.INCOME_BANDS
    assert ground_truth.AREA_INCOME_CUTS == silver_transforms.AREA_INCOME_CUTS


def test_conversion_given_a_click_depends_on_the_platform(segment_ratings):
    truth = fit(advertising(), *segment_ratings)
    user = UserProfile("u", age=35, gender="F", country="France")

    def conversion(channel: str | None, device: str | None) -> float:
        return truth.probabilities(user, ShownAd("Grocery", "display", device, channel)).conversion_given_click

    assert conversion("web", "desktop") == pytest.approx(0.08) and conversion("web", "mobile") == pytest.approx(0.03)
    assert conversion("app", "mobile") == pytest.approx(0.06) and conversion("app", "ctv") == pytest.approx(0.01)
    assert conversion(None, "mobile") == pytest.approx(0.05)  # an unknown channel: the base rate
