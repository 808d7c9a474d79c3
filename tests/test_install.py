"""install.py in a throwaway venv: fake host packages (dist-info only), a local wheelhouse, no network.

The venv is made --without-pip with pip linked in from the running venv, so it costs ~0.1 s; pip runs
with --no-index against tiny generated wheels. torch/gradio/transformers must never change.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Located, never imported: importing pip (even finding its spec) switches off setuptools' distutils shim for
# the whole test process, and a later `import setuptools` (triton, pulled in by bitsandbytes on the CUDA
# torch builds) then fails its own assertion.
PIP_DIR = Path(sysconfig.get_paths()["purelib"]) / "pip"
HOST = {"torch": "2.1.2", "torchvision": "0.16.2", "gradio": "3.41.2", "transformers": "4.30.2",
        "accelerate": "0.21.0", "safetensors": "0.4.5", "matplotlib": "3.8.0", "tqdm": "4.66.1",
        "psutil": "5.9.5"}
FAKE_LAUNCH = '''
import os, subprocess, sys
def is_installed(package):
    import importlib.metadata as m
    try:
        return bool(m.version(package))
    except m.PackageNotFoundError:
        return False
def run_pip(command, desc=None, live=False):
    with open(os.environ["FAKE_LAUNCH_LOG"], "a") as f:
        f.write(command + "\\n")
    done = subprocess.run(f'"{sys.executable}" -m pip {command} --prefer-binary', shell=True,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"Couldn't install {desc}.\\n{done.stdout}{done.stderr}")
'''


def _dist_info(folder: Path, name: str, version: str, requires=()) -> dict[str, bytes]:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    return {f"{name}-{version}.dist-info/METADATA": meta.encode(),
            f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}


def _wheel(house: Path, name: str, version: str, requires=()) -> None:
    files = _dist_info(house, name, version, requires)
    files[f"{name}/__init__.py"] = f"__version__ = {version!r}\n".encode()
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    files[f"{name}-{version}.dist-info/RECORD"] = record.encode()
    with zipfile.ZipFile(house / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A venv that looks like an A1111 1.10 host; returns (python, env, webui_root)."""
    base = tmp_path_factory.mktemp("host")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "pip").symlink_to(PIP_DIR, target_is_directory=True)
    for name, version in HOST.items():
        for path, data in _dist_info(site, name, version).items():
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_bytes(data)
            (site / f"{name}-{version}.dist-info" / "INSTALLER").write_text("pip\n")
            (site / f"{name}-{version}.dist-info" / "RECORD").write_text("")
    house = base / "wheelhouse"
    house.mkdir()
    _wheel(house, "diffusers", "0.31.0")
    _wheel(house, "diffusers", "0.42.1")
    _wheel(house, "torch", "2.13.0")  # a newer torch pip would love to install
    _wheel(house, "bitsandbytes", "0.50.2", ["torch>=2.3"])  # would upgrade torch without constraints
    _wheel(house, "bitsandbytes", "0.43.0", ["torch"])
    webui = base / "webui"
    webui.mkdir()
    (webui / "launch.py").write_text(FAKE_LAUNCH)
    (webui / "requirements_versions.txt").write_text("gradio==4.0.0\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "REQS_FILE", "COMMANDLINE_ARGS", "DREAMBOOTH_SKIP_INSTALL", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(house), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", FAKE_LAUNCH_LOG=str(base / "launch.log"), PYTHONDONTWRITEBYTECODE="1")
    return python, env, webui, base / "launch.log"


def _installed(python) -> dict[str, str]:
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


