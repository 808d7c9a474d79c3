"""LoRA adapters of our own: a low-rank change `alpha / rank × up(down(x))` added to chosen layers' outputs.

Written here rather than taken from peft because peft's diffusers integration needs transformers ≥ 4.34,
and AUTOMATIC1111 1.10 pins 4.30.2. The adapters are attached with forward hooks, so the UNet and the
text encoder keep their own modules and state dicts (save_pretrained, previews and sampling see the
adapted model while hooks are on, and the plain one when they are off). The network's own state dict is
the kohya layout (convert/lora_kohya.py, names per model family from convert/lora_layout.py), so a LoRA
file, a snapshot and the in-memory adapter hold the same tensors under the same names.

Which layers (kohya's choice, which the WebUI and diffusers expect):
- UNet: every Linear and 1×1 Conv2d inside the attention blocks (Transformer2DModel: q/k/v/out, the
  feed-forward, proj_in/proj_out); "extended" adds the layers of the ResNet blocks and the up/down samplers
  (3×3 convolutions, the time-embedding projection, shortcuts);
- text encoder: every Linear in its attention and MLP blocks (SDXL: of each encoder chosen to train).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..convert.lora_kohya import TEXT_PREFIXES, kohya_name
from ..convert.lora_layout import LoraLayout, layout_for

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

    def __init__(self, layout: LoraLayout, unet_modules: list[str]):
        super().__init__()
        self.layout = layout
        self._unet_modules = unet_modules  # every UNet module name: to read older SDXL names (layout.current)
        self._layers: dict[str, nn.Module] = {}  # kohya name -> the adapted layer (not registered: not ours)
        self._hooks: list = []

    def add_layers(self, targets: dict[str, nn.Module], rank: int, alpha: float, dropout: float,
                   generator=None) -> None:
        """Adapters for `targets` ({kohya name: layer})."""
        for name, layer in targets.items():
            adapter = LoRAModule(layer, rank, alpha, dropout, generator)
            adapter.to(device=layer.weight.device)
            self[name] = adapter
            self._layers[name] = layer

    def names(self, *prefixes: str) -> list[str]:
        return [name for name in self.keys() if name.startswith(tuple(prefix + "_" for prefix in prefixes))]

    def text_names(self) -> list[str]:
        return self.names(*TEXT_PREFIXES)

    def parameters_of(self, *prefixes: str) -> list[nn.Parameter]:
        return [p for name in self.names(*prefixes) for p in self[name].parameters()]

    def current(self, layers: dict) -> dict:
        """A file's {layer name: parts} under the names this network uses (older SDXL names renamed)."""
        return self.layout.current(layers, self._unet_modules)

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
                  seed: int | None = None, text_prefixes: tuple[str, ...] | None = None) -> LoRANetwork:
    """Adapters for the UNet (and the text encoder when `text_encoder` is given: of SDXL's two, those whose
    prefix is in `text_prefixes`, default both), not yet attached; initialised from `seed` when given."""
    layout = layout_for(unet)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    network = LoRANetwork(layout, [name for name, _ in unet.named_modules()])
    network.add_layers({layout.unet_name(module): layer for module, layer in unet_targets(unet, extended).items()},
                       unet_rank, unet_alpha, dropout, generator)
    if text_encoder is not None:
        for prefix, encoder in layout.text_encoders(text_encoder).items():
            if text_prefixes is None or prefix in text_prefixes:
                targets = {kohya_name(prefix, module): layer for module, layer in text_targets(encoder).items()}
                network.add_layers(targets, text_rank, text_alpha, dropout, generator)
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
