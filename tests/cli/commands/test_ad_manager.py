"""`adstream ad-manager` and `adstream campaigns seed` against the real broker: seeded campaigns reach the store,
SIGTERM finishes the batch and exits cleanly, and the health check reads the heartbeat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table
from adstream.events import CampaignStatus
from adstream.settings import child_process_env
from auction_service.campaign_store import store
from auction_service.campaign_store.ad_manager import heartbeat_file
from auction_service.campaign_store.instructions import create_instruction, publish_instructions
from tests.auction_service.campaign_store.test_ad_manager import (
    NOW,
    RunningAdManager,
    committed_offset,
    spec,
    wait_until,
)
from tests.cli.conftest import invoke
from tests.conftest import make_settings

ADSTREAM = Path(sys.executable).with_name("adstream")


def test_the_health_check_reads_the_heartbeat_age(tmp_path):
    checked = make_settings(tmp_path)
    assert invoke(checked, ["ad-manager", "--check"]).exit_code == 1  # never ran
    beat = heartbeat_file(checked)
    beat.parent.mkdir(parents=True)
    beat.touch()
    assert invoke(checked, ["ad-manager", "--check"]).exit_code == 0
    old = time.time() - 120
    os.utime(beat, (old, old))
    assert invoke(checked, ["ad-manager", "--check"]).exit_code == 1  # a stuck loop stops beating


@pytest.mark.slow
def test_seeded_campaigns_reach_the_store_through_kafka(settings, sessions):
    catalog = [
        {"ad_id": f"ad-{i}", "source": "ads16", "category": ("Grocery", "Betting")[i % 2], "title": "t"}
        for i in range(9)
    ]
    uri, _ = settings.delta_rs_location(Table.SILVER_ADS)
    write_deltalake(uri, pa.Table.from_pylist(catalog))
    seed = int(uuid.uuid4().int % 2**31)
    seeded = invoke(settings, ["campaigns", "seed", "12", "--seed", str(seed)])
    assert seeded.exit_code == 0, seeded.output
    printed = seeded.stdout.split()
    assert len(set(printed)) == 12

    manager = RunningAdManager(settings)

    def stored() -> list:
        with sessions() as session:
            return [view for view in (store.get_campaign(session, cid) for cid in printed) if view is not None]

    wait_until(lambda: len(stored()) == 12, "the 12 seeded campaigns")
    manager.stop()
    views = stored()
    assert all(view.status is CampaignStatus.ACTIVE for view in views)
    assert {view.spec.ad_id for view in views} <= {ad["ad_id"] for ad in catalog}
    with sessions() as session:
        serving = {campaign.campaign_id for campaign in store.serving_campaigns(session, datetime.now(UTC))}
    assert set(printed) <= serving


@pytest.mark.slow
def test_sigterm_finishes_the_batch_commits_and_exits_cleanly(settings, sessions, tmp_path):
    tag = uuid.uuid4().hex[:10]
    create = create_instruction(spec(), now=NOW, campaign_id=f"sig-{tag}")
    (ack,) = publish_instructions(settings, [create])
    env = child_process_env(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        CAMPAIGN_DB_URL=settings.campaign_db_url,
        AD_MANAGER_GROUP=settings.ad_manager_group,
        LOCAL_DIR=str(tmp_path / "local"),
    )
    process = subprocess.Popen(
        [str(ADSTREAM), "ad-manager"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def applied() -> bool:
            with sessions() as session:
                return store.get_campaign(session, f"sig-{tag}") is not None

        wait_until(applied, "the ad manager process to apply the instruction")
        wait_until(lambda: (committed_offset(settings, ack.partition) or 0) > ack.offset, "the offset commit")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "SIGTERM: stopping after the current batch" in output
    assert "ad manager stopped" in output
