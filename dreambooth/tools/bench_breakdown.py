"""`bench --breakdown`: where the textbook loop's step time goes, and so the most caching can win.

The reference loop pays, every step, for what the trainer does once before training: reading and
resizing the image, the VAE encode and the text encode. The UNet's forward, backward and optimizer step
are the same work in both. So a trainer whose UNet step costs what the reference's does can be at most

    caching_ceiling = (data + VAE encode + text encode + UNet step) / UNet step

times faster. This module times each part separately with the reference's own pieces (its Dataset, its
encodes, its AdamW and clipping), then profiles one UNet step to show how much of it is attention.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable


def _timed(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of `repeats` calls after one untimed warm-up call."""
    run()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def attention_share(step: Callable[[], None]) -> float:
    """The fraction of one step's operator time (CPU self time; CUDA kernel time on a GPU) spent in
    scaled-dot-product attention, forward and backward."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()

    def own_time(event) -> float:
        if cuda:
            return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))
        return event.self_cpu_time_total

    total = sum(own_time(e) for e in events)
    attention = sum(own_time(e) for e in events if "scaled_dot_product" in e.key or "attention" in e.key.lower())
    return attention / total if total else 0.0


def measure_breakdown(components: dict, tokenizer, image_paths: list[Path], prompt: str, *, batch: int, lr: float,
                      resolution: int, gradient_checkpointing: bool, repeats: int = 3) -> dict:
    """Seconds per step of each part of the reference's step, the caching ceiling and the attention share."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from .bench_reference import DreamBoothDataset, collate_fn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    unet, vae, text_encoder = (components[key].to(device) for key in ("unet", "vae", "text_encoder"))
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    scheduler = DDPMScheduler.from_config(components["scheduler_config"])
    dataset = DreamBoothDataset(image_paths, prompt, tokenizer, resolution)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    def load_batch():
        return collate_fn([dataset[i] for i in range(batch)])

    data = load_batch()
    pixels, ids = data["pixel_values"].to(device), data["input_ids"].to(device)
    with torch.no_grad():
        def encode_image():
            return vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor

        def encode_text():
            return text_encoder(ids, attention_mask=None, return_dict=False)[0]

        timings = {"data_s": _timed(load_batch, repeats, sync), "vae_encode_s": _timed(encode_image, repeats, sync),
                   "text_encode_s": _timed(encode_text, repeats, sync)}
        latents, context = encode_image(), encode_text()

    def unet_step():
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, context, return_dict=False)[0]
        F.mse_loss(prediction.float(), noise.float()).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    timings["unet_step_s"] = _timed(unet_step, repeats, sync)
    timings["attention_share"] = attention_share(unet_step)
    reference_step = sum(timings[key] for key in ("data_s", "vae_encode_s", "text_encode_s", "unet_step_s"))
    timings["caching_ceiling"] = reference_step / timings["unet_step_s"]
    timings["repeats"] = repeats
    return timings


def describe(breakdown: dict) -> list[str]:
    """The lines the benchmark prints."""
    b = breakdown
    return [f"the reference's step, part by part (median of {b['repeats']}): data {b['data_s'] * 1000:.0f} ms, "
            f"VAE encode {b['vae_encode_s'] * 1000:.0f} ms, text encode {b['text_encode_s'] * 1000:.0f} ms, "
            f"UNet forward+backward+AdamW {b['unet_step_s'] * 1000:.0f} ms "
            f"({b['attention_share'] * 100:.0f}% of it attention)",
            f"caching_ceiling {b['caching_ceiling']:.2f}x: the most a trainer that caches the encodes can gain while "
            "its UNet step costs what the reference's does"]
