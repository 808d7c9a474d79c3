"""The extension inside a fake WebUI (tests/fake_webui/modules), loaded the way A1111 loads it.

A copy of the extension sits in `extensions/<odd folder name>/`; scripts/*.py are executed with
spec_from_file_location(<basename>) + exec_module, the extension folder first on sys.path, cwd elsewhere.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import sys
import threading
import types
from contextlib import redirect_stderr
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).resolve().parent / "fake_webui"
OWNED = ("dreambooth", "modules")


def _owned(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in OWNED)


class Host:
    def __init__(self, root: Path, ext: Path):
        self.root, self.ext = root, ext

    @property
    def modules(self):
        import modules.call_queue
        import modules.script_callbacks
        import modules.scripts
        import modules.sd_models
        import modules.shared

        return modules

    def load_scripts(self, extra_extensions=()):
        """As A1111: list the extensions folder, then run every enabled extension's scripts/ in order."""
        import modules.extensions

        modules.extensions.list_extensions(str(self.root / "extensions"))
        self.modules.scripts.load_scripts([str(self.ext), *map(str, extra_extensions)])

    def create_ui(self):
        """As A1111's ui.create_ui: the extension tabs, then the settings page built from every option."""
        import modules.ui_settings

        cb = self.modules.script_callbacks
        cb.ui_settings_callback()
        tabs = cb.ui_tabs_callback()
        modules.ui_settings.create_ui()
        return tabs

    def start(self):
        """Start-up: load scripts, build the UI, start the app. Returns (tabs, app)."""
        from fastapi import FastAPI

        self.load_scripts()
        tabs = self.create_ui()
        app = FastAPI()
        self.modules.script_callbacks.app_started_callback(object(), app)
        return tabs, app

    def reload_ui(self):
        self.modules.script_callbacks.script_unloaded_callback()
        return self.start()


@pytest.fixture
def webui(tmp_path, monkeypatch):
    root = tmp_path / "webui"
    ext = root / "extensions" / "My Dreambooth (copy)"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dreambooth", "scripts", "javascript"):
        shutil.copytree(REPO / name, ext / name, ignore=ignore)
    for name in ("preload.py", "install.py", "requirements.txt"):
        shutil.copy2(REPO / name, ext / name)
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _owned(k)]}
    monkeypatch.setenv("FAKE_WEBUI_ROOT", str(root))
    monkeypatch.delenv("DREAMBOOTH_MODELS_DIR", raising=False)
    monkeypatch.syspath_prepend(str(FAKE))
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    yield Host(root, ext)
    jobs = sys.modules.get("dreambooth.service.jobs")
    if jobs is not None:
        jobs.runner().wait(10)
    for k in [k for k in sys.modules if _owned(k)]:
        del sys.modules[k]
    sys.modules.update(saved)


def _tab_ids(tabs):
    return [(title, elem_id) for _, title, elem_id in tabs]


def test_tab_settings_routes_and_reload_keep_a_running_job(webui):
    torch_before = "torch" in sys.modules
    webui.load_scripts()
    pkg = sys.modules["dreambooth"]
    assert Path(pkg.__file__).resolve().parent == (webui.ext / "dreambooth").resolve()
    if not torch_before:
        assert "torch" not in sys.modules, "loading scripts/ imported torch (WebUI start-up must stay light)"
    tabs = webui.create_ui()
    assert _tab_ids(tabs) == [("Dreambooth", "dreambooth_interface")]
    elem_ids = {getattr(b, "elem_id", None) for b in tabs[0][0].blocks.values()}
    assert {"dbt_train", "dbt_cancel"} <= elem_ids  # helper-2's real tab, not the fallback message
    opts = webui.modules.shared.opts
    assert "dreambooth_tab_unload_host_model" in opts.data_labels
    assert opts.data_labels["dreambooth_tab_unload_host_model"].section[0] == "dreambooth_tab"
    from fastapi import FastAPI

    app = FastAPI()
    webui.modules.script_callbacks.app_started_callback(object(), app)
    paths = {getattr(r, "path", "") for r in app.routes}
    assert any("dreambooth" in p for p in paths), paths
    webui.modules.script_callbacks.app_started_callback(object(), app)  # a second call adds nothing
    assert len(app.routes) == len({(getattr(r, "path", ""), tuple(sorted(getattr(r, "methods", ()) or ()))) for r in app.routes})

    # a running job survives "Reload UI" twice (scripts re-executed as new module objects)
    release = threading.Event()

    def fake_train(model_name, cfg, control, resume=False):
        control.update(state="training", epoch=1, step=3)
        assert webui.modules.call_queue.queue_lock.locked()  # training holds the generation lock
        release.wait(20)

    jobs = sys.modules["dreambooth.service.jobs"]
    job = jobs.runner().start_training("demo", types.SimpleNamespace(num_train_epochs=2), train_fn=fake_train)
    first_script = webui.modules.scripts.loaded[0]
    for _ in range(2):
        tabs, app = webui.reload_ui()
        assert webui.modules.scripts.loaded[0] is not first_script
        assert _tab_ids(tabs) == [("Dreambooth", "dreambooth_interface")]
        assert sys.modules["dreambooth.service.jobs"] is jobs
        for _ in range(100):
            if jobs.runner().status().state == "training":
                break
            threading.Event().wait(0.05)
        status = jobs.runner().status()
        assert (status.state, status.step, jobs.runner().current()) == ("training", 3, job)
    release.set()
    assert jobs.runner().wait(10)
    assert jobs.runner().status().state == "done"


