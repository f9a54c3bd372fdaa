"""The OpenRTB 2.6 bidder of ``POST /openrtb2/auction``: a BidRequest in, one auction per imp, a BidResponse back.

What is honoured (the README's support matrix says the same):

- **Inventory**: ``site`` (channel "web") and ``app`` (channel "app"). ``dooh``, or none of the three, is a valid
  request we do not buy: no bid (204). More than one of them breaks the spec: 400.
- **Imps**: every imp with a ``banner`` or a ``video`` is auctioned, in order; one campaign fills at most one
  imp of a request (one user, one page). An imp with both is auctioned as a banner. Native- and audio-only
  imps, and an imp whose ``bidfloorcur`` is not USD, get no bid.
- **Banner**: ``w``/``h`` and ``format[]`` sizes; a campaign bids only with a size its creative is made for
  (``Creative.banner_sizes``), and the bid states it. A flexible format (``wratio``/``hratio``, with ``wmin``)
  takes any creative size of that aspect ratio at least ``wmin`` wide; an exact size the slot lists is
  preferred. A banner without sizes or ratios takes any.
- **Video**: only campaigns with a video creative whose MIME type is in ``mimes`` and whose duration is within
  ``minduration``/``maxduration``; with ``protocols``, VAST 4.0 (7) must be among them. The markup is VAST 4
  inline.
- **Deals** (``imp.pmp``): a campaign that carries a deal of the imp (same id, its seat allowed by the deal's
  ``wseat`` and the campaign's deal seats) bids through it, at a floor of the larger of the request's deal
  ``bidfloor`` and its own deal floor, and its bid carries ``dealid``. With ``private_auction`` 1 only such
  bids are made; with 0 they compete with the open market at the imp's floor. A deal's ``at`` overrides the
  request's for the bids made through it: 3 is a fixed price (a campaign that wins through it pays, and bids,
  that floor, whatever the runner-up), 1 first price (it pays its bid), 2 second price; without ``at`` the
  request's applies. The rule is the winner's: an imp's campaigns rank by eCPM whatever their deal, and the
  winner is priced by its own deal's type, or the request's when it bids on the open market (so a first-price
  deal and a second-price open market in one imp each price their own winners). A caller not allowed first
  price gets no bid through a deal with ``at`` 1, as it gets none for a request with ``at`` 1; a deal with
  another ``at`` (4, or an exchange's 500+) is not bid through: we would not know what it charges.
- **Privacy**: ``regs.coppa`` 1; ``regs.gdpr`` 1 without a TCF v2 ``user.consent`` that grants purposes 1, 3
  and 4; ``regs.us_privacy`` with the sale opted out ("1-Y-"); and a ``regs.gpp`` string with applicable
  sections (``gpp_sid``), which we do not decode: each makes the auction contextual only. No user id (so no
  frequency cap, audience split or user features), no age, no gender; the country and device type stay.
- **No bid (204)** for a valid request we will not buy: the inventory, ``cattax`` other than 1, ``at`` other
  than 1 or 2, ``cur`` without USD, ``tmax`` below ``OPENRTB_MIN_TMAX_MS``, first price from a caller not
  allowed it, no imp we buy, or no campaign clearing. The reason is in the ``X-No-Bid-Reason`` header.
- **400** for a request that breaks OpenRTB 2.6, with each JSON path and the rule broken: required fields,
  a media object per imp, non-negative sizes, unique imp ids, enumerations (``gdpr``, ``coppa``,
  ``private_auction``), at most one of site/app/dooh, deal ids, ``video.mimes``.
- Unknown fields and ``ext`` objects are ignored, as OpenRTB requires of a bidder; the fields we use are
  validated strictly (no string-to-number coercion).
- The floor is ``max(bidfloor, reserve price)``; ``bidfloor`` (USD CPM) becomes micros rounded *up*, so a bid at
  the floor never undercuts the seller. A floor above the caller's maximum (its API key's policy) is lowered to
  that maximum first; deal floors alike.
- ``yob`` gives ``age = request year - yob``; an impossible age is not stated. ``user.gender`` "O" is not
  stated: campaigns target "F" or "M" only. ``device.geo.country`` (else ``user.geo.country``), ISO-3166-1
  alpha-3, becomes the country name of the user tables (``COUNTRY_NAMES``).
- ``bcat`` holds IAB Content Taxonomy 1.0 codes. ``IAB_CATEGORIES`` maps each of our categories to its tier-1
  codes; a blocked tier-2 code (``IAB19-6``) blocks every category under its tier-1 parent: over-blocking costs
  a bid, under-blocking breaks the publisher's policy. ``badv`` entries are advertiser domains, matched against
  the campaign's ``Creative.adomain``, and advertiser ids.

The response side (markup, notices, the bid) is ``auction_service.serving.openrtb_bids``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from adstream.events import MICROS_PER_UNIT, Creative
from auction_service.domain import AuctionContext, ServingCampaign
from auction_service.serving.features import hour_and_day_of_week
from ml.bid_filter import RequestFeatures

CURRENCY = "USD"
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
SUPPORTED_AUCTION_TYPES = (1, 2)
FIRST_PRICE, SECOND_PRICE, FIXED_PRICE = 1, 2, 3  # a deal's ``at``; 3: its bidfloor is the agreed price
VAST_4_PROTOCOL = 7  # AdCOM's "VAST 4.0": our video markup
TCF_PURPOSES_NEEDED = (1, 3, 4)  # store/access information, a personalised profile, personalised ads


class _OpenRtbObject(BaseModel):
    # extra="ignore": OpenRTB objects carry extensions and fields we do not use.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


Size = Field(default=None, ge=0)


class Format(_OpenRtbObject):
    w: int | None = Size
    h: int | None = Size
    wratio: int | None = Size
    hratio: int | None = Size
    wmin: int | None = Size


class Banner(_OpenRtbObject):
    w: int | None = Size
    h: int | None = Size
    format: list[Format] | None = Field(default=None, max_length=100)

    def sizes(self) -> tuple[tuple[int, int], ...]:
        """The exact sizes the slot takes, in the publisher's order (``w``/``h`` first)."""
        sizes = [(self.w, self.h)] + [(f.w, f.h) for f in self.format or ()]
        return tuple(dict.fromkeys((w, h) for w, h in sizes if w and h))

    def ratios(self) -> tuple[tuple[int, int, int], ...]:
        """The flexible formats (wratio, hratio, wmin): any size of that aspect ratio, at least wmin wide."""
        flex = [(f.wratio, f.hratio, f.wmin or 0) for f in self.format or () if f.wratio and f.hratio]
        return tuple(dict.fromkeys(flex))

    def takes_any(self) -> bool:
        return not self.sizes() and not self.ratios()

    def fits(self, w: int, h: int) -> bool:
        """Whether a creative of ``w`` x ``h`` fits the slot: one of its sizes, or one of its ratios (exactly,
        in integers) at least that format's ``wmin`` wide."""
        return (w, h) in self.sizes() or any(w * hr == h * wr and w >= wmin for wr, hr, wmin in self.ratios())


