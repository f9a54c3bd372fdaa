"""The store fixtures of test_store (a SQLite file, or a database on a throwaway PostgreSQL), for every module."""

from tests.auction_service.campaign_store.test_store import postgres_server, sessions, settings  # noqa: F401
