"""Write-audit-publish into real Delta tables: idempotent re-runs, per-file replacement, quarantine, gates."""

import os
from pathlib import Path

import pytest
from deltalake import DeltaTable

from ingestion.pipeline import IngestionFailed, ingest
from tests.conftest import make_settings

HEADER = (
    "Daily Time Spent on Site,Age,Area Income,Daily Internet Usage,Ad Topic Line,City,Male,Country,Timestamp,"
    "Clicked on Ad"
)
AMAZON = "amazon/scrapped_data/scrapped_data"


def advertising_rows(count: int, start: int = 0) -> list[str]:
    return [
        f"{50 + i % 30}.5,{20 + i % 40},{30000 + i}.5,{150 + i % 100}.25,Topic line {i},Town{i},{i % 2},"
        f"Chad,2016-02-{1 + i % 28:02d} 10:00:00,{(i // 2) % 2}"
        for i in range(start, start + count)
    ]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


@pytest.fixture
def kaggle(tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    write(kaggle_dir / "advertising/advertising.csv", "\n".join([HEADER, *advertising_rows(40)]) + "\n")
    write(kaggle_dir / f"{AMAZON}/electronics__monitors/amazon_electronics_monitors.csv", "ad\nMonitor A\nMonitor B\n")
    write(kaggle_dir / f"{AMAZON}/home__kitchen/amazon_home_kitchen.csv", "ad\nKettle\n\nad\nToaster\n")
    settings = make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")
    return settings


def table(settings, name: str):
    uri, _ = settings.delta_rs_location(name)
    return DeltaTable(uri)


def rows(settings, name: str):
    return table(settings, name).to_pandas().sort_values(["source_file", "source_row"]).reset_index(drop=True)


def test_first_load_writes_typed_bronze_with_lineage_and_a_quarantine(kaggle):
    path = kaggle.kaggle_dir / "advertising/advertising.csv"
    path.write_text(path.read_text() + "99.0,30,50000.0,150.0,Too long on site,X,1,Chad,2016-01-01 00:00:00,1\n")
    report = ingest(kaggle, "advertising", load_id="load-1")
    assert report.rows_written == {"advertising": 40} and report.rows_quarantined == {"advertising": 1}
    bronze = rows(kaggle, "bronze/advertising")
    assert len(bronze) == 40 and set(bronze.load_id) == {"load-1"}
    assert bronze.source_row.tolist() == list(range(1, 41))
    assert str(bronze.timestamp.dtype) == "datetime64[us, UTC]"
    (rejected,) = rows(kaggle, "quarantine/advertising").itertuples()
    assert rejected.source_row == 41 and rejected.bronze_table == "advertising"
    assert "daily_time_spent_on_site" in rejected.reason and "91.43" in rejected.reason
    assert (kaggle.reports_dir / "quality/advertising/load-1.json").exists()


def test_rerun_on_unchanged_input_does_nothing_and_commits_nothing(kaggle):
    first = ingest(kaggle, "amazon")
    version = table(kaggle, "bronze/amazon_ads").version()
    again = ingest(kaggle, "amazon")
    assert first.rows_written == {"amazon_ads": 4}
    assert again.unchanged and again.rows_written == {}
    assert table(kaggle, "bronze/amazon_ads").version() == version
    # A fresh copy of the same bytes (new mtime) is still not a change.
    path = kaggle.kaggle_dir / f"{AMAZON}/home__kitchen/amazon_home_kitchen.csv"
    os.utime(path, ns=(1, 1))
    assert ingest(kaggle, "amazon").unchanged
    assert table(kaggle, "bronze/amazon_ads").version() == version


def test_a_changed_file_replaces_only_its_own_rows(kaggle):
    ingest(kaggle, "amazon", load_id="load-1")
    write(kaggle.kaggle_dir / f"{AMAZON}/home__kitchen/amazon_home_kitchen.csv", "ad\nKettle v2\nBlender\nMixer\n")
    report = ingest(kaggle, "amazon", load_id="load-2")
    assert report.files_changed == 1 and report.rows_written == {"amazon_ads": 3}
    bronze = rows(kaggle, "bronze/amazon_ads")
    assert bronze.ad_text.tolist() == ["Monitor A", "Monitor B", "Kettle v2", "Blender", "Mixer"]
    assert bronze.load_id.tolist() == ["load-1", "load-1", "load-2", "load-2", "load-2"]
    assert bronze.department.tolist() == ["electronics", "electronics", "home", "home", "home"]


def test_a_removed_file_takes_its_rows_with_it(kaggle):
    ingest(kaggle, "amazon")
    (kaggle.kaggle_dir / f"{AMAZON}/electronics__monitors/amazon_electronics_monitors.csv").unlink()
    report = ingest(kaggle, "amazon")
    assert report.files_removed == 1
    assert rows(kaggle, "bronze/amazon_ads").ad_text.tolist() == ["Kettle", "Toaster"]


def test_too_many_rejected_rows_refuse_the_load_and_publish_nothing(kaggle):
    path = kaggle.kaggle_dir / "advertising/advertising.csv"
    bad = [row.replace(",Chad,", ",Chad,").replace("2016-02", "2019-02") for row in advertising_rows(10, 100)]
    path.write_text(path.read_text() + "\n".join(bad) + "\n")
    with pytest.raises(IngestionFailed, match=r"advertising: 10 of 50 records rejected \(20.0%\)") as failure:
        ingest(kaggle, "advertising")
    assert "INGEST_MAX_REJECT_SHARE=5%" in str(failure.value)
    assert "expect_column_values_to_be_between(column='timestamp'" in str(failure.value)
    assert not (kaggle.lake_root and Path(kaggle.lake_root, "bronze/advertising").exists())
    # The same file loads once the threshold allows it, and the rejects are quarantined.
    report = ingest(kaggle.model_copy(update={"ingest_max_reject_share": 0.25}), "advertising")
    assert report.rows_written == {"advertising": 40} and report.rows_quarantined == {"advertising": 10}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (HEADER.replace(",", ";") + "\n", "expected a comma-delimited header"),
        (HEADER.replace("Age,", "") + "\n", r"missing required column\(s\) \['Age'\]"),
        ("", "the file is empty"),
    ],
)
def test_an_unusable_file_fails_the_load_naming_the_file(kaggle, content, message):
    write(kaggle.kaggle_dir / "advertising/advertising.csv", content)
    with pytest.raises(IngestionFailed, match=message) as failure:
        ingest(kaggle, "advertising")
    assert "advertising/advertising.csv" in str(failure.value)


