"""`make run`'s wait for the stream: it waits for the simulation's counts, not its latest event time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table
from devstack.run import Counts, Simulation, StageFailed, landed_counts, reconciliation_line, wait_for_stream
from spark_jobs.billing.reports import reconciliation_path
from tests.conftest import make_settings

START = datetime(2026, 11, 24, 12, 30, 20, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def write_silver(settings, times: list[datetime]) -> None:
    location, _ = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    write_deltalake(location, pa.table({"event_time": pa.array(times, STAMP)}), mode="append")


def write_gold(settings, rows: list[tuple[datetime, int]]) -> None:
    location, _ = settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    frame = pa.table({"minute": pa.array([m for m, _ in rows], STAMP), "impressions": [n for _, n in rows]})
    write_deltalake(location, frame, mode="append")


def test_counts_only_what_landed_since_the_simulation_began(tmp_path):
    settings = make_settings(tmp_path)
    assert landed_counts(settings, START) == Counts(0, 0)  # no tables yet
    earlier_run = START - timedelta(hours=2)
    write_silver(settings, [earlier_run, START + timedelta(seconds=1), START + timedelta(seconds=50)])
    write_gold(settings, [(earlier_run, 40), (START.replace(second=0), 3), (START + timedelta(minutes=1), 4)])
    assert landed_counts(settings, START) == Counts(events=2, impressions=7)


def test_a_later_batch_is_not_taken_for_a_caught_up_stream(tmp_path):
    settings = make_settings(tmp_path)
    # The newest event has landed, but only 2 of the 3 events the simulator sent.
    write_silver(settings, [START + timedelta(seconds=1), START + timedelta(seconds=60)])
    write_gold(settings, [(START.replace(second=0), 2)])
    with pytest.raises(StageFailed, match=r"holds 2 events .* of the 3 \(2\)"):
        wait_for_stream(settings, START, Counts(events=3, impressions=2), timeout_s=0.5)
    write_silver(settings, [START + timedelta(seconds=30)])
    assert wait_for_stream(settings, START, Counts(events=3, impressions=2), timeout_s=5) == Counts(3, 2)


def test_the_bill_line_says_what_reconciliation_found(tmp_path):
    settings = make_settings(tmp_path)
    hour = START.replace(minute=0, second=0)
    assert reconciliation_line(settings, hour) == "not reconciled"
    path = reconciliation_path(settings.reports_dir.resolve(), hour)
    path.parent.mkdir(parents=True)
    path.write_text('{"checked": ["bill", "ledger", "auction log"], "mismatches": []}')
    assert reconciliation_line(settings, hour) == "0 campaign(s) differ from the ledger and auction log"
    path.write_text('{"checked": ["bill", "ledger"], "mismatches": [{"campaign_id": "cmp-1", "bill_micros": 5}]}')
    assert reconciliation_line(settings, hour) == "1 campaign(s) differ from the ledger: cmp-1"


@pytest.mark.parametrize(("rate", "in_flight"), [(20, 16), (64, 16), (65, 17), (200, 50), (1000, 250)])
def test_visits_in_flight_grow_with_the_rate(rate, in_flight):
    # 0.25 s per visit: 200/s needs 50 in flight; never below 16
    assert Simulation(rate=rate).concurrency == in_flight
