"""The web UI in real headless Chromium against the real gateway process over real HTTP.

The gateway (`python -m sentiguard.gateway`) runs on a free loopback port with its primary
worker pointed at a port where nothing listens: no worker is ready, so every answer comes
from the in-process fallback with reason `primary_down`, the degraded case of the UI.
Each test starts from a fresh page with empty localStorage.

The phone tests emulate a 390 x 844 screen through the DevTools protocol; the glyph test
fails when Chinese renders as missing-glyph boxes (no CJK font: `apt-get install
fonts-noto-cjk`).

Screenshots go to a temporary directory; set UI_SCREENSHOT_DIR=docs/screenshots to
refresh the committed ones (they are not rewritten on every run, so `make test` leaves
the tree clean).
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.service import ServiceHandle, run_gateway

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BATCH_ROWS = 10_000
INJECTION = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>坏'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_gateway(tmp_path_factory.mktemp("ui-gateway")) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


def start_chromium(profile: Path, env: dict[str, str] | None = None) -> WebDriver:
    """Headless Chromium at 1280 x 1000; `env` replaces the environment of the browser."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"{binary} is missing. Install Debian's browser for the UI tests: sudo apt-get "
                f"update && sudo apt-get install -y chromium chromium-driver fonts-noto-cjk"
            )
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
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, gateway: str) -> WebDriver:
    """The UI freshly loaded with empty localStorage."""
    browser.get(gateway + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(gateway + "/")
    wait_for(browser, lambda d: d.find_element(By.ID, "review-input").is_enabled())
    return browser


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[WebDriver, str], None]:
    folder = Path(os.environ.get("UI_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(driver: WebDriver, name: str) -> None:
        assert driver.save_screenshot(str(folder / f"{name}.png"))

    return shoot


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def ask(driver: WebDriver, text: str) -> WebElement:
    """Type `text`, press Enter, return the answer bubble that appears for it."""
    before = len(driver.find_elements(By.CSS_SELECTOR, "#conversation .exchange"))
    box = by_id(driver, "review-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait_for(
        driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversation .exchange")) > before
    )
    exchange = driver.find_elements(By.CSS_SELECTOR, "#conversation .exchange")[-1]
    return exchange.find_element(By.CSS_SELECTOR, ".answer")


def severe_console_errors(driver: WebDriver) -> list[str]:
    """Console errors of the page; a failed favicon or 4xx the test caused on purpose aside."""
    try:
        # Chrome's driver has get_log; the generic WebDriver type does not declare it.
        entries = driver.get_log("browser")  # type: ignore[attr-defined]
    except WebDriverException:
        return []
    return [
        e["message"] for e in entries if e["level"] == "SEVERE" and "/analyze" not in e["message"]
    ]


def test_single_review_shows_label_confidence_and_model(
    page: WebDriver, shots: Callable[[WebDriver, str], None]
) -> None:
    answer = ask(page, "这家酒店服务很好，房间干净，早餐也丰富。")
    assert answer.find_element(By.CSS_SELECTOR, ".label").text == "正面 Positive"
    meter = answer.find_element(By.CSS_SELECTOR, "[role=meter]")
    assert 50 <= int(meter.get_attribute("aria-valuenow") or -1) <= 100
    assert "fallback" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    answer = ask(page, "太差了，房间又脏又吵，再也不来了。")
    assert answer.find_element(By.CSS_SELECTOR, ".label").text == "负面 Negative"
    # the box is ready for the next review, and the conversation is announced politely
    assert by_id(page, "review-input").get_attribute("value") == ""
    assert by_id(page, "conversation").get_attribute("aria-live") == "polite"
    assert not severe_console_errors(page)
    shots(page, "01-single-analysis")


def test_degraded_banner_names_the_reason(
    page: WebDriver, shots: Callable[[WebDriver, str], None]
) -> None:
    banner = by_id(page, "degraded-banner")
    assert not banner.is_displayed()
    answer = ask(page, "物流很快，包装完好。")
    wait_for(page, lambda d: banner.is_displayed())
    assert "answered by the fallback because the primary model is down" in banner.text
    note = answer.find_element(By.CSS_SELECTOR, ".degraded-note")
    assert "primary model is down" in note.text
    wait_for(page, lambda d: "降级" in by_id(d, "service-status").text)
    shots(page, "02-degraded-banner")


def test_history_survives_reload_and_clears(
    page: WebDriver, gateway: str, shots: Callable[[WebDriver, str], None]
) -> None:
    reviews = ["第一条：质量不错。", "第二条：完全不值这个价。"]
    for review in reviews:
        ask(page, review)
    page.refresh()
    wait_for(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversation .user")) == 2)
    users = page.find_elements(By.CSS_SELECTOR, "#conversation .user")
    assert [u.text for u in users] == reviews
    assert not by_id(page, "history-empty").is_displayed()
    shots(page, "03-history")
    by_id(page, "clear-history").click()
    wait_for(page, lambda d: not d.find_elements(By.CSS_SELECTOR, "#conversation .exchange"))
    page.refresh()
    wait_for(page, lambda d: by_id(d, "history-empty").is_displayed())
    assert not page.find_elements(By.CSS_SELECTOR, "#conversation .exchange")
    assert page.execute_script("return localStorage.getItem('sentiguard.history.v1')") == "[]"


def record_progress(driver: WebDriver) -> None:
    """Keep every text the progress line shows in window.__progress, as a user would see it."""
    driver.execute_script(
        """
        window.__progress = [];
        const node = document.getElementById("batch-progress-text");
        new MutationObserver(() => window.__progress.push(node.textContent))
            .observe(node, {childList: true, characterData: true, subtree: true});
        """
    )


def write_batch_csv(path: Path, rows: int) -> list[str]:
    """A CSV with id,text,label columns and awkward rows; returns the texts in order."""
    tricky = [
        '引号"和,逗号都在里面，质量很好',
        "跨行的评论\n第二行：非常满意",
        "",  # an empty review keeps its row, marked empty_text
        INJECTION,
        "长" * 5001,  # over gateway.max_text_chars: kept, marked text_too_long
    ]
    good, bad = "这本书写得很好，值得一读。", "质量太差，用了一天就坏了。"
    texts = [
        tricky[i] if i < len(tricky) else (good if i % 2 else bad) + f" #{i}" for i in range(rows)
    ]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows([i, t, i % 2] for i, t in enumerate(texts))
    return texts


def wait_for_download(folder: Path, name: str, timeout: float = 30) -> Path:
    target = folder / name

    def done() -> Path | None:
        partial = list(folder.glob("*.crdownload"))
        return target if target.exists() and not partial and target.stat().st_size else None

    return wait_until(done, timeout, f"the download {name}")


def test_csv_batch_streams_in_chunks_and_downloads_one_row_per_input_row(
    page: WebDriver,
    downloads: Path,
    tmp_path: Path,
    shots: Callable[[WebDriver, str], None],
) -> None:
    source = tmp_path / "reviews.csv"
    texts = write_batch_csv(source, BATCH_ROWS)
    by_id(page, "batch-file").send_keys(str(source))
    record_progress(page)
    started = time.monotonic()
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: by_id(d, "batch-result").is_displayed(), 240)
    seconds = time.monotonic() - started
    print(f"UI batch: {BATCH_ROWS} rows in {seconds:.1f} s")
    assert f"{BATCH_ROWS} / {BATCH_ROWS}" in by_id(page, "batch-progress-text").text
    # progress was shown while it ran, chunk by chunk (32 rows a chunk: ~313 steps)
    steps = page.execute_script("return window.__progress")
    assert len([s for s in steps if f"/ {BATCH_ROWS}" in s and f"{BATCH_ROWS} /" not in s]) > 20
    summary = by_id(page, "batch-summary").text
    assert str(BATCH_ROWS) in summary and "fallback" in summary and "primary_down" in summary
    table_rows = page.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")
    assert len(table_rows) == 200
    assert "第二行" in table_rows[1].text
    assert "empty" in table_rows[2].text and "too long" in table_rows[4].text
    page.execute_script("arguments[0].scrollIntoView()", by_id(page, "batch-title"))
    shots(page, "04-batch-summary")

    for stale in downloads.glob("*"):
        stale.unlink()
    by_id(page, "batch-download").click()
    result = wait_for_download(downloads, "reviews.results.csv")
    with result.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["text", "label", "label_zh", "score", "model", "degraded", "reason"]
    assert [r["text"] for r in rows] == texts
    assert rows[2]["reason"] == "empty_text" and rows[2]["label"] == ""
    assert rows[4]["reason"] == "text_too_long"
    answered = [r for i, r in enumerate(rows) if i not in (2, 4)]
    assert all(r["label"] in ("positive", "negative") for r in answered)
    assert all(r["model"] == "fallback" and r["reason"] == "primary_down" for r in answered)
    assert all(r["degraded"] == "true" for r in answered)
    # the fallback reads the two stock reviews right; their labels follow the input order
    stock = [(t, r["label"]) for t, r in zip(texts, rows, strict=True) if "#" in t]
    assert sum(
        label == ("positive" if "很好" in t else "negative") for t, label in stock
    ) > 0.9 * len(stock)


def test_errors_show_next_to_their_cause(
    page: WebDriver, tmp_path: Path, shots: Callable[[WebDriver, str], None]
) -> None:
    by_id(page, "analyze-button").click()
    error = by_id(page, "single-error")
    wait_for(page, lambda d: error.is_displayed())
    assert "Type or paste a review first" in error.text
    assert by_id(page, "review-input").get_attribute("aria-invalid") == "true"
    assert not page.find_elements(By.CSS_SELECTOR, "#conversation .exchange")

    batch_error = by_id(page, "batch-error")
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: "Choose a CSV or TXT file first" in batch_error.text)

    wrong = tmp_path / "reviews.json"
    wrong.write_text('{"text": "很好"}', encoding="utf-8")
    by_id(page, "batch-file").send_keys(str(wrong))
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: "is not a .csv or .txt file" in batch_error.text)

    no_column = tmp_path / "scores.csv"
    no_column.write_text("id,comment\n1,很好\n", encoding="utf-8")
    by_id(page, "batch-file").send_keys(str(no_column))
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: "has no text or review column" in batch_error.text)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 tr\xe8s bien\n".encode("latin-1"))
    by_id(page, "batch-file").send_keys(str(latin1))
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: "is not UTF-8 text" in batch_error.text)
    assert not by_id(page, "batch-result").is_displayed()
    page.execute_script("arguments[0].scrollIntoView()", by_id(page, "single-error"))
    shots(page, "05-errors")


