"""The bid-request filter: from an OpenRTB request alone, whether its auction will fill and earn.

Served before eligibility and scoring (``auction_service.serving.bid_filter``): a request whose score is
below the threshold is answered 204 at once. Pure functions and one frozen model; no I/O, no Spark and no
clock here (``ml.bid_filter_training`` reads silver/auctions and talks to MLflow).

Features (``RequestFeatures``): what the request says before any campaign is looked at: the caller
(publisher_id), the site's domain or the app's bundle, the placement ("300x250", "video", "banner"), the
device type, the country, the channel, the content type, and the hour and day of week of the request
(UTC; the day as Spark's ``dayofweek``, 1 = Sunday .. 7 = Saturday, as the CTR features count it).

Model: logistic regression on one-hot tokens of those features and five crosses (placement x country,
domain x placement, device x placement, country x hour, channel x content type), fitted with scikit-learn
and exported as a table token -> weight. Scoring one request is building 14 short strings, 14 dict
lookups and a sigmoid, with no numpy and no array: 1.4 µs p50, 1.6 µs p99 (``adstream bench bid-filter``,
782 tokens, on two cores shared with other jobs), against a bound of 50 µs p99. A token seen fewer than
MIN_TOKEN_COUNT times in training has no weight, and each field's weights are centred on the training
requests, so a value never seen (a new domain, a day of week the window lacked) scores as the average one.

Label: 1 when the auction **filled with revenue > 0**. The filter exists to save the work of auctions that
earn nothing; an auction that filled at a price of zero earns nothing either, so for the filter it is no
better than a no-fill. Revenue of one auction, in micros: ``clearing_price_cpm_micros / 1000`` when the
record has it; for older records, a CPM winner's ``clearing_price_micros / 1000`` (its billing unit is
already per thousand), else the winner's ``ecpm_micros / 1000`` (CPC and CPA winners are paid per click
or conversion, so their expected value per impression stands in); 0 without a fill. The code keeps it
in CPM micros (x 1000), integer: ratios are the same and sums stay exact.

Threshold: set on **revenue**, not on labels. A false negative (a request shed that would have earned)
costs its revenue; a false positive (an auction run for nothing) costs a millisecond of CPU. So the
threshold is the highest score that keeps at least the revenue target (99 %) of the holdout's revenue:
requests are shed from the lowest score up while the revenue they carry stays within 1 % of the total.
Shedding by label counts would treat a request worth a tenth of a cent like one worth a dollar. A threshold
set at the edge of one sample keeps a little less on the next: on the bench's synthetic log it kept 99.0 %
of the holdout's revenue and 97.7-99.7 % of each of the next days' (98.8 % on average over 18 days). The
service watches it on its exploration slice; BID_FILTER_REVENUE_TARGET is the margin (at 0.995 the next
days kept 98.7-99.9 %, 99.4 % on average, for the same share of no-fill requests shed).

Training data: the auction log's OpenRTB requests (``request_id`` set) that were not screened by a
filter (``bid_filter_explored`` null: no filter served) or were passed as exploration
(``bid_filter_explored`` true: a uniform sample whatever their score). Requests the filter passed on
their score are left out: they are only the high scores, and a holdout of them would overstate the
revenue a threshold keeps. The split is by time: the latest HOLDOUT_FRACTION of requests is the holdout
the threshold is chosen on and every figure is reported on.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression

from ml.metrics import roc_auc
from ml.split import time_split

FORMAT = 1  # of the exported table (``BidFilter.to_json``)
HOLDOUT_FRACTION = 0.2
REVENUE_TARGET = 0.99
MIN_TOKEN_COUNT = 5  # training requests a token needs to get a weight of its own
REGULARIZATION_C = 1.0  # scikit-learn's inverse L2 strength; tokens are 0/1, so 1.0 is a mild prior
TIME_COLUMN = "event_time"
LABEL = "label"  # 1: filled with revenue > 0
REVENUE = "revenue_cpm_micros"  # an auction's revenue x 1000 (see the module doc)
LATENCY = "latency_ms"  # the auction's own handling time, as logged
# silver/auctions columns the features come from; older tables may lack some (read as null).
FEATURE_COLUMNS = ("publisher_id", "domain", "placement", "device_type", "country", "channel", "content_type")
OUTCOME_COLUMNS = ("filled", "pricing_model", "clearing_price_micros", "clearing_price_cpm_micros", "ecpm_micros")
SCREENING_COLUMNS = ("request_id", "bid_filter_explored")
LOG_COLUMNS = (TIME_COLUMN, *FEATURE_COLUMNS, *OUTCOME_COLUMNS, *SCREENING_COLUMNS, LATENCY)


class AuctionLogError(ValueError):
    """The auction log cannot train (or judge) a bid filter: too few requests, one class, no revenue."""


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """One OpenRTB request as the filter sees it (None: the request did not say)."""

    publisher_id: str | None
    domain: str | None  # site.domain, else app.bundle / app.domain
    placement: str | None  # "300x250", "16:9" (a flexible format), "video", "banner" (no size)
    device_type: str | None
    country: str | None
    channel: str | None  # "web" or "app"
    content_type: str | None  # "display" or "video"
    hour: int  # of the request, UTC
    day_of_week: int  # Spark's dayofweek of the request (UTC): 1 = Sunday .. 7 = Saturday


def request_tokens(f: RequestFeatures) -> tuple[str, ...]:
    """The tokens whose weights add up to a request's log-odds; the same function trains and serves."""
    domain, placement, device, country = f.domain or "", f.placement or "", f.device_type or "", f.country or ""
    channel, content = f.channel or "", f.content_type or ""
    return (
        "pub=" + (f.publisher_id or ""),
        "dom=" + domain,
        "pl=" + placement,
        "dev=" + device,
        "geo=" + country,
        "ch=" + channel,
        "ct=" + content,
        f"h={f.hour}",
        f"dow={f.day_of_week}",
        f"pl*geo={placement}|{country}",
        f"dom*pl={domain}|{placement}",
        f"dev*pl={device}|{placement}",
        f"geo*h={country}|{f.hour}",
        f"ch*ct={channel}|{content}",
    )


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, eq=False)
class BidFilter:
    """A fitted filter: log-odds = bias + the weights of a request's tokens; passes at ``threshold`` and above."""

    bias: float
    weights: Mapping[str, float]
    threshold: float  # on the score (a probability)
    # What one shed request saves: the mean logged handling time of the holdout's auctions it would shed.
    time_saved_per_shed_s: float = 0.0
    revenue_target: float = REVENUE_TARGET
    holdout: Mapping[str, float] = field(default_factory=dict)  # its figures where the threshold was chosen
    _get: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_get", dict(self.weights).get)  # one bound lookup per token when scoring

    def score(self, features: RequestFeatures) -> float:
        """P(the auction fills with revenue > 0) for one request."""
        get = self._get
        z = self.bias
        for token in request_tokens(features):
            z += get(token, 0.0)
        return _sigmoid(z)

    def passes(self, score: float) -> bool:
        return score >= self.threshold

    def scores(self, requests: Sequence[RequestFeatures]) -> np.ndarray:
        return np.fromiter((self.score(f) for f in requests), dtype=np.float64, count=len(requests))

    def with_threshold(self, threshold: float, time_saved_per_shed_s: float, holdout: Mapping[str, float]) -> BidFilter:
        return BidFilter(self.bias, self.weights, threshold, time_saved_per_shed_s, self.revenue_target, holdout)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "bias": self.bias,
                "threshold": self.threshold,
                "time_saved_per_shed_s": self.time_saved_per_shed_s,
                "revenue_target": self.revenue_target,
                "holdout": dict(self.holdout),
                "weights": dict(self.weights),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> BidFilter:
        """The exported table back; ``ValueError`` for another format or a weight that is not a finite number."""
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"bid filter format {data.get('format')!r}, expected {FORMAT}")
        weights = {str(token): float(weight) for token, weight in data["weights"].items()}
        numbers = [float(data["bias"]), float(data["threshold"]), *weights.values()]
        if not all(math.isfinite(value) for value in numbers) or not 0 <= float(data["threshold"]) <= 1:
            raise ValueError("bid filter weights and threshold must be finite, the threshold within [0, 1]")
        return cls(
            bias=float(data["bias"]),
            weights=weights,
            threshold=float(data["threshold"]),
            time_saved_per_shed_s=float(data.get("time_saved_per_shed_s", 0.0)),
            revenue_target=float(data.get("revenue_target", REVENUE_TARGET)),
            holdout={name: float(value) for name, value in data.get("holdout", {}).items()},
        )


