"""Synthetic CTR training sets shaped like gold/ctr_training_set, with a known signal.

For benchmarks and tests, never a data source. The signal mimics the Kaggle
Advertising data: older users who spend less time on the site (and use the internet
less) click; the other columns are noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COUNTRIES = tuple(f"country-{i:02d}" for i in range(20))
AD_CATEGORIES = ("travel", "fitness", "finance", "gadgets", "fashion", "food")
DEVICES = ("mobile", "desktop", "tablet", None)
INCOME_BANDS = ("low", "mid", "high", "unknown")


def click_logit(age: np.ndarray, time_on_site: np.ndarray, internet_usage: np.ndarray) -> np.ndarray:
    return 0.35 * (age - 38) - 0.3 * (time_on_site - 65) - 0.04 * (internet_usage - 180)


def training_frame(
    rows: int = 600, seed: int = 0, start: str = "2016-01-01", days: int = 60, null_share: float = 0.05
) -> pd.DataFrame:
    """``rows`` examples in time order over ``days`` days, labels drawn from ``click_logit``."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.uniform(0, days * 86_400, rows))
    event_time = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(offsets.round(), unit="s")
    age = rng.integers(19, 62, rows).astype(float)
    time_on_site = rng.uniform(32, 92, rows)
    internet_usage = rng.uniform(104, 270, rows)
    area_income = rng.uniform(14_000, 80_000, rows)
    label = rng.uniform(size=rows) < 1 / (1 + np.exp(-click_logit(age, time_on_site, internet_usage)))

    def with_nulls(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[rng.uniform(size=rows) < null_share] = np.nan
        return values

    return pd.DataFrame(
        {
            "example_id": [f"ex-{seed}-{i:06d}" for i in range(rows)],
            "source": np.where(rng.uniform(size=rows) < 0.8, "bootstrap", "logged"),
            "event_time": event_time,
            "label": label.astype("int32"),
            "age": age,
            "daily_time_spent_on_site": with_nulls(time_on_site),
            "daily_internet_usage": with_nulls(internet_usage),
            "area_income": with_nulls(area_income),
            "category_affinity": rng.uniform(0.02, 0.3, rows),
            "ad_ctr_smoothed": rng.uniform(0.05, 0.2, rows),
            "category_ctr_smoothed": rng.uniform(0.05, 0.2, rows),
            "hour_of_day": event_time.hour.to_numpy().astype("int32"),
            # Spark's dayofweek, as the feature job writes it: 1 = Sunday .. 7 = Saturday.
            "day_of_week": ((event_time.dayofweek.to_numpy() + 1) % 7 + 1).astype("int32"),
            "gender": rng.choice(["F", "M", "unknown"], rows),
            "income_band": rng.choice(INCOME_BANDS, rows),
            "country": rng.choice(COUNTRIES, rows),
            "ad_category": rng.choice(AD_CATEGORIES, rows),
            "device_type": rng.choice(np.array(DEVICES, dtype=object), rows),
        }
    )


def candidates(frame: pd.DataFrame, rows: int, seed: int, unseen_share: float = 0.05) -> pd.DataFrame:
    """``rows`` feature rows drawn from ``frame`` as an auction would see them: some categories
    never seen in training and some values missing."""
    rng = np.random.default_rng(seed)
    batch = frame.iloc[rng.integers(0, len(frame), rows)].reset_index(drop=True)
    for column in ("country", "ad_category", "device_type"):
        unseen = rng.uniform(size=rows) < unseen_share
        batch.loc[unseen, column] = f"unseen-{column}"
    for column in ("age", "category_affinity", "gender"):
        batch.loc[rng.uniform(size=rows) < unseen_share, column] = None
    return batch
