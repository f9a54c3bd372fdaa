"""Event tokens: bound to the auction, the event type, the campaign and the expiry; keys rotate by id."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from adstream.settings import Environment
from adstream.signing import EventSigner, TokenError, TokenRefused, bound_event_type, parse_keys
from tests.conftest import make_settings

NOW = 1_800_000_000


@pytest.fixture
def signer(tmp_path) -> EventSigner:
    settings = make_settings(tmp_path, event_signing_keys=SecretStr("k1:" + "a" * 40 + ",k2:" + "b" * 40),
                             event_signing_key_id="k2")  # fmt: skip
    return EventSigner.from_settings(settings)


def refusal(signer: EventSigner, token: str | None, *event: str, now: float = NOW) -> TokenError:
    with pytest.raises(TokenRefused) as refused:
        signer.verify(token, *event, now)
    return refused.value.error


def test_a_token_verifies_only_for_its_own_event(signer):
    token = signer.sign("a-1", "click", "c-1", NOW + 60)
    assert token.startswith("k2.")
    signer.verify(token, "a-1", "click", "c-1", NOW)  # no exception: accepted
    assert refusal(signer, token, "a-1", "conversion", "c-1") is TokenError.BAD_SIGNATURE
    assert refusal(signer, token, "a-2", "click", "c-1") is TokenError.BAD_SIGNATURE
    assert refusal(signer, token, "a-1", "click", "c-2") is TokenError.BAD_SIGNATURE


def test_tampering_with_the_expiry_or_signature_is_refused(signer):
    key_id, expires, signature = signer.sign("a-1", "click", "c-1", NOW + 60).split(".")
    assert refusal(signer, f"{key_id}.{int(expires) + 3600}.{signature}", "a-1", "click", "c-1") is (
        TokenError.BAD_SIGNATURE
    )
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert refusal(signer, f"{key_id}.{expires}.{flipped}", "a-1", "click", "c-1") is TokenError.BAD_SIGNATURE


def test_expired_missing_malformed_and_unknown_key_tokens_are_refused_with_their_reason(signer):
    token = signer.sign("a-1", "click", "c-1", NOW - 1)
    assert refusal(signer, token, "a-1", "click", "c-1") is TokenError.EXPIRED
    assert refusal(signer, None, "a-1", "click", "c-1") is TokenError.MISSING
    assert refusal(signer, "not-a-token", "a-1", "click", "c-1") is TokenError.MALFORMED
    assert refusal(signer, "k9.1900000000.abc", "a-1", "click", "c-1") is TokenError.UNKNOWN_KEY


def test_a_rotated_out_key_no_longer_verifies_and_the_old_key_still_does_while_listed(tmp_path, signer):
    old = signer.sign("a-1", "click", "c-1", NOW + 60)
    rotated = EventSigner.from_settings(
        make_settings(
            tmp_path, event_signing_keys=SecretStr("k3:" + "c" * 40 + ",k2:" + "b" * 40), event_signing_key_id="k3"
        )
    )
    rotated.verify(old, "a-1", "click", "c-1", NOW)  # k2 is still listed
    assert rotated.sign("a-1", "click", "c-1", NOW + 60).startswith("k3.")
    dropped = EventSigner.from_settings(
        make_settings(tmp_path, event_signing_keys=SecretStr("k3:" + "c" * 40), event_signing_key_id="k3")
    )
    assert refusal(dropped, old, "a-1", "click", "c-1") is TokenError.UNKNOWN_KEY


def test_the_local_default_key_is_refused_outside_local_mode(tmp_path):
    EventSigner.from_settings(make_settings(tmp_path))  # local mode: the default works
    with pytest.raises(ValueError, match="local default"):
        EventSigner.from_settings(make_settings(tmp_path, adstream_env=Environment.PROD))
    short = make_settings(tmp_path, adstream_env=Environment.PROD, event_signing_keys=SecretStr("p1:short"),
                          event_signing_key_id="p1")  # fmt: skip
    with pytest.raises(ValueError, match="under 32 bytes"):
        EventSigner.from_settings(short)


@pytest.mark.parametrize("value", ["", "nocolon", "k1:", ":secret", "k.1:secret", "k1:a,k1:b"])
def test_malformed_key_lists_are_refused(value):
    with pytest.raises(ValueError, match="EVENT_SIGNING_KEYS"):
        parse_keys(value)


def test_a_token_is_its_half_of_the_hmac_sha256_of_its_slot(signer):
    # Recomputed here with hmac itself, from the documented layout, not through the signer.
    message = f"a-1\nimpression+click\nc-1\n{NOW + 60}".encode()
    mac = hmac.new(b"b" * 40, message, hashlib.sha256).digest()
    tokens = signer.sign_all("a-1", ["impression", "click", "conversion"], "c-1", NOW + 60)
    assert tokens["impression"] == f"k2.{NOW + 60}.{mac[:16].hex()}"
    assert tokens["click"] == f"k2.{NOW + 60}.{mac[16:].hex()}"
    alone = hmac.new(b"b" * 40, f"a-1\nconversion+video_start\nc-1\n{NOW + 60}".encode(), hashlib.sha256).digest()
    assert tokens["conversion"] == f"k2.{NOW + 60}.{alone[:16].hex()}"
    assert signer.sign("a-1", "click", "c-1", NOW + 60) == tokens["click"]  # one at a time: the same tokens
    # The other half of a slot is not a token for the event it signs.
    assert refusal(signer, tokens["impression"], "a-1", "click", "c-1") is TokenError.BAD_SIGNATURE


def test_a_bound_token_covers_its_parameters_and_one_cannot_be_read_as_another(signer):
    device = {"device_ip": "203.0.113.7", "device_ua": "Mozilla/5.0 (X11)"}
    token = signer.sign("a-1", bound_event_type("device", device), "c-1", NOW + 60)
    signer.verify(token, "a-1", bound_event_type("device", dict(reversed(device.items()))), "c-1", NOW)  # any order
    for changed in ({**device, "device_ip": "203.0.113.8"}, {"device_ip": "203.0.113.7"}, {}):
        assert refusal(signer, token, "a-1", bound_event_type("device", changed), "c-1") is TokenError.BAD_SIGNATURE
    # Each value is length-prefixed: one cannot end early and pass its rest off as the next field.
    shifted = {"device_ip": "1", "device_ua": "29:device_ua1:3"}
    assert bound_event_type("device", {"device_ip": "1\n2", "device_ua": "3"}) != bound_event_type("device", shifted)
    assert bound_event_type("device", {"device_ip": "12", "device_ua": "3"}) != bound_event_type(
        "device", {"device_ip": "1", "device_ua": "23"}
    )
