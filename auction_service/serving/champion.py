"""The champion CTR model inside the auction service: loaded at start, watched, hot-swapped, kept locally.

- At start, ``ServingModel.load_at_start`` resolves ``ctr-model@champion`` to a version
  number, downloads exactly that version's skops artifact, loads it with the allow-list
  kept in code (``ml.pipelines.SKOPS_TRUSTED_TYPES``), compiles a ``CompiledScorer`` and
  checks that it scores a probe batch to finite probabilities.
- Native scoring: when the version has a native library logged at registration
  (``ml.registry.attach_native``) whose manifest names this platform and this skops
  file's sha256, and it scores the probe batch as the ``CompiledScorer`` does, a
  ``ml.native.NativeScorer`` serves instead (``LoadedModel.scorer_kind`` "native");
  otherwise the ``CompiledScorer`` serves ("numpy"), with a warning saying why.
- Each good load is also written to ``settings.model_cache_dir`` (the skops file, the
  native library in use if any, and ``champion.json``: version, family, tracking URI,
  time, sha256 of the file, the native library's directory). When
  MLflow is unreachable at start, or has no champion, or its champion cannot be
  loaded, that local copy is served instead; a copy whose sha256 does not match is
  refused. Without a usable copy the model is not ready and ``reason`` says why and
  what to do (for /readyz).
- ``ModelWatcher`` checks the alias every ``settings.model_poll_s``; a new champion is
  loaded, compiled and probed off the request path, then swapped in. A version that
  fails any step is refused and the current model keeps serving.

Swapping: ``ServingModel`` holds one frozen snapshot (model, reason) in one attribute
and a swap is one assignment of a new snapshot, atomic under the GIL. A request takes
the snapshot once (``current`` or ``score``) and uses that scorer and its version for
the whole auction, so a swap during the request neither fails it nor pairs one
version's scores with another's number; the old scorer is freed when its last
request ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import skops.io

from adstream.contracts import CHAMPION_ALIAS, REGISTERED_MODEL, DagId
from adstream.settings import Settings
from ml.calibrate import latest_calibration
from ml.calibration import Calibration, identity
from ml.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from ml.native import MANIFEST_NAME as NATIVE_MANIFEST
from ml.native import NativeArtifact, NativeScorer, load_native
from ml.pipelines import SKOPS_TRUSTED_TYPES
from ml.registry import NotSkopsModel, model_artifact, native_artifact, registered_calibration, version_by_alias
from ml.scorer import CompiledScorer
from ml.serving import NoChampionError
from ml.tracking import TrackingServerUnreachable, ensure_reachable

logger = logging.getLogger(__name__)

MANIFEST = "champion.json"
ADVICE = f"train a model (DAG {DagId.CTR_TRAINING}) or start MLflow"
# A version that failed to load is tried again only after this long, not on every poll.
REFUSED_VERSION_RETRY_S = 300.0
# Typical and missing values for every feature: a model that cannot turn these into
# probabilities must not serve.
PROBE_BATCH: dict[str, list[Any]] = {
    **{name: [1.0, None] for name in NUMERIC_FEATURES},
    **{name: ["unknown", None] for name in CATEGORICAL_FEATURES},
}
# How far a native scorer may differ from the CompiledScorer on the probe batch before it is not used.
NATIVE_TOLERANCE = 1e-6


class ModelNotReady(RuntimeError):
    """No champion is loaded; the message is the reason (as /readyz reports it)."""


class ModelRejected(ValueError):
    """An artifact that must not serve: not skops, or its probe scores are not finite probabilities."""


class LocalCopyRefused(ValueError):
    """The local copy exists but cannot be trusted (corrupted, incomplete, unloadable)."""


@dataclass(frozen=True)
class LoadedModel:
    """One champion version, compiled and checked: what a request scores with."""

    scorer: CompiledScorer | NativeScorer
    version: str
    family: str
    loaded_at: datetime
    origin: str  # "MLflow at <uri>" or "local copy saved <time> from MLflow at <uri>"
    native: NativeArtifact | None = None  # the library the NativeScorer was loaded from, for the local copy
    # The map from the scorer's output to the pCTR the auction prices (ml.calibration); the identity
    # until one is known. Swapped alone when a newer online map of this version lands.
    calibration: Calibration | None = None

    def pctrs(
        self,
        batch: Mapping[str, Sequence[Any] | np.ndarray],
        pricing: np.ndarray | None = None,
        category: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(served pCTRs, the model's raw scores) of a candidate batch; ``pricing`` and ``category``, the
        candidates' ``ml.calibration.pricing_codes`` and ``category_codes``, for the calibration's offsets."""
        scores = np.asarray(self.scorer.score(batch))
        if self.calibration is None:
            return scores, scores
        return self.calibration.apply(scores, pricing, category), scores

    @property
    def scorer_kind(self) -> str:
        """Which scorer serves: "native" (the compiled library) or "numpy" (the CompiledScorer)."""
        return self.scorer.kind


