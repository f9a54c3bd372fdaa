"""CTR training runs side by side: every family's holdout metrics, the data it saw, and the promotion decision.

    adstream compare [--last N] [--execute-notebook]

Reads MLflow only (experiment ``ctr`` and the ``ctr-model`` registry at
MLFLOW_TRACKING_URI). ``--execute-notebook`` also runs
``notebooks/compare_ctr_runs.ipynb`` on the same runs and writes the executed copy
to ``REPORTS_DIR/notebooks/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL, DagId
from adstream.settings import Settings, child_process_env
from ml.notebooks import NOTEBOOKS_DIR, execute_notebook
from ml.registry import CALIBRATION_BOUNDS
from ml.tracking import ensure_reachable, search_ctr_runs, tracking_client

TRAINING_RUN_NAME = "ctr-training"  # the parent run ml.train opens per training
PARENT_RUN_TAG = "mlflow.parentRunId"
FAMILY_TAG = "model_family"
BEST_FAMILY_TAG = "best_family"
CONSTANT_CTR = "constant_ctr"  # the baseline ml.train logs on the parent run as constant_ctr.<metric>
METRICS = ("normalized_entropy", "log_loss", "roc_auc", "pr_auc", "calibration")
PARAMS = (
    "training_table_version",
    "dataset_filter",
    "train_rows",
    "holdout_rows",
    "train_time_range",
    "holdout_time_range",
)
SOURCES_PARAM = "train_sources"
FAMILY_COLUMNS = ("started", "training_run", "family", "best", "registered_version", *METRICS, "run_id")
DECISION_COLUMNS = (
    "started", "training_run", "training_table_version", "best_family", "challenger_version", "decision",
    "promoted", "champion_before", "champion_after", "reasons",
)  # fmt: skip
REGISTRY_COLUMNS = ("alias", "version", "family", "registered", "run_id", "training_run")
DEFAULT_LAST = 5
NOTEBOOK = NOTEBOOKS_DIR / "compare_ctr_runs.ipynb"


class NoTrainingRuns(LookupError):
    """MLflow holds no finished CTR training run to compare."""


@dataclass(frozen=True)
class Comparison:
    families: pd.DataFrame  # one row per (training run, family), constant_ctr included
    decisions: pd.DataFrame  # one row per training run
    registry: pd.DataFrame  # one row per alias


def training_runs(client: MlflowClient, last: int = DEFAULT_LAST) -> list[Run]:
    """The latest ``last`` finished training (parent) runs, newest first.

    Running or failed trainings are left out: their family runs and decision are incomplete.
    """
    return search_ctr_runs(
        client, f"attributes.run_name = '{TRAINING_RUN_NAME}' and attributes.status = 'FINISHED'", last
    )


def family_runs(client: MlflowClient, runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Training run id -> its child runs, one per model family."""
    return {
        run.info.run_id: list(
            client.search_runs([run.info.experiment_id], filter_string=f"tags.{PARENT_RUN_TAG} = '{run.info.run_id}'")
        )
        for run in runs
    }


def registered_versions(client: MlflowClient) -> dict[str, str]:
    """Family run id -> the ``ctr-model`` version registered from it."""
    return {
        version.run_id: str(version.version) for version in client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    }


def _started(run: Run) -> pd.Timestamp:
    return pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").floor("s")


def _training_columns(run: Run) -> dict[str, object]:
    params = run.data.params
    return {
        "started": _started(run),
        "training_run": run.info.run_id,
        **{name: params.get(name) for name in PARAMS},
        SOURCES_PARAM: params.get(SOURCES_PARAM),
    }