# --- the auction log ---------------------------------------------------------------------------


def revenue_cpm_micros(log: pd.DataFrame) -> np.ndarray:
    """Each auction's revenue x 1000, in micros (the module doc's rule), as int64; 0 without a fill."""

    def column(name: str) -> pd.Series:
        return log[name] if name in log else pd.Series(pd.NA, index=log.index, dtype="Int64")

    cpm_price = column("clearing_price_cpm_micros").astype("Int64")
    cpm_winner = column("pricing_model").astype(object).eq("CPM").fillna(False).astype(bool)
    billing_unit_price = column("clearing_price_micros").astype("Int64").where(cpm_winner)
    revenue = cpm_price.fillna(billing_unit_price).fillna(column("ecpm_micros").astype("Int64")).fillna(0)
    filled = log["filled"].fillna(False).astype(bool)
    return np.where(filled.to_numpy(), revenue.to_numpy(dtype=np.int64), 0)


def training_rows(log: pd.DataFrame) -> pd.DataFrame:
    """The requests a filter learns from (the module doc): OpenRTB, not passed on a filter's score; with
    ``label`` and ``revenue_cpm_micros``; columns an older table lacks are null."""
    missing = [name for name in (TIME_COLUMN, "filled") if name not in log]
    if missing:
        raise AuctionLogError(f"the auction log lacks {', '.join(missing)}")
    frame = log.copy()
    for name in LOG_COLUMNS:
        if name not in frame:
            frame[name] = None
    openrtb = frame["request_id"].notna()
    unscreened = frame["bid_filter_explored"].isna() | frame["bid_filter_explored"].eq(True)
    frame = frame.loc[(openrtb & unscreened).to_numpy()].reset_index(drop=True)
    frame[REVENUE] = revenue_cpm_micros(frame)
    frame[LABEL] = (frame["filled"].fillna(False).astype(bool) & (frame[REVENUE] > 0)).astype(np.int8)
    frame[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN], utc=True)
    return frame


