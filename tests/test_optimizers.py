"""The default optimizer must run on the stack's own torch: AUTOMATIC1111's torch 2.1.2 has no CPU fused AdamW."""
from __future__ import annotations

import torch

from dreambooth.train.optimizers import build_optimizer, fused_adamw_supported


def _torch_version() -> tuple:
    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def test_default_optimizer_steps_on_the_cpu_with_this_torch():
    weight = torch.nn.Parameter(torch.ones(8))
    optimizer = build_optimizer("Torch AdamW", [{"params": [weight], "lr": 0.1}], weight_decay=0.0)
    weight.sum().backward()
    optimizer.step()  # torch 2.1.2 raised "fused=True requires ... ['cuda', 'xpu', 'privateuseone']" here
    assert torch.all(weight.detach() < 1.0)


def test_fused_only_where_torch_has_cpu_kernels():
    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.1}]
    assert fused_adamw_supported(groups) == (_torch_version() >= (2, 4))
    integer_groups = [{"params": [torch.ones(2, dtype=torch.int64)], "lr": 0.1}]
    assert not fused_adamw_supported(integer_groups)
