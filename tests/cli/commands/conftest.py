"""The commands' tests run on the fixtures of the packages they drive: MLflow stores and trainings, the ad manager's
broker settings and campaign store."""

from tests.auction_service.campaign_store.test_ad_manager import sessions, settings  # noqa: F401
from tests.ml.conftest import _one_openmp_thread_per_module, mlflow_db_template, mlflow_uri  # noqa: F401
from tests.ml.test_compare import two_trainings  # noqa: F401
from tests.ml.test_promote import table_settings  # noqa: F401
