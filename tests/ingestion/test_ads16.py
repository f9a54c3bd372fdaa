"""ADS-16 parser, on tiny synthetic folders written byte by byte (no sample data needed)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from ingestion.ads16 import (
    ADS16_CATEGORIES,
    ads16_ad_id,
    clean_text,
    parse_ad_catalog,
    parse_ads16,
    parse_big_five_csv,
    parse_demographics_csv,
    parse_image_captions_csv,
    parse_preferences_csv,
    parse_ratings_csv,
    parse_user_folder,
    split_multi_select,
)
from ingestion.records import Rejection, SourceError

CATEGORY_NAMES = (
    "Clothing & Shoes",
    "Automotive",
    "Baby Products",
    "Health & Beauty",
    "Media (BMVD)",
    "Consumer Electronics",
    "Console & Video Games",
    "DIY & Tools",
    "Garden & Outdoor living",
    "Grocery",
    "Kitchen & Home",
    "Betting",
    "Jewellery & Watches",
    "Musical Instruments",
    "Office Products",
    "Pet Supplies",
    "Computer Software",
    "Sports & Outdoors",
    "Toys & Games",
    "Dating Sites",
)
PNG = b"\x89PNG\r\n\x1a\n" + b"synthetic ad"
JPEG = b"\xff\xd8\xff\xe0" + b"synthetic jpeg"

# Synthetic values only: nothing here comes from the real dataset.
INF_FIELDS = {
    "Name": "Hidden",
    "Last Name": "Hidden",
    "Gender": "f",
    "Age": "34",
    "Cap/Zip-Code": "AB1 2CD",
    "Home town": "  north   Vale ",
    "Home country": "Phillipines",
    "Countries visited": "France, Spain",
    "Paypal": "q***@example.invalid",
    "Type of Job": "Student",
    "Weekly working hours": "Part Time",
    "Income": "1",
    "Timepass": "Internet, Music",
    "Fave Sports": "Tennis, Hill walking",
}
PREF_FIELDS = {
    "Most visited websites": "Media (Books, DVD, CD/DVD Music) sites, Search engines",
    "Most listened musics": "Rock &amp; Roll, Jazz",
    "Most watched movies": "Comedy",
    "Most watched tv programmes": "News, Quiz shows",
    "Most read books": "",
}
TIPI_ANSWERS = ["2", "-1", "0", "1", "-2", "0", "1", "2", "-1", "0"]
POS_CAPTIONS = ["a red kite", "sunny beach", "old map", "jazz poster", "green tea"]
NEG_CAPTIONS = ["loud crowd", "grey wall", "spilled milk", "traffic jam", "broken cup"]


def csv_bytes(*rows: list[str], newline: str = "\n") -> bytes:
    lines = [";".join('"' + cell.replace('"', '""') + '"' for cell in row) for row in rows]
    return (newline.join(lines) + newline).encode()


def inf_csv(fields: dict[str, str] = INF_FIELDS, newline: str = "\n") -> bytes:
    return csv_bytes(list(fields), list(fields.values()), newline=newline)


def b5_csv(answers: list[str] = TIPI_ANSWERS) -> bytes:
    return csv_bytes(["Question#", "Answer"], *[[str(number), answer] for number, answer in enumerate(answers, 1)])


def rating_cells(offset: int = 0) -> list[str]:
    """Cat k, position i is rated (k + i + offset) % 5 + 1."""
    return [",".join(str((k + i + offset) % 5 + 1) for i in range(15)) for k in range(20)]


def rt_csv(cells: list[str]) -> bytes:
    names = [name.replace("&", "&amp;") for name in CATEGORY_NAMES]  # the real file escapes '&'
    return csv_bytes([f"Cat{k}" for k in range(20)], names, cells)


def im_csv(headers: list[str], captions: list[str], paths_user: str) -> bytes:
    paths = [f"{paths_user}-IM/{number}.png" for number in range(1, len(headers) + 1)]
    return csv_bytes(headers, paths, captions)


def user_files(user_id: str, rating_offset: int = 0) -> dict[str, bytes]:
    return {
        "INF": inf_csv(),
        "PREF": csv_bytes(list(PREF_FIELDS), list(PREF_FIELDS.values())),
        "B5": b5_csv(),
        "RT": rt_csv(rating_cells(rating_offset)),
        "IM-POS": im_csv([f"fave{n}" for n in range(1, 6)], POS_CAPTIONS, user_id),
        "IM-NEG": im_csv([f"unfave{n}" for n in range(1, 6)], NEG_CAPTIONS, user_id),
    }


def part_dir(root: Path, part: int) -> Path:
    return root / f"ADS16_Benchmark_part{part}" / f"ADS16_Benchmark_part{part}"


def write_user(
    root: Path, part: int, user_id: str, replace: dict[str, bytes | None] | None = None, rating_offset: int = 0
) -> Path:
    """A user folder with all six CSVs; ``replace`` swaps a file's bytes, or drops it when None."""
    folder = part_dir(root, part) / "Corpus" / "Corpus" / user_id
    folder.mkdir(parents=True)
    files = {**user_files(user_id, rating_offset), **(replace or {})}
    for kind, content in files.items():
        if content is not None:
            (folder / f"{user_id}-{kind}.csv").write_bytes(content)
    for kind in ("IM-POS", "IM-NEG"):
        (folder / f"{user_id}-{kind}").mkdir()
        (folder / f"{user_id}-{kind}" / "1.png").write_bytes(PNG)
    return folder


