"""The bid side of the OpenRTB 2.6 bidder: a filled imp's ``Bid``, its markup and its notices.

- ``adm`` carries the creative. A banner is HTML: the ad's image (``/v1/creatives/{ad_id}/image``: the ADS-16
  image, or the title drawn as SVG for an ad without one) and its title, sized to the bid's ``w``/``h``, the
  whole a link to the signed click URL, which records the click and redirects to the campaign's landing page.
  A video is a VAST 4.0 inline document: the media file, its duration, the impression, start and complete
  tracking and the click-through (the same signed click URL).
- ``nurl`` is the win notice: the signed ``win`` URL with ``price=${AUCTION_PRICE}``, which records the win and
  the exchange's clearing price (never billed to the advertiser: it is our media cost).
- ``burl`` is the billing notice: the auction's ``impression`` URL with the billing token
  (``tracking.BILLING``, ``notice=billing``). An exchange fires it from its servers when the impression is
  billable, and that is the impression a CPM campaign pays for; its caller's user agent and address are the
  exchange's, so invalid traffic was judged on the bid request's ``device`` before the auction instead, and the
  URL carries that device's address and agent, signed (``tracking.device_parameters``), for the event to record
  as its own. A VAST ``Impression`` is the device-side impression URL (its caller is judged), and one auction's
  impression counts once, whichever fires first.
- ``mtype`` is 1 (banner) or 2 (video); ``cat`` the IAB 1.0 codes of the ad's category with ``cattax`` 1;
  ``adomain`` the advertiser's domain (``Creative.adomain``; left out when the campaign states none);
  ``dealid`` the deal the bid is made through.
- ``price`` is the clearing price per thousand impressions in USD, the one place money is a float (the spec
  says so); it is computed from integer micros.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from xml.sax.saxutils import escape as xml_escape

from pydantic import BaseModel, Field

from adstream.events import MICROS_PER_UNIT
from auction_service.domain import ServingCampaign
from auction_service.serving.openrtb import CURRENCY, iab_categories

AUCTION_PRICE_MACRO = "${AUCTION_PRICE}"
MTYPE_BANNER, MTYPE_VIDEO = 1, 2
TITLE_HEIGHT_PX = 20


class Bid(BaseModel):
    id: str
    impid: str
    price: float = Field(description="the clearing price, USD per thousand impressions")
    adid: str
    crid: str
    cid: str
    cat: list[str] = Field(description="IAB Content Taxonomy 1.0 tier-1 codes of the ad's category")
    cattax: int = 1
    adomain: list[str] | None = None
    mtype: int = Field(description="1 banner, 2 video")
    nurl: str = Field(description="the win notice; the exchange substitutes ${AUCTION_PRICE}")
    burl: str = Field(description="the billing notice: the billable impression")
    adm: str
    w: int | None = None
    h: int | None = None
    dur: int | None = Field(default=None, description="a video's duration in seconds")
    dealid: str | None = None


class SeatBid(BaseModel):
    seat: str
    bid: list[Bid]


class BidResponse(BaseModel):
    """The 200 body of ``POST /openrtb2/auction``. No bid at all is HTTP 204 without a body, or with
    OPENRTB_NO_BID_BODY a 200 of ``id``, an empty ``seatbid`` and ``nbr`` (``no_bid_response``)."""

    id: str
    bidid: str | None = None
    seatbid: list[SeatBid]
    cur: str = CURRENCY
    nbr: int | None = Field(default=None, description="the no-bid reason code (OpenRTB 3.0 list), with no seatbid")


def banner_markup(image_url: str, title: str, click_url: str, size: tuple[int, int] | None) -> str:
    """A banner's ``adm``: the image over one line of title, a link to the click URL as a whole."""
    w, h = size or (300, 250)
    text = html.escape(title, quote=True)
    return (
        f'<a href="{html.escape(click_url, quote=True)}" target="_blank" rel="noopener" '
        f'style="display:block;width:{w}px;height:{h}px;overflow:hidden;background:#fff;color:#222;'
        f'text-decoration:none;font:13px/{TITLE_HEIGHT_PX}px sans-serif">'
        f'<img src="{html.escape(image_url, quote=True)}" alt="{text}" width="{w}" '
        f'height="{max(h - TITLE_HEIGHT_PX, 1)}" '
        f'style="display:block;object-fit:contain"><span style="display:block;padding:0 4px;white-space:nowrap;'
        f'overflow:hidden;text-overflow:ellipsis">{text}</span></a>'
    )


