"""Every difference between gradio 3.41 (A1111, SD.Next), 4.x (Forge) and 5/6 (standalone) lives here.

Measured differences (host-webui.md §10): `_js` vs `js`, `queue()` kwargs, `every=` vs `gr.Timer`,
`show_copy_button`, css/theme moving to launch(), `allowed_paths`. Everything else used by the tab is
portable as is.
"""
from __future__ import annotations

import gradio as gr

GRADIO_VERSION = gr.__version__
GRADIO_MAJOR = int(GRADIO_VERSION.split(".")[0])


def _no_api_docs(kwargs: dict) -> dict:
    """Keep the tab's events out of Gradio's API description, which gradio 6 embeds even in the login page
    (it would show the model and checkpoint names to anyone); they stay callable by the page itself."""
    if GRADIO_MAJOR >= 6:
        kwargs.setdefault("api_visibility", "undocumented")
    elif GRADIO_MAJOR >= 4:
        kwargs.setdefault("show_api", False)
    return kwargs


def warn(message: str) -> None:
    """A warning toast in the page (the host's own toasts in the WebUI), beside the Message box. gr.Warning
    exists from gradio 3.35 on; called outside an event it only reaches the console, never raises."""
    gr.Warning(message)


def event(trigger, fn, inputs=None, outputs=None, js: str | None = None, **kwargs):
    """`button.click(fn, inputs, outputs, js=...)` with the keyword this gradio knows."""
    if js is not None:
        kwargs["_js" if GRADIO_MAJOR < 4 else "js"] = js
    return trigger(fn, inputs=inputs, outputs=outputs, **(_no_api_docs(kwargs) if fn is not None else kwargs))


def poll(blocks, fn, outputs, seconds: float, inputs=None, elem_id: str = "dbt_poll"):
    """Call `fn` every `seconds` while the page is open, driven by the page, never by the server.

    gradio 4.40+: gr.Timer (the browser ticks). gradio 3.x: a hidden button that a page timer clicks.
    Not `every=`: on 3.41 that runs an endless loop in the server per open page, and Blocks.close()
    (the WebUI's Reload UI) then never returns.
    """
    if hasattr(gr, "Timer"):
        timer = gr.Timer(seconds)
        return timer.tick(fn, inputs=inputs, outputs=outputs, show_progress="hidden", queue=False, **_no_api_docs({}))
    button = gr.Button(visible=True, elem_id=elem_id, elem_classes=["dbt-hidden"])
    event = button.click(fn, inputs=inputs, outputs=outputs, show_progress=False, queue=False, **_no_api_docs({}))
    blocks.load(None, None, None, _js=_CLICK_EVERY_JS % {"id": elem_id, "ms": int(seconds * 1000)})
    return event


# Clicks the hidden poll button while the page is visible; one timer per page. The WebUI shows gradio inside gradioApp() (a shadow root on some hosts).
_CLICK_EVERY_JS = """() => {
  const key = "__dreambooth_poll_%(id)s";
  if (window[key]) return [];
  window[key] = setInterval(() => {
    if (document.hidden) return;
    const root = typeof gradioApp === "function" ? gradioApp() : document;
    const button = root.querySelector("#%(id)s");
    if (button) button.click();
  }, %(ms)d);
  return [];
}"""


def textbox_kwargs(copy_button: bool = False, newest_first: bool = False) -> dict:
    """Copy button (3.x/4.x `show_copy_button`, 6.x `buttons`); `newest_first` stops gradio 4+ from
    scrolling to the bottom on every update (the newest line is at the top)."""
    kwargs = {}
    if copy_button:
        kwargs.update({"buttons": ["copy"]} if GRADIO_MAJOR >= 6 else {"show_copy_button": True})
    if newest_first and GRADIO_MAJOR >= 4:
        kwargs["autoscroll"] = False
    return kwargs


def enable_queue(blocks, concurrency: int = 4):
    if GRADIO_MAJOR < 4:
        return blocks.queue(concurrency_count=concurrency)
    return blocks.queue(default_concurrency_limit=concurrency)


def blocks(css: str | None = None, title: str | None = None, standalone: bool = False):
    """A gr.Blocks; css only standalone and only where gradio takes it in the constructor (< 6)."""
    kwargs = {"analytics_enabled": False}
    if standalone:
        if title:
            kwargs["title"] = title
        if css and GRADIO_MAJOR < 6:
            kwargs["css"] = css
    return gr.Blocks(**kwargs)


def launch(blocks, host: str, port: int, css: str | None = None, allowed_paths=None,
           prevent_thread_lock: bool = False, auth=None):
    """`auth`: [(user, password), ...] — Gradio's login guards the page, its API and its file routes."""
    kwargs = dict(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock,
                  show_error=True, allowed_paths=[str(p) for p in (allowed_paths or [])], auth=auth)
    if GRADIO_MAJOR >= 6 and css:
        kwargs["css"] = css
    if GRADIO_MAJOR < 4:
        kwargs["show_api"] = False
    if GRADIO_MAJOR >= 5:
        kwargs["ssr_mode"] = False  # no node server: plain Python serving, offline
    return blocks.launch(**kwargs)


def served_app(blocks):
    """The FastAPI app a launched Blocks serves (3.x serves `server_app`, not `blocks.app`)."""
    return getattr(blocks, "server_app", None) or blocks.app


def gallery(**kwargs):
    """A read-only image gallery."""
    if GRADIO_MAJOR >= 4:
        kwargs.setdefault("interactive", False)
    return gr.Gallery(**kwargs)


def chart_image(label: str, elem_id: str):
    """A read-only image shown at the column's full width (a chart PNG), no upload area."""
    return gr.Image(label=label, elem_id=elem_id, interactive=False, show_label=True)
