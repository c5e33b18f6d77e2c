"""The review surface in a real browser (headless Debian Chromium via chromedriver):
`vlmnas dashboard` serves the MLflow UI, which shows the study's experiment and its
trial runs, and optuna-dashboard, which shows the study's trials and Pareto front;
stopping it frees both ports. report.html shows the Pareto plot and what each front
member is. Screenshots go to test-artifacts/ for a person to look at."""

from __future__ import annotations

import csv
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest

from tests.integration._cli import REPO
from tests.integration._net import free_port, start_dashboard, wait_for_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # its fixture runs a whole search
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


@pytest.fixture(scope="session")
def study(tiny_study: Path) -> Path:
    return tiny_study


def _wait_for_text(driver, needles: list[str], timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(n in text for n in needles):
            return text
        time.sleep(1.0)
    raise AssertionError(f"page never showed {needles}; it shows:\n{text[:2000]}")


@dataclass
class Dashboard:
    mlflow_url: str
    optuna_url: str
    ports: tuple[int, int]
    server: subprocess.Popen
    output: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def dashboard(study: Path) -> Iterator[Dashboard]:
    """One `vlmnas dashboard` for the module's tests; on teardown it must stop with
    both ports free."""
    port, optuna_port = free_port(), free_port()
    while optuna_port == port:
        optuna_port = free_port()
    server = start_dashboard(study, "tiny", port, optuna_port)
    output: list[str] = []
    # Drain the servers' request logs, so a full pipe never blocks them.
    threading.Thread(target=lambda: output.extend(server.stdout), daemon=True).start()
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(urls) < 2 and server.poll() is None:
        for line in list(output):
            for key, marker in (("mlflow", "MLflow UI at "), ("optuna", "Optuna dashboard at ")):
                if marker in line:
                    urls[key] = line.split(marker, 1)[1].split()[0]
        time.sleep(0.2)
    assert len(urls) == 2, "".join(output)[-3000:]
    running = Dashboard(urls["mlflow"], urls["optuna"], (port, optuna_port), server, output)
    try:
        yield running
    finally:
        server.terminate()
        server.wait(timeout=60)
    for p in (port, optuna_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still served after stop"


def test_dashboard_shows_the_experiment_and_its_trials(browser, dashboard: Dashboard) -> None:
    port = dashboard.ports[0]
    url = dashboard.mlflow_url
    assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/"), url
    wait_for_port(port, timeout=120)  # the server starts after printing its URL
    browser.get(url)
    _wait_for_text(browser, ["tiny", "matching runs"])  # the runs table has rendered
    # Child runs sit under the study's parent run: expand it (the icon button in the
    # parent's run-name cell) while they are not shown. The button may render after the
    # table, and a click toggles, so click, look again, and repeat.
    trials = ["trial-0", "trial-1", "trial-2"]
    deadline = time.monotonic() + 90
    text = browser.find_element("tag name", "body").text
    while not all(t in text for t in trials):
        assert time.monotonic() < deadline, f"the trial runs never showed:\n{text[:2000]}"
        for button in browser.find_elements(
            "css selector", "button[data-component-id*='runnamecellrenderer']"
        ):
            try:
                button.click()
            except Exception:  # noqa: BLE001 - a button that is not clickable is no matter
                pass
        time.sleep(3)
        text = browser.find_element("tag name", "body").text
    browser.save_screenshot(str(ARTIFACTS / "mlflow_experiment.png"))
    assert "Training runs" in text  # the model-training view, not the GenAI one


def test_optuna_dashboard_shows_the_trials_and_the_pareto_front(
    browser, study: Path, dashboard: Dashboard
) -> None:
    trials = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{study / 'optuna.db'}"
    ).get_trials()
    with (study / "tiny" / "pareto.csv").open() as fh:
        front = {int(row["trial"]) for row in csv.DictReader(fh)}
    port = dashboard.ports[1]
    url = dashboard.optuna_url
    assert url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/"), url
    wait_for_port(port, timeout=120)
    browser.get(url)
    text = _wait_for_text(browser, ["tiny", "Pareto Front", "Best Trial"])
    deadline = time.monotonic() + 60
    points: list = []
    while time.monotonic() < deadline and len(points) < len(trials):
        points = browser.find_elements("css selector", "#graph-pareto-front .scatterlayer .point")
        time.sleep(0.5)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(points) == len(complete), "the Pareto-front plot does not show every trial"
    text = browser.find_element("tag name", "body").text
    # "Best Trials" lists "Trial <n>" per member; a front of one reads "Best Trial (number=<n>)".
    listed = re.findall(
        r"^(?:Trial (\d+)|Best Trial \(number=(\d+)\))\nObjective Values", text, re.M
    )
    best = {int(a or b) for a, b in listed}
    assert best == front, f"optuna-dashboard's best trials {best}, pareto.csv {front}"
    browser.save_screenshot(str(ARTIFACTS / "optuna_dashboard.png"))

    browser.get(url.rstrip("/") + "/trials")
    _wait_for_text(browser, [f"{len(trials)} Trials", *(f"Trial {t.number}" for t in trials)])
    browser.save_screenshot(str(ARTIFACTS / "optuna_dashboard_trials.png"))


def test_report_shows_the_pareto_plot_and_what_each_member_is(browser, study: Path) -> None:
    report = study / "tiny" / "report.html"
    browser.get(report.as_uri())
    deadline = time.monotonic() + 30
    svgs = []
    while time.monotonic() < deadline and not svgs:
        svgs = browser.find_elements("css selector", "#plot-pareto .main-svg")
        time.sleep(0.5)
    assert svgs, "the Pareto plot did not render"
    assert browser.find_elements("css selector", "#plot-parallel_coordinates .main-svg")
    text = browser.find_element("tag name", "body").text
    assert "Pareto front" in text and "cpu/accuracy" in text
    header = browser.find_element("css selector", "#front thead").text
    for title in ("fusion", "image tokens", "LM (depth x width)", "cpu quantization", "folder"):
        assert title in header
    links = browser.find_elements("css selector", "#front a")
    with (study / "tiny" / "pareto.csv").open() as fh:
        front = [int(row["trial"]) for row in csv.DictReader(fh)]
    assert len(links) == len(front)
    for link, number in zip(links, front, strict=True):
        # the browser resolves the relative link against report.html's folder
        target = Path(link.get_attribute("href").removeprefix("file://"))
        assert target == study / "tiny" / "trials" / str(number)
        assert (target / "config.yaml").is_file()
    browser.save_screenshot(str(ARTIFACTS / "report.png"))
