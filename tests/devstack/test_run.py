"""`make run`'s wait for the stream: it waits for the simulation's counts, not its latest event time."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table
from adstream.days import DayClock
from adstream.events import CampaignSpec
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.campaign_store.instructions import create_instruction, stop_instruction
from devstack import run as run_module
from devstack.run import (
    Counts,
    RunState,
    Simulation,
    StageFailed,
    invalid_traffic_lines,
    landed_counts,
    reconciliation_line,
    score_invalid_traffic,
    wait_for_stream,
)
from simulator.bots import DEFAULT_DATACENTER_CIDRS
from simulator.ivt_scoring import TRUTH_COLUMNS, Ratio
from spark_jobs.billing.reports import reconciliation_path
from tests.conftest import make_settings

START = datetime(2026, 11, 24, 12, 30, 20, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def write_silver(settings, times: list[datetime]) -> None:
    location, _ = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    write_deltalake(location, pa.table({"event_time": pa.array(times, STAMP)}), mode="append")


def write_gold(settings, rows: list[tuple[datetime, int]]) -> None:
    location, _ = settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    frame = pa.table({"minute": pa.array([m for m, _ in rows], STAMP), "impressions": [n for _, n in rows]})
    write_deltalake(location, frame, mode="append")


def test_counts_only_what_landed_since_the_simulation_began(tmp_path):
    settings = make_settings(tmp_path)
    assert landed_counts(settings, START) == Counts(0, 0)  # no tables yet
    earlier_run = START - timedelta(hours=2)
    write_silver(settings, [earlier_run, START + timedelta(seconds=1), START + timedelta(seconds=50)])
    write_gold(settings, [(earlier_run, 40), (START.replace(second=0), 3), (START + timedelta(minutes=1), 4)])
    assert landed_counts(settings, START) == Counts(events=2, impressions=7)


def test_a_later_batch_is_not_taken_for_a_caught_up_stream(tmp_path):
    settings = make_settings(tmp_path)
    # The newest event has landed, but only 2 of the 3 events the simulator sent.
    write_silver(settings, [START + timedelta(seconds=1), START + timedelta(seconds=60)])
    write_gold(settings, [(START.replace(second=0), 2)])
    with pytest.raises(StageFailed, match=r"holds 2 events .* of the 3 \(2\)"):
        wait_for_stream(settings, START, Counts(events=3, impressions=2), timeout_s=0.5)
    write_silver(settings, [START + timedelta(seconds=30)])
    assert wait_for_stream(settings, START, Counts(events=3, impressions=2), timeout_s=5) == Counts(3, 2)


def test_the_bill_line_says_what_reconciliation_found(tmp_path):
    settings = make_settings(tmp_path)
    hour = START.replace(minute=0, second=0)
    assert reconciliation_line(settings, hour) == "not reconciled"
    path = reconciliation_path(settings.reports_dir.resolve(), hour)
    path.parent.mkdir(parents=True)
    path.write_text('{"checked": ["bill", "ledger", "auction log"], "mismatches": []}')
    assert reconciliation_line(settings, hour) == "0 campaign(s) differ from the ledger and auction log"
    path.write_text('{"checked": ["bill", "ledger"], "mismatches": [{"campaign_id": "cmp-1", "bill_micros": 5}]}')
    assert reconciliation_line(settings, hour) == "1 campaign(s) differ from the ledger: cmp-1"


@pytest.mark.parametrize(("rate", "in_flight"), [(20, 16), (26, 16), (27, 17), (200, 119), (1000, 595)])
def test_visits_in_flight_grow_with_the_rate(rate, in_flight):
    # 0.35 s per visit at the diurnal peak, 1.7x the mean rate: 200/s needs 119 in flight; never below 16
    assert Simulation(rate=rate).concurrency == in_flight


# --- the IVT score of make run's summary ---


def write_truth(path, rows: list[tuple[str, str, str, str, str]]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(rows)


# event_id -> (event type, auction): the fast clicker's impression and click share an auction.
EVENT_OF = {
    "c1": ("impression", "a-c"), "c2": ("click", "a-c"), "f1": ("impression", "a-f"), "f2": ("click", "a-f"),
    "h1": ("impression", "a-h"), "old": ("impression", "a-old"),
}  # fmt: skip


def write_tagged_silver(settings, rows: list[tuple[str, datetime, str | None, str | None, int]]) -> None:
    location, _ = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    ids, times, categories, reasons, costs = zip(*rows, strict=True)
    frame = pa.table(
        {
            "event_id": pa.array(ids, pa.string()),
            "event_type": pa.array([EVENT_OF[i][0] for i in ids], pa.string()),
            "auction_id": pa.array([EVENT_OF[i][1] for i in ids], pa.string()),
            "event_time": pa.array(times, STAMP),
            "ivt_category": pa.array(categories, pa.string()),
            "ivt_reason": pa.array(reasons, pa.string()),
            "cost_micros": pa.array(costs, pa.int64()),
        }
    )
    write_deltalake(location, frame, mode="append")


def ivt_state(tmp_path) -> RunState:
    state = RunState(simulation_start=START, ground_truth_file=tmp_path / "truth.csv")
    write_truth(
        state.ground_truth_file,
        [
            ("c1", "impression", "crawler", "givt", "accepted"),
            ("c2", "click", "crawler", "givt", "duplicate"),  # taken on an earlier try: in silver too
            ("c3", "click", "crawler", "givt", "rejected"),  # refused: never in silver, not scored
            ("f1", "impression", "fast_clicker", "", "accepted"),
            ("f2", "click", "fast_clicker", "givt", "accepted"),
            ("h1", "impression", "human", "", "accepted"),
        ],
    )
    return state


def test_the_ivt_stage_scores_silvers_tags_of_this_runs_events(tmp_path, capsys):
    settings = make_settings(tmp_path)
    state = ivt_state(tmp_path)
    later = START + timedelta(seconds=5)
    write_tagged_silver(
        settings,
        [
            ("c1", later, "givt", "known_bot_ua", 0),
            ("c2", later, "givt", "known_bot_ua", 0),
            ("f1", later, None, None, 4_000),
            ("f2", later, "givt", "fast_click", 0),
            ("h1", later, None, None, 4_000),
            ("old", START - timedelta(hours=3), "givt", "known_bot_ua", 0),  # an earlier run's
        ],
    )
    score_invalid_traffic(settings, state)
    assert state.ivt is not None and state.ivt_misses == []
    # f1 too: tagged after the fact, a bot's, so right; recall counts what the service could see.
    assert state.ivt.givt_precision == Ratio(4, 4) and state.ivt.givt_recall == Ratio(3, 3)
    # Its impression was charged when it came; its auction's fast click tags it after the fact, as billing does.
    fast = state.ivt.behaviours["fast_clicker"]
    assert (fast.charged_micros, fast.billed_micros, fast.tagged) == (4_000, 0, {"givt": 2})
    assert state.ivt.behaviours["human"].billed_micros == 4_000
    verdict = (
        "GIVT targets (precision >= 0.95, recall >= 0.9 per bot, nothing charged for GIVT, nothing billed for "
        "bots): met"
    )
    assert verdict in capsys.readouterr().out
    lines = "\n".join(invalid_traffic_lines(state))
    assert (
        "bots' events charged 0.004 USD in all, 0 USD on GIVT-detectable ones (target 0); billed after the IVT "
        "credit 0 USD (target 0)"
    ) in lines
    assert lines.endswith(verdict)


def test_a_missed_target_is_reported_and_kept_for_the_runs_exit_status(tmp_path):
    settings = make_settings(tmp_path)
    state = ivt_state(tmp_path)
    later = START + timedelta(seconds=5)
    write_tagged_silver(
        settings,
        [
            ("c1", later, "givt", "known_bot_ua", 0),
            ("c2", later, None, None, 0),
            ("f1", later, None, None, 0),
            ("f2", later, None, None, 900_000),  # a too-fast click charged
            ("h1", later, "givt", "datacenter_ip", 0),
        ],
    )
    score_invalid_traffic(settings, state)
    assert state.ivt_misses == [
        "GIVT precision 0.500 (1/2) < 0.95",
        "crawler: GIVT recall 0.500 (1/2) < 0.9",
        "fast_clicker: GIVT recall 0.000 (0/1) < 0.9",
        "fast_clicker: 0.9 USD charged for GIVT events",
        "fast_clicker: 0.9 USD billed",
    ]
    assert "MISSED: GIVT precision 0.500 (1/2)" in invalid_traffic_lines(state)[-1]


def test_a_silver_without_ivt_tags_misses_the_targets(tmp_path):
    settings = make_settings(tmp_path)
    later = START + timedelta(seconds=5)
    location, _ = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    ids = ["c1", "c2", "f1", "f2", "h1"]
    frame = pa.table({"event_id": ids, "event_time": pa.array([later] * 5, STAMP), "cost_micros": [0, 0, 0, 0, 9]})
    write_deltalake(location, frame)  # from before the stream tagged IVT
    state = ivt_state(tmp_path)
    score_invalid_traffic(settings, state)
    assert state.ivt_misses == [
        "no event was tagged GIVT",
        "crawler: GIVT recall 0.000 (0/2) < 0.9",
        "fast_clicker: GIVT recall 0.000 (0/1) < 0.9",
    ]


def test_bots_whose_events_never_reached_silver_miss_the_targets(tmp_path):
    settings = make_settings(tmp_path)
    state = ivt_state(tmp_path)
    write_tagged_silver(settings, [("h1", START + timedelta(seconds=5), None, None, 0)])
    score_invalid_traffic(settings, state)
    assert state.ivt_misses == [
        "crawler: none of its 2 events is in silver",
        "fast_clicker: none of its 2 events is in silver",
    ]


def test_a_run_without_bots_has_nothing_to_score(tmp_path):
    settings = make_settings(tmp_path)
    state = RunState(simulation_start=START, ground_truth_file=tmp_path / "truth.csv")
    write_truth(state.ground_truth_file, [("h1", "impression", "human", "", "accepted")])
    score_invalid_traffic(settings, state)
    assert state.ivt is None and state.ivt_misses == [] and invalid_traffic_lines(state) == []


@pytest.mark.parametrize(("configured", "children_get"), [("", DEFAULT_DATACENTER_CIDRS), ("10.9.0.0/16", None)])
def test_make_run_gives_its_services_the_data_center_ranges_its_bots_come_from(
    tmp_path, monkeypatch, configured, children_get
):
    monkeypatch.setenv("IVT_DATACENTER_CIDRS", "")  # so that the test's end removes what run() sets
    monkeypatch.delenv("IVT_DATACENTER_CIDRS")
    monkeypatch.setattr(run_module, "stages", lambda plan: ())
    monkeypatch.setattr(run_module.services, "down", lambda settings: None)
    settings = make_settings(tmp_path).model_copy(update={"ivt_datacenter_cidrs": configured})
    assert run_module.run(settings, Simulation()) == 0
    # Unset when the settings name ranges: the children read the same settings (.env or environment).
    assert os.environ.get("IVT_DATACENTER_CIDRS") == children_get


def test_the_pacing_report_puts_the_modes_side_by_side():
    start = datetime(2026, 12, 6, 10, tzinfo=UTC)
    minute = lambda m: pd.Timestamp(start + timedelta(minutes=m))  # noqa: E731
    # A 4-minute day. "e" spends $1 a minute on a $4 plan exactly, held back at λ 0.5; "b" spends $1 of
    # its $4 at full bid all day; "a" spends its $4 in minute 0 (asap).
    minutes = pd.DataFrame(
        [
            {"campaign_id": cid, "minute": minute(m), "at": minute(m) + pd.Timedelta(seconds=30), "mode": mode,
             "daily_budget_micros": 4_000_000, "plan_budget_micros": 4_000_000, "plan_micros": 1_000_000 * (m + 1),
             "spent_today_micros": spent, "pacing_multiplier": multiplier, "throttle_rate": 0.0}
            for cid, mode, spends, multiplier in (("e", "even", [1, 2, 3, 4], 0.5), ("b", "even", [1, 1, 1, 1], 1.0),
                                                  ("a", "asap", [4, 4, 4, 4], 1.0))
            for m, spent in enumerate(s * 1_000_000 for s in spends)
        ]
    )  # fmt: skip
    # "h" was held back in minute 0, then bid at full speed and spent $1 of its $4: bound by its bid at the end.
    held_early = minutes[minutes["campaign_id"] == "b"].assign(campaign_id="h")
    held_early.loc[held_early["minute"] == minute(0), "pacing_multiplier"] = 0.5
    minutes = pd.concat([minutes, held_early], ignore_index=True)
    kpis = pd.DataFrame(
        [{"campaign_id": "e", "minute": minute(m), "spend_micros": 1_000_000, "clicks": 2, "conversions": 0}
         for m in range(4)]
        + [{"campaign_id": "h", "minute": minute(0), "spend_micros": 1_000_000, "clicks": 1, "conversions": 0}]
        + [{"campaign_id": "b", "minute": minute(0), "spend_micros": 1_000_000, "clicks": 1, "conversions": 0}]
        + [{"campaign_id": "a", "minute": minute(0), "spend_micros": 4_000_000, "clicks": 4, "conversions": 1}]
    )  # fmt: skip
    report = run_module.pacing_report(minutes, kpis, start, 240.0).set_index(["mode", "bound"])
    assert sorted(report.index) == [
        ("asap", "all"), ("even", "all"), ("even", "bid"), ("even", "bid, held earlier"), ("even", "budget"),
    ]  # fmt: skip
    assert report.loc[("even", "all"), "campaigns"] == 3 and report.loc[("even", "all"), "within_95_100"] == 1
    assert report.loc[("even", "budget"), "campaigns"] == 1 and report.loc[("even", "bid"), "campaigns"] == 2
    held_earlier = report.loc[("even", "bid, held earlier")]
    assert (held_earlier["campaigns"], held_earlier["spend_ratio_median"]) == (1, 0.25)
    budget, bid, asap = report.loc[("even", "budget")], report.loc[("even", "bid")], report.loc[("asap", "all")]
    assert budget["spend_ratio_median"] == 1.0 and bid["spend_ratio_median"] == 0.25
    assert asap["spend_ratio_median"] == 1.0
    assert budget["deviation_median"] == 0.0 and bid["deviation_median"] == pytest.approx(0.375)
    assert asap["deviation_median"] == pytest.approx(0.375)  # median of 3/4, 2/4, 1/4, 0/4
    # 99 % of $4 is reached 59.4 s into asap's first minute; 57.6 s into even's last.
    assert asap["first_exhausted_at"] == pytest.approx(59.4 / 240) and asap["exhausted_before_90"] == 1
    assert budget["first_exhausted_at"] == pytest.approx(237.6 / 240) and budget["exhausted_before_90"] == 0
    assert bid["exhausted"] == 0
    assert (report.loc[("even", "all"), "overspent"], asap["overspent"]) == (0, 0)
    assert budget["ecpc_usd"] == 0.5 and asap["ecpa_usd"] == 4.0
    # Named cohorts of even campaigns (make run's optimized campaigns and their twins) get rows of their own;
    # an asap campaign named in one is not in it.
    cohorts = {"optimized": ["e"], "static twin": ["b", "a"]}
    report = run_module.pacing_report(minutes, kpis, start, 240.0, cohorts=cohorts).set_index(["mode", "bound"])
    assert report.loc[("even", "optimized"), "spend_ratio_median"] == 1.0
    twins = report.loc[("even", "static twin")]
    assert (twins["campaigns"], twins["spend_ratio_median"]) == (1, 0.25)


def test_exhaustion_within_a_minute_cut_by_the_days_end_is_at_most_the_days_end():
    start = datetime(2026, 12, 6, 10, 0, 30, tzinfo=UTC)  # the day starts and ends half way into a minute
    kpis = pd.DataFrame(
        [{"campaign_id": "c", "minute": pd.Timestamp(datetime(2026, 12, 6, 10, m, tzinfo=UTC)),
          "spend_micros": 1_000_000} for m in range(3)]
    )  # fmt: skip
    share = run_module.exhaustion_share(kpis, pd.Series({"c": 3_000_000}), start, 120.0)
    assert share["c"] == 1.0  # the crossing falls 59.4 s into the minute from 10:02, after the day's end


def test_the_summary_reads_the_pacing_report_from_the_lake(tmp_path):
    settings = make_settings(tmp_path)
    start = datetime(2026, 12, 6, 10, tzinfo=UTC)
    state = run_module.RunState(day_origin=start, day_length_s=120.0, days=2)
    assert run_module.pacing_lines(settings, state) == ["  pacing             (no gold/pacing_minute yet)"]
    minute = lambda m: start + timedelta(minutes=m)  # noqa: E731
    rows = [
        {"campaign_id": "e", "minute": minute(m), "at": minute(m) + timedelta(seconds=30), "day_start": start,
         "mode": "even", "daily_budget_micros": 2_000_000, "plan_budget_micros": 2_000_000,
         "plan_micros": 1_000_000 * (m + 1), "spent_today_micros": 1_000_000 * (m + 1), "pacing_multiplier": 0.5,
         "throttle_rate": 0.0, "exhausts_at": None, "event_date": start.date()}
        for m in range(2)
    ]  # fmt: skip
    # Day 2 begins at minute 2 with a fresh daily budget.
    rows += [row | {"minute": minute(m + 2), "at": minute(m + 2) + timedelta(seconds=30), "day_start": minute(2),
                    "plan_micros": 1_000_000 * (m + 1), "spent_today_micros": 1_000_000}
             for m, row in enumerate(rows)]  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_PACING_MINUTE)[0], pa.Table.from_pylist(rows))
    kpis = [{"campaign_id": "e", "minute": minute(m), "spend_micros": 1_000_000, "clicks": 1, "conversions": 0}
            for m in range(2)]  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_KPI_MINUTE)[0], pa.Table.from_pylist(kpis))
    # The ledger: the day's two charges, and one just after the day's end (the next day's, not this one's).
    engine = make_engine(settings)
    migrate(settings, engine)
    spec = CampaignSpec(
        advertiser_id="adv", ad_id="ad", category="Books", pricing_model="CPC", bid_micros=500_000,
        total_budget_micros=9_000_000, daily_budget_micros=2_000_000, flight_start=start - timedelta(days=1),
        flight_end=start + timedelta(days=1),
    )  # fmt: skip
    days = DayClock(120, int(start.timestamp()))
    with make_session_factory(engine)() as session:
        store.apply_instruction(session, create_instruction(spec, now=start, campaign_id="e"))
        charges = [store.Charge(f"x{m}", f"a{m}", "e", "click", 1_000_000, start + timedelta(seconds=s))
                   for m, s in ((0, 30), (1, 90), (2, 125))]  # fmt: skip
        store.record_spends(session, charges, days)
    engine.dispose()
    lines = run_module.pacing_lines(settings, state)
    assert lines[0].startswith("  pacing             day 1 of 2: 120s from 10:00:00")
    assert "even    1 campaigns: spend / daily budget median 100.0%" in lines[1]
    assert "overspent 0" in lines[1] and "eCPC 1.000" in lines[1]
    # Day 2: the charge 5 s into it, 1 of its 2 USD.
    day_two = lines.index(next(line for line in lines if "day 2 of 2" in line))
    assert lines[day_two].startswith("  pacing             day 2 of 2: 120s from 10:02:00")
    assert "even    1 campaigns: spend / daily budget median 50.0%" in lines[day_two + 1]


@pytest.mark.parametrize(
    ("duration_s", "day_length_s", "ttl_s"), [(180, None, 60), (3600, None, 150), (600, 3600, 150), (600, 86400, 3600)]
)
def test_an_auctions_reservation_holds_a_24th_of_the_runs_day_as_an_hour_of_a_real_one(duration_s, day_length_s, ttl_s):
    assert Simulation(duration_s=duration_s, day_length_s=day_length_s).auction_ttl_s == ttl_s


def test_the_forecast_takes_a_twentieth_of_the_day_within_half_a_minute_and_three():
    assert [Simulation(duration_s=d).forecast_s for d in (180, 1200, 3600, 7200)] == [30.0, 60.0, 180.0, 180.0]


def test_optimized_campaigns_are_compared_with_their_twins_per_platform_on_valid_charged_spend():
    def event(campaign, kind, device, cost=0, status="not_billable", ivt=None):
        return {"campaign_id": campaign, "event_type": kind, "channel": "web", "device_type": device,
                "cost_micros": cost, "charge_status": status, "ivt_category": ivt}  # fmt: skip

    events = pd.DataFrame(
        [event("opt", "click", "desktop", 2_000_000, "charged")] * 3 + [event("opt", "conversion", "desktop")] * 2
        + [event("twin", "click", "mobile", 2_000_000, "charged")] * 3 + [event("twin", "conversion", "mobile")]
        + [event("twin", "click", "mobile", 9_000_000, "charged", "givt")]  # invalid: neither spend nor counted
        + [event("twin", "conversion", "mobile", status="out_of_order")]  # not delivered
        + [event("other", "conversion", "desktop")]  # not in a pair
    )  # fmt: skip
    table = run_module.optimizer_comparison(events, [("opt", "twin")]).set_index("platform")
    every = table.loc["all"]
    assert (every["optimized_conversions"], every["optimized_spend_usd"]) == (2, 6.0)
    assert (every["static_conversions"], every["static_spend_usd"]) == (1, 6.0)
    assert every["optimized_per_usd"] == pytest.approx(2 / 6) and every["static_per_usd"] == pytest.approx(1 / 6)
    assert table.loc["web/desktop", "static_conversions"] == 0 and table.loc["web/mobile", "optimized_spend_usd"] == 0


def test_at_equal_spend_only_the_pair_days_where_both_arms_spent_their_budget_are_compared():
    origin = datetime(2026, 12, 7, 12, tzinfo=UTC)

    def spend(campaign, day, usd, conversions=0, ivt=None, at_s=10):
        at = origin + timedelta(seconds=day * 100 + at_s)
        click = {"campaign_id": campaign, "event_type": "click", "channel": "web", "device_type": "desktop",
                 "cost_micros": round(usd * 1_000_000), "charge_status": "charged", "ivt_category": ivt,
                 "event_time": at}  # fmt: skip
        conversion = click | {"event_type": "conversion", "cost_micros": 0, "charge_status": "not_billable"}
        return [click] + [conversion] * conversions

    events = pd.DataFrame(
        spend("o1", 0, 10.0, 2) + spend("t1", 0, 9.5, 1)  # both budget-bound: compared
        + spend("o1", 1, 10.0, 3) + spend("t1", 1, 5.0, 2)  # the twin spent half its budget: not compared
        + spend("o2", 0, 9.0, 1) + spend("t2", 0, 10.0, 1)  # 90 % is enough
        + spend("t2", 0, 50.0, 5, ivt="givt")  # invalid: neither spend nor conversions
        + spend("o2", 2, 10.0, 9) + spend("t2", 2, 10.0, 0)  # after the run's days
    )  # fmt: skip
    budgets = {cid: 10.0 for cid in ("o1", "t1", "o2", "t2")}
    result = run_module.equal_spend_comparison(events, [("o1", "t1"), ("o2", "t2")], budgets, origin, 100, 2)
    assert (result["pair_days"], result["of"]) == (2, 4)
    assert (result["optimized_conversions"], result["optimized_spend_usd"]) == (3, pytest.approx(19.0))
    assert (result["static_conversions"], result["static_spend_usd"]) == (2, pytest.approx(19.5))
    assert result["optimized_per_usd"] == pytest.approx(3 / 19) and result["static_per_usd"] == pytest.approx(2 / 19.5)
    assert run_module.equal_spend_comparison(events, [("o1", "t1")], budgets, origin, 100, 2, bound=0.99)["of"] == 2


def test_the_summary_compares_the_optimized_campaigns_from_the_lake_and_the_ledgers_budgets(tmp_path):
    # The whole print path, from silver/feedback_events and the campaign store, as `make run` calls it.
    settings = make_settings(tmp_path)
    origin = datetime(2026, 12, 7, 12, tzinfo=UTC)
    state = run_module.RunState(day_origin=origin, day_length_s=100.0, days=1, pairs=[("opt", "twin")])
    assert run_module.optimizer_lines(settings, state) == []  # no silver yet

    def event(campaign, kind, device, usd=0.0, at_s=10):
        charged = kind == "click"
        return {"event_type": kind, "event_time": origin + timedelta(seconds=at_s), "campaign_id": campaign,
                "channel": "web", "device_type": device, "cost_micros": round(usd * 1_000_000),
                "charge_status": "charged" if charged else "not_billable", "ivt_category": None,
                "event_date": origin.date()}  # fmt: skip

    rows = (
        [event("opt", "click", "desktop", 4.5)] * 2 + [event("opt", "conversion", "desktop")] * 3
        + [event("twin", "click", "mobile", 3.0)] * 3 + [event("twin", "conversion", "mobile")]
        + [event("opt", "click", "desktop", 5.0, at_s=120)]  # after the run's day
    )  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)[0], pa.Table.from_pylist(rows))
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        for campaign_id in ("opt", "twin"):
            spec = CampaignSpec(
                advertiser_id="adv", ad_id="ad", category="Books", pricing_model="CPC", bid_micros=500_000,
                total_budget_micros=90_000_000, daily_budget_micros=10_000_000,
                flight_start=origin - timedelta(days=1), flight_end=origin + timedelta(days=1),
            )  # fmt: skip
            store.apply_instruction(session, create_instruction(spec, now=origin, campaign_id=campaign_id))
    engine.dispose()
    lines = run_module.optimizer_lines(settings, state)
    assert lines[0] == "  optimizer          1 optimized campaigns against their static twins (silver/feedback_events)"
    # All the day's events: 3 conversions for 9 USD against 1 for 9 USD.
    assert lines[1] == (
        "    conversions per USD: optimized 0.3333 (3 for 9.00 USD), static 0.1111 (1 for 9.00 USD): "
        "+200.0% at +0.0% spend"
    )
    # Both arms spent 90 % of their 10 USD daily budget: the pair's day is compared at equal spend.
    assert lines[2].startswith("    at equal spend, the 1 of 1 pair-days both arms spent >= 90% of their daily budget:")
    assert lines[2].endswith("+200.0% at +0.0% spend")
    assert any(line.startswith("      web/desktop  optimized    3 conv") for line in lines)


def test_the_simulated_exchanges_invoice_is_judged_hour_by_hour_against_the_lake(tmp_path):
    settings = make_settings(tmp_path)
    state = run_module.RunState()
    assert run_module.exchange_invoice_lines(settings, state, 0) == [
        "  media cost: bills 0 USD; the simulated exchange sent no invoice"
    ]
    ten, eleven = datetime(2026, 12, 6, 10, tzinfo=UTC), datetime(2026, 12, 6, 11, tzinfo=UTC)

    def line(hour: datetime, n: int, cpm: int) -> dict:
        end = hour + timedelta(hours=1)
        return {"period_start": hour.isoformat(), "period_end": end.isoformat(), "impressions": n,
                "media_cost_cpm_micros": cpm}  # fmt: skip

    # The forecast's and the day's simulations both billed 10:00: one line, their prices summed before rounding.
    state.exchange_invoices = [{"invoice": [line(ten, 2, 2_500_250)]},
                               {"invoice": [line(ten, 1, 1_000_250), line(eleven, 4, 8_000_000)]}]  # fmt: skip
    costs = {"hour": pa.array([ten, eleven], STAMP), "exchange_id": [run_module.SIM_EXCHANGE] * 2,
             "exchange_impressions": [3, 4], "media_cost_cpm_micros": [3_500_500, 7_000_000]}  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_EXCHANGE_COSTS_HOURLY)[0], pa.table(costs))
    bill = {"hour": pa.array([ten, eleven], STAMP), "campaign_id": ["c", "c"], "spend_micros": [1, 1],
            "status": ["final", "provisional"]}  # fmt: skip
    write_deltalake(settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)[0], pa.table(bill))
    [summary] = run_module.exchange_invoice_lines(settings, state, 10_501)
    # 11:00 still provisional: not judged, its figures shown as they stand.
    assert "2 hourly lines, 1 agrees, 1 open; judged lines invoiced 0.003501 USD against ours 0.003501 USD" in summary
    assert (
        "open lines (a provisional bill) so far: invoiced 0.008 USD for 4 impressions, ours 0.007 USD for 4" in summary
    )
    bill["status"] = ["final", "final"]
    write_deltalake(settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)[0], pa.table(bill), mode="overwrite")
    [summary] = run_module.exchange_invoice_lines(settings, state, 10_501)
    invoice = (settings.local_dir.resolve() / "run" / "exchange-invoice.csv").read_text().splitlines()
    # 3,500,500 per thousand: 3,500.5 -> 3,501 micros, rounded once over both simulations.
    noon = eleven + timedelta(hours=1)
    assert invoice[1:] == [f"{ten.isoformat()},{eleven.isoformat()},3,0.003501,USD",
                           f"{eleven.isoformat()},{noon.isoformat()},4,0.008000,USD"]  # fmt: skip
    # 11:00: the exchange invoices 8,000 micros where its win notices priced 7,000.
    assert "2 hourly lines, 1 agrees, 1 disputed" in summary
    assert "invoiced 0.011501 USD against ours 0.010501 USD, disputed 0.001 USD" in summary


def test_the_campaigns_an_earlier_run_seeded_are_the_ones_a_new_run_stops(tmp_path):
    settings = make_settings(tmp_path)
    engine = make_engine(settings)
    migrate(settings, engine)
    start = datetime(2026, 12, 7, 10, tzinfo=UTC)
    spec = CampaignSpec(
        advertiser_id="adv", ad_id="ad", category="Books", pricing_model="CPC", bid_micros=500_000,
        total_budget_micros=9_000_000, daily_budget_micros=2_000_000, flight_start=start - timedelta(days=1),
        flight_end=start + timedelta(days=1),
    )  # fmt: skip
    with make_session_factory(engine)() as session:
        for cid, instruction_id in (("seeded", "seed-seeded"), ("stopped", "seed-stopped"), ("own", None)):
            store.apply_instruction(session, create_instruction(spec, now=start, campaign_id=cid,
                                                                instruction_id=instruction_id))  # fmt: skip
        store.apply_instruction(session, stop_instruction("stopped", now=start))
        # An advertiser's own campaign, created by the API or the CLI, is not the run's to stop.
        assert run_module.seeded_serving_ids(session) == ["seeded"]
    engine.dispose()
