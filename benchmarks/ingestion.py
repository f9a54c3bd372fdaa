"""Ingestion benchmark (`make bench`): the full-size synthetic Amazon corpus into bronze, GX gate included.

Each repeat measures, on a fresh lake, in this order:
  baseline  plain `pandas.read_csv` of every file + one delta-rs write (no quirks handled, no gate);
  ingest    `ingestion.pipeline.ingest` end to end (change detection, parse, GX, bronze + quarantine, manifest);
  rerun     the same ingest again on unchanged files.
Medians over the repeats are reported with the ratios, and written to reports/bench/ingestion.json.
Targets: ingest >= 50,000 rows/s; rerun <= 10 % of ingest's time.

    adstream bench ingestion [--repeats 3]
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from deltalake import write_deltalake

from adstream.settings import Settings, get_settings
from benchmarks.harness import median_of, ratio, report_path, write_report
from cli.lazy import commands_app
from ingestion import quality  # noqa: F401  -- imported here, outside the timings
from ingestion.pipeline import ingest
from simulator import kaggle_samples as samples

TARGET_ROWS_PER_S = 50_000
TARGET_RERUN_SHARE = 0.10


def full_corpus(workdir: Path, seed: int = 7) -> Path:
    """The `full` synthetic sample, generated once and reused (it is deterministic)."""
    kaggle_dir = workdir / f"kaggle-full-seed{seed}"
    done = kaggle_dir / ".complete"
    if not done.exists():
        shutil.rmtree(kaggle_dir, ignore_errors=True)
        samples.generate(kaggle_dir, "full", seed=seed)
        done.write_text("ok")
    return kaggle_dir


def pandas_baseline(kaggle_dir: Path, lake: Path) -> tuple[int, float]:
    began = time.perf_counter()
    frames = []
    for path in sorted((kaggle_dir / "amazon").rglob("*.csv")):
        try:
            frames.append(pd.read_csv(path, dtype=str, on_bad_lines="skip", encoding_errors="replace"))
        except (pd.errors.ParserError, ValueError):
            continue  # the baseline simply loses what pandas cannot read (e.g. the NUL-padded file)
    corpus = pd.concat([frame.iloc[:, :1].set_axis(["ad_text"], axis=1) for frame in frames], ignore_index=True)
    write_deltalake(str(lake / "baseline_amazon"), corpus, mode="overwrite")
    return len(corpus), time.perf_counter() - began


def run(base_settings: Settings, repeats: int, workdir: Path) -> dict[str, object]:
    kaggle_dir = full_corpus(workdir)
    measurements = []
    for repeat in range(1, repeats + 1):
        lake = workdir / "lake"
        shutil.rmtree(lake, ignore_errors=True)
        settings = base_settings.model_copy(
            update={"kaggle_dir": kaggle_dir, "lake_root": str(lake), "reports_dir": workdir / "reports"}
        )
        baseline_rows, baseline_s = pandas_baseline(kaggle_dir, lake)
        first = ingest(settings, "amazon")
        rerun = ingest(settings, "amazon")
        rows = first.rows_written["amazon_ads"]
        measurements.append(
            {
                "baseline_rows": baseline_rows,
                "baseline_s": baseline_s,
                "ingest_rows": rows,
                "ingest_s": first.seconds,
                "rerun_s": rerun.seconds,
                "rerun_unchanged": rerun.unchanged,
            }
        )
        print(
            f"repeat {repeat}: baseline {baseline_rows:,} rows in {baseline_s:.1f}s "
            f"({baseline_rows / baseline_s:,.0f} rows/s) | ingest {rows:,} rows in {first.seconds:.1f}s "
            f"({rows / first.seconds:,.0f} rows/s) | rerun {rerun.seconds:.2f}s",
            flush=True,
        )

    ingest_rate = median_of(measurements, "ingest_rows") / median_of(measurements, "ingest_s")
    baseline_rate = median_of(measurements, "baseline_rows") / median_of(measurements, "baseline_s")
    rerun_share = median_of(measurements, "rerun_s") / median_of(measurements, "ingest_s")
    return {
        "repeats": measurements,
        "median_ingest_rows_per_s": round(ingest_rate),
        "median_baseline_rows_per_s": round(baseline_rate),
        "ingest_vs_baseline_throughput": ratio(ingest_rate, baseline_rate, 3),
        "median_rerun_share_of_first_run": round(rerun_share, 4),
        "target_rows_per_s_met": ingest_rate >= TARGET_ROWS_PER_S,
        "target_rerun_share_met": rerun_share <= TARGET_RERUN_SHARE,
    }


def bench(settings: Settings, repeats: int = 3, workdir: Path | None = None) -> int:
    """`adstream bench ingestion`: the repeats in a scratch directory (default LOCAL_DIR/bench), the medians to
    REPORTS_DIR/bench/ingestion.json."""
    result = run(settings, repeats, (workdir or settings.local_dir / "bench").resolve())
    out = write_report(result, report_path(settings, "ingestion"))
    print(
        f"median ingest {result['median_ingest_rows_per_s']:,} rows/s "
        f"(target {TARGET_ROWS_PER_S:,}: {'met' if result['target_rows_per_s_met'] else 'MISSED'}); "
        f"baseline pandas.read_csv + write {result['median_baseline_rows_per_s']:,} rows/s; "
        f"ratio {result['ingest_vs_baseline_throughput']}; rerun {result['median_rerun_share_of_first_run']:.1%} "
        f"of the first run (target <= 10%: {'met' if result['target_rerun_share_met'] else 'MISSED'}); "
        f"written to {out}"
    )
    return 0


# --- the command (`adstream bench ingestion`; benchmarks.cli loads this module when it runs) ---

commands = commands_app()


@commands.command("ingestion", help=__doc__.splitlines()[0])
def ingestion_command(
    repeats: int = 3,
    workdir: Annotated[Path | None, typer.Option(help="default: LOCAL_DIR/bench")] = None,
) -> None:
    raise typer.Exit(bench(get_settings(), repeats, workdir))