def test_host_adapter_paths_checkpoints_lock_and_vram_guard(webui):
    webui.load_scripts()
    from dreambooth.platform import host

    mods = webui.modules
    assert host.is_hosted()
    sd_dir = (webui.root / "models" / "Stable-diffusion").resolve()
    assert host.models_root() == (webui.root / "models").resolve()
    assert host.dreambooth_root() == (webui.root / "models" / "dreambooth").resolve()
    assert host.checkpoint_dir() == sd_dir
    mods.shared.cmd_opts.dreambooth_tab_models_path = str(webui.root / "db")
    mods.shared.cmd_opts.ckpt_dir = str(webui.root / "ckpts")
    assert host.dreambooth_root() == (webui.root / "db").resolve()
    assert host.checkpoint_dir() == (webui.root / "ckpts").resolve()
    mods.shared.cmd_opts.ckpt_dir = None
    assert host.lora_dir() == (webui.root / "models" / "Lora").resolve()  # LoRA output: the WebUI's Lora folder
    mods.shared.cmd_opts.lora_dir = str(webui.root / "loras")
    assert host.lora_dir() == (webui.root / "loras").resolve()
    mods.shared.cmd_opts.lora_dir = None

    (sd_dir / "new.safetensors").write_bytes(b"x")
    assert host.list_source_checkpoints() == [sd_dir / "new.safetensors"]  # found before the host rescans
    host.refresh_checkpoints()
    assert host.list_source_checkpoints() == [sd_dir / "new.safetensors"]

    with host.generation_lock():
        assert mods.call_queue.queue_lock.locked()
    assert not mods.call_queue.queue_lock.locked()

    mods.shared.cmd_opts.api_auth = "ann:secret,bob:pw"
    assert host.host_api_auth() == "ann:secret,bob:pw"
    assert host.check_api_auth("ann", "secret") and not host.check_api_auth("ann", "nope")

    # nothing loaded: no unload, and never a lazy load through shared.sd_model
    with host.vram_released() as unloaded:
        assert unloaded is False
    assert mods.shared.lazy_load_attempts == 0
    assert not [c for c in mods.sd_models.calls if c[0] == "unload"]
    # a loaded model goes to the CPU for the block and comes back after, even on an error
    model = mods.sd_models.FakeModel()
    mods.sd_models.model_data.sd_model = model
    with pytest.raises(RuntimeError):
        with host.vram_released() as unloaded:
            assert unloaded and model.device == "cpu"
            raise RuntimeError("training failed")
    assert model.device == "cuda" and mods.shared.lazy_load_attempts == 0
    mods.shared.opts.dreambooth_tab_unload_host_model = False  # the setting turns it off
    with host.vram_released() as unloaded:
        assert unloaded is False and model.device == "cuda"


