"""The training losses: noise-prediction MSE and CRAFTS' alignment terms (arXiv 2512.13164), as plain functions.

For a batch of B images with text features t_i, image latents z_i (flattened) and category text features c_i:

    M^T_ij = cos(t_i, t_j)    M^Z_ij = cos(z_i, z_j)    M^C_ij = cos(c_i, c_j)
    L_corr = (1/B²) Σ_ij (M^Z_ij − M^T_ij)²
    s_k = cos(c_k, t_k);  A_ij = s_i + s_j;  W_ij = sigmoid((A_ij − μ) / σ)
    L_cate = (1/B²) Σ_ij W_ij (M^Z_ij − M^C_ij)²

μ and σ are the mean and standard deviation of A_ij over the whole fine-tuning set (``pair_weight_stats``).

What we feed in (``train.py``): t_i and c_i are the text encoder's pooled output (CLIP's final-layer-normed
end-of-text token, ``CLIPTextModel(...).pooler_output``) for the caption and the category text; z_i is the
UNet's estimate of the clean VAE latents it denoises, ẑ₀ = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, flattened. Using the
estimate rather than the encoder's latents is what gives the terms a gradient into the UNet (the VAE is frozen);
with ``--train-text-encoder`` they also move the text features.

torch is imported by the caller; these functions only use tensor methods.
"""

from __future__ import annotations

from typing import Any

Tensor = Any  # torch.Tensor; kept loose so importing this module does not import torch


def cosine_matrix(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, D) or (B, …) features → (B, B) matrix of cosine similarities (rows flattened first)."""
    flat = x.reshape(x.shape[0], -1).float()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def corr_loss(text: Tensor, latents: Tensor) -> Tensor:
    """L_corr = mean over (i, j) of (cos(z_i, z_j) − cos(t_i, t_j))²."""
    return ((cosine_matrix(latents) - cosine_matrix(text)) ** 2).mean()


def caption_category_similarity(text: Tensor, category: Tensor, eps: float = 1e-8) -> Tensor:
    """s_k = cos(c_k, t_k) for each item of the batch (B,)."""
    t = text.reshape(text.shape[0], -1).float()
    c = category.reshape(category.shape[0], -1).float()
    return (t * c).sum(1) / (t.norm(dim=1) * c.norm(dim=1)).clamp_min(eps)


def pair_weights(s: Tensor, mu: float, sigma: float) -> Tensor:
    """W_ij = sigmoid((s_i + s_j − μ) / σ), (B, B)."""
    a = s[:, None] + s[None, :]
    return ((a - mu) / sigma).sigmoid()


def cate_loss(text: Tensor, latents: Tensor, category: Tensor, mu: float, sigma: float) -> Tensor:
    """L_cate = mean over (i, j) of W_ij (cos(z_i, z_j) − cos(c_i, c_j))²."""
    w = pair_weights(caption_category_similarity(text, category), mu, sigma)
    return (w * (cosine_matrix(latents) - cosine_matrix(category)) ** 2).mean()


def pair_weight_stats(s: Any, min_sigma: float = 1e-6) -> tuple[float, float]:
    """μ, σ of A_ij = s_i + s_j over all N² ordered pairs (i, j) of the fine-tuning set.

    ``s`` holds s_k = cos(c_k, t_k) of every item of the set. Over all ordered pairs, A's mean is 2·mean(s)
    and its variance 2·var(s) (population variance), so no N² matrix is built. σ is floored at ``min_sigma``
    (a set where every caption is equally close to its category would divide by zero).
    """
    import numpy as np

    v = np.asarray(s, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("No caption/category pairs to compute the L_cate weights from.")
    return float(2 * v.mean()), float(max(np.sqrt(2 * v.var()), min_sigma))


def predicted_clean_latents(noisy: Tensor, eps_pred: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """ẑ₀ = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t: the clean latents the UNet's noise prediction implies."""
    a = alphas_cumprod.to(noisy.device)[timesteps].float().reshape(-1, *([1] * (noisy.ndim - 1)))
    return (noisy.float() - (1 - a).sqrt() * eps_pred.float()) / a.sqrt()


def min_snr_weights(alphas_cumprod: Tensor, timesteps: Tensor, gamma: float) -> Tensor:
    """Per-sample weights min(SNR_t, γ) / SNR_t of the ε-prediction loss (Min-SNR-γ, Hang et al. 2023)."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error of the noise prediction, per sample weighted by ``weights`` (B,) when given."""
    per_sample = ((pred.float() - target.float()) ** 2).reshape(pred.shape[0], -1).mean(1)
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


def vae_loss(recon: Tensor, target: Tensor, kl: Tensor, kl_weight: float) -> tuple[Tensor, Tensor]:
    """AutoencoderKL training loss: (L1 reconstruction + kl_weight · KL, L1) on images in [−1, 1]."""
    rec = (recon.float() - target.float()).abs().mean()
    return rec + kl_weight * kl.mean(), rec
