"""Simulated users (and bots) who request ads, see them, click, convert and watch videos: load with a known truth.

    adstream simulate [--duration 60s] [--rate 20] [--users 500] [--seed 7] [--concurrency 16]
                      [--base-url URL] [--openrtb-share 0.2] [--unfillable-share 0] [--base-ctr 0.03]
                      [--bot-share 0] [--traffic-curve flat|diurnal] [--day-length 1h]
                      [--progress-every 5s] [--summary-file PATH] [--ground-truth-file PATH]

- The population is ``--users`` profiles sampled (with ``--seed``) from silver/users, read
  with delta-rs. A site has more visitors than the Kaggle sample (about 1,100): beyond it, each
  user is a lookalike, a sampled profile under a new id (``<id>@<n>``), a visitor the platform
  has no features for, as it has none for most real ones. Each user keeps their age, gender,
  country and income attributes and gets a primary device (mix ``DEVICE_MIX``), used for
  ``PRIMARY_DEVICE_SHARE`` of their visits.
  A user browses with a real browser User-Agent for the device and from one home address
  (``simulator.bots``), stated as the ``User-Agent`` and ``X-Forwarded-For`` headers of every
  request, the ``user_agent`` and ``ip`` of every event and the OpenRTB ``device``.
- A visit is one ad request: ``POST /v1/auction`` with the user's attributes, or for
  ``--openrtb-share`` of visits ``POST /openrtb2/auction``. CTV requests are video; others
  are video for ``VIDEO_SHARE``. A filled auction is shown (an impression), and what the user
  then does is drawn from ``simulator.ground_truth``: the Kaggle-derived click,
  conversion and video probabilities, never the pCTR the service returned.
- ``--unfillable-share`` of the OpenRTB visits (default 0) ask for what no campaign can fill, as much
  of an exchange's traffic does, drawn evenly from four kinds (``Unfillable``): a banner slot only in
  sizes no creative is made in (``UNFILLABLE_BANNERS``: 88x31, 970x66, 234x60, 120x240; campaigns
  have the IAB fixed sizes), on the usual site and app; a video player that takes Flash video only
  (``video/x-flv``; campaigns' videos are MP4), on its own site and app; a digital out-of-home screen
  (``dooh``, not bought); and a floor of USD ``UNFILLABLE_FLOOR_CPM`` per thousand, above what any
  seeded campaign can bid, on a premium publisher's own site and app. Geos and devices are not in the
  mix: most seeded campaigns target every country and device, so no country or device is unfillable
  on its own. Such a visit is an ordinary one otherwise (it is answered, usually 204, and counted in
  the auctions and the fill rate); the summary also counts them apart (``unfillable_requests``, of
  them ``unfillable_no_bid`` answered 204, and ``unfillable_by_kind``). Whether a visit is unfillable
  is drawn apart, so the other visits stay as the seed had them.
- An OpenRTB bid is also played as its exchange would: the exchange fires the win notice (``nurl``) with its
  clearing price, a draw between ``EXCHANGE_PRICE_SHARE`` of our bid and all of it (a second-price exchange
  never charges more than the bid), and sends the impression as its billing notice (the ``burl``'s token,
  ``billing_notice``) from its own server, ``EXCHANGE`` (a server's agent and address, which the service
  does not judge on a billing notice: it screened the bid request's ``device``). The summary counts the wins
  and their media cost (``exchange``).
- Events go to ``POST /v1/events``, each with the signed token the auction gave for its type
  (``event_tokens``, or the ``t`` of the tracking URLs in an OpenRTB bid's ``nurl``/``adm``); an
  event type the answer has no token for cannot be sent and is counted as unsent. Event ids are
  derived from the auction (``sim-<auction_id>-<event_type>``): unique, and the same on every
  retry, so a 503 (Kafka unavailable, the service asks for a retry) or a timeout is retried
  safely. The impression and video events go at once, a click after a human delay, a conversion
  after its click (``simulator.bots.human_steps``); a visit stops at an event the service did not
  take. The service bills the campaign; the simulator only adds up what the answers say was charged.
- ``--bot-share`` of the visits are bots instead (a crawler, a non-browser agent, a data-center
  host, a click spammer, a too-fast clicker; ``simulator.bots``). Their data-center addresses are
  in the service's IVT_DATACENTER_CIDRS (``DEFAULT_DATACENTER_CIDRS`` when it is empty), their
  fast clicks under its IVT_MIN_CLICK_DELAY_MS. Every event sent, a person's or a bot's, is
  written to ``--ground-truth-file`` (CSV, ``simulator.ivt_scoring.TRUTH_COLUMNS``) with who sent
  it and the IVT category the filter should give it, for ``simulator.ivt_scoring``.
- Visits start at ``--rate`` per second for ``--duration``, on ``--concurrency`` workers (a
  fixed pool: a slow service lowers the achieved rate, it never piles up tasks). Only
  counters are kept, so memory stays flat however long it runs. Errors (HTTP 4xx/5xx,
  timeouts, refused connections) are counted by kind and never stop the run.
- ``--traffic-curve diurnal`` plays out a day instead of flat traffic (``simulator.diurnal``):
  ``--rate`` is then the mean over a day, and the rate at a moment is ``--rate`` times the
  ``DISPLAY_AD_HOURS`` level of its hour of the simulated day (low at night, peaks late morning
  and evening), taken at the middle of each hour and joined linearly. The day is ``--day-length`` long (default
  PACING_DAY_LENGTH_S) and aligned as the platform's pacing days are, on whole days since the
  Unix epoch; a run as long as a day plays all of it. The summary counts the visits by the
  hour of the day they were due in (``visits_by_slot``).
- Every visit draws from its own ``random.Random`` seeded by (seed, visit number), so a seed
  replays the same users, placements and behaviour whatever the responses' timing; whether a
  visit is a bot is drawn apart, so bots take visits from people without changing the others.
- A progress line every ``--progress-every``; at the end the summary as JSON (also to
  ``--summary-file``), then one line (``make run`` prints it). The people's figures (auctions,
  impressions, CTR ...) are the top level; the bots' are under ``bots``. Exit status 1 when no
  auction was answered at all, 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import html
import itertools
import json
import math
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pandas as pd
import psutil
import typer
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from adstream.contracts import Table
from adstream.events import MICROS_PER_UNIT, EventType
from adstream.settings import Settings, get_settings
from auction_service.serving.openrtb import COUNTRY_NAMES, IAB_CATEGORIES
from auction_service.serving.tracking import DEVICE_IP, DEVICE_UA
from cli.lazy import commands_app
from simulator import bots
from simulator.bots import DEFAULT_DATACENTER_CIDRS, Behaviour, Identity, IpNetwork, PlannedEvent, Step
from simulator.diurnal import CurveKind, VisitSchedule
from simulator.ground_truth import (
    ADS16_USER_COLUMNS,
    ADVERTISING_COLUMNS,
    BASE_CTR,
    RATING_COLUMNS,
    GroundTruth,
    ShownAd,
    UserProfile,
    draw_events,
    fit,
)
from simulator.ivt_scoring import TRUTH_COLUMNS

DEVICE_MIX = (("mobile", 55), ("desktop", 30), ("tablet", 10), ("ctv", 5))
PRIMARY_DEVICE_SHARE = 0.8
VIDEO_SHARE = 0.15  # of non-CTV requests; CTV is always video
APP_SHARE = {"mobile": 0.6, "tablet": 0.5, "desktop": 0.0, "ctv": 1.0}
OPENRTB_SHARE = 0.2
OPENRTB_DEVICE_TYPES = {"mobile": 4, "desktop": 2, "tablet": 5, "ctv": 3}
# The slots an exchange offers per device: a leaderboard or a mobile banner, each with a rectangle as well.
OPENRTB_BANNERS: dict[str, dict[str, Any]] = {
    "desktop": {"w": 728, "h": 90, "format": [{"w": 728, "h": 90}, {"w": 300, "h": 250}]},
    "mobile": {"w": 320, "h": 50, "format": [{"w": 320, "h": 50}, {"w": 300, "h": 250}]},
    "tablet": {"w": 300, "h": 250, "format": [{"w": 300, "h": 250}, {"w": 728, "h": 90}]},
    "ctv": {"w": 300, "h": 250},
}
OPENRTB_VIDEO: dict[str, Any] = {
    "mimes": ["video/mp4"], "minduration": 5, "maxduration": 30, "protocols": [2, 3, 5, 6, 7, 8], "w": 1920, "h": 1080
}  # fmt: skip
SITE_DOMAIN, APP_BUNDLE = "news.example", "com.example.news"


class Unfillable(StrEnum):
    """Why an OpenRTB visit cannot fill, whatever the campaigns (``--unfillable-share``)."""

    SIZE = "size"  # a banner slot only in sizes no creative is made in
    VIDEO_MIME = "video_mime"  # a video player taking a MIME type no campaign's video has
    DOOH = "dooh"  # a digital out-of-home screen: only site and app inventory is bought
    FLOOR = "floor"  # a floor above what any campaign bids


# Slot sizes outside adstream.events.STANDARD_BANNER_SIZES (what every seeded creative is made in), per device.
UNFILLABLE_BANNERS: dict[str, dict[str, Any]] = {
    "desktop": {"w": 970, "h": 66, "format": [{"w": 970, "h": 66}, {"w": 234, "h": 60}]},
    "mobile": {"w": 88, "h": 31, "format": [{"w": 88, "h": 31}, {"w": 120, "h": 240}]},
    "tablet": {"w": 234, "h": 60, "format": [{"w": 234, "h": 60}, {"w": 120, "h": 240}]},
    "ctv": {"w": 88, "h": 31},
}
UNFILLABLE_VIDEO_MIMES = ("video/x-flv",)  # Flash video; the seeded campaigns' videos are MP4
# USD per thousand: a CPM bid is at most USD 8 and a 40-cent CPC bid at a pCTR of 1 is USD 400.
UNFILLABLE_FLOOR_CPM = 500.0
# The publishers whose player or prices leave them unfilled, each with a site and an app (domain, bundle).
UNFILLABLE_INVENTORY = {
    Unfillable.VIDEO_MIME: ("flashtube.example", "com.example.flashtube"),
    Unfillable.FLOOR: ("premium.example", "com.example.premium"),
}
DOOH_SCREEN = {"id": "screens-1", "name": "Airport screens", "venuetype": ["airport"]}
OPENRTB_DOOH_DEVICE_TYPE = 8  # OpenRTB 2.6: out-of-home device
ISO_ALPHA3 = {name: code for code, name in COUNTRY_NAMES.items()}
# A bid's IAB codes name our category when no other category has the same codes.
_CATEGORIES_PER_IAB = Counter(IAB_CATEGORIES.values())
CATEGORY_BY_IAB = {codes: category for category, codes in IAB_CATEGORIES.items() if _CATEGORIES_PER_IAB[codes] == 1}
MAX_KNOWN_CAMPAIGNS = 100_000  # campaign -> category, learnt from /v1/auction answers; bounded
EVENT_ATTEMPTS = 6
HTTP_TIMEOUT_S = 5.0
MAX_CONCURRENCY = 10_000
DEFAULT_CONCURRENCY = 16
USER_COLUMNS = tuple(profile_field.name for profile_field in fields(UserProfile))  # all in silver/users
# The path of a signed event URL (``auction_service.serving.tracking``): its event type and token.
# Ends at whitespace, a quote, a tag or a CDATA end ("]]>" in VAST).
BURL_DEVICE = (DEVICE_IP, DEVICE_UA)  # the bid request's device, as an OpenRTB bid's burl states it
TRACKING_URL = re.compile(r"/v1/events/track/[^/\s\"'<>\]]+/(?P<event_type>[a-z_]+)\?[^\s\"'<>\]]*")
MAX_REFUSAL_KINDS = 20  # distinct refusal reasons kept in the summary; the rest are "other"
# The exchange's server, which fires win and billing notices: a non-browser agent at an address that is neither
# residential nor one of the bots' data centers (TEST-NET-1).
EXCHANGE = Identity(user_agent="AdStreamSim-Exchange/1.0", ip="192.0.2.10")
EXCHANGE_PRICE_SHARE = 0.5  # the lowest clearing price, as a share of our bid
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")


class LakeTableMissing(RuntimeError):
    """A table the simulator reads (silver/users, the bronze Kaggle tables) is not in the lake."""


@dataclass(frozen=True)
class SimulatedUser:
    profile: UserProfile
    primary_device: str


@dataclass
class EventCounts:
    """What the service answered for the events of one kind of visitor (people, or one bot behaviour)."""

    accepted: Counter[str] = field(default_factory=Counter)  # by event type
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by event type
    refusals: Counter[str] = field(default_factory=Counter)  # by the service's reason
    unsent: Counter[str] = field(default_factory=Counter)  # by event type: the answer had no token for it
    ivt: Counter[str] = field(default_factory=Counter)  # "category:reason" the service tagged accepted events with
    charged_micros: int = 0

    def count(self, event_type: str, result: dict[str, Any]) -> None:
        if result["status"] == "accepted":
            self.accepted[event_type] += 1
            if result.get("ivt_category"):
                self.ivt[f"{result['ivt_category']}:{result.get('ivt_reason') or '?'}"] += 1
        elif result["status"] == "duplicate":
            self.duplicate += 1
        else:
            self.rejected[event_type] += 1
            reason = str(result.get("reason") or "?")[:80]
            if reason in self.refusals or len(self.refusals) < MAX_REFUSAL_KINDS:
                self.refusals[reason] += 1
            else:
                self.refusals["other"] += 1
        self.charged_micros += int(result.get("charged_micros") or 0)

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": sum(self.accepted.values()),
            "duplicate": self.duplicate,
            "rejected": sum(self.rejected.values()),
            "accepted_by_type": dict(sorted(self.accepted.items())),
            "rejected_by_type": dict(sorted(self.rejected.items())),
            "rejected_by_reason": dict(self.refusals.most_common()),
            "unsent_by_type": dict(sorted(self.unsent.items())),
            "ivt_tagged_by_service": dict(sorted(self.ivt.items())),
        }


@dataclass
class BotStats:
    """One bot behaviour's visits and events."""

    visits: int = 0
    auctions: int = 0  # answered 200 or 204
    filled: int = 0
    events: EventCounts = field(default_factory=EventCounts)

    def summary(self) -> dict[str, Any]:
        return {
            "visits": self.visits,
            "auctions": self.auctions,
            "filled": self.filled,
            "events": self.events.summary(),
            "charged_micros": self.events.charged_micros,
        }


