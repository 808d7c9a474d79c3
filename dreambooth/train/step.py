"""The gradients of one optimizer step: each micro-batch's conditioning, noise, target, prediction and weighted
Dreambooth loss, and their backward pass."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..model.text import encode_prompts
from .loss_tricks import dream_adjust, perturbed_noise
from .losses import dreambooth_loss, make_noise, min_snr_weights, target_for


@dataclass
class StepInputs:
    """Everything a training step reads; the trainer builds it once the models and data are ready."""
    training_set: object          # data.dataset.TrainingSet
    unet: object                  # as prepared by accelerate (it may wrap the module)
    text_encoder: object          # as prepared when it trains; the plain module otherwise
    frozen_text_encoder: object   # the plain module, for encodes without gradients
    noise_scheduler: object       # diffusers DDPMScheduler
    generator: object             # torch.Generator: noise and timesteps
    clip_skip: int
    offset_noise: float
    min_snr_gamma: float
    prior_loss_weight: float      # this step's (prior_schedule)
    split_loss: bool = True
    input_perturbation: bool = False
    dream: float | None = None    # DREAM's detail preservation, None when off


def step_inputs_from(cfg, training_set, unet, text_encoder, frozen_text_encoder, noise_scheduler,
                     generator) -> StepInputs:
    """The step's settings from the config; prior_loss_weight is set again at every step (prior_schedule)."""
    return StepInputs(
        training_set=training_set, unet=unet, text_encoder=text_encoder, frozen_text_encoder=frozen_text_encoder,
        noise_scheduler=noise_scheduler, generator=generator, clip_skip=cfg.clip_skip, offset_noise=cfg.offset_noise,
        min_snr_gamma=cfg.min_snr_gamma, prior_loss_weight=cfg.prior_loss_weight, split_loss=cfg.split_loss,
        input_perturbation=cfg.input_pertubation, dream=cfg.dream_detail_preservation if cfg.use_dream else None)


def conditioning(inputs: StepInputs, batch, text_encoder_training: bool):
    """(context, pooled or None): cached embeddings while the text encoder is frozen; a fresh
    (differentiable) encode while it trains."""
    import torch

    if text_encoder_training:
        return encode_prompts(inputs.text_encoder, batch.input_ids, inputs.clip_skip)
    if batch.embeddings is not None:
        return batch.embeddings, batch.pooled
    with torch.no_grad():
        return encode_prompts(inputs.frozen_text_encoder, batch.input_ids, inputs.clip_skip)


def micro_batch_loss(inputs: StepInputs, indices: list[int], text_encoder_training: bool):
    """(loss, instance part, prior part) for one micro-batch of item indices."""
    import torch

    scheduler, generator = inputs.noise_scheduler, inputs.generator
    batch = inputs.training_set.batch(indices, generator)
    latents = batch.latents
    embeddings, pooled = conditioning(inputs, batch, text_encoder_training)
    noise = make_noise(latents, generator, inputs.offset_noise)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, perturbed_noise(noise, generator) if inputs.input_perturbation else noise,
                                timesteps)
    target = target_for(scheduler, latents, noise, timesteps)
    added = {} if pooled is None else {  # SDXL: pooled text and each image's size/crop (sdxl_conditioning)
        "added_cond_kwargs": {"text_embeds": pooled, "time_ids": batch.time_ids.to(pooled.dtype)}}
    if inputs.dream is not None:
        noisy, target = dream_adjust(inputs.unet, scheduler, noisy, target, noise, timesteps, embeddings, inputs.dream,
                                     added)
    prediction = inputs.unet(noisy, timesteps, embeddings, **added).sample
    weights = min_snr_weights(scheduler, timesteps, inputs.min_snr_gamma) if inputs.min_snr_gamma > 0 else None
    return dreambooth_loss(prediction, target, batch.prior, inputs.prior_loss_weight, weights, inputs.split_loss)


def accumulate_gradients(accelerator, inputs: StepInputs, group: list[list[int]], text_encoder_training: bool):
    """Forward and backward over one optimizer step's micro-batches (gradient accumulation); returns the
    step's (loss, prior part, instance part), still on the device (reading them would wait for it)."""
    total_loss = total_prior = total_instance = 0.0
    for index, indices in enumerate(group):
        last = index == len(group) - 1
        # under data parallelism gradients are averaged across processes only at the group's last backward
        sync = accelerator.no_sync(inputs.unet) if not last and accelerator.num_processes > 1 \
            else contextlib.nullcontext()
        with sync:
            # Backward outside autocast (as torch advises): autocast keeps a low-precision copy of every
            # weight it casts until its region ends, 1.7 GB at SD1.5 if the region spanned the backward.
            with accelerator.autocast():
                loss, instance_part, prior_part = micro_batch_loss(inputs, indices, text_encoder_training)
                loss = loss / len(group)
            accelerator.backward(loss)
        total_loss = total_loss + loss.detach()
        total_prior = total_prior + prior_part.detach() / len(group)
        total_instance = total_instance + instance_part.detach() / len(group)
    return total_loss, total_prior, total_instance
