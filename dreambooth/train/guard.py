"""Stops that every process agrees on: the NaN guard and the Cancel vote.

Under data-parallel training every process must stop at the same step, or the others hang waiting for its
gradients: a stop seen by one process is agreed by all. That agreement is a collective that waits for every
device, so it is held every `check_every` steps, not at every step.
"""
from __future__ import annotations


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        super().__init__(f"loss became NaN or infinite at step {step}")
        self.step = step


def any_process(accelerator, device, flag: bool) -> bool:
    """`flag` as all processes agree on it: set when it is set on any of them."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    votes = accelerator.reduce(torch.tensor([float(flag)], device=device), reduction="sum")
    return bool(votes.item() > 0)


def cancel_agreed(accelerator, device, requested, step: int, check_every: int) -> bool:
    """One process sees Cancel (`requested()`) alone; with several processes the vote is held every
    `check_every` steps (Cancel answers within those)."""
    if accelerator.num_processes == 1:
        return requested()
    if step % check_every:
        return False
    return any_process(accelerator, device, requested())


class NanGuard:
    """Stops before a non-finite loss reaches the weights that get saved.

    The flag stays on the device; reading it waits for the device, so off the CPU it is read every
    `check_every` steps. Weights from those few steps are never saved: every save checks first.
    """

    def __init__(self, accelerator, device, check_every: int):
        import torch

        self.accelerator, self.device, self.check_every = accelerator, device, check_every
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss so far

    def watch(self, loss, step: int) -> None:
        """Note the loss of `step` (1-based) on the device; read the flag when the interval is due."""
        import torch

        self.bad_loss = torch.logical_or(self.bad_loss, ~torch.isfinite(loss))
        if step % self.check_every:
            return
        self.check(step)

    def check(self, step: int) -> None:
        """Read the flag now (all processes agree); raise NonFiniteLoss when any loss so far was bad."""
        if any_process(self.accelerator, self.device, bool(self.bad_loss)):
            raise NonFiniteLoss(step)

    def check_weights(self, tensors: list, step: int) -> None:
        """Before anything is written: the trained weights themselves (one device sync per save)."""
        import torch

        finite = torch.stack([torch.isfinite(t).all().to(self.device) for t in tensors]).all()
        if any_process(self.accelerator, self.device, not bool(finite)):
            raise NonFiniteLoss(step)


def nan_stop_message(stop: NonFiniteLoss, checkpoints: list, learning_rate: float, mixed_precision: str) -> str:
    """What the user reads after a NaN stop: nothing from the run was saved, what is kept, what to try."""
    kept = checkpoints[-1] if checkpoints else "the weights from before this run"
    advice = [f"lower learning_rate (now {learning_rate:g})"]
    if mixed_precision == "fp16":
        advice.append("use mixed_precision bf16 or no instead of fp16")
    return f"{stop}; training stopped and nothing was saved from it. Kept: {kept}. Try: {'; '.join(advice)}"