def request_features(frame: pd.DataFrame) -> list[RequestFeatures]:
    """The features of every request in ``frame``; hour and day of week from ``event_time`` in UTC, the day
    as Spark's ``dayofweek`` (pandas counts Monday = 0, so Monday is 2 and Sunday 1)."""
    times = pd.to_datetime(frame[TIME_COLUMN], utc=True)
    hours = times.dt.hour.to_numpy().tolist()
    days = ((times.dt.dayofweek.to_numpy() + 1) % 7 + 1).tolist()

    def values(name: str) -> list[str | None]:
        return [None if pd.isna(value) else str(value) for value in frame[name].to_numpy(dtype=object)]

    columns = [values(name) for name in FEATURE_COLUMNS]
    return [RequestFeatures(*row, hour, day) for *row, hour, day in zip(*columns, hours, days, strict=True)]


# --- the threshold -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and what it does on a set of requests: requests scoring below it are shed."""

    threshold: float
    revenue_retained: float  # revenue of the requests kept / all revenue
    shed_share: float  # requests shed / requests
    no_fill_shed_share: float  # requests with label 0 shed / requests with label 0 (NaN: none)
    requests: int


def at_threshold(scores: np.ndarray, revenue: np.ndarray, labels: np.ndarray, threshold: float) -> ThresholdChoice:
    """What ``threshold`` does on these requests (NaN revenue retained when they carry no revenue)."""
    shed = scores < threshold
    total = int(revenue.sum())
    no_fill = labels == 0
    return ThresholdChoice(
        threshold=float(threshold),
        revenue_retained=math.nan if total == 0 else int(revenue[~shed].sum()) / total,
        shed_share=float(shed.mean()) if shed.size else math.nan,
        no_fill_shed_share=float(shed[no_fill].mean()) if no_fill.any() else math.nan,
        requests=int(shed.size),
    )


