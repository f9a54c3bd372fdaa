"""How well the invalid-traffic filter found the simulator's bots: precision and recall per behaviour.

Pure: the simulator's ground truth (``TruthEvent``: every event it sent and the service accepted,
with who sent it and the IVT category the filter should give it, see ``simulator.bots``) and
the events as silver holds them (``LandedEvent``: ``ivt_category``, ``ivt_reason``,
``cost_micros``) in; numbers out. Only events of both count: the run's events that landed.

- **Recall** of a behaviour for a category = its landed events the filter should tag with that
  category and did / its landed events the filter should tag with it. GIVT recall counts a
  ``givt`` tag only (GIVT is decided by the service when the event arrives, so it is also what
  keeps the event from being charged). SIVT-lite recall counts either tag: an event the service
  already tagged GIVT is not tagged again by the stream.
  What the filter should tag: all events of the crawler, the non-browser agent and the
  data-center bot; the fast clicker's clicks; the click spammer's repeated clicks on one ad
  (GIVT), and its first clicks and impressions (SIVT-lite: click rate, and its bursts). The fast
  clicker's impressions are bot events only billing tags (after its auction's fast click): in no
  recall.
- **Precision** of a category = its tagged events that a bot sent / all its tagged events (so a
  tagged impression of the fast clicker is right, a tagged person's click is wrong). Also per
  ``ivt_reason``.
- **Charged** per behaviour: the cost silver holds for its events; on the events the filter
  should tag GIVT it must be 0. **Billed**: the part of it on events left untagged, what the bill
  makes the advertiser pay (billing credits back what was charged for a tagged event); for a bot
  it must be 0.

Targets (``target_misses``): GIVT precision >= 0.95 and, for every bot with GIVT-detectable
events, GIVT recall >= 0.90; nothing charged for them; nothing billed for any bot's events; and some
of every bot's events in silver (a bot none of whose events landed cannot be scored, which is a
miss too). SIVT-lite precision and recall are reported, not targeted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from adstream.events import MICROS_PER_UNIT, IvtCategory
from simulator.bots import Behaviour

# The ground-truth file the simulator writes (CSV, one row per event it sent) and make run reads.
TRUTH_COLUMNS = ("event_id", "event_type", "behaviour", "expected", "status")
LANDED_STATUSES = ("accepted", "duplicate")  # the service took the event (a duplicate: on an earlier try)
MIN_GIVT_PRECISION = 0.95
MIN_GIVT_RECALL = 0.90
_STRENGTH = {IvtCategory.GIVT.value: 2, IvtCategory.SIVT.value: 1, None: 0}


@dataclass(frozen=True)
class TruthEvent:
    event_id: str
    event_type: str
    behaviour: str  # a Behaviour value; "human" is a person
    expected: str | None  # the IvtCategory the filter should give it; None: valid, or invisible to it


@dataclass(frozen=True)
class LandedEvent:
    event_id: str
    ivt_category: str | None
    ivt_reason: str | None
    cost_micros: int


@dataclass(frozen=True)
class Ratio:
    hits: int
    total: int

    @property
    def value(self) -> float | None:
        """None when there is nothing to measure (no such events)."""
        return self.hits / self.total if self.total else None

    def __str__(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.3f} ({self.hits}/{self.total})"


@dataclass(frozen=True)
class BehaviourScore:
    behaviour: str
    sent: int  # its events the service took
    landed: int  # of those, the ones silver holds
    givt_recall: Ratio  # tagged GIVT / should be GIVT
    sivt_recall: Ratio  # tagged GIVT or SIVT / should be SIVT
    tagged: dict[str, int]  # category -> its events so tagged, whatever was expected
    charged_micros: int  # over all its landed events
    charged_givt_micros: int  # over those the filter should tag GIVT: must be 0
    billed_micros: int  # over its untagged events: what the bill charges after the IVT credit


@dataclass(frozen=True)
class IvtScore:
    behaviours: dict[str, BehaviourScore]  # people ("human") included, for their false positives
    givt_precision: Ratio  # tagged GIVT and sent by a bot / tagged GIVT
    sivt_precision: Ratio
    precision_by_reason: dict[str, Ratio]
    givt_recall: Ratio  # over every bot
    missing: int  # events the service accepted that silver does not hold (yet)

    def bots(self) -> list[BehaviourScore]:
        return [score for name, score in self.behaviours.items() if name != Behaviour.HUMAN]


def score(truth: Iterable[TruthEvent], landed: Iterable[LandedEvent]) -> IvtScore:
    """Precision and recall of the IVT tags of ``landed`` against ``truth`` (see the module doc)."""
    sent = {event.event_id: event for event in truth}
    found: dict[str, LandedEvent] = {}
    for event in landed:
        if event.event_id not in sent:
            continue  # not this run's
        kept = found.get(event.event_id)
        if kept is None or _STRENGTH.get(event.ivt_category, 0) > _STRENGTH.get(kept.ivt_category, 0):
            found[event.event_id] = event  # silver holds one row per event; if not, the tagged one counts

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for truth_event in sent.values():
        counts[truth_event.behaviour]["sent"] += 1
    tagged: dict[str, Counter[str]] = defaultdict(Counter)
    precision: dict[str, Counter[str]] = defaultdict(Counter)  # category or reason -> {"tagged", "bot"}
    for event_id, event in found.items():
        truth_event = sent[event_id]
        who, expected, category = truth_event.behaviour, truth_event.expected, event.ivt_category
        bot = who != Behaviour.HUMAN
        count = counts[who]
        count["landed"] += 1
        count["charged"] += event.cost_micros
        count["billed"] += event.cost_micros if category is None else 0
        if expected == IvtCategory.GIVT:
            count["givt_expected"] += 1
            count["givt_hit"] += category == IvtCategory.GIVT
            count["givt_charged"] += event.cost_micros
        elif expected == IvtCategory.SIVT:
            count["sivt_expected"] += 1
            count["sivt_hit"] += category is not None
        if category is not None:
            tagged[who][category] += 1
            for key in (category, f"{category}:{event.ivt_reason or '?'}"):
                precision[key]["tagged"] += 1
                precision[key]["bot"] += bot

    behaviours = {
        who: BehaviourScore(
            behaviour=who,
            sent=count["sent"],
            landed=count["landed"],
            givt_recall=Ratio(count["givt_hit"], count["givt_expected"]),
            sivt_recall=Ratio(count["sivt_hit"], count["sivt_expected"]),
            tagged=dict(sorted(tagged[who].items())),
            charged_micros=count["charged"],
            charged_givt_micros=count["givt_charged"],
            billed_micros=count["billed"],
        )
        for who, count in sorted(counts.items())
    }

    def ratio(key: str) -> Ratio:
        return Ratio(precision[key]["bot"], precision[key]["tagged"])

    bots = [counts[who] for who in counts if who != Behaviour.HUMAN]
    return IvtScore(
        behaviours=behaviours,
        givt_precision=ratio(IvtCategory.GIVT),
        sivt_precision=ratio(IvtCategory.SIVT),
        precision_by_reason={key: ratio(key) for key in sorted(precision) if ":" in key},
        givt_recall=Ratio(sum(c["givt_hit"] for c in bots), sum(c["givt_expected"] for c in bots)),
        missing=len(sent) - len(found),
    )


def target_misses(
    result: IvtScore,
    min_precision: float = MIN_GIVT_PRECISION,
    min_recall: float = MIN_GIVT_RECALL,
    *,
    billed: bool = True,
) -> list[str]:
    """What falls short of the targets, in words; empty when they are met or there were no bots. ``billed``:
    whether the tags scored include billing's (tagged after the fact), so a bot billed anything is a miss."""
    misses = [f"{bot.behaviour}: none of its {bot.sent} events is in silver" for bot in result.bots() if not bot.landed]
    bots = [bot for bot in result.bots() if bot.givt_recall.total]
    misses += _givt_misses(bots, result.givt_precision, min_precision, min_recall) if bots else []
    if billed:
        misses += [
            f"{bot.behaviour}: {usd(bot.billed_micros)} USD billed" for bot in result.bots() if bot.billed_micros
        ]
    return misses


