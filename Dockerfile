# Project images for docker-compose.yml.
#   app:     auction service, ad manager, streaming job, calibrator, optimizer, dashboard, MLflow server (same pins as
#            `make setup`). Product code only: the tools (simulator, benchmarks, devstack) stay out, so
#            `adstream` lacks their commands.
#   airflow: the official Airflow image, extended with AdStream's packages, Java and the app's jars
# Both get the JVM jars from Maven at build time, so containers download nothing at run time.
# Each image runs as a named user that owns the directories its services write (tests/test_docker_compose.py
# checks every path a service writes against these lines); in the app image the code, .venv and jars stay root's.

FROM scratch AS source
COPY pyproject.toml requirements.lock README.md Makefile /opt/adstream/
COPY infra /opt/adstream/infra
COPY adstream /opt/adstream/adstream
COPY ingestion /opt/adstream/ingestion
COPY spark_jobs /opt/adstream/spark_jobs
COPY ml /opt/adstream/ml
COPY optimizer /opt/adstream/optimizer
COPY auction_service /opt/adstream/auction_service
COPY cli /opt/adstream/cli
COPY dags /opt/adstream/dags
COPY notebooks /opt/adstream/notebooks
COPY dashboard /opt/adstream/dashboard

# The dashboard's chart library (uPlot), pinned by its package-lock.json; the app image needs no Node.js.
FROM node:20-bookworm-slim AS charts
WORKDIR /charts
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim-bookworm AS app
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven make curl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/adstream
COPY --from=source /opt/adstream ./
# No browser in the image: chromium is for the test suite and make run's screenshot only.
RUN SKIP_AIRFLOW_DB=1 SKIP_SHARED_STORE=1 SKIP_BROWSER=1 WITH_S3=1 bash infra/setup.sh
COPY --from=charts /charts/node_modules /opt/adstream/.local/dashboard-node/node_modules
# A passwd entry and a home: Hadoop's login (Spark) fails for a uid without a user name.
# .local/run: heartbeats; .local/models: the champion's last good copy (a volume); reports: exports (a volume);
# spark-warehouse: Spark's default warehouse, made in the working directory; /var/lib/mlflow-auth: the MLflow
# server's user store (a volume). A named volume takes the owner of the directory it is mounted on.
RUN useradd --uid 1000 --user-group --create-home adstream \
 && install -d -o adstream -g adstream /opt/adstream/.local/run /opt/adstream/.local/models \
      /opt/adstream/reports /opt/adstream/spark-warehouse /var/lib/mlflow-auth
ENV PATH="/opt/adstream/.venv/bin:${PATH}" \
    JAR_CACHE_DIR=/opt/adstream/.local/jars \
    LOCAL_DIR=/opt/adstream/.local \
    REPORTS_DIR=/opt/adstream/reports
USER adstream

FROM apache/airflow:3.3.2-python3.11 AS airflow
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The sources and the jars only: Airflow's own Python gets the packages below, so the app's .venv is not copied.
COPY --from=source --chown=airflow:0 /opt/adstream /opt/adstream
COPY --from=app /opt/adstream/.local/jars /opt/adstream/.local/jars
# The DAGs' tasks write reports (a volume); Spark's warehouse goes to the working directory, /opt/airflow (airflow's).
RUN install -d -o airflow -g 0 /opt/adstream/reports
USER airflow
# The lock pins this same Airflow; installing it adds AdStream's own packages on top.
RUN pip install --no-cache-dir -r /opt/adstream/requirements.lock \
 && pip install --no-cache-dir --no-deps -e /opt/adstream
ENV JAR_CACHE_DIR=/opt/adstream/.local/jars \
    LOCAL_DIR=/opt/adstream/.local \
    REPORTS_DIR=/opt/adstream/reports \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/adstream/dags \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
