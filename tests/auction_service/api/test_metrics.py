"""/metrics of a running service: every family it declares moves under real traffic.

One service (real Kafka, shared store, MLflow champion), scraped over HTTP before it starts and
after a round of traffic that touches everything the service counts: auctions filled and not,
a record the broker never takes, events charged, refused, tagged invalid and relayed, bad
requests, a champion swap, an online calibration, a bid filter loaded and screening, pacing,
and a campaign stopped. The families are read from the scrape, so a family added later that
nothing updates fails here.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adstream.contracts import BID_FILTER_MODEL, CHAMPION_ALIAS, REGISTERED_MODEL
from adstream.messaging import LogProducer
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from auction_service.serving.champion import PollOutcome
from ml.bid_filter import BidFilter
from ml.calibrate import write_calibrators
from ml.calibration import Calibration, CalibrationKind
from ml.tracking import tracking_client
from tests.auction_service.conftest import (
    impression_time,
    instruction,
    live_server,
    open_service,
    signed_event,
    stop,
)
from tests.conftest import free_port
from tests.ml.auction_logs import register_table

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# The junk domain scores about 0.0025, anything else about 0.98; 4 ms saved per shed request.
JUNK_FILTER = BidFilter(bias=4.0, weights={"dom=junk.example": -10.0}, threshold=0.1, time_saved_per_shed_s=0.004)
BANNER = {"adomain": "cars.example", "banner_sizes": [{"w": 300, "h": 250}]}


def scrape(http: httpx.Client) -> dict[str, Samples]:
    """Each family on /metrics (counters by their name without ``_total``) -> its samples."""
    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(response.text)
    }


def moved(before: Samples, after: Samples) -> bool:
    """Whether a family gained a sample or changed one (NaN, an unset threshold, equals NaN here)."""
    if before.keys() != after.keys():
        return True
    return any(not (math.isnan(v) and math.isnan(after[k])) and v != after[k] for k, v in before.items())


def bid_request(domain: str, user: str) -> dict:
    return {"id": f"req-{user}", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": {"domain": domain},
            "device": {"devicetype": 2}, "user": {"id": user}}  # fmt: skip


@pytest.fixture(scope="module")
def service(service_settings):
    settings = service_settings.model_copy(
        update={
            "model_poll_s": 3600.0,  # only the test's polls swap models and calibrations
            "calibration_poll_s": 3600.0,
            "pacing_update_s": 0.5,
            "bid_filter_exploration_share": 0.5,
        }
    )
    state = open_service(
        settings,
        instruction("m-cpc", bid_micros=900_000),
        instruction("m-cpm", pricing_model="CPM", bid_micros=4_000_000, creative=BANNER),
        instruction("m-stopped"),
    )
    with live_server(create_app(state=state)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield state, http
    state.stop()


def test_every_declared_family_moves_under_real_traffic(service):
    state, http = service
    before = scrape(http)  # the service answers, but has served nothing and its housekeeping has not run
    state.start()
    uri = state.settings.mlflow_tracking_uri

    # Auctions: filled, not filled (every campaign is Automotive), and one whose record the broker never takes.
    served = [http.post("/v1/auction", json={"user_id": f"m-u{i}"}) for i in range(4)]
    assert [r.status_code for r in served] == [200] * 4, [r.text for r in served]
    assert http.post("/v1/auction", json={"blocked_categories": ["Automotive"]}).status_code == 204
    working_log = state.auction_log
    away = state.settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    state.auction_log = LogProducer(away, client_id="test-away", on_lost=state.metrics.log_record_lost, timeout_ms=500)
    try:
        assert http.post("/v1/auction", json={"user_id": "m-lost"}).status_code == 200
        assert state.auction_log.flush(5) == 0  # the record timed out, reported lost
    finally:
        state.auction_log = working_log

    # Events: an impression and its click (delivered: expected and observed clicks; the click charged),
    # one from a non-browser agent (invalid traffic), one for no auction (refused), and one journaled
    # while there is no producer, which the relay publishes later.
    cpc = next(r.json() for r in served if r.json()["campaign_id"] == "m-cpc")
    others = [r.json() for r in served if r.json()["auction_id"] != cpc["auction_id"]]
    events = [
        signed_event(cpc, "impression", at=impression_time()),
        signed_event(cpc, "click"),
        signed_event(others[0], "impression", user_agent="python-httpx/0.28"),
        {"event_id": "m-ghost", "event_type": "impression", "auction_id": "no-such-auction", "token": "x"},
    ]
    results = http.post("/v1/events", json={"events": events}).json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "accepted", "rejected"], results
    assert results[1]["charge_status"] == "charged" and results[2]["ivt_category"] == "givt"
    working_feedback, state.feedback_log = state.feedback_log, None
    try:
        assert http.post("/v1/events", json=signed_event(others[1], "impression")).status_code == 503
    finally:
        state.feedback_log = working_feedback

    # Requests refused: a body that does not validate, an OpenRTB request that breaks the spec, no such campaign.
    assert http.post("/v1/auction", json={"age": 3}).status_code == 422
    twice = {"id": "bad", "imp": [{"id": "1", "banner": {}}, {"id": "1", "banner": {}}], "site": {}}
    assert http.post("/openrtb2/auction", json=twice).status_code == 400
    assert http.get("/v1/campaigns/nobody", headers={"Authorization": "Bearer local-dev-token"}).status_code == 404

    # Models: a new ctr-model champion swapped in, then an online calibration of it; a bid filter promoted.
    registry = tracking_client(uri)
    one = registry.get_model_version(REGISTERED_MODEL, "1")
    two = registry.create_model_version(REGISTERED_MODEL, source=one.source, run_id=one.run_id, model_id=one.model_id)
    registry.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, two.version)
    assert state.watcher.poll_once() is PollOutcome.SWAPPED
    fitted = Calibration(str(two.version), CalibrationKind.PLATT, slope=1.1, intercept=-0.3,
                         fitted_at=datetime.now(UTC).isoformat(), offset_cpc=-0.2)  # fmt: skip
    write_calibrators(state.settings, [fitted])
    assert state.watcher.poll_calibration() is True
    version = register_table(uri, JUNK_FILTER)
    registry.set_registered_model_alias(BID_FILTER_MODEL, CHAMPION_ALIAS, version)
    assert state.bid_filter.poll_once() is True
    meter = state.metrics.bid_filter
    for i in range(60):  # half explored: until some junk is shed and some explored junk earned
        http.post("/openrtb2/auction", json=bid_request("junk.example", f"m-junk-{i}"))
        if meter.shed and meter.explored_revenue_below_threshold_cpm_micros:
            break
    assert meter.shed and meter.explored_revenue_below_threshold_cpm_micros, meter.snapshot()

    # A campaign stopped: the serving cache shrinks.
    with state.sessions() as session:
        store.apply_instruction(session, stop("m-stopped"))

    # Families only: the text format shows a counter's or histogram's creation time as a gauge of its own.
    declared = {name for name in before if name.startswith("adstream_") and not name.endswith("_created")}
    assert len(declared) >= 25, sorted(declared)
    deadline = time.monotonic() + 30  # housekeeping, pacing and the journal relay act on their own clocks
    while True:
        after = scrape(http)
        still = sorted(name for name in declared if not moved(before[name], after.get(name, {})))
        if not still or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert still == [], f"declared on /metrics but never moved: {still}"
    assert after.keys() >= declared


def test_sums_over_a_counters_labels_count_each_thing_once(service):
    _, http = service
    assert http.post("/v1/auction", json={"user_id": "m-sum"}).status_code == 200
    metrics = scrape(http)
    auctions = metrics["adstream_auctions"]
    outcomes = {dict(labels)["outcome"] for (_, labels) in auctions}
    assert outcomes <= {"filled", "no_fill"}  # a lost log record is another counter, not a third outcome
    total = sum(auctions.values())
    stats = http.get("/v1/stats").json()
    assert total == stats["auctions"] > 0
    assert "adstream_fill_rate" not in metrics  # a ratio of the counter above: rate() gives it


def test_the_process_families_are_on_the_services_own_registry(service):
    _, http = service
    first = scrape(http)
    for family in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert first.get(family), family
    assert any(name.startswith("python_gc_") for name in first)
    busy = time.process_time() + 0.3
    while time.process_time() < busy:  # the service runs in this process: burn some CPU it reports
        pass
    assert scrape(http)["process_cpu_seconds"] != first["process_cpu_seconds"]