def _givt_misses(
    bots: list[BehaviourScore], givt_precision: Ratio, min_precision: float, min_recall: float
) -> list[str]:
    misses = []
    precision = givt_precision.value
    if precision is None:
        misses.append("no event was tagged GIVT")
    elif precision < min_precision:
        misses.append(f"GIVT precision {givt_precision} < {min_precision}")
    for bot in bots:
        recall = bot.givt_recall.value
        if recall is not None and recall < min_recall:
            misses.append(f"{bot.behaviour}: GIVT recall {bot.givt_recall} < {min_recall}")
        if bot.charged_givt_micros:
            misses.append(f"{bot.behaviour}: {usd(bot.charged_givt_micros)} USD charged for GIVT events")
    return misses


def report_lines(result: IvtScore) -> list[str]:
    """The score as the lines of `make run`'s summary."""
    lines = [
        f"GIVT precision {result.givt_precision}, recall {result.givt_recall}; SIVT-lite precision "
        f"{result.sivt_precision}" + (f"; {result.missing} accepted events not in silver" if result.missing else ""),
        f"{'behaviour':<14} {'events':>7} {'GIVT recall':>22} {'SIVT-lite recall':>22} {'tagged g/s':>11} "
        f"{'charged USD':>12} {'billed USD':>12}",
    ]
    for who, row in result.behaviours.items():
        tags = f"{row.tagged.get(IvtCategory.GIVT, 0)}/{row.tagged.get(IvtCategory.SIVT, 0)}"
        lines.append(
            f"{who:<14} {row.landed:>7} {row.givt_recall!s:>22} {row.sivt_recall!s:>22} {tags:>11} "
            f"{usd(row.charged_micros):>12} {usd(row.billed_micros):>12}"
        )
    if result.precision_by_reason:
        lines.append(
            "precision by reason: " + ", ".join(f"{key} {value}" for key, value in result.precision_by_reason.items())
        )
    return lines


def usd(micros: int) -> str:
    """Micros as USD, every digit kept (bots' spend is often a fraction of a cent)."""
    return f"{Decimal(micros) / MICROS_PER_UNIT:,f}"
