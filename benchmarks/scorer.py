"""Serving-latency benchmark: native and CompiledScorer vs the pipeline's predict_proba, 100 candidates per batch.

For each model family, fitted on a synthetic training set with the hyperparameters
training uses: 1,000 batches of 100 candidates (some categories unseen in training,
some values missing) are scored
    naive     ``pipeline.predict_proba(frame)[:, 1]`` on a prebuilt pandas frame;
    compiled  ``CompiledScorer.score(columns)`` (numpy) on prebuilt column lists;
    native    ``NativeScorer.score(columns)``: the trees compiled by treelite + tl2cgen (gcc),
              for the tree families (logistic regression has no trees: numpy serves it);
and, as the auction receives them, from a list of per-candidate dicts
    naive     ``pd.DataFrame.from_records`` + predict_proba;
    compiled / native  ``score_records``;
and as the service passes them (``auction_service.serving.features.candidate_columns``):
one user's columns repeated across 100 campaigns, numerics as float arrays, categoricals
as ``Coded``: the "served" line, the figure the service sees per auction.
Compiled and native are timed ``repeats`` times, interleaved; each figure is the median
over repeats of the median per batch (p99 likewise). Reports µs per batch, the
naive/compiled and compiled/native ratios of medians, checks every pCTR agrees with
predict_proba to 1e-9 (numpy) and 1e-6 (native), and writes reports/bench/ctr_scorer.json.
Targets: compiled median <= 1,000 µs; native median as served <= 100 µs.

    adstream bench scorer [--batches 1000] [--repeats 3] [--family NAME ...]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import skops.io
import typer
from threadpoolctl import threadpool_limits

from adstream.settings import Settings, get_settings
from benchmarks.harness import check_choices, report_path, write_report
from cli.lazy import commands_app
from ml.features import CATEGORICAL_FEATURES, FEATURES, LABEL
from ml.native import NativeScorer, NotCompilable, build_native, load_native
from ml.pipelines import FAMILIES, SKOPS_TRUSTED_TYPES
from ml.scorer import Coded, CompiledScorer
from ml.split import time_split
from simulator.ctr_examples import candidates, training_frame

BATCH_SIZE = 100
TARGET_MEDIAN_US = 1_000.0
NATIVE_TARGET_MEDIAN_US = 100.0
TOLERANCE = 1e-9
NATIVE_TOLERANCE = 1e-6
# What varies between the campaigns of one auction (candidate_columns); the rest is the user's, repeated.
CAMPAIGN_COLUMNS = frozenset({"category_affinity", "ad_ctr_smoothed", "category_ctr_smoothed", "ad_category"})
NAIVE_OF = {"columns": "naive_frame", "records": "naive_from_records", "served": "naive_served"}  # input -> baseline


def _timed(score: Callable[[object], np.ndarray], inputs: list[object]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Seconds per call, and the outputs (after one untimed warm-up call)."""
    score(inputs[0])
    seconds, outputs = np.empty(len(inputs)), []
    for i, batch in enumerate(inputs):
        began = time.perf_counter()
        outputs.append(score(batch))
        seconds[i] = time.perf_counter() - began
    return seconds, outputs


def _summary(seconds: np.ndarray) -> dict[str, float]:
    return {"median_us": float(np.median(seconds) * 1e6), "p99_us": float(np.percentile(seconds, 99) * 1e6)}


def _repeated(
    scorers: dict[str, Callable[[object], np.ndarray]], inputs: list[object], repeats: int
) -> tuple[dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Each scorer timed ``repeats`` times, interleaved: median over repeats of each repeat's median and p99."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in scorers}
    outputs: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):
        for name, score in scorers.items():
            seconds, outputs[name] = _timed(score, inputs)
            runs[name].append(_summary(seconds))
    return {
        name: {
            "median_us": float(np.median([run["median_us"] for run in summaries])),
            "p99_us": float(np.median([run["p99_us"] for run in summaries])),
            "repeat_medians_us": [run["median_us"] for run in summaries],
        }
        for name, summaries in runs.items()
    }, outputs