def _duration(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def vast_markup(auction_id: str, campaign: ServingCampaign, title: str, urls: Mapping[str, str]) -> str:
    """A VAST 4.0 inline document for a campaign's video creative."""
    video = campaign.creative.video
    assert video is not None
    url = lambda event: f"<![CDATA[{urls[event]}]]>"  # noqa: E731 - a CDATA wrapper, used five times
    bitrate = f' bitrate="{video.bitrate_kbps}"' if video.bitrate_kbps else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<VAST version="4.0"><Ad id="{xml_escape(auction_id)}"><InLine>'
        "<AdSystem>AdStream</AdSystem>"
        f"<AdServingId>{xml_escape(auction_id)}</AdServingId>"
        f"<AdTitle>{xml_escape(title)}</AdTitle>"
        f"<Impression>{url('impression')}</Impression>"
        f'<Creatives><Creative id="{xml_escape(campaign.ad_id)}" adId="{xml_escape(campaign.ad_id)}">'
        f'<UniversalAdId idRegistry="AdStream">{xml_escape(campaign.ad_id)}</UniversalAdId>'
        f"<Linear><Duration>{_duration(video.duration_s)}</Duration>"
        f'<TrackingEvents><Tracking event="start">{url("video_start")}</Tracking>'
        f'<Tracking event="complete">{url("video_complete")}</Tracking></TrackingEvents>'
        f'<VideoClicks><ClickThrough id="adstream">{url("click")}</ClickThrough></VideoClicks>'
        f'<MediaFiles><MediaFile delivery="progressive" type="{xml_escape(video.mime)}" width="{video.width}" '
        f'height="{video.height}"{bitrate}><![CDATA[{video.url}]]></MediaFile></MediaFiles>'
        "</Linear></Creative></Creatives></InLine></Ad></VAST>"
    )


def bid(
    *,
    auction_id: str,
    imp_id: str,
    campaign: ServingCampaign,
    price_cpm_micros: int,
    urls: Mapping[str, str],
    image_url: str,
    title: str,
    size: tuple[int, int] | None,
    video: bool,
    deal_id: str | None,
) -> Bid:
    """The bid of one filled imp; ``urls`` are the auction's signed event URLs by event type."""
    creative = campaign.creative
    if video:
        assert creative.video is not None
        adm, mtype, dur = vast_markup(auction_id, campaign, title, urls), MTYPE_VIDEO, creative.video.duration_s
        size = (creative.video.width, creative.video.height)
    else:
        adm, mtype, dur = banner_markup(image_url, title, urls["click"], size), MTYPE_BANNER, None
    return Bid(
        id=auction_id,
        impid=imp_id,
        price=price_cpm_micros / MICROS_PER_UNIT,
        adid=campaign.ad_id,
        crid=campaign.ad_id,
        cid=campaign.campaign_id,
        cat=list(iab_categories(campaign.category)),
        adomain=[creative.adomain] if creative.adomain else None,
        mtype=mtype,
        nurl=f"{urls['win']}&price={AUCTION_PRICE_MACRO}",
        burl=urls["billing"],
        adm=adm,
        w=None if size is None else size[0],
        h=None if size is None else size[1],
        dur=dur,
        dealid=deal_id,
    )


def no_bid_response(request_id: str, nbr: int) -> dict[str, object]:
    """A no-bid as a body, as OpenRTB 2.6's implementation notes show it: ``{"id", "seatbid": [], "nbr"}``."""
    return {"id": request_id, "seatbid": [], "nbr": nbr}


def bid_response(request_id: str, bid_id: str, bids: list[tuple[str, Bid]]) -> BidResponse:
    """The response of a request's filled imps, ``(seat, bid)`` each, one seat bid per seat in first-bid order."""
    seats: dict[str, list[Bid]] = {}
    for seat, one in bids:
        seats.setdefault(seat, []).append(one)
    return BidResponse(
        id=request_id,
        bidid=bid_id,
        seatbid=[SeatBid(seat=seat, bid=seat_bids) for seat, seat_bids in seats.items()],
        cur=CURRENCY,
    )
