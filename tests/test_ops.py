"""The operations page: its bounded history, the watchdog timeline, /ops/data, and the page
itself in headless Chromium against the real gateway process.

The decision lists below have the shape `sentiguard.watchdog.actions` gives them (the
fields each `decide(...)` call passes, plus `ts`, `event`, `worker`, `pid`, `reason`,
`action` from `DecisionLog`), so the grouping is tested on what the watchdog really sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from sentiguard import settings as settings_mod
from sentiguard.chaos.ports import free_port
from sentiguard.chaos.service import run_gateway
from sentiguard.gateway.app import create_app, gateway_of
from sentiguard.gateway.control_app import create_control_app
from sentiguard.gateway.history import POINTS, Ring
from sentiguard.gateway.incidents import MAX_TEXT, DecisionHistory, group
from sentiguard.runtime import control
from sentiguard.runtime.control import ControlClient
from sentiguard.runtime.paths import RunDir, write_atomic
from tests.gateway_helpers import FakeFallback, ListLog, make_settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def at(second: int, ms: int = 0) -> str:
    """A decision timestamp as `sentiguard.logs.now_iso` writes it."""
    return f"2026-11-29T12:03:{second:02d}.{ms:03d}Z"


def hang(worker: str = "primary_1", start: int = 41) -> list[dict[str, Any]]:
    return [
        {
            "ts": at(start), "event": "recycle", "worker": worker, "pid": 4242,
            "reason": "hang", "probe_ms": 0.0, "rtt_ms": None, "budget_ms": 2000.0,
            "misses": 3, "probe_error": "timeout", "action": "drain+kill+start",
        },
        {
            "ts": at(start, 2), "event": "drained", "worker": worker, "pid": 4242,
            "reason": "hang", "in_flight": 0, "waited_s": 0.0, "gateway": True,
            "action": "kill",
        },
        {
            "ts": at(start, 310), "event": "killed", "worker": worker, "pid": 4242,
            "reason": "hang", "pids": [4242, 4243], "stopped_s": 0.3, "action": "start",
        },
        {
            "ts": at(start + 9, 800), "event": "ready", "worker": worker, "pid": 5151,
            "reason": None, "model_version": "sbert-1", "waited_s": 9.4,
            "recovered_s": 9.8, "action": "route",
        },
    ]  # fmt: skip


def leak(worker: str = "primary_0", start: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "ts": at(start), "event": "recycle", "worker": worker, "pid": 3030,
            "reason": "memory", "rss_mb": 912.4, "uss_mb": 761.9, "limit_mb": 600.0,
            "samples": 3, "action": "drain+restart",
        },
        {
            "ts": at(start, 500), "event": "drained", "worker": worker, "pid": 3030,
            "reason": "memory", "in_flight": 2, "waited_s": 0.5, "gateway": True,
            "action": "stop",
        },
        {
            "ts": at(start + 1), "event": "stopped", "worker": worker, "pid": 3030,
            "reason": "memory", "stopped_s": 0.4, "action": "start",
        },
        {
            "ts": at(start + 14), "event": "ready", "worker": worker, "pid": 3131,
            "reason": None, "model_version": "sbert-1", "waited_s": 13.1,
            "recovered_s": 14.2, "action": "route",
        },
    ]  # fmt: skip


def crash(worker: str = "primary_0", start: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "ts": at(start), "event": "crash", "worker": worker, "pid": 2020,
            "reason": "killed by a signal", "exitstatus": -1, "backoff_s": 1.0,
            "attempt": 1, "action": "start in 1.0s",
        },
        {
            "ts": at(start + 1, 100), "event": "start", "worker": worker, "pid": None,
            "reason": "crash", "attempt": 1, "action": "start",
        },
        {
            "ts": at(start + 8, 300), "event": "ready", "worker": worker, "pid": 2121,
            "reason": None, "model_version": "sbert-1", "waited_s": 7.1,
            "recovered_s": 8.2, "action": "route",
        },
    ]  # fmt: skip


# --- the ring buffer ---------------------------------------------------------------------


def test_ring_keeps_its_capacity_and_drops_the_oldest() -> None:
    ring: Ring[int] = Ring(5)
    for i in range(12):
        ring.append(i)
    assert len(ring) == 5
    assert ring.items() == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError):
        Ring(0)


def test_the_gateway_history_is_bounded_whatever_the_uptime() -> None:
    settings = make_settings(**{"primary.base_port": free_port()})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    history = gateway_of(app).history
    clock = [0.0]
    history.clock = lambda: clock[0]
    for _ in range(POINTS + 150):
        history.sample()
        clock[0] += 1.0
    series = history.series()
    assert len(history.ring) == POINTS == 600
    assert len(series["t"]) == POINTS
    assert all(len(column) == POINTS for column in series["answers"].values())
    assert len(series["workers"]["primary_0"]["rss_mb"]) == POINTS
    gateway_of(app).close()


# --- the timeline ------------------------------------------------------------------------


def summaries(decisions: list[dict[str, Any]]) -> list[str]:
    return [i.summary for i in group(decisions)]


def test_a_hang_reads_as_one_line() -> None:
    [incident] = group(hang())
    assert incident.summary == (
        "primary_1 hang: 3 probes missed (timeout) -> drained, killed, restarted, ready after 9.8 s"
    )
    assert incident.cause == "hang" and not incident.open and incident.recovered_s == 9.8
    assert incident.ts == at(41) and incident.end_ts == at(50, 800)


def test_a_memory_recycle_names_the_limit_and_the_drain() -> None:
    assert summaries(leak()) == [
        "primary_0 memory: USS 762 MB over the 600 MB limit (3 samples) -> "
        "drained (2 in flight), stopped, restarted, ready after 14.2 s"
    ]


def test_a_killed_worker_reads_as_a_crash_with_its_backoff() -> None:
    assert summaries(crash()) == [
        "primary_0 crash: killed by a signal -> restart in 1 s, restarted, ready after 8.2 s"
    ]


def test_a_crash_loop_stays_one_incident_until_ready() -> None:
    decisions = [
        *crash()[:2],
        {
            "ts": at(3), "event": "start_failed", "worker": "primary_0", "pid": 2222,
            "reason": "exited with status 70", "exitstatus": 70, "waited_s": 1.2,
            "action": "back off or park",
        },
        {
            "ts": at(4), "event": "crash", "worker": "primary_0", "pid": 2222,
            "reason": "exited with status 70", "exitstatus": 70, "backoff_s": 2.0,
            "attempt": 2, "action": "start in 2.0s",
        },
        {
            "ts": at(6), "event": "start", "worker": "primary_0", "pid": None,
            "reason": "crash", "attempt": 2, "action": "start",
        },
    ]  # fmt: skip
    [incident] = group(decisions)
    assert incident.open
    assert incident.summary == (
        "primary_0 crash: killed by a signal -> restart in 1 s, restarted, "
        "start failed (exited with status 70), restart in 2 s, restarted …"
    )
    [closed] = group([*decisions, crash()[2] | {"ts": at(20)}])
    assert closed.summary.endswith("restarted, ready after 8.2 s")


def test_two_workers_interleaved_and_notes_of_their_own() -> None:
    startup = {
        "ts": at(0), "event": "ready", "worker": "primary_1", "pid": 1111, "reason": None,
        "model_version": "sbert-1", "waited_s": 35.2, "recovered_s": None, "action": "route",
    }  # fmt: skip
    hold = {
        "ts": at(12), "event": "memory_hold", "worker": "primary_1", "pid": 1111,
        "reason": "memory", "rss_mb": 700.0, "uss_mb": 650.0, "limit_mb": 600.0,
        "samples": 3, "waiting_for": ["primary_0"], "action": "hold",
    }  # fmt: skip
    # primary_1 is held while primary_0 is down; primary_0 leaks once it is back.
    decisions = [startup, *crash(), hold, *leak(start=20)]
    decisions.sort(key=lambda d: str(d["ts"]))
    assert summaries(decisions) == [
        "primary_1 ready (pid 1111, after 35.2 s of loading)",
        "primary_0 crash: killed by a signal -> restart in 1 s, restarted, ready after 8.2 s",
        "primary_1 memory: USS 650 MB over the 600 MB limit, recycle held: it is the last "
        "ready worker (waiting for primary_0)",
        "primary_0 memory: USS 762 MB over the 600 MB limit (3 samples) -> "
        "drained (2 in flight), stopped, restarted, ready after 14.2 s",
    ]


def test_a_parked_worker_stays_open_with_its_retry() -> None:
    park = {
        "ts": at(30), "event": "park", "worker": "primary_0", "pid": 999,
        "reason": "cannot_start", "exitstatus": 4, "retry_s": 300.0, "cause": "corrupt",
        "fix": "retrain: sentiguard train primary", "action": "park; retry in 300.0s",
    }  # fmt: skip
    [incident] = group([park])
    assert incident.open and incident.cause == "cannot_start"
    assert incident.summary == "primary_0 cannot start: model corrupt -> parked, retry in 300 s …"


def test_decision_history_dedupes_repeated_reports_and_is_bounded() -> None:
    decisions = [*crash(), *hang()]
    history = DecisionHistory(keep=5)
    # Each report repeats the watchdog's last few decisions.
    assert history.add(decisions[0:3]) == 3
    assert history.add(decisions[1:5]) == 2
    assert len(history) == 5
    assert history.add(decisions[3:7]) == 2
    assert len(history) == 5
    assert [d["ts"] for d in history.items()] == [d["ts"] for d in decisions[2:7]]
    # Not decisions, or not a list: ignored. Long text is cut, nested objects dropped.
    assert history.add([None, "x", {"event": "ready"}]) == 0
    assert history.add("not a list") == 0
    long = {"ts": at(59), "event": "park", "worker": "primary_0", "fix": "x" * 5000, "o": {}}
    history.add([long])
    kept = history.items()[-1]
    assert len(kept["fix"]) == MAX_TEXT and "o" not in kept


# --- /ops/data ---------------------------------------------------------------------------


def test_ops_data_has_history_workers_limits_and_incidents(tmp_path: Path) -> None:
    settings = make_settings(
        **{
            "primary.base_port": free_port(),
            "primary.workers": 1,
            "service.run_dir": str(tmp_path / "run"),
            "gateway.max_in_flight_per_worker": 6,
        }
    )
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    gateway = gateway_of(app)
    clock = [100.0]
    gateway.history.clock = lambda: clock[0]
    gateway.history.sample()  # the baseline
    client = app.test_client()
    for _ in range(3):  # no worker is ready: the fallback answers, primary_down
        assert client.post("/analyze", json={"text": "很好"}).status_code == 200
    control.new_secret(settings)
    control_client = create_control_app(settings, gateway.state, ListLog()).test_client()
    headers = {control.SECRET_HEADER: control.read_secret(settings)}
    report = {"drain": False, "state": "backoff", "rss_mb": 512.5, "uss_mb": 350.25,
              "restarts": {"memory": 1, "hang": 0, "crash": 2, "reload": 0}}  # fmt: skip
    put = control_client.put("/control/workers/primary_0", json=report, headers=headers)
    assert put.status_code == 200
    decisions = [*crash(), *leak()]
    for window in (decisions[:4], decisions[2:]):  # two reports, overlapping
        body = {"pid": 77, "limits": {"memory_limit_mb": 640.0}, "decisions": window}
        put = control_client.put("/control/watchdog", json=body, headers=headers)
        assert put.status_code == 200
    clock[0] += 2.0
    gateway.history.sample()

    response = client.get("/ops/data")
    assert response.status_code == 200
    data = response.get_json()
    series = data["series"]
    assert len(series["t"]) == 2
    assert series["answers"]["fallback:primary_down"] == [None, 1.5]  # 3 answers in 2 s
    assert series["answers"]["primary"] == [None, 0.0]
    assert series["shed"] == [None, 0.0]
    memory = series["workers"]["primary_0"]
    assert memory["rss_mb"] == [None, 512.5] and memory["uss_mb"] == [None, 350.25]
    assert memory["ready"] == [0, 0] and memory["in_flight"] == [0, 0]
    [row] = data["workers"]
    assert row["name"] == "primary_0" and row["state"] == "backoff"
    assert row["capacity"] == 6 == data["capacity_per_worker"]
    assert row["memory_limit_mb"] == 640.0 == data["memory_limit_mb"]  # the watchdog's
    assert row["restarts"] == {"memory": 1, "hang": 0, "crash": 2, "reload": 0}
    assert data["window_s"] == 600 and data["interval_s"] == 1.0
    assert data["watchdog"]["pid"] == 77 and "decisions" not in data["watchdog"]
    # Newest first, each decision once although both reports carried some of them.
    assert [i["cause"] for i in data["incidents"]] == ["memory", "crash"]
    assert data["incidents"][1]["summary"].endswith("ready after 8.2 s")
    assert len(gateway.state.decisions) == len(decisions)
    gateway.close()


def test_ops_data_needs_the_key_the_page_does_not() -> None:
    key = "ops-key-2718"
    settings = make_settings(**{"primary.base_port": free_port(), "gateway.api_key": key})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    client = app.test_client()
    assert client.get("/ops/data").status_code == 401
    assert client.get("/ops/data", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/ops/data", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/ops/data", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with client.get("/ops") as page:  # a file response: closed, or a ResourceWarning
        assert page.status_code == 200 and b"/static/ops.js" in page.data
    with client.get("/static/vendor/uplot/uPlot.iife.min.js") as script:
        assert script.status_code == 200 and b"uPlot" in script.data
    spec = client.get("/openapi.json").get_json()
    assert spec["paths"]["/ops/data"]["get"]["security"]
    assert "401" in spec["paths"]["/ops/data"]["get"]["responses"]
    assert "/ops" in spec["paths"]
    gateway_of(app).close()


def test_the_sampler_thread_stops_with_the_gateway() -> None:
    settings = make_settings(**{"primary.base_port": free_port()})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=True)
    gateway = gateway_of(app)
    thread = gateway.history._thread
    assert thread is not None and thread.is_alive()
    gateway.close()
    assert not thread.is_alive()


# --- the page in Chromium ----------------------------------------------------------------

KEY = "ops-browser-key-1618"


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("ops-gateway")
    with run_gateway(root, **{"gateway.api_key": KEY}) as url:
        yield url, root / "run"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)


CHARTS_DRAWN = """
const ids = ["memory-chart", "answers-chart", "flight-chart"];
return ids.every((id) => {
  const canvas = document.querySelector(`#${id} canvas`);
  return canvas !== null && canvas.width > 0 && canvas.height > 0;
});
"""

# Pixels of the memory chart in the limit line's colour (#c0392b): the line is drawn.
LIMIT_PIXELS = """
const canvas = document.querySelector("#memory-chart canvas");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - 192) < 24 && Math.abs(data[i + 1] - 57) < 24
      && Math.abs(data[i + 2] - 43) < 24 && data[i + 3] > 200) n++;
}
return n;
"""


def report_to_gateway(run_dir: Path) -> None:
    """What the watchdog would send: a worker's memory and restarts, and its decisions."""
    settings = settings_mod.load(None, environ={}, overrides={"service.run_dir": str(run_dir)})
    client = ControlClient(settings)
    worker = {"drain": False, "state": "backoff", "rss_mb": 540.0, "uss_mb": 380.0,
              "restarts": {"memory": 1, "hang": 0, "crash": 1, "reload": 0}}  # fmt: skip
    assert client.request("PUT", "/control/workers/primary_0", worker)[0] == 200
    body = {"pid": 99, "limits": {"memory_limit_mb": 600.0}, "decisions": [*crash(), *leak()]}
    assert client.request("PUT", "/control/watchdog", body)[0] == 200


