"""The simulator's commands of `adstream`: simulate (users against the auction service) and samples.

Each is defined in its module and imported when it runs (see cli.lazy).
"""

from __future__ import annotations

from cli.lazy import lazy_app

app = lazy_app(
    {
        "simulate": (
            "simulator.traffic",
            "Simulated users (and bots) who request ads, click, convert and watch videos.",
        ),
        "samples": ("simulator.kaggle_samples", "Deterministic synthetic samples of the three Kaggle datasets."),
    }
)
