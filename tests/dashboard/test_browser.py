"""The dashboard in a real browser (Debian's chromium, driven by Selenium) against a live platform.

One platform for the module: a real auction service (Kafka broker, shared store, SQLite campaign store,
MLflow champion) behind uvicorn, gold/kpi_minute and gold/billing_hourly written by Spark as real Delta
tables, silver/auctions and gold/optimizer_decisions by delta-rs, an optimizer decision in the shared
store, and the dashboard behind its own uvicorn. One headless chromium for the module.

Each expected number is read apart from the dashboard: the service's JSON API with the campaign token,
the lake with delta-rs, and the figures the rows were written with.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pyarrow as pa
import pytest
import redis
import uvicorn
from deltalake import DeltaTable, write_deltalake
from PIL import Image

from adstream.contracts import Table
from adstream.decisions import pack, serve_key, version_key
from adstream.events import PLATFORMS, Targeting
from adstream.settings import Settings
from auction_service.api.app import create_app as create_auction_app
from auction_service.campaign_store import store
from dashboard.app import chart_library_dir
from dashboard.app import create_app as create_dashboard
from dashboard.sources import SnapshotBuilder
from devstack.services import PROJECT_ROOT
from spark_jobs.billing.transforms import BILL_COLUMNS, BILL_DDL
from tests.auction_service.conftest import (
    BROWSER,
    TOKEN,
    impression_time,
    instruction,
    live_server,
    running_service,
    signed_event,
    stop,
)
from tests.conftest import free_port

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

SCREENSHOTS = PROJECT_ROOT / "reports" / "dashboard"
VIEWS = ("campaigns", "kpis", "serving", "quality", "finance")
CONTEXT = {"device_type": "desktop", "country": "Norway", "channel": "web"}
SERVED = instruction(
    "dash-cpc", targeting=Targeting(device_types=["desktop"], countries=["Norway"]), daily_budget_micros=30_000_000
)
OTHERS = (
    # A rival for the same requests: the winner pays about the rival's bid per click, not the reserve price.
    instruction("dash-rival", targeting=Targeting(device_types=["desktop"], countries=["Norway"]), bid_micros=400_000),
    instruction("dash-cpm", pricing_model="CPM", bid_micros=2_000_000, targeting=Targeting(device_types=["ctv"])),
    instruction("dash-stopped"),
    stop("dash-stopped"),
)
REFRESH_S = 0.5
DASH, TIMES = "\u2013", "\u00d7"  # what the page shows for "none", and before a multiplier
MINUTE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
HOUR = MINUTE.replace(minute=0) - timedelta(hours=1)
KPI_DDL = (
    "campaign_id string, minute timestamp, device_type string, channel string, content_type string, "
    "impressions bigint, clicks bigint, conversions bigint, video_starts bigint, video_completes bigint, "
    "spend_micros bigint, ad_relevance_score double, ivt_impressions bigint, ivt_clicks bigint, event_date date"
)
# (campaign, minute, device, channel, content, impressions, clicks, conversions, video starts, completes, spend,
#  relevance, IVT impressions, IVT clicks): web at the newest minute is 300 impressions and 9 clicks (CTR 3.00 %),
# 4.5 USD (RPAI 0.015), relevance (200 x 0.02 + 100 x 0.05) / 300 = 0.03; IVT 25 of 25 + 400 impressions.
KPI_ROWS = [
    ("dash-cpc", MINUTE, "desktop", "web", "news", 200, 6, 2, 10, 7, 3_000_000, 0.02, 20, 4),
    ("dash-cpm", MINUTE, "mobile", "web", "sports", 100, 3, 0, 0, 0, 1_500_000, 0.05, 5, 0),
    ("dash-cpm", MINUTE, "ctv", "app", "sports", 50, 0, 0, 40, 30, 2_000_000, None, 0, 0),
    ("dash-cpc", MINUTE - timedelta(minutes=1), "desktop", "web", "news", 80, 1, 0, 0, 0, 400_000, 0.01, 0, 0),
]


@dataclass
class Platform:
    settings: Settings
    auction_url: str
    dashboard_url: str
    builder: SnapshotBuilder

    def api(self, path: str) -> dict:
        response = httpx.get(f"{self.auction_url}{path}", headers=TOKEN, timeout=10)
        response.raise_for_status()
        return response.json()


def write_lake(spark, settings: Settings) -> None:
    kpis = spark.createDataFrame([(*row, row[1].date()) for row in KPI_ROWS], KPI_DDL)
    kpis.write.format("delta").mode("overwrite").partitionBy("event_date").save(
        settings.lake_path(Table.GOLD_KPI_MINUTE)
    )
    base = dict.fromkeys(BILL_COLUMNS)
    bills = [
        base | {"hour": HOUR, "campaign_id": "dash-cpc", "advertiser_id": "adv-dash-cpc", "status": "final",
                "spend_micros": 7_250_000, "gross_spend_micros": 7_500_000, "ivt_credit_micros": 250_000},
        base | {"hour": HOUR, "campaign_id": "dash-cpm", "advertiser_id": "adv-dash-cpm", "status": "held_back",
                "spend_micros": 1_000_000, "gross_spend_micros": 1_000_000, "ivt_credit_micros": 0,
                "held_reason": "reconciliation"},
        base | {"hour": HOUR + timedelta(hours=1), "status": "provisional", "spend_micros": 0, "gross_spend_micros": 0,
                "ivt_credit_micros": 0},
    ]  # fmt: skip
    frame = spark.createDataFrame([tuple(row[c] for c in BILL_COLUMNS) for row in bills], BILL_DDL)
    frame.write.format("delta").mode("overwrite").save(settings.lake_path(Table.GOLD_BILLING_HOURLY))
    # silver/auctions' latency of the newest five minutes: p50 of 1..9 ms is 5 ms.
    latencies = [float(ms) for ms in range(1, 10)]
    auctions = pa.table({
        "event_time": pa.array([MINUTE] * 9, pa.timestamp("us", tz="UTC")), "event_date": [MINUTE.date()] * 9,
        "filled": [True] * 6 + [False] * 3, "candidate_count": [2] * 6 + [0, 0, 1], "latency_ms": latencies,
        "bid_filter_score": pa.array([None] * 9, pa.float64()), "bid_filter_explored": pa.array([None] * 9, pa.bool_()),
    })  # fmt: skip
    location, _ = settings.delta_rs_location(Table.SILVER_AUCTIONS)
    write_deltalake(location, auctions, partition_by=["event_date"])
    platforms = [{"platform": p, "reason": "exploit" if p == "web/desktop" else "explore"} for p in PLATFORMS]
    decisions = pa.table({
        "campaign_id": ["dash-cpc"], "version": [2], "decided_at": pa.array([MINUTE], pa.timestamp("us", tz="UTC")),
        "decided_date": [MINUTE.date()], "platforms": [platforms],
    })  # fmt: skip
    location, _ = settings.delta_rs_location(Table.GOLD_OPTIMIZER_DECISIONS)
    write_deltalake(location, decisions, partition_by=["decided_date"])


def publish_decision(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.shared_store_url)
    multipliers = [1_250_000 if p == "web/desktop" else 1_000_000 for p in PLATFORMS]
    client.hset(serve_key(settings.shared_store_namespace), "dash-cpc", pack(2, 0, multipliers))
    client.incr(version_key(settings.shared_store_namespace))
    client.close()


@contextmanager
def dashboard_server(settings: Settings) -> Iterator[str]:
    """The dashboard behind uvicorn on a free loopback port; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(create_dashboard(settings), host="127.0.0.1", port=settings.dashboard_port,
                                           log_level="warning", lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.dashboard_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def platform(service_settings, spark) -> Iterator[Platform]:
    # The module's rows are dated MINUTE, when it was imported, and the page shows the budget day's: a day that
    # begins 12 hours before MINUTE keeps them today for a run past midnight UTC.
    origin_s = int(MINUTE.timestamp()) - 43_200
    settings = service_settings.model_copy(
        update={"dashboard_refresh_s": REFRESH_S, "dashboard_port": free_port(), "pacing_day_origin_s": origin_s}
    )
    write_lake(spark, settings)
    publish_decision(settings)
    with (
        running_service(settings, SERVED, *OTHERS) as state,
        live_server(create_auction_app(state=state)) as auction_url,
    ):
        port = int(auction_url.rsplit(":", 1)[1])
        # The project's LOCAL_DIR, where `make setup` installed the chart library; the rest is the module's.
        dashboard_settings = settings.model_copy(update={"auction_port": port, "local_dir": PROJECT_ROOT / ".local"})
        with dashboard_server(dashboard_settings) as dashboard_url:
            builder = SnapshotBuilder(dashboard_settings)
            try:
                yield Platform(dashboard_settings, auction_url, dashboard_url, builder)
            finally:
                builder.close()


@pytest.fixture(scope="module")
def browser(platform):
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.skip("no chromedriver on PATH: `make setup` installs Debian's chromium and chromium-driver")
    try:
        driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=chromedriver))
    except WebDriverException as exc:
        pytest.skip(f"no headless chromium ({exc.msg}): `make setup` installs Debian's chromium and chromium-driver")
    driver.get(platform.dashboard_url)
    wait_for(driver, lambda: updates(driver) >= 1, "the page never rendered a snapshot")
    yield driver
    driver.quit()


