"""CPU training returns freed activation blocks to the system: glibc keeps large blocks on mmap."""
import subprocess
import sys

import pytest

from dreambooth.platform import cpu_memory

# Frees an 8 MiB tensor, then allocates another and reports how much of it glibc mapped (mallinfo2.hblkhd).
# By default the first free raises glibc's mmap threshold to 8 MiB, so the second comes from the heap.
PROBE = """
import ctypes, sys, torch
from dreambooth.platform import cpu_memory
if sys.argv[1] == "fixed":
    assert cpu_memory.return_freed_memory(print)
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
first = torch.ones(2 << 20); del first
second = torch.ones(2 << 20)
print("mapped", libc.mallinfo2().hblkhd)
"""


def _mapped_bytes(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return int(out.split("mapped")[-1])


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="glibc's mallopt only (Linux)")
def test_large_blocks_stay_mapped_after_the_first_free():
    assert _mapped_bytes("default") < 8 << 20  # the dynamic threshold moved the second block into the heap
    assert _mapped_bytes("fixed") >= 8 << 20  # returned to the system when freed


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="glibc's mallopt only (Linux)")
def test_cpu_training_applies_it_once(tiny_model, one_image, monkeypatch):
    from conftest import quick_config
    from dreambooth.train.loop import Trainer

    monkeypatch.setattr(cpu_memory, "_applied", False)  # as in a fresh process
    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1))
    trainer.run()
    assert any("returned to the system when freed" in line for line in trainer.control.snapshot().log)
    assert cpu_memory.return_freed_memory(lambda message: pytest.fail("said twice in one process"))
