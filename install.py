"""Run by the WebUI at start-up (`python <ext>/install.py`, cwd = webui root): install what is missing.

Only what requirements.txt needs and is missing or too old, with versions that fit the host's pins
(transformers 4.30.x -> diffusers==0.31.0). torch, torchvision, gradio and transformers are never
installed, upgraded or replaced: every pip call gets them as constraints. One line per action. A failed
install prints the command to run by hand and exits 0, so the WebUI still starts and the tab says
what is missing.

Skipped entirely by env DREAMBOOTH_SKIP_INSTALL=1 or `--skip-install` (argv or COMMANDLINE_ARGS).
env REQS_FILE (webui-user-dreambooth.sh sets it to requirements-webui.txt) adds or overrides entries of
requirements.txt; its `-r` includes (the WebUI's own requirements) are not ours and are skipped.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

EXT_DIR = Path(__file__).resolve().parent
PREFIX = "[Dreambooth]"
HOST_REQUIREMENTS = {"requirements_versions.txt", "requirements.txt", "requirements-test.txt"}


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def load_deps():
    """dreambooth/platform/deps.py by path: no package import (another extension may own `dreambooth`)."""
    path = EXT_DIR / "dreambooth" / "platform" / "deps.py"
    spec = importlib.util.spec_from_file_location("_dreambooth_tab_deps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_reason() -> str | None:
    if os.environ.get("DREAMBOOTH_SKIP_INSTALL", "").strip().lower() not in ("", "0", "false", "no"):
        return "DREAMBOOTH_SKIP_INSTALL is set"
    try:
        args = shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    except ValueError:
        args = os.environ.get("COMMANDLINE_ARGS", "").split()
    if "--skip-install" in sys.argv[1:] or "--skip-install" in args:
        return "--skip-install given"
    return None


def extra_requirements_file() -> Path | None:
    """REQS_FILE when it names extension requirements (not the WebUI's own file): merged over ours."""
    env = os.environ.get("REQS_FILE", "").strip()
    if not env:
        return None
    path = Path(env)
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.resolve() == (EXT_DIR / "requirements.txt").resolve():
        return None
    if path.is_file() and not (path.name in HOST_REQUIREMENTS and path.resolve().parent != EXT_DIR):
        return path
    say(f"ignoring REQS_FILE={env}: not this extension's requirements")
    return None


def read_requirements(deps) -> list:
    """requirements.txt, with REQS_FILE's entries added or replacing those of the same name."""
    merged = {deps.canonical(n): (n, s) for n, s in deps.parse_requirements(EXT_DIR / "requirements.txt")}
    extra = extra_requirements_file()
    if extra is not None:
        say(f"reading REQS_FILE {extra}")
        merged.update({deps.canonical(n): (n, s) for n, s in deps.parse_requirements(extra)})
    return list(merged.values())


def webui_launch():
    """The WebUI's `launch` module (is_installed, run_pip) when this runs under the WebUI, else None."""
    if importlib.util.find_spec("launch") is None:
        return None
    try:
        import launch
    except Exception as error:  # the WebUI's module, not ours: any failure means "use pip directly"
        print(f"dreambooth: the WebUI's launch module cannot be imported ({error}); using pip directly")
        return None
    return launch if hasattr(launch, "run_pip") else None


def pip_install(requirements: list[str], constraints: str) -> None:
    """Install through the WebUI's launch.run_pip when available, else `python -m pip`. Raises on failure."""
    quoted = " ".join(f'"{r}"' for r in requirements)
    launch = webui_launch()
    if launch is not None:
        launch.run_pip(f'install {quoted} -c "{constraints}"', desc=f"Dreambooth requirement: {quoted}")
        return
    cmd = [sys.executable, "-m", "pip", "install", *requirements, "-c", constraints,
           "--prefer-binary", "--disable-pip-version-check"]
    if os.environ.get("INDEX_URL"):
        cmd += ["--index-url", os.environ["INDEX_URL"]]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-6:])
        raise RuntimeError(f"pip exited with {done.returncode}:\n{tail}")


def main() -> int:
    reason = skip_reason()
    if reason:
        say(f"skipping install: {reason}")
        return 0
    deps = load_deps()
    reqs = read_requirements(deps)
    versions = deps.host_versions(reqs)
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]  # one file per host venv
    constraints = Path(tempfile.gettempdir()) / f"dreambooth-host-constraints-{tag}.txt"
    constraints.write_text(deps.constraints_text(versions), encoding="utf-8")
    failed = []
    for step in deps.plan(reqs, versions, gpu=deps.nvidia_gpu_present()):
        if step["action"] == "skip":
            say(f"not installing {step['name']}: {step['reason']}")
        elif step["action"] == "protected":
            say(f"leaving {step['name']} {step['installed'] or '(absent)'} alone: the host owns it")
        elif step["action"] == "install":
            say(f"installing {step['requirement']} ({step['reason']})")
            try:
                pip_install([step["requirement"]], str(constraints))
            except Exception as error:  # never stop the WebUI: report and go on
                tail = "\n".join(str(error).strip().splitlines()[-8:])
                say(f"could not install {step['requirement']}: {tail}")
                failed.append(step["requirement"])
    if failed:
        say(f"missing: {', '.join(failed)} — run by hand: {deps.pip_command(failed, str(constraints))}")
    else:
        say("requirements OK")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a bug here must not block the WebUI's start
        say(f"install check failed ({type(exc).__name__}: {exc}); the tab will say what is missing")
    sys.exit(0)