def updates(driver) -> int:
    return int(driver.execute_script("return +document.body.dataset.updates || 0"))


def wait_for(driver, condition: Callable[[], object], message: str, timeout_s: float = 20.0) -> None:
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda _: condition())
    except TimeoutException:
        pytest.fail(f"{message} within {timeout_s:.0f}s")


# The page replaces its rows at every update: each read is one script, never an element held across updates.
def text(driver, css: str) -> str | None:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText.trim()", css)


def texts(driver, css: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText.trim())", css
    )


def cells(driver, row_css: str) -> dict[str, str]:
    return driver.execute_script(
        """const row = document.querySelector(arguments[0]);
        return row && Object.fromEntries([...row.querySelectorAll('td[data-k]')].map(
            td => [td.dataset.k, td.innerText.trim()]));""",
        row_css,
    )


def usd(micros: int) -> str:
    return f"{micros / 1e6:.2f}"


def campaign_cells(driver, campaign_id: str) -> dict[str, str]:
    return cells(driver, f'tr[data-campaign="{campaign_id}"]')


def settled(driver, read: Callable[[], tuple[str, str]], message: str) -> None:
    """Until the page's figure equals the one read apart (both read anew each time)."""
    seen: list[tuple[str, str]] = []

    def same() -> bool:
        seen.append(read())
        return seen[-1][0] == seen[-1][1]

    try:
        WebDriverWait(driver, 20, poll_frequency=0.25).until(lambda _: same())
    except TimeoutException:
        pytest.fail(f"{message}: page and source differ: {seen[-1] if seen else None}")


