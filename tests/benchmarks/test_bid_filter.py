"""`adstream bench bid-filter` on a small log: its synthetic traffic, its figures and its report."""

import json

from typer.testing import CliRunner

from benchmarks import cli
from benchmarks.bid_filter import UNFILLABLE_SHARE, synthetic_auction_log


def test_the_synthetic_log_has_the_unfillable_share_asked_and_they_never_fill():
    log = synthetic_auction_log(20_000, seed=3)
    assert abs((~log["fillable"]).mean() - UNFILLABLE_SHARE) < 0.02
    assert not log.loc[~log["fillable"], "filled"].any()
    assert 0.7 < log.loc[log["fillable"], "filled"].mean() < 0.95
    assert log["event_time"].is_monotonic_increasing
    assert (log.loc[log["filled"], "clearing_price_cpm_micros"] > 0).all()


def test_the_bench_times_the_filter_and_reports_what_it_sheds(tmp_path):
    output = tmp_path / "bid_filter.json"
    result = CliRunner().invoke(
        cli.app, ["bench", "bid-filter", "--requests", "5000", "--calls", "2000", "--repeats", "1",
                  "--output", str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("call") and lines[1].startswith("score") and lines[2].startswith("screen")
    assert "unfillable shed" in result.stdout and "revenue retained" in result.stdout
    figures = json.loads(output.read_text())
    # Loose on purpose: the 50 µs bound is the bench's to check on a quiet machine, not the suite's.
    assert 0 < figures["screen"]["p50_us"] < figures["screen"]["max_us"]
    assert figures["screen"]["p99_us"] < 1_000
    assert figures["holdout_requests"] == 1_000 and figures["calls"] == 2_000
    assert figures["unfillable_shed_share"] >= 0.8 and figures["holdout"]["revenue_retained"] >= 0.99
