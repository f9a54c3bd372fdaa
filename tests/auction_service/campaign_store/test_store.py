"""The campaign store on a real SQLite file: migrations, instructions, serving reads and spend."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import BigInteger, Column, MetaData, Table, create_engine, func, insert, inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from adstream.days import DayClock
from adstream.events import (
    AudienceSplit,
    CampaignGoals,
    CampaignInstruction,
    CampaignSpec,
    CampaignStatus,
    PacingMode,
    PricingModel,
    Targeting,
)
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import begin_write, make_engine, make_session_factory, migrate
from auction_service.campaign_store.store import ApplyOutcome, SpendOutcome
from auction_service.campaign_store.tables import Base, Campaign, DailySpend, ServedAuction, SpendLedgerEntry
from auction_service.serving.shared import Hold, HoldRefused, SharedBooks, rebuild_source
from auction_service.serving.state import ServiceState, SpendLedger
from tests.conftest import free_port, make_settings, shared_namespace

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TABLES = {
    "campaigns", "applied_instructions", "spend_ledger", "daily_spend", "quarantined_instructions", "served_auctions",
    "feedback_journal", "api_keys",
}  # fmt: skip


def spec(**overrides: object) -> CampaignSpec:
    values: dict[str, object] = {
        "advertiser_id": "adv-1",
        "ad_id": "amz-0001",
        "category": "Automotive",
        "pricing_model": "CPC",
        "bid_micros": 400_000,
        "total_budget_micros": 500_000_000,
        "daily_budget_micros": 100_000_000,
        "flight_start": NOW - timedelta(days=1),
        "flight_end": NOW + timedelta(days=30),
        "frequency_cap_per_day": 5,
    }
    values.update(overrides)
    return CampaignSpec(**values)


def create(campaign_id: str, instruction_id: str | None = None, **overrides: object) -> CampaignInstruction:
    return CampaignInstruction(
        instruction_id=instruction_id or f"create-{campaign_id}",
        action="create",
        campaign_id=campaign_id,
        issued_at=NOW,
        campaign=spec(**overrides),
    )


def stop(campaign_id: str, instruction_id: str | None = None) -> CampaignInstruction:
    return CampaignInstruction(
        instruction_id=instruction_id or f"stop-{campaign_id}",
        action="stop",
        campaign_id=campaign_id,
        issued_at=NOW,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for this run (URL without a database), from the installed binaries."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    root = Path(tempfile.mkdtemp(prefix="adstream-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = ["runuser", "-u", "nobody", "--"]
        os.chown(root, pwd.getpwnam("nobody").pw_uid, -1)
    port = free_port()
    data = root / "data"
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "adstream", "--auth=trust"], check=True, capture_output=True
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://adstream@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def settings(request, tmp_path):
    """Settings whose store is a fresh SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return make_settings(tmp_path, campaign_db_url=f"sqlite:///{tmp_path / 'store' / 'campaigns.db'}")
    server = request.getfixturevalue("postgres_server")
    database = f"campaigns_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {database}")
    admin.dispose()
    return make_settings(tmp_path, campaign_db_url=f"{server}/{database}")


@pytest.fixture
def sqlite_settings(tmp_path):
    return make_settings(tmp_path, campaign_db_url=f"sqlite:///{tmp_path / 'store' / 'campaigns.db'}")


@pytest.fixture
def sessions(settings):
    engine = make_engine(settings)
    migrate(settings, engine)
    yield make_session_factory(engine)
    engine.dispose()


def spend(session: Session, event_id: str, campaign_id: str = "c1", cost: int = 250_000, at: datetime = NOW):
    return store.record_spend(
        session,
        event_id=event_id,
        auction_id=f"auction-{event_id}",
        campaign_id=campaign_id,
        event_type="click",
        cost_micros=cost,
        event_time=at,
    )


# --- migrations ---


def test_migrate_creates_the_tables_on_an_empty_store_and_a_second_run_is_harmless(settings):
    engine = make_engine(settings)
    try:
        assert inspect(engine).get_table_names() == []
        migrate(settings, engine)
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        with make_session_factory(engine)() as session:
            store.apply_instruction(session, create("c1"))
        migrate(settings)  # again, with an engine of its own
        with make_session_factory(engine)() as session:
            assert store.get_campaign(session, "c1") is not None
            assert session.scalar(select(func.count()).select_from(Campaign)) == 1
    finally:
        engine.dispose()


def test_the_migrated_schema_matches_the_orm_models(settings, sessions):
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            # The comparison does see a difference when there is one.
            drifted = MetaData()
            for table in Base.metadata.sorted_tables:
                table.to_metadata(drifted)
            Table("campaigns", drifted, Column("extra_micros", BigInteger), extend_existing=True)
            diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), drifted)
            assert [entry[0] for entry in diff] == ["add_column"]
    finally:
        engine.dispose()


def test_sqlite_store_uses_wal_and_enforces_foreign_keys(sqlite_settings):
    engine = make_engine(sqlite_settings)
    with make_session_factory(engine)() as session:
        assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


# --- instructions ---


