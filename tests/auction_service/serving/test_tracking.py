"""The signed event URLs of a served ad, and the device an OpenRTB billing notice carries."""

from __future__ import annotations

from datetime import UTC, datetime
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from adstream.signing import EventSigner, TokenError, TokenRefused
from auction_service.serving import tracking
from tests.conftest import make_settings

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
NOW = EXPIRES.timestamp() - 60
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"


@pytest.fixture
def signer(tmp_path) -> EventSigner:
    settings = make_settings(tmp_path, event_signing_keys=SecretStr("k1:" + "a" * 40), event_signing_key_id="k1")
    return EventSigner.from_settings(settings)


def billing_query(signer: EventSigner, device: dict[str, str] | None) -> dict[str, str]:
    tokens = tracking.event_tokens(signer, "a-1", "c-1", EXPIRES, win=True, device=device)
    urls = tracking.event_urls("https://bid.example", "a-1", tokens, device)
    assert set(urls) == {"impression", "click", "conversion", "win", "billing"}  # no URL of its own for the device
    # Whoever unescapes the URL as HTML (an exchange's template) still reads the same parameters.
    assert unescape(urls["billing"]) == urls["billing"]
    parts = urlsplit(urls["billing"])
    assert parts.path == "/v1/events/track/a-1/impression"
    return {name: values[0] for name, values in parse_qs(parts.query).items()}


def test_the_billing_token_is_signed_over_the_device_its_burl_carries(signer):
    device = tracking.device_parameters("203.0.113.7", UA)
    query = billing_query(signer, device)
    assert (query["notice"], query["device_ip"], query["device_ua"]) == ("billing", "203.0.113.7", UA)
    stated = tracking.billing_event_type(tracking.device_parameters(query["device_ip"], query["device_ua"]))
    signer.verify(query["t"], "a-1", stated, "c-1", NOW)
    for forged in (
        tracking.device_parameters("198.51.100.1", UA),  # another address
        tracking.device_parameters("203.0.113.7", None),  # the agent dropped
        {},  # both stripped: the plain billing notice's token is another
    ):
        with pytest.raises(TokenRefused) as refused:
            signer.verify(query["t"], "a-1", tracking.billing_event_type(forged), "c-1", NOW)
        assert refused.value.error is TokenError.BAD_SIGNATURE


def test_what_the_exchange_leaves_out_is_left_out(signer):
    assert tracking.device_parameters(None, "") == {}
    plain = billing_query(signer, {})
    assert set(plain) == {"notice", "t"}  # no device: the burl as before, its token half the win notice's HMAC
    signer.verify(plain["t"], "a-1", tracking.BILLING, "c-1", NOW)
    assert set(billing_query(signer, tracking.device_parameters("203.0.113.7", None))) == {"notice", "device_ip", "t"}
