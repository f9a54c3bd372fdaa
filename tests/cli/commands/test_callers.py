"""`adstream callers add|list|revoke`: keys made, shown once, listed without secrets and revoked, in the store."""

from __future__ import annotations

from auction_service.campaign_store import callers
from auction_service.campaign_store.callers import CallerPolicy
from auction_service.campaign_store.db import make_engine, make_session_factory
from tests.cli.conftest import invoke
from tests.conftest import make_settings

ADD_PUBLISHER = ["callers", "add", "--caller", "pub-news", "--kind", "publisher"]


def resolve(settings, api_key: str) -> CallerPolicy | None:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            return callers.resolve(session, api_key)
    finally:
        engine.dispose()


def test_add_prints_a_key_once_that_the_store_resolves_to_the_callers_policy(tmp_path):
    settings = make_settings(tmp_path)
    result = invoke(settings, [*ADD_PUBLISHER, "--max-floor-cpm", "20"])
    assert result.exit_code == 0, result.output
    api_key = result.stdout.strip()
    key_id = api_key.split(".", 1)[0]
    assert "shown once" in result.stderr and key_id in result.stderr
    assert resolve(settings, api_key) == CallerPolicy("pub-news", 20_000_000, first_price_allowed=False)

    result = invoke(settings, ["callers", "add", "--caller", "ssp-one", "--kind", "EXCHANGE", "--max-floor-cpm",
                               "7.5", "--first-price"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert resolve(settings, result.stdout.strip()) == CallerPolicy("ssp-one", 7_500_000, first_price_allowed=True)

    listed = invoke(settings, ["callers", "list"])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["key_id", "caller", "kind", "max_floor_cpm", "first_price", "created_at", "revoked_at"]
    assert [row.split()[1:5] for row in rows] == [
        ["pub-news", "publisher", "20", "no"],
        ["ssp-one", "exchange", "7.5", "yes"],
    ]
    assert api_key.split(".", 1)[1] not in listed.stdout  # the secret is never shown again


def test_revoke_stops_the_key_and_list_shows_when(tmp_path):
    settings = make_settings(tmp_path)
    api_key = invoke(settings, [*ADD_PUBLISHER, "--max-floor-cpm", "20"]).stdout.strip()
    key_id = api_key.split(".", 1)[0]

    result = invoke(settings, ["callers", "revoke", key_id])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{key_id}: revoked"
    assert resolve(settings, api_key) is None
    assert invoke(settings, ["callers", "revoke", key_id]).stdout.strip() == f"{key_id}: already revoked"

    (row,) = invoke(settings, ["callers", "list"]).stdout.splitlines()[1:]
    assert row.split()[-1].endswith("Z")  # the revocation time, where "-" stood
    assert invoke(settings, ["callers", "list", "--in-force"]).stdout.splitlines()[1:] == []

    result = invoke(settings, ["callers", "revoke", "no-such-key"])
    assert result.exit_code == 1
    assert "unknown key 'no-such-key'" in result.stderr


def test_add_with_a_bad_policy_exits_2_and_stores_nothing(tmp_path):
    settings = make_settings(tmp_path)
    add = ["callers", "add", "--caller", "pub-news"]
    result = invoke(settings, [*add, "--kind", "advertiser", "--max-floor-cpm", "20"])
    assert result.exit_code == 2
    assert "--kind" in result.stderr
    result = invoke(settings, [*add, "--kind", "publisher", "--max-floor-cpm", "-1"])
    assert result.exit_code == 2
    assert "negative" in result.stderr
    result = invoke(settings, [*add, "--kind", "publisher", "--max-floor-cpm", "5000"])
    assert result.exit_code == 2
    assert "max_floor_cpm_micros must be 0 to 1000000000" in result.stderr
    result = invoke(settings, ["callers", "add", "--caller", "p" * 65, "--kind", "publisher", "--max-floor-cpm", "1"])
    assert result.exit_code == 2
    assert "caller_id must be 1 to 64 characters" in result.stderr
    assert invoke(settings, ["callers", "list"]).stdout.splitlines()[1:] == []
