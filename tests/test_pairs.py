"""napari-crafts pairs: registration of controls and H&E, the held-out split, the card, simulated IF, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from skimage.draw import disk

from _data import CMU1_SVS as CMU1
from napari_crafts.export.safety import OutputError, OutputExists
from napari_crafts.generation.sources import FluorescenceSource, LabelsSource, resize
from napari_crafts.io.slide import open_slide
from napari_crafts.training.pairs import FORMAT, PairsError, build_pairs, iter_pairs
from napari_crafts.training.stain import haematoxylin_od

SRC_MPP, MODEL_MPP = 0.4, 0.5  # a 40 px model tile covers 50 source px
PINK, PURPLE = (235, 160, 200), (80, 30, 120)
SHAPE = (420, 300)


def write_tiff(path: Path, data: np.ndarray, mpp: float | None = SRC_MPP, **kw) -> Path:  # type: ignore[no-untyped-def]
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    rgb = {"photometric": "rgb"} if data.ndim == 3 and data.shape[-1] == 3 else {}
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", **rgb, **res, **kw)
    return path


def disc_labels(shape: tuple[int, int] = SHAPE, r: int = 7, seed: int = 0) -> np.ndarray:
    """Nuclei on a jittered grid, plus one pair of touching nuclei; label i+1 for disc i."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for cy in range(15, shape[0] - 10, 28):
        for cx in range(15, shape[1] - 10, 28):
            jy, jx = rng.integers(-4, 5, 2)
            if abs(cy - 120) > 25 or abs(cx - 150) > 25:
                k += 1
                labels[disk((cy + jy, cx + jx), r, shape=shape)] = k
    labels[disk((120, 145), 6, shape=shape)] = k + 1
    labels[disk((120, 156), 6, shape=shape)] = k + 2
    return labels


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic H&E whose dark discs are exactly its nuclear labels (TIFFs at 0.4 µm/px)."""
    d = tmp_path_factory.mktemp("scene")
    labels = disc_labels()
    rgb = np.empty((*SHAPE, 3), np.uint8)
    rgb[:] = PINK
    rgb[labels > 0] = PURPLE
    rgb[:, 250:] = 245  # glass on the right: no tissue there
    labels[:, 250:] = 0
    return {"he": write_tiff(d / "he.tif", rgb), "labels": write_tiff(d / "labels.tif", labels), "rgb": rgb,
            "labels_array": labels, "dir": d}


def rows(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]


def png(out: Path, split: str, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / split / rel))


@pytest.fixture(scope="module")
def labelled(scene: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "pairs"
    return build_pairs(scene["he"], out, nuclei=scene["labels"], mpp=MODEL_MPP, tile_px=40, stride_px=20,
                       test_band=(270, 420), min_tissue=0.5, category="synthetic discs")


# ------------------------------------------------------------------------------------------ registration


def test_controls_sit_on_the_nuclei_of_their_he_tile(scene, labelled):
    """Each control tile is LabelsSource.control of its box, its H&E is the same box resized, and the nuclei
    of the control coincide with the dark pixels of the H&E: a 1-px shift or a scale error would break this."""
    source = LabelsSource(scene["labels_array"], mpp=SRC_MPP)
    checked = 0
    for split in ("train", "test"):
        for row in rows(labelled, split):
            y, x, s = row["y"], row["x"], row["size_source_px"]
            assert s == 50  # round(40 px × 0.5 / 0.4)
            control, he = png(labelled, split, row["control_labels"]), png(labelled, split, row["he"])
            assert control.shape == he.shape == (40, 40, 3) and control.dtype == he.dtype == np.uint8
            np.testing.assert_array_equal(control, source.control(y, x, s, 40))
            np.testing.assert_array_equal(he, resize(scene["rgb"][y : y + s, x : x + s], 40))
            dark, nuclei = he[..., 0] < 160, control[..., 0] > 0
            iou = {(dy, dx): (np.roll(dark, (dy, dx), (0, 1)) & nuclei)[2:-2, 2:-2].sum()
                   / (np.roll(dark, (dy, dx), (0, 1)) | nuclei)[2:-2, 2:-2].sum()
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
            assert iou[0, 0] > 0.85 and iou[0, 0] == max(iou.values())
            checked += 1
    assert checked > 20


def test_touching_nuclei_keep_their_boundary(scene, labelled):
    row = next(r for r in rows(labelled, "train") if r["y"] <= 110 and r["x"] <= 135
               and r["y"] + 50 >= 130 and r["x"] + 50 >= 165)
    control = png(labelled, "train", row["control_labels"])[..., 0]
    # between the two touching discs (source x 150–151 at y 120) the control has a black line
    yy, xx = round((120 - row["y"]) * 0.8), round((150.5 - row["x"]) * 0.8)
    assert control[yy, xx - 3] == 255 and control[yy, xx + 3] == 255 and (control[yy, xx - 1 : xx + 2] == 0).any()


# ------------------------------------------------------------------------------------------ split and card


def test_split_holds_out_a_band_with_a_gap(labelled):
    card = json.loads((labelled / "dataset.json").read_text())
    train, test = rows(labelled, "train"), rows(labelled, "test")
    s = card["size_source_px"]
    assert train and test
    assert all(r["y"] >= 270 and r["y"] + s <= 420 for r in test)
    for t in test:  # no test tile within one tile of any train tile's box
        for r in train:
            gap = max(t["y"] - (r["y"] + s), r["y"] - (t["y"] + s), t["x"] - (r["x"] + s), r["x"] - (t["x"] + s))
            assert gap >= s
    c = card["counts"]
    ny, nx = (SHAPE[0] - s) // 25 + 1, (SHAPE[1] - s) // 25 + 1
    assert c["train"] + c["test"] + c["skipped_no_tissue"] + c["skipped_no_nuclei"] + c["dropped_near_band"] == ny * nx
    assert c["dropped_near_band"] > 0 and c["skipped_no_tissue"] > 0
    assert card["split"]["band"] == [270, 420] and card["split"]["guard_px"] == s


def test_default_band_is_the_bottom_rows(scene, tmp_path):
    events = []
    out = build_pairs(scene["he"], tmp_path / "p", nuclei=scene["labels"], mpp=MODEL_MPP, tile_px=40,
                      stride_px=20, test_fraction=0.25, on_progress=events.append)
    card = json.loads((out / "dataset.json").read_text())
    assert [e.done for e in events] == list(range(1, events[-1].total + 1))  # one event per tile position
    assert (events[-1].train, events[-1].test) == (card["counts"]["train"], card["counts"]["test"])
    assert card["split"]["band"] == [SHAPE[0] - 105, SHAPE[0]]
    assert min(r["y"] for r in rows(out, "test")) >= SHAPE[0] - 105
    assert max(r["y"] for r in rows(out, "train")) + 50 <= SHAPE[0] - 105 - 50


def test_card_records_sources_scales_and_counts(scene, labelled):
    card = json.loads((labelled / "dataset.json").read_text())
    assert card["format"] == FORMAT and card["generator"].startswith("napari-crafts ")
    assert (card["mpp"], card["source_mpp"], card["tile_px"], card["stride_px"]) == (MODEL_MPP, SRC_MPP, 40, 20)
    by_role = {s["role"]: s for s in card["sources"]}
    for role in ("he", "labels"):
        path = Path(by_role[role]["path"])
        assert by_role[role]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert by_role[role]["mpp"] == pytest.approx(SRC_MPP)
    assert by_role["he"]["shape"] == [*SHAPE, 3] and by_role["labels"]["shape"] == list(SHAPE)
    assert card["counts"]["train"] == len(rows(labelled, "train"))
    assert card["counts"]["test"] == len(rows(labelled, "test"))
    assert card["nuclei"]["method"] == "labels" and card["fluorescence"] is None
    assert card["conditioning"]["labels"] == LabelsSource(np.zeros((2, 2), np.int32)).describe()["encoding"]
    row = rows(labelled, "train")[0]
    assert list(row) == ["id", "y", "x", "size_source_px", "he", "control_labels", "caption", "category",
                         "tissue_fraction", "nuclei"]
    assert row["caption"].startswith("translate the given nuclear segmentation mask")
    assert row["category"] == "synthetic discs"
    window = scene["labels_array"][row["y"] : row["y"] + 50, row["x"] : row["x"] + 50]
    assert row["nuclei"] == len(np.unique(window[window > 0]))
    assert Image.open(labelled / "preview.png").mode == "RGB"


# ------------------------------------------------------------------------------------------ fluorescence


def test_simulated_if_is_haematoxylin_and_shared_across_tiles(scene, tmp_path):
    """At model mpp = source mpp (no resampling), the nuclear channel is bright on the discs, and two
    overlapping tiles agree where they overlap (one normalisation for the slide)."""
    out = build_pairs(scene["he"], tmp_path / "sim", nuclei=None, simulate_if=True, mpp=SRC_MPP, tile_px=48,
                      stride_px=24, test_fraction=0)
    card = json.loads((out / "dataset.json").read_text())
    assert card["fluorescence"]["simulated"] is True and "not real immunofluorescence" in card["fluorescence"]["how"]
    assert [c["role"] for c in card["fluorescence"]["channels"]] == ["nuclear", "cytoplasm"]
    assert card["caption"].startswith("translate the given immunofluorescence image")
    tiles = {(r["y"], r["x"]): png(out, "train", r["control_fluorescence"]) for r in rows(out, "train")}
    first = Image.open(out / "train" / rows(out, "train")[0]["control_fluorescence"])
    assert "not real immunofluorescence" in first.info["Description"]
    labels = scene["labels_array"]
    inside, outside = [], []
    for (y, x), ctl in tiles.items():
        nuc = labels[y : y + 48, x : x + 48] > 0
        inside.append(ctl[..., 0][nuc].mean() if nuc.any() else np.nan)
        outside.append(ctl[..., 0][~nuc].mean())
        assert (ctl[..., 2] == 0).all()  # no membrane channel
        if (y, x + 24) in tiles:
            np.testing.assert_array_equal(ctl[:, 24:], tiles[y, x + 24][:, :24])
    assert np.nanmean(inside) > 3 * np.mean(outside)


def test_real_fluorescence_channels_with_roles(scene, tmp_path):
    labels = scene["labels_array"]
    rng = np.random.default_rng(1)
    dapi = (labels > 0) * 3000 + rng.integers(0, 200, SHAPE)
    ck = 500 + rng.integers(0, 300, SHAPE)
    other = rng.integers(0, 1000, SHAPE)
    stack = np.stack([ck, dapi, other]).astype(np.uint16)
    names = {"Name": ["panCK", "DAPI", "CD45"]}
    path = write_tiff(tmp_path / "if.ome.tif", stack, metadata={"axes": "CYX", "Channel": names})
    out = build_pairs(scene["he"], tmp_path / "if", nuclei=scene["labels"], fluorescence=path,
                      channels="DAPI=nuclear, panck=cytoplasm", mpp=MODEL_MPP, tile_px=40, stride_px=40,
                      test_fraction=0)
    card = json.loads((out / "dataset.json").read_text())
    assert card["fluorescence"]["simulated"] is False
    assert {c["name"]: c["role"] for c in card["fluorescence"]["channels"]} == {"panCK": "cytoplasm", "DAPI": "nuclear",
                                                                                "CD45": "other"}
    limits = {int(k): tuple(v) for k, v in card["fluorescence"]["limits"].items()}
    source = FluorescenceSource(stack, roles={0: "cytoplasm", 1: "nuclear", 2: "other"}, limits=limits, mpp=SRC_MPP)
    for row in rows(out, "train"):
        np.testing.assert_array_equal(png(out, "train", row["control_fluorescence"]),
                                      source.control(row["y"], row["x"], 50, 40))
    assert {s["role"] for s in card["sources"]} == {"he", "labels", "fluorescence"}
    with pytest.raises(ValueError, match="'if.ome.tif' has no channel 'FITC'; its channels are: 0=panCK, 1=DAPI, 2=CD45"):
        build_pairs(scene["he"], tmp_path / "bad", nuclei=scene["labels"], fluorescence=path,
                    channels="FITC=nuclear", mpp=MODEL_MPP, tile_px=40, stride_px=40, test_fraction=0)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ real H&E, auto nuclei


def test_auto_nuclei_and_simulated_if_on_real_cmu1(tmp_path):
    crop = open_slide(CMU1).read(0, 2300, 1450, 512, 512)
    he = write_tiff(tmp_path / "cmu1_crop.tif", crop, mpp=0.499)
    out = build_pairs(he, tmp_path / "cmu", nuclei="auto", simulate_if=True, mpp=0.5, tile_px=128, stride_px=128,
                      test_band=(384, 512))
    card = json.loads((out / "dataset.json").read_text())
    found = card["nuclei"]["found"]
    assert card["nuclei"]["method"] == "auto" and 60 <= found["count"] <= 600 and found["h_od_ratio"] > 3
    assert card["nuclei"]["parameters"]["min_area_um2"] == 4.0
    h_in, h_out, r_in, r_out = [], [], [], []
    for split in ("train", "test"):
        for row in rows(out, split):
            rgb = png(out, split, row["he"])
            nuc = png(out, split, row["control_labels"])[..., 0] > 0
            red = png(out, split, row["control_fluorescence"])[..., 0]
            h = haematoxylin_od(rgb)
            h_in.append(h[nuc].mean()), h_out.append(h[~nuc].mean())
            r_in.append(red[nuc].mean()), r_out.append(red[~nuc].mean())
    assert len(h_in) >= 4
    assert np.mean(h_in) > 3 * np.mean(h_out)  # the auto nuclei sit on the haematoxylin of their H&E tile
    assert np.mean(r_in) > 2 * np.mean(r_out)  # simulated nuclear channel is bright there too


def test_geojson_nuclei(scene, tmp_path):
    """QuPath-style polygons (x, y in H&E level-0 px) rasterised window by window give the same controls."""
    from napari_crafts.io.geojson import GeoJSONLabels

    square = [[[60, 40], [75, 40], [75, 52], [60, 52], [60, 40]]]  # x 60–75, y 40–52
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}},
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [[[x + 10, y + 70] for x, y in square[0]]]}}]}
    path = tmp_path / "nuclei.geojson"
    path.write_text(json.dumps(doc))
    out = build_pairs(scene["he"], tmp_path / "gj", nuclei=path, mpp=MODEL_MPP, tile_px=40, stride_px=20,
                      test_fraction=0)
    source = LabelsSource(GeoJSONLabels(path, shape=SHAPE), mpp=SRC_MPP)
    got = rows(out, "train")
    assert got and all(r["nuclei"] in (1, 2) for r in got)
    for row in got:
        want = source.control(row["y"], row["x"], 50, 40)
        np.testing.assert_array_equal(png(out, "train", row["control_labels"]), want)
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [[[900, 10], [910, 10], [910, 20], [900, 10]]]}))
    with pytest.raises(PairsError, match="far.geojson reach 21×911 px, beyond the H&E"):
        build_pairs(scene["he"], tmp_path / "o", nuclei=far, mpp=MODEL_MPP, tile_px=40)


def test_auto_nuclei_find_the_discs_in_memory_or_on_disk(scene, tmp_path, monkeypatch):
    """Auto nuclei on the drawn scene match its true labels; a slide too big for memory (here: any) gives the
    same dataset through a temporary zarr array, which is gone afterwards."""
    from napari_crafts.training import pairs

    kw = {"nuclei": "auto", "mpp": MODEL_MPP, "tile_px": 40, "stride_px": 40, "test_fraction": 0}
    memory = build_pairs(scene["he"], tmp_path / "memory", **kw)
    monkeypatch.setattr(pairs, "IN_MEMORY_LABELS", 0)
    disk_ = build_pairs(scene["he"], tmp_path / "disk", **kw)
    truth = LabelsSource(scene["labels_array"], mpp=SRC_MPP)
    a, b = rows(memory, "train"), rows(disk_, "train")
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) > 10
    inter = union = 0
    for ra, rb in zip(a, b, strict=True):
        ctl = png(memory, "train", ra["control_labels"])
        np.testing.assert_array_equal(ctl, png(disk_, "train", rb["control_labels"]))
        want = truth.control(ra["y"], ra["x"], 50, 40)
        inter += ((ctl > 0) & (want > 0)).sum()
        union += ((ctl > 0) | (want > 0)).sum()
    assert inter / union > 0.85
    found = [json.loads((p / "dataset.json").read_text())["nuclei"]["found"] for p in (memory, disk_)]
    assert found[0] == found[1]
    assert not (disk_ / ".work").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["disk", "memory"]


# ------------------------------------------------------------------------------------------ bad input


def test_labels_of_another_size_or_scale_are_refused(scene, tmp_path):
    small = write_tiff(tmp_path / "small.tif", scene["labels_array"][:, :290])
    with pytest.raises(PairsError, match=r"small.tif is 420×290 px but the H&E is 420×300 px"):
        build_pairs(scene["he"], tmp_path / "o", nuclei=small, mpp=MODEL_MPP, tile_px=40)
    coarse = write_tiff(tmp_path / "coarse.tif", scene["labels_array"], mpp=0.8)
    with pytest.raises(PairsError, match=r"coarse.tif is at 0.8 µm/px but the H&E at 0.4 µm/px"):
        build_pairs(scene["he"], tmp_path / "o", nuclei=coarse, mpp=MODEL_MPP, tile_px=40)
    assert not (tmp_path / "o").exists()


def test_no_tissue_no_nuclei_unreadable_no_scale(scene, tmp_path):
    glass = write_tiff(tmp_path / "glass.tif", np.full((*SHAPE, 3), 245, np.uint8))
    with pytest.raises(PairsError, match="No tile of glass.tif has at least 50% tissue"):
        build_pairs(glass, tmp_path / "o", nuclei=scene["labels"], mpp=MODEL_MPP, tile_px=40)
    pink = write_tiff(tmp_path / "pink.tif", np.full((*SHAPE, 3), PINK, np.uint8))
    with pytest.raises(PairsError, match="found no nuclei in pink.tif"):
        build_pairs(pink, tmp_path / "o", nuclei="auto", mpp=MODEL_MPP, tile_px=40)
    empty = write_tiff(tmp_path / "empty.tif", np.zeros(SHAPE, np.int32))
    with pytest.raises(PairsError, match="No tile of he.tif has both tissue and nuclei"):
        build_pairs(scene["he"], tmp_path / "o", nuclei=empty, mpp=MODEL_MPP, tile_px=40)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="junk.tif: not a readable slide or image"):
        build_pairs(junk, tmp_path / "o", mpp=MODEL_MPP, tile_px=40)
    with pytest.raises(PairsError, match="pass --mpp"):
        build_pairs(scene["he"], tmp_path / "o", nuclei=scene["labels"], tile_px=40)
    with pytest.raises(PairsError, match="does not say its pixel size: pass it with --source-mpp"):
        build_pairs(write_tiff(tmp_path / "nompp.tif", scene["rgb"], mpp=None), tmp_path / "o", mpp=0.5, tile_px=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "glass.tif", "junk.tif", "nompp.tif", "pink.tif"]


def test_model_pixel_size_comes_from_the_model_folder(scene, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "napari_crafts.json").write_text(json.dumps({"name": "m", "mpp": 0.8}))
    out = build_pairs(scene["he"], tmp_path / "p", nuclei=scene["labels"], model=model, tile_px=40, stride_px=40,
                      test_fraction=0)
    card = json.loads((out / "dataset.json").read_text())
    assert card["mpp"] == 0.8 and card["size_source_px"] == 80 and rows(out, "train")[0]["size_source_px"] == 80
    (model / "napari_crafts.json").write_text(json.dumps({"name": "m"}))
    with pytest.raises(PairsError, match="does not declare its pixel size .* pass the model's µm/px with --mpp"):
        build_pairs(scene["he"], tmp_path / "q", nuclei=scene["labels"], model=model, tile_px=40)


def test_output_rules(scene, labelled, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    kw = {"nuclei": scene["labels"], "mpp": MODEL_MPP, "tile_px": 40, "stride_px": 40}
    with pytest.raises(OutputExists, match="already exists: use --overwrite to replace it"):
        build_pairs(scene["he"], other, **kw)
    with pytest.raises(OutputError, match="is a folder that napari-crafts did not write"):
        build_pairs(scene["he"], other, overwrite=True, **kw)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1
    with pytest.raises(OutputError, match="is also an input of this command"):
        build_pairs(scene["he"], scene["he"], overwrite=True, **kw)
    ngff = tmp_path / "labels.ome.zarr"  # nuclei as an OME-Zarr folder: the output may not go inside it
    root = zarr.open_group(ngff, mode="w")
    root.create_array("0", data=scene["labels_array"], chunks=(64, 64))
    root.attrs.update({"multiscales": [{"version": "0.4", "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                       {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": [{"path": "0",
                       "coordinateTransformations": [{"type": "scale", "scale": [SRC_MPP, SRC_MPP]}]}]}]})
    with pytest.raises(OutputError, match="lies inside the input"):
        build_pairs(scene["he"], ngff / "pairs", **{**kw, "nuclei": ngff})
    ours = build_pairs(scene["he"], tmp_path / "ours", **{**kw, "nuclei": ngff})  # OME-Zarr labels work
    first = json.loads((ours / "dataset.json").read_text())["counts"]
    assert first["train"] > 0
    build_pairs(scene["he"], ours, overwrite=True, **{**kw, "stride_px": 20})  # ours: may be replaced
    assert json.loads((ours / "dataset.json").read_text())["counts"]["train"] > first["train"]
    (ours / "train" / "my_notes.txt").write_text("keep me")  # a file the builder did not write
    with pytest.raises(OutputError, match=r"holds files napari-crafts did not write there \(train/my_notes.txt\)"):
        build_pairs(scene["he"], ours, overwrite=True, **kw)
    assert (ours / "train" / "my_notes.txt").read_text() == "keep me"
    (ours / "train" / "my_notes.txt").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr", "mine", "ours"]


def test_output_never_goes_inside_the_model_it_reads_or_the_package(scene, tmp_path, capsys):
    """Issue 20: ``--model MODEL`` with the output inside MODEL wrote tiles into the model folder; without it, an
    output inside the package's own demo model was accepted."""
    from napari_crafts.export.safety import package_folder
    from napari_crafts.model.card import ModelCard
    from napari_crafts.model.catalog import bundled_demo_model

    model = tmp_path / "model"
    model.mkdir()
    (model / "napari_crafts.json").write_text(json.dumps({"name": "m", "mpp": MODEL_MPP}))
    inside_package = package_folder() / "data" / "demo_model" / f"_pairs_{tmp_path.name}"
    base = [str(scene["he"]), "--nuclei", str(scene["labels"]), "--tile-px", "40", "--quiet"]
    for out, flags, message in ((model / "pairs", ["--model", str(model)], f"lies inside the input {model}"),
                                (inside_package, ["--mpp", "0.5"], "lies inside the installed napari-crafts package")):
        rc = napari_crafts_pairs([base[0], str(out), *base[1:], *flags])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
    assert [p.name for p in model.iterdir()] == ["napari_crafts.json"]
    demo = build_pairs(scene["he"], tmp_path / "demo", nuclei=scene["labels"], model="demo", tile_px=40,
                       test_fraction=0)  # 'demo' is the bundled model, as everywhere else
    assert json.loads((demo / "dataset.json").read_text())["mpp"] == ModelCard.read(bundled_demo_model()).mpp


