"""`adstream maintain | smoke`: what they refuse before any Spark session starts."""

from typer.testing import CliRunner

from cli.main import app
from cli.resources import Resources
from tests.cli.conftest import invoke
from tests.conftest import make_settings


def test_maintain_refuses_a_short_retention_without_the_flag(tmp_path):
    result = invoke(make_settings(tmp_path), ["maintain", "--retention-hours", "1"])
    assert result.exit_code == 2 and "allow-short-retention" in result.stderr


def test_smoke_verify_needs_the_run_id_that_produce_printed(tmp_path):
    result = invoke(make_settings(tmp_path), ["smoke", "verify"])
    assert result.exit_code == 2 and "`verify` needs the --run-id that `produce` printed" in result.stderr


def test_a_refused_command_starts_no_spark(tmp_path):
    resources = Resources(make_settings(tmp_path))
    for args in (["maintain", "--retention-hours", "1"], ["smoke", "verify"], ["features", "--start", "nope"]):
        assert CliRunner().invoke(app, args, obj=resources).exit_code == 2, args
    assert not resources.spark_started