def test_review_markup_is_shown_as_text_never_run(
    page: WebDriver, tmp_path: Path, shots: Callable[[WebDriver, str], None]
) -> None:
    answer = ask(page, INJECTION)
    user = page.find_elements(By.CSS_SELECTOR, "#conversation .user")[-1]
    assert user.text == INJECTION
    assert answer.find_element(By.CSS_SELECTOR, ".label").text
    # history re-renders stored text after a reload: still text
    page.refresh()
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#conversation .user"))
    assert page.find_elements(By.CSS_SELECTOR, "#conversation .user")[-1].text == INJECTION

    source = tmp_path / "inject.txt"
    source.write_text(f"{INJECTION}\n<b>粗体</b> 很好\n", encoding="utf-8")
    by_id(page, "batch-file").send_keys(str(source))
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: by_id(d, "batch-result").is_displayed(), 30)
    cells = page.find_elements(By.CSS_SELECTOR, "#batch-table tbody td.text")
    assert [c.text for c in cells] == [INJECTION, "<b>粗体</b> 很好"]

    assert page.execute_script("return window.__pwned") is None
    assert not page.find_elements(By.CSS_SELECTOR, "main img, main script, main b")
    shots(page, "06-markup-as-text")
    page.execute_script("arguments[0].scrollIntoView()", by_id(page, "batch-table-title"))
    shots(page, "07-markup-as-text-batch")


