"""The one way AdStream jobs get a SparkSession.

Delta and the Kafka connector come from the local jar cache that `make setup`
fills from Maven Central, so a session never downloads anything. The same code
runs on `local[*]` or a `spark://` master, on a filesystem lake or `s3a://`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pyspark.sql import SparkSession

from adstream.settings import SPARK_MEMORY_PATTERN, Settings, default_child_env, get_settings


class MissingJarsError(RuntimeError):
    """The local jar cache is empty or incomplete."""


REQUIRED_JARS = ("delta-spark_", "spark-sql-kafka-0-10_")


def local_jars(jar_dir: Path) -> list[Path]:
    jars = sorted(Path(jar_dir).glob("*.jar"))
    for prefix in REQUIRED_JARS:
        if not any(jar.name.startswith(prefix) for jar in jars):
            raise MissingJarsError(
                f"no {prefix}*.jar in {jar_dir}; run `make setup` to fetch the Spark jars from Maven Central"
            )
    return jars


# A job that runs for days (the stream) should hold at start the memory it will hold at the end.
# - Its heap is committed and touched up front (-Xms = -Xmx, pre-touched, as Elasticsearch runs its)
#   instead of growing into the cap through the first half hour of load.
# - The UI keeps the last few hundred jobs and SQL plans, not 1,000 of each: the stream runs about
#   ten jobs every trigger, and the kept plans are heap the GC scans on every cycle.
LONG_RUNNING_UI_CONF = {
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.sql.ui.retainedExecutions": "50",
}
# glibc may give each busy thread its own 64 MB malloc arena, up to 8 per core, and the job runs
# ~650 threads; two arenas bound what the JVM's untracked native allocations can spread over.
# Over a 30-min soak, RSS stayed within 54-60 MB of what the JVM's native-memory tracking counts.
MALLOC_ARENA_MAX = "2"


def jvm_memory_option(spark_memory: str) -> str:
    """Spark's memory string ("2g", "2048m", "1gb", "512" = MiB) as the size a -Xms/-Xmx option takes."""
    match = re.match(SPARK_MEMORY_PATTERN, spark_memory)
    if not match:
        raise ValueError(f"SPARK_DRIVER_MEMORY {spark_memory!r} is not a size like 2g or 2048m")
    return f"{match[1]}{(match[2] or 'm').lower()}"


def spark_conf(
    settings: Settings, jars: list[Path], *, extra: dict[str, str] | None = None, long_running: bool = False
) -> dict[str, str]:
    """Everything a session needs, as plain config, so it can be checked without a JVM."""
    java_options = ["-Duser.timezone=UTC"]
    if long_running:
        java_options += [f"-Xms{jvm_memory_option(settings.spark_driver_memory)}", "-XX:+AlwaysPreTouch"]
    conf = {
        "spark.master": settings.spark_master,
        "spark.jars": ",".join(str(jar.resolve()) for jar in jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # Event times are UTC everywhere; no host-local surprises in partitions.
        "spark.driver.extraJavaOptions": " ".join(java_options),
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        "spark.ui.showConsoleProgress": "false",
        # The JVM does not JIT a method over 8,000 bytes of bytecode; whole-stage code past that
        # (the stream's ~50 quarantine checks) ran interpreted. Split it into expression code
        # instead: classification of 100k records took 1.8 s, not 3.1 s.
        "spark.sql.codegen.hugeMethodLimit": "8000",
    }
    if long_running:
        conf.update(LONG_RUNNING_UI_CONF)
    if settings.lake_root.startswith("s3a://"):
        conf.update(s3a_conf(settings))
    conf.update(extra or {})
    return conf


def s3a_conf(settings: Settings) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        # Delta needs a log store that is safe for S3's lack of atomic rename.
        "spark.delta.logStore.s3a.impl": "io.delta.storage.S3SingleDriverLogStore",
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
            if settings.aws_access_key_id.get_secret_value()
            else "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        ),
    }
    if settings.aws_access_key_id.get_secret_value():
        conf["spark.hadoop.fs.s3a.access.key"] = settings.aws_access_key_id.get_secret_value()
        conf["spark.hadoop.fs.s3a.secret.key"] = settings.aws_secret_access_key.get_secret_value()
    if settings.s3_endpoint_url:
        # MinIO and other S3-compatible stores serve buckets by path, not by host.
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint_url
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3_endpoint_url.startswith("https")).lower()
    return conf


def session_jars(settings: Settings) -> list[Path]:
    jars = local_jars(settings.spark_jar_dir)
    if settings.lake_root.startswith("s3a://"):
        s3_jars = sorted(settings.s3_jar_dir.glob("*.jar"))
        if not s3_jars:
            raise MissingJarsError(
                f"LAKE_ROOT is {settings.lake_root} but {settings.s3_jar_dir} has no hadoop-aws jars; "
                "run `WITH_S3=1 make setup`"
            )
        jars += s3_jars
    return jars


def get_spark(
    app_name: str, settings: Settings | None = None, extra: dict[str, str] | None = None, *, long_running: bool = False
) -> SparkSession:
    """A (possibly existing) session configured for AdStream; ``extra`` overrides single keys.

    ``long_running`` sizes the JVM for a job that runs for days (see LONG_RUNNING_UI_CONF); it
    applies only when this call starts the JVM, which inherits the malloc arena cap.
    """
    settings = settings or get_settings()
    conf = spark_conf(settings, session_jars(settings), extra=extra, long_running=long_running)
    if long_running:
        default_child_env("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
