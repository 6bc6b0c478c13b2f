"""The page of ``nmt serve`` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
which .ci/run installs) at a phone's width, driven by Selenium. Typing a sentence shows exactly its
``nmt translate`` translation and nmt attend's heatmap of it, the picker switches layer, head and kind, and
the page loads nothing from anywhere but the server.

Without Chromium the test is skipped on a developer's machine, and fails on CI (where CI is set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nmt.data.text import normalise
from tests.helpers import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "tests" / "fixtures" / "tiny" / "checkpoint.pt"
PHONE = {"width": 390, "height": 844, "pixelRatio": 3.0}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]


def _need(what: str) -> None:
    message = f"the page's test needs {what} (apt-get install chromium chromium-driver; pip install -e '.[dev]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    with ServeProcess(str(CKPT)) as s:
        yield s


@pytest.fixture
def browser(tmp_path: Path):  # noqa: ANN201 - a selenium WebDriver
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        _need("Debian's chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE})
    # The paths are given, so Selenium Manager never looks for a driver or a browser on the network.
    web = webdriver.Chrome(service=Service(driver), options=options)
    web.set_page_load_timeout(60)
    yield web
    web.quit()


def shown_map(web) -> dict:  # noqa: ANN001 - a WebDriver
    """The one visible map: its title, row and column labels, and each row's sum of weights."""
    return web.execute_script("""
        const shown = [...document.querySelectorAll('section.grid')].filter(g => !g.hidden);
        if (shown.length !== 1) return {count: shown.length};
        const g = shown[0], rows = [...g.querySelectorAll('tbody tr')];
        return {count: 1, title: g.querySelector('h2').textContent,
                cols: [...g.querySelectorAll('th.col')].map(th => th.textContent),
                rows: rows.map(r => r.querySelector('th.row').textContent),
                sums: rows.map(r => [...r.querySelectorAll('td')].reduce((s, td) => s + Number(td.dataset.w), 0)),
                coloured: g.querySelectorAll('td[style*="background"]').length};""")


def test_typing_a_sentence_shows_its_translation_and_heatmap(server: ServeProcess, browser) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    sources = (ROOT / "tests" / "fixtures" / "test.en").read_text(encoding="utf-8").splitlines()
    pinned = (ROOT / "tests" / "fixtures" / "tiny" / "test.hyp").read_text(encoding="utf-8").splitlines()  # nmt translate's
    base = f"http://127.0.0.1:{server.port}/"
    browser.get(base)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda web: "tiny/checkpoint.pt" in web.find_element(By.ID, "model").text)
    for line in (0, 7):  # a short message, then a long one (its maps are wider than a phone)
        box = browser.find_element(By.ID, "source")
        box.clear()
        box.send_keys(sources[line] + Keys.ENTER)  # Enter translates
        wait.until(lambda web: web.find_element(By.ID, "translation").text == pinned[line])
        found = shown_map(browser)
        assert found["title"] == "decoder–encoder attention, layer 2 of 2, average of the heads"
        assert found["cols"][-1] == "</s>" and found["rows"][-1] == "</s>" and len(found["cols"]) > 2
        assert "".join(found["cols"][:-1]).replace("▁", " ").strip() == normalise(sources[line], "en")
        assert found["coloured"] == len(found["rows"]) * len(found["cols"])
        assert all(abs(s - 1) < 0.01 for s in found["sums"])  # each row a distribution: a real attention map
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    assert shown_map(browser)["title"] == "decoder–encoder attention, layer 1 of 2, average of the heads"
    Select(browser.find_element(By.ID, "head")).select_by_value("3")
    assert shown_map(browser)["title"] == "decoder–encoder attention, layer 1 of 2, head 3 of 4"
    Select(browser.find_element(By.ID, "kind")).select_by_value("encoder")
    encoder = shown_map(browser)
    assert encoder["title"] == "encoder self-attention, layer 1 of 2, head 3 of 4" and encoder["rows"] == encoder["cols"]
    # A phone: the page never scrolls sideways (a wide map scrolls in its own box), and fetched only from the server.
    width, inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == PHONE["width"] and width <= inner
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith(base) for url in fetched)