def write_ads(root: Path, part: int, ad_folder: int, files: dict[str, bytes]) -> None:
    folder = part_dir(root, part) / "Ads" / "Ads" / str(ad_folder)
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


def test_categories_and_ad_ids():
    assert ADS16_CATEGORIES == CATEGORY_NAMES
    assert ads16_ad_id(3, 7) == "ads16-03-07"
    assert ads16_ad_id(19, 14) == "ads16-19-14"


def test_two_clean_users_across_both_parts_fill_all_three_tables(tmp_path):
    root = tmp_path / "ads16"
    write_user(root, 1, "U0001")
    write_user(root, 2, "U0061", rating_offset=2)
    write_ads(root, 1, 1, {"1.png": PNG, "2.png": PNG})
    write_ads(root, 2, 11, {"1.png": PNG})
    write_ads(root, 2, 20, {"15.png": PNG})

    parsed = parse_ads16(root, tmp_path)

    assert parsed.rejections == []
    assert parsed.skipped == Counter()
    users, ratings, ads = parsed.frames["ads16_users"], parsed.frames["ads16_ratings"], parsed.frames["ads16_ads"]
    assert list(parsed.frames) == ["ads16_users", "ads16_ratings", "ads16_ads"]
    assert (len(users), len(ratings), len(ads)) == (2, 600, 4)

    assert list(users.columns) == [
        "user_id", "gender", "age", "zip_code", "home_town", "home_country", "countries_visited", "job_type",
        "weekly_working_hours", "income", "timepass", "fave_sports", "most_visited_websites",
        "most_listened_musics", "most_watched_movies", "most_watched_tv_programmes", "most_read_books",
        "tipi_1", "tipi_2", "tipi_3", "tipi_4", "tipi_5", "tipi_6", "tipi_7", "tipi_8", "tipi_9", "tipi_10",
        "positive_captions", "negative_captions", "source_file", "source_row",
    ]  # fmt: skip
    assert {column: str(users[column].dtype) for column in ("user_id", "age", "income", "tipi_5", "timepass")} == {
        "user_id": "string",
        "age": "Int64",
        "income": "Int64",
        "tipi_5": "Int64",
        "timepass": "object",
    }
    assert ratings.dtypes.astype(str).to_dict() == {
        "user_id": "string",
        "category_index": "Int64",
        "category_name": "string",
        "position": "Int64",
        "ad_id": "string",
        "rating": "Int64",
        "source_file": "string",
        "source_row": "Int64",
    }
    assert ads.dtypes.astype(str).to_dict() == {
        "ad_id": "string",
        "category_index": "Int64",
        "category_name": "string",
        "position": "Int64",
        "image_path": "string",
        "source_file": "string",
        "source_row": "Int64",
    }

    user = users.iloc[0].to_dict()
    assert user == {
        "user_id": "U0001",
        "gender": "F",
        "age": 34,
        "zip_code": "AB1 2CD",
        "home_town": "north Vale",
        "home_country": "Phillipines",
        "countries_visited": ["France", "Spain"],
        "job_type": "Student",
        "weekly_working_hours": "Part Time",
        "income": 1,
        "timepass": ["Internet", "Music"],
        "fave_sports": ["Tennis", "Hill walking"],
        "most_visited_websites": ["Media (Books, DVD, CD/DVD Music) sites", "Search engines"],
        "most_listened_musics": ["Rock & Roll", "Jazz"],
        "most_watched_movies": ["Comedy"],
        "most_watched_tv_programmes": ["News", "Quiz shows"],
        "most_read_books": [],
        "tipi_1": 2,
        "tipi_2": -1,
        "tipi_3": 0,
        "tipi_4": 1,
        "tipi_5": -2,
        "tipi_6": 0,
        "tipi_7": 1,
        "tipi_8": 2,
        "tipi_9": -1,
        "tipi_10": 0,
        "positive_captions": ["a red kite", "sunny beach", "old map", "jazz poster", "green tea"],
        "negative_captions": ["loud crowd", "grey wall", "spilled milk", "traffic jam", "broken cup"],
        "source_file": "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Corpus/Corpus/U0001",
        "source_row": 1,
    }
    assert list(users["user_id"]) == ["U0001", "U0061"]

    health = ratings[(ratings["user_id"] == "U0001") & (ratings["ad_id"] == "ads16-03-08")].iloc[0].to_dict()
    assert health == {
        "user_id": "U0001",
        "category_index": 3,
        "category_name": "Health & Beauty",
        "position": 8,
        "ad_id": "ads16-03-08",
        "rating": 2,
        "source_file": "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Corpus/Corpus/U0001/U0001-RT.csv",
        "source_row": 54,
    }
    second = ratings[ratings["user_id"] == "U0061"]
    assert list(second["rating"].iloc[:3]) == [3, 4, 5]
    assert second.iloc[-1][["ad_id", "rating", "source_row"]].tolist() == ["ads16-19-14", 1, 300]

    assert list(ads["ad_id"]) == ["ads16-00-00", "ads16-00-01", "ads16-10-00", "ads16-19-14"]
    kitchen = ads.iloc[2].to_dict()
    assert kitchen == {
        "ad_id": "ads16-10-00",
        "category_index": 10,
        "category_name": "Kitchen & Home",
        "position": 0,
        "image_path": "ads16/ADS16_Benchmark_part2/ADS16_Benchmark_part2/Ads/Ads/11/1.png",
        "source_file": "ads16/ADS16_Benchmark_part2/ADS16_Benchmark_part2/Ads/Ads/11/1.png",
        "source_row": 1,
    }


