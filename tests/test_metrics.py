from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import tile_crops
from napari_crafts.evaluation import metrics as M
from napari_crafts.evaluation import plip as P
from napari_crafts.evaluation import scoring as S

# --- pixel metrics -------------------------------------------------------------------------------------


def test_identical_images(he: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero spam for PSNR
        values = M.pixel_metrics(he, he.copy())
    assert values["SSIM"] == pytest.approx(1.0)
    assert values["MSE"] == 0.0
    assert values["NCC"] == pytest.approx(1.0)
    assert values["PSNR"] == math.inf


@pytest.mark.parametrize("kind", ["noise", "shift"])
def test_mse_psnr_match_numpy(he: np.ndarray, noisy: np.ndarray, kind: str) -> None:
    gen = noisy if kind == "noise" else np.clip(he.astype(int) + 9, 0, 255).astype(np.uint8)
    expected_mse = np.mean((gen.astype(np.float64) - he.astype(np.float64)) ** 2)
    assert M.mse(gen, he) == pytest.approx(expected_mse, rel=1e-12)
    assert M.psnr(gen, he) == pytest.approx(10 * np.log10(255.0**2 / expected_mse), rel=1e-12)
    if kind == "noise":
        assert 100 < expected_mse < 150  # ~σ² = 144, a little less from clipping
    assert 0 < M.ssim(gen, he) < 1


def test_ssim_equals_scikit_image_mean(he: np.ndarray, noisy: np.ndarray) -> None:
    from skimage.metrics import structural_similarity

    expected = structural_similarity(noisy, he, channel_axis=-1, data_range=255)
    assert M.ssim(noisy, he) == pytest.approx(expected, rel=1e-10)
    assert M.ssim(noisy, he, mask=np.ones(he.shape[:2], bool)) == pytest.approx(expected, rel=1e-10)


def test_ncc_affine_and_negated(he: np.ndarray) -> None:
    x = he.astype(np.float64)
    assert M.ncc(0.5 * x + 40, x) == pytest.approx(1.0, abs=1e-12)
    assert M.ncc(255 - he, he) == pytest.approx(-1.0, abs=1e-12)


def test_ncc_of_constant_image_is_nan_with_reason(he: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="generated image is constant"):
        assert math.isnan(M.ncc(np.full_like(he, 128), he))


def test_masked_metrics_ignore_outside(he: np.ndarray, noisy: np.ndarray) -> None:
    from scipy import ndimage

    mask = np.zeros(he.shape[:2], bool)
    mask[40:200, 60:300] = True
    before = M.pixel_metrics(noisy, he, mask=mask)
    rng = np.random.default_rng(1)
    far = ~ndimage.binary_dilation(mask, np.ones((3, 3)), iterations=M.SSIM_WIN // 2)  # outside SSIM's 7×7 reach too
    gen2, real2 = noisy.copy(), he.copy()
    gen2[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3))
    real2[~mask] = 255 - real2[~mask]
    after = M.pixel_metrics(gen2, real2, mask=mask)
    for key in ("MSE", "PSNR", "NCC"):
        assert after[key] == pytest.approx(before[key], rel=1e-12)
    gen3 = noisy.copy()
    gen3[far] = 0
    assert M.ssim(gen3, he, mask=mask) == pytest.approx(before["SSIM"], rel=1e-12)
    assert M.mse(noisy, he, mask=mask) != pytest.approx(M.mse(noisy, he))


def test_tissue_mask_and_empty_mask(he: np.ndarray) -> None:
    assert M.tissue_mask(he).mean() > 0.95  # the tile is nearly all tissue
    glass = np.full((64, 64, 3), (238, 240, 236), np.uint8)
    assert not M.tissue_mask(glass).any()
    with pytest.raises(ValueError, match="tissue mask is empty"):
        M.pixel_metrics(glass, glass, mask=M.tissue_mask(glass))
    with pytest.raises(ValueError, match="Pair 1: The tissue mask is empty"):
        S.evaluate_pairs([he, glass], [he, glass])


def test_shape_mismatch_names_both_shapes(he: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(300, 500, 3\).*\(300, 499, 3\).*differ in shape"):
        M.pixel_metrics(he, he[:, :499])
    with pytest.raises(ValueError, match="differ in shape"):
        M.tile_metrics(he, he[:, :499])


def test_check_same_scale(he: np.ndarray) -> None:
    assert M.check_same_scale(0.25, 0.251, resample=False, image=he) is he
    assert M.check_same_scale(None, 0.5, resample=False, image=he) is he
    with pytest.raises(ValueError, match=r"0\.25 µm/px vs 0\.5 µm/px.*--resample"):
        M.check_same_scale(0.25, 0.5, resample=False, image=he)
    half = M.check_same_scale(0.25, 0.5, resample=True, image=he)
    assert half.shape == (150, 250, 3) and half.dtype == np.uint8
    assert abs(float(half.mean()) - float(he.mean())) < 2


# --- tiles ---------------------------------------------------------------------------------------------


class ReadCounter:
    """Array-like that records the size of every read, to prove tiles are read one at a time."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        out = self.array[key]
        self.reads.append(out.shape[0] * out.shape[1])
        return out


def test_tiles_cover_image_once_and_aggregate(he: np.ndarray, noisy: np.ndarray) -> None:
    import dask.array as da

    gen, real = da.from_array(noisy, chunks=(100, 100, 3)), ReadCounter(he)
    results = M.tile_metrics(gen, real, tile=128, mask=None)
    cover = np.zeros(he.shape[:2], int)
    for t in results:
        cover[t.y:t.y + t.height, t.x:t.x + t.width] += 1
    assert (cover == 1).all() and len(results) == 3 * 4
    assert max(real.reads) <= (128 + 6) ** 2  # a tile plus SSIM's 3 px halo, never the whole image

    agg = M.aggregate(results)
    assert agg["MSE"] == pytest.approx(M.mse(noisy, he), rel=1e-10)  # pixel-weighted: exact
    assert agg["PSNR"] == pytest.approx(M.psnr(noisy, he), rel=1e-10)
    assert agg["SSIM"] == pytest.approx(M.ssim(noisy, he), abs=2e-3)
    assert agg["tiles"] == 12 and agg["pixels"] == he.shape[0] * he.shape[1]

    # the halo makes a tile's SSIM the whole-image SSIM map over that tile
    box = np.zeros(he.shape[:2], bool)
    box[128:256, 128:256] = True
    inner = next(t for t in results if (t.y, t.x) == (128, 128))
    assert inner.metrics["SSIM"] == pytest.approx(M.ssim(noisy, he, mask=box), rel=1e-10)


def test_tiles_without_tissue_are_skipped(he: np.ndarray, noisy: np.ndarray) -> None:
    real = he.copy()
    real[:128, :128] = 242  # glass
    results = M.tile_metrics(noisy, real, tile=128)
    assert (0, 0) not in {(t.y, t.x) for t in results} and len(results) == 11
    heat = M.ssim_map_tiles(noisy, real, tile=128)
    assert heat.shape == (3, 4) and np.isnan(heat[0, 0]) and np.isfinite(heat[1:, 1:]).all()
    with pytest.raises(ValueError, match="nothing to aggregate"):
        M.aggregate([])


# --- datasets ------------------------------------------------------------------------------------------


def test_evaluate_pairs_table_and_files(scorer: P.ClipScorer, he: np.ndarray, noisy: np.ndarray,
                                        tmp_path: Path) -> None:
    real, gen = tile_crops(he, 20), tile_crops(noisy, 20)  # same seed: paired crops
    result = S.evaluate_pairs(gen, real, prompt="H&E tissue", scorer=scorer)
    assert result.n == 20 and result.model == scorer.name and result.mask == "tissue"
    assert 0 < result.ssim < 1 and result.mse > 0 and result.ssim_std > 0
    assert math.isfinite(result.plip_fid) and -1 <= result.plip_i <= 1 and -1 <= result.plip_t <= 1
    assert list(result.to_row()) == ["SSIM", "PSNR", "MSE", "NCC", "PLIP-FID", "PLIP-I", "PLIP-T"]

    with pytest.warns(UserWarning, match="PLIP-FID needs at least 17"):
        small = S.evaluate_pairs(gen[:4], real[:4], scorer=scorer, mask=None)
    assert math.isnan(small.plip_fid) and math.isnan(small.plip_t) and "PLIP-FID not computed" in small.notes[0]

    rows = {"TCIA tile": result, "small": small}
    table = M.format_table(rows)
    assert table.splitlines()[0] == "| Dataset | SSIM↑ | PSNR↑ | MSE↓ | NCC↑ | PLIP-FID↓ | PLIP-I↑ | PLIP-T↑ |"
    assert f"| TCIA tile | {result.ssim:.4f} | {result.psnr:.2f} |" in table and "| – |" in table
    assert scorer.name in table

    M.write_results(rows, csv_path=tmp_path / "r.csv", json_path=tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["small"]["plip_fid"] is None and data["TCIA tile"]["mse"] == pytest.approx(result.mse)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("dataset,n,ssim,psnr,mse,ncc") and len(lines) == 3


def test_tile_folders_pair_by_name(tmp_path: Path, he: np.ndarray, noisy: np.ndarray) -> None:
    from PIL import Image

    gen_dir, real_dir = tmp_path / "gen", tmp_path / "real"
    gen_dir.mkdir(), real_dir.mkdir()
    for name, (g, r) in {"a": (noisy[:64, :64], he[:64, :64]), "b": (noisy[64:128, :64], he[64:128, :64])}.items():
        Image.fromarray(g).save(gen_dir / f"{name}.png")
        Image.fromarray(r).save(real_dir / f"{name}.tif")
    names, gen, real = M.pair_tile_folders(gen_dir, real_dir)
    assert names == ["a", "b"] and np.array_equal(gen[0], noisy[:64, :64]) and np.array_equal(real[1], he[64:128, :64])
    assert set(M.load_tile_folder(gen_dir)) == {"a", "b"}

    Image.fromarray(he[:64, :64]).save(gen_dir / "c.png")
    Image.fromarray(he[:64, :64]).save(real_dir / "d.jpg")
    with pytest.raises(ValueError, match=r"Unpaired tiles.*\['c'\].*\['d'\]"):
        M.pair_tile_folders(gen_dir, real_dir)


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, napari_crafts.evaluation.metrics; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
