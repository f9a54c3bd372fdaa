"""Silver users and ads: the pure transforms on tiny frames."""

from datetime import UTC, datetime

import pytest
from pyspark.errors import AnalysisException
from pyspark.sql import Row

from spark_jobs import silver_transforms
from spark_jobs.taxonomy import OTHER

pytestmark = pytest.mark.slow

ADVERTISING_SCHEMA = (
    "daily_time_spent_on_site double, age long, area_income double, daily_internet_usage double, "
    "ad_topic_line string, city string, male boolean, country string, timestamp timestamp, clicked_on_ad boolean, "
    "source_file string, source_row long"
)
ADS16_USERS_SCHEMA = (
    "user_id string, gender string, age long, home_country string, income long, timepass array<string>, "
    "fave_sports array<string>"
)


def advertising(spark, *rows):
    return spark.createDataFrame(list(rows), ADVERTISING_SCHEMA)


def test_users_from_both_sources_share_one_schema(spark):
    adv = advertising(
        spark,
        (68.9, 35, 61833.9, 256.0, "t", "c", False, " tunisia ", datetime(2016, 3, 27, tzinfo=UTC), False, "a.csv", 7),
        (80.2, 31, 20000.0, 193.7, "t", "c", True, "Chad", datetime(2016, 4, 4, tzinfo=UTC), True, "a.csv", 12),
    )
    ads16 = spark.createDataFrame(
        [("U0001", "F", 29, "Phillipines", 3, ["Internet", " Music"], ["Tennis", "music"]),
         ("U0002", None, 44, "Untied Kingdom", None, [], [])],
        ADS16_USERS_SCHEMA,
    )  # fmt: skip
    users = {row.user_id: row for row in silver_transforms.build_silver_users(adv, ads16).collect()}
    assert set(users) == {"adv-000007", "adv-000012", "ads16-U0001", "ads16-U0002"}
    assert (users["adv-000007"].gender, users["adv-000007"].income_band, users["adv-000007"].country) == (
        "F", "upper_mid", "Tunisia",
    )  # fmt: skip
    assert (users["adv-000012"].gender, users["adv-000012"].income_band) == ("M", "low")
    assert users["ads16-U0001"].country == "Philippines" and users["ads16-U0001"].income_band == "high"
    assert sorted(users["ads16-U0001"].interests) == ["internet", "music", "tennis"]
    assert users["ads16-U0002"].gender == "unknown" and users["ads16-U0002"].income_band is None
    assert users["ads16-U0002"].country == "United Kingdom"
    assert users["ads16-U0001"].daily_time_spent_on_site is None
    assert list(silver_transforms.build_silver_users(adv, ads16).columns) == list(silver_transforms.USER_COLUMNS)


def test_a_missing_bronze_column_fails_naming_it(spark):
    adv = advertising(spark).drop("area_income")
    ads16 = spark.createDataFrame([], ADS16_USERS_SCHEMA)
    with pytest.raises(AnalysisException, match="area_income"):
        silver_transforms.build_silver_users(adv, ads16).collect()


def test_ads_get_stable_ids_and_one_taxonomy(spark):
    amazon = spark.createDataFrame(
        [("electronics", "monitors", "Dell 27 Monitor"), ("electronics", "monitors", "Dell 27 Monitor"),
         ("video_games", "consoles", "Game Console X"), ("mystery", None, "Odd thing")],
        "department string, subdepartment string, ad_text string",
    )  # fmt: skip
    ads16 = spark.createDataFrame(
        [Row(ad_id="ads16-03-07", category_index=3, category_name="Health & Beauty", position=7, image_path="p.png")]
    )
    ads = {row.title: row for row in silver_transforms.build_silver_ads(amazon, ads16).collect()}
    assert len(ads) == 4  # the duplicate title in one department is one ad
    assert ads["Dell 27 Monitor"].category == "Consumer Electronics"
    assert ads["Game Console X"].category == "Console & Video Games"
    assert ads["Odd thing"].category == OTHER
    assert ads["Health & Beauty ad #8"].ad_id == "ads16-03-07"
    assert ads["Dell 27 Monitor"].ad_id.startswith("amz-") and len(ads["Dell 27 Monitor"].ad_id) == 20
    again = {row.title: row.ad_id for row in silver_transforms.build_silver_ads(amazon, ads16).collect()}
    assert again["Dell 27 Monitor"] == ads["Dell 27 Monitor"].ad_id