@contextlib.contextmanager
def report_programs(run_dir: Path, problem: str) -> Iterator[None]:
    """Rewrite <run_dir>/programs.json every 0.5 s with `problem`, as `up` would."""
    settings = settings_mod.load(None, environ={}, overrides={"service.run_dir": str(run_dir)})
    path = RunDir(settings).programs_report
    stop = threading.Event()

    def write() -> None:
        while True:
            report = {"updated": time.time(), "programs": [], "problems": [problem]}
            write_atomic(path, json.dumps(report))
            if stop.wait(0.5):
                return

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        path.unlink(missing_ok=True)


@pytest.mark.browser
@pytest.mark.integration
def test_ops_page_asks_for_the_key_then_draws_charts_table_and_timeline(
    browser: WebDriver, keyed_gateway: tuple[str, Path]
) -> None:
    url, run_dir = keyed_gateway
    report_to_gateway(run_dir)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.get(url + "/ops")
    browser.execute_script("localStorage.clear()")
    browser.get(url + "/ops")
    panel = browser.find_element(By.ID, "key-panel")
    wait_for(browser, lambda d: panel.is_displayed())
    assert "API key required" in browser.find_element(By.ID, "ops-status").text
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    wait_for(browser, lambda d: not panel.is_displayed())

    wait_for(browser, lambda d: d.execute_script(CHARTS_DRAWN))
    rows = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#workers-table tbody tr"))
    assert len(rows) == 1
    assert "primary_0" in rows[0].text and "380 / 540 MB" in rows[0].text
    assert "crash 1" in rows[0].text and "limit 600 MB" in rows[0].text
    items = browser.find_elements(By.CSS_SELECTOR, "#timeline li")
    assert [i.find_element(By.CSS_SELECTOR, ".incident-text").text for i in items] == [
        "primary_0 memory: USS 762 MB over the 600 MB limit (3 samples) -> "
        "drained (2 in flight), stopped, restarted, ready after 14.2 s",
        "primary_0 crash: killed by a signal -> restart in 1 s, restarted, ready after 8.2 s",
    ]
    # A few samples in, the limit line crosses the memory chart.
    wait_for(browser, lambda d: d.execute_script(LIMIT_PIXELS) > 50)

    # `up` reports a gateway process it keeps restarting: the page says so, in its words.
    problem = "gateway_1 is FATAL; `up` restarts it in 38 s (restart 4)"
    with report_programs(run_dir, problem):
        wait_for(browser, lambda d: problem in d.find_element(By.ID, "program-problems").text)
        assert browser.find_element(By.ID, "program-problems").is_displayed()
        wait_for(browser, lambda d: problem in d.find_element(By.ID, "ops-status").text)
    assert browser.execute_script("return localStorage.getItem('sentiguard.apiKey')") == KEY

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    wait_for(browser, lambda d: d.execute_script("return window.innerWidth") == 390)
    wait_for(
        browser,
        lambda d: d.execute_script(
            "return document.querySelector('#memory-chart canvas').width <= 390"
        ),
    )
    overflow = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert overflow[0] <= overflow[1], f"sideways scroll at 390 px: {overflow}"
    assert browser.execute_script(CHARTS_DRAWN)
    errors = [
        e["message"]
        for e in browser.get_log("browser")  # type: ignore[attr-defined]
        if e["level"] == "SEVERE" and "/ops/data" not in e["message"]
    ]
    assert not errors, errors
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
