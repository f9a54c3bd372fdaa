import pandas as pd
import pytest

from ml.split import time_split


def events(times: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(len(times))],
            "event_time": pd.to_datetime(times, utc=True),
        }
    )


def test_the_latest_events_are_the_holdout_and_row_order_is_kept():
    frame = events(
        [
            "2016-01-05",
            "2016-01-01",
            "2016-01-09",
            "2016-01-03",
            "2016-01-10",
            "2016-01-02",
            "2016-01-07",
            "2016-01-04",
            "2016-01-08",
            "2016-01-06",
        ]
    )
    train, holdout = time_split(frame, holdout_fraction=0.3)
    assert holdout["example_id"].tolist() == ["e2", "e4", "e8"]  # 9th, 10th and 8th of January
    assert train["example_id"].tolist() == ["e0", "e1", "e3", "e5", "e6", "e7", "e9"]


def test_every_event_at_the_boundary_instant_goes_to_the_holdout():
    frame = events(["2016-01-01", "2016-01-02", "2016-01-03", "2016-01-03", "2016-01-03", "2016-01-04"])
    # 20 % of 6 rows is 2 (rounded up); the 2nd-latest instant, Jan 3, has three events.
    train, holdout = time_split(frame, holdout_fraction=0.2)
    assert holdout["example_id"].tolist() == ["e2", "e3", "e4", "e5"]
    assert train["example_id"].tolist() == ["e0", "e1"]


def test_the_split_does_not_depend_on_row_order():
    frame = events(["2016-01-01", "2016-01-02", "2016-01-03", "2016-01-03", "2016-01-03", "2016-01-04"])
    reversed_train, reversed_holdout = time_split(frame.iloc[::-1], holdout_fraction=0.2)
    assert sorted(reversed_holdout["example_id"]) == ["e2", "e3", "e4", "e5"]
    assert sorted(reversed_train["example_id"]) == ["e0", "e1"]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_a_holdout_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="holdout_fraction"):
        time_split(events(["2016-01-01", "2016-01-02"]), holdout_fraction=fraction)
