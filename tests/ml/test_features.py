import pandas as pd
import pytest

from ml.features import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, MissingFeatureError, check_columns
from tests.ml.factories import training_frame


def test_the_contract_names_every_gold_training_column():
    assert NUMERIC_FEATURES == (
        "age",
        "daily_time_spent_on_site",
        "daily_internet_usage",
        "area_income",
        "category_affinity",
        "ad_ctr_smoothed",
        "category_ctr_smoothed",
        "hour_of_day",
        "day_of_week",
    )
    assert CATEGORICAL_FEATURES == ("gender", "income_band", "country", "ad_category", "device_type")
    assert FEATURES == NUMERIC_FEATURES + CATEGORICAL_FEATURES


def test_a_frame_with_the_contract_columns_passes_and_extra_columns_are_fine():
    check_columns(training_frame(5).assign(user_id="u-1", event_date="2016-01-01"))


def test_a_missing_column_is_named():
    with pytest.raises(MissingFeatureError, match=r"lacks required column\(s\): 'country';"):
        check_columns(training_frame(5).drop(columns=["country"]))


def test_a_renamed_column_is_named_with_its_likely_new_name():
    renamed = training_frame(5).rename(columns={"daily_time_spent_on_site": "daily_time_on_site"})
    with pytest.raises(MissingFeatureError, match=r"'daily_time_spent_on_site' \(renamed to 'daily_time_on_site'\?\)"):
        check_columns(renamed)


def test_label_and_event_time_are_required_too():
    with pytest.raises(MissingFeatureError) as raised:
        check_columns(pd.DataFrame({name: [1.0] for name in FEATURES}))
    assert "'label'" in str(raised.value) and "'event_time'" in str(raised.value)
