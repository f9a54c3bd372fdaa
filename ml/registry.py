"""The ``ctr-model`` registry: new versions become the challenger; promotion to champion is guarded.

Rule. Models are judged on **logged traffic** (the holdout's examples from the auction log), with the
pCTRs serving would price: each model's scores through its calibration (``ml.calibration``; the
champion's newest online map, else the one it was registered with). The challenger becomes champion
when its calibration there (predicted / observed clicks) lies within LOGGED_CALIBRATION_BOUNDS and
either there is no champion yet or its normalized entropy on the **same** examples is strictly lower
than the champion's. Both are re-scored from their registered artifacts, so the numbers share the
denominator and the data.

Before the holdout holds LOGGED_MIN_CLICKS logged clicks (a new platform), the whole holdout
decides instead, on the models' uncalibrated scores and CALIBRATION_BOUNDS: the bootstrap data is
about half clicks, so only the uncalibrated score can be calibrated there, and the registered
prior correction is what makes it fit live traffic. The bootstrap part of the holdout is reported
either way (``bootstrap_holdout`` in the decision).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from sklearn.pipeline import Pipeline

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, REGISTERED_MODEL
from ml.calibration import CALIBRATION_ARTIFACT, Calibration, identity
from ml.features import FEATURES, LABEL, LOGGED_SOURCE, SOURCE
from ml.metrics import evaluate
from ml.native import NativeArtifact, NotCompilable, build_native
from ml.pipelines import SKOPS_TRUSTED_TYPES
from ml.scorer import CompiledScorer
from ml.tracking import tracking_client

CALIBRATION_BOUNDS = (0.8, 1.2)  # on the bootstrap holdout, uncalibrated scores
LOGGED_CALIBRATION_BOUNDS = (0.9, 1.1)  # on logged traffic, calibrated pCTRs
LOGGED_MIN_CLICKS = 30  # logged clicks in the holdout before logged traffic decides
DECISION_ARTIFACT = "promotion_decision.json"
# The native library of a version (ml.native): logged to the version's run, named by these version tags.
NATIVE_ARTIFACT_DIR = "native"
NATIVE_ARTIFACT_TAG = "native.artifact_path"  # relative to the version's run
NATIVE_COMPILER_TAG = "native.compiler"  # treelite, tl2cgen and C compiler versions
NATIVE_SKIPPED_TAG = "native.skipped"  # why a version has no native library

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide_promotion(
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    calibration_bounds: tuple[float, float] = CALIBRATION_BOUNDS,
    judged_on: str | None = None,
) -> Decision:
    """Whether the challenger replaces the champion, both scored on the same examples (see module doc);
    ``judged_on``, when given, names those examples in the last reason."""
    decision = _decide(challenger_metrics, champion_metrics, calibration_bounds)
    if judged_on is not None:
        decision.reasons.append(f"judged on {judged_on}")
    return decision


def _decide(
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    calibration_bounds: tuple[float, float],
) -> Decision:
    low, high = calibration_bounds
    calibration = challenger_metrics["calibration"]
    challenger_ne = challenger_metrics["normalized_entropy"]
    reasons = []
    calibrated = low <= calibration <= high  # False for NaN
    if not calibrated:
        reasons.append(f"challenger calibration {calibration:.4f} is outside [{low}, {high}]")
    if math.isnan(challenger_ne):
        reasons.append("challenger normalized entropy is undefined on this holdout")
        return Decision(False, reasons)
    if champion_metrics is None:
        reasons.append("there is no champion yet")
        return Decision(calibrated, reasons)
    champion_ne = champion_metrics["normalized_entropy"]
    better = challenger_ne < champion_ne
    comparison = "<" if better else ">="
    reasons.append(
        f"challenger normalized entropy {challenger_ne:.6f} {comparison} "
        f"champion's {champion_ne:.6f} on the same holdout"
    )
    return Decision(calibrated and better, reasons)


def _registered_aliases(client: MlflowClient, registered_model: str = REGISTERED_MODEL) -> dict[str, str] | None:
    """alias -> version of ``registered_model``, or None when the model is not registered yet."""
    try:
        return {alias: str(version) for alias, version in client.get_registered_model(registered_model).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def version_by_alias(tracking_uri: str, alias: str, registered_model: str = REGISTERED_MODEL) -> str | None:
    """The version number ``registered_model@alias`` (default ``ctr-model``) points at, if any."""
    aliases = _registered_aliases(tracking_client(tracking_uri), registered_model)
    return None if aliases is None else aliases.get(alias)


def add_version(
    tracking_uri: str,
    registered_model: str,
    source: str,
    run_id: str,
    tags: Mapping[str, str],
    model_id: str | None = None,
) -> str:
    """A new version of ``registered_model`` (registered first if it is not yet) from ``source``, no alias."""
    client = tracking_client(tracking_uri)
    if _registered_aliases(client, registered_model) is None:
        client.create_registered_model(registered_model)
    version = client.create_model_version(
        registered_model, source=source, run_id=run_id, tags=dict(tags), model_id=model_id
    )
    return str(version.version)


def register_challenger(tracking_uri: str, model_uri: str, model_id: str | None, run_id: str, family: str) -> str:
    """Registers a logged model as a new version of ``ctr-model`` with alias ``challenger``; returns the version.

    The version's trees are also compiled to native code and logged beside it (``attach_native``);
    when that fails the version is registered all the same and served by the numpy scorer.
    """
    version = add_version(tracking_uri, REGISTERED_MODEL, model_uri, run_id, {"model_family": family}, model_id)
    attach_native(tracking_uri, version, run_id)
    tracking_client(tracking_uri).set_registered_model_alias(REGISTERED_MODEL, CHALLENGER_ALIAS, version)
    return version


def attach_native(tracking_uri: str, version: str, run_id: str) -> str | None:
    """Compiles ``ctr-model`` version ``version`` (its registered skops file) to a native library, logs it
    to run ``run_id`` under ``native/<platform>-<sha256 prefix>/`` and tags the version with that path
    (``NATIVE_ARTIFACT_TAG``) and the compiler versions (``NATIVE_COMPILER_TAG``); returns the path.

    Never raises: a family with nothing to compile (logged as info), no C compiler or any other
    failure (a warning) tags the version with ``NATIVE_SKIPPED_TAG`` (why) and returns None;
    serving then uses the numpy scorer.
    """
    client = tracking_client(tracking_uri)
    try:
        artifact = model_artifact(tracking_uri, version)
        sha256 = hashlib.sha256(artifact).hexdigest()
        compiled = CompiledScorer.from_pipeline(skops.io.loads(artifact, trusted=list(SKOPS_TRUSTED_TYPES)))
        native = build_native(compiled, sha256, model_version=version)
        path = f"{NATIVE_ARTIFACT_DIR}/{native.manifest['platform']}-{sha256[:16]}"
        with tempfile.TemporaryDirectory(prefix="ctr-native-") as scratch:
            client.log_artifacts(run_id, str(native.write(Path(scratch))), path)
        client.set_model_version_tag(REGISTERED_MODEL, version, NATIVE_ARTIFACT_TAG, path)
        client.set_model_version_tag(REGISTERED_MODEL, version, NATIVE_COMPILER_TAG, native.compiler)
    except Exception as exc:  # registration must not depend on a C compiler
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NotCompilable):
            logger.info("%s version %s is not compiled to native code: %s", REGISTERED_MODEL, version, exc)
        else:
            logger.warning("%s version %s registered without native code (%s)", REGISTERED_MODEL, version, reason)
        with contextlib.suppress(Exception):  # the tag only explains; its absence must not fail either
            client.set_model_version_tag(REGISTERED_MODEL, version, NATIVE_SKIPPED_TAG, reason[:5000])
        return None
    logger.info("%s version %s compiled to native code (%s) at %s", REGISTERED_MODEL, version, native.compiler, path)
    return path


def native_artifact(tracking_uri: str, version: str) -> NativeArtifact | None:
    """The native library logged for ``ctr-model`` version ``version`` (``attach_native``), None when it has none."""
    client = tracking_client(tracking_uri)
    model_version = client.get_model_version(REGISTERED_MODEL, version)
    path = model_version.tags.get(NATIVE_ARTIFACT_TAG)
    if not path or not model_version.run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="ctr-native-") as scratch:
        local = download_artifacts(
            run_id=model_version.run_id, artifact_path=path, dst_path=scratch, tracking_uri=tracking_uri
        )
        return NativeArtifact.read(Path(local))


def registered_calibration(tracking_uri: str, version: str) -> Calibration:
    """The calibration logged with ``ctr-model`` version ``version`` (``calibration.json`` in its run, the
    prior correction of its training); the identity for a version trained before calibration existed."""
    client = tracking_client(tracking_uri)
    run_id = client.get_model_version(REGISTERED_MODEL, version).run_id
    if not run_id:
        return identity(version)
    with tempfile.TemporaryDirectory(prefix="ctr-calibration-") as scratch:
        try:
            local = download_artifacts(
                run_id=run_id, artifact_path=CALIBRATION_ARTIFACT, dst_path=scratch, tracking_uri=tracking_uri
            )
        except (MlflowException, OSError) as exc:
            logger.warning("%s version %s has no %s (%s): served uncalibrated", REGISTERED_MODEL, version,
                           CALIBRATION_ARTIFACT, exc)  # fmt: skip
            return identity(version)
        return replace(Calibration.from_json(Path(local).read_text()), model_version=version)


class NotSkopsModel(ValueError):
    """A registered version that is not serialized with skops (only skops models are loaded)."""


def model_artifact(tracking_uri: str, version: str) -> bytes:
    """The serialized pipeline of ``ctr-model`` version ``version``, exactly as registered."""
    # Resolved through an explicit client: MLflow resolves ``models:/`` URIs with the
    # process-wide registry URI, whatever ``registry_uri`` a download is given.
    location = tracking_client(tracking_uri).get_model_version_download_uri(REGISTERED_MODEL, version)
    with tempfile.TemporaryDirectory(prefix="ctr-model-") as scratch:
        local = Path(
            download_artifacts(
                artifact_uri=location,
                dst_path=scratch,
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        )
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
        if flavor.get("serialization_format") != "skops":
            raise NotSkopsModel(
                f"{REGISTERED_MODEL} version {version} is serialized as {flavor.get('serialization_format')!r}; "
                "only skops models are loaded"
            )
        return (local / flavor["pickled_model"]).read_bytes()


def load_model_version(tracking_uri: str, version: str) -> Pipeline:
    """The fitted pipeline of ``ctr-model`` version ``version``.

    Read with skops directly rather than ``mlflow.sklearn.load_model``: the URIs are
    explicit (``load_model`` only knows the process-wide ones), and the allow-list of
    types is the one kept in code (``ml.pipelines.SKOPS_TRUSTED_TYPES``), not the one
    stored in the artifact, so a tampered model cannot widen it.
    """
    return skops.io.loads(model_artifact(tracking_uri, version), trusted=list(SKOPS_TRUSTED_TYPES))


def holdout_metrics(
    pipeline: Pipeline, holdout: pd.DataFrame, calibration: Calibration | None = None
) -> dict[str, float]:
    """The metrics of ``pipeline`` on ``holdout``, through ``calibration`` when given."""
    scores = pipeline.predict_proba(holdout[list(FEATURES)])[:, 1]
    return evaluate(holdout[LABEL].to_numpy(), scores if calibration is None else calibration.apply(scores))


def logged_mask(holdout: pd.DataFrame) -> np.ndarray:
    """Which of the holdout's examples are logged traffic (none when the frame does not say its sources)."""
    if SOURCE not in holdout:
        return np.zeros(len(holdout), dtype=bool)
    return (holdout[SOURCE] == LOGGED_SOURCE).to_numpy()


