"""Reload UI closes the tab's Blocks while a page is open and its status poll runs: close() must return.

On gradio 3.41 a poll made with `every=` is an endless server-side loop per open page, and close() (the
WebUI's Reload UI) never returned. The page here is a real browser, so whatever drives the poll runs.
"""
import threading
import time

from test_tab_browser import ARGS, CHROMIUM, free_port, pytestmark, text_of  # noqa: F401 (skip without Chromium)


def test_close_returns_while_a_page_polls(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from dreambooth.service.jobs import runner
    from dreambooth.ui.server import serve

    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    port = free_port()
    blocks = serve(port=port, models_dir=tmp_path / "models", block=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{port}")
            page.locator("#dbt_status").wait_for(timeout=60_000)
            # the poll is live: a note from the job runner reaches the page's log without a click
            runner().note("poll probe")
            deadline = time.time() + 20
            while "poll probe" not in text_of(page, "dbt_log"):
                assert time.time() < deadline, "the status poll never updated the page"
                time.sleep(0.2)
            closer = threading.Thread(target=blocks.close, daemon=True)
            started = time.time()
            closer.start()
            closer.join(20)
            assert not closer.is_alive(), "Blocks.close() hung while a page was polling"
            assert time.time() - started < 15
        finally:
            browser.close()
