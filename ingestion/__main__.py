"""python -m ingestion [advertising|ads16|amazon|all]: load Kaggle files into bronze Delta, gated by GX."""

from __future__ import annotations

import argparse
import sys

from adstream.settings import get_settings
from ingestion.pipeline import DATASETS, IngestionFailed, ingest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion", description=__doc__.split(":")[1].strip())
    parser.add_argument("dataset", choices=[*DATASETS, "all"], nargs="?", default="all")
    parser.add_argument("--load-id", default=None, help="defaults to a timestamped id")
    args = parser.parse_args(argv)
    settings = get_settings()
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    try:
        for name in names:
            print(ingest(settings, name, args.load_id).summary(), flush=True)
    except (IngestionFailed, FileNotFoundError) as exc:
        print(f"ingestion failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