@dataclass
class SimulationStats:
    """Counters only: what a run of any length keeps. The people's visits at the top; the bots' in ``bots``."""

    visits: int = 0
    requests: int = 0  # HTTP requests sent, people's and bots': auctions and event batches, retries included
    auctions: int = 0  # answered 200 or 204
    openrtb_auctions: int = 0
    filled: int = 0
    served_pctr_sum: float = 0.0  # /v1/auction answers only (OpenRTB bids carry a price, not a pCTR)
    served_pctr_count: int = 0
    clickable_impressions: int = 0  # accepted impressions whose ad came with a click token
    expected_clicks: float = 0.0  # ground-truth click probabilities of the clickable impressions
    events: EventCounts = field(default_factory=EventCounts)
    bots: dict[str, BotStats] = field(default_factory=dict)  # by behaviour
    errors: Counter[str] = field(default_factory=Counter)  # by kind, e.g. "auction_500", "events_timeout"
    unfillable: Counter[str] = field(default_factory=Counter)  # unfillable visits answered, by kind
    unfillable_no_bid: Counter[str] = field(default_factory=Counter)  # of them answered 204, by kind
    exchange_wins: Counter[str] = field(default_factory=Counter)  # win notices fired, by the service's answer
    media_cost_cpm_micros: int = 0  # the clearing prices (per thousand) of the taken win notices
    # The exchange's invoice: per UTC hour its billing notices were taken in, (impressions, Σ price per thousand).
    invoice: dict[datetime, list[int]] = field(default_factory=dict)
    rss_start: int = field(default_factory=lambda: _rss())
    rss_peak: int = 0
    # Visits started, people's and bots', by the slot of the simulated day they were due in (diurnal runs).
    visits_by_slot: list[int] | None = None

    def invoice_impression(self, price_cpm_micros: int) -> None:
        """The exchange bills an impression when its billing notice is taken, at the price its win notice said."""
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        line = self.invoice.setdefault(hour, [0, 0])
        line[0] += 1
        line[1] += price_cpm_micros

    def observe_rss(self) -> int:
        rss = _rss()
        self.rss_peak = max(self.rss_peak, rss)
        return rss

    @property
    def impressions(self) -> int:
        return self.events.accepted[EventType.IMPRESSION]

    @property
    def clicks(self) -> int:
        return self.events.accepted[EventType.CLICK]

    def bot(self, behaviour: str) -> BotStats:
        return self.bots.setdefault(behaviour, BotStats())

    def progress(self, elapsed_s: float) -> str:
        bot_visits = sum(bot.visits for bot in self.bots.values())
        return (
            f"[{elapsed_s:6.0f}s] auctions {self.auctions} (fill {_share(self.filled, self.auctions):.1%}), "
            f"impressions {self.impressions}, clicks {self.clicks} "
            f"(CTR {_share(self.clicks, self.clickable_impressions):.2%}, "
            f"ground truth {_share(self.expected_clicks, self.clickable_impressions):.2%}), "
            f"bot visits {bot_visits}, errors {sum(self.errors.values())}, RSS {self.observe_rss() / 2**20:.0f} MB"
        )

    def summary(self, *, elapsed_s: float, run: dict[str, Any], truth: GroundTruth) -> dict[str, Any]:
        impressions, clicks, clickable = self.impressions, self.clicks, self.clickable_impressions
        accepted = self.events.accepted
        starts = accepted[EventType.VIDEO_START]
        bot_events = [bot.events for bot in self.bots.values()]
        bots_charged = sum(events.charged_micros for events in bot_events)
        return {
            "run": run,
            "elapsed_s": round(elapsed_s, 3),
            "visits": self.visits,
            "achieved_rate": round(self.visits / elapsed_s, 3) if elapsed_s else 0.0,
            "requests": self.requests,
            "requests_per_s": round(self.requests / elapsed_s, 3) if elapsed_s else 0.0,
            "auctions": self.auctions,
            "openrtb_auctions": self.openrtb_auctions,
            "unfillable_requests": sum(self.unfillable.values()),
            "unfillable_no_bid": sum(self.unfillable_no_bid.values()),
            "unfillable_by_kind": {
                kind: {"requests": self.unfillable[kind], "no_bid": self.unfillable_no_bid[kind]}
                for kind in sorted(self.unfillable)
            },
            "filled": self.filled,
            "fill_rate": round(_share(self.filled, self.auctions), 6),
            "impressions": impressions,
            "clickable_impressions": clickable,
            "clicks": clicks,
            "conversions": accepted[EventType.CONVERSION],
            "video_starts": starts,
            "video_completes": accepted[EventType.VIDEO_COMPLETE],
            "ctr": round(_share(clicks, clickable), 6),  # clicks per impression that could be clicked
            "expected_ctr": round(_share(self.expected_clicks, clickable), 6),
            "served_pctr_mean": round(_share(self.served_pctr_sum, self.served_pctr_count), 6),
            "conversion_rate": round(_share(accepted[EventType.CONVERSION], clicks), 6),
            "video_completion_rate": round(_share(accepted[EventType.VIDEO_COMPLETE], starts), 6),
            "events": self.events.summary(),
            "exchange": {
                "win_notices": dict(sorted(self.exchange_wins.items())),
                # An invoice's sum: the prices per thousand added up, then a thousandth, rounded half up once.
                "media_cost_cpm_micros": self.media_cost_cpm_micros,
                "media_cost_micros": (self.media_cost_cpm_micros + 500) // 1000,
                "media_cost": _usd((self.media_cost_cpm_micros + 500) // 1000),
                "invoice": invoice_lines(self.invoice),
            },
            "charged_micros": self.events.charged_micros,
            "spend": _usd(self.events.charged_micros),  # USD, what the service said it charged
            "bots": {
                "share": run.get("bot_share", 0.0),
                "visits": sum(bot.visits for bot in self.bots.values()),
                "events_accepted": sum(sum(events.accepted.values()) for events in bot_events),
                "charged_micros": bots_charged,
                "spend": _usd(bots_charged),
                "by_behaviour": {name: bot.summary() for name, bot in sorted(self.bots.items())},
            },
            # Every event the service took, people's and bots': what silver/feedback_events must come to hold.
            # The exchange's win notices are events too.
            "events_accepted_total": sum(accepted.values())
            + sum(sum(e.accepted.values()) for e in bot_events)
            + self.exchange_wins["204"],
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(sorted(self.errors.items())),
            "rss_mb": {
                "start": round(self.rss_start / 2**20, 1),
                "peak": round(max(self.rss_peak, self.rss_start) / 2**20, 1),
                "end": round(self.observe_rss() / 2**20, 1),
            },
            "ground_truth": truth.summary(),
            "visits_by_slot": self.visits_by_slot,
        }


def final_line(summary: dict[str, Any]) -> str:
    return (
        f"simulation done: auctions {summary['auctions']} (fill {summary['fill_rate']:.1%}), "
        f"impressions {summary['impressions']}, clicks {summary['clicks']} (CTR {summary['ctr']:.2%}, "
        f"ground truth {summary['expected_ctr']:.2%}, served pCTR {summary['served_pctr_mean']:.2%}), "
        f"conversions {summary['conversions']}, video completes {summary['video_completes']}, "
        f"bot visits {summary['bots']['visits']}, errors {summary['errors']}"
    )


# --- the population and the ground truth, from the lake ---


def read_lake_table(settings: Settings, table: Table, columns: Sequence[str]) -> list[dict[str, Any]]:
    uri, options = settings.delta_rs_location(table)
    try:
        delta = DeltaTable(uri, storage_options=options or None)
    except TableNotFoundError:
        raise LakeTableMissing(
            f"{table} does not exist at {uri}; build it with `adstream ingest all` then "
            "`adstream silver` (or check LAKE_ROOT)"
        ) from None
    return delta.to_pyarrow_table(columns=list(columns)).to_pylist()


def load_population(settings: Settings, users: int, seed: int) -> list[SimulatedUser]:
    """``users`` profiles of silver/users, the same for the same seed; lookalikes beyond the table's rows."""
    rows = sorted(read_lake_table(settings, Table.SILVER_USERS, USER_COLUMNS), key=lambda row: row["user_id"])
    if not rows:
        raise LakeTableMissing(f"{Table.SILVER_USERS} is empty: there is nobody to simulate")
    return population(rows, users, seed)


def population(rows: Sequence[dict], users: int, seed: int) -> list[SimulatedUser]:
    """``users`` of ``rows`` (silver/users profiles) drawn without replacement, then, past all of them,
    lookalikes: profiles drawn again under the new id ``<user_id>@<n>`` (an id the API takes)."""
    rng = random.Random(seed)
    devices, weights = zip(*DEVICE_MIX, strict=True)
    profiles = [UserProfile(**row) for row in rng.sample(rows, min(users, len(rows)))]
    lookalikes = [rng.choice(rows) for _ in range(users - len(profiles))]
    profiles += [UserProfile(**(row | {"user_id": f"{row['user_id']}@{n}"})) for n, row in enumerate(lookalikes, 1)]
    return [SimulatedUser(profile, primary_device=rng.choices(devices, weights)[0]) for profile in profiles]


def load_ground_truth(settings: Settings, base_ctr: float = BASE_CTR) -> GroundTruth:
    def frame(table: Table, columns: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame(read_lake_table(settings, table, columns), columns=list(columns))

    return fit(
        frame(Table.BRONZE_ADVERTISING, ADVERTISING_COLUMNS),
        frame(Table.BRONZE_ADS16_RATINGS, RATING_COLUMNS),
        frame(Table.BRONZE_ADS16_USERS, ADS16_USER_COLUMNS),
        base_ctr=base_ctr,
    )


# --- one visit ---


@dataclass(frozen=True)
class Placement:
    device_type: str
    channel: str
    content_type: str
    openrtb: bool
    unfillable: Unfillable | None = None  # OpenRTB only: what makes the request one no campaign can fill


def choose_placement(
    user: SimulatedUser, rng: random.Random, openrtb_share: float, unfillable: Unfillable | None = None
) -> Placement:
    """The visit's device, channel and content type, and whether it is OpenRTB; ``unfillable`` (drawn apart,
    ``draw_unfillable``) applies to an OpenRTB visit only."""
    device = user.primary_device
    if rng.random() >= PRIMARY_DEVICE_SHARE:
        devices, weights = zip(*DEVICE_MIX, strict=True)
        device = rng.choices(devices, weights)[0]
    channel = "app" if rng.random() < APP_SHARE[device] else "web"
    content_type = "video" if device == "ctv" or rng.random() < VIDEO_SHARE else "display"
    openrtb = rng.random() < openrtb_share
    return Placement(device, channel, content_type, openrtb=openrtb, unfillable=unfillable if openrtb else None)


def draw_unfillable(rng: random.Random, unfillable_share: float) -> Unfillable | None:
    """With probability ``unfillable_share``, one of the kinds, evenly; else None."""
    if unfillable_share <= 0 or rng.random() >= unfillable_share:
        return None
    return rng.choice(tuple(Unfillable))


def auction_request(user: UserProfile, placement: Placement) -> dict[str, Any]:
    """A POST /v1/auction body with what is known of the user (unknown attributes left out)."""
    body: dict[str, Any] = {
        "user_id": user.user_id,
        "device_type": placement.device_type,
        "channel": placement.channel,
        "content_type": placement.content_type,
    }
    if user.age is not None and 13 <= user.age <= 120:
        body["age"] = user.age
    if user.gender in ("F", "M"):
        body["gender"] = user.gender
    if user.country and len(user.country) <= 64:
        body["country"] = user.country
    return body


def openrtb_request(
    user: UserProfile, placement: Placement, request_id: str, year: int, identity: Identity | None = None
) -> dict[str, Any]:
    """The same request as an OpenRTB 2.6 BidRequest; a country without an ISO code is left out. The
    exchange states the browser's User-Agent and address in ``device`` (``ua``, ``ip``). An unfillable
    placement asks as the module doc says: odd slot sizes, Flash video, a DOOH screen (no user, no site or
    app) or a floor above any bid."""
    kind = placement.unfillable
    if kind is Unfillable.DOOH:
        screen = {"id": "1", "banner": {"w": 1920, "h": 1080}}
        return {"id": request_id, "imp": [screen], "dooh": dict(DOOH_SCREEN),
                "device": {"devicetype": OPENRTB_DOOH_DEVICE_TYPE}}  # fmt: skip
    imp: dict[str, Any] = {"id": "1"}
    if kind is Unfillable.SIZE:
        imp["banner"] = dict(UNFILLABLE_BANNERS[placement.device_type])
    elif kind is Unfillable.VIDEO_MIME:
        imp["video"] = OPENRTB_VIDEO | {"mimes": list(UNFILLABLE_VIDEO_MIMES)}
    elif placement.content_type == "video":
        imp["video"] = dict(OPENRTB_VIDEO)
    else:
        imp["banner"] = dict(OPENRTB_BANNERS[placement.device_type])
    if kind is Unfillable.FLOOR:
        imp["bidfloor"] = UNFILLABLE_FLOOR_CPM
    device: dict[str, Any] = {"devicetype": OPENRTB_DEVICE_TYPES[placement.device_type]}
    if identity is not None:
        device |= {"ua": identity.user_agent, "ip": identity.ip}
    if user.country in ISO_ALPHA3:
        device["geo"] = {"country": ISO_ALPHA3[user.country]}
    rtb_user: dict[str, Any] = {"id": user.user_id}
    if user.age is not None and 13 <= user.age <= 120:
        rtb_user["yob"] = year - user.age  # the service computes age as request year - yob
    if user.gender in ("F", "M"):
        rtb_user["gender"] = user.gender
    domain, bundle = UNFILLABLE_INVENTORY.get(kind, (SITE_DOMAIN, APP_BUNDLE))
    inventory = {"app": {"bundle": bundle}} if placement.channel == "app" else {"site": {"domain": domain}}
    return {"id": request_id, "imp": [imp], **inventory, "device": device, "user": rtb_user}


@dataclass(frozen=True)
class ServedAd:
    auction_id: str
    campaign_id: str
    category: str | None
    pctr: float | None
    tokens: dict[str, str] = field(default_factory=dict)  # event type -> the signed token for it
    billing_token: str | None = None  # an OpenRTB bid's burl token: the impression, sent by the exchange
    billing_device: dict[str, str] = field(default_factory=dict)  # the burl's device_ip/device_ua, signed with it
    win_url: str | None = None  # an OpenRTB bid's nurl, with the ${AUCTION_PRICE} macro
    bid_price_cpm: float | None = None  # an OpenRTB bid's price, USD per thousand
    win_price_cpm_micros: int | None = None  # the clearing price its win notice told the service


def tracking_tokens(*texts: str) -> dict[str, str]:
    """Event type -> token of the signed event URLs found in ``texts`` (URLs, HTML or VAST markup)."""
    tokens: dict[str, str] = {}
    for text in texts:
        for match in TRACKING_URL.finditer(html.unescape(text or "")):
            token = parse_qs(urlsplit(match[0]).query).get("t")
            if token:
                tokens.setdefault(match["event_type"], token[0])
    return tokens


def served_ad(body: dict[str, Any], openrtb: bool, categories: dict[str, str]) -> ServedAd:
    """The winner of an answered auction and its event tokens; an OpenRTB bid's category comes from earlier
    answers or its IAB codes, its tokens from the event URLs in its ``burl``, ``adm`` and ``nurl``."""
    if not openrtb:
        campaign_id, category = body["campaign_id"], body["category"]
        if campaign_id not in categories and len(categories) < MAX_KNOWN_CAMPAIGNS:
            categories[campaign_id] = category
        tokens = dict(body.get("event_tokens") or {}) or tracking_tokens(*(body.get("tracking") or {}).values())
        return ServedAd(body["auction_id"], campaign_id, category, float(body["pctr"]), tokens)
    bid = body["seatbid"][0]["bid"][0]
    category = categories.get(bid["cid"]) or CATEGORY_BY_IAB.get(tuple(bid.get("cat") or ()))
    burl = bid.get("burl") or ""
    billing = "notice=billing" in burl  # else the burl is the device's impression URL, as before billing notices
    tokens = tracking_tokens(*(() if billing else (burl,)), bid.get("adm"), bid.get("nurl"))
    billing_token = tracking_tokens(burl).get(EventType.IMPRESSION) if billing else None
    # The burl states the bid request's device, and its token covers it: the notice sends it as it came.
    device = {name: values[0] for name, values in parse_qs(urlsplit(burl).query).items() if name in BURL_DEVICE}
    return ServedAd(bid["id"], bid["cid"], category, None, tokens, billing_token, device if billing else {},
                    bid.get("nurl"), bid.get("price"))  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """What the service answered, read in full: the status, the JSON body (None when empty or not
    JSON) and the Retry-After header."""

    status: int
    body: Any
    retry_after: str | None = None


def headers(identity: Identity) -> dict[str, str]:
    """How a request states who sent it: the browser's User-Agent, and its address as a proxy in front of
    the service would (the service trusts X-Forwarded-For from loopback only)."""
    return {"User-Agent": identity.user_agent, "X-Forwarded-For": identity.ip}


class Visitor:
    """Runs visits, people's and bots', against one service and adds them up in ``stats``; every event
    sent is written to ``ground_truth`` (CSV rows of TRUTH_COLUMNS) when it is given."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        population: Sequence[SimulatedUser],
        truth: GroundTruth,
        *,
        seed: int,
        openrtb_share: float,
        stats: SimulationStats,
        bot_share: float = 0.0,
        datacenters: Sequence[IpNetwork] = (),
        min_click_delay_s: float = 0.5,
        ground_truth: TextIO | None = None,
        unfillable_share: float = 0.0,
        exchange_key: str | None = None,
    ) -> None:
        self.client, self.population, self.truth = client, population, truth
        # The simulated exchange's API key: its OpenRTB requests carry it, so the auctions are its own.
        self.exchange_headers = {"X-Api-Key": exchange_key} if exchange_key else {}
        self.seed, self.openrtb_share, self.stats = seed, openrtb_share, stats
        self.unfillable_share = unfillable_share
        self.bot_share, self.min_click_delay_s = bot_share, min_click_delay_s
        self.datacenters = tuple(datacenters) or bots.parse_networks(DEFAULT_DATACENTER_CIDRS)
        self.residential = bots.residential_networks(self.datacenters)
        self.truth_rows = csv.writer(ground_truth) if ground_truth is not None else None
        self.categories: dict[str, str] = {}

    async def visit(self, number: int) -> None:
        rng = random.Random(f"{self.seed}:{number}")  # per visit, so concurrency cannot reorder the draws
        behaviour = bots.draw_behaviour(random.Random(f"{self.seed}:{number}:bot"), self.bot_share)
        if behaviour is Behaviour.HUMAN:
            await self._person_visit(rng, number)
        else:
            await self._bot_visit(behaviour, rng)

    async def _person_visit(self, rng: random.Random, number: int) -> None:
        user = self.population[rng.randrange(len(self.population))]
        unfillable = draw_unfillable(random.Random(f"{self.seed}:{number}:unfillable"), self.unfillable_share)
        placement = choose_placement(user, rng, self.openrtb_share, unfillable)
        identity = bots.person(user.profile.user_id, placement.device_type, self.residential)
        self.stats.visits += 1
        ad = await self._auction(user.profile, placement, number, identity)
        if ad is None:
            return
        probabilities = self.truth.probabilities(
            user.profile, ShownAd(ad.category, placement.content_type, placement.device_type, placement.channel)
        )
        steps = bots.human_steps(draw_events(probabilities, rng), rng)
        if ad.win_url is not None:
            price = await self._win_notice(ad, random.Random(f"{self.seed}:{number}:win"))
            ad = dataclasses.replace(ad, win_price_cpm_micros=price)
        taken = await self._play(ad, steps, identity, Behaviour.HUMAN, self.stats.events)
        if EventType.IMPRESSION in taken and EventType.CLICK in ad.tokens:
            self.stats.clickable_impressions += 1
            self.stats.expected_clicks += probabilities.click

    async def _bot_visit(self, behaviour: Behaviour, rng: random.Random) -> None:
        """A bot asks for an ad like a page would (``/v1/auction``) and acts on it as its behaviour says."""
        bot = bots.draw_bot(behaviour, rng, self.datacenters, self.residential)
        stats = self.stats.bot(behaviour)
        stats.visits += 1
        content_type = "video" if rng.random() < VIDEO_SHARE else "display"
        request = {"device_type": bot.device_type, "channel": "web", "content_type": content_type}
        if bot.user_id is not None:
            request["user_id"] = bot.user_id
        reply = await self._ask("auction", "/v1/auction", request, bot.identity)
        if reply is None:
            return
        stats.auctions += 1
        if reply.status == 204:
            return
        try:
            ad = served_ad(reply.body, False, self.categories)
        except (ValueError, KeyError, IndexError, TypeError):
            self.stats.errors["auction_bad_body"] += 1
            return
        stats.filled += 1
        steps = bots.bot_steps(behaviour, rng, video=content_type == "video", min_click_delay_s=self.min_click_delay_s)
        await self._play(ad, steps, bot.identity, behaviour, stats.events)

    async def _ask(self, endpoint: str, path: str, body: dict[str, Any], identity: Identity) -> Reply | None:
        """An answered auction (200 or 204), or None (counted as an error)."""
        reply = await self._post(endpoint, path, body, identity)
        if reply is None:
            return None
        if reply.status not in (200, 204):
            self.stats.errors[f"{endpoint}_{reply.status}"] += 1
            return None
        return reply

    async def _auction(
        self, user: UserProfile, placement: Placement, number: int, identity: Identity
    ) -> ServedAd | None:
        if placement.openrtb:
            endpoint, path = "openrtb", "/openrtb2/auction"
            body = openrtb_request(user, placement, f"sim-{self.seed}-{number}", datetime.now(UTC).year, identity)
        else:
            endpoint, path, body = "auction", "/v1/auction", auction_request(user, placement)
        reply = await self._ask(endpoint, path, body, identity)
        if reply is None:
            return None
        self.stats.auctions += 1
        self.stats.openrtb_auctions += placement.openrtb
        if placement.unfillable is not None:
            self.stats.unfillable[placement.unfillable] += 1
            self.stats.unfillable_no_bid[placement.unfillable] += reply.status == 204
        if reply.status == 204:
            return None
        try:
            ad = served_ad(reply.body, placement.openrtb, self.categories)
        except (ValueError, KeyError, IndexError, TypeError):
            self.stats.errors[f"{endpoint}_bad_body"] += 1
            return None
        self.stats.filled += 1
        if ad.pctr is not None:
            self.stats.served_pctr_sum += ad.pctr
            self.stats.served_pctr_count += 1
        return ad

    async def _win_notice(self, ad: ServedAd, rng: random.Random) -> int | None:
        """The exchange's win notice: its nurl with a clearing price at most our bid; the price (USD micros per
        thousand) when the service took it."""
        assert ad.win_url is not None
        price = Decimal(str(ad.bid_price_cpm or 0)) * Decimal(str(rng.uniform(EXCHANGE_PRICE_SHARE, 1.0)))
        price = price.quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
        url = ad.win_url.replace("${AUCTION_PRICE}", str(price))
        self.stats.requests += 1
        try:
            async with self.client.get(url, headers=headers(EXCHANGE)) as response:
                await response.read()
                answer = str(response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            answer = type(exc).__name__
        self.stats.exchange_wins[answer] += 1
        if answer != "204":
            return None
        self.stats.media_cost_cpm_micros += int(price * MICROS_PER_UNIT)
        return int(price * MICROS_PER_UNIT)

    async def _play(
        self, ad: ServedAd, steps: Sequence[Step], identity: Identity, behaviour: Behaviour, counts: EventCounts
    ) -> set[str]:
        """Sends ``steps`` in turn, each event with its token; the event types the service took.

        An OpenRTB bid's impression is the exchange's billing notice, sent apart from the device's events
        of its step. A step whose events were not all taken (refused, or never answered) ends the visit:
        what came after them (a click after an impression) would be out of order.
        """
        taken: set[str] = set()
        for step in steps:
            if step.wait_s > 0:
                await asyncio.sleep(step.wait_s)
            planned = [event for event in step.events if self._token(ad, event.event_type)]
            counts.unsent.update(event.event_type for event in step.events if not self._token(ad, event.event_type))
            billed = [event for event in planned if ad.billing_token and event.event_type == EventType.IMPRESSION]
            device = [event for event in planned if event not in billed]
            for sender, batch in ((EXCHANGE, billed), (identity, device)):
                if batch and not await self._send_batch(ad, batch, sender, behaviour, counts, taken):
                    return taken
        return taken

    async def _send_batch(
        self, ad: ServedAd, planned: list[PlannedEvent], identity: Identity, behaviour: Behaviour,
        counts: EventCounts, taken: set[str],
    ) -> bool:  # fmt: skip
        """Sends one batch of events; whether all of them were taken."""
        events = [self._event(ad, event, identity) for event in planned]
        results = await self._send_events(events, identity)
        for index, event in enumerate(planned):
            result = results[index] if results else {"status": "unanswered"}
            if results:
                counts.count(event.event_type, result)
            self._record_truth(events[index]["event_id"], event, behaviour, result["status"])
            if result["status"] in ("accepted", "duplicate"):
                taken.add(event.event_type)
                if identity is EXCHANGE and ad.win_price_cpm_micros is not None:
                    self.stats.invoice_impression(ad.win_price_cpm_micros)
        return bool(results) and all(result["status"] in ("accepted", "duplicate") for result in results)

    @staticmethod
    def _token(ad: ServedAd, event_type: str) -> str | None:
        if event_type == EventType.IMPRESSION and ad.billing_token:
            return ad.billing_token
        return ad.tokens.get(event_type)

    @classmethod
    def _event(cls, ad: ServedAd, event: PlannedEvent, identity: Identity) -> dict[str, Any]:
        billing = event.event_type == EventType.IMPRESSION and ad.billing_token is not None
        # A billing notice states the device its burl carried (its token is signed over it), not the exchange.
        device = (ad.billing_device.get(DEVICE_UA), ad.billing_device.get(DEVICE_IP)) if billing else None
        user_agent, ip = device or (identity.user_agent, identity.ip)
        return {
            "event_id": event.event_id(ad.auction_id),
            "event_type": event.event_type,
            "auction_id": ad.auction_id,
            "token": cls._token(ad, event.event_type),
            **({"user_agent": user_agent} if user_agent else {}),
            **({"ip": ip} if ip else {}),
            **({"billing_notice": True} if billing else {}),
        }

    def _record_truth(self, event_id: str, event: PlannedEvent, behaviour: Behaviour, status: str) -> None:
        if self.truth_rows is not None:
            row = {"event_id": event_id, "event_type": event.event_type, "behaviour": behaviour,
                   "expected": event.expected or "", "status": status}  # fmt: skip
            self.truth_rows.writerow([row[column] for column in TRUTH_COLUMNS])

    async def _send_events(self, events: list[dict[str, Any]], identity: Identity) -> list[dict[str, Any]]:
        """The service's result per event; retried with the same event ids on 503 and transport errors."""
        for attempt in range(EVENT_ATTEMPTS):
            reply = await self._post("events", "/v1/events", {"events": events}, identity)
            wait = min(2.0, 0.25 * 2**attempt)
            if reply is not None and reply.status == 202:
                try:
                    results = reply.body["results"]
                except (KeyError, TypeError):
                    self.stats.errors["events_bad_body"] += 1
                    return []
                if isinstance(results, list) and len(results) == len(events):
                    return results
                self.stats.errors["events_bad_body"] += 1
                return []
            if reply is not None:
                self.stats.errors[f"events_{reply.status}"] += 1
                if reply.status != 503:
                    return []  # only a 503 asks for a retry; a 4xx or 500 would answer the same
                with contextlib.suppress(TypeError, ValueError):
                    wait = max(wait, float(reply.retry_after))
            await asyncio.sleep(wait)
        self.stats.errors["events_gave_up"] += 1
        return []

    async def _post(self, endpoint: str, path: str, body: dict[str, Any], identity: Identity) -> Reply | None:
        self.stats.requests += 1
        sent = headers(identity) | (self.exchange_headers if endpoint == "openrtb" else {})
        try:
            async with self.client.post(path, json=body, headers=sent) as response:
                content = await response.read()
                return Reply(response.status, _json_or_none(content), response.headers.get("Retry-After"))
        except TimeoutError:
            self.stats.errors[f"{endpoint}_timeout"] += 1
        except aiohttp.ClientConnectorError:
            self.stats.errors[f"{endpoint}_connect"] += 1
        except aiohttp.ClientError as exc:
            self.stats.errors[f"{endpoint}_{type(exc).__name__}"] += 1
        return None


def invoice_lines(invoice: dict[datetime, list[int]]) -> list[dict[str, Any]]:
    """The exchange's invoice, one line per hour: its impressions and their prices' sum, a thousandth of it
    rounded half up once (as ``adstream invoice`` reads it, with the exact sum kept beside it)."""
    return [
        {
            "period_start": hour.isoformat(), "period_end": (hour + timedelta(hours=1)).isoformat(),
            "impressions": impressions, "media_cost_cpm_micros": cpm_micros,
            "amount": f"{Decimal((cpm_micros + 500) // 1000) / MICROS_PER_UNIT:.6f}",
        }
        for hour, (impressions, cpm_micros) in sorted(invoice.items())
    ]  # fmt: skip


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


# --- the run ---


async def simulate(
    base_url: str,
    population: Sequence[SimulatedUser],
    truth: GroundTruth,
    *,
    duration_s: float,
    rate: float,
    concurrency: int,
    seed: int,
    openrtb_share: float = OPENRTB_SHARE,
    progress_every_s: float = 5.0,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    http_timeout_s: float = HTTP_TIMEOUT_S,
    bot_share: float = 0.0,
    datacenters: Sequence[IpNetwork] = (),
    min_click_delay_s: float = 0.5,
    ground_truth: TextIO | None = None,
    traffic_curve: CurveKind = CurveKind.FLAT,
    day_length_s: float = 86_400.0,
    day_origin_s: float = 0.0,
    unfillable_share: float = 0.0,
    exchange_key: str | None = None,
) -> tuple[SimulationStats, float]:
    """Visits at ``rate`` per second (the mean over a day of ``day_length_s`` when ``traffic_curve`` is
    diurnal) for ``duration_s`` on ``concurrency`` workers; the stats and the elapsed time.

    Visit ``n`` is due ``VisitSchedule.due_s(n)`` seconds after the start (``n / rate`` when flat); a
    worker takes the next visit number, waits until it is due (or runs it at once when late) and
    never holds more than one visit.
    """
    stats = SimulationStats()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    numbers = itertools.count()
    # aiohttp rather than httpx: a sixth of the CPU per request, which at 200 visits/s on 2 cores
    # is CPU the service and the stream need.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=http_timeout_s)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector, timeout=timeout) as client:
        visitor = Visitor(
            client, population, truth, seed=seed, openrtb_share=openrtb_share, stats=stats, bot_share=bot_share,
            datacenters=datacenters, min_click_delay_s=min_click_delay_s, ground_truth=ground_truth,
            unfillable_share=unfillable_share, exchange_key=exchange_key,
        )  # fmt: skip
        began = loop.time()
        deadline = began + duration_s
        schedule = VisitSchedule(rate, time.time(), traffic_curve, day_length_s, origin_s=day_origin_s)
        if traffic_curve is CurveKind.DIURNAL:
            stats.visits_by_slot = [0] * schedule.shape.slots

        async def worker() -> None:
            while not stop.is_set():
                number = next(numbers)
                due_s = schedule.due_s(number)
                due = began + due_s
                if due >= deadline or loop.time() >= deadline:  # visits still owed at the end are not run
                    return
                delay = due - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        return
                else:  # late: start at once, but let the progress line and the other workers run first
                    await asyncio.sleep(0)
                if stats.visits_by_slot is not None:
                    stats.visits_by_slot[schedule.slot(due_s)] += 1
                await visitor.visit(number)

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(progress_every_s)
                print(stats.progress(loop.time() - began), file=out, flush=True)

        reporter = asyncio.create_task(report_progress())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    return stats, loop.time() - began


async def _run_until_signalled(**kwargs: Any) -> tuple[SimulationStats, float]:
    """``simulate``, where Ctrl-C or SIGTERM stops new visits and lets the summary be written."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    return await simulate(**kwargs, stop=stop)


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h' (or '1.5m') -> seconds, above 0."""
    match = DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration above 0: use e.g. 90s, 5m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


@dataclass(frozen=True)
class RunOptions:
    """What `adstream simulate` is asked for; ``base_url`` None is the service at BIND_HOST:AUCTION_PORT."""

    duration_s: float = 60.0
    rate: float = 20.0
    users: int = 500
    seed: int = 7
    concurrency: int = DEFAULT_CONCURRENCY
    base_url: str | None = None
    openrtb_share: float = OPENRTB_SHARE
    unfillable_share: float = 0.0
    base_ctr: float = BASE_CTR
    progress_every_s: float = 5.0
    summary_file: Path | None = None
    bot_share: float = 0.0
    ground_truth_file: Path | None = None
    traffic_curve: CurveKind = CurveKind.FLAT
    day_length_s: float | None = None  # None: PACING_DAY_LENGTH_S
    exchange_key: str | None = None  # the OpenRTB requests' X-Api-Key; None: anonymous (local mode only)

    def error(self) -> str | None:
        """What is wrong with the options, if anything (a usage error)."""
        for invalid, message in (
            (not 0 < self.rate < math.inf, "--rate must be a number of requests per second above 0"),
            (self.users < 1, "--users must be at least 1"),
            (not 1 <= self.concurrency <= MAX_CONCURRENCY, f"--concurrency must be between 1 and {MAX_CONCURRENCY}"),
            (not 0 <= self.openrtb_share <= 1, "--openrtb-share must be between 0 and 1"),
            (not 0 <= self.unfillable_share <= 1, "--unfillable-share must be between 0 and 1"),
            (not 0 < self.base_ctr <= 1, "--base-ctr must be above 0 and at most 1"),
            (not 0 <= self.bot_share <= 1, "--bot-share must be between 0 and 1"),
        ):
            if invalid:
                return message
        return None


def run(settings: Settings, options: RunOptions, out: TextIO) -> int:
    """The simulation of ``options`` against the service; the summary to ``out`` (and the summary file), every
    event sent to the ground-truth file. 1 when the lake cannot give a population or ground truth, or no
    auction was answered at all."""
    base_url = options.base_url or f"http://{settings.bind_host}:{settings.auction_port}"
    day_length_s = options.day_length_s or float(settings.pacing_day_length_s)
    try:
        population = load_population(settings, options.users, options.seed)
        truth = load_ground_truth(settings, options.base_ctr)
        datacenters = bots.parse_networks(settings.ivt_datacenter_cidrs or DEFAULT_DATACENTER_CIDRS)
        bots.residential_networks(datacenters)
    except (LakeTableMissing, ValueError) as exc:
        print(f"simulator: cannot start: {exc}", file=sys.stderr)
        return 1
    described = {
        "base_url": base_url,
        "duration_s": options.duration_s,
        "rate": options.rate,
        "users": len(population),
        "seed": options.seed,
        "concurrency": options.concurrency,
        "openrtb_share": options.openrtb_share,
        "unfillable_share": options.unfillable_share,
        "bot_share": options.bot_share,
        "datacenter_cidrs": [str(network) for network in datacenters],
        "min_click_delay_ms": settings.ivt_min_click_delay_ms,
        "ground_truth_file": str(options.ground_truth_file) if options.ground_truth_file else None,
        "traffic_curve": options.traffic_curve.value,
        "day_length_s": day_length_s,
        "exchange_keyed": options.exchange_key is not None,
    }
    curve = "" if options.traffic_curve is CurveKind.FLAT else f" (mean, diurnal over a {day_length_s:g}s day)"
    print(
        f"simulating {len(population)} users against {base_url} for {options.duration_s:g}s at {options.rate:g}/s"
        f"{curve}; "
        f"ground truth {json.dumps(truth.summary()['click_model'])}",
        file=out,
        flush=True,
    )
    if options.bot_share and not settings.ivt_datacenter_cidrs:
        print(
            f"simulator: IVT_DATACENTER_CIDRS is empty; data-center bots use {DEFAULT_DATACENTER_CIDRS}, which the "
            "service only tags as GIVT if it has the same setting",
            file=out,
            flush=True,
        )
    with contextlib.ExitStack() as files:
        ground_truth = None
        if options.ground_truth_file is not None:
            options.ground_truth_file.parent.mkdir(parents=True, exist_ok=True)
            ground_truth = files.enter_context(options.ground_truth_file.open("w", newline=""))
            csv.writer(ground_truth).writerow(TRUTH_COLUMNS)
        stats, elapsed = asyncio.run(
            _run_until_signalled(
                base_url=base_url,
                population=population,
                truth=truth,
                duration_s=options.duration_s,
                rate=options.rate,
                concurrency=options.concurrency,
                seed=options.seed,
                openrtb_share=options.openrtb_share,
                progress_every_s=options.progress_every_s,
                out=out,
                bot_share=options.bot_share,
                datacenters=datacenters,
                min_click_delay_s=settings.ivt_min_click_delay_ms / 1000,
                ground_truth=ground_truth,
                traffic_curve=options.traffic_curve,
                day_length_s=day_length_s,
                day_origin_s=settings.pacing_day_origin_s,
                unfillable_share=options.unfillable_share,
                exchange_key=options.exchange_key,
            )
        )
    summary = stats.summary(elapsed_s=elapsed, run=described, truth=truth)
    text = json.dumps(summary, indent=2)
    if options.summary_file is not None:
        options.summary_file.parent.mkdir(parents=True, exist_ok=True)
        options.summary_file.write_text(text + "\n")
    print(text, file=out)
    print(final_line(summary), file=out, flush=True)
    return 0 if stats.auctions + sum(bot.auctions for bot in stats.bots.values()) else 1


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _usd(micros: int) -> str:
    return str(Decimal(micros) / MICROS_PER_UNIT)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


# --- the command (`adstream simulate`; simulator.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("simulate", help=__doc__.splitlines()[0])
def simulate_command(
    duration: Annotated[
        float, typer.Option(parser=parse_duration, metavar="DURATION", help="e.g. 90s, 5m, 1h (default 60s)")
    ] = "60s",  # type: ignore[assignment]  # click parses defaults too
    rate: Annotated[
        float, typer.Option(help="auction requests per second, the mean over a day when diurnal (default 20)")
    ] = 20.0,
    users: Annotated[int, typer.Option(help="population size (default 500)")] = 500,
    seed: Annotated[int, typer.Option(help="population, placements and behaviour (default 7)")] = 7,
    concurrency: Annotated[
        int, typer.Option(help=f"visits in flight at most (default {DEFAULT_CONCURRENCY})")
    ] = DEFAULT_CONCURRENCY,
    base_url: Annotated[
        str | None, typer.Option(help="the auction service (default http://BIND_HOST:AUCTION_PORT)")
    ] = None,
    openrtb_share: Annotated[
        float, typer.Option(help=f"share of requests sent to /openrtb2/auction (default {OPENRTB_SHARE})")
    ] = OPENRTB_SHARE,
    unfillable_share: Annotated[
        float, typer.Option(help="share of the OpenRTB requests no campaign can fill (module doc; default 0)")
    ] = 0.0,
    base_ctr: Annotated[
        float, typer.Option(help=f"the ground truth's mean click probability (default {BASE_CTR})")
    ] = BASE_CTR,
    progress_every: Annotated[
        float,
        typer.Option(parser=parse_duration, metavar="DURATION", help="progress line period (default 5s)"),
    ] = "5s",  # type: ignore[assignment]
    summary_file: Annotated[Path | None, typer.Option(help="also write the JSON summary here")] = None,
    bot_share: Annotated[
        float, typer.Option(help="share of visits made by bots of the five IVT behaviours (default 0)")
    ] = 0.0,
    ground_truth_file: Annotated[
        Path | None, typer.Option(help="write every event sent, with who sent it, as CSV here (for IVT scoring)")
    ] = None,
    traffic_curve: Annotated[
        CurveKind, typer.Option(help="flat, or diurnal: --rate is the day's mean, low at night (default flat)")
    ] = CurveKind.FLAT,
    day_length: Annotated[
        float | None,
        typer.Option(
            parser=parse_duration, metavar="DURATION", help="the simulated day, e.g. 1h (default PACING_DAY_LENGTH_S)"
        ),
    ] = None,
    exchange_key: Annotated[
        str | None,
        typer.Option(
            envvar="SIMULATOR_EXCHANGE_KEY",
            show_default=False,
            help="the simulated exchange's API key for its OpenRTB requests (from the environment; default: none)",
        ),
    ] = None,
) -> None:
    options = RunOptions(
        duration_s=duration,
        rate=rate,
        users=users,
        seed=seed,
        concurrency=concurrency,
        base_url=base_url,
        openrtb_share=openrtb_share,
        unfillable_share=unfillable_share,
        base_ctr=base_ctr,
        progress_every_s=progress_every,
        summary_file=summary_file,
        bot_share=bot_share,
        ground_truth_file=ground_truth_file,
        traffic_curve=traffic_curve,
        day_length_s=day_length,
        exchange_key=exchange_key,
    )
    if (error := options.error()) is not None:
        raise typer.BadParameter(error)
    raise typer.Exit(run(get_settings(), options, out=sys.stdout))
