"""PLIP metrics: how close generated H&E is to real H&E as seen by a CLIP-family model.

The embedding metrics of the CRAFTS paper, with PLIP ("vinid/plip", CLIP ViT-B/32 fine-tuned on pathology)
by default (:class:`ClipScorer`): PLIP-FID↓ (Fréchet distance between generated and real embedding sets,
:func:`plip_fid`), PLIP-I↑ (mean cosine of paired image embeddings, :func:`plip_i`) and PLIP-T↑ (mean cosine
of image vs prompt embeddings, :func:`plip_t`). The pixel metrics,
:func:`napari_crafts.evaluation.scoring.evaluate_pairs` and the paper's table are in
:mod:`napari_crafts.evaluation.metrics`.

numpy only at import time; scipy loads in :func:`frechet_distance`, torch and transformers when a
:class:`ClipScorer` is made.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Default embedding model: PLIP, a CLIP ViT-B/32 fine-tuned on pathology image–text pairs.
PLIP_MODEL_ID = "vinid/plip"


# --- CLIP-family embeddings ----------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def _features(out: Any) -> Any:
    """transformers 4 returns the projected features, transformers 5 an output whose pooler_output they are."""
    return out if hasattr(out, "detach") else out.pooler_output


class ClipScorer:
    """Image and text embeddings from a CLIP-family model (PLIP by default), for PLIP-FID/-I/-T.

    ``model``: hub id or local folder holding a transformers ``CLIPModel`` (safetensors unless
    ``use_safetensors=False``), its tokenizer and ``preprocessor_config.json``. Images are preprocessed by
    transformers' PIL/numpy CLIP image processor (``CLIPImageProcessorPil`` in transformers 5, the "slow"
    ``CLIPImageProcessor`` in 4), never the torchvision one: bicubic resize of the shortest side, centre crop,
    the checkpoint's mean/std. Without a preprocessor config, CLIP's defaults at the model's image size.
    """

    def __init__(self, model: str | Path = PLIP_MODEL_ID, *, device: str | None = None, batch_size: int = 32,
                 use_safetensors: bool = True, local_files_only: bool = False) -> None:
        import torch
        from transformers import AutoTokenizer, CLIPModel

        self.name = str(model)
        self.batch_size = batch_size
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        self.device = device
        try:
            clip: Any = CLIPModel.from_pretrained(self.name, use_safetensors=use_safetensors,
                                             local_files_only=local_files_only)
            self._tokenizer = AutoTokenizer.from_pretrained(self.name, local_files_only=local_files_only)
        except OSError as err:
            raise OSError(
                f"Could not load the CLIP model '{self.name}' ({err}). Give a local folder with a CLIPModel "
                "(model.safetensors), tokenizer and preprocessor_config.json, or a hub id where the hub is "
                "reachable or cached."
            ) from err
        self._model = clip.to(device).eval()
        self._image_processor = _image_processor(self.name, int(clip.config.vision_config.image_size),
                                                 local_files_only)
        self.dim = int(clip.config.projection_dim)
        self.max_length = min(int(clip.config.text_config.max_position_embeddings),
                              int(getattr(self._tokenizer, "model_max_length", 10**9)))

    def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) L2-normalised image embeddings of RGB (H, W, 3) uint8 images, in batches."""
        import torch

        chunks = [np.empty((0, self.dim))]
        for start in range(0, len(images), self.batch_size):
            batch = [_rgb(im) for im in images[start:start + self.batch_size]]
            pixels = self._image_processor(images=batch, return_tensors="pt",
                                           input_data_format="channels_last")["pixel_values"]
            with torch.inference_mode():
                feats = _features(self._model.get_image_features(pixel_values=pixels.to(self.device)))
            chunks.append(feats.float().cpu().numpy())
        return _l2_normalise(np.concatenate(chunks))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) L2-normalised text embeddings; prompts over the model's token limit are truncated (warned)."""
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.empty((0, self.dim))
        lengths = [len(ids) for ids in self._tokenizer(texts, verbose=False)["input_ids"]]
        cut = [max(0, n - self.max_length) for n in lengths]
        if any(cut):
            warnings.warn(
                f"{sum(c > 0 for c in cut)} of {len(texts)} prompt(s) exceed the {self.max_length}-token limit of "
                f"'{self.name}': {sum(cut)} token(s) cut from the end (at most {max(cut)} from one prompt).",
                stacklevel=2,
            )
        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)
        with torch.inference_mode():
            feats = _features(self._model.get_text_features(input_ids=enc["input_ids"],
                                                            attention_mask=enc["attention_mask"]))
        return _l2_normalise(feats.float().cpu().numpy())


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Expected an RGB(A) image (H, W, 3), got shape {image.shape}.")
    return image[..., :3]


