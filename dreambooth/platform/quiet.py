"""Third-party start-up warnings that tell our users nothing they can act on, silenced for the CLI and server.

Each entry names the logger and why its warning is noise here; nothing else is touched.
"""
from __future__ import annotations

import logging

NOISY_LOGGERS = {
    # bitsandbytes >= 0.48 on a CPU with AVX512-BF16 looks for an optional `kernels` package at import time
    # (diffusers imports bitsandbytes when installed) and warns on every command; 8-bit optimizers still work.
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
}


def quiet_third_party() -> None:
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
