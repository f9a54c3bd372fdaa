"""``python -m auction_service``: the auction service under uvicorn."""

from __future__ import annotations

import sys

from adstream.settings import get_settings
from auction_service.api.app import create_app
from auction_service.fastpath.server import run


def main() -> int:
    settings = get_settings()
    run(create_app(settings), host=settings.bind_host, port=settings.auction_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
