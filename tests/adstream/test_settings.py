from pathlib import Path

import pytest
from pydantic import ValidationError

from adstream.settings import Environment, Settings, child_process_env, default_child_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LAKE_ROOT",
        "KAFKA_BOOTSTRAP_SERVERS",
        "MLFLOW_TRACKING_URI",
        "CAMPAIGN_DB_URL",
        "SPARK_MASTER",
        "KAGGLE_DIR",
        "KAFKA_PORT",
        "MLFLOW_PORT",
        "ADSTREAM_ENV",
        "LOCAL_DIR",
        "AUCTION_FAST_PATH",
    ):
        monkeypatch.delenv(name, raising=False)


def test_embedded_defaults_match_the_architecture_contract():
    settings = Settings()
    assert settings.lake_root == "./lake"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.spark_master == "local[*]"
    assert settings.kaggle_dir == Path("data/kaggle")
    assert settings.campaign_db_url.startswith("sqlite:///") and settings.campaign_db_url.endswith("campaigns.db")
    assert (settings.airflow_port, settings.auction_port) == (8080, 8000)
    assert settings.adstream_env is Environment.LOCAL


def test_every_contract_variable_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAKE_ROOT", "s3a://lake-bucket/adstream")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("CAMPAIGN_DB_URL", "postgresql+psycopg://adstream@db/campaigns")
    monkeypatch.setenv("SPARK_MASTER", "spark://spark-master:7077")
    monkeypatch.setenv("KAGGLE_DIR", "/data/kaggle-real")
    settings = Settings()
    assert settings.lake_root == "s3a://lake-bucket/adstream"
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.campaign_db_url == "postgresql+psycopg://adstream@db/campaigns"
    assert settings.spark_master == "spark://spark-master:7077"
    assert settings.kaggle_dir == Path("/data/kaggle-real")


def test_urls_follow_a_moved_port_unless_set_explicitly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_PORT", "19092")
    monkeypatch.setenv("MLFLOW_PORT", "15000")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:15000"


def test_lake_and_checkpoint_paths_join_under_the_root():
    settings = Settings(lake_root="s3a://bucket/lake/")
    assert settings.lake_path("bronze/advertising") == "s3a://bucket/lake/bronze/advertising"
    assert settings.checkpoint_path("feedback") == "s3a://bucket/lake/_checkpoints/feedback"


def test_a_bad_port_is_rejected_naming_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_PORT", "99999")
    with pytest.raises(ValidationError, match="kafka_port"):
        Settings()


def test_local_default_secret_is_refused_outside_local_mode():
    with pytest.raises(ValidationError, match="AWS_SECRET_ACCESS_KEY"):
        Settings(adstream_env="prod", lake_root="s3a://bucket/lake", aws_secret_access_key="minioadmin")
    # The same secret is fine for the embedded stack, and a real one is fine in prod.
    assert Settings(lake_root="s3a://bucket/lake", aws_secret_access_key="minioadmin").is_local
    assert not Settings(adstream_env="prod", lake_root="s3a://b/l", aws_secret_access_key="x9!k2LqR").is_local


def test_only_the_settings_module_reads_the_environment():
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("adstream", "spark_jobs", "ingestion", "ml", "auction_service", "dags"):
        for source in (root / package).rglob("*.py"):
            if source.name == "settings.py" and source.parent.name == "adstream":
                continue
            text = source.read_text()
            if "os.environ" in text or "getenv(" in text:
                offenders.append(str(source.relative_to(root)))
    assert offenders == []


def test_a_child_env_default_yields_to_what_the_operator_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    default_child_env("MALLOC_ARENA_MAX", "2")
    assert child_process_env()["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    default_child_env("MALLOC_ARENA_MAX", "2")
    assert child_process_env()["MALLOC_ARENA_MAX"] == "8"


@pytest.mark.parametrize("memory", ["1.5g", "2 gigs", "512b", ""])
def test_a_driver_memory_java_cannot_take_is_refused_naming_the_setting(memory: str):
    with pytest.raises(ValidationError, match="spark_driver_memory"):
        Settings(spark_driver_memory=memory)
    assert Settings(spark_driver_memory="3G").spark_driver_memory == "3G"


def test_the_auction_fast_path_is_on_by_default_and_switched_off_by_its_variable(monkeypatch: pytest.MonkeyPatch):
    assert Settings().auction_fast_path is True
    monkeypatch.setenv("AUCTION_FAST_PATH", "false")
    assert Settings().auction_fast_path is False
    monkeypatch.setenv("AUCTION_FAST_PATH", "sometimes")
    with pytest.raises(ValidationError, match="auction_fast_path"):
        Settings()
