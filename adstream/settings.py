"""The one place AdStream reads its environment.

Every other module takes a ``Settings`` (or calls ``get_settings()``); none reads
``os.environ``. Defaults are the embedded single-machine stack; pointing the same
code at a Kafka cluster, a Spark master, S3 or PostgreSQL is a matter of setting
the variables below (see README, "Running against a cluster").
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=1, le=65535)]

# Credentials that ship in the repo for the embedded stack. They are refused
# outside local mode, so a copied .env can never expose a production service.
LOCAL_SIGNING_SECRET = "adstream-local-event-signing-key"
LOCAL_DEFAULT_SECRETS = frozenset({"", "local-dev-token", "adstream", "minioadmin", LOCAL_SIGNING_SECRET})


class Environment(StrEnum):
    LOCAL = "local"
    PROD = "prod"


# A memory size both Spark and the JVM's -Xms/-Xmx accept: digits, then an optional k/m/g/t (and b).
SPARK_MEMORY_PATTERN = r"^\s*(\d+)\s*(?:([kKmMgGtT])[bB]?)?\s*$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    adstream_env: Environment = Environment.LOCAL

    # Storage and engines (the environment variable names are part of the platform's contract).
    lake_root: str = "./lake"
    kafka_bootstrap_servers: str = ""
    mlflow_tracking_uri: str = ""
    # The Redis-protocol store every auction replica shares (reservations, spend, frequency, served
    # auctions); redis://127.0.0.1:SHARED_STORE_PORT/0 by default, started by `make up`.
    shared_store_url: str = ""
    # How long a shared-store call may take before the request answers 503 (retry) instead of hanging.
    shared_store_timeout_s: float = Field(default=0.5, gt=0, le=30)
    shared_store_namespace: str = Field(default="adstream", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # its keys' prefix
    campaign_db_url: str = ""
    # How long the campaign store may take before a caller gets an error (the API answers 503) instead of a
    # hang: to connect, to run one statement (PostgreSQL), and to wait for a lock (SQLite's busy timeout,
    # PostgreSQL's lock_timeout).
    campaign_db_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    campaign_db_statement_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    campaign_db_lock_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    spark_master: str = "local[*]"
    kaggle_dir: Path = Path("data/kaggle")

    # Local ports; the URLs above default to them when not set explicitly.
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    mlflow_port: Port = 5000
    airflow_port: Port = 8080
    airflow_worker_log_port: Port = 8793
    airflow_trigger_log_port: Port = 8794
    auction_port: Port = 8000
    shared_store_port: Port = 6390
    dashboard_port: Port = 8050  # the live dashboard (`make up`)
    # The auction service the dashboard reads /v1/stats from; default http://BIND_HOST:AUCTION_PORT.
    dashboard_auction_url: str = ""
    # Prometheus metrics of the background processes on BIND_HOST (adstream.exporter); 0 exports none.
    streaming_metrics_port: int = Field(default=9101, ge=0, le=65535)
    ad_manager_metrics_port: int = Field(default=9102, ge=0, le=65535)
    optimizer_metrics_port: int = Field(default=9103, ge=0, le=65535)
    # Each auction replica's own /metrics and /v1/stats: replica i of AUCTION_REPLICAS on this port + i, so
    # Prometheus and the dashboard reach every one (AUCTION_PORT reaches one at random); 0 serves none.
    auction_metrics_port: int = Field(default=9110, ge=0, le=65535 - 63)
    bind_host: str = "127.0.0.1"

    # Where `make setup` and `make up` keep machine-local state (git-ignored).
    local_dir: Path = Path(".local")
    jar_cache_dir: Path | None = None

    # Ingestion: where GX validation results go, and the share of a table's
    # records that may be quarantined before the whole load is refused.
    reports_dir: Path = Path("reports")
    ingest_max_reject_share: float = Field(default=0.05, ge=0, le=1)
    # An exchange's invoice line that differs from what its win notices priced by at most this share (of the
    # amount and of the impressions) is within tolerance; beyond it, disputed (`adstream invoice`).
    exchange_invoice_tolerance: float = Field(default=0.02, ge=0, le=1)

    # Spark tuning that is not a per-job choice.
    spark_driver_memory: str = Field(default="2g", pattern=SPARK_MEMORY_PATTERN)  # 2g, 2048m, 1gb; no unit = MiB
    spark_shuffle_partitions: int = Field(default=4, ge=1)

    # S3-compatible lake (MinIO in docker-compose). Credentials come from the
    # standard AWS variables and are only passed through to Hadoop's s3a.
    s3_endpoint_url: str = ""
    aws_access_key_id: SecretStr = SecretStr("")
    aws_secret_access_key: SecretStr = SecretStr("")

    # Auction service. The bearer token guards the campaign endpoints; the service
    # refuses to start with the local default outside local mode (checked there, so
    # batch jobs in a prod deployment need no token).
    auction_api_token: SecretStr = SecretStr("local-dev-token")
    # The dashboard: how often its page gets new numbers (server-sent events); outside local mode it asks for
    # AUCTION_API_TOKEN too.
    dashboard_refresh_s: float = Field(default=2.0, ge=0.2, le=60)
    auction_max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # The hot routes served past FastAPI's router and each response in one socket write; off: plain
    # FastAPI routing and stock uvicorn, the same answers (a switch for when a Starlette or uvicorn upgrade breaks it).
    auction_fast_path: bool = True
    # Auction-service processes on AUCTION_PORT (SO_REUSEPORT: the kernel spreads connections over them).
    auction_replicas: int = Field(default=1, ge=1, le=64)
    auction_reserve_price_micros: int = Field(default=10_000, ge=0)  # CPM floor when a request states none
    # OpenRTB: a tmax below this gets no bid (the auction, the network and the exchange's own margin need it).
    openrtb_min_tmax_ms: int = Field(default=20, ge=0)
    # OpenRTB: answer a no-bid 200 {"id", "seatbid": [], "nbr"} instead of 204, for exchanges that want the code.
    openrtb_no_bid_body: bool = False
    auction_ttl_s: int = Field(default=3600, ge=60)  # how long after an auction its events are accepted
    # Event URLs and tokens are HMAC-SHA256 signed. Keys are "key_id:secret" pairs, comma-separated:
    # the service signs with EVENT_SIGNING_KEY_ID and verifies with any listed key, so a key is rotated
    # by adding the new one, switching the id, and dropping the old one once its tokens have expired
    # (AUCTION_TTL_S). The local default is refused outside local mode.
    event_signing_keys: SecretStr = SecretStr(f"local:{LOCAL_SIGNING_SECRET}")
    event_signing_key_id: str = "local"
    # General invalid traffic: clicks sooner than this after their impression are GIVT ("too fast");
    # requests from these CIDR ranges (comma-separated, e.g. a cloud provider's) are GIVT ("data center").
    ivt_min_click_delay_ms: int = Field(default=500, ge=0)
    ivt_datacenter_cidrs: str = ""
    # Stream-side SIVT-lite: a user or IP whose clicks in a sliding window exceed this many is an outlier.
    ivt_sivt_window_s: int = Field(default=300, ge=10)
    ivt_sivt_max_clicks: int = Field(default=20, ge=1)
    # Anonymous auction callers (no API key) are served only in local mode, under this policy.
    auction_allow_anonymous: bool = True
    # Filled auctions stay in the shared store this long; older ones are read back from the campaign store.
    served_in_memory_s: int = Field(default=600, ge=60)
    campaign_refresh_s: float = Field(default=0.25, gt=0)  # the service sees store changes within ~1 s
    model_poll_s: float = Field(default=5.0, gt=0)  # how often serving checks ctr-model@champion
    # pCTR calibration (ml.calibration). The live click rate a model trained on other data is corrected
    # toward at registration; the online Platt map refitted every CALIBRATION_REFRESH_S on the logged
    # impressions of the last CALIBRATION_WINDOW_S (recency half-life CALIBRATION_HALF_LIFE_S) once they
    # hold CALIBRATION_MIN_CLICKS clicks; serving picks a new map up within CALIBRATION_POLL_S.
    ctr_prior: float = Field(default=0.03, gt=0, lt=1)
    calibration_cold_start: bool = True  # match served winners to CTR_PRIOR until an online map (ColdStart)
    calibration_refresh_s: float = Field(default=60.0, gt=0)
    calibration_window_s: int = Field(default=7200, ge=60)
    calibration_half_life_s: float = Field(default=900.0, gt=0)
    calibration_min_clicks: int = Field(default=50, ge=1)
    calibration_poll_s: float = Field(default=15.0, gt=0)
    # Budget pacing. The day of daily budgets, pacing plans and the simulator's traffic curve (adstream.days):
    # 24 h from the epoch, the UTC day. A simulation sets it shorter (e.g. 3600) so that one run plays out a
    # whole day, and sets the origin (seconds since the epoch) to when its traffic starts.
    pacing_day_length_s: int = Field(default=86_400, ge=60, le=86_400)
    pacing_day_origin_s: int = Field(default=0, ge=0)
    pacing_update_s: float = Field(default=10.0, gt=0, le=10.0)  # how often the controllers move λ
    # The campaign optimizer (optimizer.service): a decision every tick from windows of buckets.
    optimizer_tick_s: float = Field(default=2.0, gt=0, le=60.0)
    optimizer_bucket_s: int = Field(default=60, ge=1, le=3600)
    optimizer_buckets: int = Field(default=30, ge=2, le=1440)  # 30 one-minute buckets: a 30-minute window
    ad_manager_group: str = "ad-manager"

    # Streaming. The watermark is the one lateness allowance: the stream drops a
    # duplicate event_id within it and quarantines events older than it, and the service
    # refuses events older than it, so every charged event reaches silver.
    stream_trigger_s: float = Field(default=5.0, gt=0)
    # gold/kpi_minute's own query: its MERGE costs a few seconds whatever the batch, so on 2 cores a
    # 5 s cadence would take half the machine from silver; KPIs are per minute, 30 s keeps them current.
    stream_kpi_trigger_s: float = Field(default=30.0, gt=0)
    stream_watermark_s: int = Field(default=600, ge=60)

    # The bid-request filter (ml.bid_filter), served before each OpenRTB auction while BID_FILTER_ENABLED and
    # bid-filter@champion exists. Its threshold keeps BID_FILTER_REVENUE_TARGET of the holdout's revenue.
    # BID_FILTER_EXPLORATION_SHARE of requests pass whatever their score, tagged in the auction log: the
    # unbiased sample training reads and the revenue lost is estimated on. Training reads the last
    # BID_FILTER_TRAINING_DAYS days of silver/auctions (5: its holdout, the latest fifth, is then about a whole
    # day) and waits for BID_FILTER_MIN_REQUESTS requests there.
    bid_filter_enabled: bool = True
    # Above the 99 % the filter must keep live: a threshold set at the edge of one holdout keeps less next day.
    bid_filter_revenue_target: float = Field(default=0.995, gt=0, le=1)
    bid_filter_exploration_share: float = Field(default=0.05, ge=0, lt=1)
    bid_filter_training_days: int = Field(default=5, ge=1, le=366)
    bid_filter_min_requests: int = Field(default=1000, ge=10)

    @model_validator(mode="after")
    def _fill_derived_urls(self) -> Settings:
        # A frozen model: derived defaults are set once, here, via object.__setattr__.
        if not self.kafka_bootstrap_servers:
            object.__setattr__(self, "kafka_bootstrap_servers", f"127.0.0.1:{self.kafka_port}")
        if not self.shared_store_url:
            object.__setattr__(self, "shared_store_url", f"redis://127.0.0.1:{self.shared_store_port}/0")
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"http://127.0.0.1:{self.mlflow_port}")
        if not self.campaign_db_url:
            db = self.local_dir.resolve() / "campaigns.db"
            object.__setattr__(self, "campaign_db_url", f"sqlite:///{db}")
        if self.jar_cache_dir is None:
            object.__setattr__(self, "jar_cache_dir", self.local_dir / "jars")
        return self

    @model_validator(mode="after")
    def _refuse_local_secrets_outside_local(self) -> Settings:
        if self.adstream_env is Environment.LOCAL:
            return self
        if self.lake_root.startswith("s3a://"):
            secret = self.aws_secret_access_key.get_secret_value()
            if secret in LOCAL_DEFAULT_SECRETS:
                raise ValueError(
                    "AWS_SECRET_ACCESS_KEY is empty or a local default while "
                    f"ADSTREAM_ENV={self.adstream_env.value}; set a real secret"
                )
        return self

    @property
    def is_local(self) -> bool:
        return self.adstream_env is Environment.LOCAL

    def lake_path(self, table: str) -> str:
        """Full path (or s3a URL) of a lake table such as ``bronze/advertising``."""
        return f"{self.lake_root.rstrip('/')}/{table}"

    def checkpoint_path(self, query: str) -> str:
        return self.lake_path(f"_checkpoints/{query}")

    def delta_rs_location(self, table: str) -> tuple[str, dict[str, str]]:
        """URI and storage options for delta-rs (which names S3 ``s3://`` where Hadoop says ``s3a://``)."""
        path = self.lake_path(table)
        if not path.startswith("s3a://"):
            return str(Path(path).resolve()), {}
        options = {"AWS_REGION": "us-east-1", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
        if self.aws_access_key_id.get_secret_value():
            options["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id.get_secret_value()
            options["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key.get_secret_value()
        if self.s3_endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.s3_endpoint_url
            options["AWS_ALLOW_HTTP"] = str(self.s3_endpoint_url.startswith("http://")).lower()
        return "s3://" + path.removeprefix("s3a://"), options

    @property
    def spark_jar_dir(self) -> Path:
        return Path(self.jar_cache_dir) / "spark"

    @property
    def kafka_jar_dir(self) -> Path:
        return Path(self.jar_cache_dir) / "kafka"

    @property
    def s3_jar_dir(self) -> Path:
        return Path(self.jar_cache_dir) / "s3"

    @property
    def log_dir(self) -> Path:
        return self.local_dir / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.local_dir / "airflow"

    @property
    def model_cache_dir(self) -> Path:
        """The last good copy of the champion, for serving when MLflow is down at start."""
        return self.local_dir / "models"


def child_process_env(**overrides: str) -> dict[str, str]:
    """This process's environment plus ``overrides``, for launching services and CLIs.

    The pass-through lives here so that configuration is still read in one module.
    """
    return {**os.environ, **overrides}


def default_child_env(name: str, value: str) -> None:
    """Gives the processes this one launches from now on ``name`` = ``value``, unless it is already set
    (a JVM reads MALLOC_ARENA_MAX once, at start)."""
    os.environ.setdefault(name, value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build ``Settings(...)`` directly instead."""
    return Settings()
