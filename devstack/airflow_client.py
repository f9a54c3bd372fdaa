"""Driving the running Airflow through its public REST API (v2), as a data engineer would.

`make run` uses it to unpause DAGs, trigger ``kaggle_ingestion`` and wait for the runs
that Airflow's own scheduler starts from it (``feature_build`` and ``ctr_training`` are
Asset-scheduled). The calls go through the official client, ``apache-airflow-client``
(its version is Airflow's); what is ours is waiting for the run an Asset event started
(``first_run_after``, ``AirflowClient.wait_for_run``). Authentication is the simple auth
manager's JWT: ``POST /auth/token`` (not part of the public API the client covers) with
the password `airflow standalone` generated into AIRFLOW_HOME (local mode only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import airflow_client.client as airflow_api
import httpx
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.exceptions import NotFoundException
from airflow_client.client.models import DAGPatchBody, DAGRunResponse, TriggerDAGRunPostBody

from adstream.settings import Settings

FINISHED = frozenset({"success", "failed"})
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"


class AirflowRunFailed(RuntimeError):
    """A DAG run failed or did not finish in time; the message names the run, its tasks and logs."""


@dataclass(frozen=True)
class DagRun:
    dag_id: str
    run_id: str
    state: str
    run_type: str
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None

    @classmethod
    def from_api(cls, response: DAGRunResponse) -> DagRun:
        return cls(
            dag_id=response.dag_id,
            run_id=response.dag_run_id,
            state=_value(response.state),
            run_type=_value(response.run_type),
            queued_at=response.queued_at,
            start_date=response.start_date,
            end_date=response.end_date,
        )

    @property
    def seconds(self) -> float | None:
        if self.start_date is None or self.end_date is None:
            return None
        return (self.end_date - self.start_date).total_seconds()


def _value(enum: Any) -> str:
    return "" if enum is None else str(getattr(enum, "value", enum))


def first_run_after(runs: Sequence[DagRun], after: datetime, run_type: str | None = None) -> DagRun | None:
    """The earliest run queued at or after ``after`` (of ``run_type``, when given: e.g. the run an
    Asset event created, not a cron tick that happened to come at the same time)."""
    later = [
        run for run in runs if run.queued_at is not None and run.queued_at >= after and run_type in (None, run.run_type)
    ]
    return min(later, key=lambda run: run.queued_at or after, default=None)


def admin_password(airflow_home: Path) -> str:
    path = airflow_home / PASSWORD_FILE
    try:
        return json.loads(path.read_text())["admin"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise AirflowRunFailed(f"no admin password in {path}: is `airflow standalone` (make up) running?") from exc


class AirflowClient:
    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        self.base_url = f"http://{settings.bind_host}:{settings.airflow_port}"
        self.log_dir = settings.airflow_home.resolve() / "logs"
        self._timeout_s = timeout_s
        token = self._token(admin_password(settings.airflow_home.resolve()), timeout_s)
        self._api = airflow_api.ApiClient(airflow_api.Configuration(host=self.base_url, access_token=token))
        self._dags = DAGApi(self._api)
        self._dag_runs = DagRunApi(self._api)
        self._task_instances = TaskInstanceApi(self._api)

    def _token(self, password: str, timeout_s: float) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": "admin", "password": password}, timeout=timeout_s
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def close(self) -> None:
        self._api.rest_client.pool_manager.clear()  # the generated client has no close of its own

    def wait_for_dags(self, dag_ids: Sequence[str], timeout_s: float = 180.0) -> None:
        """Until the DAG processor has parsed each DAG (the API answers 404 before)."""
        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        while missing:
            missing = [dag_id for dag_id in missing if not self._parsed(dag_id)]
            if missing and time.monotonic() > deadline:
                raise AirflowRunFailed(f"Airflow has not parsed {missing} after {timeout_s:.0f}s; see dags/ imports")
            if missing:
                time.sleep(2.0)

    def _parsed(self, dag_id: str) -> bool:
        try:
            self._dags.get_dag(dag_id, _request_timeout=self._timeout_s)
        except NotFoundException:
            return False
        return True

    def unpause(self, dag_id: str) -> None:
        self._dags.patch_dag(dag_id, DAGPatchBody(is_paused=False), _request_timeout=self._timeout_s)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> DagRun:
        body = TriggerDAGRunPostBody(logical_date=None, conf=dict(conf or {}))
        return DagRun.from_api(self._dag_runs.trigger_dag_run(dag_id, body, _request_timeout=self._timeout_s))

    def runs(self, dag_id: str, limit: int = 20) -> list[DagRun]:
        response = self._dag_runs.get_dag_runs(
            dag_id, order_by=["-run_after"], limit=limit, _request_timeout=self._timeout_s
        )
        return [DagRun.from_api(run) for run in response.dag_runs]

    def run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.from_api(self._dag_runs.get_dag_run(dag_id, run_id, _request_timeout=self._timeout_s))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        response = self._task_instances.get_task_instances(dag_id, run_id, _request_timeout=self._timeout_s)
        return {ti.task_id: _value(ti.state) or "none" for ti in response.task_instances}

    def wait_for_run(
        self,
        dag_id: str,
        *,
        run_id: str | None = None,
        created_after: datetime | None = None,
        run_type: str | None = None,
        timeout_s: float = 900.0,
        progress: Callable[[str], None] = print,
    ) -> DagRun:
        """Until the run (given, or the first one queued after ``created_after``) finishes; it must succeed."""
        deadline = time.monotonic() + timeout_s
        last_line = ""
        while time.monotonic() < deadline:
            run = (
                self.run(dag_id, run_id)
                if run_id
                else first_run_after(self.runs(dag_id), created_after or datetime.min, run_type)
            )
            if run is not None:
                run_id = run.run_id
                states = self.task_states(dag_id, run.run_id)
                line = f"{dag_id} {run.state}: " + ", ".join(f"{task} {state}" for task, state in states.items())
                if line != last_line:
                    progress(line)
                    last_line = line
                if run.state == "success":
                    return run
                if run.state == "failed":
                    failed = [task for task, state in states.items() if state in ("failed", "upstream_failed")]
                    raise AirflowRunFailed(
                        f"DAG run {dag_id}/{run.run_id} failed (tasks {failed}); task logs under "
                        f"{self.log_dir / f'dag_id={dag_id}' / f'run_id={run.run_id}'}"
                    )
            time.sleep(3.0)
        raise AirflowRunFailed(
            f"{dag_id} run {run_id or '(not created yet)'} did not finish within {timeout_s:.0f}s; "
            f"see the Airflow UI at {self.base_url}"
        )
