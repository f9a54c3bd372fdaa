"""The synthetic Kaggle samples: the real layouts and quirks, the real signal, byte-for-byte determinism."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
import statistics
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from simulator import cli
from simulator import kaggle_samples as samples

PART1 = "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1"
PART2 = "ads16/ADS16_Benchmark_part2/ADS16_Benchmark_part2"
AMAZON = "amazon/scrapped_data/scrapped_data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CATEGORIES = [
    "Clothing & Shoes", "Automotive", "Baby Products", "Health & Beauty", "Media (BMVD)", "Consumer Electronics",
    "Console & Video Games", "DIY & Tools", "Garden & Outdoor living", "Grocery", "Kitchen & Home", "Betting",
    "Jewellery & Watches", "Musical Instruments", "Office Products", "Pet Supplies", "Computer Software",
    "Sports & Outdoors", "Toys & Games", "Dating Sites",
]  # fmt: skip
INF_COLUMNS = {
    "Name", "Last Name", "Gender", "Age", "Cap/Zip-Code", "Home town", "Home country", "Countries visited",
    "Paypal", "Type of Job", "Weekly working hours", "Income", "Timepass", "Fave Sports",
}  # fmt: skip
SMALL_USERS = [f"U{n:04d}" for n in [*range(1, 13), *range(61, 73)]]
USER_CSVS = ("B5", "INF", "PREF", "RT", "IM-POS", "IM-NEG")


class Run(NamedTuple):
    out: Path
    printed: str


def generate(out: Path, seed: int = 7) -> str:
    result = CliRunner().invoke(cli.app, ["samples", "--scale", "small", "--out", str(out), "--seed", str(seed)])
    assert result.exit_code == 0
    return result.stdout


def digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for name in ("advertising", "ads16", "amazon")
        for path in sorted((root / name).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("kaggle")
    (out / "README.md").write_text("not ours\n")
    (out / "amazon").mkdir()
    (out / "amazon/stale.csv").write_text("ad\nleft over from an earlier run\n")
    return Run(out, generate(out))


@pytest.fixture(scope="module")
def kaggle(run: Run) -> Path:
    return run.out


def semicolon_rows(path: Path) -> list[list[str]]:
    """An ADS-16 CSV parsed the tolerant way: BOM and leading blank lines dropped, quotes honoured."""
    text = path.read_bytes().decode("utf-8-sig").lstrip("\r\n")
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))


def user_dirs(kaggle: Path) -> list[Path]:
    return sorted([*(kaggle / PART1 / "Corpus/Corpus").iterdir(), *(kaggle / PART2 / "Corpus/Corpus").iterdir()])


def amazon_csvs(kaggle: Path) -> list[Path]:
    return sorted((kaggle / AMAZON).rglob("*.csv"))


def amazon_records(path: Path) -> list[list[str]]:
    text = path.read_bytes().rstrip(b"\x00").decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


# --------------------------------------------------------------------------- CLI and determinism


def test_cli_prints_one_summary_line_per_dataset(run: Run):
    lines = run.printed.splitlines()
    assert [line.split(":")[0] for line in lines] == ["advertising", "ads16", "amazon"]
    assert all(re.fullmatch(r"\w+: \d+ files, \d+ rows, \d+ bytes", line) for line in lines)
    assert lines[0].startswith("advertising: 1 files, 1000 rows, ")
    assert lines[1].startswith("ads16: ") and ", 7200 rows, " in lines[1]  # 24 users x 300 ratings


def test_only_the_three_dataset_folders_are_replaced(kaggle: Path):
    assert (kaggle / "README.md").read_text() == "not ours\n"
    assert not (kaggle / "amazon/stale.csv").exists()
    assert sorted(path.name for path in kaggle.iterdir()) == ["README.md", "ads16", "advertising", "amazon"]


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(kaggle: Path, tmp_path: Path):
    generate(tmp_path / "again", seed=7)
    generate(tmp_path / "other", seed=8)

    first = digests(kaggle)
    assert len(first) > 1000
    assert digests(tmp_path / "again") == first
    other = digests(tmp_path / "other")
    assert other["advertising/advertising.csv"] != first["advertising/advertising.csv"]
    assert sum(other.get(path) != digest for path, digest in first.items()) > 100


def test_the_whole_small_sample_stays_under_four_megabytes(kaggle: Path):
    total = sum(path.stat().st_size for path in kaggle.rglob("*") if path.is_file())
    assert total < 4_000_000


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        samples.amazon_plan("medium", 7)


# --------------------------------------------------------------------------- Advertising


@pytest.fixture(scope="module")
def advertising(kaggle: Path) -> pd.DataFrame:
    return pd.read_csv(kaggle / "advertising/advertising.csv", dtype={"Ad Topic Line": str, "City": str})


def test_advertising_file_is_plain_ascii_csv_with_the_real_header(kaggle: Path):
    data = (kaggle / "advertising/advertising.csv").read_bytes()
    data.decode("ascii")
    assert b"\r" not in data
    lines = data.decode().splitlines()
    assert lines[0] == (
        "Daily Time Spent on Site,Age,Area Income,Daily Internet Usage,Ad Topic Line,City,Male,Country,"
        "Timestamp,Clicked on Ad"
    )
    assert len(lines) == 1001


def test_advertising_values_stay_in_the_real_domains(advertising: pd.DataFrame):
    assert len(advertising) == 1000
    assert not advertising.isna().any().any()
    assert advertising["Clicked on Ad"].value_counts().to_dict() == {0: 500, 1: 500}
    assert advertising["Daily Time Spent on Site"].between(32.60, 91.43).all()
    assert advertising["Age"].between(19, 61).all()
    assert advertising["Area Income"].between(13996.5, 79484.8).all()
    assert advertising["Daily Internet Usage"].between(104.78, 269.96).all()
    assert set(advertising["Male"]) == {0, 1}
    assert 0.42 <= advertising["Male"].mean() <= 0.54
    topics = advertising["Ad Topic Line"]
    assert topics.is_unique
    assert topics.str.len().between(17, 55).all()
    assert advertising["City"].nunique() > 900
    countries = advertising["Country"]
    assert 60 <= countries.nunique() <= 240
    assert all(countries.str.contains(char, regex=False).any() for char in "&'()")
    stamps = pd.to_datetime(advertising["Timestamp"], format="%Y-%m-%d %H:%M:%S")
    assert stamps.min() >= datetime(2016, 1, 1)
    assert stamps.max() <= datetime(2016, 7, 24, 23, 59, 59)


def test_advertising_floats_are_written_without_trailing_zeros(kaggle: Path):
    rows = list(csv.reader((kaggle / "advertising/advertising.csv").open()))[1:]
    floats = [value for row in rows for value in (row[0], row[2], row[3])]
    assert all(re.fullmatch(r"\d+\.(0|\d*[1-9])", value) for value in floats)
    assert all(re.fullmatch(r"\d+", row[1]) for row in rows)


def test_clickers_spend_less_time_use_less_internet_and_are_older(advertising: pd.DataFrame):
    means = advertising.groupby("Clicked on Ad").mean(numeric_only=True)
    assert 48 <= means.loc[1, "Daily Time Spent on Site"] <= 58 and 72 <= means.loc[0, "Daily Time Spent on Site"] <= 82
    assert 130 <= means.loc[1, "Daily Internet Usage"] <= 160 and 200 <= means.loc[0, "Daily Internet Usage"] <= 230
    assert 37 <= means.loc[1, "Age"] <= 43 and 29 <= means.loc[0, "Age"] <= 35


def test_a_logistic_regression_separates_clickers(advertising: pd.DataFrame):
    features = advertising[["Daily Time Spent on Site", "Age", "Area Income", "Daily Internet Usage", "Male"]]
    x_train, x_test, y_train, y_test = train_test_split(
        features, advertising["Clicked on Ad"], test_size=0.3, random_state=0, stratify=advertising["Clicked on Ad"]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train, y_train)
    assert roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]) >= 0.95


# --------------------------------------------------------------------------- ADS-16


def test_ads16_keeps_the_doubled_part_folders_and_twenty_ad_folders(kaggle: Path):
    assert sorted(path.name for path in (kaggle / "ads16").iterdir()) == [
        "ADS16_Benchmark_part1",
        "ADS16_Benchmark_part2",
    ]
    assert sorted(int(p.name) for p in (kaggle / PART1 / "Ads/Ads").iterdir()) == list(range(1, 11))
    assert sorted(int(p.name) for p in (kaggle / PART2 / "Ads/Ads").iterdir()) == list(range(11, 21))


def test_ads16_has_300_png_ads_and_one_stray_file_in_folder_one(kaggle: Path):
    folders = [*(kaggle / PART1 / "Ads/Ads").iterdir(), *(kaggle / PART2 / "Ads/Ads").iterdir()]
    ads = [path for folder in folders for path in folder.iterdir() if re.fullmatch(r"\d+\.png", path.name)]
    assert len(ads) == 300
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in ads)
    for folder in folders:
        assert sorted(int(path.stem) for path in folder.glob("*.png")) == list(range(1, 16))
    folder_one = sorted((kaggle / PART1 / "Ads/Ads/1").iterdir())
    assert len(folder_one) == 16
    assert sum(not path.read_bytes().startswith(PNG_SIGNATURE) for path in folder_one) == 1
    assert all(len(list(folder.iterdir())) == 15 for folder in folders if folder.name != "1")


def test_ads16_small_has_24_users_each_with_six_csvs_and_two_image_folders(kaggle: Path):
    assert sorted(path.name for path in (kaggle / PART1 / "Corpus/Corpus").iterdir()) == SMALL_USERS[:12]
    assert sorted(path.name for path in (kaggle / PART2 / "Corpus/Corpus").iterdir()) == SMALL_USERS[12:]
    for folder in user_dirs(kaggle):
        user = folder.name
        expected = {f"{user}-{kind}.csv" for kind in USER_CSVS} | {f"{user}-IM-POS", f"{user}-IM-NEG"}
        assert {path.name for path in folder.iterdir()} == expected
        for kind in ("POS", "NEG"):
            images = sorted(path.name for path in (folder / f"{user}-IM-{kind}").iterdir())
            full_size = [name for name in images if re.fullmatch(r"\d+\.png", name)]
            thumbnails = [name for name in images if re.fullmatch(r"\d+_th_\d{10}\.png", name)]
            assert len(full_size) >= 4 and len(thumbnails) == len(full_size) == len(images) / 2


def test_rt_files_hold_three_lines_of_twenty_categories_by_fifteen_ratings(kaggle: Path):
    ratings = []
    for folder in user_dirs(kaggle):
        path = folder / f"{folder.name}-RT.csv"
        assert len(path.read_bytes().decode("utf-8-sig").splitlines()) == 3
        header, names, cells = semicolon_rows(path)
        assert header == [f"Cat{k}" for k in range(20)]
        assert [html.unescape(name) for name in names] == CATEGORIES
        assert len(cells) == 20
        for cell in cells:
            values = [int(value) for value in cell.split(",")]
            assert len(values) == 15 and all(1 <= value <= 5 for value in values)
            ratings += values
    assert len(ratings) == 24 * 300
    assert 1.6 <= statistics.mean(ratings) <= 2.2
    assert statistics.median(ratings) == 1


def inf_record(folder: Path) -> dict[str, str]:
    header, values = semicolon_rows(folder / f"{folder.name}-INF.csv")
    return dict(zip(header, values, strict=True))


def ratings_by_category(folder: Path) -> list[float]:
    _, _, cells = semicolon_rows(folder / f"{folder.name}-RT.csv")
    return [statistics.mean(int(value) for value in cell.split(",")) for cell in cells]


def test_ratings_depend_on_gender(kaggle: Path):
    by_gender: dict[str, list[list[float]]] = {"F": [], "M": []}
    for folder in user_dirs(kaggle):
        by_gender[inf_record(folder)["Gender"]].append(ratings_by_category(folder))

    def mean_rating(gender: str, category: str) -> float:
        return statistics.mean(user[CATEGORIES.index(category)] for user in by_gender[gender])

    assert mean_rating("M", "Automotive") - mean_rating("F", "Automotive") >= 0.4
    assert mean_rating("F", "Health & Beauty") - mean_rating("M", "Health & Beauty") >= 0.4


def test_inf_files_have_the_fourteen_columns_in_varying_order(kaggle: Path):
    orders = set()
    for folder in user_dirs(kaggle):
        header, values = semicolon_rows(folder / f"{folder.name}-INF.csv")
        assert set(header) == INF_COLUMNS and len(header) == 14 and len(values) == 14
        orders.add(tuple(header))
        record = dict(zip(header, values, strict=True))
        assert record["Last Name"] == "Hidden"
        assert record["Gender"] in {"F", "M"}
        assert 18 <= int(record["Age"]) <= 68
        assert record["Income"] in {"0", "1", "2", "3"}
        assert record["Weekly working hours"] in {"Full Time", "Part Time"}
        assert record["Timepass"] in {"Internet", "Reading", "Sports", "Music", "Movie"}
        assert re.fullmatch(r"[a-z]\*\*\*@\*\*\*\.[a-z.]+", record["Paypal"])
    assert len(orders) > 1


def test_pref_files_have_five_columns_with_commas_inside_parentheses(kaggle: Path):
    values = []
    for folder in user_dirs(kaggle):
        header, row = semicolon_rows(folder / f"{folder.name}-PREF.csv")
        assert header == [
            "Most visited websites",
            "Most listened musics",
            "Most watched movies",
            "Most watched tv programmes",
            "Most read books",
        ]
        values += row
    assert any(re.search(r"\([^()]*,[^()]*\)", value) for value in values)
    assert any("&amp;" in value for value in values)


def test_b5_files_hold_ten_answers_between_minus_two_and_two(kaggle: Path):
    for folder in user_dirs(kaggle):
        header, *answers = semicolon_rows(folder / f"{folder.name}-B5.csv")
        assert header == ["Question#", "Answer"]
        assert [int(question) for question, _ in answers] == list(range(1, 11))
        assert all(-2 <= int(answer) <= 2 for _, answer in answers)


def test_image_csvs_have_paths_and_captions_with_the_real_irregularities(kaggle: Path):
    widths, foreign_paths = {"POS": [], "NEG": []}, 0
    for folder in user_dirs(kaggle):
        user = folder.name
        for kind, label in (("POS", "fave"), ("NEG", "unfave")):
            header, paths, captions = semicolon_rows(folder / f"{user}-IM-{kind}.csv")
            assert header == [f"{label}{n}" for n in range(1, len(header) + 1)]
            assert len(paths) == len(captions) == len(header)
            assert all(re.fullmatch(rf"U\d{{4}}-IM-{kind}/\d+\.png", path) for path in paths)
            foreign_paths += not paths[0].startswith(f"{user}-")
            widths[kind].append(len(header))
    assert widths["POS"].count(5) + widths["NEG"].count(5) > 30
    assert max(widths["POS"] + widths["NEG"]) > 5
    assert min(widths["NEG"]) == 4  # one user lacks a column
    assert foreign_paths >= 2  # path rows copied from another user


def test_ads16_csvs_carry_the_encoding_quirks(kaggle: Path):
    raw = [path.read_bytes() for folder in user_dirs(kaggle) for path in folder.glob("*.csv")]
    assert any(data.startswith(b"\xef\xbb\xbf") for data in raw)
    assert any(data.lstrip(b"\xef\xbb\xbf").startswith((b"\n", b"\r\n")) for data in raw)
    assert any(b"\r\n" in data for data in raw) and any(b"\r\n" not in data for data in raw)
    assert any("\u200e" in data.decode("utf-8") for data in raw)
    assert any(b"&amp;" in data for data in raw)


# --------------------------------------------------------------------------- Amazon


def test_amazon_has_39_category_folders_of_scrapy_csvs(kaggle: Path):
    folders = sorted((kaggle / AMAZON).iterdir())
    assert len(folders) == 39
    for folder in folders:
        assert re.fullmatch(r"[a-z_]+__[a-z_]+", folder.name)
        dept = folder.name.split("__")[0]
        files = list(folder.iterdir())
        assert 1 <= len(files) <= 2
        assert all(re.fullmatch(rf"amazon_{dept}(_[a-z0-9_]+)?\.csv", path.name) for path in files)
    assert 45 <= len(amazon_csvs(kaggle)) <= 60


def test_amazon_headers_are_ad_except_one_tab_prefixed(kaggle: Path):
    headers = [amazon_records(path)[0] for path in amazon_csvs(kaggle)]
    assert headers.count(["\tad"]) == 1
    assert headers.count(["ad"]) == len(headers) - 1


def test_exactly_one_amazon_file_ends_in_a_long_run_of_nul_bytes(kaggle: Path):
    tails = [path.read_bytes().endswith(b"\x00" * 100_000) for path in amazon_csvs(kaggle)]
    assert tails.count(True) == 1
    assert sum(b"\x00" in path.read_bytes() for path in amazon_csvs(kaggle)) == 1


def test_amazon_files_carry_the_crawl_quirks(kaggle: Path):
    records = {path: amazon_records(path) for path in amazon_csvs(kaggle)}
    assert any(["ad"] in rows[1:] for rows in records.values())  # header repeated by an appended run
    assert any([] in rows for rows in records.values())  # empty row
    assert any("\n" in row[0] for rows in records.values() for row in rows if row)  # quoted newline
    titles = [[row[0] for row in rows[1:] if row and row != ["ad"]] for rows in records.values()]
    assert any(len(set(file_titles)) < len(file_titles) for file_titles in titles)  # duplicates within a file
    files_listing: dict[str, set[int]] = {}
    for index, file_titles in enumerate(titles):
        for title in file_titles:
            files_listing.setdefault(title, set()).add(index)
    assert any(len(files) > 1 for files in files_listing.values())  # duplicates across files
    every_title = [title for file_titles in titles for title in file_titles]
    assert 0.02 <= sum(not title.isascii() for title in every_title) / len(every_title) <= 0.07
    assert 60 <= statistics.median(len(title) for title in every_title) <= 95
    assert any('"' in title for title in every_title) and any("," in title for title in every_title)


def test_amazon_line_endings_are_mixed_even_inside_one_file(kaggle: Path):
    def endings(data: bytes) -> set[str]:
        unquoted = re.sub(rb'"(?:[^"]|"")*"', b"", data)  # a newline inside quotes is not a line ending
        found = {"crlf"} if b"\r\n" in unquoted else set()
        return found | ({"lf"} if re.search(rb"(?<!\r)\n", unquoted) else set())

    per_file = [endings(path.read_bytes()) for path in amazon_csvs(kaggle)]
    assert {"crlf"} in per_file and {"lf"} in per_file
    assert {"crlf", "lf"} in per_file


def test_amazon_quoting_follows_scrapy(kaggle: Path):
    text = "".join(path.read_bytes().rstrip(b"\x00").decode("utf-8") for path in amazon_csvs(kaggle))
    assert '""' in text  # embedded quotes are doubled
    assert re.search(r"^[^\",\r\n]+$", text, re.MULTILINE)  # plain titles are not quoted


def test_written_amazon_files_match_the_plan(kaggle: Path):
    plan = samples.amazon_plan("small", 7)
    assert sorted(path for path, _ in plan) == [path.relative_to(kaggle).as_posix() for path in amazon_csvs(kaggle)]
    for path, rows in plan:
        records = amazon_records(kaggle / path)[1:]
        assert len([row for row in records if row and row != ["ad"]]) == rows
    assert 8_000 <= sum(rows for _, rows in plan) <= 15_000


def test_full_amazon_plan_matches_the_real_crawl_without_writing_it():
    plan = samples.amazon_plan("full", 7)
    rows = [count for _, count in plan]
    assert len(plan) == 445
    assert len({path.rsplit("/", 1)[0] for path, _ in plan}) == 39
    assert all(path.startswith(f"{AMAZON}/") and path.endswith(".csv") for path, _ in plan)
    assert len({path for path, _ in plan}) == 445
    assert 2_700_000 <= sum(rows) <= 2_900_000
    assert min(rows) >= 15 and max(rows) <= 19_249
    assert 5_000 <= statistics.median(rows) <= 7_000
