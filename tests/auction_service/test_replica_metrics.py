"""Two auction replicas as real processes (``adstream serve`` with AUCTION_REPLICAS=2): each serves its /metrics
and /v1/stats on its own port (AUCTION_METRICS_PORT + i), Prometheus' way of seeing a fleet, and the dashboard
adds the replicas' /v1/stats up. K auctions over many connections are K in the fleet's counters and on the
dashboard; a replica killed with -9 comes back on the same port with its counters at 0, which a scrape's
reset-aware increase (as ``rate()`` and ``increase()`` take it) still accounts for.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auction_service.fastpath.replicas import replica_env as supervised_env
from dashboard.sources import SnapshotBuilder, auctions_per_s, fleet_stats
from tests.auction_service.conftest import BROWSER_UA
from tests.auction_service.test_replicas import CONTEXT, USERS, fleet_settings, replica_env, seeded, wait_listening

pytestmark = pytest.mark.slow

CONNECTIONS = 32
K = 600  # auctions before the kill
K_AFTER = 300  # and after it


def free_port_pair() -> int:
    """Two free consecutive ports (replica 0's and replica 1's metrics ports), below the kernel's ephemeral range:
    a client socket of this busy machine never takes one while the killed replica is down."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


@pytest.fixture(scope="module")
def pair(service_settings, tmp_path_factory):
    """2 replicas on one port, with metrics ports ``base`` and ``base + 1``; yields (settings, url, supervisor)."""
    workdir = tmp_path_factory.mktemp("replica-metrics")
    settings = fleet_settings(service_settings, workdir, auction_replicas=2, auction_metrics_port=free_port_pair())
    seeded(settings)
    logs = open(workdir / "replicas.log", "wb")  # noqa: SIM115 - closed below
    env = {**replica_env(settings, 2), "AUCTION_METRICS_PORT": str(settings.auction_metrics_port)}
    supervisor = subprocess.Popen(
        [".venv/bin/adstream", "serve"], env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{settings.auction_port}"
    try:
        wait_listening(url, supervisor, 2)
        for port in metrics_ports(settings):
            wait_answering(f"http://127.0.0.1:{port}/healthz", supervisor)
        yield settings, url, supervisor
    finally:
        os.killpg(supervisor.pid, signal.SIGTERM)
        try:
            supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
        logs.close()


def metrics_ports(settings) -> list[int]:
    return [settings.auction_metrics_port + i for i in range(settings.auction_replicas)]


def wait_answering(url: str, supervisor: subprocess.Popen, limit_s: float = 120) -> httpx.Response:
    deadline = time.monotonic() + limit_s
    while True:
        assert supervisor.poll() is None, "the replicas' supervisor exited"
        assert time.monotonic() < deadline, f"{url} never answered"
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


async def run_auctions(url: str, count: int) -> list[int]:
    """``count`` auctions, each requested once, over CONNECTIONS connections; their status codes."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    pending = list(range(count))
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient) -> None:
        while pending:
            n = pending.pop()
            response = await client.post("/v1/auction", json={"user_id": USERS[n % len(USERS)], **CONTEXT})
            statuses.append(response.status_code)

    headers = {"User-Agent": BROWSER_UA}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=headers) as client:
        await asyncio.gather(*(one(client) for _ in range(CONNECTIONS)))
    return statuses


def scrape(port: int) -> dict[str, float]:
    """One replica's /metrics as Prometheus reads it: sample (name and labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def auctions(samples: dict[str, float]) -> int:
    return int(sum(value for key, value in samples.items() if key.startswith("adstream_auctions_total[")))


def increase(*scrapes: float) -> float:
    """A counter's increase over successive scrapes as Prometheus takes it: a lower value is a reset from 0.
    A reset shows only in a scrape taken after it and before the counter regained its old value."""
    return sum(b - a if b >= a else b for a, b in itertools.pairwise(scrapes))


def replica_stats(settings) -> dict[str, dict]:
    urls = [f"http://127.0.0.1:{port}/v1/stats" for port in metrics_ports(settings)]
    return {url: httpx.get(url, timeout=5).json() for url in urls}


def nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def test_the_supervisor_gives_each_replica_its_own_metrics_port():
    assert supervised_env({"AUCTION_METRICS_PORT": "9110", "X": "y"}, 1) == {
        "AUCTION_METRICS_PORT": "9111", "AUCTION_REPLICAS": "1", "X": "y",
    }  # fmt: skip
    assert supervised_env({"AUCTION_METRICS_PORT": "0"}, 1)["AUCTION_METRICS_PORT"] == "0"  # none stays none


def test_the_fleets_percentiles_pool_the_windows_and_its_shares_are_of_the_sums():
    fast = {
        "auctions": 99,
        "filled": 9,
        "latency_window_ms": [1.0] * 99,
        "replica": {"pid": 1},
        "bid_filter": {"version": "3", "screened": 100, "shed": 0, "explored_revenue_cpm_micros": 0},
    }
    slow = {"auctions": 1, "filled": 1, "latency_window_ms": [50.0], "replica": {"pid": 2},
            "bid_filter": {"version": "3", "screened": 300, "shed": 200, "explored_revenue_cpm_micros": 10,
                           "explored_revenue_below_threshold_cpm_micros": 1}}  # fmt: skip
    fleet = fleet_stats({"a": fast, "b": slow})
    assert fleet["auctions"] == 100 and fleet["fill_rate"] == 0.1
    assert fleet["latency_ms"] == {"p50": 1.0, "p95": 1.0, "p99": 1.0, "auctions": 100}
    two_slow = fleet_stats({"a": fast, "b": {**slow, "latency_window_ms": [50.0, 50.0]}})
    assert two_slow["latency_ms"]["p99"] == 50.0  # the slow replica's tail, not an average of the two p99s
    meter = fleet["bid_filter"]
    assert meter["shed_share"] == 0.5 and meter["revenue_retained_estimate"] == 0.9 and meter["version"] == "3"
    restarted = fleet_stats({"a": {**fast, "auctions": 120}, "b": {**slow, "auctions": 5, "replica": {"pid": 9}}})
    assert auctions_per_s(fleet, restarted, 5.0) == (21 + 5) / 5.0  # b started again at 0: all 5 are new


def test_read_on_the_public_port_the_fleet_takes_each_replicas_own_percentiles_and_the_worst_of_them():
    # AUCTION_PORT's /v1/stats carries no window: one answer is its own percentiles, several the worst of each.
    one = {"auctions": 10, "filled": 1, "latency_ms": {"p50": 2.0, "p95": 3.0, "p99": 9.0, "auctions": 10}}
    other = {"auctions": 5, "filled": 0, "latency_ms": {"p50": 4.0, "p95": 5.0, "p99": 6.0, "auctions": 5}}
    assert fleet_stats({"a": one})["latency_ms"] == one["latency_ms"]
    assert fleet_stats({"a": one, "b": other})["latency_ms"] == {"p50": 4.0, "p95": 5.0, "p99": 9.0, "auctions": 15}
    assert fleet_stats({"a": {**one, "latency_ms": None}})["latency_ms"] is None


def test_each_replica_is_a_target_and_the_fleet_adds_up_through_a_kill_9(pair):
    settings, url, supervisor = pair
    ports = metrics_ports(settings)
    statuses = asyncio.run(run_auctions(url, K))
    assert len(statuses) == K and set(statuses) <= {200, 204}, sorted(set(statuses))

    # Prometheus: each replica one target, with its own process_* families; the fleet's sum is K.
    before = {port: scrape(port) for port in ports}
    served = {port: auctions(samples) for port, samples in before.items()}
    assert sum(served.values()) == K, served
    assert all(n > 0 for n in served.values()), f"one replica served everything: {served}"
    stats = replica_stats(settings)
    public = httpx.get(f"{url}/v1/stats", timeout=5).json()  # one replica's, for API clients: no process, no window
    assert "replica" not in public and "latency_window_ms" not in public and public["auctions"] > 0
    pids = [answer["replica"]["pid"] for answer in stats.values()]
    assert len(set(pids)) == 2 and set(pids) == {c.pid for c in psutil.Process(supervisor.pid).children()}
    assert all(samples["process_start_time_seconds[]"] > 0 for samples in before.values())

    # The dashboard: K auctions fleet-wide, latency percentiles of both windows pooled.
    dashboard_settings = settings.model_copy(update={"dashboard_auction_url": url})
    builder = SnapshotBuilder(dashboard_settings)
    try:
        body = builder.build().body
        serving = body["serving"]
        assert serving["auctions"] == K and serving["filled"] + serving["no_fill"] == K
        assert not [name for name in body["errors"] if "auction" in name], body["errors"]
        pooled = sorted(ms for answer in stats.values() for ms in answer["latency_window_ms"])
        assert len(pooled) == K and serving["latency_live"]["auctions"] == K
        assert serving["latency_live"]["p99"] == nearest_rank(pooled, 0.99)
        assert serving["latency_live"]["p50"] == nearest_rank(pooled, 0.50)
        for answer in stats.values():  # each window as served is the replica's own, to the last digit
            own = sorted(answer["latency_window_ms"])
            assert (answer["latency_ms"]["p50"], answer["latency_ms"]["p99"]) == (
                nearest_rank(own, 0.50), nearest_rank(own, 0.99),
            )  # fmt: skip

        # kill -9 replica 1; the supervisor starts it again on the same metrics port, its counters at 0.
        victim = stats[f"http://127.0.0.1:{ports[1]}/v1/stats"]["replica"]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_restarted(f"http://127.0.0.1:{ports[1]}/v1/stats", victim, supervisor)
        wait_listening(url, supervisor, 2)
        restarted = scrape(ports[1])
        assert auctions(restarted) == 0
        assert restarted["process_start_time_seconds[]"] > before[ports[1]]["process_start_time_seconds[]"]

        statuses = asyncio.run(run_auctions(url, K_AFTER))
        assert len(statuses) == K_AFTER and set(statuses) <= {200, 204}, sorted(set(statuses))
        after = {port: scrape(port) for port in ports}
        # A raw sum drops by the killed replica's share: what an operator must not graph.
        assert sum(auctions(s) for s in after.values()) == K + K_AFTER - served[ports[1]]
        # sum(increase()) over the replicas, each series taken with its reset, is the auctions run meanwhile.
        # Replica 1's series carries the scrape at 0 after its restart, as Prometheus' would: without it, a
        # replica that served more since its restart than before looks as if it never reset.
        scrapes = {
            ports[0]: [before[ports[0]], after[ports[0]]],
            ports[1]: [before[ports[1]], restarted, after[ports[1]]],
        }
        counted = sum(increase(*(auctions(s) for s in series)) for series in scrapes.values())
        assert counted == K_AFTER
        # The same for every counter a replica keeps: none runs backwards once its reset is taken.
        for port, series in scrapes.items():
            for key in after[port]:
                if key.split("[")[0].endswith("_total") and all(key in s for s in series):
                    assert increase(*(s[key] for s in series)) >= 0, key

        # The dashboard: the fleet's counts since each process started, and its rate across the restart.
        serving = builder.build().body["serving"]
        assert serving["auctions"] == served[ports[0]] + K_AFTER
        assert auctions_per_s(fleet_stats(stats), fleet_stats(replica_stats(settings)), 1.0) == K_AFTER
    finally:
        builder.close()


def wait_restarted(url: str, old_pid: int, supervisor: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        response = wait_answering(url, supervisor, limit_s)
        if response.json()["replica"]["pid"] != old_pid:
            return
        assert time.monotonic() < deadline, "the killed replica was not started again"
        time.sleep(0.2)
