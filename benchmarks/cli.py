"""The benchmarks' commands of `adstream`: `adstream bench auction|billing|streaming|ingestion|scorer|optimizer`
and `adstream bench bid-filter|bid-filter-mix`.

Each is defined in its bench's module and imported when it runs (see cli.lazy). Two hidden commands
are child processes benches start: `bench auction-serve` (one service process of the auction bench) and
`bench streaming-job` (the streaming job with another batch bound).
"""

from __future__ import annotations

from cli.lazy import lazy_app

BENCHES = {
    "auction": ("benchmarks.auction", "Auction-service load: the real service over HTTP, compiled scorer vs naive."),
    "billing": ("benchmarks.billing", "One hour of 1,000,000 feedback events billed on local[2]."),
    "streaming": ("benchmarks.streaming", "The real Kafka -> Delta job on local[2]: throughput, latency, memory."),
    "ingestion": ("benchmarks.ingestion", "The full-size synthetic Amazon corpus into bronze, GX gate included."),
    "scorer": ("benchmarks.scorer", "CompiledScorer vs the pipeline's predict_proba, 100 candidates per batch."),
    "optimizer": ("benchmarks.optimizer", "The optimizer's tick for 10,000 campaigns x 8 platforms on one core."),
    "bid-filter": ("benchmarks.bid_filter", "Screening one request with the bid filter: p50/p99 µs, what it sheds."),
    "bid-filter-mix": (
        "benchmarks.bid_filter_mix",
        "OpenRTB load with unfillable requests: the service without and with the bid filter, requests/s.",
    ),
    "auction-serve": ("benchmarks.auction", None),
    "streaming-job": ("benchmarks.streaming", None),
}

app = lazy_app(
    BENCHES,
    name="bench",
    help="The benchmarks; each prints its medians and writes them to REPORTS_DIR/bench/.",
    no_args_is_help=True,
)