# --- the numbers on the page are the API's and the lake's ---


def test_campaigns_show_the_apis_status_spend_budget_plan_and_pacing(platform, browser):
    for campaign_id in ("dash-cpc", "dash-cpm"):
        view = platform.api(f"/v1/campaigns/{campaign_id}")
        cells = campaign_cells(browser, campaign_id)
        pacing = view["pacing"]
        assert cells["status"] == view["status"] == "active"
        assert cells["spent"] == f"{usd(view['spent_micros'])} / {usd(view['spec']['total_budget_micros'])}"
        assert cells["spent_today"] == usd(view["spent_today_micros"])
        assert cells["daily_budget"] == usd(view["spec"]["daily_budget_micros"])
        assert cells["lambda"] == f"{pacing['pacing_multiplier']:.3f}"
        assert cells["throttle"] == f"{pacing['throttle_rate'] * 100:.2f}%"
        # The plan grows with the day: read a moment apart, within a cent.
        assert abs(float(cells["plan"]) - pacing["plan_micros"] / 1e6) <= 0.011
    assert platform.api("/v1/campaigns/dash-stopped")["status"] == "stopped"
    assert "1 stopped" in text(browser, "#campaign-counts") and "4 campaigns" in text(browser, "#campaign-counts")


def test_campaign_platforms_show_todays_lake_figures_and_the_optimizers_decision(platform, browser):
    # gold/kpi_minute read apart: dash-cpc on web/desktop today.
    location, _ = platform.settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    rows = DeltaTable(location).to_pandas(filters=[("campaign_id", "=", "dash-cpc")])
    impressions, clicks, conversions = (int(rows[c].sum()) for c in ("impressions", "clicks", "conversions"))
    spend = int(rows["spend_micros"].sum())
    assert (impressions, clicks, conversions, spend) == (280, 7, 2, 3_400_000)
    ecpm = usd(spend * 1000 // impressions)
    shown = text(browser, 'tr[data-campaign="dash-cpc"] span[data-platform="web/desktop"]')
    ratios = f"{clicks / impressions:.2%} · {conversions / clicks:.2%}"
    assert shown == f"web/desktop {ecpm} · {ratios} · {DASH} {TIMES}1.25 (exploit)"  # no conversion value: no ROI


def test_kpis_per_minute_show_the_gold_tables_newest_minute(platform, browser):
    location, _ = platform.settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    kpis = DeltaTable(location).to_pandas()
    newest = kpis[kpis["minute"] == kpis["minute"].max()]
    web = newest[newest["channel"] == "web"]
    web_cells = cells(browser, 'tr[data-dimension="channel"][data-value="web"]')
    assert web_cells["impressions"] == f"{int(web['impressions'].sum()):,}" == "300"
    assert web_cells["ctr"] == f"{web['clicks'].sum() / web['impressions'].sum():.2%}" == "3.00%"
    assert web_cells["rpai"] == "0.015000" and web_cells["ad_relevance_score"] == "0.0300"
    assert web_cells["ad_completion_rate"] == "70.00%"  # 7 of 10 video starts
    ctv = cells(browser, 'tr[data-dimension="device_type"][data-value="ctv"]')
    assert ctv["ad_relevance_score"] == DASH  # no pCTR logged
    for dimension in ("channel", "device_type", "content_type"):  # a uPlot chart per dimension, drawn
        if chart_library_dir(platform.settings).is_dir():
            assert browser.find_elements(By.CSS_SELECTOR, f"#chart-{dimension} canvas"), dimension
        else:  # npm was missing at `make setup`: the page says so where the chart would be
            assert text(browser, f"#chart-{dimension}") == "uPlot is not installed: run `make setup`"


def test_finance_shows_each_billed_hour_with_its_status(platform, browser):
    location, _ = platform.settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)
    bill = DeltaTable(location).to_pandas()
    shown = [row.split() for row in texts(browser, "#bill-rows tr")]
    older = bill[bill["hour"] == bill["hour"].min()]
    newest_hour = HOUR + timedelta(hours=1)
    assert shown == [
        [f"{newest_hour:%Y-%m-%d}", f"{newest_hour:%H:%M}", "provisional", "0", "0", "0.00", "0.00", "0.00"],
        [f"{HOUR:%Y-%m-%d}", f"{HOUR:%H:%M}", "final", "2", "1", usd(int(older["spend_micros"].sum())),
         usd(int(older["gross_spend_micros"].sum())), usd(int(older["ivt_credit_micros"].sum()))],
    ]  # fmt: skip
    assert shown[1][5:] == ["8.25", "8.50", "0.25"]