def choose_threshold(
    scores: np.ndarray, revenue: np.ndarray, labels: np.ndarray, target: float = REVENUE_TARGET
) -> ThresholdChoice:
    """The highest threshold that keeps at least ``target`` of the revenue of these requests.

    Candidates are the distinct scores: at a candidate, every request scoring below it is shed and every
    request at or above it kept, so requests with equal scores are never split. Raises
    ``AuctionLogError`` when the requests carry no revenue (nothing to set the threshold on).
    """
    total = int(revenue.sum())
    if total <= 0:
        raise AuctionLogError("the requests carry no revenue: there is nothing to set the threshold on")
    order = np.argsort(scores, kind="stable")
    ascending = scores[order]
    below = np.concatenate(([0], np.cumsum(revenue[order].astype(np.int64))))  # revenue of the i lowest
    firsts = np.flatnonzero(np.concatenate(([True], ascending[1:] != ascending[:-1])))  # each distinct score
    allowed = np.flatnonzero(total - below[firsts] >= target * total)  # the lowest score always is
    return at_threshold(scores, revenue, labels, float(ascending[firsts[allowed[-1]]]))


# --- fitting -----------------------------------------------------------------------------------


def fit_weights(
    requests: Sequence[RequestFeatures],
    labels: np.ndarray,
    *,
    c: float = REGULARIZATION_C,
    min_token_count: int = MIN_TOKEN_COUNT,
) -> tuple[float, dict[str, float]]:
    """(bias, token -> weight) of an L2 logistic regression on the requests' tokens (0/1 each)."""
    rows = [request_tokens(f) for f in requests]
    counts = Counter(token for row in rows for token in row)
    vocabulary = {token: i for i, token in enumerate(sorted(t for t, n in counts.items() if n >= min_token_count))}
    indices = [[vocabulary[token] for token in row if token in vocabulary] for row in rows]
    indptr = np.cumsum([0, *(len(row) for row in indices)])
    flat = np.fromiter((i for row in indices for i in row), dtype=np.int64, count=int(indptr[-1]))
    matrix = csr_matrix((np.ones(flat.size), flat, indptr), shape=(len(rows), max(len(vocabulary), 1)))
    model = LogisticRegression(C=c, max_iter=1000).fit(matrix, labels)
    coefficients = model.coef_[0]
    # Centred per field (what comes before "="): the weights of a field average 0 over the training requests
    # and the bias takes their mean. A training request scores the same; a value training never saw (a new
    # domain, the day of week the training days lacked) scores as the average one instead of as the field's
    # reference level, which L2 leaves wherever the other levels' sum puts it.
    weights = {token: float(coefficients[i]) for token, i in vocabulary.items()}
    bias = float(model.intercept_[0])
    fields: dict[str, list[float]] = {}
    for row in rows:
        for token in row:
            fields.setdefault(token.partition("=")[0], []).append(weights.get(token, 0.0))
    means = {name: math.fsum(values) / len(values) for name, values in fields.items()}
    centred = {token: weight - means[token.partition("=")[0]] for token, weight in weights.items()}
    return bias + math.fsum(means.values()), centred


def evaluate(bid_filter: BidFilter, frame: pd.DataFrame, threshold: float | None = None) -> dict[str, float]:
    """The filter's figures on ``frame`` (rows of ``training_rows``) at ``threshold`` (default its own):
    revenue retained, shares shed, ROC AUC of the score for the label, fill rate, and seconds saved per shed."""
    scores = bid_filter.scores(request_features(frame))
    labels, revenue = frame[LABEL].to_numpy(), frame[REVENUE].to_numpy()
    choice = at_threshold(scores, revenue, labels, bid_filter.threshold if threshold is None else threshold)
    return _figures(choice, scores, labels, frame)


def _figures(choice: ThresholdChoice, scores: np.ndarray, labels: np.ndarray, frame: pd.DataFrame) -> dict[str, float]:
    return {
        "threshold": choice.threshold,
        "revenue_retained": choice.revenue_retained,
        "shed_share": choice.shed_share,
        "no_fill_shed_share": choice.no_fill_shed_share,
        "roc_auc": roc_auc(labels, scores) if labels.size else math.nan,
        "fill_rate": float(labels.mean()) if labels.size else math.nan,
        "requests": float(choice.requests),
        "time_saved_per_shed_s": _time_saved_per_shed(frame, scores < choice.threshold),
    }


