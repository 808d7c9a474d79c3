"""modules.scripts: basedir() and the way the WebUI executes an extension's scripts/*.py."""
import importlib.util
import os
import sys

current_basedir = os.environ.get("FAKE_WEBUI_ROOT", os.getcwd())
loaded = []  # module objects of the latest load


def basedir():
    return current_basedir


def load_scripts(extension_dirs):
    """As A1111: clear callbacks, then exec each scripts/*.py as a new module named after its file."""
    global current_basedir
    from modules import script_callbacks

    script_callbacks.clear_callbacks()
    loaded.clear()
    for ext_dir in extension_dirs:
        folder = os.path.join(ext_dir, "scripts")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            saved_path, saved_base = list(sys.path), current_basedir
            sys.path = [ext_dir] + sys.path
            current_basedir = ext_dir
            try:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                loaded.append(module)
            finally:
                sys.path, current_basedir = saved_path, saved_base
