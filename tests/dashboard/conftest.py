"""The auction service's fixtures (a Kafka broker, a shared store, an MLflow champion), defined with the service's
tests, for the live platform the dashboard is tested against."""

from tests.auction_service.conftest import champion_db, fast_path, service_settings

__all__ = ["champion_db", "fast_path", "service_settings"]