def test_a_store_lock_held_elsewhere_fails_the_waiter_within_the_lock_timeout(settings):
    migrate(settings)
    holder = make_engine(settings)
    waiter = make_engine(settings.model_copy(update={"campaign_db_lock_timeout_s": 0.5}))
    ledger = SpendLedgerEntry.__tablename__
    try:
        with holder.connect() as held:
            if holder.dialect.name == "sqlite":  # SQLite locks the whole database for a writer
                held.exec_driver_sql(f"DELETE FROM {ledger} WHERE event_id = 'nobody'")
            else:
                held.exec_driver_sql(f"LOCK TABLE {ledger} IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with (
                pytest.raises(OperationalError, match=r"locked|lock timeout"),
                make_session_factory(waiter)() as session,
            ):
                begin_write(session)
                session.execute(select(func.count()).select_from(SpendLedgerEntry))
            assert time.monotonic() - started < 5  # not the 30 s default
            held.rollback()
    finally:
        holder.dispose()
        waiter.dispose()


@pytest.mark.slow
def test_a_slow_postgresql_statement_is_cancelled_at_the_statement_timeout(postgres_server):
    settings = make_settings(Path(tempfile.mkdtemp()), campaign_db_url=f"{postgres_server}/postgres")
    engine = make_engine(settings.model_copy(update={"campaign_db_statement_timeout_s": 0.5}))
    try:
        with engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
            started = time.monotonic()
            connection.exec_driver_sql("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
    finally:
        engine.dispose()


def test_create_makes_an_active_campaign_with_its_spec(sessions):
    targeting = Targeting(countries=["FR", "DE"], age_min=25, age_max=44, genders=["F"], device_types=["mobile"])
    instruction = create("c1", pricing_model="CPM", bid_micros=2_500_000, targeting=targeting)
    with sessions() as session:
        result = store.apply_instruction(session, instruction)
        assert (result.outcome, result.changed) == (ApplyOutcome.CREATED, True)
    with sessions() as session:
        view = store.get_campaign(session, "c1")
    assert view is not None
    assert view.status is CampaignStatus.ACTIVE
    assert view.spec == instruction.campaign
    assert view.spec.targeting.countries == ["FR", "DE"]
    assert view.spec.flight_start == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    assert view.spec.flight_start.tzinfo is not None
    assert (view.spent_micros, view.remaining_budget_micros) == (0, 500_000_000)
    assert view.last_instruction_id == "create-c1"


def test_a_replayed_create_changes_nothing(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        before = store.get_campaign(session, "c1")
        marker = store.campaign_change_marker(session)
    with sessions() as session:
        result = store.apply_instruction(session, create("c1"))
        assert (result.outcome, result.changed) == (ApplyOutcome.ALREADY_APPLIED, False)
        assert store.get_campaign(session, "c1") == before
        assert store.campaign_change_marker(session) == marker


def test_a_create_for_an_existing_campaign_under_another_instruction_is_refused(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1", bid_micros=400_000))
        result = store.apply_instruction(session, create("c1", instruction_id="create-c1-again", bid_micros=9_000_000))
        assert result.outcome is ApplyOutcome.CAMPAIGN_EXISTS
        view = store.get_campaign(session, "c1")
        assert (view.spec.bid_micros, view.last_instruction_id) == (400_000, "create-c1")


def test_stopping_is_final(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        assert store.apply_instruction(session, stop("c1")).outcome is ApplyOutcome.STOPPED
        assert store.get_campaign(session, "c1").status is CampaignStatus.STOPPED
        marker = store.campaign_change_marker(session)
        # A second stop, a replayed create and a fresh create for the same id: all leave it stopped.
        assert store.apply_instruction(session, stop("c1", "stop-c1-again")).outcome is ApplyOutcome.ALREADY_STOPPED
        assert store.apply_instruction(session, create("c1")).outcome is ApplyOutcome.ALREADY_APPLIED
        assert store.apply_instruction(session, create("c1", "create-c1-v2")).outcome is ApplyOutcome.CAMPAIGN_EXISTS
        assert store.get_campaign(session, "c1").status is CampaignStatus.STOPPED
        assert store.get_campaign(session, "c1").last_instruction_id == "stop-c1"
        assert store.campaign_change_marker(session) == marker


def test_stopping_an_unknown_campaign_is_recorded_so_it_is_not_retried(sessions):
    with sessions() as session:
        assert store.apply_instruction(session, stop("ghost")).outcome is ApplyOutcome.UNKNOWN_CAMPAIGN
        assert store.apply_instruction(session, stop("ghost")).outcome is ApplyOutcome.ALREADY_APPLIED
        assert store.get_campaign(session, "ghost") is None


def test_quarantine_keeps_a_record_once(sessions):
    record = {"topic": "campaign-instructions", "partition": 2, "offset": 17, "key": b"c1", "raw_value": b"{oops"}
    with sessions() as session:
        assert store.quarantine_instruction(session, **record, reason="invalid JSON") is True
        assert store.quarantine_instruction(session, **record, reason="invalid JSON") is False
        (kept,) = store.quarantined_instructions(session)
    assert (kept.topic, kept.partition, kept.offset, kept.raw_value, kept.reason) == (
        "campaign-instructions",
        2,
        17,
        b"{oops",
        "invalid JSON",
    )


# --- what the auction reads ---


def test_serving_campaigns_are_the_active_ones_with_todays_spend(sessions):
    with sessions() as session:
        store.apply_instruction(
            session,
            create("c1", targeting=Targeting(countries=["FR"], age_min=18, genders=["M"], device_types=["tablet"])),
        )
        store.apply_instruction(session, create("c2", pricing_model="CPA", bid_micros=20_000_000))
        store.apply_instruction(session, create("stopped"))
        store.apply_instruction(session, stop("stopped"))
        store.apply_instruction(
            session, create("ended", flight_start=NOW - timedelta(days=9), flight_end=NOW - timedelta(seconds=1))
        )
        store.apply_instruction(
            session, create("upcoming", flight_start=NOW + timedelta(days=2), flight_end=NOW + timedelta(days=9))
        )
        spend(session, "e1", "c1", 300_000, at=datetime(2026, 3, 10, 0, 0, tzinfo=UTC))
        spend(session, "e2", "c1", 200_000, at=datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC))  # yesterday (UTC)
        # 01:30 at UTC+2 on the 10th is 23:30 UTC on the 9th: not today either.
        spend(session, "e3", "c1", 50_000, at=datetime(2026, 3, 10, 1, 30, tzinfo=timezone(timedelta(hours=2))))
        spend(session, "e4", "c2", 7_000_000, at=NOW)
        serving = {campaign.campaign_id: campaign for campaign in store.serving_campaigns(session, NOW)}

    assert sorted(serving) == ["c1", "c2", "upcoming"]
    c1 = serving["c1"]
    assert (c1.spent_micros, c1.spent_today_micros) == (550_000, 300_000)
    assert (serving["c2"].spent_micros, serving["c2"].spent_today_micros) == (7_000_000, 7_000_000)
    assert (serving["upcoming"].spent_micros, serving["upcoming"].spent_today_micros) == (0, 0)
    assert c1.countries == frozenset({"FR"}) and c1.genders == frozenset({"M"})
    assert c1.device_types == frozenset({"tablet"}) and (c1.age_min, c1.age_max) == (18, None)
    assert serving["c2"].countries == frozenset() and serving["c2"].pricing_model is PricingModel.CPA
    assert serving["c2"].bid_micros == 20_000_000 and c1.status is CampaignStatus.ACTIVE
    assert c1.flight_end == datetime(2026, 4, 9, 12, 0, tzinfo=UTC)


def test_serving_campaigns_refuses_a_naive_time(sessions):
    with sessions() as session, pytest.raises(ValueError, match="naive"):
        store.serving_campaigns(session, datetime(2026, 3, 10, 12, 0))


def test_the_change_marker_moves_on_create_stop_and_spend_only(sessions):
    with sessions() as session:
        markers = [store.campaign_change_marker(session)]
        store.apply_instruction(session, create("c1"))
        markers.append(store.campaign_change_marker(session))
        spend(session, "e1")
        markers.append(store.campaign_change_marker(session))
        spend(session, "e1")  # duplicate
        store.apply_instruction(session, create("c1"))  # replay
        assert store.campaign_change_marker(session) == markers[-1]
        store.apply_instruction(session, stop("c1"))
        markers.append(store.campaign_change_marker(session))
    assert len(set(markers)) == 4


def test_a_session_kept_open_by_a_reader_sees_other_writers_commits(sessions):
    with sessions() as reader, sessions() as writer:
        store.apply_instruction(writer, create("c1"))
        marker = store.campaign_change_marker(reader)
        assert store.get_campaign(reader, "c1").spent_micros == 0
        assert [c.spent_today_micros for c in store.serving_campaigns(reader, NOW)] == [0]
        spend(writer, "e1", cost=5)
        store.apply_instruction(writer, create("c2"))
        assert store.campaign_change_marker(reader) != marker
        assert store.get_campaign(reader, "c1").spent_micros == 5
        assert [c.spent_today_micros for c in store.serving_campaigns(reader, NOW)] == [5, 0]
        assert not reader.in_transaction()  # the reads hold no snapshot (and no WAL checkpoint back)


# --- spend ---


def test_record_spend_charges_once_per_event_and_never_past_a_budget(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=1_000_000, daily_budget_micros=700_000))
        first = spend(session, "e1", cost=250_000)
        second = spend(session, "e2", cost=400_000)
        replay = spend(session, "e1", cost=250_000)
        over_total = spend(session, "e3", cost=400_000)  # 650k + 400k > the 1M total budget
        over_day = spend(session, "e4", cost=100_000)  # fits the total, not the day's 700k
        exact = spend(session, "e5", cost=50_000)  # 700k: exactly the day's budget
        unknown = spend(session, "e6", campaign_id="ghost")
        ledger = session.scalars(select(SpendLedgerEntry.event_id).order_by(SpendLedgerEntry.event_id)).all()
        view = store.get_campaign(session, "c1", now=NOW)

    assert (first.outcome, first.spent_micros, first.remaining_micros) == (SpendOutcome.RECORDED, 250_000, 750_000)
    assert (second.spent_today_micros, second.daily_remaining_micros) == (650_000, 50_000)
    assert (replay.outcome, replay.spent_micros, replay.remaining_micros) == (SpendOutcome.DUPLICATE, 650_000, 350_000)
    assert (over_total.outcome, over_total.spent_micros) == (SpendOutcome.OVER_BUDGET, 650_000)
    assert (over_day.outcome, over_day.spent_today_micros) == (SpendOutcome.OVER_BUDGET, 650_000)
    assert (exact.outcome, exact.spent_today_micros, exact.daily_remaining_micros) == (
        SpendOutcome.RECORDED,
        700_000,
        0,
    )
    assert unknown.outcome is SpendOutcome.UNKNOWN_CAMPAIGN
    assert ledger == ["e1", "e2", "e5"]
    assert (view.spent_micros, view.spent_today_micros, view.remaining_budget_micros) == (700_000, 700_000, 300_000)


def test_record_spend_refuses_negative_costs_and_naive_times(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        with pytest.raises(ValueError, match="cost_micros"):
            spend(session, "e1", cost=-1)
        with pytest.raises(ValueError, match="naive"):
            spend(session, "e1", at=datetime(2026, 3, 10, 12, 0))
        assert store.get_campaign(session, "c1").spent_micros == 0


def charge(event_id: str, campaign_id: str = "c1", cost: int = 250_000, auction_id: str | None = None):
    return store.Charge(event_id, auction_id or f"auction-{event_id}", campaign_id, "click", cost, NOW)


def test_a_batch_of_charges_is_one_transaction_with_a_result_per_charge(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=1_000_000, daily_budget_micros=900_000))
        store.apply_instruction(session, create("c2", total_budget_micros=2_000_000, daily_budget_micros=2_000_000))
        spend(session, "old", cost=100_000)
        results = store.record_spends(
            session,
            [
                charge("e1", "c2", 300_000),
                charge("old", "c1", 100_000),  # charged in an earlier transaction
                charge("e2", "c1", 250_000),
                charge("e2", "c1", 250_000),  # the same event twice in the batch
                charge("e3", "c1", 50_000, auction_id="auction-e2"),  # a second event of a billed auction
                charge("e4", "ghost", 10_000),
                charge("e5", "c2", 400_000),
                charge("e6", "c1", 700_000),  # would take c1 to 1,050,000 of its 1,000,000
            ],
        )
        ledger = dict(session.execute(select(SpendLedgerEntry.event_id, SpendLedgerEntry.cost_micros)).all())
        days = dict(session.execute(select(DailySpend.campaign_id, DailySpend.spent_micros)).all())
        c1, c2 = store.get_campaign(session, "c1", now=NOW), store.get_campaign(session, "c2", now=NOW)

    outcomes = [result.outcome for result in results]
    assert outcomes == [
        SpendOutcome.RECORDED, SpendOutcome.DUPLICATE, SpendOutcome.RECORDED, SpendOutcome.DUPLICATE,
        SpendOutcome.DUPLICATE, SpendOutcome.UNKNOWN_CAMPAIGN, SpendOutcome.RECORDED, SpendOutcome.OVER_BUDGET,
    ]  # fmt: skip
    # c2's charges in (campaign, event) order: e1 (300,000), then e5.
    assert (results[0].spent_micros, results[6].spent_micros, results[6].remaining_micros) == (
        300_000, 700_000, 1_300_000,
    )  # fmt: skip
    # A duplicate reports the campaign's spend without itself: c1's charges run e2, e2, e3, old,
    # so each of them sees old + e2.
    assert [r.spent_micros for r in results[1:5]] == [350_000, 350_000, 350_000, 350_000]
    assert (results[3].spent_today_micros, results[3].daily_remaining_micros) == (350_000, 550_000)
    assert (results[7].spent_micros, results[7].remaining_micros) == (350_000, 650_000)  # refused, not charged
    assert ledger == {"old": 100_000, "e1": 300_000, "e2": 250_000, "e5": 400_000}
    assert days == {"c1": 350_000, "c2": 700_000}
    assert (c1.spent_micros, c2.spent_micros) == (350_000, 700_000)


def test_a_batch_with_a_bad_charge_writes_nothing(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        with pytest.raises(ValueError, match="cost_micros"):
            store.record_spends(session, [charge("e1", cost=100), charge("e2", cost=-5)])
        assert store.get_campaign(session, "c1").spent_micros == 0
        assert session.scalar(select(func.count()).select_from(SpendLedgerEntry)) == 0


def test_a_charge_billed_by_a_concurrent_transaction_is_taken_back(sessions):
    # The race record_spends' look at the ledger cannot see: the row lands between it and the insert.
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        spend(session, "e1", cost=250_000)
        before = session.execute(select(Campaign.spent_micros, Campaign.revision)).one()
        store.begin_write(session)
        ledger_insert = store._insert_new(session, SpendLedgerEntry.__table__)
        again = store._charge(session, ledger_insert, charge("e1", cost=250_000), NOW.date(), NOW)
        session.commit()
        after = session.execute(select(Campaign.spent_micros, Campaign.revision)).one()
    assert (again.outcome, again.spent_micros, again.spent_today_micros) == (SpendOutcome.DUPLICATE, 250_000, 250_000)
    assert tuple(after) == tuple(before) == (250_000, before.revision)


class CountedLedger(SpendLedger):
    """The service's spend ledger, noting the size of each write (and failing the ones asked to)."""

    def __init__(self, sessions, failing: int = 0) -> None:
        super().__init__(sessions)
        self.writes: list[int] = []
        self.failing = failing

    def _write(self, charges):
        self.writes.append(len(charges))
        if self.failing:
            self.failing -= 1
            raise OSError("disk I/O error")
        return super()._write(charges)


def test_the_service_ledger_writes_concurrent_charges_in_group_commits(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=10**9, daily_budget_micros=10**9))
    ledger = CountedLedger(sessions)
    ledger.MAX_CHARGES_PER_WRITE = 25

    async def requests():
        first = await ledger.record([charge("lone", cost=7)])  # nothing else queued: written alone
        rest = await asyncio.gather(
            *(ledger.record([charge(f"e{i}", cost=1_000 + i)]) for i in range(60)),
            ledger.record([charge("e0", cost=1_000), charge("e61", cost=5)]),
        )
        return first, rest

    first, rest = asyncio.run(requests())
    assert ledger.writes == [1, 25, 25, 12]  # 62 charges queued while the first write was in flight
    assert first[0].outcome is SpendOutcome.RECORDED
    assert [r[0].outcome for r in rest[:60]] == [SpendOutcome.RECORDED] * 60
    assert [r.outcome for r in rest[60]] == [SpendOutcome.DUPLICATE, SpendOutcome.RECORDED]
    with sessions() as session:
        assert store.get_campaign(session, "c1").spent_micros == 7 + 60 * 1_000 + sum(range(60)) + 5


def test_a_failed_ledger_write_fails_every_request_it_held_and_the_next_write_runs(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
    ledger = CountedLedger(sessions, failing=1)

    async def requests():
        return await asyncio.gather(*(ledger.record([charge(f"e{i}")]) for i in range(3)), return_exceptions=True)

    failed = asyncio.run(requests())
    assert [type(result) for result in failed] == [OSError] * 3
    retried = asyncio.run(requests())
    assert [result[0].outcome for result in retried] == [SpendOutcome.RECORDED] * 3
    assert ledger.writes == [3, 3]


THREADS, EVENTS_PER_THREAD = 8, 50
COST = {"c1": 130_000, "c2": 70_001}


def _events_of(worker: int) -> list[tuple[str, str]]:
    """(event_id, campaign_id): 30 own events, and 20 shared with the neighbouring worker (duplicates)."""
    own = [(f"w{worker}-e{i}", "c1" if i % 3 else "c2") for i in range(30)]
    shared = [(f"shared-{(worker // 2)}-e{i}", "c2" if i % 2 else "c1") for i in range(20)]
    return own + shared


def _record_all(sessions: sessionmaker[Session], worker: int, barrier: threading.Barrier | None) -> list[str]:
    if barrier is not None:
        barrier.wait()
    outcomes = []
    with sessions() as session:
        for event_id, campaign_id in _events_of(worker):
            result = spend(session, event_id, campaign_id, COST[campaign_id], at=NOW + timedelta(minutes=worker))
            outcomes.append(str(result.outcome))
    return outcomes


def _assert_exact_totals(sessions: sessionmaker[Session], outcomes: list[str], workers: int) -> None:
    # 30 own events per worker and 20 shared per pair of workers: each pair's 20 are charged once.
    unique_c1 = workers * 20 + (workers // 2) * 10
    unique_c2 = workers * 10 + (workers // 2) * 10
    assert Counter(outcomes) == {"recorded": unique_c1 + unique_c2, "duplicate": (workers // 2) * 20}
    with sessions() as session:
        spent = dict(session.execute(select(Campaign.campaign_id, Campaign.spent_micros)).all())
        daily = dict(session.execute(select(DailySpend.campaign_id, DailySpend.spent_micros)).all())
        ledger = session.scalar(select(func.count()).select_from(SpendLedgerEntry))
    assert spent == {"c1": unique_c1 * 130_000, "c2": unique_c2 * 70_001}
    assert daily == spent
    assert ledger == unique_c1 + unique_c2


def test_concurrent_spend_from_threads_is_exact(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        store.apply_instruction(session, create("c2"))
    barrier = threading.Barrier(THREADS)
    outcomes: list[list[str]] = [[] for _ in range(THREADS)]

    def work(worker: int) -> None:
        outcomes[worker] = _record_all(sessions, worker, barrier)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(len(result) == EVENTS_PER_THREAD for result in outcomes)
    _assert_exact_totals(sessions, [outcome for result in outcomes for outcome in result], THREADS)


def _record_in_process(url: str, worker: int) -> list[str]:
    engine = make_engine(Settings(campaign_db_url=url))
    try:
        return _record_all(make_session_factory(engine), worker, None)
    finally:
        engine.dispose()


def test_concurrent_spend_from_processes_is_exact(settings, sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        store.apply_instruction(session, create("c2"))
    workers = 4
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(_record_in_process, [(settings.campaign_db_url, worker) for worker in range(workers)])
    _assert_exact_totals(sessions, [outcome for result in results for outcome in result], workers)


def test_spend_by_campaign_hour_sums_the_ledger_per_utc_hour(sessions):
    at = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        store.apply_instruction(session, create("c2"))
        spend(session, "before", "c1", 1, at=at - timedelta(microseconds=1))
        spend(session, "a", "c1", 100_000, at=at)
        spend(session, "b", "c1", 250_000, at=at + timedelta(minutes=59, seconds=59))
        spend(session, "c", "c1", 40_000, at=at + timedelta(hours=1))
        spend(session, "d", "c2", 5_000_000, at=datetime(2026, 3, 10, 12, 30, tzinfo=timezone(timedelta(hours=2))))
        spend(session, "b", "c1", 250_000, at=at + timedelta(minutes=5))  # duplicate: not counted twice
        spend(session, "at-end", "c2", 9, at=at + timedelta(hours=2))
        totals = store.spend_by_campaign_hour(session, at, at + timedelta(hours=2))
    assert totals == {
        ("c1", datetime(2026, 3, 10, 10, 0, tzinfo=UTC)): 350_000,
        ("c1", datetime(2026, 3, 10, 11, 0, tzinfo=UTC)): 40_000,
        ("c2", datetime(2026, 3, 10, 10, 0, tzinfo=UTC)): 5_000_000,
    }


def test_daily_spend_is_bucketed_by_the_events_utc_day(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        spend(session, "late", "c1", 10, at=datetime(2026, 3, 10, 20, 0, tzinfo=timezone(timedelta(hours=-5))))
        spend(session, "early", "c1", 20, at=datetime(2026, 3, 11, 0, 0, tzinfo=UTC))
        spend(session, "day-before", "c1", 40, at=datetime(2026, 3, 10, 23, 59, tzinfo=UTC))
        days = dict(session.execute(select(DailySpend.day, DailySpend.spent_micros)).all())
    assert days == {date(2026, 3, 11): 30, date(2026, 3, 10): 40}


def test_with_a_short_simulated_day_the_daily_budget_resets_every_day_of_it(sessions):
    origin = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
    hours = DayClock(3600, int(origin.timestamp()))
    with sessions() as session:
        store.apply_instruction(session, create("c1", total_budget_micros=10_000, daily_budget_micros=100))
        charges = [
            store.Charge("a", "auction-a", "c1", "click", 60, origin + timedelta(minutes=10)),
            store.Charge("b", "auction-b", "c1", "click", 60, origin + timedelta(minutes=50)),  # past 100 that day
            store.Charge("c", "auction-c", "c1", "click", 60, origin + timedelta(minutes=70)),  # the next day
        ]
        outcomes = [result.outcome for result in store.record_spends(session, charges, hours)]
        assert outcomes == [SpendOutcome.RECORDED, SpendOutcome.OVER_BUDGET, SpendOutcome.RECORDED]
        view = store.get_campaign(session, "c1", now=origin + timedelta(minutes=80), days=hours)
        assert (view.spent_micros, view.spent_today_micros) == (120, 60)
        (serving,) = store.serving_campaigns(session, origin + timedelta(minutes=20), days=hours)
        assert serving.spent_today_micros == 60 and serving.pacing_mode == PacingMode.EVEN


def test_a_campaigns_pacing_mode_is_stored_and_served(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("fast", pacing_mode=PacingMode.ASAP))
        store.apply_instruction(session, create("even"))
        assert store.get_campaign(session, "fast").spec.pacing_mode == PacingMode.ASAP
        modes = {c.campaign_id: c.pacing_mode for c in store.serving_campaigns(session, NOW)}
    assert modes == {"fast": PacingMode.ASAP, "even": PacingMode.EVEN}


def test_a_campaigns_goals_are_stored_and_served(sessions):
    goals = CampaignGoals(
        optimize=True, conversion_value_micros=12_000_000, max_bid_micros=900_000,
        platform_bid_limits_micros={"app/ctv": 600_000},
    )  # fmt: skip
    with sessions() as session:
        store.apply_instruction(session, create("optimized", goals=goals))
        store.apply_instruction(session, create("plain"))
        assert store.get_campaign(session, "optimized").spec.goals == goals
        assert store.get_campaign(session, "plain").spec.goals == CampaignGoals()
        served = {c.campaign_id: c.goals for c in store.serving_campaigns(session, NOW)}
    assert served == {"optimized": goals, "plain": CampaignGoals()}
    assert served["optimized"].value_micros == 12_000_000 and served["plain"].value_micros == 0


def test_a_campaigns_audience_split_is_stored_and_served(sessions):
    split = AudienceSplit(experiment="optimizer-ab", arm=1, arms=2)
    with sessions() as session:
        store.apply_instruction(
            session, create("arm-1", targeting=Targeting(countries=["Italy"], audience_split=split))
        )
        store.apply_instruction(session, create("everyone"))
        assert store.get_campaign(session, "arm-1").spec.targeting.audience_split == split
        served = {c.campaign_id: c for c in store.serving_campaigns(session, NOW)}
    assert served["arm-1"].audience_split == split and served["arm-1"].countries == {"Italy"}
    assert served["everyone"].audience_split is None


def test_an_auction_is_charged_once_whatever_event_ids_arrive(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        kwargs = {"auction_id": "a-1", "campaign_id": "c1", "event_type": "click", "event_time": NOW}
        first = store.record_spend(session, event_id="click-1", cost_micros=300_000, **kwargs)
        second = store.record_spend(session, event_id="click-2", cost_micros=300_000, **kwargs)
        assert (first.outcome, second.outcome) == (SpendOutcome.RECORDED, SpendOutcome.DUPLICATE)
        assert store.get_campaign(session, "c1").spent_micros == 300_000


def served(auction_id: str, campaign_id: str = "c1") -> store.ServedAuctionRow:
    return store.ServedAuctionRow(
        auction_id=auction_id, campaign_id=campaign_id, advertiser_id="adv-1", ad_id="ad-1", pricing_model="CPC",
        clearing_price_micros=310_000, billable_cost_micros=310_000, reserved_micros=15_500, pctr=0.05,
        user_id="u1", device_type="mobile", channel="web", content_type="display", model_version="3",
        served_at=NOW, expires_at=NOW + timedelta(hours=1),
    )  # fmt: skip


def test_served_auctions_are_stored_in_batches_once_and_read_back(sessions):
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        assert store.record_served_auctions(session, [served("a-1"), served("a-2")]) == 2
        assert store.record_served_auctions(session, [served("a-2"), served("a-3")]) == 1  # a-2 is kept once
        assert store.record_served_auctions(session, []) == 0
        row = store.served_auction(session, "a-2")
        assert store.served_auction(session, "a-9") is None
    assert row == served("a-2")
    assert row.served_at.tzinfo is not None


def test_sqlite_served_auctions_are_written_as_sqlalchemy_writes_them_in_statements_of_500(sqlite_settings):
    engine = make_engine(sqlite_settings)
    migrate(sqlite_settings, engine)
    sessions = make_session_factory(engine)
    plus_two = timezone(timedelta(hours=2))
    times = [
        NOW,  # no microseconds: still written with six digits, as SQLAlchemy does
        datetime(2026, 3, 10, 14, 30, 5, 123_456, tzinfo=plus_two),  # another zone: stored as UTC
    ]
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        # SQLAlchemy's own INSERT, for the reference text of each time.
        session.execute(
            insert(ServedAuction),
            [
                {**vars_of(served(f"ref-{i}")), "served_at": at, "expires_at": at + timedelta(hours=1)}
                for i, at in enumerate(times)
            ],
        )
        session.commit()
        rows = [
            replace(served(f"fast-{i}"), served_at=at, expires_at=at + timedelta(hours=1)) for i, at in enumerate(times)
        ]
        many = [served(f"many-{i}") for i in range(1_100)]  # three statements: 500, 500 and 100 rows
        assert store.record_served_auctions(session, rows + many) == 1_102
        assert store.record_served_auctions(session, [*many[450:560], served("new")]) == 1  # ids across statements
        with pytest.raises(ValueError, match="naive"):
            store.record_served_auctions(session, [replace(served("naive"), served_at=datetime(2026, 3, 10))])
        both_times = "SELECT auction_id, served_at || ' / ' || expires_at FROM served_auctions"
        text = dict(session.connection().exec_driver_sql(both_times).tuples().all())
        assert store.served_auction(session, "fast-1") == rows[1]
        assert store.served_auction(session, "naive") is None  # the failed batch wrote nothing
        assert len(text) == 2 + 1_102 + 1
    assert text["fast-0"] == text["ref-0"] == "2026-03-10 12:00:00.000000 / 2026-03-10 13:00:00.000000"
    assert text["fast-1"] == text["ref-1"] == "2026-03-10 12:30:05.123456 / 2026-03-10 13:30:05.123456"
    engine.dispose()


def vars_of(row: store.ServedAuctionRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in row.__dataclass_fields__}


# --- the service's served auctions: a window in the shared store, the rest in the campaign store ---


@pytest.fixture
def service_state(sqlite_settings, shared_store_url):
    """A service state with only its stores (no model, features or broker): the served-auction book."""
    settings = sqlite_settings.model_copy(
        update={
            "served_in_memory_s": 600,
            "shared_store_url": shared_store_url,
            "shared_store_namespace": shared_namespace(),
        }
    )
    engine = make_engine(settings)
    migrate(settings, engine)
    sessions = make_session_factory(engine)
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
    yield ServiceState(settings=settings, sessions=sessions, model=None, features=None, producer=None)
    engine.dispose()


def hold(state: ServiceState, row: store.ServedAuctionRow) -> HoldRefused | None:
    return state.shared.hold(Hold(row, 10**12, 10**12, 0, 0, frequency_cap=None))


def test_a_served_auction_is_in_the_shared_store_for_its_window_then_read_back_from_the_campaign_store(service_state):
    rows = [replace(served(f"a-{index}"), served_at=datetime.now(UTC)) for index in range(3)]
    for row in rows:
        assert hold(service_state, row) is None
        service_state.remember_served(row)
    assert service_state.served_auctions_shared(["a-0", "a-1", "a-9"]) == {"a-0": rows[0], "a-1": rows[1], "a-9": None}
    ttl = service_state.shared.client.ttl(service_state.shared.key("auction", "a-1"))
    assert 590 <= ttl <= 600  # SERVED_IN_MEMORY_S
    assert service_state.flush_served() == 3
    service_state.shared.client.delete(service_state.shared.key("auction", "a-1"))  # as at the window's end
    assert service_state.served_auctions_shared(["a-1"]) == {"a-1": None}
    assert service_state.served_auction("a-1") == rows[1]  # from the campaign store


def test_a_failed_flush_keeps_the_auctions_for_the_next(service_state):
    working = service_state.sessions
    service_state.remember_served(served("a-1"))
    service_state.sessions = sessionmaker(create_engine("sqlite:////nonexistent-dir/campaigns.db"))
    with pytest.raises(Exception, match="unable to open database file"):
        service_state.flush_served()
    service_state.remember_served(served("a-2"))
    service_state.sessions = working
    assert service_state.flush_served() == 2
    assert service_state.flush_served() == 0
    assert [service_state.served_auction(a) for a in ("a-1", "a-2")] == [served("a-1"), served("a-2")]


def test_a_flush_returns_once_a_batch_another_thread_is_writing_is_stored(service_state):
    # The housekeeping thread takes the queue and is still writing it when a caller flushes: the caller's
    # flush must not return (with nothing of its own to write) before that batch is in the store.
    working, writing, release = service_state.sessions, threading.Event(), threading.Event()

    def slow_sessions():
        writing.set()
        assert release.wait(10)
        return working()

    service_state.remember_served(served("a-1"))
    service_state.sessions = slow_sessions
    housekeeping = threading.Thread(target=service_state.flush_served)
    housekeeping.start()
    assert writing.wait(10)
    service_state.sessions = working
    caller = threading.Thread(target=service_state.flush_served)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive(), "the caller's flush returned while the batch was still being written"
    release.set()
    housekeeping.join(10)
    caller.join(10)
    with working() as session:
        assert store.served_auction(session, "a-1") == served("a-1")


# --- a lost shared store, rebuilt from the campaign store ---

SERVED_IN_THE_HOUR = 40_000  # as ORM objects, about 150 MB; streamed, a few


def test_a_lost_shared_store_is_rebuilt_from_the_hours_auctions_streamed_and_a_hold_meanwhile_counts_once(
    sessions, shared_store_url
):
    def row(i: int) -> store.ServedAuctionRow:
        return replace(served(f"open-{i}", "c2" if i % 3 == 0 else "c1"), user_id=f"u{i % 1_000}")

    rows = [row(i) for i in range(SERVED_IN_THE_HOUR)]
    gone = [
        replace(served("expired"), expires_at=NOW),  # its events are refused from now: nothing to hold
        replace(served("yesterday"), served_at=NOW - timedelta(hours=2), expires_at=NOW + timedelta(hours=1)),
    ]
    with sessions() as session:
        store.apply_instruction(session, create("c1"))
        store.apply_instruction(session, create("c2"))
        assert store.record_served_auctions(session, rows + gone) == SERVED_IN_THE_HOUR + 2
        for i in (1, 2, 3):  # billed: their reservation became spend
            store.record_spend(session, event_id=f"e{i}", auction_id=f"open-{i}", campaign_id=row(i).campaign_id,
                               event_type="click", cost_micros=310_000, event_time=NOW)  # fmt: skip
    books = SharedBooks(shared_store_url, namespace=shared_namespace(), timeout_s=5.0, served_s=600, auction_ttl_s=3600)

    def held_meanwhile(source):
        # Another replica holds open-4 (its row already written behind) and a new auction once the wipe is done.
        assert books.hold(Hold(row(4), 10**12, 10**12, 0, 0, frequency_cap=None)) is None
        late = replace(served("late"), served_at=NOW + timedelta(seconds=30))
        assert books.hold(Hold(late, 10**12, 10**12, 0, 0, frequency_cap=100)) is None
        yield from source

    now = NOW + timedelta(minutes=1)
    tracemalloc.start()
    try:
        with sessions() as session:
            source = rebuild_source(session, now, auction_ttl_s=3600)
            assert books.rebuild(replace(source, open_auctions=held_meanwhile(source.open_auctions))) is True
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"the rebuild held {peak / 2**20:.0f} MiB at its peak"
    assert books.built() and books.rebuild(source) is False
    in_c2 = len(range(0, SERVED_IN_THE_HOUR, 3))
    held, held_today, spent, _ = books.exposure(NOW.date())
    # Every open reservation once (open-4 too), the late hold, none of the billed, expired or yesterday's.
    assert held == held_today == {"c1": (SERVED_IN_THE_HOUR - in_c2 - 2 + 1) * 15_500, "c2": (in_c2 - 1) * 15_500}
    assert spent == {"c1": 2 * 310_000, "c2": 310_000}
    # Today's ads per user, from the campaign store: i = 7, 1007, ...: 40 ads, every third of c2.
    assert books.frequency_today("u7", NOW.date()) == {"c1": 27, "c2": 13}
    # u1's also had the expired and the 10:00 ad; a counter takes the larger of its own and the store's count, so
    # a rebuild done again after one was cut off counts nothing twice.
    assert books.frequency_today("u1", NOW.date()) == {"c1": 29, "c2": 13}
    assert books.client.zcard(books.key("res", "exp")) == SERVED_IN_THE_HOUR - 3 + 1
    books.client.delete(*books.client.keys(f"{books.ns}:*"))
    books.close()