def _time_saved_per_shed(frame: pd.DataFrame, shed: np.ndarray) -> float:
    """Mean logged handling time of the auctions shed (of all, when none is); 0 when none was logged."""
    latency = pd.to_numeric(frame[LATENCY], errors="coerce").to_numpy(dtype=np.float64)
    chosen = latency[shed] if shed.any() else latency
    chosen = chosen[~np.isnan(chosen)]
    return float(chosen.mean()) / 1000 if chosen.size else 0.0


@dataclass(frozen=True)
class TrainedBidFilter:
    bid_filter: BidFilter  # its threshold chosen on the holdout
    train: pd.DataFrame
    holdout: pd.DataFrame
    metrics: dict[str, float]  # on the holdout, plus ``out_of_time_revenue_retained``


def split(frame: pd.DataFrame, holdout_fraction: float = HOLDOUT_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) of ``training_rows``: the latest ``holdout_fraction`` of requests is the holdout."""
    return time_split(frame, holdout_fraction, time_column=TIME_COLUMN)


def check_trainable(frame: pd.DataFrame, what: str, min_requests: int = 1) -> None:
    if len(frame) < min_requests:
        raise AuctionLogError(f"{what} holds {len(frame)} OpenRTB requests, fewer than {min_requests}")
    filled = int(frame[LABEL].sum())
    if filled in (0, len(frame)):
        raise AuctionLogError(f"{what} has a single class ({filled} of {len(frame)} requests filled with revenue)")


def train_bid_filter(
    log: pd.DataFrame,
    *,
    revenue_target: float = REVENUE_TARGET,
    holdout_fraction: float = HOLDOUT_FRACTION,
    min_requests: int = 1,
) -> TrainedBidFilter:
    """Fits on the earlier requests of ``log`` (silver/auctions rows), chooses the threshold on the latest.

    Also reports ``out_of_time_revenue_retained``: the revenue kept on the later half of the holdout at a
    threshold chosen on its earlier half, what a threshold keeps on requests it was not chosen on.
    """
    frame = training_rows(log)
    check_trainable(frame, "the auction log", min_requests)
    train, holdout = split(frame, holdout_fraction)
    check_trainable(train, "the training part of the time split")
    if int(holdout[REVENUE].sum()) <= 0:
        raise AuctionLogError("the holdout (latest requests) carries no revenue to set the threshold on")
    bias, weights = fit_weights(request_features(train), train[LABEL].to_numpy())
    unthresholded = BidFilter(bias, weights, 0.0, revenue_target=revenue_target)
    scores = unthresholded.scores(request_features(holdout))
    labels, revenue = holdout[LABEL].to_numpy(), holdout[REVENUE].to_numpy()
    choice = choose_threshold(scores, revenue, labels, revenue_target)
    metrics = _figures(choice, scores, labels, holdout)
    metrics["out_of_time_revenue_retained"] = _out_of_time_revenue_retained(scores, holdout, revenue_target)
    bid_filter = unthresholded.with_threshold(choice.threshold, metrics["time_saved_per_shed_s"], metrics)
    return TrainedBidFilter(bid_filter, train, holdout, metrics)


def _out_of_time_revenue_retained(scores: np.ndarray, holdout: pd.DataFrame, target: float) -> float:
    position = pd.Series(np.arange(len(holdout)), index=holdout.index)
    earlier, later = time_split(holdout.assign(_position=position), 0.5, time_column=TIME_COLUMN)
    first, second = earlier["_position"].to_numpy(), later["_position"].to_numpy()
    revenue, labels = holdout[REVENUE].to_numpy(), holdout[LABEL].to_numpy()
    if first.size == 0 or int(revenue[first].sum()) <= 0 or int(revenue[second].sum()) <= 0:
        return math.nan
    chosen = choose_threshold(scores[first], revenue[first], labels[first], target)
    return at_threshold(scores[second], revenue[second], labels[second], chosen.threshold).revenue_retained
