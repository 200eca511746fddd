"""End to end in a real browser: `cxrlab dashboard` on 127.0.0.1, every page opened by headless
Chromium (Debian's ``chromium`` + ``chromium-driver`` through Selenium), a run name and a chart
checked on each, and a screenshot saved per page.

Screenshots go to ``<pytest tmp>/dashboard-screenshots/`` (the test prints the folder) and, with
``CXRLAB_SAVE_SCREENSHOTS=1``, are also copied to ``docs/screenshots/``. Chromium is installed by
``scripts/ensure_chromium.sh`` where missing (root + apt-get); the test skips, saying why, only
where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PAGES = {  # page -> (a run name that must be on it, its title); the Runs page is the default, served at "/"
    "runs": ("bce", "Runs"),
    "compare": ("dam", "Compare runs"),
    "scaling": ("scaling_demo", "Scaling study"),
    "explain": ("localize_bce", "Explain"),
    "segmentation": ("pneumothorax_cv", "Segmentation"),
    "screening": ("screening_demo", "Normal screening"),
    "image": ("bce", "Image"),
}
LAUNCH = ("import sys, typer\nfrom cxrlab.cli.dashboard import register\napp = typer.Typer()\n"
          "@app.callback()\ndef main() -> None:\n    pass\nregister(app)\napp(sys.argv[1:])\n")


def _chromium_or_skip() -> None:
    if not (CHROMIUM.is_file() and DRIVER.is_file()):
        result = subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                                timeout=900)
        if not (CHROMIUM.is_file() and DRIVER.is_file()):
            pytest.skip(f"Chromium cannot be installed here: {result.stdout.strip() or result.stderr.strip()}")
    pytest.importorskip("selenium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _still_serving(url: str, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).close()
        except OSError:
            return False
        time.sleep(0.3)
    return True


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dashboard exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"dashboard at {url} not healthy after {timeout:.0f} s")


@pytest.fixture
def dashboard(run_root):
    _chromium_or_skip()
    port = _free_port()
    env = {**os.environ, "CXRLAB_CACHE_DIR": str(run_root.parent / "index-cache")}
    process = subprocess.Popen([sys.executable, "-c", LAUNCH, "dashboard", "--runs", str(run_root), "--host",
                                "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()          # what a service manager does to `cxrlab dashboard`
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        orphaned = _still_serving(url)
        if orphaned:
            os.killpg(process.pid, 9)    # clean up, then fail: the server outlived its command
        assert not orphaned, "the Streamlit server kept running after `cxrlab dashboard` was terminated"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cxrlab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1440,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for(driver, condition, timeout: float, what: str):
    """``condition(driver)`` once truthy; elements re-rendered by Streamlit meanwhile (stale) are retried."""
    from selenium.common.exceptions import (ElementClickInterceptedException, NoSuchElementException,
                                            StaleElementReferenceException, TimeoutException)
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException, NoSuchElementException, ElementClickInterceptedException)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=ignored).until(condition)
    except TimeoutException as err:
        raise AssertionError(f"timed out waiting for {what}") from err


def _click_link(driver, path: str) -> bool:
    from selenium.webdriver.common.by import By

    links = driver.find_elements(By.CSS_SELECTOR, f'a[href$="/{path}"]')
    if not links:
        return False
    links[0].click()
    return True


def _shown_text(driver) -> str:
    """The page's text, chart labels and the values of its inputs (a selectbox shows its run there)."""
    from selenium.webdriver.common.by import By

    values = [i.get_attribute("value") or "" for i in driver.find_elements(By.TAG_NAME, "input")]
    return " ".join([driver.find_element(By.TAG_NAME, "body").get_attribute("textContent"), *values])


def test_every_page_in_headless_chromium(dashboard, browser, tmp_path_factory):
    from selenium.webdriver.common.by import By

    out = tmp_path_factory.getbasetemp() / "dashboard-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for path, (run_name, title) in PAGES.items():
        if path == "runs":
            browser.get(dashboard)                               # the default page, served at "/"
        else:                                                    # the sidebar link: no reload of the app
            _wait_for(browser, lambda d, p=path: _click_link(d, p), 30, f"the sidebar link to /{path}")
        _wait_for(browser, lambda d: any(h.text.strip() == title for h in d.find_elements(By.CSS_SELECTOR, "h1")),
                  60, f"the {title!r} title on /{path}")
        _wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"), 60,
                  f"a Plotly chart on /{path}")
        _wait_for(browser, lambda d: run_name in _shown_text(d), 30, f"run name {run_name!r} on /{path}")
        _wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"] svg'),
                  30, f"/{path} to finish running")
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), \
            f"/{path} shows an exception: {browser.find_element(By.TAG_NAME, 'body').text[:500]}"
        assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"), f"no chart on /{path}"
        assert browser.current_url.rstrip("/").endswith("" if path == "runs" else f"/{path}")
        assert "Page not found" not in browser.find_element(By.TAG_NAME, "body").text
        time.sleep(0.5)  # let the last charts lay out before the picture
        shot = out / f"{path}.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\ndashboard screenshots: {out}")
    if os.environ.get("CXRLAB_SAVE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for shot in sorted(out.glob("*.png")):
            shutil.copy2(shot, docs / f"dashboard-{shot.name}")
        print(f"copied to {docs}")
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(PAGES)
