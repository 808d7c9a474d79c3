"""A LoRA training run: what the trainer does differently when `use_lora` is on.

The UNet and text encoder stay frozen (and, under mixed precision, are held in the compute dtype); only
the adapters train, the UNet's at lora_learning_rate and the text encoder's (while stop_text_encoder says
it trains) at lora_txt_learning_rate. The adapters are attached after the class images are generated, so
class images come from the base model and previews from the adapted one. A save writes the LoRA file
(kohya layout) instead of a checkpoint and leaves working/ (the base) as it is; a snapshot holds only the
adapters and their optimizer state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import TrainConfig
from ..convert.lora_kohya import TEXT_PREFIXES, UNET_PREFIX, file_hashes, read_lora_file, split_layers, \
    text_prefix_of, training_metadata, write_lora_file
from ..convert.lora_layout import is_conv_layer, layout_for
from ..errors import DreamboothError
from ..store import ModelDir
from .lora import LoRANetwork, build_network

SNAPSHOT_NAME = "lora"  # snapshots/snapshot-<step>/lora.safetensors


def alpha_or_rank(alpha: float, rank: int) -> float:
    return alpha if alpha > 0 else float(rank)


@dataclass
class LoraRun:
    network: LoRANetwork
    cfg: TrainConfig
    text_trained: tuple[str, ...]  # prefixes of the text-encoder adapters that train (none: empty)
    log: Callable[[str], None]
    _hashes: dict | None = field(default=None, repr=False)

    def param_groups(self, learning_rates: list[float]) -> list[dict]:
        groups = [{"params": self.network.parameters_of(UNET_PREFIX), "lr": learning_rates[0]}]
        if self.text_trained:
            groups.append({"params": self.network.parameters_of(*self.text_trained), "lr": learning_rates[1]})
        return groups

    def trained_parameters(self, text_training: bool) -> tuple[list, list]:
        """(UNet adapter, text-encoder adapter) parameters being trained."""
        return (self.network.parameters_of(UNET_PREFIX),
                self.network.parameters_of(*self.text_trained) if text_training else [])

    def stop_text_training(self, prefixes: tuple[str, ...] = TEXT_PREFIXES) -> None:
        for param in self.network.parameters_of(*prefixes):
            param.requires_grad_(False)
            param.grad = None

    def metadata(self, model: ModelDir, revision: int) -> dict:
        from .. import __version__

        cfg = self.cfg
        if self._hashes is None:  # hashing a 2-7 GB base once per run, not at every save
            self._hashes = file_hashes(Path(cfg.src)) if cfg.src else {}
        has_text = bool(self.network.text_names())
        return training_metadata(
            base_model=Path(cfg.src).name if cfg.src else model.name, base_hashes=self._hashes,
            model_type="SDXL" if self.network.layout.sdxl else cfg.model_type, unet_rank=cfg.lora_unet_rank,
            unet_alpha=alpha_or_rank(cfg.lora_unet_alpha, cfg.lora_unet_rank),
            text_rank=cfg.lora_txt_rank if has_text else None,
            text_alpha=alpha_or_rank(cfg.lora_txt_alpha, cfg.lora_txt_rank) if has_text else None,
            conv=cfg.use_lora_extended, steps=revision, resolution=cfg.resolution, unet_lr=cfg.lora_learning_rate,
            text_lr=cfg.lora_txt_learning_rate if has_text else None, version=__version__, model_name=model.name)


def start_lora(model: ModelDir, cfg: TrainConfig, models, train_text: bool, mixed_precision: str, training_set,
               log: Callable[[str], None]) -> LoraRun:
    """Freeze the base, build the adapters (from lora_model_name when set), attach them."""
    from ..model.lora_files import resolve_lora_file
    from .setup import compute_dtype

    unet, text_encoder = models.unet, models.text_encoder
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    layout = layout_for(unet)
    trained = layout.trained_text_prefixes(text_encoder) if train_text else ()
    start, source, in_file = None, None, set()
    if cfg.lora_model_name.strip():
        source = resolve_lora_file(cfg.lora_model_name, model)
        start = read_lora_file(source)[0]
        modules = [name for name, _ in unet.named_modules()]
        in_file = {text_prefix_of(name) for name in layout.current(split_layers(start), modules)} - {None}
    # a file's text-encoder adapters are used even where that encoder does not train
    adapted = tuple(p for p in layout.text_prefixes.values() if p in trained or p in in_file)
    network = build_network(
        unet, text_encoder if adapted else None, unet_rank=cfg.lora_unet_rank,
        unet_alpha=alpha_or_rank(cfg.lora_unet_alpha, cfg.lora_unet_rank), extended=cfg.use_lora_extended,
        text_rank=cfg.lora_txt_rank, text_alpha=alpha_or_rank(cfg.lora_txt_alpha, cfg.lora_txt_rank),
        dropout=cfg.lora_dropout, seed=cfg.seed if cfg.seed >= 0 else None, text_prefixes=adapted)
    if start is not None:
        fresh = load_into(network, start, source.name)
        log(f"LoRA: continuing from {source}" + (f" ({fresh} layer(s) not in it start fresh)" if fresh else ""))
    dtype = compute_dtype(mixed_precision)
    if dtype is not compute_dtype("no"):  # frozen: no fp32 master copy needed; the adapters stay fp32
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    network.attach()
    run = LoraRun(network, cfg, trained, log)
    run.stop_text_training(tuple(p for p in adapted if p not in trained))
    if adapted and not trained and training_set.embeddings is not None:  # cached from the base: encode again
        training_set.cache_text(text_encoder, cfg.clip_skip)
    count = sum(p.numel() for p in network.parameters() if p.requires_grad)
    texts = ", ".join(f"{len(network.names(p))} {p}" for p in adapted)
    log(f"LoRA: rank {cfg.lora_unet_rank} on {len(network.names(UNET_PREFIX))} UNet layers"
        + (" (with the ResNet convolutions)" if cfg.use_lora_extended else "")
        + (f", rank {cfg.lora_txt_rank} on text-encoder layers ({texts})" if adapted else "")
        + f": {count / 1e6:.2f}M trained parameters; the base model stays unchanged")
    if cfg.use_ema:
        log("use_ema is ignored with use_lora: the adapters are small and their EMA is not kept")
    return run


def load_into(network: LoRANetwork, tensors: dict, source: str) -> int:
    """Copy a kohya state dict into the adapters; returns how many layers were not in it (they stay fresh).
    A layer the network lacks or a different shape (rank) is an error naming the setting to change."""
    layers = network.current(split_layers(tensors))
    extra = [name for name in layers if name not in network]
    if extra:
        conv = any(is_conv_layer(n) for n in extra)
        hint = "turn on use_lora_extended (it was trained with the conv layers)" if conv else \
            "it was trained on another model or with other layers"
        raise DreamboothError(f"LoRA file {source} has {len(extra)} layer(s) this model's adapters lack, e.g. "
                              f"{extra[0]}: {hint}", field="lora_model_name")
    own = network.state_dict()
    for name, parts in layers.items():
        for part, key in (("down", "lora_down.weight"), ("up", "lora_up.weight"), ("alpha", "alpha")):
            if part not in parts:
                continue
            target = own[f"{name}.{key}"]
            if target.shape != parts[part].shape:
                field = "lora_txt_rank" if text_prefix_of(name) else "lora_unet_rank"
                raise DreamboothError(f"LoRA file {source}: {name}.{key} has shape {tuple(parts[part].shape)}, the "
                                      f"adapter {tuple(target.shape)}: set {field} to the file's rank "
                                      f"({parts['down'].shape[0]})", field=field)
            target.copy_(parts[part])
    return len(network) - len(layers)


def save_lora_state(state, want_file: bool, want_snapshot: bool) -> tuple[Path | None, Path | None]:
    """The LoRA run's save: db_config.json, the LoRA file, the snapshot (adapters + optimizer only)."""
    from ..model.lora_files import output_path
    from .snapshot import save_snapshot

    run, model, cfg = state.lora, state.model, state.cfg
    state.save_config()
    written = snapshot = None
    if want_file:
        written = write_lora_file(output_path(model, cfg, state.revision), run.network.state_dict(),
                                  run.metadata(model, state.revision),
                                  half=cfg.half_model if state.half is None else state.half)
        state.log(f"saved LoRA {written}")
    if want_snapshot:
        snapshot = save_snapshot(model.snapshots, state.revision, {SNAPSHOT_NAME: run.network}, state.optimizer,
                                 state.lr_scheduler, state.generator, state.resume_state, cfg.snapshots_to_keep,
                                 older_folders=(model.older_snapshots,))
        state.log(f"saved resume snapshot {snapshot.name} (LoRA adapters)")
    return written, snapshot


def restore_adapters(network: LoRANetwork | None, weights: dict, snapshot_name: str) -> bool:
    """Load a snapshot's adapters; True when this is a LoRA snapshot. A snapshot of the other kind (full
    fine-tune vs LoRA) is an error naming use_lora."""
    is_lora = SNAPSHOT_NAME in weights
    if (network is not None) != is_lora:
        kind = "a LoRA run" if is_lora else "a full fine-tune"
        raise DreamboothError(f"snapshot {snapshot_name} was written by {kind}: set use_lora "
                              f"{'on' if is_lora else 'off'}, or train without --resume", field="use_lora")
    if network is not None:
        try:
            network.load_state_dict(weights[SNAPSHOT_NAME])
        except RuntimeError as error:
            raise DreamboothError(f"snapshot {snapshot_name} holds other LoRA layers or ranks ({str(error)[:200]}): "
                                  "use the LoRA settings it was trained with, or train without --resume",
                                  field="lora_unet_rank") from None
    return is_lora
