"""notebooks/explore_lake.ipynb, executed headless against a small lake the test writes with delta-rs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table
from adstream.settings import Settings, child_process_env
from ml.notebooks import NOTEBOOKS_DIR, execute_notebook
from tests.conftest import make_settings

NOTEBOOK = NOTEBOOKS_DIR / "explore_lake.ipynb"
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def kpi_rows() -> pd.DataFrame:
    """Two campaigns over three minutes on two devices: 1,200 impressions, 36 clicks, 6 USD of spend."""
    rows = []
    for minute in range(3):
        for campaign_id, device_type in (("cmp-a", "mobile"), ("cmp-b", "desktop")):
            impressions, clicks = (300, 9) if campaign_id == "cmp-a" else (100, 3)
            rows.append(
                {
                    "campaign_id": campaign_id,
                    "minute": START + timedelta(minutes=minute),
                    "device_type": device_type,
                    "channel": "web",
                    "content_type": "display",
                    "impressions": impressions,
                    "clicks": clicks,
                    "conversions": 0,
                    "video_starts": 0,
                    "video_completes": 0,
                    "spend_micros": 1_500_000 if campaign_id == "cmp-a" else 500_000,
                    "ctr": clicks / impressions,
                    "completion_rate": None,
                    "rpai": None,
                    "relevance": 0.2,
                }
            )
    return pd.DataFrame(rows).astype({"completion_rate": "float64", "rpai": "float64"})


def write_lake(settings: Settings, *, with_kpis: bool) -> None:
    tables = {
        Table.BRONZE_ADVERTISING: pd.DataFrame(
            {
                "daily_time_spent_on_site": [80.0, 50.0],
                "age": [25, 45],
                "area_income": [60_000.0, 40_000.0],
                "daily_internet_usage": [220.0, 140.0],
                "male": [True, False],
                "clicked_on_ad": [False, True],
            }
        ),
        Table.BRONZE_ADS16_RATINGS: pd.DataFrame(
            {"user_id": ["U0001"] * 3, "category_name": ["Automotive", "Grocery", "Betting"], "rating": [5, 1, 1]}
        ),
        Table.SILVER_USERS: pd.DataFrame(
            {
                "user_id": ["adv-000001", "ads16-U0001"],
                "source": ["advertising", "ads16"],
                "age": [25, 31],
                "gender": ["M", "F"],
                "income_band": ["upper_mid", None],
            }
        ),
    }
    if with_kpis:
        tables[Table.GOLD_KPI_MINUTE] = kpi_rows()
    for table, frame in tables.items():
        write_deltalake(settings.delta_rs_location(table)[0], frame, mode="overwrite")


def run(tmp_path: Path, *, with_kpis: bool) -> tuple[str, list[dict]]:
    settings = make_settings(tmp_path)
    write_lake(settings, with_kpis=with_kpis)
    executed = execute_notebook(
        NOTEBOOK, tmp_path / "executed.ipynb", timeout_s=120, env=child_process_env(LAKE_ROOT=settings.lake_root)
    )
    outputs = [
        output
        for cell in nbformat.read(executed, as_version=4).cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    assert [output for output in outputs if output.output_type == "error"] == []
    text = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    return text, outputs


def test_the_stored_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_notebook_shows_each_layer_and_plots_the_minute_kpis(tmp_path):
    text, outputs = run(tmp_path, with_kpis=True)
    assert f"LAKE_ROOT = {tmp_path / 'lake'}" in text
    assert f"4 of {len(Table)} tables present" in text
    assert "bronze/amazon_ads: not in the lake yet" in text and "built by adstream ingest all" in text
    assert "adstream features" in text  # the overview says what builds each missing table
    assert "2 rows, 50.0% clicked" in text
    assert "1 users, 3 ratings, mean rating 2.33" in text
    assert "kpi_minute: 3 minutes, 2 campaigns, 1200 impressions, 36 clicks (CTR 3.00%), spend 6 USD" in text
    assert any("image/png" in output.get("data", {}) for output in outputs)


@pytest.mark.slow
def test_the_notebook_runs_before_the_streaming_job_wrote_any_kpi(tmp_path):
    text, outputs = run(tmp_path, with_kpis=False)
    assert "gold/kpi_minute: not in the lake yet" in text and "No KPIs to plot yet" in text
    assert "1 users, 3 ratings" in text
    assert not any("image/png" in output.get("data", {}) for output in outputs)
