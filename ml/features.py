"""The CTR training-set contract: the columns of ``gold/ctr_training_set`` that training relies on.

The Spark job (``spark_jobs.features``) writes the table and takes its column
list from here, so producer and consumer share one statement of what training needs, checked before any model is fitted
so a renamed column fails loudly instead of silently training without it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import pandas as pd

EXAMPLE_ID = "example_id"  # string, unique
SOURCE = "source"  # "bootstrap" or "logged"
LOGGED_SOURCE = "logged"  # examples from the auction log: the traffic served (the others are the Kaggle bootstrap)
TIME_COLUMN = "event_time"  # timestamp, UTC
LABEL = "label"  # int, 1 = clicked
# Optional: where an example came from ("advertising", "ads16", "auctions"); training logs metrics per dataset.
DATASET = "dataset"

# Doubles unless noted; daily_time_spent_on_site, daily_internet_usage and area_income may be null.
NUMERIC_FEATURES: tuple[str, ...] = (
    "age",
    "daily_time_spent_on_site",
    "daily_internet_usage",
    "area_income",
    "category_affinity",
    "ad_ctr_smoothed",
    "category_ctr_smoothed",
    "hour_of_day",  # int
    "day_of_week",  # int
)
INTEGER_FEATURES: frozenset[str] = frozenset({"hour_of_day", "day_of_week"})
NULLABLE_FEATURES: frozenset[str] = frozenset(
    {"daily_time_spent_on_site", "daily_internet_usage", "area_income", "device_type"}
)

# Strings; gender is "F", "M" or "unknown"; device_type may be null.
CATEGORICAL_FEATURES: tuple[str, ...] = ("gender", "income_band", "country", "ad_category", "device_type")

FEATURES: tuple[str, ...] = NUMERIC_FEATURES + CATEGORICAL_FEATURES
REQUIRED_COLUMNS: tuple[str, ...] = (TIME_COLUMN, LABEL, *FEATURES)


class MissingFeatureError(ValueError):
    """The training set lacks a column of the contract (often: it was renamed upstream)."""


def check_columns(frame: pd.DataFrame, required: Iterable[str] = REQUIRED_COLUMNS) -> None:
    """Raises ``MissingFeatureError`` naming every required column ``frame`` lacks.

    Where an unexpected column looks like a missing one (``age_years`` for ``age``),
    the message says so, since a rename upstream is the usual cause.
    """
    present = [str(column) for column in frame.columns]
    missing = [column for column in required if column not in present]
    if not missing:
        return
    extra = [column for column in present if column not in REQUIRED_COLUMNS]
    hints = []
    for column in missing:
        close = difflib.get_close_matches(column, extra, n=1, cutoff=0.6)
        if close:
            hints.append(f"{column!r} (renamed to {close[0]!r}?)")
        else:
            hints.append(repr(column))
    raise MissingFeatureError(
        f"training set lacks required column(s): {', '.join(hints)}; "
        f"the contract is ml.features.REQUIRED_COLUMNS, present columns are {sorted(present)}"
    )
