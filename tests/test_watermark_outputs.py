"""Every synthetic output carries the watermark, put in once, and ``check`` finds it with a payload matching the
output's own record: the in-memory result (layer data), the writers (OME-TIFF, OME-Zarr, PNG), an output read back
as a layer, the demo, the whole-slide path (OME-Zarr and its JPEG OME-TIFF), and a stopped run's kept tiles.
Turning it off is recorded (tiny random model, CPU, real DSB 2018 labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_crafts.export import read_provenance
from napari_crafts.export import watermark as wm
from napari_crafts.export.check import ImageReport, check_array, check_paths
from napari_crafts.generation.region import (
    GenerationSettings,
    Region,
    RegionResult,
    TileDone,
    generate_region,
    run,
)
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.model.threads import torch_threads
from napari_crafts.wsi.job import SlideOptions

SIZE, MPP = 256, 0.25
SETTINGS = GenerationSettings(steps=1, tile_size=64, overlap=16, prompt="nuclei", seed=7, batch_size=4)


@pytest.fixture(scope="module")
def labels(nuclei: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """256² of real nuclei labels, a corner cleared (glass: tiles that never reach the model)."""
    lab = nuclei[1][:SIZE, :SIZE].copy()
    lab[170:, 170:] = 0
    return lab


def _generate(engine: Any, labels: np.ndarray, **kwargs: Any) -> tuple[RegionResult, np.ndarray]:
    """generate_region's result, and the image its TileDone events painted (what the viewer showed)."""
    shown = np.zeros((*labels.shape, 3), np.uint8)

    def paint(event: Any) -> None:
        if isinstance(event, TileDone):
            y0, x0, y1, x1 = event.box
            shown[y0:y1, x0:x1] = event.rgb

    with torch_threads(1):  # the whole-slide workers' count: same pixels
        source = LabelsSource(labels, name="nuclei", mpp=MPP)
        result = run(generate_region(engine, source, Region(0, 0, *labels.shape), SETTINGS, **kwargs), paint)
    return result, shown


@pytest.fixture(scope="module")
def region(engine: Any, labels: np.ndarray) -> tuple[RegionResult, np.ndarray]:
    return _generate(engine, labels)


def _assert_matches(rep: ImageReport, record: dict[str, Any]) -> None:
    assert rep.error is None and rep.synthetic, rep.verdict
    assert rep.watermark["found"] and rep.watermark["z"] >= wm.Z_THRESHOLD
    assert rep.watermark["payload"] == record["watermark"]["payload"] == wm.payload_for(record).hex
    assert rep.record_match is True and "they match" in rep.verdict


# --------------------------------------------------------------------------------------------- in memory


def test_region_result_is_marked_once_after_blending(region: tuple[RegionResult, np.ndarray]) -> None:
    result, shown = region
    record = result.provenance
    assert record["watermark"]["enabled"] is True and record["watermark"]["method"] == "napari-crafts cell-sign"
    # the tiles shown during the run are the blended image without the mark; the result is that image marked
    # once, on its 512-px chunk grid (the whole-slide writer's default)
    np.testing.assert_array_equal(result.rgb, wm.watermark_image(shown, wm.payload_for(record)))
    assert 0 < np.count_nonzero(result.rgb != shown) and np.abs(result.rgb.astype(int) - shown).max() <= wm.MAX_DELTA
    _assert_matches(check_array(result.rgb, record, name="layer"), record)
    assert not check_array(shown, record).watermark["found"]  # previews carry no mark


def test_turned_off_in_the_api_is_recorded_and_leaves_the_pixels(engine: Any, labels: np.ndarray,
                                                                  region: tuple[RegionResult, np.ndarray]) -> None:
    result, shown = _generate(engine, labels, watermark=False)
    np.testing.assert_array_equal(result.rgb, shown)
    np.testing.assert_array_equal(result.rgb, region[1])  # the same generation, unmarked
    assert result.provenance["watermark"] == wm.describe_no_watermark("watermark=False")
    rep = check_array(result.rgb, result.provenance)
    assert rep.synthetic and not rep.watermark["found"]
    assert rep.verdict == "SYNTHETIC: the provenance record says so; no watermark found (the record says it was " \
                          "turned off)"


# --------------------------------------------------------------------------------------------- files


def test_writers_store_the_marked_pixels_as_they_are(region: tuple[RegionResult, np.ndarray], tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    from napari_crafts._reader import read_slide
    from napari_crafts._writer import save_layer_data

    result, _ = region
    meta = {"name": "synthetic H&E (CRAFTS) · nuclei", "scale": (MPP, MPP), "units": ("µm", "µm"),
            "metadata": {"napari_crafts": result.provenance}}
    for name, kind in (("he.ome.tif", "ome-tiff"), ("he.ome.zarr", "ome-zarr"), ("he.png", "png")):
        save_layer_data(str(tmp_path / name), result.rgb, meta, kind=kind)
    reports = check_paths([tmp_path])
    assert sorted(Path(r.path).name for r in reports) == ["he.ome.tif", "he.ome.zarr", "he.png"]
    for rep in reports:
        _assert_matches(rep, result.provenance)
    with Image.open(tmp_path / "he.png") as png:  # lossless and not marked a second time
        np.testing.assert_array_equal(np.asarray(png), result.rgb)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "he.ome.tif", level=0), result.rgb)
    # opened again as a layer: the reader adds path/kind/mpp to the record, which the hash leaves out
    data, layer_meta, _ = read_slide(str(tmp_path / "he.ome.zarr"))[0]
    layer_record = layer_meta["metadata"]["napari_crafts"]
    assert {"path", "kind", "mpp"} <= set(layer_record)
    _assert_matches(check_array(data[0] if isinstance(data, list) else data, layer_record), result.provenance)


