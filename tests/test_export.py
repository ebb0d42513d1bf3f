"""OME-Zarr / pyramidal TIFF export: layout, NGFF metadata, pixels, pyramid, resumability, provenance."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from skimage.transform import downscale_local_mean

from napari_crafts import export
from napari_crafts.export import (
    PROGRESS_GROUP,
    PROVENANCE_KEY,
    create_ome_zarr,
    is_complete,
    open_ome_zarr_for_resume,
    read_provenance,
    save_ome_zarr,
    write_pyramidal_tiff,
)
from napari_crafts.export.ome_zarr import OWNERSHIP_MARK

PROV = {"synthetic": True, "model": "tiny", "weights_sha256": "ab12", "prompt": 'H&E <tissue> "x" µm', "seed": 7,
        "created": "2026-11-23T10:00:00+00:00"}


def reference_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Independent 2×2 mean: pad odd edges by replication (= mean of existing pixels), round half up."""
    out = [img]
    for _ in range(1, levels):
        prev = out[-1]
        padded = np.pad(prev, [(0, prev.shape[0] % 2), (0, prev.shape[1] % 2), (0, 0)], mode="edge")
        out.append(np.floor(downscale_local_mean(padded.astype(np.float64), (2, 2, 1)) + 0.5).astype(np.uint8))
    return out


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_level0(writer: export.OmeZarrWriter, img: np.ndarray) -> None:
    for cy, cx in np.ndindex(*writer.grid(0)):
        y0, x0, y1, x1 = writer.chunk_box(0, cy, cx)
        writer.write_chunk(0, cy, cx, img[y0:y1, x0:x1])


def chunk_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- layout


