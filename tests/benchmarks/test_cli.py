"""`adstream bench ...`: the benches' options and usage errors; a bench's module loads only when it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from benchmarks import cli


def test_the_bench_list_imports_no_bench():
    # Every `adstream` call loads benchmarks.cli; the benches bring MLflow, Spark, DuckDB and GX with them.
    probe = (
        "import sys; from typer.testing import CliRunner; from benchmarks import cli; "
        "result = CliRunner().invoke(cli.app, ['bench', '--help']); print(result.exit_code); print(result.stdout); "
        "print(sorted(name for name in sys.modules if name.startswith('benchmarks.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    code, *help_lines, loaded = done.stdout.strip().splitlines()
    assert code == "0" and loaded == "['benchmarks.cli']"
    listed = help_lines[help_lines.index("Commands:") + 1 :]
    names = [line.split()[0] for line in listed if line.strip() and not line.startswith("   ")]
    # the internal ones hidden
    assert names == ["auction", "billing", "streaming", "ingestion", "scorer", "optimizer", "bid-filter",
                     "bid-filter-mix"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["auction", "--modes", "naive", "--naive-requests", "4"],
            "--naive-requests (4) must be at least --connections (32)",
        ),
        (["auction", "--modes", "fast"], "'fast' is not one of echo, compiled, naive"),
        (["auction", "--family", "forest"], "'forest' is not one of logistic_regression"),
        (["scorer", "--family", "forest"], "'forest' is not one of logistic_regression"),
        (["scorer", "--champion", "/nonexistent/ctr-model-v1.skops"], "is not a file: run `make run` first"),
        (["streaming", "--soak", "soon"], "not a duration: 'soon' (e.g. 30m, 90s, 1h)"),
        (["streaming", "--only", "both"], "'both' is not one of 'throughput', 'continuous'"),
    ],
)
def test_bad_options_are_usage_errors(argv, message):
    result = CliRunner().invoke(cli.app, ["bench", *argv])
    assert result.exit_code == 2
    assert message in result.stderr
