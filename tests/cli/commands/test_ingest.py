"""`adstream ingest`: one summary line per dataset, or one clear failure line and exit 1."""

from devstack import services
from tests.cli.conftest import invoke
from tests.conftest import make_settings


def test_ingest_prints_a_summary_per_dataset_and_a_rerun_does_nothing(tmp_path):
    settings = make_settings(tmp_path, kaggle_dir=services.PROJECT_ROOT / "data" / "kaggle", reports_dir=tmp_path / "r")
    first = invoke(settings, ["ingest", "advertising", "--load-id", "load-1"])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("advertising: 1 changed / 0 removed of 1 files; rows written advertising=1000")
    assert "load load-1" in first.stdout
    again = invoke(settings, ["ingest", "advertising"])
    assert again.exit_code == 0 and "1 files unchanged, nothing to do" in again.stdout


def test_ingest_without_the_files_fails_naming_what_is_missing(tmp_path):
    result = invoke(make_settings(tmp_path, kaggle_dir=tmp_path / "nowhere"), ["ingest"])
    assert result.exit_code == 1
    assert result.stderr.startswith("ingestion failed: ") and "nowhere" in result.stderr


def test_an_unknown_dataset_is_a_usage_error(tmp_path):
    result = invoke(make_settings(tmp_path), ["ingest", "criteo"])
    assert result.exit_code == 2 and "'criteo' is not one of" in result.stderr
