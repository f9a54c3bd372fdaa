"""Pure transforms of the silver job (spark_jobs.silver): unified user profiles and a unified ad catalog
from the bronze Kaggle tables. DataFrames in, DataFrame out: no I/O and no session here.

Documented choices:
- Advertising rows are anonymous: each becomes user ``adv-<source_row>``; ADS-16
  users keep their id as ``ads16-U0001``.
- Income bands: ADS-16 ``Income`` 0..3 maps to low / lower_mid / upper_mid / high;
  Advertising ``Area Income`` uses cut points 35k / 50k / 65k, the quartiles of the real file's range.
- Home countries are normalised for the misspellings known in ADS-16 ("Phillipines").
- An Amazon ad's id is a hash of its category and title, so the same title crawled
  twice in one department is one ad.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.taxonomy import category_for_department

INCOME_BANDS = ("low", "lower_mid", "upper_mid", "high")
AREA_INCOME_CUTS = (35_000.0, 50_000.0, 65_000.0)
COUNTRY_FIXES = {
    "phillipines": "Philippines",
    "philipines": "Philippines",
    "untied kingdom": "United Kingdom",
    "uk": "United Kingdom",
    "usa": "United States",
    "us": "United States",
    "united states of america": "United States",
}
USER_COLUMNS = (
    "user_id", "source", "age", "gender", "income_band", "country",
    "daily_time_spent_on_site", "daily_internet_usage", "area_income", "interests",
)  # fmt: skip
AD_COLUMNS = ("ad_id", "source", "category", "department", "subdepartment", "title", "image_path")


def normalise_country(country: Column) -> Column:
    cleaned = F.trim(country)
    fixed = F.lit(None).cast("string")
    for wrong, right in COUNTRY_FIXES.items():
        fixed = F.when(F.lower(cleaned) == wrong, F.lit(right)).otherwise(fixed)
    return F.coalesce(fixed, F.initcap(cleaned))


def area_income_band(area_income: Column) -> Column:
    low, mid, high = AREA_INCOME_CUTS
    return (
        F.when(area_income.isNull(), None)
        .when(area_income < low, INCOME_BANDS[0])
        .when(area_income < mid, INCOME_BANDS[1])
        .when(area_income < high, INCOME_BANDS[2])
        .otherwise(INCOME_BANDS[3])
    )


def users_from_advertising(advertising: DataFrame) -> DataFrame:
    return advertising.select(
        F.concat(F.lit("adv-"), F.lpad(F.col("source_row").cast("string"), 6, "0")).alias("user_id"),
        F.lit("advertising").alias("source"),
        F.col("age").cast("int").alias("age"),
        F.when(F.col("male"), "M").otherwise("F").alias("gender"),
        area_income_band(F.col("area_income")).alias("income_band"),
        normalise_country(F.col("country")).alias("country"),
        F.col("daily_time_spent_on_site"),
        F.col("daily_internet_usage"),
        F.col("area_income"),
        F.array().cast("array<string>").alias("interests"),
    )


def users_from_ads16(ads16_users: DataFrame) -> DataFrame:
    bands = F.array(*(F.lit(band) for band in INCOME_BANDS))
    return ads16_users.select(
        F.concat(F.lit("ads16-"), F.col("user_id")).alias("user_id"),
        F.lit("ads16").alias("source"),
        F.col("age").cast("int").alias("age"),
        F.coalesce(F.col("gender"), F.lit("unknown")).alias("gender"),
        F.when(F.col("income").between(0, 3), F.element_at(bands, F.col("income").cast("int") + 1)).alias(
            "income_band"
        ),
        normalise_country(F.col("home_country")).alias("country"),
        F.lit(None).cast("double").alias("daily_time_spent_on_site"),
        F.lit(None).cast("double").alias("daily_internet_usage"),
        F.lit(None).cast("double").alias("area_income"),
        F.array_distinct(
            F.transform(F.concat(F.col("timepass"), F.col("fave_sports")), lambda item: F.lower(F.trim(item)))
        ).alias("interests"),
    )


def build_silver_users(advertising: DataFrame, ads16_users: DataFrame) -> DataFrame:
    """One profile per user from both sources, with the same columns and types."""
    return users_from_advertising(advertising).unionByName(users_from_ads16(ads16_users)).select(*USER_COLUMNS)


def ads_from_amazon(amazon_ads: DataFrame) -> DataFrame:
    category = category_for_department(F.col("department"), F.col("subdepartment"))
    key = F.concat_ws("|", F.col("department"), F.coalesce(F.col("subdepartment"), F.lit("")), F.col("ad_text"))
    return amazon_ads.select(
        F.concat(F.lit("amz-"), F.substring(F.sha2(key, 256), 1, 16)).alias("ad_id"),
        F.lit("amazon").alias("source"),
        category.alias("category"),
        F.col("department"),
        F.col("subdepartment"),
        F.col("ad_text").alias("title"),
        F.lit(None).cast("string").alias("image_path"),
    ).dropDuplicates(["ad_id"])


def ads_from_ads16(ads16_ads: DataFrame) -> DataFrame:
    return ads16_ads.select(
        F.col("ad_id"),
        F.lit("ads16").alias("source"),
        F.col("category_name").alias("category"),
        F.lit(None).cast("string").alias("department"),
        F.lit(None).cast("string").alias("subdepartment"),
        F.concat(F.col("category_name"), F.lit(" ad #"), (F.col("position") + 1).cast("string")).alias("title"),
        F.col("image_path"),
    )


def build_silver_ads(amazon_ads: DataFrame, ads16_ads: DataFrame) -> DataFrame:
    """The unified catalog: every ad once, with a stable ad_id and a taxonomy category."""
    return ads_from_amazon(amazon_ads).unionByName(ads_from_ads16(ads16_ads)).select(*AD_COLUMNS)
