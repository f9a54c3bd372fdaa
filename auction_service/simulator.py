"""Simulated users who request ads, see them and sometimes click: load that exercises the whole loop.

    python -m auction_service.simulator [--duration 60s] [--rate 20] [--users 500] [--seed 7] [--concurrency 16]

Users are drawn from silver/users. Each request goes to POST /v1/auction; a filled
auction is followed by an impression, then a click with the user's click probability,
and a conversion for some clicks, all sent to POST /v1/events.

Click probability (provisional, until the Kaggle-derived ground truth of issue 7): the
pCTR the service returned, i.e. the simulated world agrees with the champion model.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from adstream.contracts import Table
from adstream.events import MICROS_PER_UNIT
from adstream.settings import Settings, get_settings

DEVICES = ("mobile", "desktop", "tablet")
CONVERSION_RATE = 0.05  # conversions per click, the auction's default pCVR
RETRIES = 5


@dataclass(frozen=True)
class SimulatedUser:
    user_id: str
    age: int | None
    gender: str | None
    country: str | None


@dataclass
class SimulationReport:
    auctions: int = 0
    filled: int = 0
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    charged_micros: int = 0
    spend_by_campaign: Counter[str] = field(default_factory=Counter)

    @property
    def fill_rate(self) -> float:
        return self.filled / self.auctions if self.auctions else 0.0

    def summary(self) -> str:
        clicks, impressions = self.events["click"], self.events["impression"]
        ctr = clicks / impressions if impressions else 0.0
        spend = Decimal(self.charged_micros) / MICROS_PER_UNIT
        top = ", ".join(
            f"{campaign} {Decimal(micros) / MICROS_PER_UNIT:.2f}"
            for campaign, micros in self.spend_by_campaign.most_common(3)
        )
        return (
            f"auctions {self.auctions}, fill rate {self.fill_rate:.1%}, impressions {impressions}, clicks {clicks} "
            f"(CTR {ctr:.2%}), conversions {self.events['conversion']}, spend {spend:.2f} USD, errors "
            f"{sum(self.errors.values())}; top campaigns by spend: {top or 'none'}"
        )


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"duration {text!r}: use e.g. 90s, 5m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def load_population(settings: Settings, users: int, seed: int) -> list[SimulatedUser]:
    from deltalake import DeltaTable

    uri, options = settings.delta_rs_location(Table.SILVER_USERS)
    rows = DeltaTable(uri, storage_options=options or None).to_pyarrow_table(
        columns=["user_id", "age", "gender", "country"]
    )
    population = [
        SimulatedUser(row["user_id"], None if row["age"] is None else int(row["age"]), row["gender"], row["country"])
        for row in rows.to_pylist()
    ]
    rng = random.Random(seed)
    return rng.sample(population, min(users, len(population)))


async def _post(client: httpx.AsyncClient, path: str, body: dict, report: SimulationReport) -> httpx.Response | None:
    for attempt in range(RETRIES):
        try:
            response = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            report.errors[type(exc).__name__] += 1
        else:
            if response.status_code != 503:
                return response
            report.errors["503"] += 1
        await asyncio.sleep(0.2 * 2**attempt)  # same event_id on retry: never charged twice
    return None


async def _visit(client: httpx.AsyncClient, user: SimulatedUser, rng: random.Random, report: SimulationReport) -> None:
    request = {"user_id": user.user_id, "device_type": rng.choice(DEVICES), "channel": rng.choice(("web", "app"))}
    request.update({key: value for key, value in (("age", user.age), ("gender", user.gender)) if value is not None})
    if user.country:
        request["country"] = user.country
    response = await _post(client, "/v1/auction", request, report)
    if response is None:
        return
    report.auctions += 1
    if response.status_code == 204:
        return
    if response.status_code != 200:
        report.errors[str(response.status_code)] += 1
        return
    ad = response.json()
    report.filled += 1
    kinds = ["impression"]
    if rng.random() < ad["pctr"]:
        kinds.append("click")
        if rng.random() < CONVERSION_RATE:
            kinds.append("conversion")
    events = [{"event_id": uuid.uuid4().hex, "event_type": kind, "auction_id": ad["auction_id"]} for kind in kinds]
    result = await _post(client, "/v1/events", {"events": events}, report)
    if result is None or result.status_code != 202:
        report.errors["events"] += 1
        return
    for kind, outcome in zip(kinds, result.json()["results"], strict=True):
        report.events[kind] += outcome["status"] == "accepted"
        report.charged_micros += outcome["charged_micros"]
        report.spend_by_campaign[ad["campaign_id"]] += outcome["charged_micros"]


async def simulate(
    base_url: str, population: list[SimulatedUser], *, duration_s: float, rate: float, concurrency: int, seed: int
) -> SimulationReport:
    """``rate`` visits per second for ``duration_s``, at most ``concurrency`` in flight; a progress line per second."""
    rng, report = random.Random(seed), SimulationReport()
    slots = asyncio.Semaphore(concurrency)
    began = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    last_progress = began
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:

        async def visit(user: SimulatedUser) -> None:
            async with slots:
                await _visit(client, user, rng, report)

        sent = 0
        while (elapsed := time.monotonic() - began) < duration_s:
            due = int(elapsed * rate) + 1
            while sent < due:
                task = asyncio.create_task(visit(rng.choice(population)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if time.monotonic() - last_progress >= 1:
                last_progress = time.monotonic()
                print(f"  [{elapsed:5.0f}s] {report.summary()}", flush=True)
            await asyncio.sleep(min(0.05, 1 / rate))
        await asyncio.gather(*pending)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auction_service.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 90s, 5m, 1h (default 60s)")
    parser.add_argument("--rate", type=float, default=20.0, help="ad requests per second (default 20)")
    parser.add_argument("--users", type=int, default=500, help="size of the simulated population")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    args = parser.parse_args(argv)
    settings = get_settings()
    population = load_population(settings, args.users, args.seed)
    base_url = f"http://{settings.bind_host}:{settings.auction_port}"
    report = asyncio.run(
        simulate(
            base_url, population, duration_s=args.duration, rate=args.rate, concurrency=args.concurrency, seed=args.seed
        )
    )
    print(f"simulation done: {report.summary()}", flush=True)
    return 0 if report.auctions else 1


if __name__ == "__main__":
    sys.exit(main())