@dataclass(frozen=True)
class Promotion:
    decision: Decision
    challenger_version: str
    champion_before: str | None
    challenger_metrics: dict[str, float]  # on what the decision was judged on
    champion_metrics: dict[str, float] | None  # the previous champion, on the same examples
    judged_on: str = "holdout"  # "logged": logged traffic, calibrated; "holdout": the whole holdout, uncalibrated
    bootstrap_metrics: dict[str, dict[str, float] | None] = field(default_factory=dict)  # the second report
    registered_model: str = REGISTERED_MODEL  # the bid filter's promotions are recorded the same way
    # What the rule held the challenger to; None: the CTR calibration bounds of ``judged_on``.
    bounds: Mapping[str, Any] | None = None

    @property
    def champion_after(self) -> str | None:
        return self.challenger_version if self.decision.promote else self.champion_before

    def report(self) -> dict[str, Any]:
        """What ``promotion_decision.json`` holds (NaN metrics as null, so it is strict JSON)."""

        def finite(metrics: Mapping[str, float] | None) -> dict[str, float | None] | None:
            if metrics is None:
                return None
            return {name: (None if math.isnan(value) else value) for name, value in metrics.items()}

        calibration = LOGGED_CALIBRATION_BOUNDS if self.judged_on == "logged" else CALIBRATION_BOUNDS
        return {
            "registered_model": self.registered_model,
            "promoted": self.decision.promote,
            "reasons": self.decision.reasons,
            "challenger_version": self.challenger_version,
            "champion_version_before": self.champion_before,
            "champion_version_after": self.champion_after,
            "judged_on": self.judged_on,
            **(self.bounds if self.bounds is not None else {"calibration_bounds": list(calibration)}),
            "challenger_metrics": finite(self.challenger_metrics),
            "champion_metrics": finite(self.champion_metrics),
            "bootstrap_holdout": {model: finite(metrics) for model, metrics in self.bootstrap_metrics.items()},
        }

    def outcome(self) -> dict[str, Any]:
        """The decision as plain values (what the promotion tasks return as XCom)."""
        return {
            "promoted": self.decision.promote,
            "reasons": self.decision.reasons,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_after,
        }

    def summary(self) -> str:
        verdict = "promoted to champion" if self.decision.promote else "not promoted"
        return (
            f"{self.registered_model} version {self.challenger_version}: {verdict} "
            f"({'; '.join(self.decision.reasons)}); champion is now version {self.champion_after}"
        )


