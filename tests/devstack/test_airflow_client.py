"""The pure parts of the Airflow REST client `make run` drives DAGs with (the live path runs in `make run`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devstack.airflow_client import AirflowRunFailed, DagRun, admin_password, first_run_after

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def api_run(run_id: str, queued_at: str | None, state: str = "queued", **extra: str | None) -> dict:
    return {"dag_id": "feature_build", "dag_run_id": run_id, "state": state, "run_type": "asset_triggered",
            "queued_at": queued_at, "start_date": extra.get("start"), "end_date": extra.get("end")}  # fmt: skip


def test_a_run_is_read_from_the_api_with_its_duration():
    run = DagRun.from_api(api_run("r1", "2026-11-24T10:00:00Z", "success",
                                  start="2026-11-24T10:00:05Z", end="2026-11-24T10:01:35.5Z"))  # fmt: skip
    assert run.queued_at == T0 and run.state == "success"
    assert run.seconds == 90.5
    assert DagRun.from_api(api_run("r2", None)).seconds is None


def test_the_run_an_asset_event_queued_is_the_first_at_or_after_the_upstream_run():
    runs = [
        DagRun.from_api(api_run("older", "2026-11-24T09:59:59Z")),
        DagRun.from_api(api_run("later", "2026-11-24T10:05:00Z")),
        DagRun.from_api(api_run("first", "2026-11-24T10:00:00Z")),
        DagRun.from_api(api_run("unqueued", None)),
    ]
    assert first_run_after(runs, T0).run_id == "first"
    assert first_run_after(runs, datetime(2026, 11, 24, 11, tzinfo=UTC)) is None
    cron_tick = DagRun.from_api(api_run("cron", "2026-11-24T10:00:00Z") | {"run_type": "scheduled"})
    assert first_run_after([cron_tick, *runs], T0, "asset_triggered").run_id == "first"


def test_a_missing_password_file_says_to_start_airflow(tmp_path):
    with pytest.raises(AirflowRunFailed, match="make up"):
        admin_password(tmp_path)
    (tmp_path / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "s3cret"}')
    assert admin_password(tmp_path) == "s3cret"
