"""The attention implementation a run uses (`attention`): diffusers' plain processor, PyTorch SDPA, or xformers."""
from __future__ import annotations

from ..errors import DreamboothError


def xformers_problem(device_type: str) -> str | None:
    """Why xformers cannot be used here, or None when it can."""
    if device_type != "cuda":
        return "xformers runs on CUDA GPUs only and this run has none"
    try:
        import xformers.ops  # noqa: F401
    except ImportError as error:  # also a build for another torch, which fails to import
        return f"xformers is not installed here ({error})"
    return None


def check_attention(choice: str, device_type: str) -> None:
    """Refuse xformers, naming the field and the fix, where it cannot run (before anything is loaded)."""
    if choice == "xformers":
        problem = xformers_problem(device_type)
        if problem:
            raise DreamboothError(f"attention = xformers: {problem}; choose sdpa (about as fast on recent GPUs) "
                                  "or install an xformers build that matches your torch", field="attention")


def set_attention(modules, choice: str, device_type: str) -> str:
    """Give every attention layer of the diffusers `modules` (UNet, VAE) the chosen processor; returns what
    is used, for the log."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    check_attention(choice, device_type)
    for module in modules:
        if choice == "xformers":
            try:
                module.enable_xformers_memory_efficient_attention()
            except (RuntimeError, ValueError, NotImplementedError) as error:  # a build for another GPU/CUDA
                raise DreamboothError(f"attention = xformers does not work here ({error}); choose sdpa",
                                      field="attention") from None
        else:
            module.set_attn_processor(AttnProcessor2_0() if choice == "sdpa" else AttnProcessor())
    return {"default": "default (plain)", "sdpa": "sdpa", "xformers": "xformers"}[choice]
