"""The tab in headless Chromium against the standalone server (this interpreter's gradio):
bad input shown, Create from the embedded tiny checkpoint (its params land on screen), 2 epochs, Train, a
sample and a chart appear, Resume one more epoch from the snapshot, Load Params, Generate Ckpt, the file
is listed. Screenshots go to tests/artifacts/<gradio version>/."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DREAMBOOTH_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"Chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
REPO = Path(__file__).resolve().parents[2]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tmp_path_factory.mktemp("browser") / "models"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(models.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from dreambooth.ui.server import serve; "
                             f"serve(port={port}, models_dir={str(models)!r})"],
                            cwd=str(models.parent), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/dreambooth-tab/v1/status", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError("server did not start:\n" + (models.parent / "server.log").read_text())
            time.sleep(0.3)
    yield url, models
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def text_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def wait_text(page, elem_id: str, needle: str, timeout: float = 180.0) -> str:
    deadline = time.time() + timeout
    before = text_of(page, elem_id)
    while time.time() < deadline:
        value = text_of(page, elem_id)
        if needle in value:
            return value
        if value != before and (value.startswith("error:") or value.startswith("failed:")):
            raise AssertionError(value)
        time.sleep(0.2)
    raise AssertionError(f"#{elem_id} never showed {needle!r}; it shows {text_of(page, elem_id)!r}")


def find_option(page, elem_id: str, text: str, timeout: float = 60.0):
    """Open a dropdown until `text` is among its options (after a page load the list fills a moment later,
    once the load event has run; an open list is not redrawn on gradio 3, so it is closed and opened again)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    options = page.locator("ul.options li, ul.option-list li", has_text=text)
    deadline = time.time() + timeout
    while True:
        page.locator(f"#{elem_id} input").first.click()
        try:
            options.first.wait_for(timeout=3_000)
            return options.first
        except PlaywrightTimeout:
            if time.time() > deadline:
                raise AssertionError(f"#{elem_id} never offered {text!r}") from None
            page.keyboard.press("Escape")
            page.evaluate("() => document.activeElement && document.activeElement.blur()")  # gradio 3 reopens
            time.sleep(0.5)  # only after the input lost focus


def open_tab(page, title: str) -> None:
    """Click a sub-tab by its exact title (gradio 6 also keeps hidden overflow copies of tab buttons)."""
    exact = re.compile(rf"^\s*{title}\s*$")
    tabs = page.locator('button[role="tab"]', has_text=exact)  # gradio 4+
    if tabs.count() == 0:
        tabs = page.locator(".tab-nav button", has_text=exact)  # gradio 3.x
    tabs.first.click()