def test_levels_chunks_and_ngff_metadata(tmp_path: Path) -> None:
    w = create_ome_zarr(tmp_path / "s.zarr", (1000, 700), mpp=0.5, chunk=256, provenance=PROV)
    assert w.levels == 3  # 1000 → 500 → 250 < 256
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert root.metadata.zarr_format == 2
    shapes = [(3, 1000, 700), (3, 500, 350), (3, 250, 175)]
    for lv, shape in enumerate(shapes):
        assert root[str(lv)].shape == shape and root[str(lv)].chunks == (3, 256, 256)
        assert root[str(lv)].dtype == np.uint8
        zarray = json.loads((tmp_path / "s.zarr" / str(lv) / ".zarray").read_text())
        assert zarray["dimension_separator"] == "/"
    attrs = json.loads((tmp_path / "s.zarr" / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert [c["color"] for c in attrs["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["R", "G", "B"]
    prov = attrs[PROVENANCE_KEY]
    assert prov["seed"] == 7 and prov["prompt"] == PROV["prompt"] and prov["mpp"] == 0.5
    assert prov["complete"] is False


def test_no_mpp_means_unit_less_scale_one(tmp_path: Path) -> None:
    create_ome_zarr(tmp_path / "s.zarr", (300, 200), mpp=None, chunk=128, provenance=PROV)
    ms = zarr.open_group(tmp_path / "s.zarr", mode="r").attrs["multiscales"][0]
    assert all("unit" not in a for a in ms["axes"])
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0],
                                                                                      [1.0, 4.0, 4.0]]
    assert read_provenance(tmp_path / "s.zarr")["mpp"] is None


def test_default_levels() -> None:
    assert export.default_levels((300, 200), 512) == 1
    assert export.default_levels((512, 10), 512) == 2
    assert export.default_levels((100_000, 80_000), 512) == 9


# ------------------------------------------------------------------------------------------- pixels


def test_chunk_round_trip_is_exact(tmp_path: Path) -> None:
    img = rgb(150, 97)
    w = create_ome_zarr(tmp_path / "s.zarr", img.shape[:2], mpp=0.25, chunk=64, provenance=PROV)
    write_level0(w, img)
    stored = np.asarray(zarr.open_group(tmp_path / "s.zarr", mode="r")["0"][:])
    np.testing.assert_array_equal(stored, img.transpose(2, 0, 1))
    np.testing.assert_array_equal(w.read_region(0, 10, 20, 140, 90), img[10:140, 20:90])
    assert w.chunk_box(0, 2, 1) == (128, 64, 150, 97)
    with pytest.raises(ValueError, match=r"\(22, 33, 3\) uint8"):
        w.write_chunk(0, 2, 1, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(IndexError, match="grid there is 3×2"):
        w.write_chunk(0, 3, 0, np.zeros((1, 1, 3), np.uint8))


@pytest.mark.parametrize("shape", [(256, 256), (301, 203), (97, 250)])
def test_pyramid_equals_reference_mean(tmp_path: Path, shape: tuple[int, int]) -> None:
    img = rgb(*shape, seed=1)
    w = create_ome_zarr(tmp_path / "s.zarr", shape, mpp=0.5, chunk=32, provenance=PROV)
    write_level0(w, img)
    w.build_pyramid()
    ref = reference_pyramid(img, w.levels)
    for lv in range(w.levels):
        h, wd = w.level_shape(lv)
        assert ref[lv].shape[:2] == (h, wd)
        np.testing.assert_array_equal(w.read_region(lv, 0, 0, h, wd), ref[lv], err_msg=f"level {lv}")


def test_build_level_needs_its_sources(tmp_path: Path) -> None:
    w = create_ome_zarr(tmp_path / "s.zarr", (64, 64), mpp=0.5, chunk=16, provenance=PROV)
    w.write_chunk(0, 0, 0, rgb(16, 16))
    with pytest.raises(RuntimeError, match=r"level 0 chunks \[\(0, 1\), \(1, 0\), \(1, 1\)\]"):
        w.build_level(1, 0, 0)


# ------------------------------------------------------------------------------------------- resume


def test_markers_and_finish(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    img = rgb(40, 40)
    w = create_ome_zarr(path, (40, 40), mpp=0.5, chunk=16, provenance=PROV)
    # data written, then "killed" before the marker: not done
    zarr.open_group(path, mode="r+")["0"][:, 0:16, 0:16] = img[:16, :16].transpose(2, 0, 1)
    assert not w.chunk_done(0, 0, 0)
    w.write_chunk(0, 0, 0, img[:16, :16])
    assert w.chunk_done(0, 0, 0)
    # a marker file cut short by a kill (empty) reads as not done
    w.write_chunk(0, 0, 1, img[:16, 16:32])
    (path / PROGRESS_GROUP / "0" / "0" / "1").write_bytes(b"")
    assert not w.chunk_done(0, 0, 1)
    assert (0, 1) in w.pending(0) and (0, 0) not in w.pending(0)
    with pytest.raises(RuntimeError, match="chunks still missing"):
        w.finish()
    assert not export.is_complete(path)
    write_level0(w, img)
    w.build_pyramid()
    # zarr's temporary file from a killed write (LocalStore names it <name>.<uuid4 hex>.partial)
    (path / "0" / "0" / "0" / f"1.{'3f2a' * 8}.partial").write_bytes(b"torn")
    w.finish()
    assert not (path / PROGRESS_GROUP).exists() and not list(path.rglob("*.partial"))
    assert export.is_complete(path) and read_provenance(path)["complete"] is True
    assert w.chunk_done(0, 1, 1) and w.pending(2) == []


def test_existing_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    create_ome_zarr(path, (64, 64), mpp=0.5, chunk=32, provenance=PROV)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        create_ome_zarr(path, (64, 64), mpp=0.5, chunk=32, provenance=PROV)
    w = create_ome_zarr(path, (80, 64), mpp=0.5, chunk=32, provenance=PROV, overwrite=True)
    assert w.shape_yx == (80, 64) and zarr.open_group(path, mode="r")["0"].shape == (3, 80, 64)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="notes is not a napari-crafts OME-Zarr image: not deleting it"):
        create_ome_zarr(other, (64, 64), mpp=0.5, chunk=32, provenance=PROV, overwrite=True)
    assert (other / "keep.txt").exists()
    foreign = tmp_path / "foreign.zarr"  # a zarr store someone else wrote is not ours to delete either
    zarr.open_group(foreign, mode="w", zarr_format=2).attrs["multiscales"] = []
    with pytest.raises(ValueError, match="not a napari-crafts OME-Zarr image: not deleting it"):
        create_ome_zarr(foreign, (64, 64), mpp=0.5, chunk=32, provenance=PROV, overwrite=True)
    with pytest.raises(ValueError, match="not an OME-Zarr image napari-crafts wrote"):
        create_ome_zarr(foreign, (64, 64), mpp=0.5, chunk=32, provenance=PROV, resume=True)
    assert (foreign / ".zattrs").exists()
    half = tmp_path / "half.zarr"  # our creation cut short before the image metadata: ours from the first moment
    zarr.open_group(half, mode="w", zarr_format=2, attributes={PROVENANCE_KEY: OWNERSHIP_MARK})
    with pytest.raises(ValueError, match="cut short.*--overwrite"):
        create_ome_zarr(half, (64, 64), mpp=0.5, chunk=32, provenance=PROV, resume=True)
    assert create_ome_zarr(half, (64, 64), mpp=0.5, chunk=32, provenance=PROV, overwrite=True).shape_yx == (64, 64)
    (tmp_path / "notes.txt").write_text("precious")  # nor a file we did not write
    with pytest.raises(ValueError, match="not a napari-crafts OME-Zarr image"):
        create_ome_zarr(tmp_path / "notes.txt", (64, 64), mpp=0.5, chunk=32, provenance=PROV, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"shape_yx": (64, 65)}, "shape"),
        ({"chunk": 16}, "chunk"),
        ({"mpp": 0.25}, "mpp"),
        ({"levels": 1}, "levels"),
        ({"provenance": {**PROV, "seed": 8}}, "provenance 'seed'"),
        ({"provenance": {**PROV, "steps": 30}}, "provenance 'steps'"),
    ],
)
def test_resume_with_other_settings_says_which(tmp_path: Path, change: dict, setting: str) -> None:
    path = tmp_path / "s.zarr"
    create_ome_zarr(path, (64, 64), mpp=0.5, chunk=32, provenance=PROV)
    kwargs = {"shape_yx": (64, 64), "mpp": 0.5, "chunk": 32, "provenance": PROV, **change}
    with pytest.raises(ValueError, match=f"{setting} differs") as err:
        open_ome_zarr_for_resume(path, **kwargs)
    assert "--overwrite" in str(err.value)