SHED_ONCE = """
// The first `arguments[0]` POSTs to /analyze answer 503 + Retry-After: 1 as a shedding
// gateway would; the rest go to the real gateway.
window.__shed = arguments[0];
const realFetch = window.fetch;
window.fetch = (url, init) => {
    if (String(url).endsWith("/analyze") && window.__shed > 0) {
        window.__shed--;
        const body = {error: {code: "overloaded", message: "the fallback is at capacity"}};
        return Promise.resolve(new Response(JSON.stringify(body), {
            status: 503, headers: {"Content-Type": "application/json", "Retry-After": "1"}}));
    }
    return realFetch(url, init);
};
"""


def test_shedding_is_shown_and_batch_chunks_are_retried(
    page: WebDriver, tmp_path: Path, shots: Callable[[WebDriver, str], None]
) -> None:
    page.execute_script(SHED_ONCE, 1)
    box = by_id(page, "review-input")
    box.send_keys("还不错", Keys.ENTER)
    error = by_id(page, "single-error")
    wait_for(page, lambda d: error.is_displayed())
    assert "shedding load: try again in 1 s" in error.text
    assert box.get_attribute("value") == "还不错"  # the review is kept for the retry

    source = tmp_path / "three.txt"
    source.write_text("很好\n很差\n一般\n", encoding="utf-8")
    page.execute_script(SHED_ONCE, 2)
    record_progress(page)
    by_id(page, "batch-file").send_keys(str(source))
    by_id(page, "batch-start").click()
    wait_for(page, lambda d: by_id(d, "batch-result").is_displayed(), 30)
    assert any("retrying in 1 s" in s for s in page.execute_script("return window.__progress"))
    assert page.execute_script("return window.__shed") == 0
    cells = page.find_elements(By.CSS_SELECTOR, "#batch-table tbody td.text")
    assert [c.text for c in cells] == ["很好", "很差", "一般"]
    assert not by_id(page, "batch-error").is_displayed()


