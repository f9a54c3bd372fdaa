"""GET /v1/creatives/{ad_id}/image: the image an OpenRTB bid's markup shows, at a stable URL.

An ADS-16 ad is its image from the dataset (``KAGGLE_DIR``); an ad without one (the Amazon titles) is its
title drawn as SVG. Public like an ad server's CDN: the browser that renders an ad sends no key. Images
are immutable per ad, so they are cached for a day.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from xml.sax.saxutils import escape

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from auction_service.api.deps import StateDep
from auction_service.api.schemas import INVALID_REQUEST, not_found
from auction_service.serving.bodies import ID_PATTERN

router = APIRouter(prefix="/v1/creatives", tags=["creatives"])
CACHE = {"Cache-Control": "public, max-age=86400, immutable"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
LINE_CHARS, LINES = 28, 4


def title_svg(title: str) -> str:
    """A text ad's image: its title in up to four lines on a plain card (300x250, scaled by the markup)."""
    words, lines, line = title.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > LINE_CHARS:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    if len(lines) > LINES:
        lines = [*lines[: LINES - 1], lines[LINES - 1][: LINE_CHARS - 1] + "…"]
    text = "".join(
        f'<text x="150" y="{95 + 26 * n}" text-anchor="middle">{escape(row)}</text>' for n, row in enumerate(lines)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="250" viewBox="0 0 300 250">'
        '<rect width="300" height="250" rx="8" fill="#f4f6fb" stroke="#c9d1e4"/>'
        f'<g font-family="sans-serif" font-size="17" fill="#1d2b4f">{text}</g></svg>'
    )


@router.get(
    "/{ad_id}/image",
    response_class=Response,
    responses={
        200: {
            "description": "the ad's image",
            "content": {"image/png": {}, "image/jpeg": {}, "image/gif": {}, "image/svg+xml": {}},
        },
        **not_found("no such ad", "no ad ad-42 in the ad catalog (gold/ad_features)"),
        **INVALID_REQUEST,
    },
)
def creative_image(ad_id: Annotated[str, PathParam(max_length=64, pattern=ID_PATTERN)], state: StateDep) -> Response:
    ad = state.features.current.ads.get(ad_id)
    if ad is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ad {ad_id} in the ad catalog (gold/ad_features)")
    if ad.image_path:
        root = Path(state.settings.kaggle_dir).resolve()
        image = (root / ad.image_path).resolve()
        # The path comes from the lake, not the caller; still, nothing outside the dataset is served.
        if image.is_relative_to(root) and image.suffix.lower() in IMAGE_TYPES and image.is_file():
            return FileResponse(image, media_type=IMAGE_TYPES[image.suffix.lower()], headers=CACHE)
    return Response(title_svg(ad.title or ad.category or ad_id), media_type="image/svg+xml", headers=CACHE)
