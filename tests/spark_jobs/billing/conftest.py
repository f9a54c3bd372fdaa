"""The billing scenario the job, report and notebook tests share: built once, as it takes several Spark jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from adstream.settings import Settings
from spark_jobs.billing import job as billing
from spark_jobs.billing import reports as finance
from spark_jobs.billing.transforms import Reconciliation
from tests.spark_jobs.billing.data import AUCTIONS, HOUR_10, LATE, NOW, H, build_store, store_settings, write_silver


@dataclass
class Scenario:
    settings: Settings
    provisional: billing.HourBill
    final: billing.HourBill
    empty: billing.HourBill
    reconciliation: Reconciliation
    exports: dict[datetime, finance.HourExport]


@pytest.fixture(scope="package")
def scenario(spark, tmp_path_factory) -> Scenario:
    """Hour 10 billed before the stream caught up (provisional), then after (final); hour 8 billed empty."""
    settings = store_settings(tmp_path_factory.mktemp("billing"))
    write_silver(settings, HOUR_10, auctions=[a for a in AUCTIONS if a != "b6"])
    build_store(settings, HOUR_10)
    provisional = billing.bill_hour(spark, settings, H, now=NOW)
    write_silver(settings, LATE, auctions=["b6"])
    final = billing.bill_hour(spark, settings, H, now=NOW)
    empty = billing.bill_hour(spark, settings, H - timedelta(hours=2), now=NOW)
    reconciliation = billing.reconcile_hour(spark, settings, H)
    exports = {hour: billing.export_hour(settings, hour) for hour in (H, H - timedelta(hours=2))}
    return Scenario(settings, provisional, final, empty, reconciliation, exports)