def test_personal_columns_are_never_output(tmp_path):
    root = tmp_path / "ads16"
    write_user(root, 1, "U0001")
    parsed = parse_ads16(root, tmp_path)
    users = parsed.frames["ads16_users"]
    assert not {"name", "last_name", "paypal", "Name", "Last Name", "Paypal"} & set(users.columns)
    assert "q***@example.invalid" not in users.astype(str).to_numpy().ravel().tolist()


def test_bom_leading_blank_lines_and_crlf_are_tolerated():
    raw = b"\xef\xbb\xbf\r\n\r\n" + inf_csv(newline="\r\n")
    parsed = parse_demographics_csv(raw, "ads16/U0001/U0001-INF.csv")
    assert parsed.rejections == []
    assert parsed.skipped == Counter({"blank line": 2})
    assert parsed.value["gender"] == "F"
    assert parsed.value["age"] == 34
    assert parsed.value["fave_sports"] == ["Tennis", "Hill walking"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Rock &amp; Roll", "Rock & Roll"),
        ("&lt;b&gt;", "<b>"),
        ("\u200eLondon\u200e ", "London"),
        ("\u200f\ufeffCat0", "Cat0"),
        ("  New \t  York \r\n", "New York"),
    ],
)
def test_clean_text(text, expected):
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Media (Books, DVD, CD/DVD Music) sites, Google",
            ["Media (Books, DVD, CD/DVD Music) sites", "Google"],
        ),
        ("News (local, (world, sport)), Blogs", ["News (local, (world, sport))", "Blogs"]),
        ("Rock &amp; Roll,, Jazz ,", ["Rock & Roll", "Jazz"]),
        ("\u200eTennis, \u200eGolf", ["Tennis", "Golf"]),
        ("", []),
        ("  ", []),
    ],
)
def test_split_multi_select(text, expected):
    assert split_multi_select(text) == expected


