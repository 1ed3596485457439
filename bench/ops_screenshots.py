"""Screenshots of the operations page (/ops) during a scripted chaos run.

Starts the real service (`sentiguard up`, 2 workers, faults enabled, the leak scenario's
memory limit) in a temporary directory, puts closed-loop load on it, SIGKILLs primary_0
and waits for the watchdog to bring it back, then makes primary_1 leak past the memory
limit (`sentiguard.chaos.scenarios.leak`) until it is recycled. Once /ops/data's timeline
holds both incidents, closed, it opens /ops in headless Chromium and saves full-page
screenshots at 1280 and 390 px wide:

    .venv/bin/python bench/ops_screenshots.py                 # -> docs/screenshots/ops-*.png
    .venv/bin/python bench/ops_screenshots.py --out /tmp/shots

It prints the timeline it photographed; it never passes or fails on times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from sentiguard.chaos import scenarios
from sentiguard.chaos.client import wait_until
from sentiguard.chaos.load import Load
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.runtime.endpoints import worker_name
from sentiguard.settings import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTHS = (1280, 390)
CLIENTS = 4
# Seconds of plain traffic before the first fault and after the last, so the charts show
# the service before and after (pacing of the picture, not a wait for anything).
STEADY_S = 20.0


def incidents(service: ServiceHandle) -> list[dict[str, Any]]:
    response = service.get("/ops/data", timeout=5.0)
    assert response.status == 200, f"/ops/data answered {response.status}"
    return list(response.body["incidents"])


def both_closed(service: ServiceHandle) -> list[dict[str, Any]] | None:
    """The crash of primary_0 and the memory recycle of primary_1, once both are closed."""
    found = incidents(service)
    crash = [i for i in found if i["worker"] == worker_name(0) and i["cause"] == "crash"]
    leak = [i for i in found if i["worker"] == worker_name(1) and i["cause"].startswith("memory")]
    if crash and leak and not crash[0]["open"] and not leak[0]["open"]:
        return found
    return None


def kill_worker(service: ServiceHandle, index: int) -> None:
    """SIGKILL worker `index` and wait until a new process of it is ready."""
    pid = service.supervisor_pid(index)
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: service.supervisor_pid(index) not in (0, pid) and service.all_ready(),
        300.0,
        f"{worker_name(index)} (pid {pid}) replaced and ready",
        0.5,
    )


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
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
        "--hide-scrollbars",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def renders(driver: WebDriver) -> int:
    """How many /ops/data answers the page has drawn so far (ops.js counts them)."""
    return int(driver.execute_script("return document.documentElement.dataset.opsRendered || 0"))


def shoot(driver: WebDriver, url: str, width: int, target: Path) -> None:
    """A full-page screenshot of /ops at `width` CSS pixels, once it has drawn fresh data."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(url + "/ops")
    wait = WebDriverWait(driver, 60, poll_frequency=0.2)
    wait.until(lambda d: renders(d) >= 2)
    wait.until(lambda d: "memory:" in d.find_element(By.ID, "timeline").text)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
    # The charts follow the new size; the next poll draws them at it.
    drawn = renders(driver)
    wait.until(lambda d: renders(d) > drawn)
    target.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target)), f"could not write {target}"
    print(f"wrote {target} ({width} x {height} CSS px)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ops-shots-") as tmp:
        root = Path(tmp)
        overrides = {
            "watchdog.memory_limit_mb": scenarios.LEAK_LIMIT_MB,
            "watchdog.memory_critical_mb": scenarios.LEAK_LIMIT_MB + 1000,
        }
        print("starting the service (2 workers) ...", flush=True)
        service = start_service(root / "service", workers=2, faults=True, overrides=overrides)
        try:
            with Load(service.port, CLIENTS):
                time.sleep(STEADY_S)
                print("SIGKILL primary_0 ...", flush=True)
                kill_worker(service, 0)
            print("primary_1 leaks past the limit ...", flush=True)
            result = scenarios.leak(service, index=1, clients=CLIENTS)
            print(f"  leaked {result.extra['leak_mb']} MB over {result.extra['limit_mb']} MB")
            with Load(service.port, CLIENTS):
                timeline = wait_until(lambda: both_closed(service), 120.0, "both incidents")
                time.sleep(STEADY_S)
                with chromium(root / "chromium") as driver:
                    url = f"http://127.0.0.1:{service.port}"
                    for width in WIDTHS:
                        shoot(driver, url, width, args.out / f"ops-{width}.png")
            for incident in reversed(timeline):
                print(f"  {incident['ts']}  {incident['summary']}")
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
