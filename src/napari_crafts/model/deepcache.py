"""DeepCache-style feature reuse (fast mode, approximate): full UNet every N steps, the shallow branch between.

DeepCache (Ma et al., CVPR 2024) observes that the UNet's deep features change little from one denoising step
to the next. On a *full* step we run the UNet as usual and keep the input of its last up block (everything the
deep part computed); on the steps between we run only the shallow branch: time embedding, ``conv_in``, the
first down block (whose outputs are the skip connections the last up block needs), then the last up block on
the kept feature, and the output convolutions. The ControlNet is cut the same way: its ``conv_in`` + control
embedding and first down block give the residuals of those skip connections; its deep residuals are not needed.

``shallow_unet(unet, cache, …)`` with a ``cache`` taken at the *same* latents and timestep returns exactly what
the full UNet returns (tested): the approximation is only in reusing the cache at later steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DeepCacheUnsupported(ValueError):
    """The UNet/ControlNet uses a feature the shallow branch does not reproduce (class or extra embeddings)."""


def check_supported(unet: Any, controlnet: Any = None) -> None:
    cfg = unet.config
    if unet.class_embedding is not None or cfg.addition_embed_type is not None or cfg.center_input_sample \
            or unet.encoder_hid_proj is not None:
        raise DeepCacheUnsupported("Feature reuse (cache interval > 1) supports SD1.5-style UNets only "
                                   "(no class or added embeddings); use cache interval 1.")
    if controlnet is not None and (controlnet.class_embedding is not None
                                   or controlnet.config.addition_embed_type is not None
                                   or controlnet.config.global_pool_conditions):
        raise DeepCacheUnsupported("Feature reuse (cache interval > 1) does not support this ControlNet "
                                   "(class/added embeddings or global pooling); use cache interval 1.")


def skip_count(unet: Any) -> int:
    """How many skip connections the last up block takes (conv_in's output + the first down block's resnets)."""
    return len(unet.up_blocks[-1].resnets)


class FeatureCache:
    """Holds the input of the UNet's last up block from the latest full step (a forward pre-hook records it).

    One cache per generation call. The hook is on the UNet only while a full step records (``recording()``,
    or the whole ``with`` block), so a UNet shared by several calls never feeds one call's feature to another.
    """

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.feature: Any = None
        self._handle: Any = None

    def _keep(self, _module: Any, args: tuple, kwargs: dict) -> None:
        self.feature = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def __enter__(self) -> FeatureCache:
        self._handle = self.unet.up_blocks[-1].register_forward_pre_hook(self._keep, with_kwargs=True)
        return self

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()
        self.feature = None

    @contextmanager
    def recording(self) -> Iterator[FeatureCache]:
        """Record the deep feature of the UNet calls made inside (a full step); it stays after the block."""
        handle = self.unet.up_blocks[-1].register_forward_pre_hook(self._keep, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    def for_batch(self, n: int) -> Any:
        """The kept feature for a batch of ``n`` (after a CFG cut-off only the conditional half goes on)."""
        return self.feature if self.feature.shape[0] == n else self.feature[-n:]


def shallow_controlnet(net: Any, sample: Any, timestep: Any, encoder_hidden_states: Any, controlnet_cond: Any,
                       conditioning_scale: float, n_skips: int) -> list[Any]:
    """The first ``n_skips`` ControlNet residuals (as ``ControlNetModel.forward`` computes them), nothing deeper."""
    import torch

    if net.config.controlnet_conditioning_channel_order == "bgr":
        controlnet_cond = torch.flip(controlnet_cond, dims=[1])
    t_emb = net.time_proj(_timesteps(timestep, sample)).to(dtype=sample.dtype)
    emb = net.time_embedding(t_emb, None)
    h = net.conv_in(sample) + net.controlnet_cond_embedding(controlnet_cond)
    skips = (h,) + _first_down_block(net.down_blocks[0], h, emb, encoder_hidden_states)
    blocks = net.controlnet_down_blocks
    return [block(r) * conditioning_scale for r, block in zip(skips[:n_skips], blocks, strict=False)]


def shallow_unet(unet: Any, cache: FeatureCache, sample: Any, timestep: Any, encoder_hidden_states: Any,
                 down_residuals: list[Any] | None = None) -> Any:
    """The UNet's output from its shallow branch and the cached deep feature (see the module docstring)."""
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    h = unet.conv_in(sample)
    skips = (h,) + _first_down_block(unet.down_blocks[0], h, emb, encoder_hidden_states)
    n = skip_count(unet)
    skips = skips[:n]
    if down_residuals is not None:
        skips = tuple(s + r for s, r in zip(skips, down_residuals, strict=False))
    up = unet.up_blocks[-1]
    kw = {"encoder_hidden_states": encoder_hidden_states} if getattr(up, "has_cross_attention", False) else {}
    h = up(hidden_states=cache.for_batch(sample.shape[0]), temb=emb, res_hidden_states_tuple=skips, **kw)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def _first_down_block(block: Any, h: Any, emb: Any, encoder_hidden_states: Any) -> tuple[Any, ...]:
    if getattr(block, "has_cross_attention", False):
        _, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
    else:
        _, res = block(hidden_states=h, temb=emb)
    return tuple(res)


def _timesteps(timestep: Any, sample: Any) -> Any:
    import torch

    t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
    t = t[None] if t.ndim == 0 else t
    return t.to(sample.device).expand(sample.shape[0])


def full_step_indices(steps: int, interval: int) -> set[int]:
    """The steps (0-based) that run the full UNet: every ``interval``-th, starting with the first."""
    return set(range(0, steps, max(1, interval)))
