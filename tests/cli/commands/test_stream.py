"""`adstream stream`: the container health check, and options it refuses."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from adstream.settings import child_process_env
from devstack import services
from spark_jobs import streaming
from tests.cli.conftest import invoke
from tests.conftest import make_settings

ADSTREAM = Path(sys.executable).with_name("adstream")


def test_the_health_check_passes_only_while_a_job_beats(tmp_path):
    settings = make_settings(tmp_path)
    env = child_process_env(**services.settings_env(settings))

    def check() -> int:
        command = [str(ADSTREAM), "stream", "--check"]
        return subprocess.run(command, env=env, cwd=services.PROJECT_ROOT, timeout=60).returncode

    assert check() == 1  # no job has run
    beat = streaming.heartbeat_file(settings)
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"pid": 12345, "queries": {}}))
    assert check() == 0
    stale = time.time() - 31  # the check allows 30 s between beats
    os.utime(beat, (stale, stale))
    assert check() == 1


def test_a_topic_needs_a_single_source(tmp_path):
    result = invoke(make_settings(tmp_path), ["stream", "--topic", "elsewhere"])
    assert result.exit_code == 2 and "--topic needs a single --source" in result.stderr
