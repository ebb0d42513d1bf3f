"""One training stage in memory: the networks (``Parts``), which of them train, and the loss of a micro-batch.

Every random number of a micro-batch comes from generators seeded by (seed, step, micro-batch) and its tiles
from ``data.batch_indices``: the loss of step k is a function of the weights and k alone, which is what makes
a resumed run continue exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..model.card import MODEL_CARD_FILE
from . import losses
from .data import PairsSplit, TileArrays, batch_indices, dihedral
from .parts import Parts
from .settings import TrainingError, TrainSettings


def load_parts(path: str | Path, *, allow_pickle: bool = False) -> Parts:
    """Every component of a diffusers folder (fp32, for training); refuses what is not a complete base."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..model.engine import ModelLoadError, resolve_model

    try:
        folder = resolve_model(path, allow_pickle=allow_pickle)
    except ModelLoadError as exc:
        raise TrainingError(f"Base model: {exc}") from None
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / c).is_dir()]
    if missing:
        raise TrainingError(f"Base model {folder} has no {', '.join(missing)}/: give a complete SD1.5-style "
                            "diffusers folder (or --config small to start from scratch).")
    kw: dict[str, Any] = dict(torch_dtype=torch.float32, use_safetensors=None if allow_pickle else True)
    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"Could not load the base model from {folder}: {exc}") from None
    card = json.loads((folder / MODEL_CARD_FILE).read_text()) if (folder / MODEL_CARD_FILE).is_file() else {}
    controlnets = {}
    for mode, sub in dict(card.get("controlnets", {})).items():
        if (folder / sub).is_dir():
            controlnets[mode] = ControlNetModel.from_pretrained(folder / sub, **kw)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return Parts(vae, unet, text_encoder, tokenizer, scheduler, controlnets, card)


def size_multiple(parts: Parts) -> int:
    """Tile sides must be multiples of this: VAE factor × 2^(UNet blocks − 1), as ``Engine.size_multiple``."""
    return 2 ** (len(parts.vae.config.block_out_channels) - 1) * 2 ** (len(parts.unet.config.block_out_channels) - 1)


def default_embedding(vae_factor: int) -> tuple[int, ...]:
    """ControlNet conditioning channels that downsample by ``vae_factor`` (SD1.5's (16, 32, 96, 256) at 8×)."""
    n = int(math.log2(vae_factor)) + 1
    return (16, 32, 96, 256)[:n] if n <= 4 else (16, 32, 96, 256) + (256,) * (n - 4)


