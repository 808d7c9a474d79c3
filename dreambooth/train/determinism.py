"""`deterministic`: the same settings give the same weights, run after run."""
from __future__ import annotations

import contextlib
import os


def training_seed(cfg) -> int:
    """The seed setting a run uses: -1 (random) becomes 0 when the run must be repeatable."""
    return 0 if cfg.deterministic and cfg.seed < 0 else cfg.seed


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """Deterministic kernels only (cuDNN's and cuBLAS's included) for the run, then the previous settings
    back: the tab and the server run later jobs in the same process. Ops without a deterministic kernel
    warn instead of failing (warn_only), so no setting makes training impossible."""
    if not enabled:
        yield
        return
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable results
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