def test_api_key_is_asked_for_kept_and_sent(
    browser: WebDriver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key = "ui-test-key-31415"
    with run_gateway(tmp_path_factory.mktemp("ui-keyed"), **{"gateway.api_key": key}) as url:
        browser.get(url + "/")
        browser.execute_script("localStorage.clear()")
        browser.get(url + "/")
        panel = by_id(browser, "key-panel")
        assert not panel.is_displayed()
        box = by_id(browser, "review-input")
        box.send_keys("服务很好", Keys.ENTER)
        wait_for(browser, lambda d: panel.is_displayed())
        assert "API key is required" in by_id(browser, "single-error").text
        by_id(browser, "key-input").send_keys("wrong-key", Keys.ENTER)
        box.send_keys(Keys.ENTER)
        wait_for(browser, lambda d: panel.is_displayed())
        assert not browser.find_elements(By.CSS_SELECTOR, "#conversation .exchange")
        by_id(browser, "key-input").clear()
        by_id(browser, "key-input").send_keys(key, Keys.ENTER)
        wait_for(browser, lambda d: not panel.is_displayed())
        box.send_keys(Keys.ENTER)
        answer = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".answer .label"))
        assert answer[0].text == "正面 Positive"
        browser.refresh()  # the key is kept in this browser
        assert browser.execute_script("return localStorage.getItem('sentiguard.apiKey')") == key


PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}

LAYOUT = """
// What breaks a phone layout: boxes that stick out sideways, and boxes that scroll inside
// the scrolling page. Visible elements only; the page itself (html, body) is the one
// scrolling area it should have.
const width = window.innerWidth;
const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
    + (typeof e.className === "string" && e.className.trim()
        ? "." + e.className.trim().split(/\\s+/).join(".") : "");
const scrolls = (overflow) => ["auto", "scroll", "overlay"].includes(overflow);
const wide = [];
const scrolling = [];
for (const e of document.querySelectorAll("body *")) {
    const style = getComputedStyle(e);
    if (style.visibility === "hidden" || !e.getClientRects().length) continue;
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > width + 0.5 || r.left < -0.5) {
        wide.push(`${name(e)} ${r.left.toFixed(1)}..${r.right.toFixed(1)}`);
    }
    if ((scrolls(style.overflowY) && e.scrollHeight > e.clientHeight)
            || (scrolls(style.overflowX) && e.scrollWidth > e.clientWidth)) {
        scrolling.push(`${name(e)}: ${e.scrollHeight} px in ${e.clientHeight} px`);
    }
}
const texts = [...document.querySelectorAll("#batch-table td.text")];
return {
    width, scrollWidth: document.documentElement.scrollWidth,
    pageHeight: document.documentElement.scrollHeight, height: window.innerHeight,
    wide, scrolling,
    narrowestReview: Math.min(...texts.map((td) => td.getBoundingClientRect().width)),
};
"""

UNMARKED_ENGLISH = """
// Text of the UI's own words with Latin letters whose language is not English: the
// page is lang="zh-CN", so those are read aloud as Chinese. Reviews (user text) and the
// review box are not the UI's words.
const found = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!/[A-Za-z]/.test(node.data) || !parent.getClientRects().length) continue;
    if (parent.closest(".user, td.text, textarea, script, style")) continue;
    const lang = parent.closest("[lang]").lang;
    if (!lang.startsWith("en")) found.push(`${parent.tagName.toLowerCase()}: ${node.data.trim()}`);
}
return found;
"""