def test_stack_images_keep_their_own_records(engine: Any, tmp_path: Path) -> None:
    """Prompt → H&E stacks: each image is marked with its own record, which the writer stores with stack_index."""
    from napari_crafts._writer import save_layer_data
    from napari_crafts.generation.job import prompt_images

    settings = GenerationSettings(steps=1, tile_size=64, overlap=16, prompt="tissue", seed=2)
    with torch_threads(1):
        result = run(prompt_images(engine, settings, 2, 256, 256))
    meta = {"name": "stack", "metadata": {"napari_crafts": result.provenance}}
    written = save_layer_data(str(tmp_path / "p.png"), result.rgb, meta, kind="png")
    for i, path in enumerate(written):
        (rep,) = check_paths([path])
        _assert_matches(rep, result.provenance["images"][i])


def test_demo_outputs_match_their_record(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from napari_crafts.cli import main

    small = ["--size", "192", "--steps", "1", "--tile-size", "64", "--overlap", "16", "--model", str(tiny_model)]
    assert main(["demo", "--out", str(tmp_path / "on"), *small]) == 0
    record = json.loads((tmp_path / "on" / "provenance.json").read_text())
    assert "seam_score" in record and f"watermark: payload {record['watermark']['payload']}" in capsys.readouterr().out
    reports = check_paths([tmp_path / "on"])  # the OME-Zarr and the PNG (synthetic beside the labels)
    assert len(reports) == 2
    for rep in reports:
        _assert_matches(rep, record)
    assert main(["demo", "--out", str(tmp_path / "off"), *small, "--no-watermark"]) == 0
    off = json.loads((tmp_path / "off" / "provenance.json").read_text())
    assert off["watermark"] == wm.describe_no_watermark("--no-watermark")
    assert "watermark: off (--no-watermark)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- whole slide


@pytest.mark.slow
def test_whole_slide_chunks_are_marked_after_blending(labels: np.ndarray, region: tuple[RegionResult, np.ndarray],
                                                      tiny_model: Path, tmp_path: Path) -> None:
    import tifffile
    import zarr
    from distributed import LocalCluster

    from napari_crafts.export import mean_downsample_2x
    from napari_crafts.wsi.job import generate_slide

    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, labels, resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    out, tif = tmp_path / "he.ome.zarr", tmp_path / "he.ome.tif"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        generate_slide(src, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=64, tiff=tif, scheduler_address=cluster.scheduler_address), progress=False)
    record = read_provenance(out)
    group = zarr.open_group(out, mode="r")
    level0, level1 = (np.asarray(group[str(lv)]).transpose(1, 2, 0) for lv in (0, 1))
    # the unmarked in-memory image (same tiles, same blending), each 64-px chunk marked once at its origin
    np.testing.assert_array_equal(level0, wm.watermark_image(region[1], wm.payload_for(record), chunk=64))
    np.testing.assert_array_equal(level1, mean_downsample_2x(level0))  # the pyramid is built from marked level 0
    for rep in check_paths([out, tif]):  # the TIFF copy is JPEG 90
        _assert_matches(rep, record)
    assert wm.detect_watermark(level1).found  # level 1 carries it as 2-px cells


def test_whole_slide_refuses_chunks_off_the_cell_grid(labels: np.ndarray, tiny_model: Path, tmp_path: Path) -> None:
    import tifffile

    from napari_crafts.wsi.job import generate_slide

    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, labels[:64, :64])
    with pytest.raises(ValueError, match=r"--chunk 18: the watermark needs chunks on its 4-px cell grid: use a "
                                         r"multiple of 4 \(e.g. 16\)"):
        generate_slide(src, tmp_path / "o.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=18), progress=False)
    assert not (tmp_path / "o.ome.zarr").exists()


def test_cli_flags_turn_it_off_by_name() -> None:
    from napari_crafts.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["generate", "a.tif", "b.zarr", "--model", "m", "--no-watermark"]).no_watermark
    assert not parser.parse_args(["generate", "a.tif", "b.zarr", "--model", "m"]).no_watermark
    assert parser.parse_args(["demo", "--no-watermark"]).no_watermark


# --------------------------------------------------------------------------------------------- stopped runs


def test_kept_tiles_of_a_stopped_run_are_marked_once(region: tuple[RegionResult, np.ndarray]) -> None:
    _, shown = region
    layer = np.zeros((2, SIZE, SIZE, 4), np.uint8)  # a stack layer: plane 0 half painted, plane 1 never
    layer[0, :, :160, :3], layer[0, :, :160, 3] = shown[:, :160], 255
    record: dict[str, Any] = {"synthetic": True, "status": "cancelled after 9/25 tiles", "tiles_done": 9}
    assert wm.mark_kept_pixels(layer, record) is True
    assert record["watermark"]["payload"] == wm.payload_for(record).hex
    assert not layer[1].any() and not layer[0, :, 160:].any()  # unpainted pixels stay transparent black
    painted = np.ascontiguousarray(layer[0, :, :160, :3])
    assert (painted != shown[:, :160]).any()
    _assert_matches(check_array(layer[0], record), record)
    before = layer.copy()
    assert wm.mark_kept_pixels(layer, record) is False  # already marked: never twice
    off = {"synthetic": True, "watermark": wm.describe_no_watermark("napari: watermark unchecked")}
    assert wm.mark_kept_pixels(layer, off) is False
    np.testing.assert_array_equal(layer, before)