def test_serving_and_quality_show_the_stats_and_the_lakes_figures(platform, browser):
    def auctions() -> tuple[str, str]:
        return text(browser, "#serving-auctions"), f"{platform.api('/v1/stats')['auctions']:,}"

    settled(browser, auctions, "auctions")
    stats = platform.api("/v1/stats")
    assert text(browser, "#serving-fill-rate") == f"{stats['fill_rate']:.2%}"
    assert text(browser, "#serving-latency") == "5.00 / 8.60 / 8.92"  # 1..9 ms, linear interpolation
    no_fill = [row.split("\t") for row in texts(browser, "#no-fill-rows tr")]
    assert no_fill == [["no campaign matched", "2"], ["no candidate cleared the floor or pacing", "1"]]
    assert text(browser, "#quality-model").startswith(f"{stats['model_version']} ({stats['scorer']})")
    location, _ = platform.settings.delta_rs_location(Table.GOLD_KPI_MINUTE)
    kpis = DeltaTable(location).to_pandas()  # every row is in the newest hour
    invalid, valid = int(kpis["ivt_impressions"].sum()), int(kpis["impressions"].sum())
    assert (invalid, valid) == (25, 430)
    assert text(browser, "#quality-ivt-rate") == f"{invalid / (invalid + valid):.2%}" == "5.49%"
    assert text(browser, "#quality-ivt-counts") == "25 / 4"


