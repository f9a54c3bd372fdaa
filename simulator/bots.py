"""Who sends the simulated traffic: people's browsers, and bots whose invalid traffic the service must tag.

Every visit comes from a browser or a bot with a User-Agent and an IP address, which the
simulator states the way real traffic does (the ``User-Agent`` header, the client address as
``X-Forwarded-For``, the OpenRTB ``device``). Pure: identities are derived from ids with a hash,
and what a visitor does on a served ad is a list of ``Step``s drawn from the ``random.Random``
it is given; no I/O, no clock.

**People** use one of a few real desktop, mobile, tablet and smart-TV browser User-Agents,
chosen per (user, device), from one home address in a consumer ISP's block, stable per user.
On a served ad they fire the impression (and video events) at once, click after a human delay
(``HUMAN_CLICK_DELAY_S``: well above any too-fast-click threshold) and convert after the click.

**Bots** make ``--bot-share`` of the visits, spread evenly over ``BOT_BEHAVIOURS``; each event
they send is recorded with the IVT category the filter should give it (``expected``), the
ground truth the scoring in ``simulator.ivt_scoring`` compares silver with:

============== ============================================== ======================================
behaviour      what it does                                   events the filter should tag
============== ============================================== ======================================
crawler        a search or SEO crawler's User-Agent           all (GIVT: known bot)
non_browser    an HTTP library or command-line tool           all (GIVT: non-browser agent)
datacenter     a browser User-Agent from a data-center range  all (GIVT: data-center IP)
click_spammer  one user and IP: clicks most ads it sees,      repeated clicks (GIVT: duplicate);
               some several times                             first clicks (SIVT-lite: click rate)
                                                              and impressions (SIVT-lite: burst)
fast_clicker   fires its click with its impression, in one    its clicks (GIVT: fast click)
               request: 0 ms after it
============== ============================================== ======================================

The fast clicker's impressions are invalid too. Only billing tags them, after the fact (its
auction's fast click): they count as bot events for precision and in what bots are billed, not
in the GIVT recall, which measures the service's rules.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from adstream.events import EventType, IvtCategory

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Behaviour(StrEnum):
    """Who sent an event: a person, or one of the bots."""

    HUMAN = "human"
    CRAWLER = "crawler"
    NON_BROWSER = "non_browser"
    DATACENTER = "datacenter"
    CLICK_SPAMMER = "click_spammer"
    FAST_CLICKER = "fast_clicker"


BOT_BEHAVIOURS = tuple(behaviour for behaviour in Behaviour if behaviour is not Behaviour.HUMAN)

# Real browser User-Agents (late 2024 releases) per device type of the auction request.
BROWSER_USER_AGENTS: dict[str, tuple[str, ...]] = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
        "Safari/605.1.15",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile "
        "Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
        "Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
    "ctv": (
        "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV "
        "Safari/537.36",
        "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 "
        "Safari/537.36 WebAppManager",
    ),
}
# Crawlers' User-Agents as their operators document them, each from an address block it crawls from.
CRAWLERS: tuple[tuple[str, str], ...] = (
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "66.249.64.0/19"),
    (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "66.249.64.0/19",
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "157.55.39.0/24"),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "54.36.148.0/23"),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "5.255.253.0/24"),
    ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", "85.208.96.0/24"),
)
# HTTP libraries and tools: some are on the crawler lists, the others only fail to be a browser.
NON_BROWSER_USER_AGENTS = (
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Go-http-client/1.1",
    "Dart/3.5 (dart:io)",
    "PostmanRuntime/7.42.0",
    "Deno/2.1.1",
)
# Address blocks of large consumer ISPs (Comcast, BT, Deutsche Telekom, Orange): people's home addresses.
RESIDENTIAL_CIDRS = ("73.0.0.0/8", "86.128.0.0/10", "79.192.0.0/10", "90.0.0.0/9")
# Documentation ranges (RFC 5737), never routed: the data centers of `make run` (IVT_DATACENTER_CIDRS),
# and of the simulator when the service's setting is empty.
DEFAULT_DATACENTER_CIDRS = "203.0.113.0/24,198.51.100.0/24"

# Bot populations: hosts per behaviour (one spammer: a single user and IP clicking far more than anyone).
CRAWLER_HOSTS = 4  # per crawler
SCRIPT_HOSTS = 6  # one per agent
DATACENTER_HOSTS = 10
FAST_CLICKERS = 3
# How they click: the share of served ads clicked, and (spammer) repeated clicks on one ad.
BOT_CLICK_SHARE = {
    Behaviour.CRAWLER: 0.2,  # follows some ad links
    Behaviour.NON_BROWSER: 0.5,
    Behaviour.DATACENTER: 0.3,
    Behaviour.CLICK_SPAMMER: 0.9,
    Behaviour.FAST_CLICKER: 0.9,
}
SPAMMER_REPEAT_SHARE = 0.5  # of its clicked ads, clicked again 1-3 more times
SPAMMER_REPEATS = (1, 3)
REPEAT_CLICK_GAP_S = (0.2, 0.5)
SCRIPT_CLICK_DELAY_S = (0.05, 0.3)  # past the threshold: crawlers and scripts fetch a link once parsed
# People need a second or more to see an ad and reach for it: log-normal, median 1.5 s, within
# [0.8 s, 4 s] (capped so that a visit does not hold a worker long). A conversion follows its click
# after CONVERSION_DELAY_S: minutes in life, shortened here for the same reason.
HUMAN_CLICK_DELAY_S = (math.log(1.5), 0.4, 0.8, 4.0)  # (mu, sigma, min, max)
CONVERSION_DELAY_S = (0.3, 1.0)


@dataclass(frozen=True)
class Identity:
    """Who is at the other end: what the service is told in the User-Agent header and X-Forwarded-For."""

    user_agent: str
    ip: str


@dataclass(frozen=True)
class Bot:
    """One bot's visit: its behaviour, identity, the user id its requests state (None: no cookie) and device."""

    behaviour: Behaviour
    identity: Identity
    user_id: str | None
    device_type: str


