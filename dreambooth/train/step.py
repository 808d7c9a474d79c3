"""The loss of one micro-batch: conditioning, noise, target, prediction and the weighted Dreambooth loss."""
from __future__ import annotations

from .losses import dreambooth_loss, make_noise, min_snr_weights, target_for
from .text import encode_text


def conditioning(trainer, batch):
    """Cached embeddings while the text encoder is frozen; a fresh (differentiable) encode while it trains."""
    import torch

    clip_skip = trainer.cfg.clip_skip
    if trainer.text_encoder_training:
        return encode_text(trainer.text_encoder, batch.input_ids, clip_skip)
    if batch.embeddings is not None:
        return batch.embeddings
    with torch.no_grad():
        return encode_text(trainer.models.text_encoder, batch.input_ids, clip_skip)


def micro_batch_loss(trainer, indices: list[int]):
    """(loss, instance part, prior part) for one micro-batch of item indices."""
    import torch

    cfg, scheduler, generator = trainer.cfg, trainer.noise_scheduler, trainer.generator
    batch = trainer.training_set.batch(indices, generator)
    latents = batch.latents
    embeddings = conditioning(trainer, batch)
    noise = make_noise(latents, generator, cfg.offset_noise)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = target_for(scheduler, latents, noise, timesteps)
    prediction = trainer.unet(noisy, timesteps, embeddings).sample
    weights = min_snr_weights(scheduler, timesteps, cfg.min_snr_gamma) if cfg.min_snr_gamma > 0 else None
    return dreambooth_loss(prediction, target, batch.prior, cfg.prior_loss_weight, weights)