@pytest.mark.parametrize(("name", "looks"), [
    ("dsb", "holds 1 channel of uint16"),
    ("if.ome.tif", "holds 3 channels of uint16 (DAPI, CD8, PanCK)"),
    ("if.qptiff", "holds 3 channels of uint16"),
])
def test_he_that_is_not_brightfield_rgb_is_refused_before_anything_is_written(name, looks, tmp_path, capsys):
    """Issue 20: an immunofluorescence file taken as H&E gave near-black tiles with false nuclei."""
    from _data import DSB_IMAGE

    rng = np.random.default_rng(0)
    channels = rng.integers(0, 4000, (3, 128, 128), dtype=np.uint16)
    if name == "dsb":
        path = DSB_IMAGE
    elif name == "if.ome.tif":
        path = tmp_path / name
        names = {"Name": ["DAPI", "CD8", "PanCK"]}
        tifffile.imwrite(path, channels, ome=True, metadata={"axes": "CYX", "Channel": names, "PhysicalSizeX": SRC_MPP,
                                                             "PhysicalSizeY": SRC_MPP})
    else:  # QPTIFF-like: one grey page per channel, as Vectra/PhenoImager write immunofluorescence
        path = write_tiff(tmp_path / name, channels)
    before = sorted(tmp_path.iterdir())
    rc = napari_crafts_pairs([str(path), str(tmp_path / "o"), "--mpp", "0.5", "--source-mpp", str(SRC_MPP), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{Path(path).name} is not a brightfield H&E image: it {looks}; pairs needs an RGB(A) slide of 8-bit " in err
    assert sorted(tmp_path.iterdir()) == before


def test_failed_or_cancelled_run_leaves_nothing(scene, tmp_path):
    glass = write_tiff(tmp_path / "glass.tif", np.full((*SHAPE, 3), 245, np.uint8))
    with pytest.raises(PairsError):
        build_pairs(glass, tmp_path / "new" / "deeper" / "ds", nuclei=scene["labels"], mpp=MODEL_MPP, tile_px=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glass.tif"]  # parents it created are gone too
    gen = iter_pairs(scene["he"], tmp_path / "cancelled", overwrite=False)
    with pytest.raises(PairsError, match="pass --mpp"):
        next(gen)
    from napari_crafts.training.pairs import PairsOptions

    gen = iter_pairs(scene["he"], tmp_path / "cancelled", PairsOptions(nuclei=scene["labels"], mpp=MODEL_MPP,
                                                                       tile_px=40, stride_px=20))
    events = [next(gen) for _ in range(5)]
    assert [e.done for e in events] == [1, 2, 3, 4, 5] and events[0].stage == "tiles"
    gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glass.tif"]


# ------------------------------------------------------------------------------------------ command line


def napari_crafts_pairs(argv: list[str]) -> int:
    """``napari-crafts pairs ARGV`` through the real command line (its error reporting included)."""
    from napari_crafts.cli import main

    return main(["pairs", *argv])


def test_cli_builds_and_reports(scene, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = napari_crafts_pairs([str(scene["he"]), str(out), "--nuclei", str(scene["labels"]), "--mpp", "0.5",
                              "--tile-px", "40", "--stride-px", "20", "--test-band", "270:", "--quiet",
                              "--category", "discs"])
    text = capsys.readouterr().out
    card = json.loads((out / "dataset.json").read_text())
    assert rc == 0 and card["split"]["band"] == [270, 420] and card["category"] == "discs"
    assert f"train {card['counts']['train']} tiles, test {card['counts']['test']} tiles (40 px at 0.5 µm/px)" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--mpp", "0.5", "--test-band", "a:b"], "Test band 'a:b' is not 'y0:y1'"),
    (["--mpp", "0.5", "--channels", "DAPI=nuclear"], "--channels gives the roles of the --fluorescence file's"),
    (["--mpp", "0.5", "--min-tissue", "2"], "--min-tissue is a fraction in [0, 1], got 2.0"),
    (["--mpp", "0.5", "--nuclei-min-solidity", "1.5"], "--nuclei-min-solidity 1.5 is out of range"),
    (["--mpp", "0.5", "--nuclei", "none"], "No control to pair with the H&E"),
    (["--mpp", "0.5", "--simulate-if", "--fluorescence", "x.tif"], "either real fluorescence"),
    (["--mpp", "0.5", "--test-band", "400:420"], "Test band 400:420 is 20 rows high, less than one tile"),
])
def test_cli_errors_are_one_line(scene, tmp_path, capsys, argv, message):
    rc = napari_crafts_pairs([str(scene["he"]), str(tmp_path / "o"), "--tile-px", "40", "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("napari-crafts pairs: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
