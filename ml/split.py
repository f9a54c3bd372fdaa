"""Time-based train/holdout split: the model is judged on events later than any it learned from."""

from __future__ import annotations

import math

import pandas as pd

from ml.features import SOURCE, TIME_COLUMN


def time_split(
    frame: pd.DataFrame, holdout_fraction: float = 0.2, time_column: str = TIME_COLUMN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits ``frame`` into (train, holdout), the holdout being the latest events.

    The holdout is the latest ``ceil(holdout_fraction * len(frame))`` rows, grown to
    take every row that shares the boundary timestamp, so the result never depends on
    row order: all events at one instant land on the same side (the holdout). Rows
    keep their original order within each part; nothing is shuffled.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be strictly between 0 and 1, got {holdout_fraction}")
    if frame.empty:
        return frame.copy(), frame.copy()
    times = frame[time_column]
    if times.isna().any():
        raise ValueError(f"{time_column} has null values; cannot place those rows in time")
    holdout_rows = math.ceil(holdout_fraction * len(frame))
    boundary = times.sort_values(kind="stable").iloc[len(frame) - holdout_rows]
    in_holdout = (times >= boundary).to_numpy()
    return frame.loc[~in_holdout].copy(), frame.loc[in_holdout].copy()


def split_per_source(
    frame: pd.DataFrame, holdout_fraction: float = 0.2, source_column: str = SOURCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``time_split`` within each source (the Kaggle bootstrap, the auction log), then put together.

    One split over all sources would give the holdout to the latest source alone (logged traffic is
    years younger than the Kaggle sets), leaving no bootstrap holdout to report, and none to judge on
    before there is logged traffic. A frame without ``source_column`` is split as one.
    """
    if source_column not in frame or frame.empty:
        return time_split(frame, holdout_fraction)
    parts = [time_split(rows, holdout_fraction) for _, rows in frame.groupby(source_column, sort=True, dropna=False)]
    return pd.concat([train for train, _ in parts]), pd.concat([holdout for _, holdout in parts])
