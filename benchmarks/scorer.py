"""Serving-latency benchmark: CompiledScorer vs the pipeline's predict_proba, 100 candidates per batch.

For each model family, fitted on a synthetic training set: 1,000 batches of 100
candidates (some categories unseen in training, some values missing) are scored
    naive     ``pipeline.predict_proba(frame)[:, 1]`` on a prebuilt pandas frame;
    compiled  ``CompiledScorer.score(columns)`` on prebuilt column lists;
and, as the auction receives them, from a list of per-candidate dicts
    naive     ``pd.DataFrame.from_records`` + predict_proba;
    compiled  ``CompiledScorer.score_records``.
Reports median and p99 per batch in µs and the naive/compiled ratio of medians,
checks every pCTR agrees to 1e-9, and writes reports/bench/ctr_scorer.json.
Target: compiled median <= 1,000 µs per 100-candidate batch.

    adstream bench scorer [--batches 1000] [--family NAME ...]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from adstream.settings import Settings, get_settings
from benchmarks.harness import check_choices, report_path, write_report
from cli.lazy import commands_app
from ml.features import FEATURES, LABEL
from ml.pipelines import FAMILIES
from ml.scorer import CompiledScorer
from ml.split import time_split
from simulator.ctr_examples import candidates, training_frame

BATCH_SIZE = 100
TARGET_MEDIAN_US = 1_000.0
TOLERANCE = 1e-9


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


def bench_family(family: str, batches: int, training_rows: int = 5_000) -> dict[str, object]:
    frame = training_frame(training_rows, seed=11)
    train_set, holdout = time_split(frame)
    pipeline = FAMILIES[family]().fit(train_set[list(FEATURES)], train_set[LABEL].to_numpy())
    scorer = CompiledScorer.from_pipeline(pipeline)
    frames = [candidates(holdout, BATCH_SIZE, seed)[list(FEATURES)] for seed in range(batches)]
    columns = [{name: batch[name].tolist() for name in FEATURES} for batch in frames]
    records = [batch.to_dict(orient="records") for batch in frames]

    naive_s, naive = _timed(lambda batch: pipeline.predict_proba(batch)[:, 1], frames)
    compiled_s, compiled = _timed(scorer.score, columns)
    naive_records_s, _ = _timed(lambda rows: pipeline.predict_proba(pd.DataFrame.from_records(rows))[:, 1], records)
    compiled_records_s, from_records = _timed(scorer.score_records, records)
    max_abs_diff = max(
        float(np.max(np.abs(np.concatenate(naive) - np.concatenate(outputs)))) for outputs in (compiled, from_records)
    )
    result = {
        "family": family,
        "batches": batches,
        "batch_size": BATCH_SIZE,
        "naive_frame": _summary(naive_s),
        "compiled_columns": _summary(compiled_s),
        "naive_from_records": _summary(naive_records_s),
        "compiled_records": _summary(compiled_records_s),
        "max_abs_diff": max_abs_diff,
    }
    result["ratio_median"] = result["naive_frame"]["median_us"] / result["compiled_columns"]["median_us"]
    result["ratio_median_records"] = result["naive_from_records"]["median_us"] / result["compiled_records"]["median_us"]
    return result


def bench(settings: Settings, batches: int = 1_000, families: Sequence[str] = (), output: Path | None = None) -> int:
    """`adstream bench scorer`: every family (or ``families``), printed and written to ``output`` (default
    REPORTS_DIR/bench/ctr_scorer.json); 1 when a compiled pCTR disagrees with the pipeline's beyond TOLERANCE."""
    results = [bench_family(family, batches) for family in families or FAMILIES]
    print(f"{'family':<24}{'input':<10}{'naive median/p99 µs':>22}{'compiled median/p99 µs':>26}{'ratio':>8}")
    failed = False
    for r in results:
        for label, naive, compiled, ratio in (
            ("columns", r["naive_frame"], r["compiled_columns"], r["ratio_median"]),
            ("records", r["naive_from_records"], r["compiled_records"], r["ratio_median_records"]),
        ):
            print(
                f"{r['family']:<24}{label:<10}"
                f"{naive['median_us']:>12.0f} / {naive['p99_us']:<7.0f}"
                f"{compiled['median_us']:>16.0f} / {compiled['p99_us']:<7.0f}{ratio:>8.1f}x"
            )
        agrees = r["max_abs_diff"] <= TOLERANCE
        fast = r["compiled_columns"]["median_us"] <= TARGET_MEDIAN_US
        print(
            f"{'':<24}max |diff| {r['max_abs_diff']:.1e} ({'ok' if agrees else 'FAIL'} at {TOLERANCE:g}); "
            f"median target {TARGET_MEDIAN_US:.0f} µs {'met' if fast else 'MISSED'}"
        )
        failed |= not agrees
    output = write_report(results, output or report_path(settings, "ctr_scorer"))
    print(f"written to {output}")
    return 1 if failed else 0


# --- the command (`adstream bench scorer`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("scorer", help=__doc__.splitlines()[0])
def scorer_command(
    batches: int = 1_000,
    family: Annotated[
        list[str] | None, typer.Option(help=f"one of {', '.join(FAMILIES)}; repeat it (default: every family)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="default: REPORTS_DIR/bench/ctr_scorer.json")] = None,
) -> None:
    check_choices("--family", family or [], list(FAMILIES))
    raise typer.Exit(bench(get_settings(), batches, family or (), output))
