"""Noise, targets and the loss: offset noise, epsilon or v-prediction targets, min-SNR-γ weighting and
the prior-preservation term.

loss = mean_instance(w · mse) + prior_loss_weight · mean_prior(w · mse), with w the min-SNR weight
(1 when off) and means taken over the instance rows and the class rows of the batch separately
(split_loss); without split_loss one mean over all rows, the class rows weighted by prior_loss_weight.
"""
from __future__ import annotations


def make_noise(latents, generator, offset_noise: float):
    import torch

    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if offset_noise:
        shape = (latents.shape[0], latents.shape[1], 1, 1)
        noise = noise + offset_noise * torch.randn(shape, generator=generator, device=latents.device,
                                                   dtype=latents.dtype)
    return noise


def target_for(noise_scheduler, latents, noise, timesteps):
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weights(noise_scheduler, timesteps, gamma: float):
    """min(SNR, γ) / SNR for epsilon targets, min(SNR, γ) / (SNR + 1) for v targets (Hang et al. 2023)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1.0 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def dreambooth_loss(prediction, target, prior, prior_weight: float, sample_weights=None, split: bool = True):
    """Returns (loss, instance part, prior part). Masks are applied as weights, so no host sync is needed;
    without class rows the prior part is 0."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights
    prior_rows = prior.to(per_sample.device, dtype=per_sample.dtype)
    instance_rows = 1.0 - prior_rows
    instance = (per_sample * instance_rows).sum() / instance_rows.sum().clamp(min=1.0)
    prior_part = (per_sample * prior_rows).sum() / prior_rows.sum().clamp(min=1.0)
    if not split:
        return (per_sample * (instance_rows + prior_weight * prior_rows)).mean(), instance, prior_part
    return instance + prior_weight * prior_part, instance, prior_part
