"""LoRA adapters of our own: a low-rank change `alpha / rank × up(down(x))` added to chosen layers' outputs.

Written here rather than taken from peft because peft's diffusers integration needs transformers ≥ 4.34,
and AUTOMATIC1111 1.10 pins 4.30.2. The adapters are attached with forward hooks, so the UNet and the
text encoder keep their own modules and state dicts (save_pretrained, previews and sampling see the
adapted model while hooks are on, and the plain one when they are off). The network's own state dict is
the kohya layout (convert/lora_kohya.py), so a LoRA file, a snapshot and the in-memory adapter hold the
same tensors under the same names.

Which layers (kohya's choice, which the WebUI and diffusers expect):
- UNet: every Linear and 1×1 Conv2d inside the attention blocks (Transformer2DModel: q/k/v/out, the
  feed-forward, proj_in/proj_out); "extended" adds the layers of the ResNet blocks and the up/down samplers
  (3×3 convolutions, the time-embedding projection, shortcuts);
- text encoder: every Linear in its attention and MLP blocks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..convert.lora_kohya import TEXT_PREFIX, UNET_PREFIX, kohya_name

UNET_ATTENTION_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_BLOCK_NAMES = (".self_attn.", ".mlp.")  # CLIP's attention and MLP, whatever class transformers uses


class LoRAModule(nn.Module):
    """The adapter of one Linear or Conv2d layer. `lora_down` copies the layer's kernel, stride and padding;
    `lora_up` starts at zero, so a fresh adapter changes nothing."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0, generator=None):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            self.lora_down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                       layer.dilation, bias=False)
            self.lora_up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            self.lora_down = nn.Linear(layer.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, layer.out_features, bias=False)
        # torch's default for Linear (kaiming_uniform_ with a=sqrt(5): bound 1/sqrt(fan_in)), drawn from
        # `generator` so that a seeded run starts from the same adapters
        fan_in = self.lora_down.weight[0].numel()
        with torch.no_grad():
            self.lora_down.weight.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.rank = rank
        self.dropout = dropout

    def forward(self, x):
        if self.dropout and self.training and torch.is_grad_enabled():  # never in previews
            x = nn.functional.dropout(x, self.dropout)
        return self.lora_up(self.lora_down(x)) * (self.alpha / self.rank)  # a tensor: no device sync


def _is_adaptable(layer: nn.Module, with_3x3: bool) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return layer.kernel_size == (1, 1) or with_3x3
    return False


def unet_targets(unet: nn.Module, extended: bool) -> dict[str, nn.Module]:
    """{module name: layer} of the UNet layers to adapt."""
    blocks = UNET_ATTENTION_BLOCKS + (UNET_CONV_BLOCKS if extended else ())
    found = {}
    for block_name, block in unet.named_modules():
        kind = type(block).__name__
        if kind not in blocks:
            continue
        for name, layer in block.named_modules():
            if name and _is_adaptable(layer, with_3x3=kind in UNET_CONV_BLOCKS):
                found[f"{block_name}.{name}"] = layer
    return found


def text_targets(text_encoder: nn.Module) -> dict[str, nn.Module]:
    """{module name: layer} of the text encoder's attention and MLP Linear layers, named `text_model.…` as in
    transformers 4 and the WebUI (transformers 5 drops the `text_model` wrapper)."""
    return {name if name.startswith("text_model.") else f"text_model.{name}": layer
            for name, layer in text_encoder.named_modules()
            if isinstance(layer, nn.Linear) and any(part in f".{name}." for part in TEXT_BLOCK_NAMES)}


class LoRANetwork(nn.ModuleDict):
    """Adapters keyed by their kohya names; `state_dict()` is a kohya LoRA file's content."""

    def __init__(self):
        super().__init__()
        self._layers: dict[str, nn.Module] = {}  # kohya name -> the adapted layer (not registered: not ours)
        self._hooks: list = []

    def add_layers(self, prefix: str, targets: dict[str, nn.Module], rank: int, alpha: float,
                   dropout: float, generator=None) -> None:
        for module_name, layer in targets.items():
            name = kohya_name(prefix, module_name)
            adapter = LoRAModule(layer, rank, alpha, dropout, generator)
            adapter.to(device=layer.weight.device)
            self[name] = adapter
            self._layers[name] = layer

    def names(self, prefix: str) -> list[str]:
        return [name for name in self.keys() if name.startswith(prefix + "_")]

    def parameters_of(self, prefix: str) -> list[nn.Parameter]:
        return [p for name in self.names(prefix) for p in self[name].parameters()]

    def attach(self) -> None:
        """Hooks on: every adapted layer's output gets its adapter's change."""
        if self._hooks:
            return
        for name, layer in self._layers.items():
            adapter = self[name]
            self._hooks.append(layer.register_forward_hook(
                lambda _layer, args, output, adapter=adapter:
                output + adapter(args[0].to(adapter.lora_down.weight.dtype)).to(output.dtype)))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def build_network(unet: nn.Module, text_encoder: nn.Module | None, *, unet_rank: int, unet_alpha: float,
                  extended: bool, text_rank: int = 0, text_alpha: float = 0.0, dropout: float = 0.0,
                  seed: int | None = None) -> LoRANetwork:
    """Adapters for the UNet (and the text encoder when `text_encoder` is given), not yet attached;
    initialised from `seed` when given."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    network = LoRANetwork()
    network.add_layers(UNET_PREFIX, unet_targets(unet, extended), unet_rank, unet_alpha, dropout, generator)
    if text_encoder is not None:
        network.add_layers(TEXT_PREFIX, text_targets(text_encoder), text_rank, text_alpha, dropout, generator)
    return network


class AdaptedUNet(nn.Module):
    """The UNet and its adapters as one module for accelerate: under data-parallel training the gradients
    that must be averaged are the adapters', and the frozen UNet has none."""

    def __init__(self, unet: nn.Module, network: LoRANetwork):
        super().__init__()
        self.unet = unet
        self.network = network

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)