def test_preferences_unescape_entities_and_keep_commas_inside_parentheses():
    raw = csv_bytes(
        ["Most read books", "most visited WEBSITES"],
        ["Crime &amp; Thriller", "Media (Books, DVD, CD/DVD Music) sites, News &amp; Weather"],
    )
    parsed = parse_preferences_csv(raw, "ads16/U0002/U0002-PREF.csv")
    assert parsed.value["most_read_books"] == ["Crime & Thriller"]
    assert parsed.value["most_visited_websites"] == ["Media (Books, DVD, CD/DVD Music) sites", "News & Weather"]
    assert parsed.value["most_watched_movies"] == []
    assert [rejection.reason for rejection in parsed.rejections] == [
        "column 'Most listened musics' missing from U0002-PREF.csv",
        "column 'Most watched movies' missing from U0002-PREF.csv",
        "column 'Most watched tv programmes' missing from U0002-PREF.csv",
    ]


def test_header_names_tolerate_case_whitespace_bom_and_lrm():
    raw = csv_bytes([" gender\u200e", "\ufeffAGE ", "home  TOWN"], ["M", "\u200e41", "Little &amp; Large"])
    parsed = parse_demographics_csv(raw, "ads16/U0003/U0003-INF.csv")
    assert (parsed.value["gender"], parsed.value["age"], parsed.value["home_town"]) == ("M", 41, "Little & Large")


def test_demographics_are_read_by_header_name_with_shuffled_columns_and_a_missing_income():
    shuffled = {key: INF_FIELDS[key] for key in reversed(INF_FIELDS) if key != "Income"}
    parsed = parse_demographics_csv(inf_csv(shuffled), "ads16/U0007/U0007-INF.csv")
    assert parsed.value["income"] is None
    assert parsed.value["age"] == 34
    assert parsed.value["zip_code"] == "AB1 2CD"
    assert parsed.value["weekly_working_hours"] == "Part Time"
    assert parsed.value["countries_visited"] == ["France", "Spain"]
    assert parsed.rejections == [
        Rejection("ads16/U0007/U0007-INF.csv", None, "column 'Income' missing from U0007-INF.csv")
    ]


def test_an_invalid_gender_and_age_are_nulled_and_rejected_but_the_row_is_kept():
    fields = {**INF_FIELDS, "Gender": "X", "Age": "thirty"}
    parsed = parse_demographics_csv(inf_csv(fields), "ads16/U0008/U0008-INF.csv")
    assert (parsed.value["gender"], parsed.value["age"], parsed.value["job_type"]) == (None, None, "Student")
    assert parsed.rejections == [
        Rejection("ads16/U0008/U0008-INF.csv", 1, "Gender 'X' is not F or M", "X"),
        Rejection("ads16/U0008/U0008-INF.csv", 1, "Age 'thirty' is not an integer", "thirty"),
    ]


def test_undecodable_bytes_are_replaced_and_reported():
    raw = inf_csv({**INF_FIELDS, "Home town": "Bristol"}).replace(b"Bristol", b"Bris\xfftol")
    parsed = parse_demographics_csv(raw, "ads16/U0009/U0009-INF.csv")
    assert parsed.value["home_town"] == "Bris\ufffdtol"
    assert parsed.value["age"] == 34
    assert len(parsed.rejections) == 1
    assert parsed.rejections[0].source_row is None
    assert parsed.rejections[0].reason.startswith("undecodable bytes at offset")
    assert "Bris\ufffdtol" in parsed.rejections[0].raw


def test_missing_pref_file_keeps_the_user_with_empty_preferences(tmp_path):
    folder = write_user(tmp_path / "ads16", 1, "U0007", replace={"PREF": None})
    parsed = parse_user_folder(folder, tmp_path)
    user = parsed.frames["ads16_users"].iloc[0]
    assert user["most_visited_websites"] == []
    assert user["most_read_books"] == []
    assert user["gender"] == "F"
    assert len(parsed.frames["ads16_ratings"]) == 300
    assert parsed.rejections == [
        Rejection(
            "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Corpus/Corpus/U0007/U0007-PREF.csv",
            None,
            "missing file U0007-PREF.csv",
        )
    ]


def test_missing_rt_file_gives_no_ratings_and_a_rejection(tmp_path):
    folder = write_user(tmp_path / "ads16", 1, "U0010", replace={"RT": None})
    parsed = parse_user_folder(folder, tmp_path)
    assert len(parsed.frames["ads16_users"]) == 1
    assert len(parsed.frames["ads16_ratings"]) == 0
    assert list(parsed.frames["ads16_ratings"].columns)[:2] == ["user_id", "category_index"]
    assert [rejection.reason for rejection in parsed.rejections] == ["missing file U0010-RT.csv"]


