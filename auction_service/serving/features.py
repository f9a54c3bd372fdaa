"""The model's feature columns for one auction's candidates, from the gold serving tables.

``FeatureStore`` keeps ``gold/user_features`` and ``gold/ad_features`` in plain dicts
keyed by id, so a request costs dict lookups and no DataFrame. ``candidate_batch``
builds the column batch ``CompiledScorer.score`` takes: one entry per candidate,
columns exactly ``ml.features.FEATURES``.

Every feature is computed the way ``spark_jobs.feature_transforms`` computes it for training:
- user numerics and profile (age, daily_time_spent_on_site, daily_internet_usage,
  area_income, gender, income_band, country) from the user's row of gold/user_features;
- category_affinity: the user's segment (gender x age band) affinity for the
  campaign's category; a category the segment has no history for gets PRIOR_CTR,
  which is what training's smoothed rate gives with no earlier examples;
- ad_ctr_smoothed from the ad's row of gold/ad_features, category_ctr_smoothed by
  the campaign's category;
- hour_of_day and day_of_week from the auction time in UTC, day_of_week as Spark's
  ``dayofweek``: 1 = Sunday .. 7 = Saturday;
- ad_category is the campaign's category, device_type the request's (may be None).

Defaults, when the tables are missing or do not know an id (the service still serves):
- an unknown user: age, gender and country from the request; the segment affinity
  of the request's gender and age; daily_time_spent_on_site, daily_internet_usage and
  area_income None (missing, the model imputes them as in training);
- a profile value that is null or "unknown" falls back to the request, then "unknown";
- an unknown ad: ad_ctr_smoothed = PRIOR_CTR (training gives an ad without history
  exactly that); an unknown category: category_ctr_smoothed = PRIOR_CTR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from adstream.contracts import DagId, Table
from adstream.settings import Settings
from auction_service.domain import AuctionContext, ServingCampaign, spend_changed_rows
from ml.scorer import Coded

logger = logging.getLogger(__name__)

# The same values as spark_jobs.feature_transforms (a test holds them equal); copied so the
# service does not import pyspark.
PRIOR_CTR = 0.1
UNKNOWN = "unknown"

USER_COLUMNS = (
    "user_id", "age", "gender", "income_band", "country", "segment",
    "daily_time_spent_on_site", "daily_internet_usage", "area_income", "category_affinity",
)  # fmt: skip
AD_COLUMNS = ("ad_id", "category", "ad_ctr_smoothed", "category_ctr_smoothed")
# The creative an exchange renders (OpenRTB adm); read when the table has them (older tables do not).
CREATIVE_COLUMNS = ("title", "image_path")
_TABLES: dict[Table, tuple[str, ...]] = {Table.GOLD_USER_FEATURES: USER_COLUMNS, Table.GOLD_AD_FEATURES: AD_COLUMNS}


@dataclass(frozen=True, slots=True)
class UserFeatures:
    age: float | None
    gender: str | None
    income_band: str | None
    country: str | None
    daily_time_spent_on_site: float | None
    daily_internet_usage: float | None
    area_income: float | None
    category_affinity: Mapping[str, float]  # the user's segment's affinity per ad category


@dataclass(frozen=True, slots=True)
class AdFeatures:
    category: str | None
    ad_ctr_smoothed: float
    category_ctr_smoothed: float
    title: str | None = None
    image_path: str | None = None  # relative to the Kaggle directory (ADS-16 images); None: a text ad


@dataclass(frozen=True)
class ServingFeatures:
    """One consistent view of both tables; replaced whole on reload, never changed in place."""

    users: Mapping[str, UserFeatures] = field(default_factory=dict)
    ads: Mapping[str, AdFeatures] = field(default_factory=dict)
    segment_affinity: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    category_ctr: Mapping[str, float] = field(default_factory=dict)
    user_table_version: int | None = None
    ad_table_version: int | None = None


def age_band(age: float | None) -> str:
    """spark_jobs.feature_transforms.age_band."""
    if age is None:
        return UNKNOWN
    for upper, band in ((25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54")):
        if age < upper:
            return band
    return "55+"


def segment(gender: str | None, age: float | None) -> str:
    """spark_jobs.feature_transforms.segment: gender x age band, the key affinities are learned for."""
    return f"{gender or UNKNOWN}|{age_band(age)}"


def hour_and_day_of_week(at: datetime) -> tuple[int, int]:
    """(hour_of_day, day_of_week) as Spark's ``hour`` and ``dayofweek`` in a UTC session.

    dayofweek counts 1 = Sunday .. 7 = Saturday; isoweekday counts 1 = Monday .. 7 = Sunday.
    A naive datetime is taken as UTC (AuctionContext.at is UTC).
    """
    utc = at.astimezone(UTC) if at.tzinfo is not None else at
    return utc.hour, utc.isoweekday() % 7 + 1


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def users_from_rows(
    rows: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, UserFeatures], dict[str, Mapping[str, float]]]:
    """gold/user_features rows -> (features by user_id, affinity map by segment).

    Every user of a segment carries the same map, so the segment's map serves users
    the table does not know.
    """
    users: dict[str, UserFeatures] = {}
    by_segment: dict[str, Mapping[str, float]] = {}
    for row in rows:
        # A map column arrives from Arrow as a list of (key, value) pairs.
        affinity = dict(row["category_affinity"] or ())
        users[row["user_id"]] = UserFeatures(
            age=_float(row["age"]),
            gender=row["gender"],
            income_band=row["income_band"],
            country=row["country"],
            daily_time_spent_on_site=_float(row["daily_time_spent_on_site"]),
            daily_internet_usage=_float(row["daily_internet_usage"]),
            area_income=_float(row["area_income"]),
            category_affinity=affinity,
        )
        if row["segment"] is not None:
            by_segment.setdefault(row["segment"], affinity)
    return users, by_segment


def ads_from_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, AdFeatures], dict[str, float]]:
    """gold/ad_features rows -> (features by ad_id, category CTR by category)."""
    ads: dict[str, AdFeatures] = {}
    category_ctr: dict[str, float] = {}
    for row in rows:
        ad = AdFeatures(
            row["category"],
            float(row["ad_ctr_smoothed"]),
            float(row["category_ctr_smoothed"]),
            row.get("title"),
            row.get("image_path"),
        )
        ads[row["ad_id"]] = ad
        if ad.category is not None:
            category_ctr[ad.category] = ad.category_ctr_smoothed
    return ads, category_ctr


def _known(value: str | None) -> str | None:
    return None if value is None or value == UNKNOWN else value


@dataclass(frozen=True, slots=True)
class _UserColumns:
    """The request's side of the features: the same for every candidate of one auction."""

    age: float | None
    gender: str
    income_band: str
    country: str
    daily_time_spent_on_site: float | None
    daily_internet_usage: float | None
    area_income: float | None
    affinity: Mapping[str, float]  # by ad category
    hour_of_day: int
    day_of_week: int