def served_batch(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One auction as the service scores it: a user's columns repeated over ``BATCH_SIZE`` campaigns drawn
    from ``frame`` (as a frame, for predict_proba, and as the service's columns)."""
    rows = candidates(frame, BATCH_SIZE + 1, seed)[list(FEATURES)]
    user, batch = rows.iloc[0], rows.iloc[1:].reset_index(drop=True)
    for name in FEATURES:
        if name not in CAMPAIGN_COLUMNS:
            batch[name] = pd.Series([user[name]] * BATCH_SIZE, dtype=batch[name].dtype)
    columns: dict[str, Any] = {}
    for name in FEATURES:
        values = batch[name].tolist()
        if name in CATEGORICAL_FEATURES:
            distinct = {value: i for i, value in enumerate(dict.fromkeys(values))}
            columns[name] = Coded(tuple(distinct), np.array([distinct[value] for value in values], dtype=np.intp))
        else:
            columns[name] = np.array([np.nan if value is None else value for value in values], dtype=np.float64)
    return batch, columns


def _native(scorer: CompiledScorer, pipeline: object) -> NativeScorer | None:
    """The native scorer as serving loads it (built for the skops file's sha256), None for a linear model."""
    sha256 = hashlib.sha256(skops.io.dumps(pipeline)).hexdigest()
    try:
        artifact = build_native(scorer, sha256)
    except NotCompilable:
        return None
    return load_native(artifact, scorer, sha256)


def _max_abs_diff(expected: list[np.ndarray], *outputs: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.concatenate(expected) - np.concatenate(got)))) for got in outputs)


def bench_family(
    family: str, batches: int, repeats: int = 3, training_rows: int = 5_000, pipeline: Any = None
) -> dict[str, object]:
    """One family trained here, or ``pipeline`` as given (the champion a run promoted), timed on the same inputs."""
    frame = training_frame(training_rows, seed=11)
    train_set, holdout = time_split(frame)
    if pipeline is None:
        pipeline = FAMILIES[family]().fit(train_set[list(FEATURES)], train_set[LABEL].to_numpy())
    scorer = CompiledScorer.from_pipeline(pipeline)
    native = _native(scorer, pipeline)
    frames = [candidates(holdout, BATCH_SIZE, seed)[list(FEATURES)] for seed in range(batches)]
    columns = [{name: batch[name].tolist() for name in FEATURES} for batch in frames]
    records = [batch.to_dict(orient="records") for batch in frames]
    served = [served_batch(holdout, seed) for seed in range(batches)]

    naive_s, naive = _timed(lambda batch: pipeline.predict_proba(batch)[:, 1], frames)
    naive_records_s, _ = _timed(lambda rows: pipeline.predict_proba(pd.DataFrame.from_records(rows))[:, 1], records)
    naive_served_s, naive_served = _timed(lambda batch: pipeline.predict_proba(batch)[:, 1], [f for f, _ in served])
    result: dict[str, Any] = {
        "family": family,
        "batches": batches,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
        "native": native is not None,
        "naive_frame": _summary(naive_s),
        "naive_from_records": _summary(naive_records_s),
        "naive_served": _summary(naive_served_s),
    }
    diffs: dict[str, list[float]] = {"compiled": [], "native": []}
    for label, inputs, expected, score_of in (
        ("columns", columns, naive, lambda s: s.score),
        ("records", records, naive, lambda s: s.score_records),
        ("served", [c for _, c in served], naive_served, lambda s: s.score),
    ):
        scorers = {"compiled": score_of(scorer)} | ({"native": score_of(native)} if native else {})
        timings, outputs = _repeated(scorers, inputs, repeats)
        for name, timing in timings.items():
            result[f"{name}_{label}"] = timing
            diffs[name].append(_max_abs_diff(expected, outputs[name]))
    result["max_abs_diff"] = max(diffs["compiled"])
    result["native_max_abs_diff"] = max(diffs["native"]) if native else None
    for label, naive_key in NAIVE_OF.items():
        compiled_us = result[f"compiled_{label}"]["median_us"]
        result[f"ratio_median_{label}"] = result[naive_key]["median_us"] / compiled_us
        if native:
            result[f"native_speedup_{label}"] = compiled_us / result[f"native_{label}"]["median_us"]
    return result


