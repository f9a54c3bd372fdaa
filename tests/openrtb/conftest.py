"""The auction service fixtures the OpenRTB fixture cases run against (defined with the service's tests)."""

from tests.auction_service.conftest import champion_db, fast_path, service_settings

__all__ = ["champion_db", "fast_path", "service_settings"]
