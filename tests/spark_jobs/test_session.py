"""Session configuration, checked without a JVM."""

from pathlib import Path

import pytest

from spark_jobs.session import MissingJarsError, jvm_memory_option, local_jars, session_jars, spark_conf
from tests.conftest import make_settings


def _jar_dir(tmp_path: Path, *names: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (tmp_path / name).write_bytes(b"PK")
    return tmp_path


def test_conf_enables_delta_and_ships_only_local_jars(tmp_path):
    jars = local_jars(
        _jar_dir(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar", "spark-sql-kafka-0-10_2.13-4.2.0.jar")
    )
    conf = spark_conf(make_settings(tmp_path), jars)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.master"] == "local[*]"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    shipped = conf["spark.jars"].split(",")
    assert [Path(jar).name for jar in shipped] == [
        "delta-spark_4.2_2.13-4.4.0.jar",
        "spark-sql-kafka-0-10_2.13-4.2.0.jar",
    ]
    assert all(Path(jar).is_absolute() for jar in shipped)
    # Nothing may be resolved from a remote repository at run time.
    assert "spark.jars.packages" not in conf
    assert not any(key.startswith("spark.hadoop.fs.s3a") for key in conf)


def test_a_cluster_master_and_an_s3a_lake_need_configuration_only(tmp_path):
    settings = make_settings(
        tmp_path,
        spark_master="spark://spark-master:7077",
        lake_root="s3a://adstream-lake/lake",
        s3_endpoint_url="http://minio:9000",
        aws_access_key_id="adstream",
        aws_secret_access_key="s3cr3t-for-test",
    )
    conf = spark_conf(settings, [])
    assert conf["spark.master"] == "spark://spark-master:7077"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "adstream"
    assert conf["spark.delta.logStore.s3a.impl"] == "io.delta.storage.S3SingleDriverLogStore"


def test_missing_jar_cache_says_to_run_make_setup(tmp_path):
    with pytest.raises(MissingJarsError, match="make setup"):
        local_jars(_jar_dir(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar"))


def test_an_s3a_lake_without_the_s3_jars_says_how_to_fetch_them(tmp_path):
    jar_cache = tmp_path / "cache"
    _jar_dir(jar_cache / "spark", "delta-spark_4.2_2.13-4.4.0.jar", "spark-sql-kafka-0-10_2.13-4.2.0.jar")
    settings = make_settings(tmp_path, jar_cache_dir=jar_cache, lake_root="s3a://bucket/lake")
    with pytest.raises(MissingJarsError, match="WITH_S3=1 make setup"):
        session_jars(settings)


def test_a_long_running_session_holds_its_whole_heap_from_the_start(tmp_path):
    settings = make_settings(tmp_path, spark_driver_memory="3g")
    batch = spark_conf(settings, [])
    stream = spark_conf(settings, [], long_running=True)
    assert batch["spark.driver.extraJavaOptions"] == "-Duser.timezone=UTC"
    assert "spark.ui.retainedJobs" not in batch
    assert stream["spark.driver.extraJavaOptions"].split() == ["-Duser.timezone=UTC", "-Xms3g", "-XX:+AlwaysPreTouch"]
    assert stream["spark.driver.memory"] == "3g"  # spark-submit turns this into -Xmx3g
    assert stream["spark.sql.ui.retainedExecutions"] == "50"
    assert int(stream["spark.ui.retainedJobs"]) < 1000  # Spark's default


@pytest.mark.parametrize(
    ("spark_memory", "java_size"), [("2g", "2g"), ("2048m", "2048m"), ("1gb", "1g"), ("512", "512m"), (" 4G ", "4g")]
)
def test_spark_memory_strings_become_java_heap_sizes(spark_memory, java_size):
    assert jvm_memory_option(spark_memory) == java_size


@pytest.mark.parametrize("spark_memory", ["512b", "two gigs", "1.5g", ""])
def test_a_memory_string_java_cannot_take_is_refused_with_the_setting_named(spark_memory):
    with pytest.raises(ValueError, match="SPARK_DRIVER_MEMORY"):
        jvm_memory_option(spark_memory)