def _user_columns(context: AuctionContext, features: ServingFeatures) -> _UserColumns:
    user = features.users.get(context.user_id) if context.user_id is not None else None
    hour, day = hour_and_day_of_week(context.at)
    if user is not None:
        return _UserColumns(
            age=user.age if user.age is not None else _float(context.age),
            gender=_known(user.gender) or context.gender or UNKNOWN,
            income_band=_known(user.income_band) or UNKNOWN,
            country=_known(user.country) or context.country or UNKNOWN,
            daily_time_spent_on_site=user.daily_time_spent_on_site,
            daily_internet_usage=user.daily_internet_usage,
            area_income=user.area_income,
            affinity=user.category_affinity,
            hour_of_day=hour,
            day_of_week=day,
        )
    age = _float(context.age)
    return _UserColumns(
        age=age,
        gender=context.gender or UNKNOWN,
        income_band=UNKNOWN,
        country=context.country or UNKNOWN,
        daily_time_spent_on_site=None,
        daily_internet_usage=None,
        area_income=None,
        affinity=features.segment_affinity.get(segment(context.gender, age), {}),
        hour_of_day=hour,
        day_of_week=day,
    )


def candidate_batch(
    context: AuctionContext, campaigns: Sequence[ServingCampaign], store: FeatureStore | ServingFeatures
) -> dict[str, list[Any]]:
    """The scorer's input for ``campaigns`` in ``context``: columns ``ml.features.FEATURES``, one entry
    per campaign, in order. See the module doc for where each value comes from."""
    features = store.current if isinstance(store, FeatureStore) else store  # one snapshot per request
    n = len(campaigns)
    user = _user_columns(context, features)
    ads, category_ctr = features.ads, features.category_ctr
    categories = [campaign.category for campaign in campaigns]
    ad_rows = [ads.get(campaign.ad_id) for campaign in campaigns]
    return {
        "age": [user.age] * n,
        "daily_time_spent_on_site": [user.daily_time_spent_on_site] * n,
        "daily_internet_usage": [user.daily_internet_usage] * n,
        "area_income": [user.area_income] * n,
        "category_affinity": [user.affinity.get(category, PRIOR_CTR) for category in categories],
        "ad_ctr_smoothed": [PRIOR_CTR if ad is None else ad.ad_ctr_smoothed for ad in ad_rows],
        "category_ctr_smoothed": [category_ctr.get(category, PRIOR_CTR) for category in categories],
        "hour_of_day": [user.hour_of_day] * n,
        "day_of_week": [user.day_of_week] * n,
        "gender": [user.gender] * n,
        "income_band": [user.income_band] * n,
        "country": [user.country] * n,
        "ad_category": categories,
        "device_type": [context.device_type] * n,
    }


