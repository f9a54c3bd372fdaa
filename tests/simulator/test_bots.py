"""Who sends the simulated traffic: people's stable browsers and addresses, and bots that each trip one IVT rule."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest

from adstream.events import EventType, IvtCategory
from simulator import bots
from simulator.bots import (
    BOT_BEHAVIOURS,
    BROWSER_USER_AGENTS,
    CRAWLERS,
    NON_BROWSER_USER_AGENTS,
    Behaviour,
    PlannedEvent,
    bot_steps,
    draw_behaviour,
    draw_bot,
    human_steps,
    parse_networks,
    person,
    residential_networks,
)

DATACENTERS = parse_networks("203.0.113.0/24, 198.51.100.0/24")
RESIDENTIAL = residential_networks(DATACENTERS)
THRESHOLD_S = 0.5


def in_any(ip: str, networks) -> bool:
    return any(ipaddress.ip_address(ip) in network for network in networks)


def clicks(steps) -> list[tuple[float, PlannedEvent]]:
    """(seconds after the impression, the click) for every click of ``steps``."""
    at, found = 0.0, []
    for step in steps:
        at += step.wait_s
        found += [(at, event) for event in step.events if event.event_type == EventType.CLICK]
    return found


def test_a_person_keeps_one_browser_per_device_and_one_home_address():
    first, again = person("adv-000001", "mobile", RESIDENTIAL), person("adv-000001", "mobile", RESIDENTIAL)
    assert first == again
    assert first.user_agent in BROWSER_USER_AGENTS["mobile"]
    assert person("adv-000001", "desktop", RESIDENTIAL).user_agent in BROWSER_USER_AGENTS["desktop"]
    assert person("adv-000001", "desktop", RESIDENTIAL).ip == first.ip  # the same home on every device
    addresses = {person(f"u{i}", "desktop", RESIDENTIAL).ip for i in range(500)}
    assert len(addresses) == 500  # two people hardly ever share an address (no accidental per-IP click rates)
    assert not any(in_any(ip, DATACENTERS) for ip in addresses) and all(in_any(ip, RESIDENTIAL) for ip in addresses)
    agents = Counter(person(f"u{i}", "desktop", RESIDENTIAL).user_agent for i in range(500))
    assert len(agents) == len(BROWSER_USER_AGENTS["desktop"])  # the whole set is in use


def test_a_data_center_range_over_a_residential_block_removes_that_block():
    comcast = parse_networks("73.0.0.0/8")
    assert ipaddress.ip_network("73.0.0.0/8") not in residential_networks(comcast)
    assert not any(in_any(person(f"u{i}", "mobile", residential_networks(comcast)).ip, comcast) for i in range(300))
    with pytest.raises(ValueError, match="cover every residential block"):
        residential_networks(parse_networks("0.0.0.0/0"))


def test_the_bot_share_is_drawn_per_visit_and_spread_over_the_behaviours():
    rng = random.Random(3)
    drawn = Counter(draw_behaviour(rng, 0.2) for _ in range(20_000))
    assert drawn[Behaviour.HUMAN] == pytest.approx(16_000, rel=0.03)
    for behaviour in BOT_BEHAVIOURS:
        assert drawn[behaviour] == pytest.approx(800, rel=0.15)
    assert {draw_behaviour(rng, 0.0) for _ in range(1000)} == {Behaviour.HUMAN}


@pytest.mark.parametrize("behaviour", BOT_BEHAVIOURS)
def test_each_bot_has_the_identity_its_rule_looks_for(behaviour):
    rng = random.Random(7)
    drawn = [draw_bot(behaviour, rng, DATACENTERS, RESIDENTIAL) for _ in range(200)]
    browsers = {agent for agents in BROWSER_USER_AGENTS.values() for agent in agents}
    for bot in drawn:
        assert bot.behaviour == behaviour
        if behaviour is Behaviour.CRAWLER:
            assert bot.identity.user_agent in {agent for agent, _ in CRAWLERS} and bot.user_id is None
        elif behaviour is Behaviour.NON_BROWSER:
            assert bot.identity.user_agent in NON_BROWSER_USER_AGENTS and bot.user_id is None
        else:
            assert bot.identity.user_agent in browsers  # only its address or its clicks give it away
        assert in_any(bot.identity.ip, DATACENTERS) == (behaviour is Behaviour.DATACENTER)
    hosts = {(bot.identity, bot.user_id) for bot in drawn}
    assert len(hosts) == {Behaviour.CLICK_SPAMMER: 1, Behaviour.FAST_CLICKER: bots.FAST_CLICKERS}.get(
        behaviour, len(hosts)
    )  # one spammer: one user and one address clicking far more than anyone


def test_people_click_well_after_the_too_fast_threshold_and_convert_after_the_click():
    rng = random.Random(1)
    kinds = [EventType.IMPRESSION, EventType.VIDEO_START, EventType.CLICK, EventType.CONVERSION]
    delays = []
    for _ in range(2000):
        steps = human_steps(kinds, rng)
        assert [[e.event_type for e in step.events] for step in steps] == [
            [EventType.IMPRESSION, EventType.VIDEO_START],
            [EventType.CLICK],
            [EventType.CONVERSION],
        ]
        assert steps[0].wait_s == 0 and all(e.expected is None for step in steps for e in step.events)
        delays.append(steps[1].wait_s)
    assert min(delays) >= 0.8 > THRESHOLD_S and max(delays) <= 4.0
    assert sorted(delays)[1000] == pytest.approx(1.5, rel=0.1)  # the median
    assert human_steps([EventType.IMPRESSION], rng) == [bots.Step(0.0, (PlannedEvent(EventType.IMPRESSION),))]


def test_only_the_fast_clicker_clicks_under_the_threshold():
    rng = random.Random(2)
    for behaviour in BOT_BEHAVIOURS:
        delays = [at for _ in range(300) for at, _ in clicks(bot_steps(behaviour, rng, video=False,
                                                                         min_click_delay_s=THRESHOLD_S))]  # fmt: skip
        assert delays, behaviour
        if behaviour is Behaviour.FAST_CLICKER:
            assert set(delays) == {0.0}  # with the impression, in the same request
        else:
            assert min(delays) > THRESHOLD_S


def test_what_each_bot_sends_and_what_the_filter_should_make_of_it():
    rng = random.Random(4)
    for behaviour in (Behaviour.CRAWLER, Behaviour.NON_BROWSER, Behaviour.DATACENTER):
        events = [e for _ in range(100) for step in bot_steps(behaviour, rng, video=True, min_click_delay_s=0.5)
                  for e in step.events]  # fmt: skip
        assert {e.expected for e in events} == {IvtCategory.GIVT}  # every event: the agent or address says it
    fast = [e for _ in range(100) for step in bot_steps(Behaviour.FAST_CLICKER, rng, video=False,
                                                        min_click_delay_s=0.5) for e in step.events]  # fmt: skip
    assert {(e.event_type, e.expected) for e in fast} == {
        (EventType.IMPRESSION, None),  # a bot's, but nothing tells it from a person's
        (EventType.CLICK, IvtCategory.GIVT),
    }
    spammer_steps = [bot_steps(Behaviour.CLICK_SPAMMER, rng, video=False, min_click_delay_s=0.5) for _ in range(400)]
    shown = {(e.event_type, e.expected) for steps in spammer_steps for e in steps[0].events}
    assert shown == {(EventType.IMPRESSION, IvtCategory.SIVT)}  # its bursts' traffic
    spammer = [clicks(steps) for steps in spammer_steps]
    assert sum(bool(ad) for ad in spammer) == pytest.approx(360, rel=0.08)  # clicks most ads it sees
    repeated = [ad for ad in spammer if len(ad) > 1]
    assert len(repeated) == pytest.approx(180, rel=0.15)
    for ad in spammer:
        if ad:
            first, *again = (event for _, event in ad)
            assert first.expected == IvtCategory.SIVT and first.repeat == 0
            assert [(e.expected, e.repeat) for e in again] == [(IvtCategory.GIVT, n) for n in range(1, len(ad))]
            assert len({e.event_id("a1") for _, e in ad}) == len(ad)  # each repeat is its own event


def test_event_ids_are_derived_from_the_auction_and_the_repeat():
    assert PlannedEvent(EventType.CLICK).event_id("a-1") == "sim-a-1-click"
    assert PlannedEvent(EventType.CLICK, IvtCategory.GIVT, 2).event_id("a-1") == "sim-a-1-click-2"


def test_the_services_agent_rule_passes_peoples_browsers_and_catches_every_bot_agent():
    from auction_service.serving.ivt import agent_reason

    browsers = [agent for agents in BROWSER_USER_AGENTS.values() for agent in agents]
    assert [agent for agent in browsers if agent_reason(agent) is not None] == []
    assert {agent_reason(agent) for agent, _ in CRAWLERS} == {"known_bot_ua"}
    scripts = Counter(agent_reason(agent) for agent in NON_BROWSER_USER_AGENTS)
    assert set(scripts) == {"known_bot_ua", "non_browser_ua"}  # both rules have work to do