@dataclass(frozen=True)
class _Snapshot:
    model: LoadedModel | None
    reason: str  # why there is no model; "" when there is one


class ServingModel:
    """The model the auction scores with; see the module doc for the swap guarantee."""

    def __init__(self, model: LoadedModel | None = None, reason: str = "") -> None:
        self._snapshot = _Snapshot(model, "" if model is not None else reason or "no model loaded")

    @classmethod
    def load_at_start(cls, settings: Settings) -> ServingModel:
        """The champion from MLflow, else the last good local copy, else a not-ready model with its reason.

        Blocks for the download (seconds); an async caller runs it in a thread.
        """
        uri, cache_dir = settings.mlflow_tracking_uri, settings.model_cache_dir
        try:
            model, artifact = load_version(uri, champion_version(uri))
        except Exception as exc:  # whatever keeps MLflow's champion out, the local copy is the fallback
            problem = registry_problem(uri, exc)
        else:
            keep_local_copy(cache_dir, artifact, model, uri)
            logger.info(
                "serving %s version %s (%s, %s scorer) from %s",
                REGISTERED_MODEL,
                model.version,
                model.family,
                model.scorer_kind,
                uri,
            )
            return cls(model)
        try:
            model = load_local_copy(cache_dir)
        except LocalCopyRefused as exc:
            return cls(None, f"{problem}, and the local copy in {cache_dir} was refused ({exc}); {ADVICE}")
        if model is None:
            return cls(None, f"{problem}, and no local copy exists in {cache_dir}; {ADVICE}")
        logger.warning("%s; serving the %s of %s version %s", problem, model.origin, REGISTERED_MODEL, model.version)
        return cls(model)

    @property
    def ready(self) -> bool:
        return self._snapshot.model is not None

    @property
    def reason(self) -> str:
        """Why the model is not ready ("" when it is)."""
        return self._snapshot.reason

    @property
    def current(self) -> LoadedModel:
        """The model to use for one whole request; raises ``ModelNotReady`` with the reason."""
        model = self._snapshot.model
        if model is None:
            raise ModelNotReady(self._snapshot.reason)
        return model

    @property
    def version(self) -> str | None:
        model = self._snapshot.model
        return None if model is None else model.version

    @property
    def calibration(self) -> Calibration | None:
        """The calibration served with the loaded model; None before one is loaded or when it has none."""
        model = self._snapshot.model
        return None if model is None else model.calibration

    @property
    def scorer_kind(self) -> str | None:
        """Which scorer serves the loaded model ("native" or "numpy"); None before one is loaded."""
        model = self._snapshot.model
        return None if model is None else model.scorer_kind

    def score(
        self,
        batch: Mapping[str, Sequence[Any] | np.ndarray],
        pricing: np.ndarray | None = None,
        category: np.ndarray | None = None,
    ) -> tuple[np.ndarray, str]:
        """Served (calibrated) pCTRs for a candidate batch and the version that produced them, from one snapshot."""
        model = self.current
        return model.pctrs(batch, pricing, category)[0], model.version

    def swap(self, model: LoadedModel) -> None:
        self._snapshot = _Snapshot(model, "")

    def recalibrate(self, calibration: Calibration) -> bool:
        """Serves ``calibration`` from now on if it maps the version being served; True when it did.

        Called from the watcher's thread only, which also does every model swap, so the version
        checked here is still the one served when the new snapshot is assigned.
        """
        model = self._snapshot.model
        if model is None or model.version != calibration.model_version or model.calibration == calibration:
            return False
        self._snapshot = _Snapshot(replace(model, calibration=calibration), "")
        return True

    def not_ready_because(self, reason: str) -> None:
        """Updates the reason while no model is loaded; a loaded model is never dropped."""
        if self._snapshot.model is None:
            self._snapshot = _Snapshot(None, reason)


def champion_version(tracking_uri: str) -> str:
    """The version ``ctr-model@champion`` points at; ``TrackingServerUnreachable`` / ``NoChampionError`` else."""
    ensure_reachable(tracking_uri)  # fails in seconds where MLflow's client would retry for minutes
    version = version_by_alias(tracking_uri, CHAMPION_ALIAS)
    if version is None:
        raise NoChampionError(f"{REGISTERED_MODEL}@{CHAMPION_ALIAS} does not exist at {tracking_uri}")
    return version