def test_non_csv_and_unreadable_files_are_counted_not_fatal(kaggle):
    folder = kaggle.kaggle_dir / f"{AMAZON}/electronics__monitors"
    write(folder / "README.txt", "not data")
    (folder / "amazon_electronics_cables.csv").symlink_to(folder / "gone.csv")
    many = "ad\n" + "\n".join(f"Cable {i}" for i in range(40)) + "\n"
    write(kaggle.kaggle_dir / f"{AMAZON}/electronics__cables/amazon_electronics_cables.csv", many)
    report = ingest(kaggle, "amazon")
    assert report.skipped["not a .csv file: README.txt"] == 1
    quarantine = rows(kaggle, "quarantine/amazon")
    (unreadable,) = quarantine[
        quarantine.source_file.str.endswith("monitors/amazon_electronics_cables.csv")
    ].itertuples()
    assert unreadable.reason.startswith("unreadable")
    assert report.rows_written == {"amazon_ads": 44}


def test_a_missing_kaggle_path_is_named(tmp_path):
    settings = make_settings(tmp_path, kaggle_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "amazon")):
        ingest(settings, "amazon")


@pytest.mark.slow
def test_spark_reads_the_bronze_tables(kaggle, spark):
    ingest(kaggle, "advertising")
    ingest(kaggle, "amazon")
    advertising = spark.read.format("delta").load(kaggle.lake_path("bronze/advertising"))
    assert advertising.count() == 40
    assert dict(advertising.dtypes)["timestamp"] == "timestamp"
    amazon = spark.read.format("delta").load(kaggle.lake_path("bronze/amazon_ads"))
    assert sorted(r.ad_text for r in amazon.collect()) == ["Kettle", "Monitor A", "Monitor B", "Toaster"]