@dataclass(frozen=True, eq=False)
class CampaignFeatures:
    """The campaign side of ``candidate_batch`` for one campaign snapshot and one ``ServingFeatures``,
    as arrays by campaign row, so an auction over the rows a ``CampaignIndex`` kept gathers its
    columns with a few array operations (``candidate_columns``)."""

    category_names: tuple[str, ...]  # the distinct categories
    category_code: np.ndarray  # each row's category, as an index into category_names
    ad_ctr_smoothed: np.ndarray
    category_ctr_smoothed: np.ndarray
    _last: ClassVar[tuple[Sequence[ServingCampaign], ServingFeatures, CampaignFeatures] | None] = None

    @classmethod
    def of(cls, campaigns: Sequence[ServingCampaign], features: ServingFeatures) -> CampaignFeatures:
        """Built on first use for this campaign snapshot and features snapshot (both are replaced whole
        on change, never edited), then reused until either changes."""
        last = cls._last
        if last is not None and last[0] is campaigns and last[1] is features:
            return last[2]
        if last is not None and last[1] is features and spend_changed_rows(last[0], campaigns) is not None:
            cls._last = (campaigns, features, last[2])  # copies with new spend, which no feature reads
            return last[2]
        built = cls.build(campaigns, features)
        cls._last = (campaigns, features, built)
        return built

    @classmethod
    def build(cls, campaigns: Sequence[ServingCampaign], features: ServingFeatures) -> CampaignFeatures:
        categories = [campaign.category for campaign in campaigns]
        names = tuple(dict.fromkeys(categories))
        code = {name: i for i, name in enumerate(names)}
        ads, category_ctr = features.ads, features.category_ctr
        ad_rows = [ads.get(campaign.ad_id) for campaign in campaigns]
        return cls(
            category_names=names,
            category_code=np.array([code[category] for category in categories], dtype=np.intp),
            ad_ctr_smoothed=np.array([PRIOR_CTR if ad is None else ad.ad_ctr_smoothed for ad in ad_rows]),
            category_ctr_smoothed=np.array([category_ctr.get(category, PRIOR_CTR) for category in categories]),
        )


