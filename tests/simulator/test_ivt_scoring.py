"""Precision and recall of the IVT filter against the simulator's ground truth."""

from __future__ import annotations

import pytest

from simulator.ivt_scoring import LandedEvent, Ratio, TruthEvent, report_lines, score, target_misses


def truth(event_id: str, behaviour: str, expected: str | None = None, event_type: str = "click") -> TruthEvent:
    return TruthEvent(event_id, event_type, behaviour, expected)


def landed(event_id: str, category: str | None = None, reason: str | None = None, cost: int = 0) -> LandedEvent:
    return LandedEvent(event_id, category, reason, cost)


def crawler_run(tagged: int, of: int = 10) -> tuple[list[TruthEvent], list[LandedEvent]]:
    """``of`` crawler impressions (all should be GIVT) of which ``tagged`` were, and 100 people's events."""
    sent = [truth(f"c{i}", "crawler", "givt", "impression") for i in range(of)]
    sent += [truth(f"h{i}", "human", event_type="impression") for i in range(100)]
    rows = [landed(f"c{i}", "givt" if i < tagged else None, "known_bot_ua" if i < tagged else None) for i in range(of)]
    rows += [landed(f"h{i}", cost=1000) for i in range(100)]
    return sent, rows


def test_recall_is_per_behaviour_over_what_the_filter_could_see():
    sent = [
        truth("fi", "fast_clicker", None, "impression"),  # a bot's impression: only billing tags it
        truth("fc1", "fast_clicker", "givt"),
        truth("fc2", "fast_clicker", "givt"),
        truth("s1", "click_spammer", "sivt"),
        truth("s1r", "click_spammer", "givt"),
        truth("s2", "click_spammer", "sivt"),
        truth("h1", "human"),
    ]
    rows = [
        landed("fi"),
        landed("fc1", "givt", "fast_click"),
        landed("fc2", "sivt", "user_click_rate"),  # caught, but not by the GIVT rule that should
        landed("s1", "sivt", "user_click_rate"),
        landed("s1r", "givt", "duplicate_click"),
        landed("s2"),
        landed("h1"),
    ]
    result = score(sent, rows)
    fast, spammer = result.behaviours["fast_clicker"], result.behaviours["click_spammer"]
    assert fast.landed == 3 and fast.givt_recall == Ratio(1, 2) and fast.sivt_recall == Ratio(0, 0)
    assert fast.tagged == {"givt": 1, "sivt": 1}
    assert spammer.givt_recall == Ratio(1, 1) and spammer.sivt_recall == Ratio(1, 2)
    assert result.givt_recall == Ratio(2, 3)
    assert result.behaviours["human"].givt_recall.value is None  # nothing to find among people


def test_precision_counts_any_bot_event_as_right_and_any_persons_as_wrong():
    sent = [
        truth("fi", "fast_clicker", None, "impression"),
        truth("d1", "datacenter", "givt", "impression"),
        truth("h1", "human"),
        truth("h2", "human"),
        truth("h3", "human"),
    ]
    rows = [
        landed("fi", "givt", "datacenter_ip"),  # a bot's after all: right
        landed("d1", "givt", "datacenter_ip"),
        landed("h1", "givt", "fast_click"),  # a person: wrong
        landed("h2", "sivt", "ip_click_rate"),
        landed("h3"),
    ]
    result = score(sent, rows)
    assert result.givt_precision == Ratio(2, 3) and result.givt_precision.value == pytest.approx(2 / 3)
    assert result.sivt_precision == Ratio(0, 1)
    assert result.precision_by_reason == {
        "givt:datacenter_ip": Ratio(2, 2),
        "givt:fast_click": Ratio(0, 1),
        "sivt:ip_click_rate": Ratio(0, 1),
    }


def test_only_this_runs_landed_events_count_once_each():
    sent = [truth("c1", "crawler", "givt"), truth("c2", "crawler", "givt"), truth("h1", "human")]
    rows = [
        landed("c1"),
        landed("c1", "givt", "known_bot_ua"),  # the same event twice: the tagged row counts
        landed("other-run", "givt", "known_bot_ua"),  # not in the ground truth: another run's
        landed("h1"),
    ]
    result = score(sent, rows)
    assert result.behaviours["crawler"].landed == 1 and result.behaviours["crawler"].givt_recall == Ratio(1, 1)
    assert result.givt_precision == Ratio(1, 1)
    assert result.missing == 1  # c2 was accepted but is not in silver (yet)


