"""The bid-request filter in the service: ``bid-filter@champion`` loaded and hot-swapped, and ``screen``.

Loading (``BidFilterSlot``), as the CTR champion is (``auction_service.serving.champion``), only simpler:
the filter is a JSON weight table (``ml.bid_filter.BidFilter``), and serving without one is safe (every
request goes to its auction), so there is no local copy to fall back on.
- At start the slot resolves ``bid-filter@champion`` and loads that version's table; until a first
  version exists (or while MLflow cannot be reached) it holds None and the service says once that it runs
  without a filter, and why.
- ``start()`` polls the alias every MODEL_POLL_S in a daemon thread; a new champion is downloaded and parsed
  off the request path and swapped in by one assignment. A version that fails to load is refused and the
  filter in place keeps serving. BID_FILTER_ENABLED=false loads and polls nothing.

Screening one request (``screen``), before eligibility and scoring:
- no filter served: passed, score None (the auction record's ``bid_filter_*`` columns stay null);
- ``rng_draw`` (uniform in [0, 1)) below BID_FILTER_EXPLORATION_SHARE: passed and explored, whatever the
  score, so the auction log keeps a uniform sample of all requests (what training reads, and what the
  revenue the threshold loses is estimated on);
- otherwise passed when the score reaches the threshold; a request not passed is answered 204 at once.

Counted in ``ServiceMetrics.bid_filter`` (``BidFilterMeter``): requests screened, shed and explored; time
saved, each shed request adding the filter's ``time_saved_per_shed_s`` (the mean handling time the
auction log shows for the holdout auctions the threshold sheds); and, once the route reports an explored
request's revenue (``settle_explored``), the share of revenue the threshold keeps, estimated on the
exploration slice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from adstream.contracts import BID_FILTER_MODEL, CHAMPION_ALIAS, DagId
from adstream.settings import Settings
from auction_service.domain import AuctionContext
from auction_service.serving.champion import REFUSED_VERSION_RETRY_S
from auction_service.serving.features import hour_and_day_of_week
from auction_service.serving.metrics import BidFilterMeter
from ml.bid_filter import BidFilter, RequestFeatures
from ml.bid_filter_registry import champion_version, load_bid_filter
from ml.tracking import ensure_reachable

log = logging.getLogger(__name__)


class Screen(NamedTuple):
    """What the filter decided for one request."""

    passed: bool  # False: answer 204 without an auction
    explored: bool  # passed as exploration, whatever the score
    score: float | None  # None: no filter served

    def record_fields(self) -> dict[str, float | bool | None]:
        """The auction record's ``bid_filter_score`` and ``bid_filter_explored`` (both None: no filter)."""
        return {"bid_filter_score": self.score, "bid_filter_explored": None if self.score is None else self.explored}


UNSCREENED = Screen(passed=True, explored=False, score=None)


@dataclass(frozen=True)
class ServedBidFilter:
    """One ``bid-filter`` version as a request uses it."""

    model: BidFilter
    version: str
    exploration_share: float


def request_features(context: AuctionContext, *, domain: str | None, placement: str | None) -> RequestFeatures:
    """The filter's features of an OpenRTB request: the auction context's, plus the site's domain (else the
    app's bundle) and the placement; hour and day of week as the CTR features count them."""
    hour, day_of_week = hour_and_day_of_week(context.at)
    return RequestFeatures(
        publisher_id=context.publisher_id,
        domain=domain,
        placement=placement,
        device_type=context.device_type,
        country=context.country,
        channel=context.channel,
        content_type=context.content_type,
        hour=hour,
        day_of_week=day_of_week,
    )


def screen(
    served: ServedBidFilter | None, features: RequestFeatures, rng_draw: float, meter: BidFilterMeter | None = None
) -> Screen:
    """The module doc's rule for one request; counted in ``meter`` when given."""
    if served is None:
        return UNSCREENED
    score = served.model.score(features)
    explored = rng_draw < served.exploration_share
    passed = explored or score >= served.model.threshold
    if meter is not None:
        meter.screened += 1
        if explored:
            meter.explored += 1
        elif not passed:
            meter.shed += 1
            meter.time_saved_s += served.model.time_saved_per_shed_s
    return Screen(passed, explored, score)