@dataclass(frozen=True)
class PlannedEvent:
    """An event a visitor will send, with the IVT category the filter should give it (None: valid, or
    invalid in a way no rule here can see)."""

    event_type: EventType
    expected: IvtCategory | None = None
    repeat: int = 0  # 0 for the first event of its type on the ad; n for the n-th repeated click

    def event_id(self, auction_id: str) -> str:
        """Unique per auction and repeat, and the same on every retry (so a retry is never charged twice)."""
        suffix = f"-{self.repeat}" if self.repeat else ""
        return f"sim-{auction_id}-{self.event_type}{suffix}"


@dataclass(frozen=True)
class Step:
    """Events sent in one request, ``wait_s`` after the answer to the step before."""

    wait_s: float
    events: tuple[PlannedEvent, ...]


def parse_networks(cidrs: str) -> tuple[IpNetwork, ...]:
    """``"203.0.113.0/24, 198.51.100.0/24"`` -> networks (the format of IVT_DATACENTER_CIDRS)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs.split(",") if cidr.strip())


def residential_networks(datacenters: Sequence[IpNetwork]) -> tuple[IpNetwork, ...]:
    """The consumer ISP blocks that overlap none of the data-center ranges: a person is never a data center."""
    networks = tuple(
        network
        for network in parse_networks(",".join(RESIDENTIAL_CIDRS))
        if not any(network.version == dc.version and network.overlaps(dc) for dc in datacenters)
    )
    if not networks:
        raise ValueError(f"the data-center ranges cover every residential block {RESIDENTIAL_CIDRS}")
    return networks


def host_in(networks: Sequence[IpNetwork], key: str) -> str:
    """An address of ``networks`` chosen by ``key``: the same key, the same address."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    network = networks[digest % len(networks)]
    hosts = network.num_addresses - 2 if network.num_addresses > 2 else network.num_addresses
    offset = 1 if network.num_addresses > 2 else 0  # skip the network address
    return str(network[offset + (digest // len(networks)) % hosts])


def person(user_id: str, device_type: str, residential: Sequence[IpNetwork]) -> Identity:
    """A person's browser on ``device_type`` and their home address, the same on every visit."""
    agents = BROWSER_USER_AGENTS.get(device_type, BROWSER_USER_AGENTS["desktop"])
    digest = int.from_bytes(hashlib.sha256(f"ua:{user_id}:{device_type}".encode()).digest()[:4], "big")
    return Identity(agents[digest % len(agents)], host_in(residential, f"ip:{user_id}"))


def draw_bot(
    behaviour: Behaviour, rng: random.Random, datacenters: Sequence[IpNetwork], residential: Sequence[IpNetwork]
) -> Bot:
    """One visit's bot of ``behaviour``, from that behaviour's small, fixed population of hosts."""
    if behaviour is Behaviour.CRAWLER:
        user_agent, cidr = rng.choice(CRAWLERS)
        host = host_in(parse_networks(cidr), f"crawler:{user_agent}:{rng.randrange(CRAWLER_HOSTS)}")
        device = "mobile" if "Mobile" in user_agent else "desktop"
        return Bot(behaviour, Identity(user_agent, host), None, device)
    if behaviour is Behaviour.NON_BROWSER:
        script = rng.randrange(SCRIPT_HOSTS)
        user_agent = NON_BROWSER_USER_AGENTS[script % len(NON_BROWSER_USER_AGENTS)]
        return Bot(behaviour, Identity(user_agent, host_in(residential, f"script:{script}")), None, "desktop")
    if behaviour is Behaviour.DATACENTER:
        host = rng.randrange(DATACENTER_HOSTS)
        identity = Identity(BROWSER_USER_AGENTS["desktop"][0], host_in(datacenters, f"datacenter:{host}"))
        return Bot(behaviour, identity, f"bot-dc-{host}", "desktop")
    if behaviour is Behaviour.CLICK_SPAMMER:
        identity = Identity(BROWSER_USER_AGENTS["mobile"][1], host_in(residential, "spammer:0"))
        return Bot(behaviour, identity, "bot-spammer-0", "mobile")
    if behaviour is Behaviour.FAST_CLICKER:
        clicker = rng.randrange(FAST_CLICKERS)
        identity = Identity(BROWSER_USER_AGENTS["desktop"][0], host_in(residential, f"fast:{clicker}"))
        return Bot(behaviour, identity, f"bot-fast-{clicker}", "desktop")
    raise ValueError(f"{behaviour} is not a bot")


def human_steps(kinds: Sequence[EventType], rng: random.Random) -> list[Step]:
    """A person's events on a shown ad (as ``ground_truth.draw_events`` drew them), timed as a person would:
    the impression and video events at once, the click after a human delay, the conversion after it."""
    at_once = tuple(PlannedEvent(kind) for kind in kinds if kind not in (EventType.CLICK, EventType.CONVERSION))
    steps = [Step(0.0, at_once)]
    if EventType.CLICK in kinds:
        mu, sigma, low, high = HUMAN_CLICK_DELAY_S
        steps.append(Step(min(high, max(low, rng.lognormvariate(mu, sigma))), (PlannedEvent(EventType.CLICK),)))
    if EventType.CONVERSION in kinds:
        steps.append(Step(rng.uniform(*CONVERSION_DELAY_S), (PlannedEvent(EventType.CONVERSION),)))
    return steps


def bot_steps(behaviour: Behaviour, rng: random.Random, *, video: bool, min_click_delay_s: float) -> list[Step]:
    """What a bot of ``behaviour`` sends on an ad it was served, each event with its expected IVT category.

    ``min_click_delay_s`` is the service's too-fast-click threshold (IVT_MIN_CLICK_DELAY_MS). Only the
    fast clicker clicks sooner; every other bot clicks later, so that each behaviour trips one rule
    and the recall measures that rule. The fast clicker sends its click in the same request as the
    impression, as a script firing every pixel of a page at once does: a click a few milliseconds
    later in a request of its own could reach a loaded service past the threshold, which would
    measure the machine, not the rule.
    """
    seen_by_rule = behaviour in (Behaviour.CRAWLER, Behaviour.NON_BROWSER, Behaviour.DATACENTER)
    everything = IvtCategory.GIVT if seen_by_rule else None
    # The spammer's impressions are its click bursts' traffic (SIVT-lite, after the fact).
    impression = IvtCategory.SIVT if behaviour is Behaviour.CLICK_SPAMMER else everything
    shown = [PlannedEvent(EventType.IMPRESSION, impression)]
    if video and behaviour is Behaviour.CRAWLER:  # a crawler's headless renderer autoplays the video
        shown.append(PlannedEvent(EventType.VIDEO_START, everything))
    steps = [Step(0.0, tuple(shown))]
    if rng.random() >= BOT_CLICK_SHARE[behaviour]:
        return steps
    if behaviour is Behaviour.FAST_CLICKER:  # the click in the impression's request: 0 ms after it
        return [Step(0.0, (*shown, PlannedEvent(EventType.CLICK, IvtCategory.GIVT)))]
    if behaviour in (Behaviour.CRAWLER, Behaviour.NON_BROWSER):
        delay = min_click_delay_s + rng.uniform(*SCRIPT_CLICK_DELAY_S)
        return [*steps, Step(delay, (PlannedEvent(EventType.CLICK, everything),))]
    mu, sigma, low, high = HUMAN_CLICK_DELAY_S  # the data-center bot and the spammer pass for people
    delay = max(min_click_delay_s + low, min(high, rng.lognormvariate(mu, sigma)))
    if behaviour is Behaviour.DATACENTER:
        return [*steps, Step(delay, (PlannedEvent(EventType.CLICK, everything),))]
    # The spammer: its click rate is what SIVT-lite looks for; a repeated click on one ad is GIVT.
    steps.append(Step(delay, (PlannedEvent(EventType.CLICK, IvtCategory.SIVT),)))
    if rng.random() < SPAMMER_REPEAT_SHARE:
        for repeat in range(1, rng.randint(*SPAMMER_REPEATS) + 1):
            again = PlannedEvent(EventType.CLICK, IvtCategory.GIVT, repeat)
            steps.append(Step(rng.uniform(*REPEAT_CLICK_GAP_S), (again,)))
    return steps


def draw_behaviour(rng: random.Random, bot_share: float) -> Behaviour:
    """A person with probability 1 - ``bot_share``, else one of the bots, evenly."""
    if rng.random() >= bot_share:
        return Behaviour.HUMAN
    return BOT_BEHAVIOURS[rng.randrange(len(BOT_BEHAVIOURS))]