# --- live ---


def drive_traffic(platform: Platform, auctions: int) -> dict[str, int]:
    """``auctions`` auctions over HTTP, each with its impression and then a click (both campaigns that can win pay
    per click); the micros charged per winning campaign."""
    charged: dict[str, int] = {}
    with httpx.Client(base_url=platform.auction_url, headers=BROWSER, timeout=10) as client:
        for _ in range(auctions):
            served = client.post("/v1/auction", json=CONTEXT)
            assert served.status_code == 200, served.text
            auction = served.json()
            tag = uuid.uuid4().hex[:8]
            shown = client.post(
                "/v1/events", json=signed_event(auction, "impression", f"imp-{tag}", at=impression_time())
            )
            assert shown.status_code == 202, shown.text
            (click,) = client.post("/v1/events", json=signed_event(auction, "click", f"clk-{tag}")).json()["results"]
            assert click["charge_status"] == "charged", click
            charged[auction["campaign_id"]] = charged.get(auction["campaign_id"], 0) + click["charged_micros"]
    return charged


def spent_today(platform: Platform, campaign_id: str) -> int:
    return platform.api(f"/v1/campaigns/{campaign_id}")["spent_today_micros"]


def test_the_numbers_change_while_traffic_flows_without_a_reload(platform, browser):
    before_auctions = text(browser, "#serving-auctions")
    before = {c: campaign_cells(browser, c)["spent_today"] for c in ("dash-cpc", "dash-rival")}
    before_api = {c: spent_today(platform, c) for c in before}
    page = browser.execute_script("return window.performance.timeOrigin")
    charged = drive_traffic(platform, 5)
    assert sum(charged.values()) >= 5 * 10_000  # at least a cent a click: the page's cents move

    def auctions() -> tuple[str, str]:
        return text(browser, "#serving-auctions"), f"{platform.api('/v1/stats')['auctions']:,}"

    def fill_rate() -> tuple[str, str]:
        return text(browser, "#serving-fill-rate"), f"{platform.api('/v1/stats')['fill_rate']:.2%}"

    settled(browser, auctions, "auctions after traffic")
    settled(browser, fill_rate, "the fill rate after traffic")
    assert text(browser, "#serving-auctions") != before_auctions and text(browser, "#serving-fill-rate") != "0.00%"
    live = platform.api("/v1/stats")["latency_ms"]  # the replica's own newest auctions, live (no traffic now)
    assert live["auctions"] > 0
    assert text(browser, "#serving-latency-live") == f"{live['p50']:.2f} / {live['p95']:.2f} / {live['p99']:.2f}"
    for campaign_id, micros in charged.items():
        ledger = before_api[campaign_id] + micros

        def spend(c: str = campaign_id) -> tuple[str, str]:
            return campaign_cells(browser, c)["spent_today"], usd(spent_today(platform, c))

        wait_for(browser, lambda c=campaign_id, m=ledger: spent_today(platform, c) >= m, f"{campaign_id}'s charges")
        settled(browser, spend, f"{campaign_id}'s spend today after traffic")
        assert campaign_cells(browser, campaign_id)["spent_today"] != before[campaign_id]
    assert browser.execute_script("return window.performance.timeOrigin") == page  # the same page: no reload
    wait_for(browser, lambda: text(browser, "#serving-rate") not in (DASH, ""), "no auctions/s")