def analyse_a_little(driver: WebDriver, tmp_path: Path) -> None:
    """Four single reviews (enough to outgrow the desktop's 420 px conversation box) and a
    40-row batch with the awkward rows of write_batch_csv (a 5001-character review too)."""
    for review in ["这家酒店服务很好，房间干净，早餐也丰富。", "太差了，房间又脏又吵。"] * 2:
        ask(driver, review)
    source = tmp_path / "phone.csv"
    write_batch_csv(source, 40)
    by_id(driver, "batch-file").send_keys(str(source))
    by_id(driver, "batch-start").click()
    wait_for(driver, lambda d: by_id(d, "batch-result").is_displayed(), 60)


@pytest.fixture
def phone(page: WebDriver) -> Iterator[WebDriver]:
    """The fresh page on a 390 x 844 phone screen (mobile viewport), back to desktop after."""
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        page.refresh()
        wait_for(page, lambda d: d.execute_script("return window.innerWidth") == PHONE["width"])
        wait_for(page, lambda d: by_id(d, "review-input").is_enabled())
        yield page
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_phone_layout_fits_the_screen_and_only_the_page_scrolls(
    phone: WebDriver, tmp_path: Path, shots: Callable[[WebDriver, str], None]
) -> None:
    analyse_a_little(phone, tmp_path)
    phone.execute_script("window.scrollTo(0, 0)")
    shots(phone, "08-phone-single")
    layout = phone.execute_script(LAYOUT)
    assert layout["width"] == PHONE["width"]
    assert layout["wide"] == [], "elements wider than the phone screen"
    assert layout["scrollWidth"] <= layout["width"], "the page scrolls sideways"
    assert layout["scrolling"] == [], "boxes that scroll inside the page"
    assert layout["pageHeight"] > layout["height"]  # so the page is the one scrolling area
    # results are cards: a review gets the card's width, not a column of a few characters
    assert layout["narrowestReview"] > 0.75 * PHONE["width"]
    rows = phone.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")
    assert len(rows) == 40
    assert phone.execute_script("return getComputedStyle(arguments[0]).display", rows[0]) == "flex"
    assert "第二行" in rows[1].text and "empty" in rows[2].text
    assert "模型 Model: fallback" in rows[0].text
    phone.execute_script("arguments[0].scrollIntoView()", by_id(phone, "batch-table-title"))
    shots(phone, "09-phone-batch")


def test_desktop_keeps_the_results_table(page: WebDriver, tmp_path: Path) -> None:
    analyse_a_little(page, tmp_path)
    row = page.find_element(By.CSS_SELECTOR, "#batch-table tbody tr")
    assert page.execute_script("return getComputedStyle(arguments[0]).display", row) == "table-row"
    assert not row.find_element(By.CSS_SELECTOR, ".card-caption").is_displayed()
    assert page.execute_script("return window.innerWidth") == 1280
    # the English half of every label is marked lang="en" for screen readers
    assert page.execute_script(UNMARKED_ENGLISH) == []
    assert page.find_element(By.CSS_SELECTOR, ".answer .label span").get_attribute("lang") == "en"


GLYPHS = """
// Each character of arguments[1] drawn alone on a canvas in the font of arguments[0];
// the pictures as data URLs.
const style = getComputedStyle(arguments[0]);
const canvas = document.createElement("canvas");
canvas.width = canvas.height = 48;
const ctx = canvas.getContext("2d");
ctx.font = `${style.fontWeight} 32px ${style.fontFamily}`;
ctx.textBaseline = "top";
return [...arguments[1]].map((c) => {
    ctx.clearRect(0, 0, 48, 48);
    ctx.fillText(c, 4, 4);
    return canvas.toDataURL();
});
"""
NOTDEF = "\u0378"  # a code point Unicode never assigned: no font has a glyph for it


