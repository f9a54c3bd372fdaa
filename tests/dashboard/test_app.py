"""The dashboard's HTTP side without a platform: its auth outside local mode, its JSON, its chart library."""

from __future__ import annotations

import base64
import math

import httpx
import pytest
from fastapi.testclient import TestClient

from auction_service.campaign_store.db import make_engine
from auction_service.campaign_store.tables import Base
from dashboard.app import MISSING_CHARTS, create_app, jsonable
from devstack import services
from tests.conftest import free_port, make_settings

TOKEN = "a-real-token-for-prod"


@pytest.fixture(scope="module")
def prod_client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("dashboard-prod"), adstream_env="prod", auction_api_token=TOKEN)
    Base.metadata.create_all(make_engine(settings))
    with TestClient(create_app(settings)) as client:
        yield client


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "path", ["/", "/api/snapshot", "/api/stream", "/static/dashboard.js", "/vendor/uplot.js", "/reports/billing/x.html"]
)
def test_outside_local_mode_every_page_asks_for_the_campaign_token(prod_client, path):
    refused = prod_client.get(path)
    assert refused.status_code == 401 and "AUCTION_API_TOKEN" in refused.json()["detail"]
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")  # the browser asks for it itself
    assert prod_client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert prod_client.get(path, headers=basic("finance", "wrong")).status_code == 403


def test_the_token_opens_it_as_a_bearer_token_or_as_basic_auths_password(prod_client):
    assert prod_client.get("/api/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = prod_client.get("/", headers=basic("anyone", TOKEN))
    assert page.status_code == 200 and "AdStream dashboard" in page.text
    assert prod_client.get("/healthz").status_code == 200  # liveness stays open
    assert prod_client.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_outside_local_mode_it_refuses_to_start_with_the_local_default_token(tmp_path):
    settings = make_settings(tmp_path, adstream_env="prod")
    with pytest.raises(ValueError, match="AUCTION_API_TOKEN is a local default"):
        create_app(settings)


def test_local_mode_is_open_and_without_uplot_the_page_is_told_why(tmp_path):
    settings = make_settings(tmp_path)  # its LOCAL_DIR has no dashboard-node
    Base.metadata.create_all(make_engine(settings))
    with TestClient(create_app(settings)) as client:
        script = client.get("/vendor/uplot.js")
        assert script.status_code == 200 and script.text == MISSING_CHARTS
        assert client.get("/vendor/other.js").status_code == 404
        assert client.get("/static/../app.py").status_code == 404
        snapshot = client.get("/api/snapshot").json()
    assert snapshot["campaigns"]["total"] == 0
    assert "auction service /v1/stats" in snapshot["errors"]  # nothing listens there: said, not a 500


def test_it_serves_the_data_docs_and_the_finance_report_and_nothing_beside_them(tmp_path):
    settings = make_settings(tmp_path)
    Base.metadata.create_all(make_engine(settings))
    (settings.reports_dir / "data_docs" / "validations").mkdir(parents=True)
    (settings.reports_dir / "data_docs" / "index.html").write_text("<h1>Data Docs</h1>")
    (settings.reports_dir / "billing").mkdir()
    (settings.reports_dir / "billing" / "finance.html").write_text("<h1>Finance</h1>")
    (settings.reports_dir / "secret.txt").write_text("not a report")
    with TestClient(create_app(settings)) as client:
        page = client.get("/").text
        assert 'href="reports/data-docs/index.html"' in page and 'href="reports/billing/finance.html"' in page
        assert client.get("/reports/data-docs/index.html").text == "<h1>Data Docs</h1>"
        assert client.get("/reports/billing/finance.html").text == "<h1>Finance</h1>"
        for outside in ("/reports/billing/..%2Fsecret.txt", "/reports/data-docs/%2E%2E/secret.txt", "/reports/x/a"):
            refused = client.get(outside)
            assert refused.status_code == 404 and "not a report" not in refused.text, outside
        missing = client.get("/reports/data-docs/validations/none.html")
        assert missing.status_code == 404 and "a validation builds them" in missing.json()["detail"]


def test_json_has_no_nan():
    assert jsonable({"a": [math.nan, 1.5, {"b": math.inf}], "c": (2, "x")}) == {
        "a": [None, 1.5, {"b": None}],
        "c": [2, "x"],
    }


@pytest.mark.slow
def test_make_up_runs_it_as_a_service_on_dashboard_port(tmp_path):
    settings = make_settings(tmp_path, dashboard_port=free_port())
    Base.metadata.create_all(make_engine(settings))
    (service,) = services.build_services(settings, ["dashboard"])
    assert [claim.setting for claim in service.ports] == ["DASHBOARD_PORT"]
    services.start(settings, service)
    try:
        services.wait_healthy(settings, service)
        url = f"http://{settings.bind_host}:{settings.dashboard_port}"
        assert "AdStream dashboard" in httpx.get(f"{url}/", timeout=10).text
        snapshot = httpx.get(f"{url}/api/snapshot", timeout=10).json()
        assert snapshot["auction_url"] == f"http://{settings.bind_host}:{settings.auction_port}"  # its settings
    finally:
        assert services.stop(settings, service) == "stopped"