def test_create_train_ckpt_in_browser(server):
    import gradio
    from playwright.sync_api import sync_playwright

    url, models = server
    shots = REPO / "tests" / "artifacts" / gradio.__version__
    shots.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#dbt_train").wait_for(timeout=60_000)

        # javascript/dreambooth.js is active standalone too: hints on the buttons (set once the page's
        # load event has run the script, a moment after the buttons appear)
        page.wait_for_function("() => { const e = document.querySelector('#dbt_train'); const b = e && "
                               "(e.tagName === 'BUTTON' ? e : e.querySelector('button')); "
                               "return b && b.title.startsWith('Start training'); }", timeout=60_000)
        page.locator("#dbt_train").click()  # bad input: no model selected
        wait_text(page, "dbt_message", "no model selected", 30)
        # and a warning toast, as gradio shows them (the WebUI's too)
        page.locator(".toast-body, [data-testid='toast-body']", has_text="no model selected").first.wait_for(
            timeout=30_000)
        page.screenshot(path=str(shots / "01_tab_no_model.png"), full_page=True)

        page.locator("#dbt_new_name textarea, #dbt_new_name input").first.fill("demo")
        page.locator("#dbt_create").click()
        wait_text(page, "dbt_message", "created", 180)
        # Create puts the new model's params on screen: no Load Params needed before Train
        assert "no snapshot yet" in page.locator("#dbt_resume").inner_text()

        open_tab(page, "Parameters")
        epochs = page.locator("#dbt_num_train_epochs input").first
        epochs.fill("2")
        epochs.press("Tab")
        open_tab(page, "Concepts")
        assert "dreambooth_demo_images" in text_of(page, "dbt_concept0_instance_data_dir")
        page.screenshot(path=str(shots / "02_concepts.png"), full_page=True)

        # javascript/dreambooth.js is active standalone too: hints on the buttons
        hint = page.locator("#dbt_train").evaluate("e => (e.tagName === 'BUTTON' ? e : e.querySelector('button')).title")
        assert hint.startswith("Start training")
        page.locator("#dbt_train").click()
        wait_text(page, "dbt_message", "training 'demo' started", 60)
        wait_text(page, "dbt_status", "done: demo · epoch 2/2", 300)
        wait_text(page, "dbt_model_info", "revision 12", 30)  # the model's info follows the training
        page.locator("#dbt_sample_gallery img").first.wait_for(timeout=60_000)
        page.locator("#dbt_charts img").first.wait_for(timeout=60_000)
        assert "training 'demo' done" in text_of(page, "dbt_log")
        page.screenshot(path=str(shots / "03_trained.png"), full_page=True)

        # Resume from the snapshot the run saved, one more epoch (the same as train --resume)
        wait_text(page, "dbt_model_info", "resumable from snapshot-12", 30)
        resume = page.locator("#dbt_resume")
        deadline = time.time() + 30
        while "Resume from snapshot-12 (step 12)" not in resume.inner_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "Resume from snapshot-12 (step 12)" in resume.inner_text()
        resume.locator("input[type=checkbox]").check()
        open_tab(page, "Parameters")
        epochs.fill("3")
        epochs.press("Tab")
        page.locator("#dbt_train").click()
        wait_text(page, "dbt_status", "done: demo · epoch 3/3", 300)
        log_text = text_of(page, "dbt_log")
        assert "resumed from snapshot-12: step 12, epoch 2" in log_text, log_text[:2000]
        wait_text(page, "dbt_model_info", "revision 18", 30)
        # a reloaded page lists the model created after the server started
        page.reload()
        page.locator("#dbt_train").wait_for(timeout=60_000)
        # the status poll answers after the page's load event (one queue): its answer means the lists are in
        wait_text(page, "dbt_status", "done: demo", 60)
        find_option(page, "dbt_model", "demo").click()
        wait_text(page, "dbt_model_info", "revision 18", 30)
        page.locator("#dbt_load").click()
        wait_text(page, "dbt_message", "params of 'demo' loaded", 60)

        page.locator("#dbt_ckpt").click()
        message = wait_text(page, "dbt_message", "checkpoint written", 120)
        path = Path(message.split("checkpoint written: ")[1].split(" (")[0])
        assert path.is_file() and path.parent == models / "Stable-diffusion"
        # a reloaded page lists the checkpoint written since the server started, without pressing 🔄
        page.reload()
        page.locator("#dbt_train").wait_for(timeout=60_000)
        wait_text(page, "dbt_status", "demo", 60)
        open_tab(page, "Create")
        # the open list: ul.options (gradio 3) / ul.option-list (gradio 6), inside or beside the block
        find_option(page, "dbt_source", path.name)
        page.screenshot(path=str(shots / "04_ckpt_listed.png"), full_page=True)
        page.keyboard.press("Escape")
        page.locator("#dbt_refresh_sources").click()  # the 🔄 keeps it listed
        page.locator("#dbt_source input").first.click()
        page.locator("ul.options li, ul.option-list li", has_text=path.name).first.wait_for(timeout=30_000)
        page.keyboard.press("Escape")

        # Cancel asks first (javascript/dreambooth.js): declining sends nothing, accepting does
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.locator("#dbt_cancel").click()
        page.wait_for_timeout(1500)
        assert "nothing to cancel" not in text_of(page, "dbt_message")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#dbt_cancel").click()
        wait_text(page, "dbt_message", "nothing to cancel", 30)
        browser.close()
    sources = json.load(urllib.request.urlopen(url + "/dreambooth-tab/v1/sources"))["sources"]
    assert str(path) in sources
    print(f"\nbrowser flow on gradio {gradio.__version__}: {time.time() - started:.1f} s; screenshots in {shots}")
