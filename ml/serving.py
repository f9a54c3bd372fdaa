"""What the auction service loads: the champion ``ctr-model``, compiled for fast scoring."""

from __future__ import annotations

from adstream.contracts import CHAMPION_ALIAS, REGISTERED_MODEL
from ml.registry import load_model_version, version_by_alias
from ml.scorer import CompiledScorer
from ml.tracking import ensure_reachable


class NoChampionError(LookupError):
    """``ctr-model`` has no version with alias ``champion`` yet (run ``adstream train``)."""


def load_champion_scorer(tracking_uri: str) -> tuple[CompiledScorer, str]:
    """The scorer compiled from ``models:/ctr-model@champion``, and that version's number.

    The alias is resolved once and the artifact of exactly that version is loaded,
    so a promotion landing in between cannot pair one version's number with
    another's model.
    """
    ensure_reachable(tracking_uri)
    version = version_by_alias(tracking_uri, CHAMPION_ALIAS)
    if version is None:
        raise NoChampionError(f"{REGISTERED_MODEL}@{CHAMPION_ALIAS} does not exist at {tracking_uri}")
    return CompiledScorer.from_pipeline(load_model_version(tracking_uri, version)), version