def test_resume_is_byte_identical(tmp_path: Path) -> None:
    img = rgb(70, 50, seed=3)
    ref = create_ome_zarr(tmp_path / "ref.zarr", (70, 50), mpp=0.5, chunk=16, provenance=PROV)
    write_level0(ref, img)
    ref.build_pyramid()
    ref.finish()

    path = tmp_path / "run.zarr"
    w = create_ome_zarr(path, (70, 50), mpp=0.5, chunk=16, provenance=PROV)
    for cy, cx in [(0, 0), (0, 1), (2, 3)]:
        y0, x0, y1, x1 = w.chunk_box(0, cy, cx)
        w.write_chunk(0, cy, cx, img[y0:y1, x0:x1])
    zarr.open_group(path, mode="r+")["0"][:, 16:32, 0:16] = 0  # torn chunk without marker
    # restart: new "created" is fine, everything else must match
    w2 = create_ome_zarr(path, (70, 50), mpp=0.5, chunk=16, provenance={**PROV, "created": "later"}, resume=True)
    assert len(w2.pending(0)) == w2.grid(0)[0] * w2.grid(0)[1] - 3
    for cy, cx in w2.pending(0):
        y0, x0, y1, x1 = w2.chunk_box(0, cy, cx)
        w2.write_chunk(0, cy, cx, img[y0:y1, x0:x1])
    w2.build_pyramid()
    w2.finish()
    assert chunk_files(path) == chunk_files(tmp_path / "ref.zarr")
    assert read_provenance(path)["created"] == PROV["created"]  # the original record is kept