def test_bad_rating_values_are_rejected_one_slot_each_and_the_rest_kept():
    cells = rating_cells()
    cells[2] = ",".join(["3"] * 14)  # one value short: no slot of Cat2 can be trusted
    cells[5] = "1,2,3,x,5,1,2,3,4,5,1,2,3,4,5"
    cells[6] = "7,2,3,4,5,1,2,3,4,5,1,2,3,4,5"
    parsed = parse_ratings_csv(rt_csv(cells), "ads16/U0011/U0011-RT.csv", "U0011")

    ratings = parsed.value
    assert len(ratings) == 300 - 15 - 1 - 1
    assert 2 not in set(ratings["category_index"])
    cat5 = ratings[ratings["category_index"] == 5]
    assert list(cat5["position"]) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert list(cat5["rating"].iloc[:4]) == [1, 2, 3, 5]

    short = [rejection for rejection in parsed.rejections if rejection.raw == "3,3,3,3,3,3,3,3,3,3,3,3,3,3"]
    assert [rejection.source_row for rejection in short] == list(range(31, 46))
    assert short[0].reason == "Cat2 holds 14 ratings, expected 15: they cannot be matched to ads by position"
    assert parsed.rejections[15:] == [
        Rejection("ads16/U0011/U0011-RT.csv", 79, "rating for Cat5 position 3 is not an integer in 1..5", "x"),
        Rejection("ads16/U0011/U0011-RT.csv", 91, "rating for Cat6 position 0 is not an integer in 1..5", "7"),
    ]


def test_comma_delimited_rt_is_rejected_as_a_whole_file(tmp_path):
    comma_rt = rt_csv(rating_cells()).replace(b'";"', b'","')
    with pytest.raises(SourceError, match=re.escape("expected ';'-delimited U0012-RT.csv with 20 columns")):
        parse_ratings_csv(comma_rt, "ads16/U0012/U0012-RT.csv", "U0012")

    folder = write_user(tmp_path / "ads16", 1, "U0012", replace={"RT": comma_rt})
    parsed = parse_user_folder(folder, tmp_path)
    assert len(parsed.frames["ads16_ratings"]) == 0
    assert len(parsed.rejections) == 1
    assert parsed.rejections[0].source_row is None
    assert parsed.rejections[0].source_file.endswith("Corpus/Corpus/U0012/U0012-RT.csv")
    assert parsed.rejections[0].reason == "expected ';'-delimited U0012-RT.csv with 20 columns Cat0..Cat19, found 1"


def test_rt_whose_category_names_do_not_match_is_rejected():
    raw = rt_csv(rating_cells()).replace(b"Betting", b"Gambling")
    with pytest.raises(SourceError, match="category name 'Gambling' under Cat11 is not 'Betting'"):
        parse_ratings_csv(raw, "ads16/U0013/U0013-RT.csv", "U0013")


def test_big_five_answers_outside_minus_two_to_two_are_nulled_and_rejected():
    answers = [*TIPI_ANSWERS[:3], "3", *TIPI_ANSWERS[4:6], "abc", *TIPI_ANSWERS[7:]]
    parsed = parse_big_five_csv(b5_csv(answers), "ads16/U0014/U0014-B5.csv")
    assert parsed.value == {
        "tipi_1": 2,
        "tipi_2": -1,
        "tipi_3": 0,
        "tipi_4": None,
        "tipi_5": -2,
        "tipi_6": 0,
        "tipi_7": None,
        "tipi_8": 2,
        "tipi_9": -1,
        "tipi_10": 0,
    }
    assert [(rejection.source_row, rejection.reason) for rejection in parsed.rejections] == [
        (4, "answer to question 4 is not an integer in -2..2"),
        (7, "answer to question 7 is not an integer in -2..2"),
    ]


def test_captions_are_matched_by_column_even_when_the_paths_row_is_another_users():
    # Paths copied from U0042, listed in another order: only the fave<n> headers decide the order.
    raw = csv_bytes(
        ["fave2", "fave1", "fave3"],
        ["U0042-IM-POS/7.png", "U0042-IM-POS/9.png", "U0042-IM-POS/8.png"],
        ["sunny beach", "a red kite", "old map"],
    )
    parsed = parse_image_captions_csv(raw, "ads16/U0015/U0015-IM-POS.csv")
    assert parsed.value == ["a red kite", "sunny beach", "old map"]
    assert parsed.rejections == []


