"""The review surface in a real browser (headless Debian Chromium via chromedriver):
`vlmnas dashboard` shows the study's experiment and its trial runs; report.html shows
the Pareto plot. Screenshots go to test-artifacts/ for a person to look at."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration._net import free_port, start_dashboard, wait_for_port
from tests.integration.test_cli import REPO, TINY, vlmnas

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("runs")
    run = vlmnas("search", f"study.workdir={workdir}", "study.name=tiny", "study.n_trials=3", *TINY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir


def _wait_for_text(driver, needles: list[str], timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(n in text for n in needles):
            return text
        time.sleep(1.0)
    raise AssertionError(f"page never showed {needles}; it shows:\n{text[:2000]}")


def test_dashboard_shows_the_experiment_and_its_trials(browser, study: Path) -> None:
    port = free_port()
    server = start_dashboard(study, "tiny", port)
    try:
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not url:
            line = server.stdout.readline()
            if "MLflow UI at" in line:
                url = line.split("MLflow UI at ", 1)[1].split()[0]
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/"), url
        wait_for_port(port, timeout=120)  # the server starts after printing its URL
        browser.get(url)
        _wait_for_text(browser, ["tiny", "matching runs"])  # the runs table has rendered
        # Child runs sit under the study's parent run: expand it if the UI folds them.
        # (the icon button in the parent's run-name cell).
        for button in browser.find_elements(
            "css selector", "button[data-component-id*='runnamecellrenderer']"
        ):
            try:
                button.click()
            except Exception:  # noqa: BLE001 - a button that is not clickable is no matter
                pass
        text = _wait_for_text(browser, ["trial-0", "trial-1", "trial-2"])
        browser.save_screenshot(str(ARTIFACTS / "mlflow_experiment.png"))
        assert "Training runs" in text  # the model-training view, not the GenAI one
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_shows_the_pareto_plot(browser, study: Path) -> None:
    report = study / "tiny" / "report.html"
    browser.get(report.as_uri())
    deadline = time.monotonic() + 30
    svgs = []
    while time.monotonic() < deadline and not svgs:
        svgs = browser.find_elements("css selector", "#plot-pareto .main-svg")
        time.sleep(0.5)
    assert svgs, "the Pareto plot did not render"
    text = browser.find_element("tag name", "body").text
    assert "Pareto front" in text and "cpu/accuracy" in text
    browser.save_screenshot(str(ARTIFACTS / "report.png"))
