"""Deterministic synthetic samples of the three Kaggle datasets, in exactly the real layout.

The real downloads cannot be fetched on build machines and ADS-16 may not be
redistributed, so the repository ships these samples instead. Layouts, value
domains and quirks follow the real datasets' (see the loaders in ingestion/); every
value is invented from the word lists below (only country names are real).

    adstream samples --scale small|full --out DIR [--seed 7]

The same scale and seed give byte-identical files. Only the three dataset
folders under ``--out`` (``advertising/``, ``ads16/``, ``amazon/``) are replaced.
The builders are pure (seed in, bytes out); ``generate`` is the only writer.
"""

from __future__ import annotations

import colorsys
import csv
import io
import random
import shutil
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import numpy as np
import typer

from adstream.taxonomy import ADS16_CATEGORIES, ADS_PER_CATEGORY
from cli.lazy import commands_app

SCALES = ("small", "full")
DATASET_DIRS = ("advertising", "ads16", "amazon")


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _np_rng(seed: int, label: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode()), *more])


# --------------------------------------------------------------------------- Advertising

ADVERTISING_FILE = "advertising/advertising.csv"
ADVERTISING_HEADER = (
    "Daily Time Spent on Site",
    "Age",
    "Area Income",
    "Daily Internet Usage",
    "Ad Topic Line",
    "City",
    "Male",
    "Country",
    "Timestamp",
    "Clicked on Ad",
)
ADVERTISING_ROWS = 1000

# Per numeric column: (mean, sd) of non-clickers, (mean, sd) of clickers, the real
# file's (min, max) to clip into, and decimals kept. Class means follow the real file.
_ADV_NUMERIC = (
    ((76.9, 7.5), (53.1, 12.9), (32.60, 91.43), 2),
    ((31.7, 6.1), (40.3, 8.8), (19, 61), 0),
    ((61385.6, 8700.0), (48614.4, 12800.0), (13996.5, 79484.8), 2),
    ((214.5, 24.0), (145.5, 29.0), (104.78, 269.96), 2),
)
_ADV_FIRST_DAY, _ADV_LAST_DAY = datetime(2016, 1, 1), datetime(2016, 7, 24)
_ADV_DISTINCT_CITIES = 969

_TOPIC_OPENERS = (
    "Amber", "Bold", "Breezy", "Brisk", "Cheerful", "Cozy", "Crisp", "Dapper", "Daring", "Earthy",
    "Fearless", "Gentle", "Glossy", "Hearty", "Humble", "Jolly", "Keen", "Lively", "Luminous", "Lush",
    "Mellow", "Modest", "Nimble", "Plucky", "Quirky", "Radiant", "Rustic", "Savvy", "Sleek", "Snappy",
    "Sunny", "Tidy", "Trusty", "Upbeat", "Velvet", "Vivid", "Wholesome", "Witty", "Zesty", "Zippy",
)  # fmt: skip
_TOPIC_MODIFIERS = (
    "weekend", "family", "budget", "premium", "seasonal", "farm-fresh", "pocket-size", "all-weather",
    "hand-made", "coastal", "alpine", "midnight", "morning", "solar", "vintage", "eco-friendly",
    "express", "limited-edition", "starter", "city-break", "two-for-one", "members-only",
)  # fmt: skip
_TOPIC_NOUNS = (
    "bundle", "getaway", "makeover", "voucher", "subscription", "toolkit", "playlist", "marketplace",
    "workshop", "giveaway", "bootcamp", "membership", "cookbook", "wardrobe", "road trip", "festival pass",
    "upgrade", "starter pack", "tasting menu", "gadget", "gift box", "travel pass", "masterclass",
    "meal plan", "fitness plan", "garden kit", "wellness retreat", "streaming deal", "phone plan",
    "loyalty card", "flash sale", "pop-up shop",
)  # fmt: skip

_CITY_STARTS = (
    "Ash", "Bram", "Cor", "Dun", "El", "Fen", "Gar", "Hol", "Ist", "Jor", "Kel", "Lor", "Mar", "Nor",
    "Oak", "Pel", "Quin", "Ros", "Sel", "Tor", "Ul", "Ver", "Wyn", "Yar", "Zel", "Brin", "Cal", "Dra",
)  # fmt: skip
_CITY_MIDDLES = ("", "a", "e", "i", "o", "an", "en", "or", "il", "um")
_CITY_ENDS = (
    "ford", "mouth", "haven", "stead", "ton", "ville", "bury", "wick", "dale", "mere", "port", "crest",
    "field", "gate", "holm", "moor", "brook", "ridge", "shaw", "thorpe",
)  # fmt: skip
_CITY_PREFIXES = ("North ", "East ", "Port ", "Lake ", "New ", "West ", "South ", "Fort ", "Upper ")

# Real country names (not personal data); the real file has names with & ' ( ).
_COUNTRIES = (
    "Afghanistan", "Albania", "Algeria", "Andorra", "Angola", "Antigua & Barbuda", "Argentina", "Armenia",
    "Australia", "Austria", "Azerbaijan", "Bahamas", "Bangladesh", "Barbados", "Belarus", "Belgium", "Belize",
    "Benin", "Bhutan", "Bolivia", "Bosnia & Herzegovina", "Botswana", "Brazil", "Bulgaria", "Burundi",
    "Cambodia", "Cameroon", "Canada", "Chile", "China", "Colombia", "Congo (Brazzaville)", "Congo (Kinshasa)",
    "Costa Rica", "Cote d'Ivoire", "Croatia", "Cuba", "Cyprus", "Denmark", "Dominica", "Ecuador", "Egypt",
    "Estonia", "Ethiopia", "Fiji", "Finland", "France", "Gabon", "Georgia", "Germany", "Ghana", "Greece",
    "Guatemala", "Haiti", "Honduras", "Hungary", "Iceland", "India", "Indonesia", "Ireland", "Italy",
    "Jamaica", "Japan", "Jordan", "Kenya", "Korea (North)", "Korea (South)", "Lao People's Democratic Republic",
    "Latvia", "Lebanon", "Lithuania", "Madagascar", "Malaysia", "Mali", "Malta", "Mexico",
    "Micronesia (Federated States of)", "Mongolia", "Morocco", "Nepal", "Netherlands", "New Zealand", "Nigeria",
    "Norway", "Peru", "Poland", "Portugal", "Qatar", "Romania", "Rwanda", "Saint Kitts & Nevis",
    "Saint Vincent & the Grenadines", "Samoa", "Senegal", "Singapore", "Slovenia", "Spain", "Sri Lanka",
    "Sweden", "Tanzania", "Thailand", "Trinidad & Tobago", "Tunisia", "Turkey", "Uganda", "Ukraine", "Uruguay",
    "Vietnam", "Zambia", "Zimbabwe",
)  # fmt: skip