class Video(_OpenRtbObject):
    mimes: list[str] = Field(min_length=1, max_length=50)
    minduration: int | None = Field(default=None, ge=0)
    maxduration: int | None = Field(default=None, ge=0)
    protocols: list[int] | None = Field(default=None, max_length=50)
    w: int | None = Size
    h: int | None = Size


class Audio(_OpenRtbObject):
    mimes: list[str] = Field(min_length=1, max_length=50)


class Native(_OpenRtbObject):
    request: str = Field(min_length=1)


class Deal(_OpenRtbObject):
    id: str = Field(min_length=1, max_length=64)
    bidfloor: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    bidfloorcur: str = CURRENCY
    at: int | None = Field(default=None, description="1 first, 2 second price plus, 3 fixed price (bidfloor)")
    wseat: list[str] | None = Field(default=None, max_length=500)


class Pmp(_OpenRtbObject):
    private_auction: Literal[0, 1] = 0
    deals: list[Deal] = Field(default_factory=list, max_length=100)


class Imp(_OpenRtbObject):
    id: str = Field(min_length=1, max_length=64)
    banner: Banner | None = None
    video: Video | None = None
    audio: Audio | None = None
    native: Native | None = None
    pmp: Pmp | None = None
    bidfloor: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="USD CPM")
    bidfloorcur: str = CURRENCY

    @property
    def media(self) -> Literal["banner", "video"] | None:
        """What we would fill it with: a banner when it takes one, else a video; None: neither."""
        return "banner" if self.banner is not None else "video" if self.video is not None else None


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
    w: int | None = Size
    h: int | None = Size
    ua: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=45)

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
    yob: int | None = Field(default=None, ge=1000, le=9999, description="year of birth, 4 digits")
    gender: Literal["M", "F", "O"] | None = None
    geo: Geo | None = None
    consent: str | None = Field(default=None, max_length=10_000, description="a TCF v2 consent string")


