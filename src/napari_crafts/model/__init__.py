"""The model: what a model folder declares (``card``), the engine that loads its networks and denoises
(``engine``), feature reuse (``deepcache``) and the tiny offline test model (``tiny``). No Qt; torch and
diffusers load only when an Engine is built."""

from .card import CRAFTS_MASK_PROMPT, FLUORESCENCE_PROMPT, ModelCard
from .engine import Engine, ModelLoadError, PickleRefused, get_engine

__all__ = ["CRAFTS_MASK_PROMPT", "FLUORESCENCE_PROMPT", "Engine", "ModelCard", "ModelLoadError", "PickleRefused",
           "get_engine"]