def _topic_lines(rnd: random.Random, count: int) -> list[str]:
    """Unique invented ad topic lines of 17-55 characters."""
    lines: dict[str, None] = {}
    while len(lines) < count:
        line = f"{rnd.choice(_TOPIC_OPENERS)} {rnd.choice(_TOPIC_MODIFIERS)} {rnd.choice(_TOPIC_NOUNS)}"
        if 17 <= len(line) <= 55:
            lines[line] = None
    return list(lines)


def _city_name(rnd: random.Random) -> str:
    name = rnd.choice(_CITY_STARTS) + rnd.choice(_CITY_MIDDLES) + rnd.choice(_CITY_ENDS)
    return rnd.choice(_CITY_PREFIXES) + name if rnd.random() < 0.2 else name


def advertising_csv(seed: int) -> bytes:
    """The whole ``advertising.csv``: 1000 rows, 500 clicks, the real file's class signal."""
    rnd = random.Random(f"{seed}:advertising")
    clicked = [0, 1] * (ADVERTISING_ROWS // 2)
    rnd.shuffle(clicked)
    topics = _topic_lines(rnd, ADVERTISING_ROWS)
    distinct_cities: dict[str, None] = {}
    while len(distinct_cities) < _ADV_DISTINCT_CITIES:
        distinct_cities[_city_name(rnd)] = None
    cities = list(distinct_cities)
    cities += rnd.choices(cities, k=ADVERTISING_ROWS - len(cities))
    rnd.shuffle(cities)
    seconds = int((_ADV_LAST_DAY - _ADV_FIRST_DAY).total_seconds())

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # QUOTE_MINIMAL: only a field with a comma gets quotes
    writer.writerow(ADVERTISING_HEADER)
    for click, topic, city in zip(clicked, topics, cities, strict=True):
        numbers = []
        for *classes, (low, high), decimals in _ADV_NUMERIC:
            mean, sd = classes[click]
            value = min(max(rnd.gauss(mean, sd), low), high)
            numbers.append(str(round(value)) if decimals == 0 else repr(round(value, decimals)))
        time_on_site, age, income, usage = numbers
        male = int(rnd.random() < 0.48)
        stamp = _ADV_FIRST_DAY + timedelta(seconds=rnd.randrange(seconds))
        country = rnd.choice(_COUNTRIES)
        row = [time_on_site, age, income, usage, topic, city, male, country, f"{stamp:%Y-%m-%d %H:%M:%S}", click]
        writer.writerow(row)
    return out.getvalue().encode("ascii")


# --------------------------------------------------------------------------- ADS-16

ADS16_ADS_PER_CATEGORY = ADS_PER_CATEGORY
ADS16_PARTS = ("ADS16_Benchmark_part1", "ADS16_Benchmark_part2")
ADS16_FIRST_USER = (1, 61)  # part2's numbering starts at U0061 whatever the scale
ADS16_USERS_PER_PART = {"small": 12, "full": 60}
INF_COLUMNS = (
    "Name", "Last Name", "Gender", "Age", "Cap/Zip-Code", "Home town", "Home country", "Countries visited",
    "Paypal", "Type of Job", "Weekly working hours", "Income", "Timepass", "Fave Sports",
)  # fmt: skip
PREF_COLUMNS = (
    "Most visited websites", "Most listened musics", "Most watched movies", "Most watched tv programmes",
    "Most read books",
)  # fmt: skip

_LRM = "\u200e"  # left-to-right mark, sprinkled into values as in the real corpus
_THUMBNAIL_EPOCH = 1_458_000_000  # fixed base for the n_th_<unixts>.png thumbnail names

# Share of ratings 1..4 and below (cumulative); 5 takes the rest. Mean ~1.9, median 1.
_RATING_CUMULATIVE = (0.57, 0.73, 0.85, 0.93)
# Latent appeal of each category to everybody, in units of the per-rating noise (sd 1).
_CATEGORY_APPEAL = {
    "Clothing & Shoes": 0.5, "Consumer Electronics": 0.6, "Media (BMVD)": 0.4, "Grocery": 0.3,
    "Kitchen & Home": 0.2, "Sports & Outdoors": 0.2, "Betting": -0.6, "Dating Sites": -0.7,
    "Office Products": -0.3, "Pet Supplies": -0.2,
}  # fmt: skip
# Added for men, subtracted for women: strong enough for a model to learn from demographics.
_GENDER_AFFINITY = {
    "Automotive": 0.8, "Console & Video Games": 0.6, "DIY & Tools": 0.6, "Betting": 0.5,
    "Computer Software": 0.4, "Sports & Outdoors": 0.3, "Clothing & Shoes": -0.6, "Health & Beauty": -0.9,
    "Jewellery & Watches": -0.6, "Baby Products": -0.5, "Kitchen & Home": -0.4,
}  # fmt: skip
_AGE_BAND_AFFINITY = {
    "18-24": {"Console & Video Games": 0.9, "Dating Sites": 0.6, "Clothing & Shoes": 0.4,
              "Musical Instruments": 0.4, "Garden & Outdoor living": -0.8, "Baby Products": -0.6,
              "Kitchen & Home": -0.5, "DIY & Tools": -0.4},
    "25-39": {"Baby Products": 0.8, "Kitchen & Home": 0.3, "Toys & Games": 0.5, "Consumer Electronics": 0.2},
    "40+": {"Garden & Outdoor living": 1.0, "Kitchen & Home": 0.6, "DIY & Tools": 0.5, "Grocery": 0.4,
            "Console & Video Games": -0.8, "Dating Sites": -0.6},
}  # fmt: skip
_TIMEPASS_AFFINITY = {
    "Internet": {"Computer Software": 0.7, "Console & Video Games": 0.3},
    "Reading": {"Media (BMVD)": 0.8, "Office Products": 0.3},
    "Sports": {"Sports & Outdoors": 0.9},
    "Music": {"Musical Instruments": 1.0, "Media (BMVD)": 0.3},
    "Movie": {"Media (BMVD)": 0.7, "Consumer Electronics": 0.3},
}

_NAME_SYLLABLES = ("ka", "lo", "mi", "ren", "ta", "vi", "dor", "el", "sa", "nu", "bri", "quo", "zen", "fa", "lin")
_HOME_COUNTRIES = (
    "United Kingdom", "Untied Kingdom", "UK", "United States", "USA", "Canada", "Phillipines", "Philippines",
    "India", "Ireland", "Italy", "Australia",
)  # fmt: skip
_VISITED_COUNTRIES = (
    "France", "Spain", "Italy", "Germany", "Greece", "Portugal", "Netherlands", "Belgium", "Japan", "Thailand",
    "Mexico", "Canada", "USA", "Turkey", "Egypt", "Morocco", "Croatia", "Norway", "Iceland", "Brazil",
)  # fmt: skip
_JOBS = (
    ("Full-time employment", "Full Time"), ("Part-time employment", "Part Time"),
    ("Contract employment", "Full Time"), ("Self-employed", "Full Time"), ("Student", "Part Time"),
    ("Unemploied", "Part Time"), ("Retired", "Part Time"),
)  # fmt: skip
_TIMEPASSES = tuple(_TIMEPASS_AFFINITY)
_SPORTS = (
    "Football", "Tennis", "Swimming", "Running", "Cycling", "Basketball", "Cricket", "Rugby", "Golf", "Yoga",
    "Hiking &amp; Climbing", "Martial Arts", "Snooker",
)  # fmt: skip
_PREF_CHOICES = {
    "Most visited websites": (
        "Social networking sites",
        "Shopping (Fashion, Gadgets) sites",
        "Streaming (Video, Music) platforms",
        "Sports &amp; Fitness portals",
        "News &amp; Weather",
        "Forums (Tech, Gaming) boards",
        "Travel &amp; Booking sites",
        "Email services",
        "Search engines",
        "Recipe blogs",
    ),
    "Most listened musics": (
        "Pop",
        "Rock &amp; Roll",
        "Classical (Baroque, Romantic)",
        "Hip-Hop",
        "Jazz",
        "Electronic (House, Techno)",
        "Country",
        "Indie",
        "Metal",
        "R&amp;B",
        "Folk",
    ),
    "Most watched movies": (
        "Action",
        "Comedy",
        "Drama",
        "Sci-Fi &amp; Fantasy",
        "Horror",
        "Animation (Kids, Family)",
        "Documentary",
        "Romance",
        "Thriller",
        "Westerns",
    ),
    "Most watched tv programmes": (
        "Reality shows",
        "News",
        "Sitcoms",
        "Talk shows",
        "Cooking &amp; Food",
        "Sports (Live, Highlights)",
        "Documentaries",
        "Soap operas",
        "Quiz shows",
        "Cartoons",
    ),
    "Most read books": (
        "Fiction",
        "Biographies",
        "Self-help",
        "Science (Popular, Academic)",
        "Crime &amp; Mystery",
        "Travel guides",
        "Comics &amp; Graphic novels",
        "History",
        "Poetry",
        "Cookbooks",
    ),
}
_CAPTION_ADJECTIVES = (
    "sleepy", "golden", "crowded", "foggy", "tiny", "noisy", "quiet", "bright", "battered", "shiny", "striped",
)  # fmt: skip
_CAPTION_SUBJECTS = (
    "puppy", "lighthouse", "bicycle", "teapot", "market stall", "robot toy", "mountain trail", "surfboard",
    "birthday cake", "old tractor", "pair of sneakers", "city skyline", "fish &amp; chips", "salt &amp; pepper set",
)  # fmt: skip
_CAPTION_SETTINGS = (
    "at dawn", "on a rainy day", "in the garden", "by the river", "at the fair", "on the balcony",
    "after the match", "in the kitchen", "under neon signs", "on holiday",
)  # fmt: skip
_TOWN_PARTS = ("brook", "ley", "wick", "ham", "stone", "mere", "ton", "fold", "by", "combe")


@dataclass(frozen=True)
class _Ads16User:
    part: str
    user_id: str  # "U0001"
    inf: dict[str, str]  # INF column -> value, canonical order
    gender: str
    age: int
    timepass: str


def ads16_users(scale: str) -> list[tuple[str, str]]:
    """(part folder, user id) of every user at this scale, part1 first."""
    _check_scale(scale)
    per_part = ADS16_USERS_PER_PART[scale]
    return [
        (part, f"U{first + i:04d}")
        for part, first in zip(ADS16_PARTS, ADS16_FIRST_USER, strict=True)
        for i in range(per_part)
    ]


def _png(size: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid solid-colour RGB PNG of ``size`` x ``size`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    scanlines = (b"\x00" + bytes(rgb) * size) * size  # filter byte 0 before each row
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines, 9))
        + chunk(b"IEND", b"")
    )


def _hsv_png(size: int, hue: float, value: float) -> bytes:
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.6, value)
    return _png(size, (round(red * 255), round(green * 255), round(blue * 255)))


def _age_band(age: int) -> str:
    return "18-24" if age < 25 else "25-39" if age < 40 else "40+"


def _town(rnd: random.Random) -> str:
    casing = rnd.choice((str.title, str.lower, str.upper, str.capitalize, str.swapcase))
    words = [casing((rnd.choice(_CITY_STARTS) + rnd.choice(_TOWN_PARTS)).lower())]
    if rnd.random() < 0.1:
        words.append(casing((rnd.choice(_CITY_STARTS) + rnd.choice(_TOWN_PARTS)).lower()))
    return " &amp; ".join(words) + " " * rnd.choice((0, 0, 0, 1, 2))


def _postcode(rnd: random.Random, country: str) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"

    def letter() -> str:
        return rnd.choice(letters)

    def digit() -> str:
        return str(rnd.randrange(10))

    style = {"UK": "uk", "United Kingdom": "uk", "Untied Kingdom": "uk", "Canada": "ca"}.get(country)
    style = style or rnd.choice(("us", "us", "uk", "ca"))
    if style == "uk":
        return f"{letter()}{letter() if rnd.random() < 0.5 else ''}{rnd.randrange(1, 30)} {digit()}{letter()}{letter()}"
    if style == "ca":
        return f"{letter()}{digit()}{letter()} {digit()}{letter()}{digit()}"
    return "".join(digit() for _ in range(5))


def _ads16_profiles(scale: str, seed: int) -> list[_Ads16User]:
    rnd = random.Random(f"{seed}:ads16-users")
    users = ads16_users(scale)
    genders = ["F", "M"] * (len(users) // 2)  # balanced, so gender effects are measurable
    rnd.shuffle(genders)
    profiles = []
    for (part, user_id), gender in zip(users, genders, strict=True):
        age = min(68, 18 + int(rnd.gammavariate(2.0, 7.0)))
        name = "".join(rnd.choice(_NAME_SYLLABLES) for _ in range(rnd.choice((2, 2, 3)))).capitalize()
        country = rnd.choice(_HOME_COUNTRIES)
        job, hours = rnd.choice(_JOBS)
        timepass = rnd.choice(_TIMEPASSES)
        tld = rnd.choice(("com", "co.uk", "ca", "net"))
        inf = {
            "Name": name,
            "Last Name": "Hidden",
            "Gender": gender,
            "Age": str(age),
            "Cap/Zip-Code": _postcode(rnd, country),
            "Home town": _town(rnd),
            "Home country": country,
            "Countries visited": ", ".join(rnd.sample(_VISITED_COUNTRIES, rnd.randint(1, 5))),
            "Paypal": f"{name[0].lower()}***@***.{tld}",
            "Type of Job": job,
            "Weekly working hours": hours,
            "Income": str(rnd.randint(0, 3)),
            "Timepass": timepass,
            "Fave Sports": "None" if rnd.random() < 0.05 else ",".join(rnd.sample(_SPORTS, rnd.randint(1, 3))),
        }
        profiles.append(_Ads16User(part, user_id, inf, gender, age, timepass))
    return profiles


def _category_affinity(user: _Ads16User, category: str) -> float:
    gender_sign = 1.0 if user.gender == "M" else -1.0
    return (
        _CATEGORY_APPEAL.get(category, 0.0)
        + gender_sign * _GENDER_AFFINITY.get(category, 0.0)
        + _AGE_BAND_AFFINITY[_age_band(user.age)].get(category, 0.0)
        + _TIMEPASS_AFFINITY[user.timepass].get(category, 0.0)
    )


def _ads16_ratings(profiles: Sequence[_Ads16User], seed: int) -> np.ndarray:
    """Ratings 1..5, shape (users, 20 categories, 15 ads): demographics + ad appeal + user mood + noise."""
    rng = _np_rng(seed, "ads16-ratings")
    ad_appeal = rng.normal(0.0, 0.5, (len(ADS16_CATEGORIES), ADS16_ADS_PER_CATEGORY))
    generosity = rng.normal(0.0, 0.6, (len(profiles), 1, 1))
    affinity = np.array([[_category_affinity(user, cat) for cat in ADS16_CATEGORIES] for user in profiles])
    noise = rng.normal(0.0, 1.0, (len(profiles), len(ADS16_CATEGORIES), ADS16_ADS_PER_CATEGORY))
    score = affinity[:, :, None] + ad_appeal[None] + generosity + noise
    cuts = np.quantile(score, _RATING_CUMULATIVE)  # fixes the skew to 1 whatever the effects
    return 1 + np.searchsorted(cuts, score)


def _semicolon_csv(
    rows: Sequence[Sequence[str]],
    rnd: random.Random,
    *,
    quote: bool = True,
    blank_line_ok: bool = True,
    force_bom: bool = False,
    force_blank_line: bool = False,
) -> bytes:
    """A ``;``-delimited file with the corpus quirks: CRLF or LF, sometimes a BOM or a leading blank line."""
    newline = rnd.choice(("\r\n", "\n"))
    cells = (('"' + value.replace('"', '""') + '"' if quote else value for value in row) for row in rows)
    text = newline.join(";".join(row) for row in cells) + newline
    if force_blank_line or (blank_line_ok and rnd.random() < 0.1):
        text = newline + text
    bom = force_bom or rnd.random() < 0.1
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def _caption(rnd: random.Random) -> str:
    caption = f"{rnd.choice(_CAPTION_ADJECTIVES)} {rnd.choice(_CAPTION_SUBJECTS)} {rnd.choice(_CAPTION_SETTINGS)}"
    return caption + _LRM if rnd.random() < 0.1 else caption


def _image_columns(rnd: random.Random) -> int:
    return rnd.randint(6, 10) if rnd.random() < 0.1 else 5


def ads16_files(scale: str, seed: int) -> dict[str, bytes]:
    """Every ADS-16 file (ad images and user corpus), keyed by path relative to ``--out``."""
    profiles = _ads16_profiles(scale, seed)
    ratings = _ads16_ratings(profiles, seed)
    rnd = random.Random(f"{seed}:ads16-files")
    files: dict[str, bytes] = {}

    for folder in range(1, len(ADS16_CATEGORIES) + 1):
        part = ADS16_PARTS[0] if folder <= 10 else ADS16_PARTS[1]
        ads = f"ads16/{part}/{part}/Ads/Ads/{folder}"
        for position in range(1, ADS16_ADS_PER_CATEGORY + 1):
            hue, value = (folder - 1) / len(ADS16_CATEGORIES), 0.45 + 0.5 * position / ADS16_ADS_PER_CATEGORY
            files[f"{ads}/{position}.png"] = _hsv_png(8, hue, value)
    # Folder 1 holds 16 files in the real download; the extra one is not a PNG.
    files[f"ads16/{ADS16_PARTS[0]}/{ADS16_PARTS[0]}/Ads/Ads/1/Thumbs.db"] = b"\xd0\xcf\x11\xe0junk\x00\x01"

    # Per-user quirks the real corpus has, pinned to fixed users so every scale shows them.
    copied_paths = {5: 4, len(profiles) - 3: len(profiles) - 4}  # user index -> user whose IM-POS paths it has
    short_negatives = 7  # this user's IM-NEG.csv lacks its last column (the image itself is still there)
    forced_wide = 3  # this user has more than five favourite images

    pos_columns = [
        5 if i in copied_paths or i in copied_paths.values() else _image_columns(rnd) for i in range(len(profiles))
    ]
    pos_columns[forced_wide] = 8
    for index, (user, user_ratings) in enumerate(zip(profiles, ratings, strict=True)):
        corpus = f"ads16/{user.part}/{user.part}/Corpus/Corpus/{user.user_id}"
        prefix = f"{corpus}/{user.user_id}"
        user_number = int(user.user_id[1:])

        files[f"{prefix}-B5.csv"] = _semicolon_csv(
            [["Question#", "Answer"]] + [[str(q), str(rnd.randint(-2, 2))] for q in range(1, 11)], rnd, quote=False
        )

        columns = list(INF_COLUMNS)
        if index == 1 or rnd.random() < 0.5:  # the real order is unknown: loaders must key by header
            while columns == list(INF_COLUMNS):
                rnd.shuffle(columns)
        values = dict(user.inf)
        if index == 2 or rnd.random() < 0.2:
            values["Home town"] = _LRM + values["Home town"]
        files[f"{prefix}-INF.csv"] = _semicolon_csv([columns, [values[c] for c in columns]], rnd, force_bom=index == 0)

        prefs = [",".join(rnd.sample(_PREF_CHOICES[c], rnd.randint(1, 4))) for c in PREF_COLUMNS]
        if index == 2 or rnd.random() < 0.2:
            prefs[0] += _LRM
        files[f"{prefix}-PREF.csv"] = _semicolon_csv([list(PREF_COLUMNS), prefs], rnd, force_blank_line=index == 1)

        names = [name.replace("&", "&amp;") if rnd.random() < 0.3 else name for name in ADS16_CATEGORIES]
        rt_cells = [",".join(str(r) for r in row) for row in user_ratings.tolist()]
        header = [f"Cat{k}" for k in range(len(ADS16_CATEGORIES))]
        files[f"{prefix}-RT.csv"] = _semicolon_csv([header, names, rt_cells], rnd, blank_line_ok=False)

        for kind, label in (("POS", "fave"), ("NEG", "unfave")):
            images = pos_columns[index] if kind == "POS" else _image_columns(rnd)
            columns_written = images - 1 if kind == "NEG" and index == short_negatives else images
            owner = profiles[copied_paths[index]].user_id if kind == "POS" and index in copied_paths else user.user_id
            rows = [
                [f"{label}{n}" for n in range(1, columns_written + 1)],
                [f"{owner}-IM-{kind}/{n}.png" for n in range(1, columns_written + 1)],
                [_caption(rnd) for _ in range(columns_written)],
            ]
            files[f"{prefix}-IM-{kind}.csv"] = _semicolon_csv(rows, rnd)
            for n in range(1, images + 1):
                hue = rnd.random()
                image_dir = f"{prefix}-IM-{kind}"
                files[f"{image_dir}/{n}.png"] = _hsv_png(8, hue, 0.8)
                stamp = _THUMBNAIL_EPOCH + user_number * 86_400 + n * 37
                files[f"{image_dir}/{n}_th_{stamp}.png"] = _hsv_png(4, hue, 0.8)
    return files


# --------------------------------------------------------------------------- Amazon

AMAZON_ROOT = "amazon/scrapped_data/scrapped_data"
AMAZON_FULL_FILES = 445
AMAZON_FULL_ROWS = 2_800_000
AMAZON_MIN_ROWS, AMAZON_MAX_ROWS = 15, 19_249
_SMALL_ROW_DIVISOR = 32  # a small file holds 1/32 of its full-scale rows

# Category folder -> product nouns its titles use (and its file names are built from).
_AMAZON_FOLDERS = {
    "arts_crafts__painting_supplies": ("Acrylic Paint Set", "Watercolor Brushes", "Canvas Panels", "Easel",
                                       "Sketch Pad", "Palette Knife"),
    "automotive__car_care": ("Car Wax", "Microfiber Towels", "Tire Shine", "Car Wash Soap", "Detailing Brush",
                             "Glass Cleaner"),
    "automotive__interior_accessories": ("Seat Covers", "Floor Mats", "Steering Wheel Cover", "Phone Mount",
                                         "Sun Shade", "Trunk Organizer"),
    "baby__feeding": ("Baby Bottles", "Bibs", "High Chair", "Sippy Cup", "Bottle Warmer", "Silicone Spoons"),
    "baby__nursery": ("Crib Sheets", "Baby Monitor", "Night Light", "Changing Pad", "Swaddle Blankets",
                      "Crib Mobile"),
    "beauty__hair_care": ("Shampoo", "Conditioner", "Hair Dryer", "Hair Straightener", "Hair Mask",
                          "Detangling Brush"),
    "beauty__makeup": ("Lipstick", "Mascara", "Foundation", "Eyeshadow Palette", "Makeup Brushes", "Setting Spray"),
    "beauty__skin_care": ("Moisturizer", "Face Serum", "Sunscreen", "Cleansing Balm", "Eye Cream", "Sheet Masks"),
    "clothing__mens_fashion": ("T-Shirt", "Chino Pants", "Hoodie", "Dress Shirt", "Leather Belt", "Rain Jacket"),
    "clothing__shoes": ("Running Shoes", "Hiking Boots", "Sandals", "Slippers", "Sneakers", "Loafers"),
    "clothing__womens_fashion": ("Maxi Dress", "Cardigan", "Leggings", "Blouse", "Tote Bag", "Denim Jacket"),
    "electronics__camera_photo": ("Tripod", "Camera Bag", "Lens Cleaning Kit", "Memory Card", "Ring Light",
                                  "Action Camera"),
    "electronics__cell_phones_accessories": ("Phone Case", "Screen Protector", "Charging Cable", "Power Bank",
                                             "Wireless Charger", "Car Charger"),
    "electronics__computers_accessories": ("Monitor", "Keyboard", "Mouse", "Laptop Stand", "USB Hub",
                                           "External Hard Drive"),
    "electronics__headphones_audio": ("Headphones", "Earbuds", "Bluetooth Speaker", "Soundbar", "Headphone Stand",
                                      "Microphone"),
    "electronics__tv_video": ("Smart TV", "TV Wall Mount", "HDMI Cable", "Streaming Stick", "Projector",
                              "Universal Remote"),
    "garden__gardening_tools": ("Pruning Shears", "Garden Hose", "Trowel", "Watering Can", "Kneeling Pad",
                                "Leaf Rake"),
    "garden__outdoor_decor": ("Solar Lights", "Bird Feeder", "Planter Pots", "Wind Chime", "Garden Flag",
                              "Outdoor Rug"),
    "grocery__beverages": ("Green Tea", "Ground Coffee", "Sparkling Water", "Hot Cocoa Mix", "Herbal Tea",
                           "Energy Drink"),
    "grocery__snacks": ("Trail Mix", "Protein Bars", "Popcorn", "Dried Mango", "Rice Crackers", "Dark Chocolate"),
    "health__medical_supplies": ("Thermometer", "First Aid Kit", "Blood Pressure Monitor", "Pill Organizer",
                                 "Heating Pad", "Compression Socks"),
    "health__vitamins_supplements": ("Vitamin D3", "Fish Oil Capsules", "Multivitamin", "Probiotic",
                                     "Magnesium Tablets", "Collagen Powder"),
    "home_kitchen__bedding": ("Duvet Cover", "Pillowcases", "Mattress Topper", "Weighted Blanket", "Fitted Sheet",
                              "Bed Pillows"),
    "home_kitchen__cookware": ("Frying Pan", "Saucepan", "Dutch Oven", "Baking Sheet", "Wok", "Stock Pot"),
    "home_kitchen__furniture": ("Bookshelf", "Office Chair", "Side Table", "Shoe Rack", "Bar Stool", "TV Stand"),
    "home_kitchen__storage_organization": ("Storage Bins", "Drawer Organizer", "Vacuum Bags", "Closet Shelf",
                                           "Laundry Basket", "Hangers"),
    "musical_instruments__guitars": ("Acoustic Guitar", "Guitar Strings", "Capo", "Guitar Strap", "Clip-On Tuner",
                                     "Gig Bag"),
    "musical_instruments__keyboards": ("Digital Piano", "Keyboard Stand", "Sustain Pedal", "MIDI Controller",
                                       "Piano Bench", "Dust Cover"),
    "office_products__office_supplies": ("Sticky Notes", "Stapler", "File Folders", "Desk Organizer",
                                         "Label Maker", "Paper Clips"),
    "office_products__writing_instruments": ("Gel Pens", "Highlighters", "Fountain Pen", "Mechanical Pencils",
                                             "Markers", "Fineliners"),
    "pet_supplies__cats": ("Cat Litter", "Scratching Post", "Cat Tree", "Cat Toys", "Litter Box", "Cat Bed"),
    "pet_supplies__dogs": ("Dog Leash", "Dog Bed", "Chew Toys", "Dog Harness", "Poop Bags", "Dog Bowl"),
    "sports_outdoors__camping_hiking": ("Tent", "Sleeping Bag", "Headlamp", "Trekking Poles", "Camping Stove",
                                        "Water Filter"),
    "sports_outdoors__cycling": ("Bike Lock", "Bike Helmet", "Bike Lights", "Cycling Gloves", "Bike Pump",
                                 "Saddle Bag"),
    "sports_outdoors__fitness": ("Yoga Mat", "Dumbbells", "Resistance Bands", "Jump Rope", "Foam Roller",
                                 "Kettlebell"),
    "tools_home_improvement__lighting": ("LED Bulbs", "Ceiling Light", "Desk Lamp", "Strip Lights",
                                         "Motion Sensor Light", "Floor Lamp"),
    "tools_home_improvement__power_tools": ("Cordless Drill", "Circular Saw", "Impact Driver", "Orbital Sander",
                                            "Jigsaw", "Angle Grinder"),
    "toys_games__building_toys": ("Building Blocks", "Magnetic Tiles", "Marble Run", "Construction Set",
                                  "Robot Kit", "Train Set"),
    "toys_games__puzzles": ("Jigsaw Puzzle", "Brain Teaser", "3D Puzzle", "Puzzle Mat", "Floor Puzzle",
                            "Puzzle Box"),
}  # fmt: skip
_FILE_QUALIFIERS = ("", "best_sellers", "new_releases", "deals", "premium")

_BRAND_STARTS = (
    "Vel", "Quor", "Bri", "Zan", "Mok", "Tal", "Ner", "Ox", "Lum", "Pry", "Kest", "Dra", "Fio", "Gral", "Hux",
    "Jen", "Ro", "Sil", "Tev", "Wex", "Ard", "Bex", "Cyr", "Dov", "Esk",
)  # fmt: skip
_BRAND_ENDS = ("ora", "ix", "tek", "ly", "co", "ana", "ex", "io", "um", "ent", "ova", "ar", "wave", "nest", "hub")
_LINES = (
    "Pro", "Max", "Lite", "Series 3", "Series X", "Plus", "Mini", "Ultra", "Classic", "Essentials", "Studio",
    "Go", "Air", "One", "Neo", "Prime", "Edge", "Flex", "Nova", "Elite",
)  # fmt: skip
_SPECS = (
    "2-Pack", "3-Pack", "12-Count", "500 ml", "1 Litre", "16 oz", "24-Inch", "27-Inch", '32"', '15.6"', "4K",
    "1080p", "64GB", "128GB", "1TB", "10 ft", "6 ft", "Large", "Medium", "Set of 4", "Value Pack", "XL",
    "2.4 GHz", "5000mAh", "12V", "1200W", "Queen Size", "Twin Size", "100-Piece", "A4", "0.5 mm", '7"',
)  # fmt: skip
_ADJECTIVES = (
    "Portable", "Wireless", "Stainless Steel", "Heavy Duty", "Compact", "Lightweight", "Premium", "Deluxe",
    "Adjustable", "Rechargeable", "Waterproof", "Organic", "Non-Stick", "Foldable", "Professional", "Classic",
    "Soft", "Extra Large", "Kids", "Travel", "Vintage", "Smart", "Reusable", "Quick-Dry",
)  # fmt: skip
_NON_ASCII_ADJECTIVES = ("Café-Style", "Crème", "Naïve-Art", "Fiancé Gift", "Entrée", "Piñata", "Jalapeño", "Über")
_FEATURES = (
    "Adjustable Strap", "Non-Slip Grip", "USB-C Charging", "Quick Release", "Easy Clean", "BPA Free",
    "Waterproof Case", "LED Indicator", "Soft Touch Finish", "Foldable Design", "Gift Box", "Travel Pouch",
    "Lifetime Warranty", "Dishwasher Safe", "Noise Cancelling", "Bluetooth 5.0", "Memory Foam",
    "Anti-Scratch Coating", "Magnetic Mount", "Extra Long Cable", "Reinforced Stitching", "Fast Charging",
    "Rechargeable Battery", "Smart App Control", "Eco-Friendly Materials", "Unisex Fit", "Breathable Mesh",
    "Multi-Purpose Use", "Wall Mountable", "Tool-Free Assembly", "Ideal Gift for Men and Women",
    "Perfect for Home, Office and Travel",
)  # fmt: skip
_COLOURS = (
    "Black", "White", "Silver", "Navy Blue", "Red", "Grey", "Rose Gold", "Forest Green", "Beige", "Multicolor",
    "Charcoal", "Teal", "Purple", "Matte Black", "Clear",
)  # fmt: skip
# How many features a title lists (0..8); a few titles list dozens (the real max is ~900 chars).
_FEATURE_COUNT_P = (0.12, 0.30, 0.24, 0.14, 0.08, 0.05, 0.035, 0.02, 0.015)
_LONG_TITLE_P = 3e-5
_MAX_TITLE = 900
# Title twists: 0 none, 1 "™" after the brand, 2 "®", 3 accented adjective, 4 en dash before features.
_TWIST_P = (0.955, 0.01, 0.01, 0.0125, 0.0125)


class PlannedFile(NamedTuple):
    path: str  # relative to --out
    rows: int  # product-title records; header lines and empty rows come on top


class _FileQuirks(NamedTuple):
    header: str  # "ad", or "\tad" for exactly one file
    endings: tuple[str, ...]  # line ending of each crawl run; every run after the first repeats the header
    blank_rows: int
    newline_titles: int  # titles with an embedded newline (so quoted)
    nul_tail: int  # NUL bytes after the last line


def _leaf_names(nouns: Sequence[str]) -> list[str]:
    slugs = [noun.lower().replace(" ", "_").replace("-", "_") for noun in nouns]
    return [slug if not qualifier else f"{slug}_{qualifier}" for qualifier in _FILE_QUALIFIERS for slug in slugs]


def amazon_plan(scale: str, seed: int) -> list[PlannedFile]:
    """Every Amazon CSV to write and its number of titles; pure, so ``full`` can be checked without writing it."""
    _check_scale(scale)
    rng = _np_rng(seed, "amazon-plan")
    folders = list(_AMAZON_FOLDERS)
    weights = rng.uniform(0.4, 1.6, len(folders))
    spare = AMAZON_FULL_FILES - 3 * len(folders)
    files_per_folder = 3 + np.floor(weights / weights.sum() * spare).astype(int)
    for index in np.argsort(-weights, kind="stable")[: AMAZON_FULL_FILES - files_per_folder.sum()]:
        files_per_folder[index] += 1

    rows = np.clip(rng.normal(6300, 3000, AMAZON_FULL_FILES), 600, 16_000)
    short_crawls = rng.random(AMAZON_FULL_FILES) < 0.07
    rows[short_crawls] = rng.integers(AMAZON_MIN_ROWS, 600, short_crawls.sum())
    smallest, largest = int(np.argmin(rows)), int(np.argmax(rows))
    others = np.ones(AMAZON_FULL_FILES, dtype=bool)
    others[[smallest, largest]] = False
    rows[others] *= (AMAZON_FULL_ROWS - AMAZON_MIN_ROWS - AMAZON_MAX_ROWS) / rows[others].sum()
    rows = np.clip(np.rint(rows), AMAZON_MIN_ROWS, AMAZON_MAX_ROWS).astype(int)
    rows[smallest], rows[largest] = AMAZON_MIN_ROWS, AMAZON_MAX_ROWS
    small_takes_two = np.zeros(len(folders), dtype=bool)  # the small sample keeps 1-2 files per folder
    small_takes_two[rng.permutation(len(folders))[:15]] = True

    plan = []
    row_counts = iter(rows.tolist())
    for folder, count, takes_two in zip(folders, files_per_folder.tolist(), small_takes_two.tolist(), strict=True):
        dept, sub = folder.split("__")
        names = [f"amazon_{dept}_{sub}.csv"] + [
            f"amazon_{dept}_{sub}_{leaf}.csv" for leaf in _leaf_names(_AMAZON_FOLDERS[folder])
        ]
        for position, name in enumerate(names[:count]):
            full_rows = next(row_counts)
            if scale == "full":
                plan.append(PlannedFile(f"{AMAZON_ROOT}/{folder}/{name}", full_rows))
            elif position < 1 + takes_two:
                plan.append(
                    PlannedFile(f"{AMAZON_ROOT}/{folder}/{name}", max(AMAZON_MIN_ROWS, full_rows // _SMALL_ROW_DIVISOR))
                )
    return plan


def _amazon_quirks(file_count: int, seed: int) -> list[_FileQuirks]:
    """Which files carry which real quirk; each quirk lands on at least one file at either scale."""
    rnd = random.Random(f"{seed}:amazon-quirks:{file_count}")
    order = list(range(file_count))
    rnd.shuffle(order)
    tab_header, nul_tail = order[0], order[1]
    appended = order[2 : 2 + max(3, file_count // 8)]  # appended crawl runs: the header repeats mid-file
    blank_rows = rnd.sample(range(file_count), max(3, file_count // 12))
    newline_titles = rnd.sample(range(file_count), max(3, file_count // 15))
    quirks = []
    for index in range(file_count):
        ending = "\r\n" if rnd.random() < 0.6 else "\n"  # Scrapy writes CRLF; some runs were re-saved with LF
        runs = rnd.randint(2, 4) if index in appended else 1
        if index == appended[0] or (runs > 1 and rnd.random() < 0.5):  # runs from different machines
            other = "\n" if ending == "\r\n" else "\r\n"
            endings = tuple(ending if run % 2 == 0 else other for run in range(runs))
        else:
            endings = (ending,) * runs
        quirks.append(
            _FileQuirks(
                header="\tad" if index == tab_header else "ad",
                endings=endings,
                blank_rows=rnd.randint(1, 5) if index in blank_rows else 0,
                newline_titles=rnd.randint(1, 3) if index in newline_titles else 0,
                nul_tail=rnd.randint(145_000, 155_000) if index == nul_tail else 0,
            )
        )
    return quirks


def _brands(rng: np.random.Generator) -> list[str]:
    starts = rng.integers(0, len(_BRAND_STARTS), 400).tolist()
    ends = rng.integers(0, len(_BRAND_ENDS), 400).tolist()
    shouting = (rng.random(400) < 0.15).tolist()
    brands: dict[str, None] = {}
    for start, end, shout in zip(starts, ends, shouting, strict=True):
        brand = _BRAND_STARTS[start] + _BRAND_ENDS[end]
        brands[brand.upper() if shout else brand] = None
    return list(brands)


def _model_codes(rng: np.random.Generator, count: int) -> list[str]:
    letters = np.array(list("ABCDEFGHJKLMNPQRSTVWXZ"))
    heads = ["".join(pair) for pair in letters[rng.integers(0, len(letters), (count, 2))].tolist()]
    numbers = rng.integers(10, 9999, count).tolist()
    tails = letters[rng.integers(0, len(letters), count)].tolist()
    dashed = (rng.random(count) < 0.5).tolist()
    return [
        f"{head}-{number}{tail}" if dash else f"{head}{number}"
        for head, number, tail, dash in zip(heads, numbers, tails, dashed, strict=True)
    ]


def _product_titles(
    rng: np.random.Generator, nouns: Sequence[str], count: int, brands: Sequence[str], codes: Sequence[str]
) -> list[str]:
    """Invented product titles; all random choices are drawn as arrays up front, for speed."""
    brand = rng.integers(0, len(brands), count).tolist()
    line = np.where(rng.random(count) < 0.55, rng.integers(0, len(_LINES), count), -1).tolist()
    spec = np.where(rng.random(count) < 0.6, rng.integers(0, len(_SPECS), count), -1).tolist()
    adjective = np.where(rng.random(count) < 0.85, rng.integers(0, len(_ADJECTIVES), count), -1).tolist()
    noun = rng.integers(0, len(nouns), count).tolist()
    features = rng.choice(len(_FEATURE_COUNT_P), count, p=_FEATURE_COUNT_P)
    very_long = rng.random(count) < _LONG_TITLE_P
    features[very_long] = rng.integers(30, 46, very_long.sum())
    feature_words = rng.integers(0, len(_FEATURES), int(features.sum())).tolist()
    model = np.where(rng.random(count) < 0.35, rng.integers(0, len(codes), count), -1).tolist()
    colour = np.where(rng.random(count) < 0.45, rng.integers(0, len(_COLOURS), count), -1).tolist()
    twist = rng.choice(len(_TWIST_P), count, p=_TWIST_P).tolist()
    accent = rng.integers(0, len(_NON_ASCII_ADJECTIVES), count).tolist()

    titles = []
    cursor = 0
    for b, ln, sp, adj, nn, nf, md, co, tw, ac in zip(
        brand, line, spec, adjective, noun, features.tolist(), model, colour, twist, accent, strict=True
    ):
        parts = [brands[b] + ("™" if tw == 1 else "®" if tw == 2 else "")]
        if ln >= 0:
            parts.append(_LINES[ln])
        if sp >= 0:
            parts.append(_SPECS[sp])
        if tw == 3:
            parts.append(_NON_ASCII_ADJECTIVES[ac])
        elif adj >= 0:
            parts.append(_ADJECTIVES[adj])
        parts.append(nouns[nn])
        title = " ".join(parts)
        if nf:
            listed = ", ".join(_FEATURES[f] for f in feature_words[cursor : cursor + nf])
            cursor += nf
            title += (" \u2013 " if tw == 4 else " with ") + listed
        if md >= 0:
            title += f" ({codes[md]})"
        if co >= 0:
            title += ", " + _COLOURS[co]
        if len(title) > _MAX_TITLE:
            title = title[: title.rindex(" ", 0, _MAX_TITLE)]
        titles.append(title)
    return titles


def _scrapy_field(value: str) -> str:
    """Scrapy's CSV export: quote only when needed, double embedded quotes."""
    if '"' in value:
        return '"' + value.replace('"', '""') + '"'
    if "," in value or "\n" in value or "\r" in value:
        return '"' + value + '"'
    return value


def _amazon_csv(
    rows: int,
    nouns: Sequence[str],
    quirks: _FileQuirks,
    rng: np.random.Generator,
    shared: Sequence[str],
    brands: Sequence[str],
    codes: Sequence[str],
) -> bytes:
    titles = _product_titles(rng, nouns, rows, brands, codes)
    # Duplicates: ~2 % repeat a title of the same file, ~1 % are products listed in many files.
    for target, source in zip(*rng.integers(0, rows, (2, rng.binomial(rows, 0.02))).tolist(), strict=True):
        titles[target] = titles[source]
    cross_listed = rng.binomial(rows, 0.01)
    for target, pick in zip(
        rng.integers(0, rows, cross_listed).tolist(), rng.integers(0, len(shared), cross_listed).tolist(), strict=True
    ):
        titles[target] = shared[pick]
    for target in rng.choice(rows, min(rows, quirks.newline_titles), replace=False).tolist():
        titles[target] = titles[target].replace(" ", "\n", 1)

    records = [_scrapy_field(title) for title in titles]
    for position in sorted(rng.integers(1, rows, quirks.blank_rows).tolist(), reverse=True):
        records.insert(position, "")
    runs = len(quirks.endings)
    cuts = sorted(rng.choice(np.arange(1, len(records)), runs - 1, replace=False).tolist()) if runs > 1 else []
    text = []
    for run, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(records)], strict=True)):
        ending = quirks.endings[run]
        text.append(ending.join([quirks.header if run == 0 else "ad", *records[start:stop]]) + ending)
    return "".join(text).encode("utf-8") + b"\x00" * quirks.nul_tail


def amazon_files(scale: str, seed: int) -> Iterator[tuple[str, bytes]]:
    """(path relative to ``--out``, content) of every Amazon CSV in ``amazon_plan`` order, built lazily."""
    plan = amazon_plan(scale, seed)
    quirks = _amazon_quirks(len(plan), seed)
    vocabulary = _np_rng(seed, "amazon-vocabulary")
    brands, codes = _brands(vocabulary), _model_codes(vocabulary, 3000)
    every_noun = [noun for nouns in _AMAZON_FOLDERS.values() for noun in nouns]
    shared = _product_titles(vocabulary, every_noun, 400, brands, codes)
    for index, (path, rows) in enumerate(plan):
        nouns = _AMAZON_FOLDERS[path.split("/")[-2]]
        rng = _np_rng(seed, "amazon-file", index)
        yield path, _amazon_csv(rows, nouns, quirks[index], rng, shared, brands, codes)


# --------------------------------------------------------------------------- Writing


@dataclass(frozen=True)
class DatasetSummary:
    dataset: str
    files: int
    rows: int  # Advertising: CSV rows; ADS-16: ratings; Amazon: product titles
    bytes: int

    def __str__(self) -> str:
        return f"{self.dataset}: {self.files} files, {self.rows} rows, {self.bytes} bytes"


def _write(out: Path, relative: str, data: bytes) -> int:
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def generate(out: Path, scale: str, seed: int = 7) -> list[DatasetSummary]:
    """Replace the three dataset folders under ``out`` with the sample for ``scale`` and ``seed``."""
    _check_scale(scale)
    out.mkdir(parents=True, exist_ok=True)
    for name in DATASET_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)

    advertising = _write(out, ADVERTISING_FILE, advertising_csv(seed))
    summaries = [DatasetSummary("advertising", 1, ADVERTISING_ROWS, advertising)]

    ads16 = ads16_files(scale, seed)
    ads16_bytes = sum(_write(out, path, ads16[path]) for path in sorted(ads16))
    ratings = len(ads16_users(scale)) * len(ADS16_CATEGORIES) * ADS16_ADS_PER_CATEGORY
    summaries.append(DatasetSummary("ads16", len(ads16), ratings, ads16_bytes))

    amazon_bytes = sum(_write(out, path, data) for path, data in amazon_files(scale, seed))
    plan = amazon_plan(scale, seed)
    summaries.append(DatasetSummary("amazon", len(plan), sum(rows for _, rows in plan), amazon_bytes))
    return summaries


# --- the command (`adstream samples`; simulator.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("samples", help=__doc__.splitlines()[0])
def samples(
    scale: Annotated[Literal["small", "full"], typer.Option(show_default=False)],  # SCALES
    out: Annotated[Path, typer.Option(help="KAGGLE_DIR to (re)write the three datasets into", show_default=False)],
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    if seed < 0:
        raise typer.BadParameter("--seed must be >= 0")
    for summary in generate(out, scale, seed):
        print(summary)