class Stage:
    """What differs between stages: trainable modules, the data each step needs, the loss."""

    def __init__(self, parts: Parts, settings: TrainSettings, train: TileArrays, modes: list[str],
                 device: Any, split: PairsSplit) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.torch = torch
        self.p, self.s, self.data, self.modes, self.device = parts, settings, train, modes, device
        self.split = split
        s = settings
        parts.vae.requires_grad_(s.stage == "vae")
        parts.text_encoder.requires_grad_(s.train_text_encoder)
        parts.unet.requires_grad_(s.stage in ("unet", "joint", "base"))
        for net in parts.controlnets.values():
            net.requires_grad_(s.stage in ("controlnet", "joint"))
        self.modules: dict[str, Any] = {}
        if s.stage == "vae":
            self.modules["vae"] = parts.vae
        if s.stage in ("unet", "joint", "base"):
            self.modules["unet"] = parts.unet
        if s.train_text_encoder:
            self.modules["text_encoder"] = parts.text_encoder
        if s.stage in ("controlnet", "joint"):
            for mode in modes:
                self.modules[f"controlnet_{mode}"] = parts.controlnets[mode]
        for name, module in self.modules.items():
            module.train()
            if s.gradient_checkpointing and hasattr(module, "enable_gradient_checkpointing"):
                module.enable_gradient_checkpointing()
            elif s.gradient_checkpointing and name == "text_encoder":
                module.gradient_checkpointing_enable()
        for module in (parts.vae, parts.unet, parts.text_encoder, *parts.controlnets.values()):
            module.to(device)
            if module not in self.modules.values():
                module.eval()
        self.noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
        self.alphas = self.noise_scheduler.alphas_cumprod
        self._text_cache: dict[str, tuple[Any, Any]] = {}
        self.latent_mean: Any = None  # (N, views, C, h, w) once the latents are cached
        self.latent_std: Any = None
        if s.stage != "vae":
            self._cache_latents()
        self.mu_sigma = self._category_stats() if s.cate_weight else (0.0, 1.0)

    def state_tensors(self) -> dict[str, Any]:
        """Tensors a checkpoint keeps beside the trainable weights (a stage's own state: distill's target)."""
        return {}

    def after_step(self) -> None:
        """What a stage does after each optimizer step (distill: the target follows the student)."""

    # parameters, by stable names (for checkpoints)
    def named_params(self) -> dict[str, Any]:
        return {f"{m}.{n}": p for m, module in self.modules.items() for n, p in module.named_parameters()
                if p.requires_grad}

    # -- data -------------------------------------------------------------------------------------------------
    def _views(self) -> int:
        return 8 if self.s.augment else 1

    def _cache_latents(self) -> None:
        """Posterior mean/std of every train tile under each of its 8 rotations/flips (the VAE is frozen)."""
        torch = self.torch
        vae, he = self.p.vae, self.data.he
        means, stds = [], []
        with torch.no_grad():
            for k in range(self._views()):
                views = dihedral(he, k)
                m_k, s_k = [], []
                for i in range(0, len(views), 32):
                    x = to_tensor(views[i: i + 32], self.device) * 2 - 1
                    dist = vae.encode(x).latent_dist
                    m_k.append(dist.mean.float().cpu())
                    s_k.append(dist.std.float().cpu())
                means.append(torch.cat(m_k))
                stds.append(torch.cat(s_k))
        self.latent_mean = torch.stack(means, 1)  # (N, views, C, h, w)
        self.latent_std = torch.stack(stds, 1)

    def _encode_text(self, texts: list[str], grad: bool = False) -> tuple[Any, Any]:
        """(last hidden states (B, 77, D), pooled (B, D)) of ``texts``; cached while the encoder is frozen."""
        torch = self.torch
        if grad:
            tok = self.p.tokenizer(texts, padding="max_length", max_length=self.p.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt")
            out = self.p.text_encoder(tok.input_ids.to(self.device))
            return out.last_hidden_state, out.pooler_output
        for text in set(texts) - set(self._text_cache):
            tok = self.p.tokenizer([text], padding="max_length", max_length=self.p.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt")
            with torch.no_grad():
                out = self.p.text_encoder(tok.input_ids.to(self.device))
            self._text_cache[text] = (out.last_hidden_state[0], out.pooler_output[0])
        return (torch.stack([self._text_cache[t][0] for t in texts]),
                torch.stack([self._text_cache[t][1] for t in texts]))

    def captions(self, idx: np.ndarray) -> list[str]:
        return [self.s.caption if self.s.caption is not None else self.data.captions[i] for i in idx]

    def _category_stats(self) -> tuple[float, float]:
        """μ, σ of A_ij over the whole fine-tuning set (pairs of tiles that have a category)."""
        have = [i for i, c in enumerate(self.data.categories) if c]
        if len(have) < 2:
            raise TrainingError("--cate-weight needs categories: the dataset's metadata (or --captions manifest) "
                                "gives fewer than 2 tiles a category.")
        _, t = self._encode_text(self.captions(np.asarray(have)))
        _, c = self._encode_text([str(self.data.categories[i]) for i in have])
        s = losses.caption_category_similarity(t, c)
        return losses.pair_weight_stats(s.cpu().numpy())

    # -- one micro-batch ------------------------------------------------------------------------------------
    def loss(self, step: int, micro: int, autocast: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        s, torch = self.s, self.torch
        gen = torch.Generator().manual_seed(_step_seed(s.seed, step, micro))
        rng = np.random.default_rng([s.seed, step, micro])
        idx = batch_indices(len(self.data), s.batch_size, step * s.grad_accum + micro, s.seed)
        views = rng.integers(0, self._views(), size=len(idx))
        with autocast():
            if s.stage == "vae":
                return self._vae_loss(idx, views, rng, gen)
            return self._diffusion_loss(idx, views, gen)

    def _vae_loss(self, idx: np.ndarray, views: np.ndarray, rng: Any, gen: Any) -> tuple[Any, dict[str, float]]:
        he = np.stack([dihedral(self.data.he[i], int(k)) for i, k in zip(idx, views, strict=True)])
        crop = self.s.vae_crop
        if crop and crop < he.shape[1]:
            ys, xs = rng.integers(0, he.shape[1] - crop + 1, size=(2, len(idx)))
            he = np.stack([im[y: y + crop, x: x + crop] for im, y, x in zip(he, ys, xs, strict=True)])
        x = to_tensor(he, self.device) * 2 - 1
        dist = self.p.vae.encode(x).latent_dist
        z = dist.mean + dist.std * self.torch.randn(dist.mean.shape, generator=gen).to(self.device)
        recon = self.p.vae.decode(z).sample
        total, l1 = losses.vae_loss(recon, x, dist.kl(), self.s.kl_weight)
        return total, {"l1": l1.item(), "kl": dist.kl().mean().item()}

    def _diffusion_loss(self, idx: np.ndarray, views: np.ndarray, gen: Any) -> tuple[Any, dict[str, float]]:
        torch, s, p = self.torch, self.s, self.p
        b = len(idx)
        sel = torch.as_tensor(idx), torch.as_tensor(views)
        eps0 = torch.randn(self.latent_mean[sel].shape, generator=gen)
        latents = ((self.latent_mean[sel] + self.latent_std[sel] * eps0) * p.vae.config.scaling_factor).to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=gen).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        drop = (torch.rand(b, generator=gen) < s.prompt_dropout).tolist()
        texts = ["" if d else c for d, c in zip(drop, self.captions(idx), strict=True)]
        embeds, pooled = self._encode_text(texts, grad=s.train_text_encoder)
        down = mid = None
        if s.stage in ("controlnet", "joint") and self.modes:
            down, mid = self._control_residuals(idx, views, noisy, t, embeds, gen)
        pred = p.unet(noisy, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        weights = losses.min_snr_weights(self.alphas, t.cpu(), s.snr_gamma).to(self.device) if s.snr_gamma else None
        mse = losses.diffusion_loss(pred, target, weights)
        total, parts = mse, {"mse": mse.item()}
        if s.corr_weight or s.cate_weight:
            z0 = losses.predicted_clean_latents(noisy, pred, self.alphas, t)
            if s.corr_weight:
                corr = losses.corr_loss(pooled, z0)
                total = total + s.corr_weight * corr
                parts["corr"] = corr.item()
            if s.cate_weight:
                have = [i for i, c in enumerate(idx) if self.data.categories[c]]
                if len(have) >= 2:
                    cats = [str(self.data.categories[idx[i]]) for i in have]
                    _, c_feat = self._encode_text(cats, grad=s.train_text_encoder)
                    h = torch.as_tensor(have, device=self.device)
                    cate = losses.cate_loss(pooled[h], z0[h], c_feat, *self.mu_sigma)
                    total = total + s.cate_weight * cate
                    parts["cate"] = cate.item()
        return total, parts

    def _control_residuals(self, idx: np.ndarray, views: np.ndarray, noisy: Any, t: Any, embeds: Any,
                           gen: Any) -> tuple[list[Any], Any]:
        """ControlNet residuals for the batch: each sample through its mode's ControlNet (joint: some none)."""
        torch = self.torch
        b = len(idx)
        r = torch.rand(b, generator=gen).tolist()
        assign: dict[str, list[int]] = {m: [] for m in self.modes}
        for i in range(b):
            if self.s.stage == "joint" and r[i] < self.s.control_dropout:
                continue
            assign[self.modes[(i + int(idx[0])) % len(self.modes)]].append(i)
        down: list[Any] | None = None
        mid: Any = None
        for mode, rows in assign.items():
            if not rows:
                continue
            ctrl = np.stack([dihedral(self.data.controls[mode][idx[i]], int(views[i])) for i in rows])
            rows_t = torch.as_tensor(rows, device=self.device)
            d, m = self.p.controlnets[mode](noisy[rows_t], t[rows_t], encoder_hidden_states=embeds[rows_t],
                                             controlnet_cond=to_tensor(ctrl, self.device), return_dict=False)
            if down is None:
                down = [torch.zeros((b, *x.shape[1:]), dtype=x.dtype, device=x.device) for x in d]
                mid = torch.zeros((b, *m.shape[1:]), dtype=m.dtype, device=m.device)
            down = [full.index_copy(0, rows_t, x) for full, x in zip(down, d, strict=True)]
            mid = mid.index_copy(0, rows_t, m)
        return down, mid  # type: ignore[return-value]


def to_tensor(images: np.ndarray, device: Any) -> Any:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [0, 1], contiguous (as the engine's control image)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device).float() / 255.0


def _step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 1009 + micro) % (2**63)


def start_controlnets(parts: Parts, modes: list[str], settings: TrainSettings, *, from_base: bool) -> dict[str, str]:
    """The ControlNets a run trains, in ``parts.controlnets`` (no others); returns mode → "base" | "unet".

    ``controlnet_init`` "base" continues the base model's own ControlNet for each mode (refused where it has none);
    "unet" starts each from a fresh copy of the UNet (:func:`make_controlnets`); "auto" (the default) continues
    the base's own where it has one for the mode and the stage is ``controlnet`` (few-shot fine-tuning: a fresh
    copy would first have to learn the labels again), and starts fresh otherwise (``from_base`` False: a random
    small model from ``--config``; stage ``joint``: training from scratch).
    """
    have = parts.controlnets
    if settings.controlnet_init == "base":
        if missing := [m for m in modes if m not in have]:
            raise TrainingError(f"The base model has no ControlNet for {', '.join(missing)} to continue: "
                                "use --controlnet-init unet (fresh from the UNet), or train only the modes it has.")
        how = dict.fromkeys(modes, "base")
    elif settings.controlnet_init == "auto" and settings.stage == "controlnet":
        how = {m: "base" if from_base and m in have else "unet" for m in modes}
    else:
        how = dict.fromkeys(modes, "unet")
    kept = {m: have[m] for m in modes if how[m] == "base"}
    parts.controlnets = {}
    if fresh := [m for m in modes if how[m] == "unet"]:
        make_controlnets(parts, fresh, settings)
    parts.controlnets = {m: kept[m] if m in kept else parts.controlnets[m] for m in modes}
    return how


def make_controlnets(parts: Parts, modes: list[str], settings: TrainSettings) -> None:
    """Fresh ControlNets from the UNet for ``modes`` (joint: zero convs at small random values)."""
    import torch

    from .architectures import build_controlnet

    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    arch = parts.card.get("architecture", {})
    embedding = tuple(arch.get("controlnet_embedding", ())) or default_embedding(factor)
    if 2 ** (len(embedding) - 1) != factor:
        embedding = default_embedding(factor)
    gen = torch.Generator().manual_seed(settings.seed + 17)
    for i, mode in enumerate(modes):
        with torch.random.fork_rng():  # the conditioning embedding's random init, by seed (not global state)
            torch.manual_seed(settings.seed * 7919 + i)
            net = build_controlnet(parts.unet, embedding)
        if settings.stage == "joint" and settings.controlnet_init_std > 0:
            with torch.no_grad():
                for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * settings.controlnet_init_std)
        parts.controlnets[mode] = net
    parts.card["controlnet_embedding"] = list(embedding)


def fit_scaling_factor(stage: Stage) -> float:
    """1 / std of the latents of the training tiles (SD1.5's rule for its 0.18215), from posterior samples."""
    import torch

    vae = stage.p.vae
    gen = torch.Generator().manual_seed(stage.s.seed)
    zs = []
    with torch.no_grad():
        for i in range(0, len(stage.data), 32):
            dist = vae.encode(to_tensor(stage.data.he[i: i + 32], stage.device) * 2 - 1).latent_dist
            zs.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)).flatten())
    return float(1.0 / torch.cat(zs).std())
