"""`adstream up|down|status|airflow|run`: the local stack's commands."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from devstack import cli


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_an_unknown_service_is_an_error_with_status_2(command):
    result = CliRunner().invoke(cli.app, [command, "zookeeper"])
    assert result.exit_code == 2
    assert "error: unknown service(s) ['zookeeper']" in result.stderr


def test_run_reads_durations_as_the_simulator_does():
    result = CliRunner().invoke(cli.app, ["run", "--duration", "soon"])
    assert result.exit_code == 2
    assert "'soon' is not a duration above 0" in result.stderr
