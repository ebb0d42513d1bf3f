"""Tissue extent (generation.tissue): the mask, its sources (auto, files, GeoJSON, arrays) and what generation does
with it — glass tiles never reach the model, tissue tiles always do (no holes), glass is composited around tissue."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from _data import CMU1_SVS
from napari_crafts.generation.region import (
    BACKGROUND_RGB,
    GenerationError,
    Region,
    TileDone,
    generate_region,
    plan_region,
    run,
)
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.generation.tissue import (
    TissueError,
    TissueMask,
    auto_from_fluorescence,
    auto_from_labels,
    composite,
    mask_from_array,
    mask_from_file,
)
from napari_crafts.wsi.job import SlideOptions

MPP = 0.5  # CMU-1's 0.499 µm/px, as the demo model's


# ── the mask ────────────────────────────────────────────────────────────────────────────────────────────


def test_alpha_is_one_inside_zero_outside_and_the_same_in_any_window() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    t = TissueMask(mask, (0.0, 0.0), (16.0, 16.0), "test")
    a = t.alpha(0, 0, 128, 128)
    assert a.dtype == np.float32 and a.min() == 0 and a.max() == 1
    assert (a[48:80, 48:80] == 1).all() and (a[:16, :] == 0).all()  # cores of tissue cells, far glass
    edge = a[64, 16:48]  # across the left edge: a ramp over one cell, no step
    assert np.all(np.diff(edge) >= 0) and 0 < edge[16] < 1
    # a pixel's alpha depends on its position only: any window gives the same values
    np.testing.assert_array_equal(t.alpha(30, 41, 50, 37), a[30:80, 41:78])


def test_touches_agrees_with_alpha_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = rng.random((int(rng.integers(1, 9)), int(rng.integers(1, 9)))) > 0.8
        t = TissueMask(m, (float(rng.integers(-5, 5)), float(rng.integers(-5, 5))),
                       (float(rng.uniform(0.5, 20)), float(rng.uniform(0.5, 20))), "random")
        y, x, h, w = (int(v) for v in (*rng.integers(-20, 120, 2), *rng.integers(1, 40, 2)))
        if t.alpha(y, x, h, w).max() > 0:
            assert t.touches(y, x, h, w)  # never calls a window with tissue glass
    empty = TissueMask(np.zeros((4, 4), bool), (0.0, 0.0), (8.0, 8.0), "none")
    assert not empty.touches(0, 0, 32, 32)


def test_composite_keeps_tissue_bit_for_bit_and_paints_glass() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    alpha = np.array([[1, 1, 0.5, 0]] * 4, np.float32)
    out = composite(img, alpha, (245, 243, 243))
    np.testing.assert_array_equal(out[:, :2], img[:, :2])
    assert (out[:, 3] == (245, 243, 243)).all()
    np.testing.assert_array_equal(out[:, 2], np.rint((img[:, 2].astype(np.float32) + [245, 243, 243]) / 2))
    assert composite(img, np.ones((4, 4), np.float32), (0, 0, 0)) is img


# ── masks given by the user ─────────────────────────────────────────────────────────────────────────────


def test_thumbnail_mask_covers_the_source_and_bad_masks_are_one_line(tmp_path: Path) -> None:
    from PIL import Image

    thumb = np.zeros((30, 40), np.uint8)
    thumb[:, :20] = 255  # left half is tissue
    Image.fromarray(thumb).save(tmp_path / "mask.png")
    t = mask_from_file(tmp_path / "mask.png", (300, 400))
    assert t.cell == (10.0, 10.0) and t.fraction == 0.5 and "mask.png" in t.how
    a = t.alpha(0, 0, 300, 400)
    assert (a[:, :190] == 1).all() and (a[:, 210:] == 0).all()
    with pytest.raises(TissueError, match="aspect ratios differ by more than 2%"):
        mask_from_array(np.ones((30, 60)), (300, 400), how="m")
    with pytest.raises(TissueError, match="larger than the source"):
        mask_from_array(np.ones((301, 400)), (300, 400), how="m")
    with pytest.raises(TissueError, match="marks no tissue"):
        mask_from_array(np.zeros((30, 40)), (300, 400), how="m")


def test_geojson_takes_tissue_annotations_and_ignores_detections(tmp_path: Path) -> None:
    def feature(kind: str, box: tuple[int, int, int, int], cls: str | None = None) -> dict:
        y0, x0, y1, x1 = box
        props: dict = {"objectType": kind}
        if cls:
            props["classification"] = {"name": cls}
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}

    doc = {"type": "FeatureCollection", "features": [
        feature("annotation", (0, 0, 100, 200), "Tissue"), feature("annotation", (200, 200, 300, 400), "Tumor"),
        feature("detection", (250, 0, 260, 10)),
    ]}
    (tmp_path / "a.geojson").write_text(json.dumps(doc))
    a = mask_from_file(tmp_path / "a.geojson", (300, 400)).alpha(0, 0, 300, 400)
    assert a[50, 100] == 1 and a[250, 300] == 0 and a[255, 5] == 0  # the tissue class only; nuclei never
    doc["features"][0]["properties"]["classification"]["name"] = "Stroma"  # none says tissue: all annotations
    (tmp_path / "b.geojson").write_text(json.dumps(doc))
    b = mask_from_file(tmp_path / "b.geojson", (300, 400)).alpha(0, 0, 300, 400)
    assert b[50, 100] == 1 and b[250, 300] == 1 and b[255, 5] == 0
    (tmp_path / "c.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]}))
    with pytest.raises(TissueError, match="holds no annotation polygons"):
        mask_from_file(tmp_path / "c.geojson", (300, 400))


# ── auto, on a real slide ───────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def cmu1() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CMU-1 H&E, its auto nuclei (pairs' segmenter, the demo model's settings) and its real tissue (16× down)."""
    import tifffile
    from skimage.color import rgb2hsv

    from napari_crafts.training.nuclei import NucleiParams, segment_slide

    rgb = tifffile.imread(CMU1_SVS, key=0)[..., :3]
    H, W = rgb.shape[:2]
    labels = np.zeros((H, W), np.int32)
    segment_slide(lambda y, x, h, w: rgb[y : y + h, x : x + w], (H, W), labels, mpp=0.499,
                  params=NucleiParams(min_solidity=0.7, min_area_um2=4.0))
    real = rgb2hsv(_down(rgb, 16) / 255.0)[..., 1] > 0.08  # the rule: saturation > 0.08 at 16× down
    return rgb, labels, real