def test_writer_pickles_and_writes_from_other_processes(tmp_path: Path) -> None:
    img = rgb(64, 48, seed=4)
    w = create_ome_zarr(tmp_path / "s.zarr", (64, 48), mpp=0.5, chunk=16, provenance=PROV)
    w2 = pickle.loads(pickle.dumps(w))
    assert w2 == w and len(pickle.dumps(w)) < 500
    w2.write_chunk(0, 0, 0, img[:16, :16])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(w.write_chunk, 0, cy, cx, img[cy * 16 : cy * 16 + 16, cx * 16 : cx * 16 + 16])
                   for cy, cx in w.pending(0)]
        [f.result() for f in futures]
        [f.result() for f in [pool.submit(w.build_level, 1, cy, cx) for cy, cx in w.pending(1)]]
    assert w.pending(0) == [] and w.pending(1) == []
    np.testing.assert_array_equal(w.read_region(0, 0, 0, 64, 48), img)
    np.testing.assert_array_equal(w.read_region(1, 0, 0, 32, 24), reference_pyramid(img, 2)[1])


def test_independent_ngff_reader_accepts_store(tmp_path: Path) -> None:
    ome_zarr = pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    img = rgb(100, 90, seed=5)
    w = create_ome_zarr(tmp_path / "s.zarr", (100, 90), mpp=0.5, chunk=32, provenance=PROV)
    write_level0(w, img)
    w.build_pyramid()
    w.finish()
    nodes = list(Reader(parse_url(str(tmp_path / "s.zarr")))())
    assert ome_zarr.__version__ and nodes[0].load(Multiscales) is not None
    data = nodes[0].data
    assert [d.shape for d in data] == [(3, 100, 90), (3, 50, 45), (3, 25, 23)]
    np.testing.assert_array_equal(np.asarray(data[0]).transpose(1, 2, 0), img)
    assert [a["name"] for a in nodes[0].metadata["axes"]] == ["c", "y", "x"]


# ------------------------------------------------------------------------------------------- TIFF


