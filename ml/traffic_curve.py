"""Reading gold/traffic_curve: the auctions per slot of the pacing day, which pacing plans along.

Apart from ``ml.calibrate``, which learns and writes the curve: a reader (the auction service, the dashboard)
needs delta-rs only, not the MLflow that calibration brings.
"""

from __future__ import annotations

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from adstream.contracts import Table
from adstream.days import DayClock
from adstream.settings import Settings


def traffic_counts(settings: Settings, clock: DayClock | None = None) -> list[int] | None:
    """Auctions per slot of the pacing day (gold/traffic_curve); None before it exists or when it was
    learned for other days (another length or origin) than ``clock``'s (default: the settings')."""
    location, options = settings.delta_rs_location(Table.GOLD_TRAFFIC_CURVE)
    try:
        rows = DeltaTable(location, storage_options=options or None).to_pandas()
    except TableNotFoundError:
        return None
    if rows.empty:
        return None
    clock = clock or DayClock.of(settings)
    # Learned for the same slots: the same length, origins whole days apart.
    length, origin = int(rows["day_length_s"].iloc[0]), int(rows["day_origin_s"].iloc[0])
    if (length, origin % length) != (clock.length_s, clock.origin_s % clock.length_s):
        return None
    return [int(v) for v in rows.sort_values("slot")["auctions"]]
