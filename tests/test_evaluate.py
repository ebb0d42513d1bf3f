"""`napari-crafts evaluate` and evaluate_images: the paper's metrics on folders of tiles and on whole images."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from napari_crafts import evaluation as E
from napari_crafts.cli import evaluate as evaluate_cli
from napari_crafts.evaluation import metrics as M
from napari_crafts.evaluation import plip as P


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="napari-crafts evaluate")
    evaluate_cli.configure_parser(parser)
    code = evaluate_cli.main(parser.parse_args([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


def table_row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def tile_folders(tmp_path: Path, gen: list[np.ndarray], real: list[np.ndarray]) -> tuple[Path, Path]:
    from PIL import Image

    gen_dir, real_dir = tmp_path / "synthetic_tiles", tmp_path / "real_tiles"
    gen_dir.mkdir(), real_dir.mkdir()
    for i, (g, r) in enumerate(zip(gen, real, strict=True)):
        Image.fromarray(g).save(gen_dir / f"tile_{i:02d}.png")  # lossless
        Image.fromarray(r).save(real_dir / f"tile_{i:02d}.png")
    return gen_dir, real_dir


def write_image(path: Path, rgb: np.ndarray, mpp: float) -> Path:
    """OME-Zarr for *.zarr, else an RGB TIFF with its resolution tags."""
    if path.suffix == ".zarr":
        from napari_crafts.export import save_ome_zarr

        save_ome_zarr(path, rgb, mpp=mpp, provenance={}, chunk=128)
    else:
        import tifffile

        tifffile.imwrite(path, rgb, photometric="rgb", tile=(128, 128), resolution=(1e4 / mpp, 1e4 / mpp),
                         resolutionunit="CENTIMETER")
    return path


# --- folders of tiles ------------------------------------------------------------------------------------


def test_folders_table_equals_pixel_metrics(tmp_path: Path, he: np.ndarray, noisy: np.ndarray,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    boxes = [(0, 0), (0, 200), (100, 100), (180, 380), (236, 436)]
    real = [he[y:y + 64, x:x + 64] for y, x in boxes]
    gen = [noisy[y:y + 64, x:x + 64] for y, x in boxes]
    gen_dir, real_dir = tile_folders(tmp_path, gen, real)
    csv_path, json_path = tmp_path / "table.csv", tmp_path / "table.json"
    code, out, err = cli([gen_dir, real_dir, "--clip-model", "none", "--csv", csv_path, "--json", json_path], capsys)
    assert code == 0, err

    per_pair = [M.pixel_metrics(g, r, mask=M.tissue_mask(r)) for g, r in zip(gen, real, strict=True)]
    expected = {k: float(np.mean([p[k] for p in per_pair])) for k in M.PIXEL_METRICS}
    assert out.splitlines()[0] == "| Dataset | SSIM↑ | PSNR↑ | MSE↓ | NCC↑ | PLIP-FID↓ | PLIP-I↑ | PLIP-T↑ |"
    row = table_row(out, "synthetic_tiles")  # default name: the generated folder's
    assert row == [f"{expected['SSIM']:.4f}", f"{expected['PSNR']:.2f}", f"{expected['MSE']:.2f}",
                   f"{expected['NCC']:.4f}", "–", "–", "–"]

    data = json.loads(json_path.read_text())["synthetic_tiles"]
    assert data["n"] == 5 and data["mask"] == "tissue" and data["plip_fid"] is None and data["model"] is None
    for key in M.PIXEL_METRICS:
        assert data[key.lower()] == pytest.approx(expected[key], rel=1e-12)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("dataset,n,ssim,psnr,mse,ncc") and lines[1].startswith("synthetic_tiles,5,")
    assert f"wrote {csv_path}" in out and f"wrote {json_path}" in out


def test_folders_with_plip_and_bad_tiles(tmp_path: Path, he: np.ndarray, noisy: np.ndarray, tiny_clip: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    ys, xs = rng.integers(0, 300 - 48, 12), rng.integers(0, 500 - 48, 12)
    real = [he[y:y + 48, x:x + 48] for y, x in zip(ys, xs, strict=True)]
    gen = [noisy[y:y + 48, x:x + 48] for y, x in zip(ys, xs, strict=True)]
    gen_dir, real_dir = tile_folders(tmp_path, gen, real)

    code, out, err = cli([gen_dir, real_dir, "--clip-model", tiny_clip, "--prompt", "H&E", "--name", "TCIA"], capsys)
    assert code == 0, err
    scorer = P.ClipScorer(tiny_clip, device="cpu")
    g, r = scorer.image_embeddings(gen), scorer.image_embeddings(real)
    row = table_row(out, "TCIA")
    assert row[4] == "–" and "--allow-small-fid" in out  # 12 samples < 17 for 16-d embeddings
    assert row[5] == f"{P.plip_i(g, r):.4f}" and row[6] == f"{P.plip_t(g, scorer.text_embeddings(['H&E'])):.4f}"
    assert f"PLIP metrics with {tiny_clip}." in out

    code, out, _ = cli([gen_dir, real_dir, "--clip-model", tiny_clip, "--allow-small-fid", "--name", "TCIA"], capsys)
    assert code == 0 and table_row(out, "TCIA")[4] == f"{P.plip_fid(g, r, allow_rank_deficient=True):.2f}"

    from PIL import Image

    Image.fromarray(np.full((48, 48, 3), 240, np.uint8)).save(gen_dir / "tile_00.png")
    Image.fromarray(np.full((48, 48, 3), 240, np.uint8)).save(real_dir / "tile_00.png")  # glass only
    code, out, err = cli([gen_dir, real_dir, "--clip-model", "none"], capsys)
    assert code == 2 and out == "" and "Tile 'tile_00': The tissue mask is empty" in err


# --- two images ------------------------------------------------------------------------------------------


def test_images_tiled_equal_whole_image_metrics(tmp_path: Path, he: np.ndarray, noisy: np.ndarray,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    gen_path = write_image(tmp_path / "slide_synthetic.ome.zarr", noisy, 0.5)
    real_path = write_image(tmp_path / "slide.tif", he, 0.5)
    whole = M.pixel_metrics(noisy, he)

    # one tile over the whole image: exactly the whole-image metrics
    code, out, err = cli([gen_path, real_path, "--clip-model", "none", "--no-mask", "--tile", 1024], capsys)
    assert code == 0, err
    assert table_row(out, "slide_synthetic")[:4] == [f"{whole['SSIM']:.4f}", f"{whole['PSNR']:.2f}",
                                                     f"{whole['MSE']:.2f}", f"{whole['NCC']:.4f}"]

    # many tiles (read lazily from the files): pixel-weighted, so MSE and PSNR are exact, SSIM nearly
    gen, gen_mpp = E.open_image(gen_path)
    real, real_mpp = E.open_image(real_path)
    assert type(gen).__name__ == type(real).__name__ == "Array" and gen_mpp == real_mpp == pytest.approx(0.5)
    seen: list[E.EvalProgress] = []
    evaluation = E.run(E.iter_evaluate_images(gen, real, tile=128, mask=None, generated_mpp=gen_mpp,
                                              real_mpp=real_mpp), seen.append)
    result = evaluation.result
    assert result.n == 12 and [e.done for e in seen] == list(range(1, 13)) and seen[-1].total == 12
    assert result.mse == pytest.approx(whole["MSE"], rel=1e-10) and result.psnr == pytest.approx(whole["PSNR"], rel=1e-10)
    assert result.ssim == pytest.approx(whole["SSIM"], abs=2e-3) and result.ncc == pytest.approx(whole["NCC"], abs=1e-2)
    assert result.ssim_std > 0 and result.mask is None
    heat = evaluation.heat_map()
    assert heat.shape == (3, 4) and heat[1, 1] == pytest.approx(evaluation.tiles[5].metrics["SSIM"])
    assert E.evaluate_images(noisy, he, tile=1024, mask=None).ssim == pytest.approx(whole["SSIM"], rel=1e-12)


def test_different_pixel_sizes_need_resample(tmp_path: Path, he: np.ndarray, noisy: np.ndarray,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fine = np.repeat(np.repeat(noisy, 2, axis=0), 2, axis=1)  # the generated image at twice the resolution
    gen_path = write_image(tmp_path / "fine.ome.zarr", fine, 0.25)
    real_path = write_image(tmp_path / "real.ome.zarr", he, 0.5)
    code, out, err = cli([gen_path, real_path, "--clip-model", "none"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "generated 0.25 µm/px, real 0.5 µm/px" in err and "--resample" in err

    code, out, err = cli([gen_path, real_path, "--clip-model", "none", "--resample", "--tile", 128], capsys)
    assert code == 0, err
    assert "note: Generated image resampled from 0.25 to 0.5 µm/px (600×1000 → 300×500 px)." in out
    resampled = np.asarray(E.ResampledImage(fine, (300, 500), (2, 2), (0.5, 0.5)))
    expected = M.aggregate(M.tile_metrics(resampled, he, tile=128))
    assert table_row(out, "fine")[0] == f"{expected['SSIM']:.4f}"
    # the lazy resampling equals the whole-image one tile by tile, and is close to scikit-image's rescale
    from skimage.transform import rescale

    ref = rescale(fine, 0.5, order=1, anti_aliasing=True, channel_axis=-1, preserve_range=True)
    assert np.abs(resampled.astype(int) - np.rint(ref)).mean() < 0.5
    np.testing.assert_array_equal(M.check_same_scale(0.25, 0.5, resample=True, image=fine), resampled)
    tiles = np.concatenate([E.ResampledImage(fine, (300, 500), (2, 2), (0.5, 0.5))[y:y + 70] for y in range(0, 300, 70)])
    np.testing.assert_array_equal(tiles, resampled)


def test_size_mismatch_and_other_refusals(tmp_path: Path, he: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    gen_path = write_image(tmp_path / "gen.ome.zarr", he[:, :499], 0.5)
    real_path = write_image(tmp_path / "real.tif", he, 0.5)
    code, out, err = cli([gen_path, real_path, "--clip-model", "none"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "Generated image (300, 499, 3) and real image (300, 500, 3) differ in size" in err

    folder = tmp_path / "tiles"
    folder.mkdir()
    code, _, err = cli([folder, real_path, "--clip-model", "none"], capsys)
    assert code == 2 and "is a folder of tiles but real" in err and "is an image" in err
    code, _, err = cli([tmp_path / "missing.ome.zarr", real_path, "--clip-model", "none"], capsys)
    assert code == 2 and "no such file or folder" in err

    glass = np.full((64, 64, 3), 241, np.uint8)
    with pytest.raises(E.EvaluationError, match="tissue mask is empty"):
        E.evaluate_images(glass, glass)


def test_hub_model_offline_is_one_line(tmp_path: Path, he: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    gen_dir, real_dir = tile_folders(tmp_path, [he[:64, :64]], [he[:64, :64]])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli([gen_dir, real_dir, "--clip-model", "napari-crafts-tests/no-such-clip"], capsys)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("napari-crafts evaluate: error:")]
    assert len(lines) == 1
    assert "'napari-crafts-tests/no-such-clip'" in lines[0] and "offline" in lines[0]
    assert "local folder" in lines[0] and "--clip-model none" in lines[0]
    code, _, err = cli([gen_dir, real_dir, "--clip-model", "not a model"], capsys)
    assert code == 2 and "neither a folder nor a hub id" in err and "--clip-model none" in err


def test_plip_on_image_tiles_uses_a_deterministic_sample(he: np.ndarray, noisy: np.ndarray, tiny_clip: Path) -> None:
    scorer = E.load_scorer(tiny_clip, device="cpu")
    assert E.load_scorer("none") is None and E.load_scorer("") is None
    run = lambda: E.run(E.iter_evaluate_images(noisy, he, tile=48, scorer=scorer, prompt="H&E", max_tiles=9,  # noqa: E731
                                               allow_rank_deficient=True))
    evaluation = run()
    result = evaluation.result
    full = [t for t in evaluation.tiles if t.height == t.width == 48]
    picked = E.pick_tiles(evaluation.tiles, 48, 9)
    assert evaluation.embedded == 9 and len(full) == 60 and picked[0] == full[0] and picked[-1] == full[-1]
    assert "PLIP metrics on 9 of 77 tiles." in result.notes and result.model == str(tiny_clip)
    g = scorer.image_embeddings([noisy[t.y:t.y + 48, t.x:t.x + 48] for t in picked])
    r = scorer.image_embeddings([he[t.y:t.y + 48, t.x:t.x + 48] for t in picked])
    assert result.plip_i == pytest.approx(P.plip_i(g, r), rel=1e-9)
    assert result.plip_fid == pytest.approx(P.plip_fid(g, r, allow_rank_deficient=True), rel=1e-6)
    assert result.plip_t == pytest.approx(P.plip_t(g, scorer.text_embeddings(["H&E"])), rel=1e-9)
    assert run().result.to_dict() == result.to_dict()  # same tiles, same numbers
    assert math.isfinite(result.ssim) and result.n == 77
