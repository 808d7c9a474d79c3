"""Optional changes to a step's noisy input and target: input perturbation and DREAM."""
from __future__ import annotations

INPUT_PERTURBATION = 0.1  # diffusers' suggested --input_perturbation strength (Ning et al. 2023)


def perturbed_noise(noise, generator):
    """input_pertubation: the noise the latents get is the target noise plus 0.1 × fresh noise, so the model
    sees inputs a little off its own training distribution (less exposure bias); the target stays `noise`."""
    import torch

    extra = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + INPUT_PERTURBATION * extra


def dream_adjust(unet, noise_scheduler, noisy, target, noise, timesteps, embeddings, detail_preservation: float,
                 added: dict | None = None):
    """DREAM (Zhou et al. 2023, arXiv 2312.00210): one forward pass without gradients gives the model's own
    noise error δ = ε - ε̂; the input moves by sqrt(1 - ᾱ)·λ·δ and the target by the matching amount, with
    λ = sqrt(1 - ᾱ)^p (p = dream_detail_preservation). For v-prediction ε̂ = sqrt(ᾱ)·v̂ + sqrt(1 - ᾱ)·x_t and
    the v target moves by sqrt(ᾱ)·λ·δ. `added`: the UNet's extra keyword inputs (SDXL's size conditioning).
    Returns (noisy, target)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps].float()[:, None, None, None]
    sqrt_alpha, sqrt_one_minus = alphas.sqrt(), (1.0 - alphas).sqrt()
    with torch.no_grad():
        predicted = unet(noisy, timesteps, embeddings, **(added or {})).sample.float()
    if noise_scheduler.config.prediction_type == "v_prediction":
        predicted_noise = sqrt_alpha * predicted + sqrt_one_minus * noisy.float()
    else:
        predicted_noise = predicted
    delta = (noise.float() - predicted_noise) * sqrt_one_minus ** detail_preservation
    shift = sqrt_alpha if noise_scheduler.config.prediction_type == "v_prediction" else 1.0
    return (noisy + (sqrt_one_minus * delta).to(noisy.dtype)), target + (shift * delta).to(target.dtype)
