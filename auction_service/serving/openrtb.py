"""The OpenRTB 2.6 subset of ``POST /openrtb2/auction``: BidRequest in, AuctionContext out, BidResponse back.

Supported: ``id``, ``imp[]`` (``id``, ``bidfloor``, ``bidfloorcur``, ``banner``, ``video``),
``tmax``, ``at``, ``bcat`` (with ``cattax`` 1), ``badv``, ``device`` (``devicetype``,
``geo.country``), ``user`` (``id``, ``yob``, ``gender``, ``geo.country``), ``site`` / ``app``.

- Unknown fields and ``ext`` objects are ignored, as OpenRTB requires of a bidder; the
  fields we use are validated strictly (no string-to-number coercion), with messages
  that say what to fix.
- Only the first imp is auctioned: one auction serves one ad. The others are validated
  but get no bid.
- Exactly one of ``site`` (channel "web") or ``app`` (channel "app"): we buy only site
  and app inventory, and a request with both is malformed.
- An imp is "video" when it has a video object and no banner; otherwise "display"
  (our creatives are images).
- The floor is ``max(bidfloor, reserve price)``; ``bidfloor`` (USD CPM) becomes micros
  rounded *up*, so a bid at the floor never undercuts the seller. A ``bidfloor`` above the
  caller's maximum floor (its API key's policy) is lowered to that maximum first.
- ``yob`` gives ``age = request year - yob`` (the birthday is unknown); an impossible
  age (below 0 or above 120) is treated as not stated.
- ``user.gender`` "O" is treated as not stated: campaigns target "F" or "M" only.
- ``device.geo.country`` (else ``user.geo.country``), ISO-3166-1 alpha-3, becomes the
  country name used by the user tables (``COUNTRY_NAMES``); codes outside that table
  pass through unchanged.
- ``bcat`` holds IAB Content Taxonomy 1.0 codes. ``IAB_CATEGORIES`` maps each of our
  categories to its tier-1 codes. We know our ads only at tier 1, so a blocked tier-2
  code (``IAB19-6``) blocks every category under its tier-1 parent (``IAB19``):
  over-blocking costs a bid, under-blocking breaks the publisher's policy.
- ``badv`` entries are matched exactly against ``advertiser_id``.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adstream.events import MICROS_PER_UNIT
from auction_service.domain import AuctionContext
from auction_service.serving.auction import AuctionOutcome

CURRENCY = "USD"
MAX_BIDFLOOR = 1000.0  # USD CPM; anything above is a unit mistake (micros or cents sent as dollars)
MAX_AGE = 120

# Our 20 ADS-16 categories + "Other" -> IAB Content Taxonomy 1.0 tier-1 codes. Several
# of ours share a tier-1 code (IAB 1.0 has no tier 1 for gambling, toys or tools).
IAB_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Clothing & Shoes": ("IAB18",),  # Style & Fashion (IAB18-5 Clothing)
    "Automotive": ("IAB2",),  # Automotive
    "Baby Products": ("IAB6",),  # Family & Parenting (IAB6-2 Babies & Toddlers)
    "Health & Beauty": ("IAB7", "IAB18"),  # Health & Fitness; Style & Fashion (IAB18-1 Beauty)
    "Media (BMVD)": ("IAB1",),  # Arts & Entertainment (books, movies, music, television)
    "Consumer Electronics": ("IAB19",),  # Technology & Computing
    "Console & Video Games": ("IAB9",),  # Hobbies & Interests (IAB9-30 Video & Computer Games)
    "DIY & Tools": ("IAB10",),  # Home & Garden (IAB10-5 Home Repair)
    "Garden & Outdoor living": ("IAB10",),  # Home & Garden (IAB10-4 Gardening)
    "Grocery": ("IAB8",),  # Food & Drink
    "Kitchen & Home": ("IAB10",),  # Home & Garden
    "Betting": ("IAB9",),  # Hobbies & Interests (IAB9-7 Card Games)
    "Jewellery & Watches": ("IAB18",),  # Style & Fashion (IAB18-4 Jewelry)
    "Musical Instruments": ("IAB1",),  # Arts & Entertainment (IAB1-6 Music)
    "Office Products": ("IAB3",),  # Business
    "Pet Supplies": ("IAB16",),  # Pets
    "Computer Software": ("IAB19",),  # Technology & Computing
    "Sports & Outdoors": ("IAB17",),  # Sports
    "Toys & Games": ("IAB9",),  # Hobbies & Interests (IAB9-5 Board Games/Puzzles)
    "Dating Sites": ("IAB14",),  # Society (IAB14-1 Dating)
    "Other": ("IAB24",),  # Uncategorized
}
UNCATEGORIZED = ("IAB24",)  # a campaign category outside the table

# OpenRTB / AdCOM device types -> ours; 6 (connected device) and 8 (out-of-home) have no match.
DEVICE_TYPES: dict[int, str | None] = {
    1: "mobile",  # mobile/tablet, general
    2: "desktop",  # personal computer
    3: "ctv",  # connected TV
    4: "mobile",  # phone
    5: "tablet",
    6: None,
    7: "ctv",  # set-top box
    8: None,
}
EXCHANGE_SPECIFIC_DEVICE_TYPES = 500  # OpenRTB: values from 500 on are exchange-specific

# ISO-3166-1 alpha-3 -> the country names of silver/users (the countries of our data sets).
COUNTRY_NAMES: dict[str, str] = {
    "AUS": "Australia",
    "BEL": "Belgium",
    "BRA": "Brazil",
    "CAN": "Canada",
    "CHN": "China",
    "DEU": "Germany",
    "EGY": "Egypt",
    "ESP": "Spain",
    "FRA": "France",
    "GBR": "United Kingdom",
    "GRC": "Greece",
    "HRV": "Croatia",
    "IND": "India",
    "IRL": "Ireland",
    "ISL": "Iceland",
    "ITA": "Italy",
    "JPN": "Japan",
    "MAR": "Morocco",
    "MEX": "Mexico",
    "NLD": "Netherlands",
    "NOR": "Norway",
    "NZL": "New Zealand",
    "PHL": "Philippines",
    "POL": "Poland",
    "PRT": "Portugal",
    "SWE": "Sweden",
    "THA": "Thailand",
    "TUR": "Turkey",
    "USA": "United States",
}

_IAB_CODE = re.compile(r"^IAB(\d+)(-\d+)?$")


class _OpenRtbObject(BaseModel):
    # extra="ignore": OpenRTB objects carry extensions and fields we do not use.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Banner(_OpenRtbObject):
    """Presence marks a display impression; its sizes are not used."""


class Video(_OpenRtbObject):
    """Presence marks a video impression; its protocols and sizes are not used."""


class Imp(_OpenRtbObject):
    id: str = Field(min_length=1, max_length=64)
    banner: Banner | None = None
    video: Video | None = None
    bidfloor: float = Field(default=0.0, ge=0, le=MAX_BIDFLOOR, allow_inf_nan=False, description="USD CPM")
    bidfloorcur: str = CURRENCY

    @field_validator("bidfloorcur")
    @classmethod
    def _usd_only(cls, currency: str) -> str:
        if currency != CURRENCY:
            raise ValueError(f"only USD is supported, got {currency!r}: send bidfloor in USD with bidfloorcur 'USD'")
        return currency

    @model_validator(mode="after")
    def _has_format(self) -> Imp:
        if self.banner is None and self.video is None:
            raise ValueError(f"imp {self.id!r} needs a banner or a video object (native and audio are not supported)")
        return self


class Geo(_OpenRtbObject):
    country: str | None = None

    @field_validator("country")
    @classmethod
    def _alpha3(cls, country: str | None) -> str | None:
        if country is not None and not re.fullmatch(r"[A-Za-z]{3}", country):
            raise ValueError(f"country must be an ISO-3166-1 alpha-3 code such as 'USA', got {country!r}")
        return None if country is None else country.upper()


class Device(_OpenRtbObject):
    devicetype: int | None = None
    geo: Geo | None = None

    @field_validator("devicetype")
    @classmethod
    def _known_device_type(cls, devicetype: int | None) -> int | None:
        if devicetype is not None and devicetype not in DEVICE_TYPES and devicetype < EXCHANGE_SPECIFIC_DEVICE_TYPES:
            raise ValueError(
                f"devicetype must be an OpenRTB device type 1-8 (500+: exchange-specific), got {devicetype}"
            )
        return devicetype


class User(_OpenRtbObject):
    id: str | None = Field(default=None, min_length=1, max_length=64)
    yob: int | None = Field(default=None, ge=1900, le=2100, description="year of birth, 4 digits")
    gender: Literal["M", "F", "O"] | None = None
    geo: Geo | None = None


class Site(_OpenRtbObject):
    """Presence marks web inventory."""


class App(_OpenRtbObject):
    """Presence marks app inventory."""


class BidRequest(_OpenRtbObject):
    id: str = Field(min_length=1, max_length=64)
    imp: list[Imp] = Field(min_length=1, description="only the first imp is auctioned")
    tmax: int | None = Field(default=None, ge=1, description="milliseconds the exchange waits for the response")
    at: int = Field(default=2, description="auction type: 1 first price, 2 second price")
    bcat: list[str] = Field(default_factory=list, max_length=500)
    cattax: int = 1
    badv: list[str] = Field(default_factory=list, max_length=500)
    device: Device | None = None
    user: User | None = None
    site: Site | None = None
    app: App | None = None

    @field_validator("at")
    @classmethod
    def _auction_type(cls, at: int) -> int:
        if at not in (1, 2):
            raise ValueError(f"at must be 1 (first price) or 2 (second price), got {at}")
        return at

    @field_validator("cattax")
    @classmethod
    def _iab_taxonomy_1(cls, cattax: int) -> int:
        if cattax != 1:
            raise ValueError(f"only cattax 1 (IAB Content Taxonomy 1.0) is supported, got {cattax}")
        return cattax

    @field_validator("bcat")
    @classmethod
    def _iab_codes(cls, codes: list[str]) -> list[str]:
        bad = [code for code in codes if not _IAB_CODE.match(code)]
        if bad:
            raise ValueError(f"bcat holds IAB 1.0 category codes such as 'IAB19' or 'IAB19-6'; not codes: {bad[:5]}")
        return codes

    @model_validator(mode="after")
    def _site_or_app(self) -> BidRequest:
        if self.site is not None and self.app is not None:
            raise ValueError("send either site or app, not both")
        if self.site is None and self.app is None:
            raise ValueError("a request needs a site or an app object (other inventory is not supported)")
        return self

    @property
    def first_price(self) -> bool:
        return self.at == 1


def iab_categories(category: str) -> tuple[str, ...]:
    """The IAB 1.0 tier-1 codes of one of our categories (``cat`` of a bid)."""
    return IAB_CATEGORIES.get(category, UNCATEGORIZED)


def blocked_categories(bcat: Iterable[str]) -> frozenset[str]:
    """Our categories a ``bcat`` list blocks; a tier-2 code blocks its whole tier-1 parent."""
    blocked_tier1 = {code.split("-", 1)[0] for code in bcat}
    return frozenset(
        category for category, codes in IAB_CATEGORIES.items() if any(code in blocked_tier1 for code in codes)
    )


def _micros_rounded_up(amount: float) -> int:
    # str() gives the shortest decimal of the float, i.e. what the exchange wrote.
    return math.ceil(Decimal(str(amount)) * MICROS_PER_UNIT)


def _age(yob: int | None, at: datetime) -> int | None:
    if yob is None:
        return None
    age = at.year - yob
    return age if 0 <= age <= MAX_AGE else None


def to_context(
    request: BidRequest,
    *,
    auction_id: str,
    at: datetime,
    reserve_price_micros: int,
    publisher_id: str | None = None,
    max_floor_cpm_micros: int | None = None,
) -> AuctionContext:
    """The auction context of the request's first imp, at UTC time ``at``, for caller ``publisher_id``.

    ``max_floor_cpm_micros`` caps ``bidfloor`` (None: no cap); the reserve price still applies.
    """
    imp = request.imp[0]
    device, user = request.device, request.user
    country_code = (device.geo.country if device and device.geo else None) or (
        user.geo.country if user and user.geo else None
    )
    devicetype = device.devicetype if device else None
    floor = _micros_rounded_up(imp.bidfloor)
    if max_floor_cpm_micros is not None:
        floor = min(floor, max_floor_cpm_micros)
    return AuctionContext(
        auction_id=auction_id,
        at=at,
        user_id=user.id if user else None,
        country=None if country_code is None else COUNTRY_NAMES.get(country_code, country_code),
        age=_age(user.yob, at) if user else None,
        gender=user.gender if user and user.gender in ("F", "M") else None,
        device_type=None if devicetype is None else DEVICE_TYPES.get(devicetype),
        channel="web" if request.site is not None else "app",
        content_type="video" if imp.video is not None and imp.banner is None else "display",
        floor_cpm_micros=max(floor, reserve_price_micros),
        blocked_categories=blocked_categories(request.bcat),
        blocked_advertisers=frozenset(request.badv),
        publisher_id=publisher_id,
    )


class Bid(BaseModel):
    id: str
    impid: str = Field(description="the first imp's id: only it is auctioned")
    price: float = Field(description="the clearing price, USD per thousand impressions")
    adid: str
    crid: str
    cid: str
    cat: list[str] = Field(description="IAB Content Taxonomy 1.0 tier-1 codes of the ad's category")
    adomain: list[str]
    nurl: str
    adm: str


class SeatBid(BaseModel):
    seat: str
    bid: list[Bid]


class BidResponse(BaseModel):
    """The 200 body of ``POST /openrtb2/auction``; no fill is HTTP 204 without a body."""

    id: str
    bidid: str
    seatbid: list[SeatBid]
    cur: str = CURRENCY


def _markup(image_url: str, click_url: str | None) -> str:
    image = f'<img src="{html.escape(image_url, quote=True)}" alt="">'
    return image if click_url is None else f'<a href="{html.escape(click_url, quote=True)}">{image}</a>'


def bid_response(
    request: BidRequest, outcome: AuctionOutcome, *, ad_markup_url: str, nurl: str, click_url: str | None = None
) -> BidResponse:
    """The OpenRTB BidResponse for a filled auction (no fill is HTTP 204, not a response body).

    ``price`` is the clearing price per thousand impressions in USD, the one place money is
    a float (the spec says so); it is computed from integer micros. ``ad_markup_url`` is the
    creative's URL, served as a minimal HTML ``adm`` (a link to ``click_url`` when given: the
    ad's signed click URL); ``nurl`` is the win notice.
    """
    winner = outcome.winner
    if winner is None or outcome.clearing_price_cpm_micros is None:
        raise ValueError("the auction has no winner: answer HTTP 204 instead of a bid response")
    bid = Bid(
        id=outcome.auction_id,
        impid=request.imp[0].id,
        price=outcome.clearing_price_cpm_micros / MICROS_PER_UNIT,
        adid=winner.ad_id,
        crid=winner.ad_id,
        cid=winner.campaign_id,
        cat=list(iab_categories(winner.category)),
        adomain=[winner.advertiser_id],
        nurl=nurl,
        adm=_markup(ad_markup_url, click_url),
    )
    return BidResponse(
        id=request.id,
        bidid=outcome.auction_id,
        seatbid=[SeatBid(seat=winner.advertiser_id, bid=[bid])],
        cur=CURRENCY,
    )