def side_by_side(
    runs: Sequence[Run], families: Mapping[str, Sequence[Run]], versions: Mapping[str, str]
) -> pd.DataFrame:
    """One row per (training run, family), best NE first within a training run, plus the constant-CTR row.

    ``constant_ctr`` predicts the training CTR for every holdout example: the floor a
    family has to beat on the very same holdout.
    """
    rows = []
    for run in runs:
        training = _training_columns(run)
        best_family = run.data.tags.get(BEST_FAMILY_TAG)
        for family_run in families.get(run.info.run_id, []):
            family = family_run.data.tags.get(FAMILY_TAG)
            rows.append(
                {
                    **training,
                    "family": family,
                    "best": family == best_family,
                    "registered_version": versions.get(family_run.info.run_id),
                    **{name: family_run.data.metrics.get(name) for name in METRICS},
                    "run_id": family_run.info.run_id,
                }
            )
        rows.append(
            {
                **training,
                "family": CONSTANT_CTR,
                "best": False,
                "registered_version": None,
                **{name: run.data.metrics.get(f"{CONSTANT_CTR}.{name}") for name in METRICS},
                "run_id": run.info.run_id,
            }
        )
    frame = pd.DataFrame(rows, columns=[*FAMILY_COLUMNS, *PARAMS, SOURCES_PARAM])
    for name in ("train_rows", "holdout_rows"):
        frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    frame[list(METRICS)] = frame[list(METRICS)].astype("float64")
    run_order = frame["training_run"].map({run.info.run_id: i for i, run in enumerate(runs)})
    frame = frame.assign(run_order=run_order).sort_values(["run_order", "normalized_entropy"], kind="stable")
    return frame.drop(columns="run_order").reset_index(drop=True)


def training_data(families: pd.DataFrame) -> pd.DataFrame:
    """One row per training run from the side-by-side frame: the data its families were fitted and judged on."""
    columns = ["started", "training_run", *PARAMS, SOURCES_PARAM]
    return families[columns].drop_duplicates("training_run").reset_index(drop=True)


def _decision(tags: Mapping[str, str], registered: str | None) -> str:
    if "promotion.promoted" in tags:
        return "promoted" if tags["promotion.promoted"] == "true" else "not promoted"
    # ml.train registers first and decides after (the DAG even in another task); evaluation runs register nothing.
    return "awaiting promotion" if registered else "nothing registered"


def _version_tag(tags: Mapping[str, str], name: str) -> str | None:
    value = tags.get(name)
    return None if value in (None, "none") else value


def decisions(runs: Sequence[Run], families: Mapping[str, Sequence[Run]], versions: Mapping[str, str]) -> pd.DataFrame:
    """One row per training run: the version it registered and whether (and why) it became champion."""
    rows = []
    for run in runs:
        tags = run.data.tags
        registered = next(
            (versions[f.info.run_id] for f in families.get(run.info.run_id, []) if f.info.run_id in versions), None
        )
        promoted = tags.get("promotion.promoted")
        rows.append(
            {
                "started": _started(run),
                "training_run": run.info.run_id,
                "training_table_version": run.data.params.get("training_table_version"),
                "best_family": tags.get(BEST_FAMILY_TAG),
                "challenger_version": _version_tag(tags, "promotion.challenger_version") or registered,
                "decision": _decision(tags, registered),
                "promoted": None if promoted is None else promoted == "true",
                "champion_before": _version_tag(tags, "promotion.champion_version_before"),
                "champion_after": _version_tag(tags, "promotion.champion_version_after"),
                "reasons": tags.get("promotion.reasons", ""),
            }
        )
    frame = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    frame["promoted"] = frame["promoted"].astype("boolean")
    return frame


def registry_state(client: MlflowClient) -> pd.DataFrame:
    """Which ``ctr-model`` version holds ``champion`` and ``challenger`` now, its family and runs.

    An alias nobody holds yet is a row of None, so "no champion" reads as such.
    """
    models = client.search_registered_models(filter_string=f"name = '{REGISTERED_MODEL}'")
    aliases = {alias: str(version) for alias, version in models[0].aliases.items()} if models else {}
    rows = []
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        row: dict[str, object] = {"alias": alias}
        if alias in aliases:
            version: ModelVersion = client.get_model_version(REGISTERED_MODEL, aliases[alias])
            row |= {
                "version": str(version.version),
                "family": version.tags.get(FAMILY_TAG),
                "registered": pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC").floor("s"),
                "run_id": version.run_id,
                "training_run": client.get_run(version.run_id).data.tags.get(PARENT_RUN_TAG),
            }
        rows.append(row)
    return pd.DataFrame(rows, columns=REGISTRY_COLUMNS)


