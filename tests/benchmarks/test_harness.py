"""The benches' shared harness: isolated settings, ratios, reports."""

from __future__ import annotations

import json

from benchmarks import harness


def test_isolated_settings_keep_everything_in_the_workdir_and_on_free_ports(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092")  # a broker elsewhere is not the isolated one
    monkeypatch.setenv("CAMPAIGN_DB_URL", "postgresql+psycopg://adstream@db/campaigns")
    settings = harness.isolated_settings(tmp_path, spark_master="local[2]")
    assert settings.lake_root == str(tmp_path / "lake") and settings.local_dir == tmp_path / "local"
    assert settings.reports_dir == tmp_path / "reports" and settings.spark_master == "local[2]"
    assert settings.kafka_bootstrap_servers == f"127.0.0.1:{settings.kafka_port}"
    assert settings.campaign_db_url == f"sqlite:///{tmp_path / 'campaigns.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    ports = [settings.kafka_port, settings.kafka_controller_port, settings.mlflow_port, settings.airflow_port,
             settings.auction_port]  # fmt: skip
    assert len(set(ports)) == len(ports) and 8000 not in ports
    assert settings.jar_cache_dir.is_absolute()


def test_the_broker_address_follows_a_given_port_unless_given_itself(tmp_path):
    assert harness.isolated_settings(tmp_path, kafka_port=19092).kafka_bootstrap_servers == "127.0.0.1:19092"
    given = harness.isolated_settings(tmp_path, kafka_bootstrap_servers="127.0.0.1:1")
    assert given.kafka_bootstrap_servers == "127.0.0.1:1"


def test_ratios_and_medians_leave_out_what_is_missing():
    assert harness.ratio(1, 3, 2) == 0.33 and harness.ratio(3, 2) == 1.5
    assert harness.ratio(None, 2) is None and harness.ratio(2, 0) is None and harness.ratio(2, None) is None
    assert harness.median_or_none([None, 3.0, 1.0, None]) == 2.0 and harness.median_or_none([None]) is None
    assert harness.median_of([{"s": 3}, {"s": 1}, {"s": 2}], "s") == 2


def test_a_report_is_indented_json_under_reports_bench(tmp_path):
    settings = harness.isolated_settings(tmp_path)
    path = harness.write_report({"median_s": 1.5}, harness.report_path(settings, "billing"))
    assert path == tmp_path / "reports" / "bench" / "billing.json"
    assert json.loads(path.read_text()) == {"median_s": 1.5} and path.read_text().endswith("}\n")