def _cell(summary: dict[str, float] | None) -> str:
    return f"{'—':>13}" if summary is None else f"{summary['median_us']:>6.0f} / {summary['p99_us']:<6.0f}"


def bench(
    settings: Settings,
    batches: int = 1_000,
    families: Sequence[str] = (),
    output: Path | None = None,
    repeats: int = 3,
    champion: Path | None = None,
) -> int:
    """`adstream bench scorer`: every family (or ``families``), printed and written to ``output`` (default
    REPORTS_DIR/bench/ctr_scorer.json); 1 when a pCTR disagrees with the pipeline's beyond its tolerance."""
    # One OpenMP thread, as the service scores: otherwise the idle workers HistGradientBoosting's fit and
    # predict_proba leave spinning take the core from the timings that follow (native x2 slower here).
    with threadpool_limits(limits=1, user_api="openmp"):
        if champion is not None:
            # The model a run promoted, as the service loaded it (its local copy): what is served, not a stand-in.
            pipeline = skops.io.loads(champion.read_bytes(), trusted=list(SKOPS_TRUSTED_TYPES))
            family = f"champion {champion.stem}"
            results = [bench_family(family, batches, repeats, pipeline=pipeline)]
        else:
            results = [bench_family(family, batches, repeats) for family in families or FAMILIES]
    print(
        f"{'family':<24}{'input':<9}{'naive µs':>15}{'compiled µs':>15}{'native µs':>15}"
        f"{'naive/compiled':>16}{'compiled/native':>17}   (median / p99 per 100 candidates)"
    )
    failed = False
    for r in results:
        for label, naive_key in NAIVE_OF.items():
            speedup = r.get(f"native_speedup_{label}")
            print(
                f"{r['family']:<24}{label:<9}{_cell(r[naive_key]):>15}{_cell(r[f'compiled_{label}']):>15}"
                f"{_cell(r.get(f'native_{label}')):>15}{r[f'ratio_median_{label}']:>15.1f}x"
                f"{'' if speedup is None else f'{speedup:>16.1f}x'}"
            )
        agrees = r["max_abs_diff"] <= TOLERANCE
        fast = r["compiled_columns"]["median_us"] <= TARGET_MEDIAN_US
        line = (
            f"{'':<24}max |diff| {r['max_abs_diff']:.1e} ({'ok' if agrees else 'FAIL'} at {TOLERANCE:g}); "
            f"compiled median target {TARGET_MEDIAN_US:.0f} µs {'met' if fast else 'MISSED'}"
        )
        if r["native"]:
            native_agrees = r["native_max_abs_diff"] <= NATIVE_TOLERANCE
            native_fast = r["native_served"]["median_us"] <= NATIVE_TARGET_MEDIAN_US
            line += (
                f"; native max |diff| {r['native_max_abs_diff']:.1e} "
                f"({'ok' if native_agrees else 'FAIL'} at {NATIVE_TOLERANCE:g}), "
                f"served median target {NATIVE_TARGET_MEDIAN_US:.0f} µs {'met' if native_fast else 'MISSED'}"
            )
            agrees &= native_agrees
        else:
            line += "; native: none (no trees: numpy serves it)"
        print(line)
        failed |= not agrees
    output = write_report(results, output or report_path(settings, "ctr_scorer"))
    print(f"written to {output}")
    return 1 if failed else 0


# --- the command (`adstream bench scorer`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("scorer", help=__doc__.splitlines()[0])
def scorer_command(
    batches: int = 1_000,
    repeats: Annotated[int, typer.Option(min=1, help="timings of compiled and native, interleaved")] = 3,
    family: Annotated[
        list[str] | None, typer.Option(help=f"one of {', '.join(FAMILIES)}; repeat it (default: every family)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="default: REPORTS_DIR/bench/ctr_scorer.json")] = None,
    champion: Annotated[
        Path | None,
        typer.Option(help="a served champion's skops file (make run leaves .local/models/ctr-model-v<N>.skops)"),
    ] = None,
) -> None:
    check_choices("--family", family or [], list(FAMILIES))
    if champion is not None and not champion.is_file():
        raise typer.BadParameter(f"{champion} is not a file: run `make run` first, or name a skops file")
    raise typer.Exit(bench(get_settings(), batches, family or (), output, repeats, champion))