def apply_promotion(
    tracking_uri: str,
    challenger_version: str,
    holdout: pd.DataFrame,
    run_id: str,
    champion_calibration: Callable[[str], Calibration] | None = None,
) -> Promotion:
    """Scores the challenger and the current champion as the module doc says, decides, moves the alias,
    logs why.

    Both models are loaded from the registry, so the decision is about the artifacts
    serving will load. ``champion_calibration(version)`` is the champion's calibration in
    force (default: the one registered with it). The decision goes to run ``run_id`` as
    ``promotion.*`` tags and a ``promotion_decision.json`` artifact.
    """
    champion = version_by_alias(tracking_uri, CHAMPION_ALIAS)
    challenger_model = load_model_version(tracking_uri, challenger_version)
    champion_model = None if champion is None else load_model_version(tracking_uri, champion)
    is_logged = logged_mask(holdout)
    logged, bootstrap = holdout[is_logged], holdout[~is_logged]
    bootstrap_metrics: dict[str, dict[str, float] | None] = {}
    if not bootstrap.empty:
        bootstrap_metrics = {
            "challenger": holdout_metrics(challenger_model, bootstrap),
            "champion": None if champion_model is None else holdout_metrics(champion_model, bootstrap),
        }
    if int(logged[LABEL].sum()) >= LOGGED_MIN_CLICKS:
        judged_on = "logged"
        challenger_metrics = holdout_metrics(
            challenger_model, logged, registered_calibration(tracking_uri, challenger_version)
        )
        champion_metrics = None
        if champion is not None and champion_model is not None:
            calibration = (champion_calibration or partial(registered_calibration, tracking_uri))(champion)
            champion_metrics = holdout_metrics(champion_model, logged, calibration)
        decision = decide_promotion(
            challenger_metrics, champion_metrics, LOGGED_CALIBRATION_BOUNDS,
            f"logged traffic ({len(logged)} examples, {int(logged[LABEL].sum())} clicks), calibrated pCTRs",
        )  # fmt: skip
    else:
        judged_on = "holdout"
        challenger_metrics = holdout_metrics(challenger_model, holdout)
        champion_metrics = None if champion_model is None else holdout_metrics(champion_model, holdout)
        decision = decide_promotion(
            challenger_metrics, champion_metrics, CALIBRATION_BOUNDS,
            f"the whole holdout, uncalibrated scores (its logged traffic holds {int(logged[LABEL].sum())} clicks, "
            f"fewer than {LOGGED_MIN_CLICKS})",
        )  # fmt: skip
    promotion = Promotion(
        decision=decision,
        challenger_version=challenger_version,
        champion_before=champion,
        challenger_metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        judged_on=judged_on,
        bootstrap_metrics=bootstrap_metrics,
    )
    conclude_promotion(tracking_uri, run_id, promotion)
    return promotion


def conclude_promotion(tracking_uri: str, run_id: str, promotion: Promotion) -> None:
    """Carries a guarded decision out: ``champion`` of ``promotion.registered_model`` moves to the challenger
    when it is promoted, and run ``run_id`` records why (``promotion.*`` tags and ``promotion_decision.json``)."""
    client = tracking_client(tracking_uri)
    if promotion.decision.promote:
        client.set_registered_model_alias(promotion.registered_model, CHAMPION_ALIAS, promotion.challenger_version)
    tags = {
        "promotion.promoted": str(promotion.decision.promote).lower(),
        "promotion.reasons": "; ".join(promotion.decision.reasons),
        "promotion.challenger_version": promotion.challenger_version,
        "promotion.champion_version_before": promotion.champion_before or "none",
        "promotion.champion_version_after": promotion.champion_after or "none",
        "promotion.judged_on": promotion.judged_on,
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_dict(run_id, promotion.report(), DECISION_ARTIFACT)
