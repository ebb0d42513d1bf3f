"""Whole-slide batch generation: pyramid + provenance, equality with generate_region, resume after a kill,
worker-count independence, refusals and CLI messages (real dask clusters, tiny model, CPU)."""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_crafts.cli.generate import configure_parser, main, sample_seam_score
from napari_crafts.export import PROGRESS_GROUP, OmeZarrWriter, mean_downsample_2x, read_provenance
from napari_crafts.export.safety import foreign_files
from napari_crafts.export.watermark import payload_for, watermark_image
from napari_crafts.generation.region import (
    BACKGROUND_RGB,
    GenerationError,
    GenerationSettings,
    Region,
    generate_region,
    run,
)
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.generation.tissue import auto_from_labels
from napari_crafts.io.slide import SlideError, SlideRef, open_slide
from napari_crafts.model.engine import weights_sha256
from napari_crafts.wsi import job as batch
from napari_crafts.wsi.job import TILE_STORE, SlideArray, SlideOptions, generate_slide

FAST = dict(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=7, batch_size=2)
SETTINGS = GenerationSettings(**FAST)  # 5×5 tiles of 64 px (stride 48) over 256², rendered two per model call
MPP = 0.25


def write_labels(path: Path, labels: np.ndarray, mpp: float | None = MPP) -> Path:
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    tifffile.imwrite(path, labels, **res)
    return path


