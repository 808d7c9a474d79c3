"""Resume snapshots: `snapshots/snapshot-<revision>/` with everything needed to continue exactly.

Earlier versions wrote `checkpoints/checkpoint-<revision>/`; those are still listed, resumed from and pruned,
but new snapshots always go to `snapshots/`. Contents: the trained UNet weights, optimizer and LR-scheduler
state, the noise generator's state and a small JSON of counters. Written as a whole directory (atomic); loaded without unpickling code.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..platform.diskspace import tensor_bytes
from ..errors import DreamboothError
from ..platform.fsutil import atomic_dir

PREFIX = "snapshot-"
OLDER_PREFIX = "checkpoint-"
STATE_FILE = "state.json"


def snapshot_revision(path: Path) -> int | None:
    """The revision a snapshot folder's name carries (either layout), or None for another folder."""
    for prefix in (PREFIX, OLDER_PREFIX):
        rest = path.name[len(prefix):]
        if path.name.startswith(prefix) and rest.isdigit():
            return int(rest)
    return None


def list_snapshots(folder: Path, *older_folders: Path) -> list[Path]:
    """Complete snapshots in `folder` and the older layout's folders, oldest first (by revision)."""
    found = []
    for where in (folder, *older_folders):
        if where.is_dir():
            found += [p for p in where.iterdir()
                      if p.is_dir() and snapshot_revision(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: (snapshot_revision(p), p.parent == folder))


def latest_snapshot(folder: Path, *older_folders: Path) -> Path | None:
    snapshots = list_snapshots(folder, *older_folders)
    return snapshots[-1] if snapshots else None


def save_snapshot(folder: Path, revision: int, trained: dict, optimizer, lr_scheduler, generator,
                  state: dict, keep: int, older_folders: tuple[Path, ...] = ()) -> Path:
    """Write one snapshot, then delete all but the newest `keep` (at least this one stays; snapshots in
    `older_folders` count, oldest first).

    Older snapshots are removed only after the new one is complete (renamed into place, state file
    present) and its weights were checked finite while being written."""
    import torch
    from safetensors.torch import save_file

    target = folder / f"{PREFIX}{revision}"
    need = sum(tensor_bytes(m.state_dict()) for m in trained.values()) + tensor_bytes(optimizer.state_dict())
    with atomic_dir(target, need=need) as tmp:
        for name, module in trained.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:  # nothing is renamed into place and no older snapshot is removed
                raise DreamboothError(f"snapshot {target.name} not written: {name} has NaN/Inf values in "
                                      f"{', '.join(bad[:3])}; the older snapshots are kept")
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"generator": generator.get_state()}, tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(dict(state, revision=revision), indent=2), encoding="utf-8")
    complete = list_snapshots(folder, *older_folders)
    if target not in complete:  # never prune while the new one is not in place
        raise DreamboothError(f"snapshot {target} is incomplete after writing; the older snapshots are kept")
    for old in complete[:-max(1, keep)]:
        shutil.rmtree(old)
    return target


def load_snapshot(path: Path) -> dict:
    """The snapshot's parts: weights per module, optimizer/scheduler/generator state, counters."""
    import torch
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        weights = {p.stem: load_file(str(p)) for p in path.glob("*.safetensors")}
        return {
            "state": state,
            "weights": weights,
            "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
            "generator": torch.load(path / "rng.pt", map_location="cpu", weights_only=True)["generator"],
        }
    except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as error:
        raise DreamboothError(f"snapshot {path} cannot be read ({error}); delete it or train without --resume") \
            from None
