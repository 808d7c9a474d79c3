"""Load single-file checkpoints without ever executing code from them.

`.safetensors` cannot hold code. `.ckpt`/`.pt`/`.pth` are pickles: they are read with
`torch.load(weights_only=True)`, whose restricted unpickler refuses anything that is not plain tensors
and containers, so a hostile checkpoint fails instead of running its payload.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DreamboothError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DreamboothError(f"checkpoint file '{path}' does not exist: check the path", field="source")
    if not path.is_file():
        raise DreamboothError(f"'{path}' is not a file: pick a .safetensors or .ckpt checkpoint", field="source")
    if path.stat().st_size == 0:
        raise DreamboothError(f"checkpoint file '{path}' is empty (0 bytes): download or copy it again",
                              field="source")


def file_kind(path: Path) -> str:
    """What the file's first bytes say it is: "zip-pickle" (torch.save since 1.6), "pickle" (older
    torch.save), "safetensors" (8-byte header length, then a JSON object) or "unknown"."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip-pickle"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):  # pickle protocol 2-5 opcode
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _out_of_memory(path: Path, exc: BaseException) -> DreamboothError:
    size_gb = path.stat().st_size / 2**30
    return DreamboothError(
        f"not enough memory to load '{path.name}' ({size_gb:.1f} GB): close other programs (or the WebUI's "
        f"loaded model) and try again; the file itself may be fine ({type(exc).__name__}: {exc})", field="source")


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "out of memory" in text or "not enough memory" in text or "cannot allocate memory" in text))


def _load_safetensors(path: Path):
    from safetensors import safe_open

    kind = file_kind(path)
    if kind in ("zip-pickle", "pickle"):
        raise DreamboothError(
            f"'{path.name}' is a pickle checkpoint (a .ckpt) named .safetensors, not a safetensors file: rename it "
            f"to '{path.stem}.ckpt' and pick that (it is loaded without running code from it)", field="source")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for bad headers/truncation
        if _is_out_of_memory(exc):
            raise _out_of_memory(path, exc) from exc
        raise DreamboothError(f"'{path.name}' is not a readable .safetensors file (truncated or corrupt "
                              f"download?): {exc}. Download it again.", field="source") from exc
    return tensors, metadata


def _load_pickle(path: Path):
    import pickle

    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused a global: the file wants to run or build arbitrary objects.
        raise DreamboothError(f"'{path.name}' contains pickled code or objects that are not plain weights; "
                              f"it was refused for safety. Use a .safetensors version of this model.",
                              field="source") from exc
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise _out_of_memory(path, exc) from exc
        if file_kind(path) == "safetensors":
            raise DreamboothError(f"'{path.name}' is a safetensors file with a pickle name: rename it to "
                                  f"'{path.stem}.safetensors' and pick that", field="source") from exc
        raise DreamboothError(f"'{path.name}' is not a readable checkpoint (truncated or corrupt?): {exc}",
                              field="source") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        outer, data = data, data["state_dict"]
    else:
        outer = data
    if not isinstance(data, dict):
        raise DreamboothError(f"'{path.name}' does not hold a state dict of tensors", field="source")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    metadata = {k: v for k, v in outer.items() if isinstance(k, str) and isinstance(v, str)}
    return tensors, metadata


def load_state_dict(path) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) from a checkpoint file; metadata is the safetensors header or {} for pickles
    (string values stored beside "state_dict" in our own .ckpt files count as metadata)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        tensors, metadata = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        tensors, metadata = _load_pickle(path)
    else:
        raise DreamboothError(f"'{path.name}' has an unknown checkpoint type '{suffix}': use .safetensors or .ckpt",
                              field="source")
    if not tensors:
        raise DreamboothError(f"'{path.name}' contains no tensors: it is not a model checkpoint", field="source")
    return tensors, metadata
