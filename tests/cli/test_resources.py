"""Resources: built once per process, and nothing costly happens until a command asks for it."""

import subprocess
import sys

from adstream.settings import get_settings
from cli.resources import Resources, resources
from tests.conftest import make_settings


def test_building_resources_starts_no_jvm_and_imports_no_mlflow():
    # In a fresh interpreter: this test process may have started Spark or imported MLflow already.
    probe = """
import sys
from pyspark import SparkContext
from cli.resources import resources
built = resources()
assert built is resources(), "built twice"
assert not built.spark_started and SparkContext._gateway is None, "a JVM started"
assert "mlflow" not in sys.modules, "mlflow imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_the_process_resources_are_built_once_on_the_process_settings():
    assert resources() is resources()
    assert resources().settings is get_settings()


def test_the_campaign_store_is_migrated_on_first_use_and_released_on_close(tmp_path):
    built = Resources(make_settings(tmp_path))
    assert "campaign_engine" not in built.__dict__
    with built.campaign_sessions() as session:
        assert session.connection().exec_driver_sql("select count(*) from campaigns").scalar() == 0
    assert built.campaign_sessions is built.campaign_sessions
    built.close()
    assert "campaign_engine" not in built.__dict__
    built.close()  # closing twice is harmless


def test_the_tracking_client_points_at_the_settings_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    built = Resources(make_settings(tmp_path, mlflow_tracking_uri=uri))
    assert built.tracking is built.tracking
    assert built.tracking._tracking_client.tracking_uri == uri