def test_a_user_lacking_an_im_neg_column_keeps_the_other_captions(tmp_path):
    im_neg = im_csv(
        ["unfave1", "unfave2", "unfave4", "unfave5"], ["grey wall", "traffic jam", "broken cup", "fog"], "U0016"
    )
    folder = write_user(tmp_path / "ads16", 1, "U0016", replace={"IM-NEG": im_neg})
    parsed = parse_user_folder(folder, tmp_path)
    assert parsed.frames["ads16_users"].iloc[0]["negative_captions"] == [
        "grey wall",
        "traffic jam",
        "broken cup",
        "fog",
    ]
    assert parsed.rejections == [
        Rejection(
            "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Corpus/Corpus/U0016/U0016-IM-NEG.csv",
            None,
            "column 'unfave3' missing from U0016-IM-NEG.csv",
        )
    ]


def test_an_im_file_without_a_captions_line_gives_no_captions(tmp_path):
    two_lines = csv_bytes(["fave1", "fave2"], ["U0017-IM-POS/1.png", "U0017-IM-POS/2.png"])
    folder = write_user(tmp_path / "ads16", 1, "U0017", replace={"IM-POS": two_lines})
    parsed = parse_user_folder(folder, tmp_path)
    assert parsed.frames["ads16_users"].iloc[0]["positive_captions"] == []
    assert [rejection.reason for rejection in parsed.rejections] == [
        "U0017-IM-POS.csv has no captions line (expected header, image paths, captions)"
    ]


def test_ad_folder_one_with_files_that_are_not_ads(tmp_path):
    root = tmp_path / "ads16"
    write_ads(root, 1, 1, {"1.png": PNG, "2.png": JPEG, "Thumbs.db": b"junk", "16.png": PNG})
    parsed = parse_ad_catalog(root, tmp_path)
    assert list(parsed.frames["ads16_ads"]["ad_id"]) == ["ads16-00-00"]
    folder = "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Ads/Ads/1"
    assert parsed.rejections == [
        Rejection(f"{folder}/16.png", None, "not an ad: 16.png is outside the 15 ads of a category", "16.png"),
        Rejection(f"{folder}/2.png", None, "not an ad: not a PNG (starts with b'\\xff\\xd8\\xff\\xe0synt')", "2.png"),
        Rejection(f"{folder}/Thumbs.db", None, "not an ad: name is not <n>.png", "Thumbs.db"),
    ]


def test_zipped_copies_pdfs_and_stray_files_are_counted_not_read(tmp_path):
    root = tmp_path / "ads16"
    folder = write_user(root, 1, "U0001")
    write_ads(root, 1, 1, {"1.png": PNG})
    (part_dir(root, 1) / "Ads.zip").write_bytes(b"PK\x03\x04")
    (part_dir(root, 1) / "Corpus.zip").write_bytes(b"PK\x03\x04")
    (root / "ADS16_Benchmark_part1" / "ADS16 paper.pdf").write_bytes(b"%PDF-1.4")
    (folder / "notes.txt").write_bytes(b"scratch")

    parsed = parse_ads16(root, tmp_path)

    assert parsed.skipped == Counter({"zipped copy": 2, "PDF document": 1, "not a CSV": 1})
    assert parsed.rejections == []
    assert (len(parsed.frames["ads16_users"]), len(parsed.frames["ads16_ads"])) == (1, 1)


def test_a_user_folder_repeated_in_both_parts_is_read_once(tmp_path):
    root = tmp_path / "ads16"
    write_user(root, 1, "U0001")
    write_user(root, 2, "U0001")
    parsed = parse_ads16(root, tmp_path)
    assert len(parsed.frames["ads16_users"]) == 1
    assert len(parsed.frames["ads16_ratings"]) == 300
    assert parsed.rejections == [
        Rejection(
            "ads16/ADS16_Benchmark_part2/ADS16_Benchmark_part2/Corpus/Corpus/U0001",
            None,
            "duplicate user folder U0001, already read from "
            "ads16/ADS16_Benchmark_part1/ADS16_Benchmark_part1/Corpus/Corpus/U0001",
        )
    ]


def test_a_missing_root_raises_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "ads16"
    with pytest.raises(SourceError, match=re.escape(str(missing))):
        parse_ads16(missing, tmp_path)


def test_a_root_without_user_folders_raises_naming_what_was_expected(tmp_path):
    root = tmp_path / "ads16"
    write_ads(root, 1, 1, {"1.png": PNG})
    with pytest.raises(SourceError, match=re.escape(f"no user folder in {root}: expected ")) as raised:
        parse_ads16(root, tmp_path)
    assert "Corpus/Corpus/U" in str(raised.value)