def missing_glyphs(driver: WebDriver) -> tuple[str, str]:
    """(the Chinese characters on the page, those drawn as missing-glyph boxes).

    A character no installed font covers is drawn as the .notdef box ("tofu"): the same
    picture for every such character, and the same as for U+0378. So a Han character is
    missing when its picture equals that of U+0378 or of another character; real glyphs
    all differ. Drawn in the computed font of the first answer's label (bold) and of the
    page, through the same font fallback as the page's text.
    """
    han = driver.execute_script(
        "return [...new Set(document.body.innerText.match(/\\p{Script=Han}/gu))].join('')"
    )
    missing: set[str] = set()
    for node in driver.find_elements(By.CSS_SELECTOR, ".answer .label, main"):
        pictures: list[str] = driver.execute_script(GLYPHS, node, han + NOTDEF)
        notdef = pictures[-1]
        missing.update(
            c
            for c, picture in zip(han, pictures, strict=False)
            if picture == notdef or pictures.count(picture) > 1
        )
    return han, "".join(sorted(missing))


def test_chinese_renders_as_real_glyphs(page: WebDriver) -> None:
    """Fails on a machine without a CJK font, where every Chinese label is an empty box.

    Verified both ways: it passes with fonts-noto-cjk, and it fails (every character
    missing) when the run is given a fontconfig that lists every installed font but the
    CJK ones (the fonts.conf of fontconfig_without_cjk below): `FONTCONFIG_FILE=.../fonts.conf
    pytest tests/test_ui_browser.py -k real_glyphs`. The next test keeps that second half
    checked on every run.
    """
    ask(page, "正面负面很好吃，物流很快。")
    han, missing = missing_glyphs(page)
    assert len(han) > 40  # the labels, headings and the review
    fonts = subprocess.run(
        ["fc-list", ":lang=zh", "family"], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert not missing, (
        f"Chinese renders as missing-glyph boxes for {missing!r} (CJK fonts found by "
        f"fontconfig: {fonts or 'none'}). Install one: sudo apt-get install -y fonts-noto-cjk"
    )


def font_files(*pattern: str) -> set[str]:
    """The font files fontconfig lists for an fc-list pattern (all without one)."""
    listed = subprocess.run(
        ["fc-list", "--format", "%{file}\\n", *pattern], capture_output=True, text=True, check=True
    )
    return set(listed.stdout.splitlines())


def fontconfig_without_cjk(folder: Path) -> Path:
    """A fonts.conf listing every installed font file but those with Chinese glyphs."""
    fonts = folder / "fonts"
    fonts.mkdir(parents=True)
    cjk = font_files(":charset=4e2d") | font_files(":lang=zh")
    for i, file in enumerate(sorted(font_files() - cjk)):
        (fonts / f"{i}-{Path(file).name}").symlink_to(file)
    conf = folder / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n'
        f"<fontconfig><dir>{fonts}</dir><cachedir>{folder / 'cache'}</cachedir></fontconfig>\n",
        encoding="utf-8",
    )
    return conf


def test_glyph_check_sees_missing_glyphs_without_a_cjk_font(gateway: str, tmp_path: Path) -> None:
    """The check of the test above is not vacuous: in a Chromium whose fontconfig has no
    CJK font (this machine's fonts minus the CJK ones), every Chinese character is found
    missing."""
    if not os.access("/usr/bin/fc-list", os.X_OK):
        pytest.fail("fc-list is missing: sudo apt-get install -y fontconfig")
    env = {**os.environ, "FONTCONFIG_FILE": str(fontconfig_without_cjk(tmp_path / "fc"))}
    driver = start_chromium(tmp_path / "profile", env)
    try:
        driver.get(gateway + "/")
        wait_for(driver, lambda d: d.find_element(By.ID, "review-input").is_enabled())
        ask(driver, "正面负面很好吃，物流很快。")
        han, missing = missing_glyphs(driver)
        assert len(han) > 40
        assert missing == "".join(sorted(han))
    finally:
        driver.quit()


@pytest.mark.slow
def test_primary_answer_shows_no_degraded_banner(
    browser: WebDriver, healthy_service: ServiceHandle, shots: Callable[[WebDriver, str], None]
) -> None:
    """The shared real service (`sentiguard up`, 2 workers): the primary answers."""
    url = f"http://127.0.0.1:{healthy_service.port}"
    browser.get(url + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(url + "/")
    answer = ask(browser, "这家酒店服务很好，房间干净，早餐也丰富。")
    assert "主模型 primary" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    assert not answer.find_elements(By.CSS_SELECTOR, ".degraded-note")
    assert not by_id(browser, "degraded-banner").is_displayed()
    wait_for(browser, lambda d: "Service OK" in by_id(d, "service-status").text)
    shots(browser, "00-primary-answer")
