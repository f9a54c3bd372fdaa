"""Great Expectations Data Docs: a real ingestion and a real bill gate each add their validation to one site."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestion import data_docs
from ingestion.pipeline import ingest
from spark_jobs.billing import quality as bill_quality
from spark_jobs.billing.quality import BillCheckFailed
from tests.conftest import make_settings
from tests.ingestion.test_pipeline import HEADER, advertising_rows, write
from tests.spark_jobs.billing.data import H
from tests.spark_jobs.billing.test_quality import bill_of

pytestmark = pytest.mark.slow


def result_pages(reports_dir: Path, suite: str) -> list[Path]:
    return sorted((reports_dir / "data_docs" / "validations" / suite).rglob("*.html"))


def text_of(page: Path) -> str:
    return re.sub(r"\s+", " ", page.read_text())


def test_every_ingestion_and_bill_validation_gets_a_page_listed_on_one_index(tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    csv = write(kaggle_dir / "advertising/advertising.csv", "\n".join([HEADER, *advertising_rows(20)]) + "\n")
    settings = make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")
    index = data_docs.index_path(settings.reports_dir)
    assert index == tmp_path / "reports" / "data_docs" / "index.html"

    ingest(settings, "advertising", load_id="load-1")
    # The second load has a row 99.0 minutes on site, past the suite's 91.43: quarantined, and shown failed.
    csv.write_text(csv.read_text() + "99.0,30,50000.0,150.0,Too long on site,X,1,Chad,2016-01-01 00:00:00,1\n")
    ingest(settings, "advertising", load_id="load-2")
    first, second = (text_of(page) for page in result_pages(settings.reports_dir, "advertising"))
    assert "load-1" in first and "load-2" in second
    for page in (first, second):
        assert "advertising" in page and "daily_time_spent_on_site" in page and "91.43" in page
    assert "Succeeded" in first and "Failed" in second

    # The bill's gate, passed and failed, into the same site.
    bill_quality.failed_rows(bill_of(["ok"]), H, reports_dir=settings.reports_dir)
    with pytest.raises(BillCheckFailed):
        bill_quality.failed_rows(bill_of(["twice", "twice"]), H, reports_dir=settings.reports_dir)
    suite = f"billing_hourly_{H:%Y%m%dT%H}"
    passed, failed = (text_of(page) for page in result_pages(settings.reports_dir, suite))
    for page in (passed, failed):
        assert suite in page and "spend_micros" in page and "budget_total_micros" in page
    assert "Succeeded" in passed and "Failed" in failed

    front = text_of(index)
    assert "advertising" in front and suite in front
    assert {"load-1", "load-2", f"bill-{H:%Y%m%dT%H}"} <= set(re.findall(r"load-\d|bill-\d{8}T\d\d", front))
    # Each result is linked from the index by its path relative to it.
    for page in result_pages(settings.reports_dir, "advertising") + result_pages(settings.reports_dir, suite):
        assert str(page.relative_to(index.parent)) in front
