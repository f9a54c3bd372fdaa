"""One ad-category taxonomy for the whole platform: the 20 ADS-16 categories.

Amazon's crawl only names a department folder (``electronics__monitors``), and the
real folder names are not all known in advance, so departments map to the
taxonomy by keyword rules, first match wins; anything unmatched is ``Other``.
The rules compile to one Spark ``CASE WHEN`` (no Python UDF), so they run in the JVM.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from adstream.taxonomy import ADS16_CATEGORIES

OTHER = "Other"
TAXONOMY = (*ADS16_CATEGORIES, OTHER)

# (regex over "<department> <subdepartment>", lower-cased, '_' as word separator) -> category.
# Order matters: the more specific rules come first ("video_games" before "electronics").
KEYWORD_RULES: tuple[tuple[str, str], ...] = (
    (r"video_?games|console|playstation|xbox|nintendo", "Console & Video Games"),
    (r"software", "Computer Software"),
    (r"dating", "Dating Sites"),
    (r"betting|casino|gambling", "Betting"),
    (r"jewel|watch", "Jewellery & Watches"),
    (r"musical|instrument|guitar|piano|keyboards", "Musical Instruments"),
    (r"baby|infant|nursery", "Baby Products"),
    (r"pet|dog|cat\b|cats", "Pet Supplies"),
    (r"toy|game|puzzle|lego", "Toys & Games"),
    (r"book|movie|music|media|dvd|kindle|magazine", "Media (BMVD)"),
    (r"electronic|computer|camera|phone|laptop|tv|audio|headphone|monitor", "Consumer Electronics"),
    (r"automotive|car\b|cars|motor|vehicle|tires?", "Automotive"),
    (r"beauty|health|personal_care|cosmetic|makeup|skin|hair", "Health & Beauty"),
    (r"cloth|shoe|fashion|apparel|dress|luggage", "Clothing & Shoes"),
    (r"tool|home_improvement|diy|hardware|lighting", "DIY & Tools"),
    (r"garden|patio|lawn|outdoor_living|plant", "Garden & Outdoor living"),
    (r"grocery|food|gourmet|beverage|snack", "Grocery"),
    (r"kitchen|home|furniture|bedding|appliance|storage", "Kitchen & Home"),
    (r"office|stationery|school", "Office Products"),
    (r"sport|outdoor|fitness|camping|cycling|exercise", "Sports & Outdoors"),
    (r"arts|craft|sewing", "Toys & Games"),
)


def category_for_department(department: Column, subdepartment: Column) -> Column:
    """Spark expression mapping an Amazon department (and subdepartment) to the taxonomy."""
    text = F.lower(F.concat_ws(" ", department, F.coalesce(subdepartment, F.lit(""))))
    expression = None
    for pattern, category in KEYWORD_RULES:
        condition = text.rlike(pattern)
        expression = F.when(condition, category) if expression is None else expression.when(condition, category)
    return expression.otherwise(OTHER)
