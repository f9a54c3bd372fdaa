"""Silver from the committed samples end to end: bronze in, silver/users and silver/ads out."""

import shutil
from pathlib import Path

import pytest

from ingestion.pipeline import ingest
from spark_jobs import silver
from spark_jobs.taxonomy import OTHER, TAXONOMY
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kaggle"


def test_silver_from_the_committed_samples(spark, tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    shutil.copytree(SAMPLES, kaggle_dir)
    settings = make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")
    for dataset in ("advertising", "ads16", "amazon"):
        ingest(settings, dataset)
    written = silver.build(spark, settings)
    assert written["silver/users"] == 1000 + 24
    ads = spark.read.format("delta").load(settings.lake_path("silver/ads"))
    categories = {row.category: row["count"] for row in ads.groupBy("category").count().collect()}
    assert set(categories) <= set(TAXONOMY)
    assert categories.get(OTHER, 0) == 0, "every sample department should map to a real category"
    assert ads.where(ads.source == "ads16").count() == 300
    assert ads.select("ad_id").distinct().count() == written["silver/ads"]
