"""API keys of auction callers in the campaign store (SQLite, and PostgreSQL where it is installed)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from auction_service.campaign_store import callers
from auction_service.campaign_store.callers import CallerKind, CallerPolicy, RevokeOutcome
from auction_service.campaign_store.tables import ApiKey

# The store's own fixtures: each test runs on a fresh SQLite file and on a fresh PostgreSQL database.
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def add(session, caller_id: str = "pub-news", **overrides: object) -> callers.IssuedKey:
    values: dict[str, object] = {
        "caller_id": caller_id,
        "kind": CallerKind.PUBLISHER,
        "max_floor_cpm_micros": 20_000_000,
        "first_price_allowed": False,
        "now": NOW,
    }
    values.update(overrides)
    return callers.create_key(session, **values)


def test_a_new_key_resolves_to_its_callers_policy_and_only_its_digest_is_stored(sessions):
    with sessions() as session:
        issued = add(session, max_floor_cpm_micros=7_500_000, first_price_allowed=True)
        key_id, secret = issued.api_key.split(".", 1)
        assert key_id == issued.key_id
        assert len(secret) >= 43  # secrets.token_urlsafe(32): 256 bits
        policy = callers.resolve(session, issued.api_key)
        assert policy == CallerPolicy("pub-news", 7_500_000, first_price_allowed=True)
        row = session.scalars(select(ApiKey)).one()
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in {str(value) for value in vars(row).values()}
        assert (row.caller_id, row.kind, row.created_at, row.revoked_at) == ("pub-news", "publisher", NOW, None)


def test_a_wrong_secret_a_malformed_key_or_an_unknown_key_id_resolves_to_nothing(sessions):
    with sessions() as session:
        issued = add(session)
        other = add(session, "ssp-one", kind=CallerKind.EXCHANGE)
        secret = issued.api_key.split(".", 1)[1]
        for presented in (
            f"{issued.key_id}.{secret[:-1]}{'B' if secret.endswith('A') else 'A'}",  # one character off
            f"{issued.key_id}.{other.api_key.split('.', 1)[1]}",  # another key's secret
            f"0000000000000000.{secret}",
            issued.key_id,
            f"{issued.key_id}.",
            f".{secret}",
            "",
        ):
            assert callers.resolve(session, presented) is None, presented
        assert callers.resolve(session, other.api_key) == CallerPolicy("ssp-one", 20_000_000, False)


def test_a_revoked_key_stops_resolving_and_revoking_again_or_an_unknown_key_says_so(sessions):
    with sessions() as session:
        issued, kept = add(session), add(session)
        later = NOW + timedelta(hours=1)
        assert callers.revoke_key(session, issued.key_id, now=later) is RevokeOutcome.REVOKED
        assert callers.resolve(session, issued.api_key) is None
        assert callers.resolve(session, kept.api_key) is not None
        assert callers.revoke_key(session, issued.key_id) is RevokeOutcome.ALREADY_REVOKED
        assert callers.revoke_key(session, "no-such-key") is RevokeOutcome.UNKNOWN_KEY
        assert set(callers.active_keys(session)) == {kept.key_id}
        shown = {key.key_id: key for key in callers.list_keys(session)}
        assert shown[issued.key_id].revoked_at == later  # the first revoke's time: the second changed nothing
        assert shown[kept.key_id].revoked_at is None
        assert [key.key_id for key in callers.list_keys(session, include_revoked=False)] == [kept.key_id]


def test_active_keys_admit_their_own_secret_only(sessions):
    with sessions() as session:
        first, second = add(session, "pub-a"), add(session, "pub-b", first_price_allowed=True)
        active = callers.active_keys(session)
    assert set(active) == {first.key_id, second.key_id}
    assert active[first.key_id].admits(first.api_key.split(".", 1)[1])
    assert not active[first.key_id].admits(second.api_key.split(".", 1)[1])
    assert active[second.key_id].policy == CallerPolicy("pub-b", 20_000_000, first_price_allowed=True)


def test_list_keys_orders_by_caller_and_shows_no_secret(sessions):
    with sessions() as session:
        add(session, "pub-b")
        add(session, "pub-a", now=NOW + timedelta(minutes=1))
        add(session, "pub-a", now=NOW, kind=CallerKind.EXCHANGE)
        listed = callers.list_keys(session)
    assert [(key.caller_id, key.created_at) for key in listed] == [
        ("pub-a", NOW),
        ("pub-a", NOW + timedelta(minutes=1)),
        ("pub-b", NOW),
    ]
    assert listed[0].kind is CallerKind.EXCHANGE
    assert not any(hasattr(key, "secret_sha256") or hasattr(key, "api_key") for key in listed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"caller_id": ""}, "caller_id must be 1 to 64 characters"),
        ({"caller_id": "p" * 65}, "caller_id must be 1 to 64 characters"),
        ({"kind": "advertiser"}, "'advertiser' is not a valid CallerKind"),
        ({"max_floor_cpm_micros": -1}, "max_floor_cpm_micros must be 0 to"),
        ({"max_floor_cpm_micros": 10**15}, "max_floor_cpm_micros must be 0 to"),
    ],
)
def test_a_key_with_a_bad_policy_is_refused_and_nothing_is_stored(sessions, overrides, message):
    with sessions() as session:
        with pytest.raises(ValueError, match=message):
            add(session, **overrides)
        assert callers.list_keys(session) == []


def test_the_floor_cap_lowers_a_higher_floor_only():
    capped = CallerPolicy("pub-news", max_floor_cpm_micros=20_000_000, first_price_allowed=False)
    assert capped.floor_cpm_micros(0) == 0
    assert capped.floor_cpm_micros(19_999_999) == 19_999_999
    assert capped.floor_cpm_micros(20_000_000) == 20_000_000
    assert capped.floor_cpm_micros(50_000_000) == 20_000_000
    assert CallerPolicy(None, None, True).floor_cpm_micros(999_000_000) == 999_000_000


@pytest.mark.parametrize(
    ("presented", "split"),
    [
        ("abc.def", ("abc", "def")),
        ("abc.d.e", ("abc", "d.e")),
        ("abc", None),
        ("abc.", None),
        (".def", None),
    ],
)
def test_split_key(presented, split):
    assert callers.split_key(presented) == split
