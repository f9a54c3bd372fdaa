"""The ad categories every package shares: ADS-16's twenty, which the lake's one taxonomy is built on."""

from __future__ import annotations

ADS16_CATEGORIES: tuple[str, ...] = (
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
ADS_PER_CATEGORY = 15
