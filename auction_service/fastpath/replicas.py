"""AUCTION_REPLICAS auction-service processes on one port, kept running.

Each replica is a whole service (``adstream serve`` with AUCTION_REPLICAS=1) binding the port with
SO_REUSEPORT: the kernel spreads connections over them, with no balancer hop in front. What must be
global lives in the shared store and the campaign store, so a replica holds nothing another needs:
one killed (even with -9) is started again, and meanwhile the others serve its share of connections.
The first replica starts alone (it migrates the campaign store); the others once it answers.

AUCTION_PORT reaches one replica at random, so each also serves its /metrics and /v1/stats on a port of its
own: replica i on AUCTION_METRICS_PORT + i (0: none), the same port after a restart. Prometheus scrapes each
as one target (its counters start again at 0 after a restart, which ``rate()`` and ``increase()`` take as a
reset) and the dashboard adds them up (``dashboard.sources``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from types import FrameType

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = 1.0
FIRST_READY_TIMEOUT_S = 180.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def replica_env(env: Mapping[str, str], index: int) -> dict[str, str]:
    """Replica ``index``'s environment: one process (AUCTION_REPLICAS=1) whose metrics port is its own.

    ``env`` holds the settings every replica is started with (``adstream.settings.child_process_env``).
    """
    own = {**env, "AUCTION_REPLICAS": "1"}
    base = int(env.get("AUCTION_METRICS_PORT") or 0)
    if base:
        own["AUCTION_METRICS_PORT"] = str(base + index)
    return own


def supervise(command: Sequence[str], replicas: int, env: dict[str, str], health_url: str) -> int:
    """Runs ``replicas`` copies of ``command`` until SIGTERM/SIGINT, restarting any that exits; returns 0."""
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children: list[subprocess.Popen[bytes] | None] = [None] * replicas

    def start(index: int) -> None:
        own = replica_env(env, index)
        children[index] = subprocess.Popen([*command], env=own)
        log.warning("auction replica %d started (pid %d, metrics port %s)", index, children[index].pid,
                    own.get("AUCTION_METRICS_PORT", "0"))  # fmt: skip

    start(0)
    deadline = time.monotonic() + FIRST_READY_TIMEOUT_S
    while not stopping and not _answers(health_url) and time.monotonic() < deadline:
        if children[0].poll() is not None:
            start(0)
        time.sleep(0.2)
    for index in range(1, replicas):
        start(index)
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            if child is not None and child.poll() is not None and not stopping:
                log.warning("auction replica %d (pid %d) exited with %s: starting it again", index, child.pid,
                            child.returncode)  # fmt: skip
                time.sleep(RESTART_BACKOFF_S)
                start(index)
    for child in children:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        if child is not None:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0
