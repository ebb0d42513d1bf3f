"""Protocols the package types against (as tiffslide's ``_types.py``): what code needs from a model or engine.

``model.description.ModelDescription`` (no networks) satisfies the model protocols; ``model.engine.Engine``
satisfies them all. Generation code asks for the smallest one it uses, so a whole-slide client plans and
describes a run with a description while workers generate with engines.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ModelGeometry(Protocol):
    """What tiling needs: the model's pixel size and the sizes its networks accept."""

    @property
    def size_multiple(self) -> int: ...
    @property
    def vae_scale_factor(self) -> int: ...
    @property
    def mpp(self) -> float: ...


class DescribesModel(Protocol):
    """What a provenance record needs: the weights (and where they run) as a JSON-able dict."""

    def describe(self, controlnet: str | Path | None = None, mode: str | None = "labels") -> dict[str, Any]: ...


class PromptModel(Protocol):
    """What prompt checks need: the words CLIP's token window cuts off."""

    def truncated_tokens(self, prompt: str) -> list[str]: ...


class ModelLike(ModelGeometry, DescribesModel, PromptModel, Protocol):
    """A model described, loaded or not (``ModelDescription``, ``Engine``)."""


class GenerationEngine(ModelLike, Protocol):
    """A loaded model that generates tiles (``Engine``): denoising and the batch sizes that fit in memory."""

    def generate(
        self, noise: np.ndarray, control: np.ndarray | None = None, *, prompt: str, negative_prompt: str = "",
        steps: int = 50, guidance_scale: float = 7.5, controlnet: str | Path | None = None,
        controlnet_scale: float = 1.0, scheduler: str = "default", mode: str = "labels", cfg_cutoff: float = 1.0,
        cache_interval: int = 1,
    ) -> Generator[Any, None, np.ndarray]: ...

    def auto_batch(self, tile_px: int, *, guidance: bool = True, control: bool = True, cap: int = 16) -> int: ...
    def batch_cap(self, tile_px: int, *, guidance: bool, control: bool) -> int | None: ...
    def cap_batch(self, tile_px: int, batch: int, *, guidance: bool, control: bool) -> None: ...
