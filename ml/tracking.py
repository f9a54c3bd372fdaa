"""The MLflow tracking server as training and serving see it: reachable or a clear error, then a client."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from adstream.contracts import MLFLOW_EXPERIMENT

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# MLflow takes seconds to import, so it is imported where a client is made: the command line's
# composition root imports this module, and its health checks must answer within seconds.

# MLflow's own client retries an unreachable server for minutes; one short probe answers first.
REACHABILITY_TIMEOUT_S = 3.0


class TrackingServerUnreachable(RuntimeError):
    """MLFLOW_TRACKING_URI points at a server that does not answer."""


def ensure_reachable(tracking_uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raises ``TrackingServerUnreachable`` unless an HTTP(S) tracking server answers its health check.

    Local stores (``sqlite:///…``, file paths) need no server and pass.
    """
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return
    health = f"{tracking_uri.rstrip('/')}/health"
    try:
        response = httpx.get(health, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TrackingServerUnreachable(
            f"MLflow tracking server at {tracking_uri} is unreachable ({type(exc).__name__}: {exc}); "
            "start it (make up) or set MLFLOW_TRACKING_URI to a reachable server"
        ) from exc
    if response.status_code >= 500:
        raise TrackingServerUnreachable(
            f"MLflow tracking server at {tracking_uri} answered {response.status_code} to {health}; "
            "check the server or set MLFLOW_TRACKING_URI to a healthy one"
        )


def tracking_client(tracking_uri: str) -> MlflowClient:
    """A client for runs and the model registry, both on ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def point_fluent_api_at(tracking_uri: str) -> None:
    """Sets the process-wide tracking URI that ``mlflow.start_run`` and ``mlflow.sklearn.log_model`` use.

    ``log_model`` takes no client, so training needs MLflow's global; everything else
    (registry, downloads) passes its URI explicitly. MLflow also exports the value as
    the MLFLOW_TRACKING_URI environment variable for child processes: the same value
    the settings resolved, so a training process stays consistent.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def experiment_id(tracking_uri: str, name: str = MLFLOW_EXPERIMENT) -> str:
    """The id of experiment ``name`` (default ``ctr``), created on first use."""
    client = tracking_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def search_ctr_runs(client: MlflowClient, filter_string: str, max_results: int) -> list[Run]:
    """Runs of the ``ctr`` experiment matching ``filter_string``, newest first; none before the first training."""
    return search_runs(client, MLFLOW_EXPERIMENT, filter_string, max_results)


def search_runs(client: MlflowClient, experiment_name: str, filter_string: str, max_results: int) -> list[Run]:
    """Runs of experiment ``experiment_name`` matching ``filter_string``, newest first; none before it exists."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return list(
        client.search_runs(
            [experiment.experiment_id],
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
    )
