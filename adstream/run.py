"""`make run`: bring the platform up and push data through it, one visible stage at a time.

Each stage prints a progress line; a failing stage names itself and its log file.
Services are stopped at the end unless KEEP_UP=1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adstream import services
from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL, Topic
from adstream.settings import Settings, child_process_env, get_settings


class StageFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    action: Callable[[Settings], None]


def run_logged(settings: Settings, stage: str, *command: str) -> None:
    """Runs a step of the platform as its own process, its output in .local/logs/run-<stage>.log."""
    log = services.log_file(settings, f"run-{stage}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        result = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_process_env(**services.settings_env(settings)),
            cwd=services.PROJECT_ROOT,
        )
    if result.returncode != 0:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StageFailed(f"`{' '.join(command[1:])}` exited with {result.returncode}; log: {log}\n    {tail}")


def start_services(settings: Settings) -> None:
    services.up(settings)


def ingest_kaggle(settings: Settings) -> None:
    run_logged(settings, "ingestion", sys.executable, "-m", "ingestion", "all")
    for line in services.log_file(settings, "run-ingestion").read_text().strip().splitlines():
        print(f"    {line}")


def build_features(settings: Settings) -> None:
    for module in ("spark_jobs.silver", "spark_jobs.features"):
        stage = module.rsplit(".", 1)[1]
        run_logged(settings, stage, sys.executable, "-m", module)
        for line in services.log_file(settings, f"run-{stage}").read_text().strip().splitlines():
            if line.startswith(("silver/", "gold/")):
                print(f"    {line}")


def smoke_flow(settings: Settings) -> None:
    run_logged(settings, "smoke", sys.executable, "-m", "spark_jobs.smoke", "all", "--events", str(SMOKE_EVENTS))
    print(f"    {services.log_file(settings, 'run-smoke').read_text().strip().splitlines()[-1]}")


def train_ctr_model(settings: Settings) -> None:
    """Trains the CTR families against the MLflow server and applies the guarded promotion."""
    run_logged(settings, "training", sys.executable, "-m", "ml.train")
    for line in services.log_file(settings, "run-training").read_text().strip().splitlines():
        if line.startswith(
            ("constant CTR", "logistic_regression", "gradient_boosted", "trees_plus", "  ", "ctr-model")
        ):
            print(f"    {line}")


def wait_for_auction_service(settings: Settings, campaigns: int, timeout_s: float = 90.0) -> dict:
    """Until the service has loaded the champion and sees the seeded campaigns."""
    import httpx

    url = f"http://{settings.bind_host}:{settings.auction_port}/readyz"
    deadline, body = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            body = httpx.get(url, timeout=2.0).json()
        except httpx.HTTPError as exc:
            body = {"reason": str(exc)}
        if body.get("ready") and body.get("campaigns", 0) >= campaigns:
            return body
        time.sleep(1.0)
    raise StageFailed(f"the auction service was not ready with {campaigns} campaigns after {timeout_s:.0f}s: {body}")


def seed_and_serve(settings: Settings) -> None:
    """Seeds campaigns through Kafka (the ad manager applies them), then simulated users see ads."""
    run_logged(settings, "seed", sys.executable, "-m", "auction_service.campaigns", "seed", str(SEED_CAMPAIGNS),
               "--seed", "7")  # fmt: skip
    ready = wait_for_auction_service(settings, SEED_CAMPAIGNS)
    print(f"    {ready['campaigns']} campaigns serving, ctr-model version {ready['model_version']}")
    run_logged(settings, "simulator", sys.executable, "-m", "auction_service.simulator", "--duration",
               f"{SIMULATION_S}s", "--rate", "20", "--users", "300")  # fmt: skip
    print(f"    {services.log_file(settings, 'run-simulator').read_text().strip().splitlines()[-1]}")


SEED_CAMPAIGNS = 200
SIMULATION_S = 30
SMOKE_EVENTS = 500
STAGES = (
    Stage("start services (Kafka, MLflow, Airflow, ad manager, auction service)", start_services),
    Stage("ingest the Kaggle datasets into bronze Delta, gated by Great Expectations", ingest_kaggle),
    Stage("build silver users/ads and gold features with Spark", build_features),
    Stage("smoke flow: Kafka -> Spark Structured Streaming -> Delta", smoke_flow),
    Stage("train CTR models, register ctr-model and guard its promotion (MLflow)", train_ctr_model),
    Stage("seed campaigns through Kafka and serve simulated users (auction service)", seed_and_serve),
)


def summary(settings: Settings) -> str:
    password_file = settings.airflow_home.resolve() / "simple_auth_manager_passwords.json.generated"
    return "\n".join(
        [
            "Where things are:",
            f"  Kafka bootstrap    {settings.kafka_bootstrap_servers}  (topic '{Topic.PLATFORM_SMOKE}')",
            f"  Lake (Delta)       {services.settings_env(settings)['LAKE_ROOT']}"
            "  (bronze/, quarantine/, silver/, gold/, smoke/)",
            f"  Quality results    {settings.reports_dir.resolve() / 'quality'}",
            f"  MLflow UI          http://{settings.bind_host}:{settings.mlflow_port}"
            f"  (experiment '{MLFLOW_EXPERIMENT}', model '{REGISTERED_MODEL}@{CHAMPION_ALIAS}')",
            f"  Airflow UI         http://{settings.bind_host}:{settings.airflow_port}"
            f"  (user admin, password in {password_file})",
            f"  Auction API        http://{settings.bind_host}:{settings.auction_port}/docs",
            f"  Service logs       {settings.log_dir.resolve()}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adstream.run", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-up", action="store_true", help="leave the services running (make run KEEP_UP=1)")
    args = parser.parse_args(argv)
    settings = get_settings()
    began = time.monotonic()
    try:
        for number, stage in enumerate(STAGES, start=1):
            print(f"[{number}/{len(STAGES)}] {stage.name} ...", flush=True)
            stage_began = time.monotonic()
            try:
                stage.action(settings)
            except (StageFailed, services.ServiceError) as exc:
                print(f"[{number}/{len(STAGES)}] FAILED: {stage.name}\n    {exc}", file=sys.stderr)
                return 1
            print(f"[{number}/{len(STAGES)}] done in {time.monotonic() - stage_began:.1f}s", flush=True)
        print(f"\nAdStream ran end to end in {time.monotonic() - began:.1f}s.\n{summary(settings)}")
    finally:
        if args.keep_up:
            print("\nServices left running (KEEP_UP=1); stop them with `make down`.")
        else:
            print("\nStopping services (KEEP_UP=1 keeps them running) ...")
            services.down(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
