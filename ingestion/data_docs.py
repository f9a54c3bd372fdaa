"""Great Expectations Data Docs: every validation's result as a page of one static site, ``REPORTS_DIR/data_docs``.

The gates (the bronze tables' here, the bill's in spark_jobs.billing.quality) validate in their own
in-memory contexts, as before; ``publish`` then stores the result, and the suite it ran, in a context
whose stores are folders under ``REPORTS_DIR/data_docs/.gx`` and rebuilds the site's pages for them
(``context.build_data_docs``, what a Checkpoint's ``UpdateDataDocsAction`` does). The stores are on disk
because GX builds the index from the results its store holds: with in-memory stores each process (each
Airflow task) would drop the pages of every earlier run from the index.

The site sits beside the bills and the JSON results in ``REPORTS_DIR`` rather than in the lake: it is a
report for people, static HTML that a dashboard links to at the stable ``index_path``, not a table.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

SITE = "local_site"
STORES = ".gx"  # inside the site's folder: results and suites as JSON, what the pages are built from
INDEXED = 200


def site_dir(reports_dir: Path) -> Path:
    return reports_dir / "data_docs"


def index_path(reports_dir: Path) -> Path:
    """The Data Docs' front page: every validation, newest first, each linking to its result."""
    return site_dir(reports_dir) / "index.html"


def _store(name: str, root: Path, folder: str) -> dict[str, Any]:
    return {
        "class_name": name,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(root / STORES / folder)},
    }


def _in_memory(name: str) -> dict[str, Any]:
    return {"class_name": name, "store_backend": {"class_name": "InMemoryStoreBackend"}}


@lru_cache(maxsize=4)
def _context(root: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, ProgressBarsConfig

    config = DataContextConfig(
        stores={
            "expectations_store": _store("ExpectationsStore", root, "suites"),
            "validation_results_store": _store("ValidationResultsStore", root, "results"),
            "checkpoint_store": _in_memory("CheckpointStore"),
            "validation_definition_store": _in_memory("ValidationDefinitionStore"),
        },
        expectations_store_name="expectations_store",
        validation_results_store_name="validation_results_store",
        checkpoint_store_name="checkpoint_store",
        data_docs_sites={
            SITE: {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(root)},
                # The index lists the newest INDEXED results (each publish reads them all back); older pages stay.
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": INDEXED,
                    "show_how_to_buttons": False,
                },
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def publish(result: Any, reports_dir: Path, *, run_name: str, batch: str, at: datetime | None = None) -> Path:
    """Adds one validation result (an ``ExpectationSuiteValidationResult``) to the Data Docs; returns its page.

    ``run_name`` names the run in the index (the load id, the billed hour); ``batch`` what was validated.
    The suite's page is rebuilt from the expectations the result ran, so it always shows the current suite.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    root = site_dir(reports_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    context = _context(root)
    expectations = [check.expectation_config.to_domain_obj() for check in result.results]
    for expectation in expectations:
        expectation.id = None  # a copy: it belongs to the suite that ran, and GX lets it into one suite only
    suite = gx.ExpectationSuite(name=result.suite_name, expectations=expectations)
    context.suites.add_or_update(suite)
    suite_key = ExpectationSuiteIdentifier(name=result.suite_name)
    run_id = RunIdentifier(run_name=run_name, run_time=at or datetime.now(UTC))
    key = ValidationResultIdentifier(expectation_suite_identifier=suite_key, run_id=run_id, batch_identifier=batch)
    result = copy.copy(result)  # the page shows the run from the result's meta; the caller's result is left as is
    result.meta = {**result.meta, "run_id": run_id}
    context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[SITE], resource_identifiers=[key, suite_key])
    return root / "validations" / Path(*key.to_tuple()).with_suffix(".html")
