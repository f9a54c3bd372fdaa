"""The Airflow tasks' callables run on the process's resources (the DAG tests run them under Airflow)."""

import pytest

from cli import tasks
from cli.resources import Resources
from devstack import services
from tests.conftest import make_settings


@pytest.fixture
def resources(tmp_path, monkeypatch) -> Resources:
    built = Resources(
        make_settings(tmp_path, kaggle_dir=services.PROJECT_ROOT / "data" / "kaggle", reports_dir=tmp_path / "reports")
    )
    monkeypatch.setattr(tasks, "resources", lambda: built)
    return built


def test_ingest_returns_the_load_as_plain_values_and_a_rerun_changes_nothing(resources, capsys):
    first = tasks.ingest("advertising")
    assert first["dataset"] == "advertising" and first["rows_written"] == {"advertising": 1000}
    assert not first["unchanged"] and first["validation_results"]
    again = tasks.ingest("advertising")
    assert again["unchanged"] and again["rows_written"] == {}
    assert "1 files unchanged, nothing to do" in capsys.readouterr().out
    assert not resources.spark_started
