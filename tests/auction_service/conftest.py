"""The auction service with real parts: a Kafka broker, a SQLite campaign store per module, an MLflow champion.

The champion is trained once per run; each module serves it from its own copy of the
MLflow database (the artifacts are shared, read only), so a module may move the
``champion`` alias without the others seeing it.

MLflow 3 downloads ``models:/ctr-model/<version>``, and registers a version from a logged
model, through its process-wide URI whatever URI the caller passes
(``ModelsArtifactRepository._get_model_uri_infos``). So each module points that URI at its
copy while it runs (``mlflow_process_uri``): otherwise the service would load whatever
store an earlier test left there, or create ``./mlflow.db``.

Each module's service runs with the fast path on (AUCTION_FAST_PATH, the default); a module
that tests routing runs both ways by overriding the ``fast_path`` fixture with
``@pytest.fixture(scope="module", **BOTH_WAYS)`` (its service is then set up once per way).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adstream.events import CampaignInstruction, CampaignSpec, Targeting
from adstream.messaging import Record, read_to_end
from adstream.settings import Settings
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from auction_service.fastpath import server as serving
from auction_service.serving.state import ServiceState
from ml.tracking import tracking_client
from ml.train import train
from tests.conftest import free_port, make_settings, shared_namespace
from tests.ml.conftest import new_store, one_openmp_thread
from tests.ml.factories import training_frame

TOKEN = {"Authorization": "Bearer local-dev-token"}
# A real browser's agent: test clients' own agents ("testclient", "python-httpx/…") are GIVT non-browser agents.
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
BROWSER = {"User-Agent": BROWSER_UA}


def signed_event(
    auction: dict[str, Any], event_type: str, event_id: str | None = None, *, at: datetime | None = None, **fields: Any
) -> dict[str, Any]:
    """The body of ``POST /v1/events`` for one event of a served ``/v1/auction`` answer: its token, a browser's agent.

    ``at``: the event_time; a click sent right after its impression is a too-fast click (GIVT), so
    tests date the impression a few seconds back (``impression_time``).
    """
    body: dict[str, Any] = {
        "event_id": event_id or f"{auction['auction_id'][:40]}-{event_type}", "event_type": event_type,
        "auction_id": auction["auction_id"], "token": auction["event_tokens"][event_type], "user_agent": BROWSER_UA,
    }  # fmt: skip
    if at is not None:
        body["event_time"] = at.isoformat()
    return {**body, **fields}


def impression_time() -> datetime:
    """A moment just after an auction served now: long enough before a click sent now that it is not too fast."""
    return datetime.now(UTC) - timedelta(seconds=2)


# Fixture parameters for AUCTION_FAST_PATH on and off.
BOTH_WAYS: dict[str, Any] = {"params": [True, False], "ids": ["fast-path-on", "fast-path-off"]}


def instruction(campaign_id: str, **overrides: object) -> CampaignInstruction:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "advertiser_id": f"adv-{campaign_id}", "ad_id": f"ad-{campaign_id}", "category": "Automotive",
        "pricing_model": "CPC", "bid_micros": 500_000, "total_budget_micros": 50_000_000,
        "daily_budget_micros": 20_000_000, "flight_start": now - timedelta(days=1),
        "flight_end": now + timedelta(days=7), "frequency_cap_per_day": 50,
    }  # fmt: skip
    values.update(overrides)
    return CampaignInstruction(
        instruction_id=f"create-{campaign_id}", action="create", campaign_id=campaign_id, issued_at=now,
        campaign=CampaignSpec(**values),
    )  # fmt: skip


def stop(campaign_id: str) -> CampaignInstruction:
    return CampaignInstruction(
        instruction_id=f"stop-{campaign_id}", action="stop", campaign_id=campaign_id, issued_at=datetime.now(UTC)
    )


def open_service(settings: Settings, *instructions: CampaignInstruction) -> ServiceState:
    """A service state (not started) whose store holds the given campaigns, already loaded for serving."""
    state = ServiceState.open(settings)
    with state.sessions() as session:
        for applied in instructions:
            store.apply_instruction(session, applied)
    state.refresh_campaigns(force=True)
    return state


@contextmanager
def running_service(settings: Settings, *instructions: CampaignInstruction) -> Iterator[ServiceState]:
    """``open_service``, started (housekeeping, model watcher, producers) and stopped afterwards."""
    state = open_service(settings, *instructions)
    state.start()
    try:
        yield state
    finally:
        state.stop()


@contextmanager
def live_server(app: FastAPI, *, fast_path: bool = True) -> Iterator[str]:
    """``app`` behind the service's own uvicorn set-up on a free loopback port; yields its base URL.

    ``fast_path`` as AUCTION_FAST_PATH: the coalescing protocol, or uvicorn's own.
    """
    port = free_port()
    server = uvicorn.Server(serving.config(app, host="127.0.0.1", port=port, fast_path=fast_path))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def topic_records(settings: Settings, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its current end (raw keys and values), read without a consumer group."""
    return read_to_end(settings, topic, timeout_s=30)


@contextmanager
def mlflow_process_uri(uri: str) -> Iterator[str]:
    """MLflow's process-wide tracking URI (and its environment variable) set to ``uri`` meanwhile."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def champion_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database where ``ml.train`` left ctr-model@champion = version 1.

    Registered with a prior of 50 %, the training data's own click rate, so its calibration is
    about the identity: these modules' budgets and bids are sized for pCTRs at that rate, and the
    simulator's test needs a served pCTR far from the true CTR (calibration has its own tests).
    """
    workdir = tmp_path_factory.mktemp("champion")
    template = workdir / "template.db"
    tracking_client(f"sqlite:///{template}").search_experiments()
    settings = make_settings(workdir, mlflow_tracking_uri=new_store(workdir, template), ctr_prior=0.5)
    with one_openmp_thread(), mlflow_process_uri(settings.mlflow_tracking_uri), pytest.MonkeyPatch.context() as cwd:
        cwd.chdir(workdir)
        train(settings, training_frame(300, seed=11), table_version=0)
    return workdir / "mlflow.db"


@pytest.fixture(scope="module")
def fast_path() -> bool:
    """AUCTION_FAST_PATH of the module's service (see the module docstring)."""
    return True


@pytest.fixture(scope="module")
def service_settings(kafka_settings, shared_store_url, champion_db, tmp_path_factory, fast_path):
    workdir = tmp_path_factory.mktemp("auction-service")
    shutil.copyfile(champion_db, workdir / "mlflow.db")
    with mlflow_process_uri(f"sqlite:///{workdir / 'mlflow.db'}") as mlflow_uri:
        yield kafka_settings.model_copy(
            update={
                "local_dir": workdir / "local",
                "lake_root": str(workdir / "lake"),
                "campaign_db_url": f"sqlite:///{workdir / 'campaigns.db'}",
                "mlflow_tracking_uri": mlflow_uri,
                "ad_manager_group": f"ad-manager-{free_port()}",
                "auction_fast_path": fast_path,
                "shared_store_url": shared_store_url,
                "shared_store_namespace": shared_namespace(),
                # The champion serves its own scores here (see champion_db): no matching to a prior.
                "calibration_cold_start": False,
            }
        )


@pytest.fixture(scope="module")
def client(service_settings):
    with (
        running_service(
            service_settings,
            instruction("cpc-1"),
            instruction("cpc-2", bid_micros=300_000),
            instruction("tablets", targeting=Targeting(device_types=["tablet"]), pricing_model="CPM"),
        ) as state,
        TestClient(create_app(state=state)) as test_client,
    ):
        yield test_client
