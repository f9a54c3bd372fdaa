"""Names that code, DAGs and tests share: topics, tables, DAG ids and registry names.

One place for each topic, table, DAG id and registry name, so a rename is one
edit and a typo is an ImportError rather than an empty table.
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    CAMPAIGN_INSTRUCTIONS = "campaign-instructions"  # key: campaign_id
    AUCTIONS = "auctions"  # one record per auction
    AD_FEEDBACK = "ad-feedback"  # key: auction_id
    REFUSED_EVENTS = "refused-events"  # key: auction_id; events the service refused, for quarantine/events
    CAMPAIGN_DECISIONS = "campaign-decisions"  # key: campaign_id; the optimizer's multipliers (optimizer)
    PLATFORM_SMOKE = "platform-smoke"  # `make run` / smoke DAG only


class Table(StrEnum):
    """Lake tables, relative to LAKE_ROOT; all Delta."""

    BRONZE_ADVERTISING = "bronze/advertising"
    BRONZE_ADS16_USERS = "bronze/ads16_users"
    BRONZE_ADS16_RATINGS = "bronze/ads16_ratings"
    BRONZE_ADS16_ADS = "bronze/ads16_ads"
    BRONZE_AMAZON_ADS = "bronze/amazon_ads"
    BRONZE_FEEDBACK_RAW = "bronze/feedback_raw"
    BRONZE_AUCTIONS_RAW = "bronze/auctions_raw"
    SILVER_USERS = "silver/users"
    SILVER_ADS = "silver/ads"
    SILVER_FEEDBACK_EVENTS = "silver/feedback_events"
    SILVER_AUCTIONS = "silver/auctions"
    GOLD_USER_FEATURES = "gold/user_features"
    GOLD_AD_FEATURES = "gold/ad_features"
    GOLD_CTR_TRAINING_SET = "gold/ctr_training_set"
    GOLD_KPI_MINUTE = "gold/kpi_minute"
    GOLD_BILLING_HOURLY = "gold/billing_hourly"
    GOLD_IVT_HOURLY = "gold/ivt_hourly"
    GOLD_EXCHANGE_COSTS_HOURLY = "gold/exchange_costs_hourly"  # per exchange and hour: what its win notices priced
    GOLD_CALIBRATION = "gold/calibration"  # observed / expected clicks per model version x hour x pricing x category
    GOLD_CALIBRATORS = "gold/calibrators"  # every online pCTR calibration fitted, with the model version it maps
    GOLD_TRAFFIC_CURVE = "gold/traffic_curve"  # auctions per slot of the pacing day: the curve even pacing plans on
    GOLD_PACING_MINUTE = "gold/pacing_minute"  # per campaign and minute: spend, plan, λ, throttle
    GOLD_OPTIMIZER_DECISIONS = "gold/optimizer_decisions"  # every optimizer decision, its inputs and reasons
    QUARANTINE_EVENTS = "quarantine/events"  # events the service refused, with the reason
    SMOKE_EVENTS = "smoke/platform_events"


def quarantine_table(source: str) -> str:
    """Rejected rows of ``source`` (e.g. ``feedback``), with a reason and their origin."""
    return f"quarantine/{source}"


class DagId(StrEnum):
    KAGGLE_INGESTION = "kaggle_ingestion"
    FEATURE_BUILD = "feature_build"
    CTR_TRAINING = "ctr_training"
    HOURLY_BILLING = "hourly_billing"
    PLATFORM_SMOKE = "platform_smoke"
    LAKE_MAINTENANCE = "lake_maintenance"
    BID_FILTER_TRAINING = "bid_filter_training"


MLFLOW_EXPERIMENT = "ctr"
REGISTERED_MODEL = "ctr-model"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
# The bid-request filter (ml.bid_filter): its own experiment and registered model, with the same aliases.
BID_FILTER_EXPERIMENT = "bid-filter"
BID_FILTER_MODEL = "bid-filter"
