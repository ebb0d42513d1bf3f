"""The empty-tile scan of whole-slide runs: the same answer as asking every tile, while reading little."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from napari_crafts.generation.region import Plan, Region
from napari_crafts.generation.sources import FluorescenceSource, LabelsSource
from napari_crafts.generation.tiling import TileGrid
from napari_crafts.io.geojson import GeoJSONLabels
from napari_crafts.wsi import scan
from napari_crafts.wsi.source_file import open_source


def brute_force(source: Any, plan: Plan) -> np.ndarray:
    g, (y, x) = plan.grid, plan.region.box[:2]
    return np.array([[source.is_empty(y + r * g.stride, x + c * g.stride, g.tile) for c in range(g.cols)]
                     for r in range(g.rows)], dtype=bool)


def make_plan(shape: tuple[int, int], tile: int, overlap: int, origin: tuple[int, int] = (0, 0)) -> Plan:
    region = Region(*origin, *shape)
    return Plan(region, 1.0, tile, TileGrid(shape[0], shape[1], tile, overlap), 1)


class Recorder:
    """run_tasks as a plain loop, remembering what was asked."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __call__(self, name: str, fn: Any, groups: Any) -> list[Any]:
        self.calls[name] = self.calls.get(name, 0) + sum(len(g) for g in groups)
        return [fn(g) for g in groups]


def sparse_labels(shape: tuple[int, int], nuclei: np.ndarray, spots: list[tuple[int, int]]) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    for y, x in spots:
        patch = nuclei[: min(90, shape[0] - y), : min(90, shape[1] - x)]
        lab[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    lab[shape[0] - 1, 5] = 7  # a single pixel at the very edge still counts
    return lab


SPOTS = [(0, 0), (300, 410), (610, 95), (700, 700)]


@pytest.mark.parametrize(("tile", "overlap"), [(128, 64), (128, 0), (100, 20), (64, 16)])
def test_labels_scan_equals_asking_every_tile(nuclei: tuple[np.ndarray, np.ndarray], tile: int, overlap: int) -> None:
    lab = sparse_labels((777, 801), nuclei[1], SPOTS)
    source = LabelsSource(lab, name="sparse", mpp=0.5)
    plan = make_plan(lab.shape, tile, overlap)
    run = Recorder()
    np.testing.assert_array_equal(scan.scan_empty(source, plan, run), brute_force(source, plan))
    cell, exact = scan.choose_cell(plan.grid, lab.shape)
    assert exact == (math.gcd(tile, tile - overlap) >= scan.MIN_CELL)
    if exact:  # cells tile the grid: no tile is read on its own
        assert "tiles" not in run.calls


def test_zarr_store_reads_only_its_stored_chunks(nuclei: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    lab = sparse_labels((1000, 1200), nuclei[1], SPOTS)
    path = tmp_path / "labels.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    arr = root.create_array("0", shape=lab.shape, chunks=(128, 128), dtype="int32", fill_value=0,
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[:] = lab  # zarr leaves all-zero chunks out of the store
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]}]
    source = open_source(path)
    stored_shape, stored = scan.stored_chunks(source.data)
    assert stored_shape == (128, 128)
    expected = np.array([[lab[y : y + 128, x : x + 128].any() for x in range(0, 1200, 128)]
                         for y in range(0, 1000, 128)])
    np.testing.assert_array_equal(stored, expected)
    with scan.level0_reader(source.data) as read:  # straight from the zarr array, same pixels
        np.testing.assert_array_equal(read(100, 130, 200, 300), lab[100:300, 130:430])
    plan = make_plan(lab.shape, 128, 64)
    occ = scan.plan_occupancy(source, plan)
    assert len(occ.blocks) == expected.sum() and occ.skipped == expected.size - expected.sum()
    np.testing.assert_array_equal(scan.scan_empty(source, plan, Recorder()), brute_force(source, plan))


def test_tiff_with_empty_tiles_left_out(nuclei: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    lab = sparse_labels((512, 640), nuclei[1], [(0, 0), (300, 410)])
    path = tmp_path / "labels.tif"
    tiles = [(lab[y : y + 128, x : x + 128] if lab[y : y + 128, x : x + 128].any() else None)
             for y in range(0, 512, 128) for x in range(0, 640, 128)]
    with tifffile.TiffWriter(path) as tif:  # tiles that are all 0 are not written (byte count 0)
        tif.write(iter(tiles), shape=lab.shape, dtype=np.int32, tile=(128, 128), resolution=(2e4, 2e4),
                  resolutionunit="CENTIMETER", compression="zlib")
    source = open_source(path)
    index = scan.stored_chunks(source.data)
    assert index is not None and index[0] == (128, 128)
    np.testing.assert_array_equal(index[1].ravel(), [t is not None for t in tiles])
    with scan.level0_reader(source.data) as read:
        np.testing.assert_array_equal(read(250, 390, 200, 250), lab[250:450, 390:640])
    plan = make_plan(lab.shape, 128, 64)
    np.testing.assert_array_equal(scan.scan_empty(source, plan, Recorder()), brute_force(source, plan))


def test_geojson_boxes_and_a_tile_check_where_boxes_fall(tmp_path: Path) -> None:
    def square(y: int, x: int, s: int) -> dict[str, Any]:
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}

    # a sliver whose box reaches into a tile its pixels do not: the box is only a hint, the tile check decides
    sliver = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[200.0, 255.6], [400.0, 255.6], [400.0, 255.9], [200.0, 255.9], [200.0, 255.6]]]}}
    doc = {"type": "FeatureCollection", "features": [square(10, 10, 20), square(500, 620, 30), sliver]}
    path = tmp_path / "nuclei.geojson"
    path.write_text(json.dumps(doc))
    source = LabelsSource(GeoJSONLabels(path), name="nuclei", mpp=0.5)
    plan = make_plan(source.shape, 128, 0)
    run = Recorder()
    np.testing.assert_array_equal(scan.scan_empty(source, plan, run), brute_force(source, plan))
    assert "scan" not in run.calls and 0 < run.calls["tiles"] < len(plan.grid)


def test_fluorescence_is_checked_tile_by_tile(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    img = np.zeros((2, 300, 280), np.uint16)
    img[0, :120, :100] = nuclei[0][:120, :100]
    source = FluorescenceSource(img, channel_names=["DAPI", "other"], roles={0: "nuclear", 1: "other"},
                                limits={0: (10.0, 200.0)})
    plan = make_plan((300, 280), 64, 16)
    np.testing.assert_array_equal(scan.scan_empty(source, plan, Recorder()), brute_force(source, plan))


def test_boxes_occupancy_marks_exactly_the_cells_under_boxes() -> None:
    occ = scan.Occupancy(cell=10, exact=False, shape=(5, 6), blocks=[])
    got = scan.boxes_occupancy(np.array([[0, 0, 1, 1], [15, 25, 31, 26], [48, 58, 60, 70]]), occ, (0, 0))
    want = np.zeros((5, 6), bool)
    want[0, 0] = True
    want[1:4, 2] = True
    want[4, 5] = True
    np.testing.assert_array_equal(got, want)
