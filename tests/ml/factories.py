"""Test inputs: synthetic training sets (simulator.ctr_examples) and candidate batches with awkward values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.features import FEATURES
from simulator.ctr_examples import training_frame

__all__ = ["awkward_candidates", "training_frame"]


def awkward_candidates(frame: pd.DataFrame, rows: int = 100) -> pd.DataFrame:
    """``rows`` feature rows from ``frame`` with unseen categories, None, NaN and pd.NA placed on purpose."""
    batch = frame[list(FEATURES)].head(rows).reset_index(drop=True).copy()
    batch.loc[0:9, "country"] = "country-never-seen"
    batch.loc[10:14, "ad_category"] = "category-never-seen"
    batch.loc[15:19, "device_type"] = None
    batch.loc[20:24, "device_type"] = np.nan
    batch.loc[25:27, "gender"] = None
    batch.loc[28:29, "gender"] = pd.NA
    batch.loc[30:34, "age"] = np.nan
    batch.loc[35:39, "daily_time_spent_on_site"] = np.nan
    batch.loc[40:44, ["daily_internet_usage", "area_income"]] = np.nan
    batch.loc[45:49, "income_band"] = "band-never-seen"
    return batch
