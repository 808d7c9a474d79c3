"""What the extension needs beside the host's torch/gradio/transformers, and what is missing.

Standard library only (plus `packaging` when importable): `install.py` loads this file by path before
any dependency exists, and the tab calls `missing_requirements()` / `missing_message()` to say
"missing: X — run: <command>" instead of breaking.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

EXT_DIR = Path(__file__).resolve().parents[2]  # <extension>/dreambooth/platform/deps.py
REQUIREMENTS = EXT_DIR / "requirements.txt"
# The host owns these: never installed, upgraded or replaced, and pinned as constraints for every pip call.
PROTECTED = ("torch", "torchvision", "torchaudio", "xformers", "gradio", "gradio-client", "transformers")
# transformers older than this cannot import diffusers > 0.31.0 (SiglipImageProcessor; host-webui.md §9).
OLD_TRANSFORMERS = "4.37"
DIFFUSERS_FOR_OLD_TRANSFORMERS = "0.31.0"
# Installed only where they can run: bitsandbytes' 8-bit optimizers need an NVIDIA GPU, and on a CPU-only
# machine it only adds a warning to every WebUI start. env DREAMBOOTH_INSTALL_BITSANDBYTES=1/0 overrides.
GPU_ONLY = ("bitsandbytes",)
GPU_ENV = "DREAMBOOTH_INSTALL_BITSANDBYTES"

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken dist-info: treat as missing
        return None


def _vtuple(version: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", version):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets a specifier like '>=0.31.0,<1' ('' = anything)."""
    spec = spec.strip()
    if not spec:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # no packaging: the small comparison below
        pass
    else:
        try:
            return SpecifierSet(spec).contains(Version(version), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            return False
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
           "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
           "~=": lambda a, b: a >= b}
    have = _vtuple(version)
    for clause in spec.split(","):
        m = re.match(r"\s*(>=|<=|==|!=|~=|>|<)\s*(\S+)", clause)
        if not m or not ops[m.group(1)](have, _vtuple(m.group(2))):
            return False
    return True


def parse_requirements(path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(name, specifier) per requirement line; comments, options (-r, -c, --index-url) and markers skipped."""
    path = Path(path) if path else REQUIREMENTS
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        line, _, marker = line.partition(";")
        if marker.strip() and not _marker_true(marker):
            continue
        m = _REQ.match(line)
        if m:
            out.append((m.group(1), m.group(3).strip().replace(" ", "")))
    return out


def _marker_true(marker: str) -> bool:
    try:
        from packaging.markers import Marker

        return Marker(marker.strip()).evaluate()
    except Exception:  # no packaging or a bad marker: keep the requirement
        return True


def target_spec(name: str, spec: str, versions: dict[str, str | None]) -> str:
    """The specifier to install for `name` on this host (versions: canonical name → installed version)."""
    if canonical(name) == "diffusers":
        transformers = versions.get("transformers")
        if transformers and _vtuple(transformers) < _vtuple(OLD_TRANSFORMERS):
            return "==" + DIFFUSERS_FOR_OLD_TRANSFORMERS
    return spec


def nvidia_gpu_present() -> bool:
    """Whether an NVIDIA driver is there, looked up cheaply (install.py runs at every WebUI start, so no
    torch import). False when the WebUI runs with --use-cpu all."""
    forced = os.environ.get(GPU_ENV, "").strip().lower()
    if forced:
        return forced not in ("0", "false", "no")
    try:
        args = shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    except ValueError:
        args = []
    if "--use-cpu" in args and args[args.index("--use-cpu") + 1:][:1] == ["all"]:  # the WebUI on the CPU
        return False
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def plan(requirements: list[tuple[str, str]], versions: dict[str, str | None], gpu: bool = True) -> list[dict]:
    """One entry per requirement: {name, spec, installed, action: ok|install|protected|skip, reason}. Pure.

    `gpu`: whether an NVIDIA GPU is present; without one, GPU_ONLY packages are skipped.
    """
    steps = []
    for name, spec in requirements:
        key = canonical(name)
        have = versions.get(key)
        want = target_spec(name, spec, versions)
        step = {"name": name, "spec": want, "installed": have, "requirement": name + want}
        if key in PROTECTED:
            step.update(action="protected", reason="owned by the host, never installed or changed")
        elif have is None and key in GPU_ONLY and not gpu:
            step.update(action="skip", reason=f"no NVIDIA GPU found (its 8-bit optimizers need one; "
                                               f"{GPU_ENV}=1 installs it anyway)")
        elif have is None:
            step.update(action="install", reason="missing")
        elif not satisfies(have, want):
            step.update(action="install", reason=f"{have} installed, needs {want}")
        else:
            step.update(action="ok", reason=f"{have} installed")
        steps.append(step)
    return steps


def host_versions(requirements: list[tuple[str, str]]) -> dict[str, str | None]:
    names = {canonical(n) for n, _ in requirements} | set(PROTECTED)
    return {n: installed_version(n) for n in names}


def constraints_text(versions: dict[str, str | None]) -> str:
    """Pins for the host's protected packages (a pip -c file), so pip never swaps them."""
    return "".join(f"{n}=={versions[n]}\n" for n in PROTECTED if versions.get(n))


def pip_command(requirements: list[str], constraints: str | None = None) -> str:
    """The command a user can paste to install `requirements` into the host's Python."""
    parts = [sys.executable, "-m", "pip", "install", *requirements]
    if constraints:
        parts += ["-c", constraints]
    if os.name == "nt":
        return " ".join(f'"{p}"' if (" " in p or any(c in p for c in "<>|&")) else p for p in parts)
    return " ".join(shlex.quote(p) for p in parts)


def missing_requirements(path: str | os.PathLike | None = None) -> list[str]:
    """Requirements still missing or too old, e.g. ['diffusers==0.31.0'] (empty when all is well)."""
    try:
        reqs = parse_requirements(path)
    except OSError:
        return []
    steps = plan(reqs, host_versions(reqs), gpu=nvidia_gpu_present())
    return [s["requirement"] for s in steps if s["action"] == "install"]


def missing_message(path: str | os.PathLike | None = None) -> str | None:
    """'missing: diffusers==0.31.0 — run: <command>' for the tab, or None when nothing is missing."""
    missing = missing_requirements(path)
    if not missing:
        return None
    return f"missing: {', '.join(missing)} — run: {pip_command(missing)}"
