"""What every Kaggle parser returns: accepted rows, rejected rows with reasons, and counts.

Parsers are pure: bytes (or a folder listing) in, a ``ParsedSource`` out. Nothing
is dropped silently: a row that cannot be parsed becomes a ``Rejection`` with
its origin and a reason, and a line that is not data at all (a repeated header,
an empty row) is counted in ``skipped`` under a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

# Lineage columns every bronze table carries (added by the writer, except the
# first two, which parsers fill because only they know where a row came from).
SOURCE_FILE = "source_file"  # path relative to KAGGLE_DIR, '/'-separated
SOURCE_ROW = "source_row"  # 1-based record number within the file (not the line number)
LOAD_ID = "load_id"
LOADED_AT = "loaded_at"


class SourceError(ValueError):
    """A whole file or folder is unusable (wrong delimiter, missing column, unreadable, missing path)."""


@dataclass(frozen=True)
class Rejection:
    source_file: str
    source_row: int | None  # None when the whole file is rejected
    reason: str
    raw: str | None = None  # the offending text, truncated, for a person to look at


@dataclass
class ParsedSource:
    """Accepted rows (one DataFrame per bronze table) plus everything that was not accepted."""

    frames: dict[str, pd.DataFrame]
    rejections: list[Rejection] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def rejections_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(r.source_file, r.source_row, r.reason, r.raw) for r in self.rejections],
            columns=[SOURCE_FILE, SOURCE_ROW, "reason", "raw"],
        ).astype({SOURCE_ROW: "Int64"})


def truncate_raw(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
