"""General invalid traffic (GIVT) that a request shows by itself: its user agent and its address.

The rules that need the auction's earlier events (duplicate and too-fast clicks) are the
journal's (``auction_service.campaign_store.journal``); the per-user and per-IP click rates
(SIVT-lite) are the stream's. Known bots come from the crawler-user-agents list, the
maintained public list of crawler patterns, packaged on PyPI.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from crawleruseragents import is_crawler

from adstream.settings import Settings

# Browsers and the in-app web views that show ads announce themselves as Mozilla-compatible, and apps'
# own HTTP stacks as Dalvik (Android) or CFNetwork (iOS); any other agent is a script or a library.
DEVICE_AGENT_PREFIXES = ("Mozilla/", "Opera/", "Dalvik/", "CFNetwork/")


class RequestIvt:
    def __init__(self, datacenter_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.datacenter_networks = tuple(datacenter_networks)

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestIvt:
        agent_reason("Mozilla/5.0")  # compiles the crawler patterns now, not in the first event's request
        return cls(parse_networks(settings.ivt_datacenter_cidrs))

    def reason(self, user_agent: str | None, ip: str | None) -> str | None:
        """The GIVT reason code of a request, or None when neither its agent nor its address is suspect."""
        agent = agent_reason(user_agent or "")
        if agent is not None:
            return agent
        if ip and self.datacenter_networks and self._in_datacenter(ip):
            return "datacenter_ip"
        return None

    def device_reason(self, user_agent: str | None, ip: str | None) -> str | None:
        """The GIVT reason of a bid request's ``device``, or None: an exchange may leave out the agent or the
        address, and what it leaves out is not judged (an app's own requests often carry no browser agent)."""
        if user_agent and (agent := agent_reason(user_agent)) is not None:
            return agent
        if ip and self.datacenter_networks and self._in_datacenter(ip):
            return "datacenter_ip"
        return None

    def _in_datacenter(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.datacenter_networks)


@functools.lru_cache(maxsize=4096)  # a site's traffic has few distinct agents; the list is ~600 patterns
def agent_reason(user_agent: str) -> str | None:
    if is_crawler(user_agent, case_sensitive=False):
        return "known_bot_ua"
    if not user_agent.startswith(DEVICE_AGENT_PREFIXES):
        return "non_browser_ua"
    return None


def parse_networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``"203.0.113.0/24, 2001:db8::/32"`` -> networks; a malformed range is a settings error, raised."""
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"IVT_DATACENTER_CIDRS: {item!r} is not a CIDR range ({exc})") from exc
    return networks
