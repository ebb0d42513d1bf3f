"""napari_crafts.evaluation.plip: Fréchet distance, PLIP-FID/-I/-T and CLIP embeddings (a tiny random CLIP, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tile_crops
from napari_crafts.evaluation import plip as P

# --- Fréchet distance ----------------------------------------------------------------------------------


def test_frechet_distance_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.5, 0.0])
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)  # commuting covariances
    assert P.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-10)
    # and with a full covariance rotated into both: rotation leaves the distance unchanged
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    got = P.frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_plip_fid_sets() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.5, 1.5, size=(200, 8))
    assert P.plip_fid(a, a) == pytest.approx(0.0, abs=1e-8)
    assert P.plip_fid(a, b) > 1.0
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.plip_fid(a[:1], b)
    with pytest.raises(ValueError, match=r"at least 9 samples.*unreliable.*allow_rank_deficient=True"):
        P.plip_fid(a[:5], b)
    assert P.plip_fid(a[:5], b[:5], allow_rank_deficient=True) > 0


# --- CLIP embeddings -----------------------------------------------------------------------------------


def test_clip_scorer_embeddings(scorer: P.ClipScorer, tiny_clip: Path, he: np.ndarray) -> None:
    images = tile_crops(he, 10)
    emb = scorer.image_embeddings(images)
    assert emb.shape == (10, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1)
    assert scorer.name == str(tiny_clip)
    assert P.plip_i(emb, emb) == pytest.approx(1.0)
    others = scorer.image_embeddings(tile_crops(he, 10, seed=1))
    assert -1 <= P.plip_i(emb, others) <= 1
    text = scorer.text_embeddings(["H&E stained breast tissue", "nuclei"])
    assert text.shape == (2, 16) and np.allclose(np.linalg.norm(text, axis=1), 1)
    assert -1 <= P.plip_t(emb, text[:1]) <= 1
    with pytest.raises(ValueError, match="one text embedding or one per image"):
        P.plip_t(emb, text)


def test_long_prompt_is_truncated_with_warning(scorer: P.ClipScorer) -> None:
    with pytest.warns(UserWarning, match=r"1 of 1 prompt\(s\) exceed the 77-token limit.*token\(s\) cut"):
        emb = scorer.text_embeddings(["tumour " * 100])
    assert emb.shape == (1, 16)


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, napari_crafts.evaluation.plip; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
