"""The benchmark's textbook reference loop, written the way diffusers' `examples/dreambooth/train_dreambooth.py`
does it: a Dataset that opens, resizes, crops and normalises each image and tokenizes its prompt on every
`__getitem__`, a DataLoader, the frozen VAE and text encoder run on every step, fp32, and
`torch.optim.AdamW(params, lr, betas, weight_decay, eps)` exactly as that script constructs it (no fused or
foreach flag), gradient clipping and `zero_grad(set_to_none=False)`, `loss.detach().item()` logged every step.

It is honest, not slowed down: no caches is the point being measured, nothing else is added. (torchvision's
transforms are replaced by their PIL/numpy equivalents so the benchmark needs no extra package; the work is
the same: bilinear resize of the short side, centre crop, to-tensor, normalise to [-1, 1].)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


class DreamBoothDataset:
    """Instance images + one prompt; image loading and tokenizing happen per item, as in the example script."""

    def __init__(self, paths: list[Path], prompt: str, tokenizer, size: int):
        self.paths = list(paths)
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def _transform(self, image):
        import numpy as np
        import torch
        from PIL import Image

        width, height = image.size  # transforms.Resize(size, BILINEAR) + CenterCrop(size)
        scale = self.size / min(width, height)
        image = image.resize((max(self.size, round(width * scale)), max(self.size, round(height * scale))),
                             Image.BILINEAR)
        left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(image, dtype=np.float32) / 255.0  # ToTensor
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        return (tensor - 0.5) / 0.5  # Normalize([0.5], [0.5])

    def __getitem__(self, index: int) -> dict:
        from PIL import Image
        from PIL.ImageOps import exif_transpose

        image = exif_transpose(Image.open(self.paths[index % len(self.paths)]))
        if image.mode != "RGB":
            image = image.convert("RGB")
        tokens = self.tokenizer(self.prompt, truncation=True, padding="max_length",
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return {"instance_images": self._transform(image), "instance_prompt_ids": tokens.input_ids,
                "instance_attention_mask": tokens.attention_mask}


def collate_fn(examples: list[dict]) -> dict:
    import torch

    pixel_values = torch.stack([e["instance_images"] for e in examples])
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    return {"pixel_values": pixel_values,
            "input_ids": torch.cat([e["instance_prompt_ids"] for e in examples], dim=0),
            "attention_mask": torch.cat([e["instance_attention_mask"] for e in examples], dim=0)}


def run_reference(components: dict, tokenizer, image_paths: list[Path], prompt: str, *, steps: int, batch: int,
                  lr: float, resolution: int, seed: int, on_step: Callable[[int], None],
                  gradient_checkpointing: bool = False, low_memory: bool = False) -> float:
    """Train `steps` optimizer steps; calls `on_step(step)` after each one. Returns the last loss."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    torch.manual_seed(seed)
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    noise_scheduler = DDPMScheduler.from_config(components["scheduler_config"])
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # `low_memory`: the script's own memory flags: --gradient_checkpointing, --set_grads_to_none and
    # --use_8bit_adam (bitsandbytes' AdamW8bit, where it runs; else the same AdamW as the trainer)
    optimizer_class = torch.optim.AdamW
    if low_memory:
        gradient_checkpointing = True
        optimizer_class = adam8bit_class() or torch.optim.AdamW
    optimizer = optimizer_class(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    dataset = DreamBoothDataset(image_paths, prompt, tokenizer, resolution)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate_fn,
                                         num_workers=0)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    vae.to(accelerator.device)
    text_encoder.to(accelerator.device)

    step, loss_value = 0, float("nan")
    while step < steps:
        for batch_data in loader:
            with accelerator.accumulate(unet):
                pixel_values = batch_data["pixel_values"].to(dtype=vae.dtype)
                model_input = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn_like(model_input)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (model_input.shape[0],),
                                          device=model_input.device).long()
                noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
                encoder_hidden_states = text_encoder(batch_data["input_ids"].to(text_encoder.device),
                                                     attention_mask=None, return_dict=False)[0]
                model_pred = unet(noisy_model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(model_input, noise, timesteps)
                else:
                    target = noise
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=low_memory)
            if accelerator.sync_gradients:
                step += 1
                loss_value = loss.detach().item()  # the script logs it every step
                on_step(step)
            if step >= steps:
                break
    return loss_value


def adam8bit_class():
    """bitsandbytes' AdamW8bit when it imports and steps on this device, else None."""
    try:
        import bitsandbytes as bnb
        import torch

        probe = torch.nn.Parameter(torch.zeros(4, 4, device="cuda" if torch.cuda.is_available() else "cpu"))
        optimizer = bnb.optim.AdamW8bit([probe], lr=1e-3)
        probe.grad = torch.ones_like(probe)
        optimizer.step()
        return bnb.optim.AdamW8bit
    except Exception:  # noqa: BLE001 - not installed, or built without support for this device
        return None


def now() -> float:
    return time.perf_counter()