def test_the_browser_logged_no_console_error(browser):
    logged = browser.get_log("browser")
    assert [entry for entry in logged if entry["level"] in ("SEVERE", "ERROR")] == []


def test_a_screenshot_of_each_view_is_kept_and_is_not_blank(browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for view in VIEWS:
        section = browser.find_element(By.ID, view)
        browser.execute_script("arguments[0].scrollIntoView()", section)
        path = SCREENSHOTS / f"{view}.png"
        path.unlink(missing_ok=True)
        assert section.screenshot(str(path))
        with Image.open(path) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
            width, height = image.size
        assert width > 300 and height > 80, (view, image.size)
        assert colours is None or len(colours) >= 20, f"{view}: {len(colours)} colours, a blank view"


# --- the targets, with 1,000 campaigns (last: they change the page) ---


def test_with_1000_campaigns_a_snapshot_builds_within_200ms_and_the_page_paints_within_1s(platform, browser):
    with store_session(platform.settings) as session:
        for n in range(1000):
            store.apply_instruction(session, instruction(f"load-{n:04d}", category="Books"))
    wait_for(browser, lambda: platform.api("/v1/stats")["campaigns"] == 1003, "the service never served the 1,000")
    browser.get("about:blank")  # the page's own updates off while timing: the dashboard runs in this process
    stats_ms, build_ms = [], []
    platform.builder.build()  # the first build reads the lake's tables; later ones only check their versions
    for _ in range(7):
        began = time.perf_counter()
        httpx.get(f"{platform.auction_url}/v1/stats", timeout=10).raise_for_status()
        stats_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        snapshot = platform.builder.build()
        build_ms.append((time.perf_counter() - began) * 1000)
    assert snapshot.body["campaigns"]["total"] == 1004 and snapshot.body["campaigns"]["shown"] == 100
    browser.get(platform.dashboard_url)
    wait_for(browser, lambda: updates(browser) >= 1, "the page never rendered with 1,000 campaigns")
    first_render_ms = float(browser.execute_script("return +document.body.dataset.firstRenderMs"))
    paint = browser.execute_script(
        "return performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0] || null"
    )
    figures = {
        "campaigns": 1004, "snapshot_build_ms_median": statistics.median(build_ms), "snapshot_build_ms": build_ms,
        "v1_stats_ms_median": statistics.median(stats_ms), "v1_stats_ms": stats_ms,
        "first_contentful_paint_ms": paint, "first_render_with_data_ms": first_render_ms,
    }  # fmt: skip
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "timings.json").write_text(json.dumps(figures, indent=2) + "\n")
    # 200 ms where a /v1/stats read takes up to 40 ms; on a slower machine 5x that read, timed in the same loop
    # (a build makes one such read, then the store's and the lake's).
    assert statistics.median(build_ms) <= max(200, 5 * statistics.median(stats_ms)), figures
    assert first_render_ms <= 1000, figures


@contextmanager
def store_session(settings: Settings) -> Iterator:
    from auction_service.campaign_store.db import make_engine, make_session_factory

    with make_session_factory(make_engine(settings))() as session:
        yield session