class Regs(_OpenRtbObject):
    coppa: Literal[0, 1] | None = None
    gdpr: Literal[0, 1] | None = None
    us_privacy: str | None = Field(default=None, max_length=16)
    gpp: str | None = Field(default=None, max_length=10_000)
    gpp_sid: list[int] | None = Field(default=None, max_length=100)


class Site(_OpenRtbObject):
    domain: str | None = Field(default=None, max_length=253)
    page: str | None = Field(default=None, max_length=4096)


class App(_OpenRtbObject):
    bundle: str | None = Field(default=None, max_length=253)
    domain: str | None = Field(default=None, max_length=253)


class Dooh(_OpenRtbObject):
    """Presence marks digital out-of-home inventory, which we do not buy."""


class BidRequest(_OpenRtbObject):
    id: str = Field(min_length=1, max_length=64)
    imp: list[Imp] = Field(min_length=1, max_length=100)
    tmax: int | None = Field(default=None, ge=0, description="milliseconds the exchange waits for the response")
    at: int = Field(default=2, ge=1, description="auction type: 1 first price, 2 second price, 500+ exchange's")
    cattax: int = Field(default=1, ge=0)  # before bcat: its codes are read in this taxonomy
    bcat: list[str] = Field(default_factory=list, max_length=500)
    badv: list[str] = Field(default_factory=list, max_length=500)
    cur: list[str] | None = Field(default=None, max_length=50)
    device: Device | None = None
    user: User | None = None
    site: Site | None = None
    app: App | None = None
    dooh: Dooh | None = None
    regs: Regs | None = None
    test: Literal[0, 1] = 0

    @field_validator("bcat")
    @classmethod
    def _iab_codes(cls, codes: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("cattax", 1) != 1:
            return codes  # another taxonomy: a valid request we do not buy (no_bid_reason)
        bad = [code for code in codes if not _IAB_CODE.match(code)]
        if bad:
            raise ValueError(f"bcat holds IAB 1.0 category codes such as 'IAB19' or 'IAB19-6'; not codes: {bad[:5]}")
        return codes

    @property
    def first_price(self) -> bool:
        return self.at == 1

    @property
    def domain(self) -> str | None:
        if self.site is not None:
            return self.site.domain
        return None if self.app is None else self.app.bundle or self.app.domain


def spec_errors(request: BidRequest) -> list[tuple[str, str]]:
    """(JSON path, rule) of each OpenRTB 2.6 rule the request breaks across fields (one field's own rules
    are the model's)."""
    errors: list[tuple[str, str]] = []
    first_of: dict[str, int] = {}
    for index, imp in enumerate(request.imp):
        if imp.id in first_of:
            errors.append(
                (
                    f"imp[{index}].id",
                    f"imp ids are unique within a request: {imp.id!r} is imp[{first_of[imp.id]}].id too",
                )
            )
        first_of.setdefault(imp.id, index)
        if imp.banner is None and imp.video is None and imp.audio is None and imp.native is None:
            errors.append((f"imp[{index}]", "an imp needs a banner, video, audio or native object"))
        for at, format_ in enumerate((imp.banner.format or ()) if imp.banner else ()):
            if bool(format_.wratio) != bool(format_.hratio):
                errors.append((f"imp[{index}].banner.format[{at}]", "a flexible format needs both wratio and hratio"))
        video = imp.video
        if (
            video
            and video.minduration is not None
            and video.maxduration is not None
            and (video.maxduration < video.minduration)
        ):
            errors.append((f"imp[{index}].video.maxduration", "maxduration is at least minduration"))
    inventories = [name for name in ("site", "app", "dooh") if getattr(request, name) is not None]
    if len(inventories) > 1:
        errors.append((inventories[1], f"at most one of site, app and dooh: got {' and '.join(inventories)}"))
    return errors


# OpenRTB 3.0's list of no-bid reason codes (which 2.6 refers to), for the reasons that have one.
NBR_UNKNOWN, NBR_KNOWN_WEB_CRAWLER, NBR_NON_HUMAN, NBR_DATACENTER_IP = 0, 3, 4, 5
NBR_UNSUPPORTED_DEVICE, NBR_INSUFFICIENT_AUCTION_TIME = 6, 15
_NBR_BY_REASON = (
    ("invalid traffic: device known_bot_ua", NBR_KNOWN_WEB_CRAWLER),
    ("invalid traffic: device datacenter_ip", NBR_DATACENTER_IP),
    ("invalid traffic", NBR_NON_HUMAN),
    ("DOOH", NBR_UNSUPPORTED_DEVICE),
    ("tmax", NBR_INSUFFICIENT_AUCTION_TIME),
)


# Our no-bid reasons by kind, for /v1/stats: a bounded set of labels (a reason may quote the request).
_NO_BID_KINDS = (
    ("invalid traffic", "invalid traffic"),
    ("DOOH", "DOOH"),
    ("neither site nor app", "no site or app"),
    ("cattax", "category taxonomy"),
    ("auction type", "auction type"),
    ("cur ", "currency"),
    ("tmax", "tmax too short"),
    ("no imp we buy", "no imp we buy"),
    ("at=1", "first price not allowed"),
    ("the bid-request filter", "bid-request filter"),
    ("no campaign clears", "no campaign clears"),
)


def no_bid_kind(reason: str) -> str:
    return next((kind for prefix, kind in _NO_BID_KINDS if reason.startswith(prefix)), "other")


def nbr(reason: str) -> int:
    """The no-bid reason code of one of our reasons; 0 ("unknown") for the ones the list has no code for, such
    as no campaign clearing the floor."""
    return next((code for prefix, code in _NBR_BY_REASON if reason.startswith(prefix)), NBR_UNKNOWN)


def no_bid_reason(request: BidRequest, *, min_tmax_ms: int) -> str | None:
    """Why we will not bid on a valid request at all (a 204), or None."""
    if request.dooh is not None:
        return "DOOH inventory is not bought: only site and app"
    if request.site is None and request.app is None:
        return "neither site nor app: only site and app inventory is bought"
    if request.cattax != 1:
        return f"cattax {request.cattax}: only IAB Content Taxonomy 1.0 (cattax 1) is mapped"
    if request.at not in SUPPORTED_AUCTION_TYPES:
        return f"auction type at={request.at}: only 1 (first price) and 2 (second price)"
    if request.cur is not None and CURRENCY not in request.cur:
        return f"cur {request.cur}: bids are in USD only"
    if request.tmax is not None and request.tmax < min_tmax_ms:
        return f"tmax {request.tmax} ms: an answer needs at least {min_tmax_ms} ms"
    if not any(imp_no_bid_reason(imp) is None for imp in request.imp):
        return "no imp we buy: " + "; ".join(f"imp {imp.id}: {imp_no_bid_reason(imp)}" for imp in request.imp[:5])
    return None


def imp_no_bid_reason(imp: Imp) -> str | None:
    if imp.media is None:
        return "native and audio are not bought"
    if imp.bidfloorcur != CURRENCY:
        return f"bidfloorcur {imp.bidfloorcur!r}: floors in USD only"
    return None


# --- privacy ---


def tcf_consents(consent: str | None, purposes: Sequence[int] = TCF_PURPOSES_NEEDED) -> bool:
    """Whether a TCF v2 consent string's core segment grants every one of ``purposes``.

    Core segment bits: version (6) at 0, then created, last updated, CMP id and version, consent screen and
    language, vendor list version, policy version, two flags and special features, 152 bits in all; the 24
    purpose consents follow, purpose 1 first. Vendor consent is not read (we have no GVL id).
    """
    if not consent:
        return False
    core = consent.split(".", 1)[0]
    try:
        raw = base64.b64decode(core + "=" * (-len(core) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return False
    size = len(raw) * 8
    if size < 152 + 24:
        return False
    bits = int.from_bytes(raw, "big")

    def read(offset: int, length: int) -> int:
        return (bits >> (size - offset - length)) & ((1 << length) - 1)

    return read(0, 6) == 2 and all(read(152 + purpose - 1, 1) == 1 for purpose in purposes)


def personal_data_refused(request: BidRequest) -> str | None:
    """Why the request may not use personal data (the auction is then contextual only), or None."""
    regs = request.regs
    if regs is None:
        return None
    if regs.coppa == 1:
        return "coppa"
    if regs.gdpr == 1 and not tcf_consents(request.user.consent if request.user else None):
        return "gdpr without consent to purposes 1, 3 and 4"
    if regs.us_privacy and len(regs.us_privacy) == 4 and regs.us_privacy[2] in "Yy":
        return "us_privacy: sale opted out"
    if regs.gpp and regs.gpp_sid and any(sid > 0 for sid in regs.gpp_sid):
        return "gpp sections apply and are not decoded"
    return None


# --- which campaigns may fill an imp ---


@dataclass(frozen=True, slots=True)
class ImpTerms:
    """What an imp allows: the campaigns whose creative fits it (None: any), and the deals it offers by
    campaign (campaign id -> (deal id, floor micros)), with the campaigns whose deal sets its own auction type."""

    eligible: frozenset[str] | None
    deals: Mapping[str, tuple[str, int]]
    fixed_price: frozenset[str] = frozenset()  # of ``deals``, the campaigns whose deal has a fixed price (at 3)
    first_price: frozenset[str] = frozenset()  # ... whose deal is first price (at 1)
    second_price: frozenset[str] = frozenset()  # ... whose deal is second price (at 2)
    first_price_refused: tuple[str, ...] = ()  # the imp's first-price deals, not bid through: the caller may not


class CampaignFit:
    """Which campaigns fit an imp's media, remembered per campaign snapshot: exchanges send a few sizes and
    video specs over and over, and a snapshot lasts until campaigns change."""

    MAX_KEYS = 1024

    def __init__(self) -> None:
        self._snapshot: Sequence[ServingCampaign] | None = None
        self._media: MediaGroups = MediaGroups({}, {})
        self._creatives: dict[str, Creative] = {}
        self._fits: dict[tuple, frozenset[str] | None] = {}
        self._deals: dict[str, list[tuple[ServingCampaign, int, tuple[str, ...]]]] = {}

    def _for(self, campaigns: Sequence[ServingCampaign]) -> None:
        if campaigns is self._snapshot:
            return
        # A new snapshot comes with every charge (several a second); what fits changes only with the creatives,
        # and regrouping a thousand campaigns costs ~10 ms, so only then.
        self._snapshot, known = campaigns, self._creatives
        self._creatives = {campaign.campaign_id: campaign.creative for campaign in campaigns}
        if self._creatives.keys() != known.keys() or any(
            creative is not known[cid] and creative != known[cid] for cid, creative in self._creatives.items()
        ):
            self._media, self._fits = MediaGroups.of(campaigns), {}
        self._deals = {}
        for campaign in campaigns:
            for deal in campaign.deals:
                self._deals.setdefault(deal.deal_id, []).append((campaign, deal.floor_cpm_micros, tuple(deal.seats)))

    def terms(
        self,
        campaigns: Sequence[ServingCampaign],
        imp: Imp,
        *,
        max_floor_cpm_micros: int | None,
        first_price_allowed: bool = True,
    ) -> ImpTerms:
        """The imp's terms for a caller whose floors are capped at ``max_floor_cpm_micros`` and who may
        (``first_price_allowed``) or may not ask for first price: if not, its first-price deals are not bid
        through."""
        self._for(campaigns)
        key = _media_key(imp)
        if key not in self._fits:
            if len(self._fits) >= self.MAX_KEYS:
                self._fits.clear()
            self._fits[key] = self._media.fitting(imp)
        fits = self._fits[key]
        if imp.pmp is None:
            return ImpTerms(fits, {})
        offered = self._deal_floors(imp, fits, max_floor_cpm_micros, first_price_allowed) if imp.pmp.deals else {}
        deals = {cid: (deal_id, floor) for cid, (deal_id, floor, _) in offered.items()}
        fixed, first, second = (frozenset(cid for cid, (_, _, deal_at) in offered.items() if deal_at == at)
                                for at in (FIXED_PRICE, FIRST_PRICE, SECOND_PRICE))  # fmt: skip
        eligible = frozenset(deals) if imp.pmp.private_auction == 1 else fits
        refused = () if first_price_allowed else tuple(d.id for d in imp.pmp.deals if d.at == FIRST_PRICE)
        return ImpTerms(eligible, deals, fixed, first, second, refused)

    def _deal_floors(
        self, imp: Imp, fits: frozenset[str] | None, max_floor: int | None, first_price_allowed: bool
    ) -> dict[str, tuple[str, int, int | None]]:
        """Campaign id -> (deal id, floor micros, the deal's ``at``) of the deals its campaigns may bid through."""
        assert imp.pmp is not None
        offered: dict[str, tuple[str, int, int | None]] = {}
        for deal in imp.pmp.deals:
            if deal.bidfloorcur != CURRENCY:
                continue
            if deal.at is not None and deal.at not in (FIRST_PRICE, SECOND_PRICE, FIXED_PRICE):
                continue  # an auction type we do not know the price of
            if deal.at == FIRST_PRICE and not first_price_allowed:
                continue  # as a request with at=1 from this caller: no bid
            floor = micros_rounded_up(deal.bidfloor)
            if max_floor is not None:
                floor = min(floor, max_floor)
            for campaign, own_floor, seats in self._deals.get(deal.id, ()):
                seat = campaign.advertiser_id
                if (deal.wseat and seat not in deal.wseat) or (seats and seat not in seats):
                    continue
                if fits is not None and campaign.campaign_id not in fits:
                    continue
                terms = (deal.id, max(floor, own_floor), deal.at)
                known = offered.get(campaign.campaign_id)
                if known is None or terms[1] < known[1]:  # two deals: the cheaper one
                    offered[campaign.campaign_id] = terms
        return offered


def _media_key(imp: Imp) -> tuple:
    if imp.media == "banner":
        assert imp.banner is not None
        return ("banner", imp.banner.sizes(), imp.banner.ratios())
    assert imp.video is not None
    video = imp.video
    return ("video", tuple(video.mimes), video.minduration, video.maxduration, tuple(video.protocols or ()))


@dataclass(frozen=True)
class MediaGroups:
    """Campaign ids by what their creatives offer: banner size (w, h), and video (MIME type, seconds). A
    thousand campaigns share a few dozen of these, so an imp's fit is judged once per group."""

    banner: dict[tuple[int, int], tuple[str, ...]]
    video: dict[tuple[str, int], tuple[str, ...]]

    @classmethod
    def of(cls, campaigns: Sequence[ServingCampaign]) -> MediaGroups:
        banner: dict[tuple[int, int], list[str]] = {}
        video: dict[tuple[str, int], list[str]] = {}
        for campaign in campaigns:
            creative = campaign.creative
            for size in creative.banner_sizes:
                banner.setdefault((size.w, size.h), []).append(campaign.campaign_id)
            if creative.video is not None:
                video.setdefault((creative.video.mime, creative.video.duration_s), []).append(campaign.campaign_id)
        return cls({k: tuple(v) for k, v in banner.items()}, {k: tuple(v) for k, v in video.items()})

    def fitting(self, imp: Imp) -> frozenset[str] | None:
        """The ids of the campaigns with a creative that fits ``imp``; None when a banner slot takes any size."""
        if imp.media == "banner":
            assert imp.banner is not None
            if imp.banner.takes_any():
                return None
            fits = imp.banner.fits
            return frozenset(cid for (w, h), ids in self.banner.items() if fits(w, h) for cid in ids)
        assert imp.video is not None
        video = imp.video
        return frozenset(cid for (mime, s), ids in self.video.items() if _video_fits(mime, s, video) for cid in ids)


def video_fits(campaign: ServingCampaign, video: Video) -> bool:
    creative = campaign.creative.video
    return creative is not None and _video_fits(creative.mime, creative.duration_s, video)


def _video_fits(mime: str, duration_s: int, video: Video) -> bool:
    if mime not in video.mimes:
        return False
    if video.protocols and VAST_4_PROTOCOL not in video.protocols:
        return False
    if video.minduration is not None and duration_s < video.minduration:
        return False
    return not (video.maxduration is not None and video.maxduration > 0 and duration_s > video.maxduration)


def bid_size(imp: Imp, campaign: ServingCampaign) -> tuple[int, int] | None:
    """The size a banner bid states: the first of the slot's exact sizes the creative has, else the creative's
    first size that fits one of the slot's ratios, else (a slot without sizes or ratios) the creative's first;
    None for video."""
    if imp.media != "banner":
        return None
    banner = imp.banner
    assert banner is not None
    own = [(s.w, s.h) for s in campaign.creative.banner_sizes]
    for size in banner.sizes():
        if size in own:
            return size
    flexible = [size for size in own if banner.fits(*size)]
    if flexible:
        return flexible[0]
    return own[0] if own else None


def placement(imp: Imp) -> str:
    """The imp's placement as the auction log keeps it: "WxH" of its first size, "banner", or "video"."""
    if imp.media == "banner":
        assert imp.banner is not None
        sizes, ratios = imp.banner.sizes(), imp.banner.ratios()
        if sizes:
            return f"{sizes[0][0]}x{sizes[0][1]}"
        return f"{ratios[0][0]}:{ratios[0][1]}" if ratios else "banner"
    return "video"


def iab_categories(category: str) -> tuple[str, ...]:
    """The IAB 1.0 tier-1 codes of one of our categories (``cat`` of a bid)."""
    return IAB_CATEGORIES.get(category, UNCATEGORIZED)


def blocked_categories(bcat: Iterable[str]) -> frozenset[str]:
    """Our categories a ``bcat`` list blocks; a tier-2 code blocks its whole tier-1 parent."""
    blocked_tier1 = {code.split("-", 1)[0] for code in bcat}
    return frozenset(
        category for category, codes in IAB_CATEGORIES.items() if any(code in blocked_tier1 for code in codes)
    )


def micros_rounded_up(amount: float) -> int:
    # str() gives the shortest decimal of the float, i.e. what the exchange wrote.
    return math.ceil(Decimal(str(amount)) * MICROS_PER_UNIT)


def _age(yob: int | None, at: datetime) -> int | None:
    if yob is None:
        return None
    age = at.year - yob
    return age if 0 <= age <= MAX_AGE else None


def _country(request: BidRequest) -> str | None:
    device, user = request.device, request.user
    code = (device.geo.country if device and device.geo else None) or (user.geo.country if user and user.geo else None)
    return None if code is None else COUNTRY_NAMES.get(code, code)


def screening_features(request: BidRequest, imp: Imp, *, at: datetime, publisher_id: str | None) -> RequestFeatures:
    """The bid-request filter's features of one imp, read from the request alone: the filter runs before the
    imp's auction context (campaign fit, blocks, floors) is built, so a request it sheds costs little. They equal
    ``bid_filter.request_features`` of the imp's context."""
    hour, day_of_week = hour_and_day_of_week(at)
    devicetype = request.device.devicetype if request.device else None
    return RequestFeatures(
        publisher_id=publisher_id,
        domain=request.domain,
        placement=placement(imp),
        device_type=None if devicetype is None else DEVICE_TYPES.get(devicetype),
        country=_country(request),
        channel="web" if request.site is not None else "app",
        content_type="video" if imp.media == "video" else "display",
        hour=hour,
        day_of_week=day_of_week,
    )


def to_context(
    request: BidRequest,
    imp: Imp,
    *,
    auction_id: str,
    at: datetime,
    reserve_price_micros: int,
    publisher_id: str | None = None,
    max_floor_cpm_micros: int | None = None,
    terms: ImpTerms | None = None,
    excluded: frozenset[str] = frozenset(),
) -> AuctionContext:
    """The auction context of one imp, at UTC time ``at``, for caller ``publisher_id``: contextual only
    when the request's privacy signals say so (``personal_data_refused``).

    ``max_floor_cpm_micros`` caps ``bidfloor`` (None: no cap); the reserve price still applies.
    """
    device, user = request.device, request.user
    if personal_data_refused(request) is not None:
        user = None
    devicetype = device.devicetype if device else None
    floor = micros_rounded_up(imp.bidfloor)
    if max_floor_cpm_micros is not None:
        floor = min(floor, max_floor_cpm_micros)
    return AuctionContext(
        auction_id=auction_id,
        at=at,
        user_id=user.id if user else None,
        country=_country(request),
        age=_age(user.yob, at) if user else None,
        gender=user.gender if user and user.gender in ("F", "M") else None,
        device_type=None if devicetype is None else DEVICE_TYPES.get(devicetype),
        channel="web" if request.site is not None else "app",
        content_type="video" if imp.media == "video" else "display",
        floor_cpm_micros=max(floor, reserve_price_micros),
        blocked_categories=blocked_categories(request.bcat),
        blocked_advertisers=frozenset(request.badv),
        publisher_id=publisher_id,
        eligible_campaigns=None if terms is None else terms.eligible,
        excluded_campaigns=excluded,
        deals=None if terms is None or not terms.deals else terms.deals,
        fixed_price_campaigns=frozenset() if terms is None else terms.fixed_price,
        first_price_campaigns=frozenset() if terms is None else terms.first_price,
        second_price_campaigns=frozenset() if terms is None else terms.second_price,
        request_id=request.id,
        imp_id=imp.id,
        domain=request.domain,
        placement=placement(imp),
    )