def _down(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, -1).mean((1, 3)).astype(np.float64)


def _scores(mask: TissueMask, real: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    found = _down(mask.alpha(0, 0, *shape)[..., None], 16)[..., 0] >= 0.5
    return (found & real).sum() / (found | real).sum(), (found & ~real).sum() / (~real).sum()


@pytest.mark.slow
def test_auto_tissue_from_nuclei_and_from_fluorescence_matches_the_real_slide(cmu1) -> None:  # type: ignore[no-untyped-def]
    from napari_crafts.training.stain import simulated_if_source

    rgb, labels, real = cmu1
    shape = labels.shape
    iou, glass = _scores(auto_from_labels(LabelsSource(labels, mpp=MPP), (0, 0, *shape), MPP), real, shape)
    assert iou >= 0.8 and glass <= 0.15  # the targets for auto from labels (measured: 0.84, 0.07)
    fluo = simulated_if_source(lambda y, x, h, w: rgb[max(y, 0) : y + h, max(x, 0) : x + w], shape, mpp=MPP)
    iou, glass = _scores(auto_from_fluorescence(fluo, (0, 0, *shape), MPP), real, shape)
    assert iou >= 0.8 and glass <= 0.10  # fluorescence: glass ≤ 10 % (measured: 0.865, 0.078)


def test_auto_covers_the_region_drops_lone_specks_and_empty_labels_have_no_tissue() -> None:
    lab = np.zeros((1024, 1024), np.uint16)
    lab[64:192:16, 64:192:16] = 1  # a field of nuclei 4 µm apart
    t = auto_from_labels(LabelsSource(lab, mpp=0.25), (64, 64, 192, 192), 0.25)
    assert t.origin == (64.0, 64.0) and t.mask.shape == (4, 4) and t.mask.all()  # 32-px (8-µm) cells
    lab[:] = 0
    lab[500:510, 500:510] = 1  # one nucleus alone in 256 µm of glass: debris, not tissue (< 2500 µm²)
    assert not auto_from_labels(LabelsSource(lab, mpp=0.25), (0, 0, 1024, 1024), 0.25).mask.any()
    assert not auto_from_labels(LabelsSource(np.zeros((64, 64), np.uint8)), (0, 0, 64, 64), 0.25).mask.any()


# ── generation ──────────────────────────────────────────────────────────────────────────────────────────


def _count_calls(engine, monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = type(engine).generate

    def counted(self, noise, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(len(noise))
        return (yield from real(self, noise, *a, **k))

    monkeypatch.setattr(type(engine), "generate", counted)
    return calls


def test_glass_tiles_skip_the_model_and_tissue_tiles_without_nuclei_are_drawn(engine, fast, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lab = np.zeros((128, 256), np.uint16)
    lab[10:30, 10:30] = 1  # one nucleus, in the first tile
    tissue = np.zeros((128, 256), bool)
    tissue[:, :128] = True  # the left half is tissue, the right half glass
    settings = dataclasses.replace(fast, overlap=0)
    calls = _count_calls(engine, monkeypatch)
    events: list = []
    result = run(generate_region(engine, LabelsSource(lab, name="sparse", mpp=0.25, tissue=tissue),
                                 Region(0, 0, 128, 256), settings, watermark=False), events.append)
    assert result.tiles_generated == 4 and result.tiles_skipped == 4 and sum(calls) == 4  # 2×4 tiles of 64 px
    assert [e.skipped for e in events if isinstance(e, TileDone)] == [True] * 4 + [False] * 4
    assert (result.rgb[:, 130:] == BACKGROUND_RGB).all()  # glass, exactly
    nucleus_free = result.rgb[64:, 64:128].astype(float)  # tissue without a nucleus: drawn, not a white hole
    assert np.abs(nucleus_free.mean((0, 1)) - BACKGROUND_RGB).max() > 5 and nucleus_free.std() > 2
    prov = result.provenance
    assert prov["source"]["tissue"]["tissue_fraction"] == 0.5 and "mask array" in prov["source"]["tissue"]["how"]
    assert prov["source"]["tissue_spec"].startswith("a mask array")


def test_tissue_pixels_are_the_models_bit_for_bit(engine, fast) -> None:  # type: ignore[no-untyped-def]
    lab = np.zeros((128, 128), np.uint16)
    lab[20:40, 20:40], lab[80:100, 70:90] = 1, 2
    tissue = np.ones((16, 16), bool)
    tissue[:, 12:] = False  # glass on the right quarter
    region, settings = Region(0, 0, 128, 128), dataclasses.replace(fast, overlap=0)
    everything = run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue="all"), region, settings,
                                     watermark=False)).rgb
    masked = run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue=tissue), region, settings,
                                 watermark=False)).rgb
    np.testing.assert_array_equal(masked[:, :88], everything[:, :88])  # alpha 1 up to one cell (8 px) from glass
    assert (masked[:, 104:] == BACKGROUND_RGB).all() and not (everything[:, 104:] == BACKGROUND_RGB).all()
    ramp = masked[:, 88:104].astype(float)  # the feathered edge lies between the model's pixels and the glass
    assert np.isfinite(ramp).all() and (ramp.mean() > everything[:, 88:104].mean() - 1)