def candidate_columns(
    context: AuctionContext, campaign_features: CampaignFeatures, rows: np.ndarray, features: ServingFeatures
) -> dict[str, Any]:
    """``candidate_batch`` for the campaigns at ``rows``, with the same values: numeric columns as float
    arrays (None as NaN, which the scorer reads alike), categorical columns as ``Coded`` (the scorer
    then encodes each distinct value once, not once per candidate)."""
    n = rows.size
    user = _user_columns(context, features)
    affinity = np.array([user.affinity.get(name, PRIOR_CTR) for name in campaign_features.category_names])

    def constant(value: float | None) -> np.ndarray:
        return np.full(n, np.nan if value is None else value)

    return {
        "age": constant(user.age),
        "daily_time_spent_on_site": constant(user.daily_time_spent_on_site),
        "daily_internet_usage": constant(user.daily_internet_usage),
        "area_income": constant(user.area_income),
        "category_affinity": affinity[campaign_features.category_code[rows]],
        "ad_ctr_smoothed": campaign_features.ad_ctr_smoothed[rows],
        "category_ctr_smoothed": campaign_features.category_ctr_smoothed[rows],
        "hour_of_day": constant(user.hour_of_day),
        "day_of_week": constant(user.day_of_week),
        "gender": Coded.repeat(user.gender, n),
        "income_band": Coded.repeat(user.income_band, n),
        "country": Coded.repeat(user.country, n),
        "ad_category": Coded(campaign_features.category_names, campaign_features.category_code[rows]),
        "device_type": Coded.repeat(context.device_type, n),
    }


class FeatureStore:
    """gold/user_features and gold/ad_features in memory, reloaded when a table gets a new Delta version.

    Readers take ``current`` (an immutable ``ServingFeatures``) once per request; a
    reload builds a new one and swaps it in with one assignment, so a request never
    mixes two versions. ``reason`` says what is missing ("" when both tables loaded);
    with a table missing, ``candidate_batch`` uses the defaults in the module doc.
    """

    def __init__(self, settings: Settings) -> None:
        self._locations = {table: settings.delta_rs_location(table) for table in _TABLES}
        self._handles: dict[Table, DeltaTable] = {}
        self._problems: dict[Table, str] = {}  # replaced whole, like ``current``
        self.current = ServingFeatures()

    @classmethod
    def load(cls, settings: Settings) -> FeatureStore:
        store = cls(settings)
        store.reload_if_changed()
        return store

    @property
    def reason(self) -> str:
        return "; ".join(self._problems.values())

    def reload_if_changed(self) -> bool:
        """Reads a table again only when its Delta version moved (a log check, about a millisecond);
        True when the features changed. A table that cannot be read keeps its last loaded rows."""
        current = self.current
        changes: dict[str, Any] = {}
        problems: dict[Table, str] = {}
        for table, columns in _TABLES.items():
            try:
                handle = self._latest(table)
                version = handle.version()
                if version != getattr(current, _VERSION_FIELD[table]):
                    if table is Table.GOLD_AD_FEATURES:
                        present = {field.name for field in handle.schema().fields}
                        columns = (*columns, *(name for name in CREATIVE_COLUMNS if name in present))
                    rows = handle.to_pyarrow_table(columns=list(columns)).to_pylist()
                    changes |= _features_from(table, version, rows)
            except TableNotFoundError:
                self._handles.pop(table, None)
                location = self._locations[table][0]
                problems[table] = f"{table.value} not found at {location}: build it (DAG {DagId.FEATURE_BUILD})"
            except Exception as exc:  # a broken, half-written or renamed table must not take serving down
                self._handles.pop(table, None)
                problems[table] = f"{table.value} could not be read: {type(exc).__name__}: {exc}"
                logger.warning("serving features: %s", problems[table])
        self._problems = problems
        if not changes:
            return False
        self.current = replace(current, **changes)
        logger.info("serving features: %d users, %d ads", len(self.current.users), len(self.current.ads))
        return True

    def _latest(self, table: Table) -> DeltaTable:
        handle = self._handles.get(table)
        location, options = self._locations[table]
        if handle is None:
            handle = self._handles[table] = DeltaTable(location, storage_options=options)
        else:
            handle.update_incremental()  # reads only the log entries added since the last check
        return handle


_VERSION_FIELD = {Table.GOLD_USER_FEATURES: "user_table_version", Table.GOLD_AD_FEATURES: "ad_table_version"}


def _features_from(table: Table, version: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``ServingFeatures`` fields one table's rows at ``version`` make."""
    if table is Table.GOLD_USER_FEATURES:
        users, segment_affinity = users_from_rows(rows)
        return {"users": users, "segment_affinity": segment_affinity, "user_table_version": version}
    ads, category_ctr = ads_from_rows(rows)
    return {"ads": ads, "category_ctr": category_ctr, "ad_table_version": version}