def normalized_entropy_figure(families: pd.DataFrame) -> Figure:
    """NE per family per training run, oldest run on the left; 1.0 is predicting the holdout's own CTR."""
    frame = families.assign(
        training=families["started"].dt.strftime("%Y-%m-%d %H:%M") + "\n" + families["training_run"].str[:8]
    )
    oldest_first = frame["training"].unique()[::-1]
    table = frame.pivot(index="training", columns="family", values="normalized_entropy").reindex(oldest_first)
    # The baseline last and grey, so the model families read first.
    table = table[[*sorted(set(table.columns) - {CONSTANT_CTR}), CONSTANT_CTR]]
    colors = [f"C{i}" for i in range(len(table.columns) - 1)] + ["lightgrey"]
    figure = Figure(figsize=(max(7.0, 2.0 * len(table) + 3.0), 5.0))
    axes = figure.subplots()
    table.plot.bar(ax=axes, rot=0, width=0.8, color=colors)
    axes.axhline(1.0, linestyle="--", color="grey", label="holdout CTR as a constant (NE 1.0)")
    axes.set(xlabel="training run (UTC start, run id)", ylabel="holdout normalized entropy (lower is better)")
    axes.set_title("CTR model families per training run")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize="small", frameon=False)
    figure.tight_layout()
    return figure


def compare_runs(tracking_uri: str, last: int = DEFAULT_LAST) -> Comparison:
    """The comparison of the latest ``last`` training runs; ``NoTrainingRuns`` when there is none."""
    ensure_reachable(tracking_uri)
    client = tracking_client(tracking_uri)
    runs = training_runs(client, last)
    if not runs:
        raise NoTrainingRuns(
            f"no finished CTR training run in MLflow experiment {MLFLOW_EXPERIMENT!r} at {tracking_uri}; "
            f"run `adstream train` or trigger DAG {DagId.CTR_TRAINING} first"
        )
    families = family_runs(client, runs)
    versions = registered_versions(client)
    return Comparison(
        families=side_by_side(runs, families, versions),
        decisions=decisions(runs, families, versions),
        registry=registry_state(client),
    )


def report(comparison: Comparison) -> str:
    """The three tables as plain text."""
    low, high = CALIBRATION_BOUNDS
    return "\n\n".join(
        [
            "CTR model families per training run, newest first (holdout metrics; NE < 1 beats the holdout's "
            f"own CTR, {CONSTANT_CTR} predicts the training CTR)",
            comparison.families[list(FAMILY_COLUMNS)].to_string(index=False),
            "Training data per training run (time ranges in UTC)",
            training_data(comparison.families).to_string(index=False),
            "Promotion decisions (champion when calibration is within "
            f"[{low}, {high}] and NE is strictly lower than the champion's on the same holdout)",
            comparison.decisions.to_string(index=False),
            f"{REGISTERED_MODEL} aliases now",
            comparison.registry.to_string(index=False),
        ]
    )


def executed_notebook_path(settings: Settings) -> Path:
    """Where the executed copy of the comparison notebook is written."""
    return settings.reports_dir / "notebooks" / NOTEBOOK.name


def execute_comparison_notebook(settings: Settings, last: int = DEFAULT_LAST) -> Path:
    """Runs notebooks/compare_ctr_runs.ipynb on the latest ``last`` runs; returns the executed copy.

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails (the copy is written all the same).
    """
    # The kernel is a separate process: it gets the resolved tracking URI through its environment.
    return execute_notebook(
        NOTEBOOK,
        executed_notebook_path(settings),
        parameters={"LAST": last},
        env=child_process_env(MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri),
    )