def test_a_mask_without_tissue_is_refused_and_nuclei_outside_the_mask_are_noted(engine, fast) -> None:  # type: ignore[no-untyped-def]
    lab = np.zeros((128, 128), np.uint16)
    lab[10:20, 10:20], lab[100:110, 100:110] = 1, 2
    left = np.zeros((128, 128), bool)
    left[:, :64] = True
    settings = dataclasses.replace(fast, overlap=0)
    result = run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue=left), Region(0, 0, 128, 128), settings))
    assert "1 tile(s) hold nuclei or signal outside the tissue mask: they are drawn as glass." in result.notes
    with pytest.raises(GenerationError, match="marks no tissue in this region"):  # nucleus 2, on glass
        run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue=left), Region(96, 96, 32, 32), settings))
    with pytest.raises(TissueError, match="marks no tissue"):
        run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue=np.zeros((16, 16))), Region(0, 0, 64, 64),
                            settings))


def test_auto_tissue_leaves_glass_far_from_nuclei(engine, fast) -> None:  # type: ignore[no-untyped-def]
    lab = np.zeros((256, 768), np.uint16)  # 64 × 192 µm at 0.25 µm/px: nuclei on the left third only
    rng = np.random.default_rng(3)
    for i, (y, x) in enumerate(rng.integers(8, 240, (40, 2)) * [1, 0.3], start=1):
        lab[int(y) : int(y) + 8, int(x) : int(x) + 8] = i
    region = Region(0, 0, 256, 768)
    result = run(generate_region(engine, LabelsSource(lab, mpp=0.25), region, fast, watermark=False))
    plan = plan_region(LabelsSource(lab, mpp=0.25), region, engine, fast)
    assert result.tiles_skipped > 0 and result.tiles_generated + result.tiles_skipped == len(plan.grid)
    assert (result.rgb[:, -150:] == BACKGROUND_RGB).all()  # > 48 µm + 8 µm from any nucleus: glass
    assert "auto from the nuclei" in result.provenance["source"]["tissue"]["how"]


# ── the docks' tissue choice, in a real viewer ──────────────────────────────────────────────────────────