class CountingArray:
    """(Y, X, 3) array that records the largest block read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.largest = data, data.shape, data.dtype, 0

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        block = self.data[key]
        self.largest = max(self.largest, block.shape[0] * block.shape[1])
        return block


def test_tiff_opens_in_tiffslide_with_levels_mpp_and_exact_pixels(tmp_path: Path) -> None:
    tiffslide = pytest.importorskip("tiffslide")
    img = rgb(700, 520, seed=6)
    src = CountingArray(img)
    path = tmp_path / "s.ome.tif"
    write_pyramidal_tiff(path, src, mpp=0.25, provenance=PROV, tile=128, compression="zlib")
    assert src.largest <= (2 * 128) ** 2  # read tile by tile, never whole
    ref = reference_pyramid(img, 4)  # 700 → 350 → 175 → 88 < 128
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == 4
        assert slide.level_dimensions == ((520, 700), (260, 350), (130, 175), (65, 88))
        assert slide.properties["tiffslide.mpp-x"] == pytest.approx(0.25)
        assert slide.properties["tiffslide.mpp-y"] == pytest.approx(0.25)
        np.testing.assert_array_equal(np.asarray(slide.read_region((0, 0), 0, (520, 700), as_array=True)), img)
        for lv in range(1, 4):
            got = np.asarray(slide.zarr_group[str(lv)][:])
            np.testing.assert_array_equal(got, ref[lv])
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_ome and page.is_tiled and page.tilewidth == 128
        assert page.tags["Software"].value == "napari-crafts"
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == pytest.approx(4e4)
        assert len(page.subifds) == 3
        assert [lvl.pages[0].subfiletype for lvl in tif.series[0].levels] == [0, 1, 1, 1]
    prov = read_provenance(path)
    assert prov == {**PROV, "mpp": 0.25}


def test_tiff_jpeg_and_no_mpp(tmp_path: Path) -> None:
    tiffslide = pytest.importorskip("tiffslide")
    yy, xx = np.mgrid[0:300, 0:260]
    img = np.stack([yy % 256, xx % 256, (yy + xx) // 3 % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "j.tif"
    lazy = da.from_array(img, chunks=(100, 100, 3))
    write_pyramidal_tiff(path, lazy, mpp=None, provenance=PROV, tile=128, compression="jpeg", quality=95)
    assert [p.name for p in tmp_path.iterdir()] == ["j.tif"]  # no temporary files left
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_pyramidal_tiff(path, lazy, mpp=None, provenance=PROV, tile=128)
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == 3
        assert slide.properties["tiffslide.mpp-x"] is None
        got = np.asarray(slide.read_region((0, 0), 0, (260, 300), as_array=True)).astype(int)
    assert np.abs(got - img).mean() < 3
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR  # 4:2:0 JPEG, like SVS
    assert read_provenance(path)["prompt"] == PROV["prompt"]


def test_store_to_tiff_keeps_levels_and_provenance(tmp_path: Path) -> None:
    tiffslide = pytest.importorskip("tiffslide")
    img = rgb(300, 200, seed=8)
    w = create_ome_zarr(tmp_path / "s.zarr", (300, 200), mpp=0.5, chunk=128, provenance=PROV)
    write_level0(w, img)
    with pytest.raises(ValueError, match="not finished"):
        export.ome_zarr_to_tiff(tmp_path / "s.zarr", tmp_path / "s.tif")
    w.build_pyramid()
    w.finish()
    export.ome_zarr_to_tiff(tmp_path / "s.zarr", tmp_path / "s.tif", tile=128, compression="zlib")
    with tiffslide.TiffSlide(tmp_path / "s.tif") as slide:
        assert slide.level_count == w.levels == 3
        for lv in range(w.levels):
            h, wd = w.level_shape(lv)
            np.testing.assert_array_equal(np.asarray(slide.zarr_group[str(lv)][:]), w.read_region(lv, 0, 0, h, wd))
    assert read_provenance(tmp_path / "s.tif") == {**PROV, "mpp": 0.5}


def test_read_provenance_none_for_foreign_files(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", rgb(16, 16))
    assert read_provenance(tmp_path / "plain.tif") is None
    (tmp_path / "folder").mkdir()
    assert read_provenance(tmp_path / "folder") is None
    assert read_provenance(tmp_path / "missing.ome.zarr") is None and not is_complete(tmp_path / "missing.tif")


def test_records_hold_no_nan_so_they_stay_valid_json(tmp_path: Path) -> None:
    import json

    from napari_crafts.provenance import json_record

    record = json_record({"synthetic": True, "seam_score": {"border": float("nan"), "interior": 1.0},
                          "limits": [[0.0, float("inf")]]})
    assert record == {"synthetic": True, "seam_score": {"border": None, "interior": 1.0}, "limits": [[0.0, None]]}
    store = tmp_path / "nan.ome.zarr"
    save_ome_zarr(store, rgb(16, 16), mpp=0.5, provenance={"synthetic": True, "score": float("nan")}, chunk=16)
    attrs = (store / "zarr.json") if (store / "zarr.json").exists() else (store / ".zattrs")
    json.loads(attrs.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the stored record"))
    assert read_provenance(store)["score"] is None


def test_the_one_atomic_write_leaves_a_file_whole_or_as_it_was(tmp_path) -> None:  # noqa: ANN001
    from napari_crafts._files import atomic_file

    target = tmp_path / "table.csv"
    target.write_text("before")
    with pytest.raises(OSError), atomic_file(target) as partial:
        partial.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with atomic_file(target, unique=True) as partial:
        assert partial.name.startswith(".table.csv.") and partial.name.endswith(".partial")
        partial.write_text("after")
    assert target.read_text() == "after" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