def registry_problem(tracking_uri: str, exc: Exception) -> str:
    """What went wrong getting the champion from MLflow, in the words /readyz shows."""
    where = f"MLflow at {tracking_uri} (MLFLOW_TRACKING_URI)"
    if isinstance(exc, TrackingServerUnreachable):
        return f"MLflow at {tracking_uri} is unreachable (MLFLOW_TRACKING_URI)"
    if isinstance(exc, NoChampionError):
        return f"{where} has no {REGISTERED_MODEL}@{CHAMPION_ALIAS}"
    return f"{REGISTERED_MODEL}@{CHAMPION_ALIAS} could not be loaded from {where}: {type(exc).__name__}: {exc}"


def download_artifact(tracking_uri: str, version: str) -> bytes:
    """The skops file of ``ctr-model`` version ``version``, as registered."""
    try:
        return model_artifact(tracking_uri, version)
    except NotSkopsModel as exc:
        raise ModelRejected(str(exc)) from exc


def download_native(tracking_uri: str, version: str) -> NativeArtifact | None:
    """The native library registered with ``ctr-model`` version ``version``; None when it has none or
    it cannot be downloaded (the numpy scorer then serves)."""
    try:
        return native_artifact(tracking_uri, version)
    except Exception as exc:  # the native library only speeds scoring up: never a reason to refuse a version
        logger.warning(
            "native library of %s version %s not downloaded (%s: %s)",
            REGISTERED_MODEL,
            version,
            type(exc).__name__,
            exc,
        )
        return None


def compile_artifact(artifact: bytes, native: NativeArtifact | None = None) -> CompiledScorer | NativeScorer:
    """Loads a skops artifact with the allow-list in code, compiles it and probes it; the ``NativeScorer``
    of ``native`` when that matches this platform and artifact and agrees on the probe batch, else the
    ``CompiledScorer``.

    Raises on an untrusted type, a pipeline the compiler does not support, or probe
    scores that are not finite probabilities.
    """
    compiled = CompiledScorer.from_pipeline(skops.io.loads(artifact, trusted=list(SKOPS_TRUSTED_TYPES)))
    pctr = compiled.score(PROBE_BATCH)
    if pctr.shape != (2,) or not np.all(np.isfinite(pctr) & (pctr >= 0) & (pctr <= 1)):
        raise ModelRejected(f"it scores the probe batch to {pctr.tolist()}, not to finite probabilities")
    if native is None:
        return compiled
    scorer = load_native(native, compiled, hashlib.sha256(artifact).hexdigest())
    if scorer is None:
        return compiled
    native_pctr = scorer.score(PROBE_BATCH)
    if native_pctr.shape != pctr.shape or not np.allclose(native_pctr, pctr, rtol=0, atol=NATIVE_TOLERANCE):
        logger.warning(
            "native scorer not used: it scores the probe batch to %s, the numpy scorer to %s",
            native_pctr.tolist(),
            pctr.tolist(),
        )
        return compiled
    return scorer


def _loaded(
    scorer: CompiledScorer | NativeScorer,
    version: str,
    origin: str,
    native: NativeArtifact | None,
    calibration: Calibration | None,
) -> LoadedModel:
    in_use = native if isinstance(scorer, NativeScorer) else None
    return LoadedModel(scorer, version, scorer.family, datetime.now(UTC), origin, in_use, calibration)


def download_calibration(tracking_uri: str, version: str) -> Calibration:
    """The calibration registered with ``ctr-model`` version ``version``; the identity (with a warning)
    when it cannot be read: an uncalibrated model still ranks, and the online map corrects it."""
    try:
        return registered_calibration(tracking_uri, version)
    except Exception as exc:  # calibration adjusts pCTRs: never a reason to refuse a version
        logger.warning("calibration of %s version %s not read (%s: %s): serving it uncalibrated until an "
                       "online map lands", REGISTERED_MODEL, version, type(exc).__name__, exc)  # fmt: skip
        return identity(version)


def load_version(tracking_uri: str, version: str) -> tuple[LoadedModel, bytes]:
    """``ctr-model`` version ``version`` compiled and probed, with its artifact (for the local copy)."""
    artifact = download_artifact(tracking_uri, version)
    native = download_native(tracking_uri, version)
    scorer = compile_artifact(artifact, native)
    calibration = download_calibration(tracking_uri, version)
    return _loaded(scorer, version, f"MLflow at {tracking_uri}", native, calibration), artifact