def level_arrays(path: Path) -> list[np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return [np.asarray(group[str(lv)]) for lv in range(len(group.attrs["multiscales"][0]["datasets"]))]


def chunk_files(path: Path) -> dict[str, bytes]:
    """Every file of the image levels (chunks and .zarray), by relative path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.relative_to(path).parts[0].isdigit()}


@pytest.fixture(scope="module")
def labels(nuclei: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """256² of the real DSB 2018 labels with the lower right corner cleared, so some tiles are empty."""
    lab = nuclei[1][:256, :256].copy()
    lab[120:, 120:] = 0
    return lab


@pytest.fixture(scope="module")
def source(labels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labels(tmp_path_factory.mktemp("src") / "labels.tif", labels)


@pytest.fixture(scope="module")
def straight(source: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run on a default local cluster of one worker, with a TIFF copy."""
    out = tmp_path_factory.mktemp("straight") / "slide.ome.zarr"
    result = generate_slide(source, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(n_workers=1, chunk=128, tiff=out.with_suffix(".tif")), progress=False)
    assert result == out
    return out


@pytest.fixture(scope="module")
def inproc():  # type: ignore[no-untyped-def]
    """A threaded in-process cluster (scheduler_address path; lets a test patch what workers run)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The workers' torch thread count (threads_per_worker=1) for generation in this thread: CPU pixels depend
    on it (model.threads pins it in whichever thread generates)."""
    from napari_crafts.model.threads import torch_threads

    with torch_threads(1):
        yield


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    code = main(parser.parse_args(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------- outcome


@pytest.mark.slow
def test_slide_becomes_complete_pyramid_with_scale_and_provenance(straight: Path, source: Path,
                                                                  tiny_model: Path) -> None:
    slide = open_slide(straight)
    assert slide.kind == "rgb" and slide.mpp == pytest.approx(MPP)
    assert [slide.level_shape(i) for i in range(len(slide.levels))] == [(256, 256), (128, 128), (64, 64)]
    levels = level_arrays(straight)
    for lower, upper in zip(levels, levels[1:], strict=False):  # each level the 2×2 mean of the one below
        np.testing.assert_array_equal(upper.transpose(1, 2, 0), mean_downsample_2x(lower.transpose(1, 2, 0)))
    prov = read_provenance(straight)
    assert prov["synthetic"] is True and prov["complete"] is True and "SYNTHETIC" in prov["warning"]
    assert prov["model"]["weights_sha256"] == weights_sha256(tiny_model)
    assert (prov["prompt"], prov["seed"], prov["steps"], prov["batch_size"]) == ("nuclei", 7, 2, 2)
    assert Path(prov["source"]["path"]) == source.resolve() and prov["source"]["mpp"] == MPP
    assert prov["source"]["mpp_from"] == "file" and prov["mode"] == "labels" and prov["version"]
    assert (prov["tile_size_source_px"], prov["overlap_source_px"], prov["tiles"]) == (64, 16, 25)
    assert prov["torch_threads_per_worker"] == 1
    assert not (straight / TILE_STORE).exists() and not (straight / PROGRESS_GROUP).exists()
    assert foreign_files(straight, kind="ome-zarr") == []  # --overwrite may replace it (export.safety)
    tif = open_slide(straight.with_suffix(".tif"))  # JPEG copy: same pyramid, scale and provenance
    assert tif.kind == "rgb" and tif.mpp == pytest.approx(MPP) and len(tif.levels) == 3
    assert read_provenance(straight.with_suffix(".tif"))["seed"] == 7
    jpeg = tif.read(0, 0, 0, 256, 256).astype(float)  # lossy on the tiny model's noise: compare colours
    assert np.abs(jpeg.mean(axis=(0, 1)) - levels[0].mean(axis=(1, 2))).max() < 3
    assert np.abs(jpeg[216:, 216:] - BACKGROUND_RGB).max() <= 2


@pytest.mark.slow
def test_level0_equals_generate_region_in_memory(straight: Path, labels: np.ndarray, engine) -> None:  # type: ignore[no-untyped-def]
    with one_torch_thread():
        ref = run(generate_region(engine, LabelsSource(labels, name="labels", mpp=MPP), Region(0, 0, 256, 256),
                                  SETTINGS, watermark=False))
    level0 = level_arrays(straight)[0].transpose(1, 2, 0)
    # same seams, same blending, then each 128-px chunk watermarked once with the payload of the stored record
    np.testing.assert_array_equal(level0, watermark_image(ref.rgb, payload_for(read_provenance(straight)), chunk=128))
    # the cleared corner is glass by the auto tissue rule (the same mask on the workers and here): exactly glass
    glass = auto_from_labels(LabelsSource(labels, mpp=MPP), (0, 0, 256, 256), MPP).alpha(0, 0, 256, 256) == 0
    assert glass[208:, 208:].all() and not glass[:120, :120].any()
    assert (ref.rgb[glass] == BACKGROUND_RGB).all()
    assert read_provenance(straight)["source"]["tissue"]["how"].startswith("auto from the nuclei")


@pytest.mark.slow
def test_two_workers_give_byte_identical_chunks(straight: Path, source: Path, tiny_model: Path,
                                                tmp_path: Path) -> None:
    out = generate_slide(source, tmp_path / "two.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(n_workers=2, chunk=128), progress=False)
    assert chunk_files(out) == chunk_files(straight)


@pytest.mark.slow
def test_killed_run_resumes_to_byte_identical_chunks(straight: Path, source: Path, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "killed.ome.zarr"
    code = (f"from napari_crafts.wsi.job import SlideOptions, generate_slide; from napari_crafts.generation.region import GenerationSettings; "
            f"generate_slide({str(source)!r}, {str(out)!r}, model={str(tiny_model)!r}, "
            f"settings=GenerationSettings(**{FAST!r}), options=SlideOptions(n_workers=1, chunk=128), progress=False)")
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the kill takes its workers too
    markers = out / TILE_STORE / PROGRESS_GROUP / "0"
    deadline = time.monotonic() + 240
    try:
        while len(list(markers.glob("*/*"))) < 3:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no tile was rendered in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert read_provenance(out)["complete"] is False
    tiles_before = len(list(markers.glob("*/*")))
    assert 3 <= tiles_before < 21
    assert foreign_files(out, kind="ome-zarr") == []  # a killed run's store: all of it is ours (export.safety)

    generate_slide(source, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(n_workers=1, chunk=128, resume=True), progress=False)
    assert read_provenance(out)["complete"] is True and not (out / TILE_STORE).exists()
    assert chunk_files(out) == chunk_files(straight)


# ------------------------------------------------------------------------------------------- refusals


def test_existing_output_is_refused_naming_resume_and_overwrite(straight: Path, source: Path, tiny_model: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        generate_slide(source, straight, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=128), progress=False)
    code, _, err = cli([str(source), str(straight), "--model", str(tiny_model), "--chunk", "128"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--resume" in err and "Traceback" not in err


def test_resume_with_other_seed_is_refused_and_finished_output_is_left_alone(straight: Path, source: Path,
                                                                             tiny_model: Path) -> None:
    before = chunk_files(straight)
    other = GenerationSettings(**{**FAST, "seed": 8})
    with pytest.raises(ValueError, match="provenance 'seed' differs"):
        generate_slide(source, straight, model=tiny_model, settings=other, options=SlideOptions(chunk=128, resume=True), progress=False)
    with pytest.raises(ValueError, match="torch_threads_per_worker"):  # CPU pixels depend on the thread count
        generate_slide(source, straight, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=128, resume=True, threads_per_worker=2), progress=False)
    # the same settings: nothing left to do, no cluster started, nothing rewritten
    generate_slide(source, straight, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=128, resume=True), progress=False)
    assert chunk_files(straight) == before


def test_missing_pixel_size_asks_for_mpp(labels: np.ndarray, tmp_path: Path, tiny_model: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = write_labels(tmp_path / "no_mpp.tif", labels, mpp=None)
    with pytest.raises(ValueError, match="--mpp"):
        generate_slide(src, tmp_path / "out.ome.zarr", model=tiny_model, settings=SETTINGS, progress=False)
    code, _, err = cli([str(src), str(tmp_path / "out.ome.zarr"), "--model", str(tiny_model)], capsys)
    assert code == 2 and err.count("\n") == 1 and "--mpp" in err
    assert not (tmp_path / "out.ome.zarr").exists()


def test_unreadable_and_rgb_sources_are_refused(tmp_path: Path, tiny_model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF")
    with pytest.raises(SlideError, match="broken.tif"):
        generate_slide(bad, tmp_path / "out.ome.zarr", model=tiny_model, settings=SETTINGS, progress=False)
    code, _, err = cli([str(bad), str(tmp_path / "out.ome.zarr"), "--model", str(tiny_model)], capsys)
    assert code == 2 and "broken.tif" in err and "Traceback" not in err
    rgb = tmp_path / "he.tif"
    tifffile.imwrite(rgb, np.zeros((64, 64, 3), np.uint8), photometric="rgb", resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")
    with pytest.raises(ValueError, match="RGB image.*--kind"):
        generate_slide(rgb, tmp_path / "out.ome.zarr", model=tiny_model, settings=SETTINGS, progress=False)


@pytest.mark.slow
def test_disk_full_says_free_space_and_resume(source: Path, tiny_model: Path, tmp_path: Path, inproc: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(OmeZarrWriter, "write_chunk", full)  # the in-process worker runs this class
    with pytest.raises(batch.DiskFull, match="disk full while writing .*free space and rerun with --resume"):
        generate_slide(source, tmp_path / "out.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=128, scheduler_address=inproc), progress=False)


@pytest.mark.slow
def test_labels_without_nuclei_are_refused_and_leave_nothing(tmp_path: Path, tiny_model: Path, inproc: str) -> None:
    src = write_labels(tmp_path / "blank.tif", np.zeros((100, 100), np.uint16))
    with pytest.raises(GenerationError, match="blank.tif has no nuclei"):
        generate_slide(src, tmp_path / "out.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=128, scheduler_address=inproc), progress=False)
    assert not (tmp_path / "out.ome.zarr").exists()


@pytest.mark.slow
def test_cli_generates_and_reports_seam_score(labels: np.ndarray, tmp_path: Path, tiny_model: Path, inproc: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = write_labels(tmp_path / "small.tif", labels[:112, :112], mpp=None)
    out = tmp_path / "small.ome.zarr"
    code, stdout, err = cli([str(src), str(out), "--model", str(tiny_model), "--mpp", "0.25", "--steps", "2",
                             "--tile-size", "64", "--overlap", "16", "--seed", "3", "--chunk", "64",
                             "--scheduler-address", inproc, "--cache-interval", "2", "--cfg-cutoff", "0.5"], capsys)
    assert code == 0, err
    assert "seam score" in stdout and f"synthetic H&E: {out}" in stdout
    prov = read_provenance(out)
    assert prov["complete"] and prov["seed"] == 3 and prov["source"]["mpp_from"] == "--mpp"
    assert prov["exact"] is False and prov["cache_interval"] == 2 and prov["cfg_cutoff"] == 0.5
    assert "full UNet every 2 steps" in prov["approximation"] and "50%" in prov["approximation"]
    border, interior = sample_seam_score(out)
    assert border < 1.2 * interior  # seam-free blending (tiny model ≈ 1)


@pytest.mark.slow
def test_fluorescence_source_matches_generate_region(nuclei: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                                     tiny_model: Path, inproc: str) -> None:
    img = nuclei[0][:112, :112]
    src = tmp_path / "dapi.tif"
    tifffile.imwrite(src, img[None], metadata={"axes": "CYX", "Channel": {"Name": ["DAPI"]}},
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    settings = GenerationSettings(**{**FAST, "batch_size": 1})
    out = generate_slide(src, tmp_path / "he.ome.zarr", model=tiny_model, settings=settings, options=SlideOptions(chunk=64, kind="channels", scheduler_address=inproc), progress=False)
    prov = read_provenance(out)
    assert prov["mode"] == "fluorescence" and prov["model"]["controlnet"] == "controlnet_fluorescence"
    from napari_crafts.generation.sources import FluorescenceSource
    from napari_crafts.model.engine import get_engine

    fluo = FluorescenceSource(img, name="dapi.tif", mpp=MPP)
    with one_torch_thread():
        ref = run(generate_region(get_engine(tiny_model), fluo, Region(0, 0, 112, 112), settings, watermark=False))
    assert prov["source"]["channels"] == fluo.describe()["channels"]  # same roles and limits (whole channel)
    np.testing.assert_array_equal(level_arrays(out)[0].transpose(1, 2, 0),
                                  watermark_image(ref.rgb, payload_for(prov), chunk=64))


# ------------------------------------------------------------------------------------------- pieces


def test_model_description_describes_like_the_loaded_engine(tiny_model: Path, engine) -> None:  # type: ignore[no-untyped-def]
    from napari_crafts.model.description import ModelDescription

    info = ModelDescription.open(tiny_model)  # what the client plans and describes with: no network loaded
    assert info.at(engine.runtime).describe(None, "labels") == engine.describe(None, "labels")
    assert (info.size_multiple, info.vae_scale_factor, info.mpp) == (engine.size_multiple, engine.vae_scale_factor,
                                                                     engine.mpp)
    assert info.truncated_tokens("x" * 100) == engine.truncated_tokens("x" * 100)



def test_slide_array_reads_windows_like_numpy_and_pickles(labels: np.ndarray, tmp_path: Path) -> None:
    src = write_labels(tmp_path / "l.tif", labels)
    arr = pickle.loads(pickle.dumps(SlideArray(SlideRef(str(src)), labels.shape, labels.dtype)))
    for key in [(slice(10, 20), slice(5, 9)), (Ellipsis, slice(3, 7), slice(None)), (5,), (slice(None, None, 2), 4),
                (slice(250, 300), slice(-3, None)), (slice(0, 1), slice(0, 1))]:
        np.testing.assert_array_equal(arr[key], labels[key])
    chans = np.stack([labels, labels * 2, labels + 1]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", chans, metadata={"axes": "CYX"})
    carr = SlideArray(SlideRef(str(tmp_path / "c.tif"), kind="channels"), chans.shape, chans.dtype)
    np.testing.assert_array_equal(carr[1, 2:5, 3:9], chans[1, 2:5, 3:9])
    np.testing.assert_array_equal(carr[..., 7:9, :4], chans[..., 7:9, :4])
    assert batch.open_source(src).shape == labels.shape  # opening reads no more than one pixel


@pytest.mark.slow
def test_geojson_nuclei_generate_like_the_labels_they_rasterise_to(labels: np.ndarray, tmp_path: Path,
                                                                   tiny_model: Path, inproc: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from napari_crafts.io.geojson import GeoJSONLabels
    from test_geojson import polygons_of, write_geojson

    geo = write_geojson(tmp_path / "nuclei.geojson", polygons_of(labels))
    code, _, err = cli([str(geo), str(tmp_path / "x.ome.zarr"), "--model", str(tiny_model)], capsys)
    assert code == 2 and "GeoJSON does not say the slide's pixel size; pass it with --mpp" in err
    assert not (tmp_path / "x.ome.zarr").exists()
    # unmarked: the two records differ (source path), so their watermarks would differ
    out = generate_slide(geo, tmp_path / "geo.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(mpp=MPP, chunk=64, scheduler_address=inproc, watermark=False), progress=False)
    raster = write_labels(tmp_path / "raster.tif", GeoJSONLabels(geo)[...])
    ref = generate_slide(raster, tmp_path / "ref.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=64, scheduler_address=inproc, watermark=False), progress=False)
    np.testing.assert_array_equal(level_arrays(out)[0], level_arrays(ref)[0])
    prov = read_provenance(out)
    assert prov["source"]["path"].endswith("nuclei.geojson") and prov["source"]["mpp_from"] == "--mpp"
