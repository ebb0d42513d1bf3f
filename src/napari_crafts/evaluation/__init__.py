"""Evaluate synthetic H&E against the real H&E it should match: the CRAFTS paper's table on your own data.

    napari-crafts evaluate GENERATED REAL [--prompt TEXT] [--clip-model vinid/plip|FOLDER|none] [--csv F] [--json F]

GENERATED and REAL are either two folders of tiles paired by file name (scored pair by pair with
:func:`scoring.evaluate_pairs`), or two aligned images — whole-slide files, (OME-)TIFF, OME-Zarr, PNG/JPEG —
read lazily and scored tile by tile on level 0 (:func:`evaluate_images`, also behind the napari "Compare"
widget). Qt-free; torch and transformers load only when a CLIP model is asked for (:func:`load_scorer`).

The public face of three modules, whose names it re-exports (import from here):

- :mod:`.inputs`            open an image, tell images from folders of tiles, align two images (resampling);
- :mod:`.plip_eval`         load the CLIP scorer, embed tiles, PLIP-I / PLIP-FID / PLIP-T;
- :mod:`.scoring`           score two images tile by tile, two folders pair by pair, or two paths of either;
"""

from __future__ import annotations

from ..generation.region import run  # drives any of our generators (evaluation, generation) to its result
from .inputs import PICTURE_SUFFIXES, EvaluationError, ResampledImage, align_images, open_image
from .metrics import EvaluationResult, MaskSpec, TileResult
from .plip_eval import CLI_ADVICE, MAX_EMBED_TILES, NO_MODEL, EvalProgress, iter_plip, load_scorer, pick_tiles
from .scoring import (
    DEFAULT_TILE,
    NO_TISSUE,
    ImageEvaluation,
    evaluate_folders,
    evaluate_images,
    evaluate_pairs,
    evaluate_paths,
    iter_evaluate_images,
)

__all__ = [
    "CLI_ADVICE", "DEFAULT_TILE", "MAX_EMBED_TILES", "NO_MODEL", "NO_TISSUE", "PICTURE_SUFFIXES",
    "EvalProgress", "EvaluationError", "EvaluationResult", "ImageEvaluation", "MaskSpec", "ResampledImage",
    "TileResult", "align_images", "evaluate_folders", "evaluate_images", "evaluate_pairs", "evaluate_paths",
    "iter_evaluate_images", "iter_plip", "load_scorer", "open_image", "pick_tiles", "run",
]
