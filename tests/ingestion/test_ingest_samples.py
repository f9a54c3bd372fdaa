"""The committed samples load completely, and ADS-16 re-ingests per user folder."""

import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable

from ingestion.pipeline import ingest
from tests.conftest import make_settings

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kaggle"
PART1 = "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1"


def table(settings, name: str):
    uri, _ = settings.delta_rs_location(name)
    return DeltaTable(uri).to_pandas()


@pytest.fixture
def kaggle(tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    shutil.copytree(SAMPLES, kaggle_dir)
    return make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")


def test_the_committed_samples_load_whole(kaggle):
    reports = {name: ingest(kaggle, name) for name in ("advertising", "ads16", "amazon")}
    assert reports["advertising"].rows_written == {"advertising": 1000}
    assert reports["ads16"].rows_written == {"ads16_users": 24, "ads16_ratings": 7200, "ads16_ads": 300}
    assert reports["amazon"].rows_written == {"amazon_ads": 11521}
    quarantine = table(kaggle, "quarantine/ads16")
    assert quarantine.source_file.str.endswith("Ads/Ads/1/Thumbs.db").tolist() == [True]
    users = table(kaggle, "bronze/ads16_users")
    assert sorted(users.user_id)[:2] == ["U0001", "U0002"] and users.user_id.is_unique
    amazon = table(kaggle, "bronze/amazon_ads")
    assert len(amazon.groupby(["department", "subdepartment"])) == 39  # one per category folder
    assert all(report.results for report in reports.values())


def test_a_changed_user_file_replaces_only_that_users_rows(kaggle):
    ingest(kaggle, "ads16", load_id="load-1")
    ratings_file = kaggle.kaggle_dir / f"{PART1}/Corpus/Corpus/U0002/U0002-RT.csv"
    lines = ratings_file.read_bytes().split(b"\n")
    first_cell_start = lines[2].index(b'"') + 1
    rating = lines[2][first_cell_start : first_cell_start + 1]
    new_rating = b"5" if rating != b"5" else b"4"
    lines[2] = lines[2][:first_cell_start] + new_rating + lines[2][first_cell_start + 1 :]
    ratings_file.write_bytes(b"\n".join(lines))

    report = ingest(kaggle, "ads16", load_id="load-2")
    assert report.files_changed == 1
    assert report.rows_written == {"ads16_users": 1, "ads16_ratings": 300, "ads16_ads": 0}
    ratings = table(kaggle, "bronze/ads16_ratings")
    assert len(ratings) == 7200
    changed = ratings[ratings.load_id == "load-2"]
    assert set(changed.user_id) == {"U0002"}
    first = changed[(changed.category_index == 0) & (changed.position == 0)]
    assert first.rating.tolist() == [int(new_rating)]
    users = table(kaggle, "bronze/ads16_users")
    assert users[users.load_id == "load-2"].user_id.tolist() == ["U0002"]
    assert len(users) == 24 and len(table(kaggle, "bronze/ads16_ads")) == 300


def test_a_user_missing_a_file_is_loaded_and_the_gap_quarantined(kaggle):
    (kaggle.kaggle_dir / f"{PART1}/Corpus/Corpus/U0003/U0003-PREF.csv").unlink()
    ingest(kaggle, "ads16")
    users = table(kaggle, "bronze/ads16_users").set_index("user_id")
    assert list(users.loc["U0003", "most_visited_websites"]) == []
    assert len(users.loc["U0003", "countries_visited"]) > 0
    quarantine = table(kaggle, "quarantine/ads16")
    gap = quarantine[quarantine.source_file.str.endswith("U0003/U0003-PREF.csv")]
    assert gap.bronze_table.tolist() == ["ads16_users"] and "missing" in gap.reason.iloc[0]


def test_the_committed_samples_are_what_the_generator_writes(tmp_path):
    from simulator.kaggle_samples import generate

    generate(tmp_path / "regenerated", "small", seed=7)
    committed = {p.relative_to(SAMPLES): p.read_bytes() for p in SAMPLES.rglob("*") if p.is_file()}
    regenerated = {
        p.relative_to(tmp_path / "regenerated"): p.read_bytes()
        for p in (tmp_path / "regenerated").rglob("*")
        if p.is_file()
    }
    committed.pop(Path("README.md"))
    assert committed.keys() == regenerated.keys()
    assert [path for path in committed if committed[path] != regenerated[path]] == []