def test_spend_on_bots_is_summed_and_on_their_givt_events_is_a_miss():
    sent = [truth("c1", "crawler", "givt", "impression"), truth("fi", "fast_clicker", None, "impression")]
    sent += [truth("fc", "fast_clicker", "givt")]
    # The impression was charged when it came, and tagged after its auction's fast click: credited, not billed.
    rows = [landed("c1", "givt", "known_bot_ua"), landed("fi", "givt", "fast_click_auction", cost=2_000)]
    rows += [landed("fc", "givt", "fast_click")]
    result = score(sent, rows)
    fast = result.behaviours["fast_clicker"]
    assert (fast.charged_micros, fast.charged_givt_micros, fast.billed_micros) == (2_000, 0, 0)
    assert target_misses(result) == []
    charged = score(sent, [*rows[:2], landed("fc", "givt", "fast_click", cost=500_000)])
    assert charged.behaviours["fast_clicker"].charged_givt_micros == 500_000
    assert target_misses(charged) == ["fast_clicker: 0.5 USD charged for GIVT events"]


def test_a_bots_untagged_charged_event_is_billed_and_a_miss_unless_not_asked():
    sent = [truth("fi", "fast_clicker", None, "impression"), truth("fc", "fast_clicker", "givt")]
    sent += [truth("h1", "human", None, "impression")]
    rows = [landed("fi", cost=2_000), landed("fc", "givt", "fast_click"), landed("h1", cost=7_000)]
    result = score(sent, rows)
    assert result.behaviours["fast_clicker"].billed_micros == 2_000
    assert result.behaviours["human"].billed_micros == 7_000  # people are billed: no miss
    assert target_misses(result) == ["fast_clicker: 0.002 USD billed"]
    assert target_misses(result, billed=False) == []


@pytest.mark.parametrize(("tagged", "misses"), [(10, []), (9, []), (8, ["crawler: GIVT recall 0.800 (8/10) < 0.9"])])
def test_recall_below_the_target_is_a_miss(tagged, misses):
    assert target_misses(score(*crawler_run(tagged))) == misses


def test_precision_below_the_target_is_a_miss():
    sent, rows = crawler_run(10)
    rows[10] = landed("h0", "givt", "non_browser_ua")  # one person taken for a bot, beside ten bots
    result = score(sent, rows)
    assert result.givt_precision == Ratio(10, 11)
    assert target_misses(result) == ["GIVT precision 0.909 (10/11) < 0.95"]
    assert target_misses(score(*crawler_run(0))) == [
        "no event was tagged GIVT",
        "crawler: GIVT recall 0.000 (0/10) < 0.9",
    ]


def test_no_bots_no_targets():
    sent = [truth("h1", "human")]
    assert target_misses(score(sent, [landed("h1")])) == []
    assert target_misses(score([], [])) == []


def test_the_report_has_a_row_per_behaviour():
    lines = report_lines(score(*crawler_run(9)))
    assert lines[0].startswith("GIVT precision 1.000 (9/9), recall 0.900 (9/10); SIVT-lite precision n/a")
    assert [line.split()[0] for line in lines[2:4]] == ["crawler", "human"]
    assert "0.900 (9/10)" in lines[2] and lines[3].endswith("0.1")  # people's spend: 100 x 1,000 micros
    assert lines[-1] == "precision by reason: givt:known_bot_ua 1.000 (9/9)"


def test_a_bot_none_of_whose_events_landed_is_a_miss_not_a_pass():
    sent = [truth("s1", "click_spammer", "sivt"), truth("h1", "human")]
    result = score(sent, [landed("h1")])
    assert result.behaviours["click_spammer"].sent == 1 and result.behaviours["click_spammer"].landed == 0
    assert result.missing == 1
    assert target_misses(result) == ["click_spammer: none of its 1 events is in silver"]
