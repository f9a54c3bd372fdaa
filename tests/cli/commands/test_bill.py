"""`adstream bill`: a bad hour or range is a usage error, before any Spark session starts."""

import pytest

from tests.cli.conftest import invoke
from tests.conftest import make_settings


@pytest.mark.parametrize(
    "argv",
    [[], ["--hour", "2026-11-24T10:30"], ["--from", "2026-11-24T10:00"], ["--hour", "2026-11-24T10:00", "--step", "x"]],
)
def test_bill_refuses_a_bad_hour_or_range(argv, tmp_path):
    result = invoke(make_settings(tmp_path), ["bill", *argv])
    assert result.exit_code == 2
    assert "Usage: adstream bill" in result.stderr
