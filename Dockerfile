# Project images for docker-compose.yml.
#   app:     auction service, ad manager, streaming job, MLflow server (same pins as `make setup`)
#            Product code only: the tools (simulator, benchmarks, devstack) stay out, so `adstream` lacks their commands.
#   airflow: the official Airflow image, extended with AdStream's packages, Java and jars
# Both resolve the JVM jars with Maven at build time, so containers download nothing at run time.

FROM python:3.11-slim-bookworm AS app
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven make curl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/adstream
COPY pyproject.toml requirements.lock README.md ./
COPY infra ./infra
COPY adstream ./adstream
COPY ingestion ./ingestion
COPY spark_jobs ./spark_jobs
COPY ml ./ml
COPY auction_service ./auction_service
COPY cli ./cli
COPY dags ./dags
COPY Makefile ./
RUN SKIP_AIRFLOW_DB=1 SKIP_SHARED_STORE=1 WITH_S3=1 bash infra/setup.sh
ENV PATH="/opt/adstream/.venv/bin:${PATH}" \
    JAR_CACHE_DIR=/opt/adstream/.local/jars \
    LOCAL_DIR=/opt/adstream/.local
USER 1000:1000

FROM apache/airflow:3.3.2-python3.11 AS airflow
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=app /opt/adstream /opt/adstream
USER airflow
# The lock pins this same Airflow; installing it adds AdStream's own packages on top.
RUN pip install --no-cache-dir -r /opt/adstream/requirements.lock \
 && pip install --no-cache-dir --no-deps -e /opt/adstream
ENV JAR_CACHE_DIR=/opt/adstream/.local/jars \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/adstream/dags \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