def _write_atomically(path: Path, data: bytes) -> None:
    # Written beside the target and renamed over it: a reader sees the old file or the new one.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def save_local_copy(cache_dir: Path, artifact: bytes, model: LoadedModel, tracking_uri: str) -> Path:
    """Writes the artifact, then the manifest naming it (the manifest's rename is the commit); returns
    the manifest. Copies of other versions are removed afterwards."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    artifact_name = f"{REGISTERED_MODEL}-v{model.version}.skops"
    _write_atomically(cache_dir / artifact_name, artifact)
    native_name = None
    if model.native is not None:
        # Library before its manifest; load_native checks both sha256s, so a torn copy only falls back.
        native_name = f"{REGISTERED_MODEL}-v{model.version}.native"
        (cache_dir / native_name).mkdir(exist_ok=True)
        _write_atomically(cache_dir / native_name / model.native.manifest["library"], model.native.library)
        _write_atomically(cache_dir / native_name / NATIVE_MANIFEST, json.dumps(model.native.manifest).encode())
    manifest = {
        "registered_model": REGISTERED_MODEL,
        "version": model.version,
        "family": model.family,
        "tracking_uri": tracking_uri,
        "saved_at": datetime.now(UTC).isoformat(),
        "artifact": artifact_name,
        "sha256": hashlib.sha256(artifact).hexdigest(),
        "native": native_name,
        "calibration": None if model.calibration is None else model.calibration.to_json(),
    }
    _write_atomically(cache_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    for stale in cache_dir.glob(f"{REGISTERED_MODEL}-v*.skops"):
        if stale.name != artifact_name:
            stale.unlink(missing_ok=True)
    for stale in cache_dir.glob(f"{REGISTERED_MODEL}-v*.native"):
        if stale.name != native_name:
            shutil.rmtree(stale, ignore_errors=True)
    return cache_dir / MANIFEST


def keep_local_copy(cache_dir: Path, artifact: bytes, model: LoadedModel, tracking_uri: str) -> None:
    """``save_local_copy``, where a full or read-only disk costs the fallback but not serving."""
    try:
        save_local_copy(cache_dir, artifact, model, tracking_uri)
    except OSError as exc:
        logger.warning("could not keep a local copy of %s in %s: %s", REGISTERED_MODEL, cache_dir, exc)


def load_local_copy(cache_dir: Path) -> LoadedModel | None:
    """The model saved in ``cache_dir``, None when there is none; ``LocalCopyRefused`` when it is unusable."""
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        version, artifact_name, expected = manifest["version"], manifest["artifact"], manifest["sha256"]
        artifact = (cache_dir / Path(artifact_name).name).read_bytes()  # .name: never outside cache_dir
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalCopyRefused(f"{MANIFEST} or its artifact is unreadable: {type(exc).__name__}: {exc}") from exc
    actual = hashlib.sha256(artifact).hexdigest()
    if actual != expected:
        raise LocalCopyRefused(f"{artifact_name} has sha256 {actual}, its manifest says {expected}: corrupted")
    native = None
    if manifest.get("native"):
        try:
            native = NativeArtifact.read(cache_dir / Path(str(manifest["native"])).name)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # the numpy scorer serves the copy then
            logger.warning("native library of the local copy unreadable (%s: %s)", type(exc).__name__, exc)
    try:
        scorer = compile_artifact(artifact, native)
    except Exception as exc:  # whatever the reason, an unloadable copy is refused with it
        raise LocalCopyRefused(f"{artifact_name} does not load: {type(exc).__name__}: {exc}") from exc
    calibration = None
    if manifest.get("calibration"):
        try:
            calibration = Calibration.from_json(manifest["calibration"])
        except (ValueError, TypeError) as exc:  # served uncalibrated then, until an online map lands
            logger.warning("calibration of the local copy unreadable (%s: %s)", type(exc).__name__, exc)
    origin = f"local copy saved {manifest.get('saved_at')} from MLflow at {manifest.get('tracking_uri')}"
    return _loaded(scorer, str(version), origin, native, calibration)


class PollOutcome(StrEnum):
    UNCHANGED = "unchanged"  # the champion is the version being served
    SWAPPED = "swapped"
    REFUSED = "refused"  # the new champion failed to load, compile or probe; the old model keeps serving
    SKIPPED = "skipped"  # the champion is a version refused less than REFUSED_VERSION_RETRY_S ago
    NO_CHAMPION = "no_champion"
    UNREACHABLE = "unreachable"  # the alias could not be checked


class ModelWatcher:
    """Polls ``ctr-model@champion`` and hot-swaps ``serving_model`` when it moves (see the module doc).

    ``start()`` runs ``poll_once`` every ``settings.model_poll_s`` in a daemon thread and
    returns at once; ``stop()`` waits for a poll in progress (an async lifespan calls it
    through ``asyncio.to_thread``). ``swaps``, ``failures`` (refused versions) and
    ``poll_errors`` (alias checks that failed) are counters for /metrics.
    """

    def __init__(
        self, settings: Settings, serving_model: ServingModel, refused_retry_s: float = REFUSED_VERSION_RETRY_S
    ) -> None:
        self._settings = settings
        self._tracking_uri = settings.mlflow_tracking_uri
        self._cache_dir = settings.model_cache_dir
        self._poll_s = settings.model_poll_s
        self._calibration_poll_s = settings.calibration_poll_s
        self._calibration_checked = -math.inf  # monotonic time of the last look at gold/calibrators
        self._serving_model = serving_model
        self._refused_retry_s = refused_retry_s
        self._refused: tuple[str, float] | None = None  # (version, monotonic time it was refused)
        self._lock = threading.Lock()  # one poll at a time, whoever calls it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.failures = 0
        self.poll_errors = 0
        self.last_error: str | None = None
        self.recalibrations = 0  # online calibration maps swapped in
        self.calibration_errors = 0

    def poll_once(self) -> PollOutcome:
        """Checks the alias; loads, compiles, probes and swaps in a new champion. Failures are recorded, not raised."""
        with self._lock:
            uri = self._tracking_uri
            try:
                version = champion_version(uri)
            except Exception as exc:  # MLflow down or broken: keep serving what is loaded
                problem = registry_problem(uri, exc)
                self._serving_model.not_ready_because(f"{problem}, and {self._no_model}; {ADVICE}")
                if isinstance(exc, NoChampionError):
                    return PollOutcome.NO_CHAMPION
                self.poll_errors += 1
                self.last_error = problem
                return PollOutcome.UNREACHABLE
            current = self._serving_model.version
            if version == current:
                return PollOutcome.UNCHANGED
            refused_version, refused_at = self._refused or (None, 0.0)
            if version == refused_version and time.monotonic() - refused_at < self._refused_retry_s:
                return PollOutcome.SKIPPED
            try:
                model, artifact = load_version(uri, version)
            except Exception as exc:  # a bad version must not replace a good one
                self._refused = (version, time.monotonic())
                self.failures += 1
                refused = f"{REGISTERED_MODEL} version {version} refused ({type(exc).__name__}: {exc})"
                self.last_error = f"{refused}; still serving version {current}" if current else refused
                logger.error("%s", self.last_error)
                self._serving_model.not_ready_because(f"{refused}, and {self._no_model}; {ADVICE}")
                return PollOutcome.REFUSED
            self._serving_model.swap(model)
            self.swaps += 1
            self._refused = None
            logger.info(
                "swapped %s version %s for version %s (%s, %s scorer)",
                REGISTERED_MODEL,
                current,
                version,
                model.family,
                model.scorer_kind,
            )
            keep_local_copy(self._cache_dir, artifact, model, uri)
            self._calibration_checked = -math.inf  # the new version's online map, if it has one, at once
            return PollOutcome.SWAPPED

    def poll_calibration(self) -> bool:
        """Swaps in the newest online calibration of the version served (gold/calibrators), if it is
        new; True when it did. A lake that cannot be read is counted and the current map kept."""
        with self._lock:
            self._calibration_checked = time.monotonic()
            version = self._serving_model.version
            if version is None:
                return False
            try:
                calibration = latest_calibration(self._settings, version)
            except Exception as exc:  # the map in force keeps serving
                self.calibration_errors += 1
                logger.warning("online calibration not read: %s: %s", type(exc).__name__, exc)
                return False
            if calibration is None or not self._serving_model.recalibrate(calibration):
                return False
            self.recalibrations += 1
            logger.info("%s version %s: serving calibration %s (slope %.4f, intercept %.4f)", REGISTERED_MODEL,
                        version, calibration.calibration_id, calibration.slope, calibration.intercept)  # fmt: skip
            return True

    @property
    def _no_model(self) -> str:
        # Shown only while not ready, and then the start found no usable local copy either.
        return f"no model is loaded (no usable local copy in {self._cache_dir})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ctr-model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.poll_once()
                if time.monotonic() - self._calibration_checked >= self._calibration_poll_s:
                    self.poll_calibration()
            except Exception:  # the polls handle their failures; a surprise must not end hot-swapping
                logger.exception("ctr-model watcher: poll failed")
