"""Shapes of the small models trained from scratch (``napari-crafts train --config small`` or a JSON file).

A small model has the SD1.5 layout (AutoencoderKL, UNet2DConditionModel, ControlNets, CLIP text encoder,
scheduler), so the engine loads it like real weights; only the sizes differ. The tokenizer and text encoder
are the tiny offline ones of ``napari_crafts.model.tiny`` (a fixed caption: the text carries no information,
the ControlNet's control image does).

Sizes were chosen by measuring this 2-core CPU (see docs/demo_model.md): the VAE downsamples 8× like SD1.5's,
so a 512² tile is 64² latents; the UNet's cross-attention sits only at its lowest resolution; the ControlNet's
conditioning embedding is narrow because at full image resolution it costs more than the whole ControlNet.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model configuration that cannot be built; the message says what to change."""


@dataclass(frozen=True)
class SmallModelConfig:
    """The sizes of a small SD1.5-shaped model. Every field can be set in a JSON config file."""

    vae_channels: tuple[int, ...] = (16, 32, 64, 128)
    vae_layers_per_block: int = 1
    vae_mid_attention: bool = False
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    #: Attention heads of the UNet's transformer blocks (diffusers calls this ``attention_head_dim``).
    attention_heads: int = 4
    #: How many of the lowest UNet resolutions have cross-attention (1: only the lowest).
    cross_attention_levels: int = 1
    #: ControlNet conditioning embedding; it downsamples by 2**(len − 1), which must equal the VAE factor.
    controlnet_embedding: tuple[int, ...] = (4, 8, 16, 32)
    norm_groups: int = 8

    def __post_init__(self) -> None:
        for name in ("vae_channels", "unet_channels", "controlnet_embedding"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if len(self.controlnet_embedding) != len(self.vae_channels):
            raise ConfigError(
                f"controlnet_embedding has {len(self.controlnet_embedding)} entries but the VAE has "
                f"{len(self.vae_channels)} blocks: the ControlNet's embedding must downsample as much as the VAE "
                f"(give {len(self.vae_channels)} entries)."
            )
        if not 1 <= self.cross_attention_levels <= len(self.unet_channels):
            raise ConfigError(f"cross_attention_levels must be 1–{len(self.unet_channels)}, got "
                              f"{self.cross_attention_levels}.")
        for name in ("vae_channels", "unet_channels"):
            bad = [c for c in getattr(self, name) if c % self.norm_groups]
            if bad:
                raise ConfigError(f"{name} {bad} are not multiples of norm_groups={self.norm_groups}.")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (as ``Engine.size_multiple``)."""
        return self.vae_scale_factor * 2 ** (len(self.unet_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: Named configurations for ``--config``.
CONFIGS: dict[str, SmallModelConfig] = {
    "small": SmallModelConfig(),
    # For tests: the same layout, a few times smaller.
    "test": SmallModelConfig(vae_channels=(8, 8, 16, 16), unet_channels=(16, 32), attention_heads=2,
                             controlnet_embedding=(4, 4, 8, 8), norm_groups=4),
}


def load_config(ref: str | Path) -> SmallModelConfig:
    """A named configuration (``small``) or a JSON file of ``SmallModelConfig`` fields."""
    if str(ref) in CONFIGS:
        return CONFIGS[str(ref)]
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"Config '{ref}' is neither a known name ({', '.join(CONFIGS)}) nor a JSON file.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid JSON: {exc}.") from None
    known = {f.name for f in fields(SmallModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Config file {path} has unknown keys {unknown}; known: {', '.join(sorted(known))}.")
    return SmallModelConfig(**data)


def build_vae(cfg: SmallModelConfig, sample_size: int = 128) -> Any:
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=cfg.vae_layers_per_block,
        norm_num_groups=cfg.norm_groups, sample_size=sample_size, mid_block_add_attention=cfg.vae_mid_attention,
    )


def build_unet(cfg: SmallModelConfig, cross_attention_dim: int, sample_size: int = 16) -> Any:
    from diffusers import UNet2DConditionModel

    n, k = len(cfg.unet_channels), cfg.cross_attention_levels
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("DownBlock2D",) * (n - k) + ("CrossAttnDownBlock2D",) * k,
        up_block_types=("CrossAttnUpBlock2D",) * k + ("UpBlock2D",) * (n - k),
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_groups,
    )


def build_controlnet(unet: Any, embedding: tuple[int, ...]) -> Any:
    """A ControlNet copied from ``unet`` (``ControlNetModel.from_unet``), its zero convolutions zero."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(embedding))


def text_parts(seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """(tokenizer, text encoder, scheduler config) of the tiny offline model (``model.tiny``), built once.

    The tiny model's builder is the one place that makes the offline CLIP tokenizer and text encoder; we
    build it without ControlNet into a temporary folder and keep its text parts and scheduler.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="napari-crafts-text-") as tmp:
        folder = build_tiny_model(Path(tmp) / "tiny", seed=seed, with_controlnet=False)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return tokenizer, text_encoder, scheduler


def build_small_model(path: str | Path, cfg: SmallModelConfig, *, modes: tuple[str, ...] = ("labels",),
                      tile_px: int = 128, seed: int = 0, mpp: float = 0.5, name: str = "") -> Path:
    """Write a random-initialised small model (the start of training from scratch) as a diffusers folder."""
    import torch

    from .model_folder import save_model_folder

    torch.manual_seed(seed)
    tokenizer, text_encoder, scheduler = text_parts(seed)
    vae = build_vae(cfg, tile_px)
    unet = build_unet(cfg, text_encoder.config.hidden_size, tile_px // cfg.vae_scale_factor)
    controlnets = {mode: build_controlnet(unet, cfg.controlnet_embedding) for mode in modes}
    return save_model_folder(
        path, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler_config=scheduler,
        controlnets=controlnets, card={"name": name or "napari-crafts small model (untrained)", "mpp": mpp},
    )
