"""The networks of a model folder in memory (``Parts``): what a training stage trains and ``model_folder`` saves;
its own module, below both, so that neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Parts:
    """The networks of a model folder, in memory."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    controlnets: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
