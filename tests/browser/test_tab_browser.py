"""The tab in headless Chromium against the standalone server (this interpreter's gradio): the newcomer's
flow from Create to a half-precision checkpoint, with Cancel and Resume between, the gallery and charts
checked, and a 400 px wide page; then SDXL from Create to Generate Ckpt. Screenshots go to
tests/artifacts/<gradio version>/."""
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
    page.locator('button[role="tab"], .tab-nav button').first.wait_for(timeout=30_000)  # drawn after the buttons
    tabs = page.locator('button[role="tab"]', has_text=exact)  # gradio 4+
    if tabs.count() == 0:
        tabs = page.locator(".tab-nav button", has_text=exact)  # gradio 3.x
    tabs.first.click()


def box(page, selector: str) -> dict:
    return page.locator(selector).first.evaluate("e => { const r = e.getBoundingClientRect(); "
                                                  "return {x: r.x, y: r.y, width: r.width, height: r.height}; }")


def screenshots_folder() -> Path:
    import gradio

    folder = REPO / "tests" / "artifacts" / gradio.__version__
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str, width: int = 1400, height: int = 1000):
    """A new page on the tab, once its buttons are there."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.locator("#dbt_train").wait_for(timeout=60_000)
    return page


def status_step(page) -> int:
    match = re.search(r"step (\d+)/", text_of(page, "dbt_status"))
    return int(match.group(1)) if match else 0


def test_create_train_ckpt_in_browser(server):
    """The newcomer's flow: Create -> Train at once -> Cancel -> Resume -> Generate Ckpt with the on-screen
    Half ticked -> every preview in the gallery -> readable charts; then a 400 px wide page."""
    import gradio
    from playwright.sync_api import sync_playwright

    url, models = server
    shots = screenshots_folder()
    started = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = open_page(browser, url)

        # javascript/dreambooth.js is active standalone too: hints on the buttons (set once the page's
        # load event has run the script, a moment after the buttons appear)
        page.wait_for_function("() => { const e = document.querySelector('#dbt_train'); const b = e && "
                               "(e.tagName === 'BUTTON' ? e : e.querySelector('button')); "
                               "return b && b.title.startsWith('Start training'); }", timeout=60_000)
        # layout: the top buttons have one height, the source refresh says what it does, the output column
        # stays in view, the on-screen rule is stated
        heights = {round(box(page, f"#dbt_{key} button, button#dbt_{key}")["height"])
                   for key in ("save", "load", "ckpt", "samples", "cancel", "train", "wizard")}
        assert max(heights) - min(heights) <= 1, heights
        assert "Refresh" in page.locator("#dbt_refresh_sources").inner_text()
        assert page.locator("#dbt_output_col").evaluate("e => getComputedStyle(e).position") == "sticky"
        assert "Every button uses what is on screen" in page.locator("#dbt_rule").first.inner_text()

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
        open_tab(page, "Concepts")
        assert "dreambooth_demo_images" in text_of(page, "dbt_concept0_instance_data_dir")

        # an edit is marked as unsaved until Train saves it; a fraction of an epoch is refused, not rounded
        open_tab(page, "Parameters")
        epochs = page.locator("#dbt_num_train_epochs input").first
        epochs.fill("2.7")
        epochs.press("Tab")
        page.locator("#dbt_num_train_epochs.dbt-edited").wait_for(timeout=10_000)
        assert "Unsaved edits" in page.locator("#dbt_unsaved").inner_text()
        page.locator("#dbt_save").click()
        wait_text(page, "dbt_message", "is not a whole number: type 2 or 3", 30)
        page.locator("#dbt_num_train_epochs.dbt-error").wait_for(timeout=10_000)  # the field is highlighted
        epochs.fill("4")
        epochs.press("Tab")
        page.screenshot(path=str(shots / "02_unsaved_edit.png"), full_page=True)

        # Train at once; Cancel (asked first while it runs) after the first preview
        page.locator("#dbt_train").click()
        wait_text(page, "dbt_message", "training 'demo' started", 60)
        assert page.locator(".dbt-edited").count() == 0  # Train saved what is on screen
        deadline = time.time() + 300
        while status_step(page) < 7 and time.time() < deadline:
            time.sleep(0.1)
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#dbt_cancel").click()
        status = wait_text(page, "dbt_status", "canceled: demo", 300)
        canceled_at = int(re.search(r"step (\d+)/", status).group(1))
        assert 7 <= canceled_at < 24, status
        resume = page.locator("#dbt_resume")
        expected = f"Resume from snapshot-{canceled_at} (step {canceled_at})"
        deadline = time.time() + 30
        while expected not in resume.inner_text() and time.time() < deadline:
            time.sleep(0.2)
        assert expected in resume.inner_text()
        page.screenshot(path=str(shots / "03_canceled.png"), full_page=True)

        # Resume continues from the snapshot (the same as train --resume)
        resume.locator("input[type=checkbox]").check()
        page.locator("#dbt_train").click()
        wait_text(page, "dbt_status", "done: demo · epoch 4/4", 300)
        log_text = text_of(page, "dbt_log")
        assert f"resumed from snapshot-{canceled_at}: step {canceled_at}" in log_text, log_text[:2000]
        lines = [line.split(" ", 1)[1] for line in log_text.splitlines() if " " in line]
        assert all(a != b for a, b in zip(lines, lines[1:])), "a log line appears twice in a row"
        wait_text(page, "dbt_model_info", "revision 24", 30)

        # the gallery holds every preview of the model, newest first, captioned with step and prompt
        previews = sorted((models / "dreambooth" / "demo" / "samples").glob("sample_*.png"))
        assert len(previews) == 4  # one per epoch
        gallery = page.locator("#dbt_sample_gallery")
        deadline = time.time() + 30
        while gallery.locator("img").count() < len(previews) and time.time() < deadline:
            time.sleep(0.3)
        assert gallery.locator("img").count() >= len(previews)
        assert "step 24: a photo of sks toy" in gallery.inner_text()
        # the charts are drawn for the column and shown whole at its width
        for elem_id in ("dbt_chart_loss", "dbt_chart_lr", "dbt_chart_memory"):
            image = page.locator(f"#{elem_id} img").first
            image.wait_for(timeout=30_000)
            size = image.evaluate("e => [e.naturalWidth, e.getBoundingClientRect().width]")
            assert size[0] == 640 and size[1] >= 450, (elem_id, size)
        # the whole output column in the screenshot (on screen it scrolls on its own)
        page.evaluate("() => { document.querySelector('#dbt_output_col').style.maxHeight = 'none'; }")
        page.screenshot(path=str(shots / "04_trained_gallery_charts.png"), full_page=True)
        page.evaluate("() => { document.querySelector('#dbt_output_col').style.maxHeight = ''; }")

        # Generate Ckpt with Half model ticked on screen (not saved): the fp16 file
        open_tab(page, "Parameters")
        page.locator("#dbt_group_saving .label-wrap").first.click()
        page.locator("#dbt_half_model input[type=checkbox]").check()
        page.locator("#dbt_ckpt").click()
        message = wait_text(page, "dbt_message", "checkpoint written", 120)
        path = Path(message.split("checkpoint written: ")[1].split(" (")[0])
        assert path.is_file() and path.parent == models / "Stable-diffusion" and path.name == "demo_24_half.safetensors"

        # a reloaded page lists the model and the checkpoint written since the server started
        page.reload()
        page.locator("#dbt_train").wait_for(timeout=60_000)
        # the status poll answers after the page's load event (one queue): its answer means the lists are in
        wait_text(page, "dbt_status", "demo", 60)
        # selecting a model with nothing edited on screen loads its params
        find_option(page, "dbt_model", "demo").click()
        wait_text(page, "dbt_message", "params of 'demo' loaded", 60)
        wait_text(page, "dbt_model_info", "revision 24", 30)
        open_tab(page, "Parameters")
        assert text_of(page, "dbt_num_train_epochs") == "4"
        open_tab(page, "Create")
        # the open list: ul.options (gradio 3) / ul.option-list (gradio 6), inside or beside the block
        find_option(page, "dbt_source", path.name)
        page.keyboard.press("Escape")

        # nothing runs: Cancel asks nothing and says so
        asked = []
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.locator("#dbt_cancel").click()
        wait_text(page, "dbt_message", "nothing to cancel", 30)
        assert asked == []

        # a phone-sized page: status and messages right under the buttons, the settings after them
        narrow = open_page(browser, url, width=400, height=900)
        wait_text(narrow, "dbt_status", "demo", 60)
        assert box(narrow, "#dbt_status")["y"] < box(narrow, "#dbt_settings_col")["y"]
        assert box(narrow, "#dbt_output_col")["width"] <= 400
        narrow.screenshot(path=str(shots / "05_narrow_400px.png"), full_page=True)
        browser.close()
    sources = json.load(urllib.request.urlopen(url + "/dreambooth-tab/v1/sources"))["sources"]
    assert str(path) in sources
    print(f"\nbrowser flow on gradio {gradio.__version__}: {time.time() - started:.1f} s; screenshots in {shots}")


def test_sdxl_create_train_ckpt_in_browser(server):
    """SDXL in the tab: Create from an SDXL single-file checkpoint in the checkpoint folder, one short epoch
    with a preview through the SDXL pipeline, Generate Ckpt: a file in the SDXL layout the WebUI loads."""
    import gradio
    import torch
    from playwright.sync_api import sync_playwright

    from dreambooth.convert.checkpoint_io import load_state_dict
    from dreambooth.convert.sdxl_map import check_sdxl_keys, check_sdxl_shapes
    from dreambooth.model.tiny import write_demo_images, write_tiny_checkpoint

    url, models = server
    source = write_tiny_checkpoint(models / "Stable-diffusion" / "tiny-sdxl.safetensors", preset="tiny-sdxl")
    images = models / "xl_images"  # under the models root: the tab's path policy allows it
    write_demo_images(images, count=2)
    started = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = open_page(browser, url)
        open_tab(page, "Create")
        find_option(page, "dbt_source", source.name).click()
        page.locator("#dbt_new_name textarea, #dbt_new_name input").first.fill("xl")
        page.locator("#dbt_create").click()
        wait_text(page, "dbt_message", "model 'xl' created", 120)
        wait_text(page, "dbt_model_info", "SDXL", 30)

        open_tab(page, "Concepts")
        page.locator("#dbt_concept0_instance_data_dir textarea, #dbt_concept0_instance_data_dir input").first.fill(
            str(images))
        page.locator("#dbt_concept0_instance_prompt textarea").first.fill("a photo of sks toy")
        page.locator("#dbt_concept0_save_infer_steps input").first.fill("4")
        open_tab(page, "Parameters")
        page.locator("#dbt_num_train_epochs input").first.fill("1")
        page.locator("#dbt_group_image_processing .label-wrap").first.click()
        resolution = page.locator("#dbt_resolution input").first
        assert resolution.input_value() == "1024"  # Create's SDXL default, far too big for a CPU test
        resolution.fill("64")
        resolution.press("Tab")

        page.locator("#dbt_train").click()
        wait_text(page, "dbt_message", "training 'xl' started", 60)
        wait_text(page, "dbt_status", "done: xl · epoch 1/1", 120)
        page.locator("#dbt_ckpt").click()
        message = wait_text(page, "dbt_message", "checkpoint written", 60)
        path = Path(message.split("checkpoint written: ")[1].split(" (")[0])
        gallery = page.locator("#dbt_sample_gallery img").first
        gallery.wait_for(timeout=30_000)  # the preview the SDXL pipeline made at the end of the epoch
        deadline = time.time() + 30
        while "running" in text_of(page, "dbt_status") and time.time() < deadline:  # the poll catches up
            time.sleep(0.2)
        page.screenshot(path=str(screenshots_folder() / "06_sdxl_trained.png"), full_page=True)
        browser.close()

    assert path.is_file() and path.parent == models / "Stable-diffusion" and path.name == "xl_2.safetensors"
    tensors, _ = load_state_dict(path)  # the WebUI's SDXL layout: both text encoders, the added embedding
    check_sdxl_keys(tensors, path.name)
    check_sdxl_shapes(tensors, path.name)
    before = load_state_dict(source)[0]
    assert tensors.keys() == before.keys()
    unet = [key for key in before if key.startswith("model.diffusion_model.")]
    assert any(not torch.equal(tensors[key], before[key]) for key in unet)  # trained
    vae = [key for key in before if key.startswith("first_stage_model.")]
    assert all(torch.equal(tensors[key], before[key]) for key in vae)  # frozen
    print(f"\nSDXL browser flow on gradio {gradio.__version__}: {time.time() - started:.1f} s")