def _image_processor(name: str, image_size: int, local_files_only: bool) -> Any:
    processor: Any
    try:  # transformers >= 5: the PIL/numpy backend (the default backend needs torchvision)
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:  # transformers 4: the "slow" CLIPImageProcessor is already PIL/numpy
        from transformers import CLIPImageProcessor as processor
    try:
        return processor.from_pretrained(name, local_files_only=local_files_only)
    except OSError:
        warnings.warn(f"No preprocessor_config.json for '{name}': using CLIP's defaults at {image_size} px.",
                      stacklevel=3)
        return processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


# --- PLIP metrics --------------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)`` between two Gaussians.

    ``scipy.linalg.sqrtm``; if the product is singular the diagonals get a 1e-6 offset (as pytorch-fid
    does); the real part is kept (a warning if the imaginary part is not negligible); tiny negative results
    from rounding are returned as 0.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.abs(covmean.imag).max())
        if imag > 1e-3 * max(1.0, float(np.abs(covmean.real).max())):
            warnings.warn(f"Fréchet distance: matrix square root has imaginary parts up to {imag:.3g}; "
                          "kept the real part (covariances badly conditioned: too few samples?).", stacklevel=2)
        covmean = covmean.real
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)))


def plip_fid(gen_embeddings: np.ndarray, real_embeddings: np.ndarray, *,
             allow_rank_deficient: bool = False) -> float:
    """PLIP-FID↓: Fréchet distance between the Gaussians fitted to generated and real embedding sets.

    Each set needs at least 2 samples, and at least D + 1 (D: embedding size, 513 for PLIP) for a full-rank
    covariance; with fewer the estimate is unreliable (biased, not comparable across set sizes), so it
    raises unless ``allow_rank_deficient=True`` (tests, quick looks). Computed on the embeddings as given
    (:class:`ClipScorer` returns them L2-normalised).
    """
    g = np.atleast_2d(np.asarray(gen_embeddings, np.float64))
    r = np.atleast_2d(np.asarray(real_embeddings, np.float64))
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"Embedding sizes differ: generated {g.shape}, real {r.shape}.")
    if min(len(g), len(r)) < 2:
        raise ValueError(f"PLIP-FID needs at least 2 samples per set to estimate a covariance; "
                         f"got {len(g)} generated and {len(r)} real.")
    needed = g.shape[1] + 1
    if min(len(g), len(r)) < needed and not allow_rank_deficient:
        raise ValueError(
            f"PLIP-FID needs at least {needed} samples per set for a full-rank covariance of {g.shape[1]}-d "
            f"embeddings; got {len(g)} generated and {len(r)} real, so the estimate is unreliable. "
            "Use more tiles, or pass allow_rank_deficient=True to compute it anyway."
        )
    return frechet_distance(g.mean(0), np.cov(g, rowvar=False), r.mean(0), np.cov(r, rowvar=False))


def plip_i(gen_embeddings: np.ndarray, real_embeddings: np.ndarray) -> float:
    """PLIP-I↑: mean cosine similarity of paired image embeddings (row i with row i), in [-1, 1]."""
    g, r = _l2_normalise(np.atleast_2d(gen_embeddings)), _l2_normalise(np.atleast_2d(real_embeddings))
    if g.shape != r.shape:
        raise ValueError(f"PLIP-I needs paired embeddings of the same shape: generated {g.shape}, real {r.shape}.")
    return float(np.clip(np.sum(g * r, axis=1), -1, 1).mean())


def plip_t(gen_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """PLIP-T↑: mean cosine of each image embedding with the prompt's (one row for all, or one per image)."""
    g, t = _l2_normalise(np.atleast_2d(gen_embeddings)), _l2_normalise(np.atleast_2d(text_embeddings))
    if len(t) not in (1, len(g)) or t.shape[1] != g.shape[1]:
        raise ValueError(f"PLIP-T needs one text embedding or one per image: images {g.shape}, texts {t.shape}.")
    return float(np.clip(np.sum(g * t, axis=1), -1, 1).mean())
