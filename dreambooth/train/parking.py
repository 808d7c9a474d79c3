"""Where frozen modules wait while training runs on outputs cached from them.

Once the latents (and, when the text encoder never trains, the text embeddings) are cached, the VAE and the
text encoder are needed only for previews and saves. On an accelerator they wait in RAM (kohya's "VAE to CPU
after caching"). When the training device is the CPU, RAM is the training memory: their weights go to a file
in the model folder and come back, memory-mapped, only while a preview or a save uses them (0.4 GB of an
SD1.5 run's peak in bf16, 0.8 GB in fp32). Buffers stay in place: they are small, and some (CLIP's
position ids) are not in a state dict.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Callable, Iterator

PARKING_FOLDER = ".parked"  # in the model folder, one subfolder per process; removed at the end of the run


def parking_place(device, cached: bool, force: bool | None = None) -> str | None:
    """"ram" (an accelerator), "disk" (training on the CPU) or None (keep it where it is: outputs not cached).
    `force` True/False picks RAM or nothing regardless of the device (tests on a CPU)."""
    if not cached or force is False:
        return None
    if force:
        return "ram"
    return "disk" if getattr(device, "type", str(device)) == "cpu" else "ram"


class FrozenParking:
    """Parks modules in RAM or on disk after caching; `back()` returns them for a preview or a save."""

    def __init__(self, device, folder: Path, log: Callable[[str], None]):
        self.device, self.folder, self.log = device, Path(folder), log
        self.in_ram: list = []  # modules moved to RAM, back to `device` for previews
        self.on_disk: list = []  # (module, file) whose parameters were emptied
        shutil.rmtree(self.folder, ignore_errors=True)  # a crashed run's leftovers (this process's)

    def park(self, named_modules: list[tuple[str, object, str | None]]) -> None:
        """`named_modules`: (name for the log, module, place from `parking_place`)."""
        moved = {"ram": [], "disk": []}
        for name, module, place in named_modules:
            if place == "ram":
                module.to("cpu")
                self.in_ram.append(module)
                moved["ram"].append(name)
            elif place == "disk" and self._to_disk(name, module):
                moved["disk"].append(name)
        if moved["ram"]:
            self.log(f"{' and '.join(moved['ram'])} moved to RAM after caching (back on the device for previews)")
        if moved["disk"]:
            self.log(f"{' and '.join(moved['disk'])} parked on disk after caching (training on the CPU: their "
                     "weights come back for previews and saves)")

    def park_frozen(self, vae, text_encoder, latents_cached: bool, text_cached: bool, force: bool | None) -> None:
        """After caching: the VAE when the latents are cached, the text encoder when its outputs are."""
        self.park([("VAE", vae, parking_place(self.device, latents_cached, force)),
                   ("text encoder", text_encoder, parking_place(self.device, text_cached, force))])

    def _to_disk(self, name: str, module) -> bool:
        from safetensors.torch import save_file

        tensors = {key: param.detach().contiguous() for key, param in module.named_parameters()}
        path = self.folder / f"{name.replace(' ', '_')}.safetensors"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path))
        except OSError as error:  # a full disk costs memory, not the run
            self.log(f"warning: {name} stays in RAM: could not park it in {self.folder} ({error})")
            with contextlib.suppress(OSError):  # a half-written file, if the folder itself exists
                path.unlink(missing_ok=True)
            return False
        del tensors
        self.on_disk.append((module, path))
        self._empty(module)
        return True

    @staticmethod
    def _empty(module) -> None:
        import torch

        for param in module.parameters():
            param.data = torch.empty(0, dtype=param.dtype)

    def _load_parked(self) -> None:
        from safetensors.torch import load_file

        for module, path in self.on_disk:
            for key, tensor in load_file(str(path)).items():  # memory-mapped: read, not copied
                module.get_parameter(key).data = tensor

    @contextlib.contextmanager
    def back(self, onto_device: bool = True) -> Iterator[None]:
        """Weights back for the block; `onto_device` False (a save only reads them) leaves RAM-parked ones."""
        in_ram = self.in_ram if onto_device else []
        for module in in_ram:
            module.to(self.device)
        self._load_parked()
        try:
            yield
        finally:
            for module in in_ram:
                module.to("cpu")
            for module, _ in self.on_disk:
                self._empty(module)

    def close(self) -> None:
        """Return every module for good (the trainer's modules may outlive the run) and delete the files.
        The returned weights stay mapped from the deleted files (POSIX keeps them readable; on Windows the
        folder is left for the next run to remove)."""
        self._load_parked()
        self.on_disk.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last process out removes the parent
            self.folder.parent.rmdir()