def settle_explored(served: ServedBidFilter, screened: Screen, revenue_cpm_micros: int, meter: BidFilterMeter) -> None:
    """After an explored request's auction: its revenue (CPM micros, ``ml.bid_filter``'s rule; 0 without a
    fill), counted apart when the threshold would have shed it. ``served`` is the filter that screened it."""
    if not screened.explored or screened.score is None:
        return
    meter.explored_revenue_cpm_micros += revenue_cpm_micros
    if not served.model.passes(screened.score):
        meter.explored_revenue_below_threshold_cpm_micros += revenue_cpm_micros


class BidFilterSlot:
    """The filter requests screen with (``current``: one attribute read), and the thread that swaps it."""

    def __init__(self, settings: Settings, meter: BidFilterMeter | None = None) -> None:
        self._settings = settings
        self._meter = meter if meter is not None else BidFilterMeter()
        self.current: ServedBidFilter | None = None
        self.reason = "not loaded yet"  # why there is no filter ("" when there is one)
        self.swaps = 0
        self.failures = 0  # versions refused
        self._refused: tuple[str, float] | None = None  # (version, monotonic time): retried after a while
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def load_at_start(cls, settings: Settings, meter: BidFilterMeter | None = None) -> BidFilterSlot:
        """A slot with the champion loaded, or empty and saying why; never raises (blocks for the download)."""
        slot = cls(settings, meter)
        if not settings.bid_filter_enabled:
            slot.reason = "BID_FILTER_ENABLED is false"
        else:
            slot.poll_once()
        if slot.current is None:
            log.warning("serving without a bid filter (every request is auctioned): %s", slot.reason)
        return slot

    def poll_once(self) -> bool:
        """Loads and swaps in a new champion; True when it did. Failures are recorded, not raised."""
        with self._lock:
            uri = self._settings.mlflow_tracking_uri
            try:
                ensure_reachable(uri)
                version = champion_version(uri)
            except Exception as exc:  # MLflow away: keep what is served
                if self.current is None:
                    self.reason = f"MLflow at {uri} does not answer ({type(exc).__name__}: {exc})"
                return False
            if version is None:  # none yet (or the alias was removed: what is served keeps serving)
                if self.current is None:
                    where = f"at {uri} (trained by DAG {DagId.BID_FILTER_TRAINING})"
                    self.reason = f"{BID_FILTER_MODEL}@{CHAMPION_ALIAS} does not exist yet {where}"
                return False
            current = self.current
            refused_version, refused_at = self._refused or (None, 0.0)
            recently_refused = version == refused_version and time.monotonic() - refused_at < REFUSED_VERSION_RETRY_S
            if (current is not None and current.version == version) or recently_refused:
                return False
            try:
                model = load_bid_filter(uri, version)
            except Exception as exc:  # a bad version must not replace a good one
                self._refused = (version, time.monotonic())
                self.failures += 1
                log.error("%s version %s refused (%s: %s)", BID_FILTER_MODEL, version, type(exc).__name__, exc)
                return False
            self.current = ServedBidFilter(model, version, self._settings.bid_filter_exploration_share)
            self.reason = ""
            self.swaps += 1
            self._meter.version, self._meter.threshold = version, model.threshold
            log.info(
                "serving %s version %s (threshold %.6f, exploration share %.2f) in place of %s",
                BID_FILTER_MODEL, version, model.threshold, self._settings.bid_filter_exploration_share,
                "none" if current is None else f"version {current.version}",
            )  # fmt: skip
            return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Polls the alias every MODEL_POLL_S in a daemon thread (nothing when the filter is disabled)."""
        if self._settings.bid_filter_enabled and not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="bid-filter-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ends the polls (waiting for one in progress)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _watch(self) -> None:
        while not self._stop.wait(self._settings.model_poll_s):
            try:
                self.poll_once()
            except Exception:  # poll_once records its failures; a surprise must not end the swaps
                log.exception("bid-filter watcher: poll failed")