def test_docks_take_tissue_from_a_shapes_or_labels_layer_over_the_source(make_napari_viewer) -> None:  # type: ignore[no-untyped-def]
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    _, fluo = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    lab = viewer.add_labels(np.zeros((200, 300), np.uint16), name="nuclei", scale=(0.5, 0.5), translate=(10, 20))
    # a polygon over the left third of the labels, in world coordinates (µm)
    poly = np.array([[10, 20], [10, 20 + 50], [10 + 100, 20 + 50], [10 + 100, 20]], float)
    viewer.add_shapes([poly], shape_type="polygon", name="tissue outline")
    thumb = np.zeros((20, 30), np.uint8)
    thumb[:10] = 1  # the top half, as a thumbnail placed over the labels
    viewer.add_labels(thumb, name="tissue thumbnail", scale=(5, 5), translate=(12.25, 22.25))  # edges on edges
    viewer.add_labels(thumb, name="elsewhere", scale=(5, 5), translate=(500, 500))
    dock.reset_choices()
    assert dock.tissue.choices[:2] == ("auto", "everywhere") and "tissue outline" in dock.tissue.choices
    assert "tissue outline" in fluo.tissue.choices
    assert dock.tissue.spec(lab, (200, 300)) == "auto"
    dock.tissue.value = "everywhere"
    assert dock.tissue.spec(lab, (200, 300)) == "all"
    dock.tissue.value = "tissue outline"
    mask = mask_from_array(dock.tissue.spec(lab, (200, 300)), (200, 300), how="shapes").alpha(0, 0, 200, 300)
    assert (mask[:, :95] == 1).all() and (mask[:, 105:] == 0).all()  # 50 µm = 100 px wide
    dock.tissue.value = "tissue thumbnail"
    mask = mask_from_array(dock.tissue.spec(lab, (200, 300)), (200, 300), how="labels").alpha(0, 0, 200, 300)
    assert (mask[:90] == 1).all() and (mask[110:] == 0).all()
    dock.tissue.value = "elsewhere"
    with pytest.raises(TissueError, match="another coordinate system"):
        dock.tissue.spec(lab, (200, 300))
    dock.tissue.value = "nuclei"
    with pytest.raises(TissueError, match="is the source itself"):
        dock.tissue.spec(lab, (200, 300))


# ── the whole-slide path and the CLI ────────────────────────────────────────────────────────────────────


def test_generate_cli_refuses_bad_tissue_masks_in_one_line_before_anything_starts(tmp_path: Path, tiny_model: Path,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # noqa: E501
    import tifffile
    from PIL import Image

    from napari_crafts.cli import main

    lab = np.zeros((128, 256), np.uint16)
    lab[10:30, 10:30] = 1
    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, lab, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "square.png")  # 1:1 against 1:2
    (tmp_path / "points.geojson").write_text(json.dumps({"type": "Feature", "properties": {},
                                                          "geometry": {"type": "Point", "coordinates": [1, 2]}}))
    before = sorted(p.name for p in tmp_path.iterdir())
    for mask, says in (("missing.png", "no such file"), ("square.png", "aspect ratios differ"),
                       ("points.geojson", "holds no annotation polygons")):
        code = main(["generate", str(src), str(tmp_path / "out.ome.zarr"), "--model", str(tiny_model),
                     "--tissue", str(tmp_path / mask)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.slow
def test_whole_slide_with_a_geojson_mask_equals_generate_region(tmp_path: Path, tiny_model: Path, nuclei) -> None:  # type: ignore[no-untyped-def]
    import tifffile
    from distributed import LocalCluster

    from napari_crafts.export import read_provenance
    from napari_crafts.export.watermark import payload_for, watermark_image
    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.model.engine import get_engine
    from napari_crafts.model.threads import torch_threads
    from napari_crafts.wsi.job import generate_slide

    lab = nuclei[1][:128, :128]
    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, lab, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    ring = [[0, 0], [80, 0], [80, 128], [0, 128], [0, 0]]  # x, y: the left 80 px are tissue
    (tmp_path / "tissue.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}}]}))
    settings = GenerationSettings(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=7, batch_size=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        out = generate_slide(src, tmp_path / "he.ome.zarr", model=tiny_model, settings=settings, options=SlideOptions(chunk=64, tissue=tmp_path / "tissue.geojson", scheduler_address=cluster.scheduler_address), progress=False)
    prov = read_provenance(out)
    assert "GeoJSON tissue.geojson: 1 classified tissue/region annotation" in prov["source"]["tissue"]["how"]
    with torch_threads(1):
        ref = run(generate_region(get_engine(tiny_model), LabelsSource(lab, name="labels.tif", mpp=0.25,
                                                                       tissue=tmp_path / "tissue.geojson"),
                                  Region(0, 0, 128, 128), settings, watermark=False))
    import zarr

    level0 = np.asarray(zarr.open_group(out, mode="r")["0"]).transpose(1, 2, 0)
    np.testing.assert_array_equal(level0, watermark_image(ref.rgb, payload_for(prov), chunk=64))
    assert (ref.rgb[:, 88:] == BACKGROUND_RGB).all() and ref.tiles_skipped == 3  # the tiles at x ≥ 96 are glass
    assert "3 tile(s) hold nuclei or signal outside the tissue mask: they are drawn as glass." in ref.notes
