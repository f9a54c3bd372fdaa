"""SPARK_MASTER=spark://… needs no code change: the smoke flow runs on a real standalone cluster.

A master and one worker are started from pyspark's own `spark-class`; the job runs
in a separate process (one SparkContext per process), so its executors must get
the Delta and Kafka jars from the local cache through `spark.jars`.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyspark
import pytest

from adstream.contracts import Table
from adstream.settings import child_process_env
from devstack import services
from tests.conftest import free_port

pytestmark = pytest.mark.slow
SPARK_HOME = Path(pyspark.__file__).parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"


def _start(log: Path, *args: str) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SPARK_CLASS), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_process_env(
                SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(log.parent / "work")
            ),
        )


def _wait_for(log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared in {log}:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def standalone_master(tmp_path):
    port = free_port()
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    master = _start(
        master_log,
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--webui-port",
        str(free_port()),
    )
    worker = None
    try:
        _wait_for(master_log, "I have been elected leader")
        worker = _start(
            worker_log,
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{port}",
            "--cores",
            "1",
            "--memory",
            "1g",
            "--webui-port",
            str(free_port()),
        )
        _wait_for(worker_log, "Successfully registered with master")
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in (worker, master):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_smoke_flow_runs_on_a_standalone_cluster(standalone_master, kafka_settings, tmp_path, spark):
    settings = kafka_settings.model_copy(
        update={"lake_root": str(tmp_path / "lake"), "spark_master": standalone_master}
    )
    run_id = f"cluster-{uuid.uuid4().hex[:8]}"
    env = child_process_env(**services.settings_env(settings), SPARK_DRIVER_MEMORY="1g")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("adstream")), "smoke", "all", "--events", "40", "--run-id", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=services.PROJECT_ROOT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"verified: 40 events of run {run_id} are in Delta" in result.stdout
    # Read back from the test's own local session: the cluster wrote a real Delta table.
    table = spark.read.format("delta").load(settings.lake_path(Table.SMOKE_EVENTS))
    assert table.where(table.run_id == run_id).count() == 40