def test_clash_with_an_older_dreambooth_package_runs_none_of_its_code(webui, tmp_path):
    old = tmp_path / "old_ext"
    (old / "dreambooth" / "ui").mkdir(parents=True)
    marker = tmp_path / "old_code_ran"
    (old / "dreambooth" / "__init__.py").write_text("")
    (old / "dreambooth" / "ui" / "__init__.py").write_text("")
    for name in ("tab.py", "settings.py"):
        (old / "dreambooth" / "ui" / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    (old / "dreambooth" / "api.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    spec = importlib.util.spec_from_file_location("dreambooth", old / "dreambooth" / "__init__.py",
                                                  submodule_search_locations=[str(old / "dreambooth")])
    sys.modules["dreambooth"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["dreambooth"])

    err = io.StringIO()
    with redirect_stderr(err):
        tabs, app = webui.start()
    lines = [line for line in err.getvalue().splitlines() if "another 'dreambooth' package" in line]
    assert len(lines) == 1
    assert str(old / "dreambooth") in lines[0] and str(webui.ext / "dreambooth") in lines[0]
    assert "disable the older Dreambooth extension" in lines[0]
    assert _tab_ids(tabs) == [("Dreambooth", "dreambooth_interface")]  # a tab that says why
    assert not marker.exists()
    assert not webui.modules.shared.opts.data_labels
    assert not [r for r in app.routes if "dreambooth" in getattr(r, "path", "")]


def _preload_module(path: Path):
    spec = importlib.util.spec_from_file_location("preload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preload_adds_the_models_path_flag_once():
    module = _preload_module(REPO / "preload.py")
    parser = argparse.ArgumentParser()
    module.preload(parser)
    module.preload(parser)
    assert parser.parse_args(["--dreambooth-tab-models-path", "/x"]).dreambooth_tab_models_path == "/x"
    assert parser.parse_args([]).dreambooth_tab_models_path is None


@pytest.mark.parametrize("ours_first", [True, False])
def test_both_preloads_run_beside_the_older_extension(ours_first):
    """The older extension adds --dreambooth-models-path unguarded: a flag of the same name from us made
    its preload die with argparse.ArgumentError when ours ran first."""
    ours = _preload_module(REPO / "preload.py")
    older = _preload_module(FAKE / "older_dreambooth_extension" / "preload.py")
    parser = argparse.ArgumentParser()
    for module in ((ours, older) if ours_first else (older, ours)):
        module.preload(parser)
    args = parser.parse_args(["--dreambooth-models-path", "/old", "--dreambooth-tab-models-path", "/new"])
    assert (args.dreambooth_models_path, args.dreambooth_tab_models_path) == ("/old", "/new")


@pytest.mark.parametrize("ours_first", [True, False])
def test_beside_the_older_extension_both_tabs_and_routes_answer_for_themselves(webui, ours_first):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    older = webui.root / "extensions" / "sd_dreambooth_extension"
    shutil.copytree(FAKE / "older_dreambooth_extension", older)
    webui.load_scripts(extra_extensions=[older])
    if not ours_first:  # the WebUI runs extensions in folder order: either may register first
        for name in ("ui_tabs", "app_started"):
            webui.modules.script_callbacks.callbacks[name].reverse()
    webui.modules.shared.cmd_opts.dreambooth_tab_models_path = str(webui.root / "tab-models")
    tabs = webui.create_ui()
    by_id = {elem_id: (title, blocks) for blocks, title, elem_id in tabs}
    assert set(by_id) == {"dreambooth_interface", "dreambooth_v2"}
    assert by_id["dreambooth_interface"][0] != by_id["dreambooth_v2"][0]  # two tabs a user can tell apart

    def elem_ids(blocks):
        return {b.elem_id for b in blocks.blocks.values() if getattr(b, "elem_id", None)}

    ours, theirs = elem_ids(by_id["dreambooth_interface"][1]), elem_ids(by_id["dreambooth_v2"][1])
    assert "dbt_train" in ours and not ours & theirs  # their JS finds their elements, ours ours
    note = [b for b in by_id["dreambooth_interface"][1].blocks.values()
            if getattr(b, "elem_id", "") == "dbt_neighbour_note"]
    assert note and "sd_dreambooth_extension" in note[0].value
    # where this tab's models really are (the flag moved them), not a fixed models/dreambooth
    assert str((webui.root / "tab-models").resolve()) in note[0].value and "models/dreambooth" not in note[0].value

    app = FastAPI()
    webui.modules.script_callbacks.app_started_callback(object(), app)
    client = TestClient(app)
    prefix = sys.modules["dreambooth.api"].PREFIX
    assert client.get("/dreambooth/status").json()["owner"] == "sd_dreambooth_extension"
    assert client.post("/dreambooth/start_training").json()["owner"] == "sd_dreambooth_extension"
    mine = client.get(prefix + "/status")
    assert mine.status_code == 200 and "owner" not in mine.json() and "state" in mine.json()
    assert client.get(prefix + "/models").json() == {"models": []}


def test_every_source_the_tab_offers_is_found_and_accepted(webui, tmp_path):
    """The real host: its list is a start-up cache (a file copied in later was missing from the Source list),
    and its --ckpt file outside the models folder was offered, then refused by Create."""
    webui.load_scripts()
    from dreambooth.errors import DreamboothError
    from dreambooth.platform import pathpolicy
    from dreambooth.ui import handlers

    mods = webui.modules
    outside = tmp_path / "launch-folder"
    outside.mkdir()
    (outside / "base.safetensors").write_bytes(b"x")
    (outside / "other.safetensors").write_bytes(b"x")
    mods.shared.cmd_opts.ckpt = str(outside / "base.safetensors")
    mods.sd_models.list_models()  # the WebUI's start-up scan
    (webui.root / "models" / "Stable-diffusion" / "copied-later.safetensors").write_bytes(b"x")
    choices = handlers.source_choices()
    assert "copied-later.safetensors" in choices and str((outside / "base.safetensors").resolve()) in choices
    for choice in choices:
        assert pathpolicy.check_source(choice).is_file()
    with pytest.raises(DreamboothError, match="not allowed") as refused:  # a file beside it is not offered
        pathpolicy.check_source(str(outside / "other.safetensors"))
    assert "Settings > Training > Dreambooth tab > Data roots" in str(refused.value)
    with pytest.raises(DreamboothError, match="not allowed"):  # the listed-file check never sees a raw path
        pathpolicy.check_source("base.safetensors\0")


def test_settings_section_is_filed_under_training(webui):
    webui.load_scripts()
    webui.create_ui()
    assert webui.modules.ui_settings.section_categories["dreambooth_tab"] == "Training"


def test_a_reloaded_page_selects_the_model_that_trains(webui):
    webui.load_scripts()
    release = threading.Event()
    import importlib

    jobs, handlers, store = (importlib.import_module(f"dreambooth.{name}")
                             for name in ("service.jobs", "ui.handlers", "store"))
    assert handlers.model_choices_on_load() == {"choices": []}
    folder = store.model_dir("busy").path
    (folder / "working").mkdir(parents=True)
    (folder / "db_config.json").write_text("{}")
    job = jobs.runner().start_training("busy", types.SimpleNamespace(num_train_epochs=1),
                                       train_fn=lambda *args, **kwargs: release.wait(20))
    try:
        assert handlers.model_choices_on_load() == {"choices": ["busy"], "value": "busy"}
    finally:
        release.set()
        jobs.runner().wait(10)


def test_checkpoint_refresh_never_shows_txt2img_an_empty_list(webui):
    """The host's rescan empties the list first: it must run under the generation lock txt2img holds."""
    webui.load_scripts()
    from dreambooth.platform import host

    sd_models, queue_lock = webui.modules.sd_models, webui.modules.call_queue.queue_lock
    (webui.root / "models" / "Stable-diffusion" / "a.safetensors").write_bytes(b"x")
    sd_models.list_models()
    refresh = threading.Thread(target=host.refresh_checkpoints)
    refresh.start()
    assert sd_models.refilling.wait(10)
    with queue_lock:  # a txt2img request arriving mid-rescan
        assert sd_models.select_checkpoint().filename.endswith("a.safetensors")
    refresh.join(10)
    with host.generation_lock():  # a job holding the lock (training) may refresh: no deadlock
        host.refresh_checkpoints()
    assert not queue_lock.locked()


def test_training_says_it_waits_for_a_running_generation(webui):
    webui.load_scripts()
    import dreambooth.service.jobs as jobs

    queue_lock = webui.modules.call_queue.queue_lock
    started = threading.Event()

    def fake_train(model_name, cfg, control, resume=False):
        started.set()

    queue_lock.acquire()  # txt2img is generating
    try:
        jobs.runner().start_training("demo", types.SimpleNamespace(num_train_epochs=1), train_fn=fake_train)
        for _ in range(100):
            if jobs.runner().status().state == "waiting":
                break
            threading.Event().wait(0.05)
        status = jobs.runner().status()
        assert status.state == "waiting" and "WebUI" in status.message and not started.is_set()
        from dreambooth.ui.live import status_text

        assert "current generation" in status_text(status)
    finally:
        queue_lock.release()
    assert jobs.runner().wait(10) and started.is_set()
    assert jobs.runner().status().state == "done"


def test_standalone_adapter_is_inert(tmp_path, monkeypatch):
    from dreambooth.platform import host

    if host.is_hosted():
        pytest.skip("a WebUI `modules.shared` is imported in this process")
    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path))
    (tmp_path / "Stable-diffusion" / "sub").mkdir(parents=True)
    (tmp_path / "Stable-diffusion" / "sub" / "a.ckpt").write_bytes(b"x")
    (tmp_path / "Stable-diffusion" / "notes.txt").write_text("x")
    assert host.list_source_checkpoints() == [tmp_path.resolve() / "Stable-diffusion" / "sub" / "a.ckpt"]
    with host.vram_released() as unloaded, host.generation_lock():
        assert unloaded is False
    host.refresh_checkpoints()
    monkeypatch.setenv("DREAMBOOTH_API_AUTH", "u:p")
    assert host.check_api_auth("u", "p") and not host.check_api_auth("u", "x")