def _install(python, env, cwd, **extra) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), str(REPO / "install.py")], cwd=cwd, env={**env, **extra},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_install_py_in_a_throwaway_host_venv(host):
    python, env, webui, launch_log = host
    before = _installed(python)
    assert before["transformers"] == "4.30.2" and "diffusers" not in before

    for skip in ({"DREAMBOOTH_SKIP_INSTALL": "1"}, {"COMMANDLINE_ARGS": "--xformers --skip-install"}):
        done = _install(python, env, webui, **skip)
        assert "skipping install" in done.stdout and _installed(python) == before

    # first run under the WebUI (`import launch` works via PYTHONPATH), on a machine without an NVIDIA
    # GPU: installs what is missing, but not bitsandbytes (it would only warn at every start)
    done = _install(python, env, webui, PYTHONPATH=str(webui), DREAMBOOTH_INSTALL_BITSANDBYTES="0")
    assert "installing diffusers==0.31.0 (missing)" in done.stdout
    assert "not installing bitsandbytes: no NVIDIA GPU found" in done.stdout
    assert "bitsandbytes" not in _installed(python) and "requirements OK" in done.stdout
    # with a GPU, bitsandbytes too
    done = _install(python, env, webui, PYTHONPATH=str(webui), DREAMBOOTH_INSTALL_BITSANDBYTES="1")
    after = _installed(python)
    assert "installing bitsandbytes (missing)" in done.stdout
    assert after["diffusers"] == "0.31.0"  # transformers 4.30.x gets the diffusers that imports with it
    assert after["bitsandbytes"] == "0.43.0"  # 0.50.2 would have upgraded torch: constraints said no
    for name in ("torch", "torchvision", "gradio", "transformers"):
        assert after[name] == before[name]
    assert set(after) - set(before) == {"diffusers", "bitsandbytes"}
    calls = launch_log.read_text().splitlines()
    assert len(calls) == 2 and all(" -c " in c for c in calls)
    assert done.stdout.count("\n") <= 3  # one line per action

    # second run installs nothing
    done = _install(python, env, webui, PYTHONPATH=str(webui))
    assert "installing" not in done.stdout and "requirements OK" in done.stdout
    assert _installed(python) == after and len(launch_log.read_text().splitlines()) == 2

    # REQS_FILE honoured (plain pip path, no launch); a failing install prints the hand command, exit 0
    extra = webui / "extensions" / "db" / "extra.txt"
    extra.parent.mkdir(parents=True)
    extra.write_text("# extra\nno-such-package-xyz>=1\ntorch>=2.5\n-r ../../requirements_versions.txt\n")
    done = _install(python, env, webui, REQS_FILE=str(extra))
    assert "installing no-such-package-xyz>=1 (missing)" in done.stdout
    assert "leaving torch 2.1.2 alone" in done.stdout
    hand = [line for line in done.stdout.splitlines() if "run by hand:" in line]
    assert len(hand) == 1 and "-m pip install" in hand[0] and "no-such-package-xyz>=1" in hand[0]
    assert _installed(python) == after

    # REQS_FILE naming the WebUI's own requirements is not ours: ignored
    done = _install(python, env, webui, REQS_FILE="requirements_versions.txt")
    assert "ignoring REQS_FILE" in done.stdout and "requirements OK" in done.stdout
    assert _installed(python) == after


def _deps():
    spec = importlib.util.spec_from_file_location("_deps_under_test", REPO / "dreambooth" / "platform" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_picks_versions_from_the_host_pins():
    deps = _deps()
    reqs = [("diffusers", ">=0.31.0"), ("torch", ""), ("gradio", ">=4"), ("accelerate", ">=0.21.0")]

    def actions(versions):
        return {s["name"]: (s["action"], s["requirement"]) for s in deps.plan(reqs, versions)}

    a1111 = actions({"transformers": "4.30.2", "accelerate": "0.21.0", "torch": "2.1.2", "gradio": "3.41.2"})
    assert a1111["diffusers"] == ("install", "diffusers==0.31.0")
    assert a1111["torch"][0] == a1111["gradio"][0] == "protected"
    assert a1111["accelerate"][0] == "ok"
    broken = actions({"transformers": "4.30.2", "diffusers": "0.37.1", "accelerate": "0.21.0"})
    assert broken["diffusers"] == ("install", "diffusers==0.31.0")  # 0.37.1 cannot import with 4.30.2
    newer = actions({"transformers": "5.24.0", "accelerate": "0.20.0"})
    assert newer["diffusers"] == ("install", "diffusers>=0.31.0")  # pip picks the newest
    assert newer["accelerate"] == ("install", "accelerate>=0.21.0")  # too old
    assert actions({"transformers": "4.46.1", "diffusers": "0.42.1", "accelerate": "1.0"})["diffusers"][0] == "ok"
    assert deps.constraints_text({"torch": "2.1.2", "gradio": None, "transformers": "4.30.2"}) == \
        "torch==2.1.2\ntransformers==4.30.2\n"
    assert deps.satisfies("0.31.0", "==0.31.0") and not deps.satisfies("0.30.3", ">=0.31.0")


def test_gpu_only_packages_are_skipped_without_an_nvidia_gpu(monkeypatch):
    deps = _deps()
    reqs = [("bitsandbytes", ""), ("diffusers", ">=0.31.0")]
    cpu = {s["name"]: s["action"] for s in deps.plan(reqs, {}, gpu=False)}
    assert cpu == {"bitsandbytes": "skip", "diffusers": "install"}
    assert {s["name"]: s["action"] for s in deps.plan(reqs, {}, gpu=True)}["bitsandbytes"] == "install"
    assert deps.plan(reqs, {"bitsandbytes": "0.45.5"}, gpu=False)[0]["action"] == "ok"  # installed: kept
    monkeypatch.delenv("DREAMBOOTH_INSTALL_BITSANDBYTES", raising=False)
    monkeypatch.setenv("COMMANDLINE_ARGS", "--skip-torch-cuda-test --use-cpu all --no-half")
    assert deps.nvidia_gpu_present() is False
    monkeypatch.setenv("DREAMBOOTH_INSTALL_BITSANDBYTES", "1")
    assert deps.nvidia_gpu_present() is True


def test_missing_message_names_the_command(tmp_path):
    deps = _deps()
    reqs = tmp_path / "r.txt"
    reqs.write_text("surely-not-installed-pkg>=1 ; python_version >= '3'\nskipped-pkg ; python_version < '3'\n")
    assert deps.missing_requirements(reqs) == ["surely-not-installed-pkg>=1"]
    message = deps.missing_message(reqs)
    assert message.startswith("missing: surely-not-installed-pkg>=1 — run: ") and "-m pip install" in message
