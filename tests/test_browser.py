"""The failure inspector as a person sees it: JupyterLab on loopback, the smoke run's executed
``04_error_analysis`` opened and run in headless Chromium, its dropdowns and step slider operated.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them the test is
skipped, except under CI, where it fails. ``SLMLIB_SCREENSHOT=path`` also saves the screenshot there.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.notebooks
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")]

NOTEBOOK = "04_error_analysis.ipynb"
VIEW = ".jp-OutputArea .widget-html-content"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(smoke_run, tmp_path):
    """JupyterLab serving a folder that holds the smoke run's executed notebook; yields its URL with the token."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(smoke_run / NOTEBOOK, root / NOTEBOOK)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = open(tmp_path / "lab.log", "w")
    root_user = ["--allow-root"] if os.geteuid() == 0 else []  # CI and our machines run as root
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--expose-app-in-browser",
                             *root_user],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: condition(d), message=what)


def view_text(driver) -> str:
    return driver.find_element("css selector", VIEW).text


def test_the_inspector_works_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(lab)
    wait(browser, lambda d: d.execute_script(
        "const app = window.jupyterapp; const w = app && app.shell.currentWidget;"
        "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle');"), 120, "the notebook opens with an idle kernel")
    # papermill's outputs go first, so that what the test reads is what this kernel shows
    browser.execute_script("const c = window.jupyterapp.commands;"
                           "c.execute('notebook:clear-all-cell-outputs').then(() => c.execute('notebook:run-all-cells'));")
    wait(browser, lambda d: "prompt (end)" in (d.find_elements("css selector", VIEW) or [None])[0].text
         if d.find_elements("css selector", VIEW) else False, 240, "the inspector renders its first failure")

    selects = {s.find_element("xpath", "./preceding-sibling::label").text: s for s in browser.find_elements("css selector", ".jp-OutputArea .widget-dropdown select")}
    assert set(selects) == {"model", "group", "error", "task"}
    task = Select(selects["task"])
    first = view_text(browser)
    first_id = task.first_selected_option.text.split(" · ")[1]
    assert first_id in first and "raw output" in first and "expected" in first

    # another task: its prompt, raw output and expected call are shown instead
    other = next(i for i, o in enumerate(task.options) if o.text.split(" · ")[1] != first_id)
    task.select_by_index(other)
    other_id = task.options[other].text.split(" · ")[1]
    wait(browser, lambda d: other_id in view_text(d), 30, "the view follows the task dropdown")
    second = view_text(browser)
    assert second != first and first_id not in second.split("\n")[0]

    # a filter narrows the task list to its label
    label = Select(selects["error"])
    label.select_by_index(1)
    chosen = label.first_selected_option.text
    wait(browser, lambda d: all(o.text.endswith(f" · {chosen}") for o in Select(selects["task"]).options), 30,
         "the error filter narrows the tasks")
    label.select_by_index(0)

    # the step slider: an episode with more than one step, moved one step back with the keyboard
    task = Select(selects["task"])
    for i in range(len(task.options)):
        task.select_by_index(i)
        time.sleep(0.3)
        readout = browser.find_element("css selector", ".jp-OutputArea .widget-slider .widget-readout").text
        if int(readout) > 0:
            break
    else:
        pytest.fail("no failed episode of the smoke run has more than one step")
    before, steps = view_text(browser), int(readout)
    browser.find_element("css selector", ".jp-OutputArea .widget-slider .noUi-handle").send_keys(Keys.ARROW_LEFT)
    wait(browser, lambda d: d.find_element("css selector", ".jp-OutputArea .widget-slider .widget-readout").text == str(steps - 1),
         30, "the slider moves one step back")
    wait(browser, lambda d: view_text(d) != before, 30, "the view follows the step slider")

    widget = browser.find_element("css selector", ".jp-OutputArea .widget-vbox")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});"  # the prompt's end is where its last step is
                           "arguments[0].querySelectorAll('pre').forEach(p => p.scrollTop = p.scrollHeight);", widget)
    shot = tmp_path / "inspector.png"
    assert widget.screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("SLMLIB_SCREENSHOT"):
        shutil.copy(shot, os.environ["SLMLIB_SCREENSHOT"])
