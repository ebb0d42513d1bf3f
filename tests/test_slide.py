"""slide.py and the napari reader: pyramids, µm scale, lazy opening, windows, OME-Zarr, errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from _data import CMU1_SVS as SVS
from _data import DSB_MASK as MASK
from napari_crafts._reader import napari_get_reader
from napari_crafts.io import slide as slide_mod
from napari_crafts.io.slide import SlideError, SlideRef, level_for_mpp, open_slide, read_window

# --------------------------------------------------------------------------------------------- fixtures


def smooth_rgb(h: int = 256, w: int = 384) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it within a few grey levels)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], axis=-1)
    return rgb.astype(np.uint8)


def noisy_rgb(h: int = 256, w: int = 384) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pyramid(img: np.ndarray, n: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(img[:: 2**i, :: 2**i]) for i in range(n)]


def write_pyramid(path: Path, levels: list[np.ndarray], *, compression: str | None = "zlib",
                  mpp: float | None = 0.5, tile: int = 64) -> Path:
    """A tiled TIFF: level 0 with SubIFDs holding the reduced levels (as whole-slide scanners write them)."""
    rgb = levels[0].ndim == 3
    opts = {"tile": (tile, tile), "compression": compression, "photometric": "rgb" if rgb else "minisblack"}
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            res = ({"resolution": (1e4 / (mpp * 2**i),) * 2, "resolutionunit": "CENTIMETER"} if mpp
                   else {"resolutionunit": "NONE"})
            extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            tw.write(lv, **opts, **res, **extra)
    return path


def write_ngff(path: Path, level0: np.ndarray, axes: list[dict], *, version: str, mpp: float = 0.5,
               extra_attrs: dict | None = None, omero: dict | None = None) -> Path:
    """An OME-Zarr with 2 levels (x2 in Y and X): NGFF 0.4 on zarr v2 or 0.5 on zarr v3."""
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(path, mode="w", zarr_format=fmt)
    datasets = []
    for i in range(2):
        arr = level0[..., :: 2**i, :: 2**i]
        root.create_array(str(i), data=np.ascontiguousarray(arr), chunks=arr.shape[:-2] + (32, 32))
        scale = [1.0] * (arr.ndim - 2) + [mpp * 2**i] * 2
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms: dict = {"multiscales": [{"version": version, "axes": axes, "datasets": datasets}]}
    if omero:
        ms["omero"] = omero
    if version == "0.5":
        ms = {"ome": {"version": "0.5", **ms}}
    root.attrs.update({**ms, **(extra_attrs or {})})
    return path


SPACE = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]


@pytest.fixture(autouse=True)
def _fresh_cache():
    slide_mod.clear_cache()
    yield
    slide_mod.clear_cache()


# --------------------------------------------------------------------------------------------- TIFF pyramids


@pytest.mark.parametrize("compression", ["zlib", "jpeg2000", "jpeg"])
@pytest.mark.parametrize("n_levels", [1, 3])
def test_pyramidal_tiff_levels_mpp_pixels(tmp_path, compression, n_levels):
    img = smooth_rgb() if compression == "jpeg" else noisy_rgb()
    levels = pyramid(img, n_levels)
    path = write_pyramid(tmp_path / f"p.{compression}.tif", levels, compression=compression, mpp=0.25)
    s = open_slide(path)
    assert s.kind == "rgb" and s.mpp == pytest.approx(0.25) and s.scale == pytest.approx((0.25, 0.25))
    assert [lv.shape for lv in s.levels] == [lv.shape for lv in levels]
    assert all(isinstance(lv, da.Array) and lv.dtype == np.uint8 for lv in s.levels)
    assert s.shape == (256, 384) and s.downsamples == pytest.approx([1, 2, 4][:n_levels])
    for level, src in enumerate(levels):
        got = s.read(level, 10, 20, 30, 40)
        want = src[10:40, 20:60]
        assert got.shape == (30, 40, 3)
        if compression == "jpeg":
            assert np.abs(got.astype(int) - want).mean() < 2 and np.abs(got.astype(int) - want).max() < 40
        else:
            np.testing.assert_array_equal(got, want)


def test_tiff_without_resolution_has_no_mpp(tmp_path):
    path = write_pyramid(tmp_path / "nores.tif", [noisy_rgb()], mpp=None)
    s = open_slide(path)
    assert s.mpp is None and s.scale == (1.0, 1.0) and level_for_mpp(s, 1.0) == 0
    assert open_slide(path, mpp=0.3).mpp == 0.3  # the caller's pixel size wins


def test_tiff_at_screen_dpi_has_no_mpp(tmp_path):
    path = tmp_path / "dpi72.tif"
    # 72 dpi = 352.8 µm/px: a print default, not a microscope scale
    tifffile.imwrite(path, noisy_rgb(32, 32), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert open_slide(path).mpp is None
    tifffile.imwrite(path, np.zeros((32, 32), np.uint16), resolution=(72, 72), resolutionunit="INCH")
    assert open_slide(path).mpp is None


def test_window_padding_outside_bounds(tmp_path):
    img = noisy_rgb()
    path = write_pyramid(tmp_path / "p.tif", pyramid(img, 2))
    win = read_window(path, 0, -5, -7, 20, 30)
    assert win.shape == (20, 30, 3)
    assert not win[:5].any() and not win[:, :7].any()
    np.testing.assert_array_equal(win[5:, 7:], img[:15, :23])
    corner = read_window(path, 1, 120, 180, 16, 16)  # level 1 is 128 x 192
    np.testing.assert_array_equal(corner[:8, :12], img[::2, ::2][120:, 180:])
    assert not corner[8:].any() and not corner[:, 12:].any()
    assert not read_window(path, 0, 1000, 1000, 4, 4).any()
    with pytest.raises(SlideError, match="no level 2"):
        read_window(path, 2, 0, 0, 4, 4)


def test_slide_ref_pickles_and_reads_same_pixels(tmp_path):
    img = noisy_rgb()
    path = write_pyramid(tmp_path / "p.tif", pyramid(img, 2))
    ref = SlideRef(str(path), level=1)
    clone = pickle.loads(pickle.dumps(ref))
    assert clone == ref
    np.testing.assert_array_equal(clone.read(3, 4, 10, 12), img[::2, ::2][3:13, 4:16])
    assert clone.open().shape == (256, 384)


def test_opening_does_not_read_level_0(tmp_path):
    """Level-0 tiles are overwritten with garbage: opening and reading level 1 must still work."""
    img = noisy_rgb()
    labels = (np.arange(256 * 384).reshape(256, 384) // 97).astype(np.uint16)
    for name, data in (("rgb.tif", img), ("labels.tif", labels)):
        path = write_pyramid(tmp_path / name, pyramid(data, 2))
        with tifffile.TiffFile(path) as tif:
            tiles = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
        with open(path, "r+b") as f:
            for offset, size in tiles:
                f.seek(offset)
                f.write(b"\xff" * size)
        s = open_slide(path)
        assert s.levels[0].shape[:2] == (256, 384)
        np.testing.assert_array_equal(s.read(1, 0, 0, 8, 8), data[::2, ::2][:8, :8])
        with pytest.raises(SlideError, match=name):
            s.read(0, 0, 0, 8, 8)


def test_level_for_mpp(tmp_path):
    s = open_slide(write_pyramid(tmp_path / "p.tif", pyramid(noisy_rgb(), 3), mpp=0.5))
    assert [level_for_mpp(s, t) for t in (0.3, 0.5, 1.0, 1.99, 2.0, 10.0)] == [0, 0, 1, 1, 2, 2]


# --------------------------------------------------------------------------------------------- other TIFFs


def test_labels_tiff_pyramid_and_kind_override(tmp_path):
    labels = np.zeros((256, 384), np.uint32)
    labels[10:50, 20:70], labels[100:140, 200:260] = 7, 300000
    s = open_slide(write_pyramid(tmp_path / "lab.tif", pyramid(labels, 2), mpp=0.5))
    assert s.kind == "labels" and s.mpp == pytest.approx(0.5)
    assert [lv.shape for lv in s.levels] == [(256, 384), (128, 192)] and s.levels[0].dtype == np.uint32
    np.testing.assert_array_equal(s.read(0, 0, 0, 256, 384), labels)
    as_channels = open_slide(tmp_path / "lab.tif", kind="channels")
    assert as_channels.kind == "channels" and as_channels.levels[0].shape == (1, 256, 384)
    with pytest.raises(SlideError, match="cannot open as RGB"):
        open_slide(tmp_path / "lab.tif", kind="rgb")


def test_ome_tiff_channels_names_and_mpp(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, (3, 128, 160), dtype=np.uint16)
    meta = {"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.65,
            "Channel": {"Name": ["DAPI", "CD3", "PanCK"]}}
    path = tmp_path / "fluo.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=1, tile=(64, 64), compression="zlib", metadata=meta)
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    s = open_slide(path)
    assert s.kind == "channels" and s.channel_names == ["DAPI", "CD3", "PanCK"]
    assert s.mpp == pytest.approx(0.65)
    assert [lv.shape for lv in s.levels] == [(3, 128, 160), (3, 64, 80)]
    np.testing.assert_array_equal(s.read(0, -2, 5, 10, 10)[:, 2:], data[:, :8, 5:15])
    assert not s.read(0, -2, 5, 10, 10)[:, :2].any()


def test_imagej_tiff_micron_resolution(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.ones((2, 40, 50), np.float32), imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                     metadata={"axes": "CYX", "unit": "um"})
    s = open_slide(path)
    assert s.kind == "channels" and s.levels[0].shape == (2, 40, 50) and s.mpp == pytest.approx(0.3)


def test_z_stack_is_refused(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 2, 32, 32), np.uint16), metadata={"axes": "ZCYX"})
    with pytest.raises(SlideError, match=r"stack\.ome\.tif.*single Z/T plane"):
        open_slide(path)


# --------------------------------------------------------------------------------------------- real data


def test_real_svs():
    s = open_slide(SVS)
    assert s.kind == "rgb" and s.levels[0].shape == (2967, 2220, 3) and s.shape == (2967, 2220)
    assert s.mpp == pytest.approx(0.499) and s.mpp == s.properties["aperio.MPP"]
    want = tifffile.imread(SVS, key=0)[1000:1064, 500:580]
    np.testing.assert_array_equal(s.read(0, 1000, 500, 64, 80), want)


def test_real_labels_tif():
    s = open_slide(MASK)
    assert s.kind == "labels" and s.mpp is None and s.levels[0].shape == (512, 512)
    values = np.unique(s.read(0, 0, 0, 512, 512))
    assert len(values[values > 0]) == 125


# --------------------------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_rgb_levels_mpp_attrs(tmp_path, version):
    img = noisy_rgb(96, 128).transpose(2, 0, 1)  # (c, y, x) as NGFF wants
    prov = {"synthetic": True, "seed": 7, "mpp": 0.5}
    path = write_ngff(tmp_path / f"rgb{version}.zarr", img, [{"name": "c", "type": "channel"}, *SPACE],
                      version=version, extra_attrs={"napari_crafts": prov})
    s = open_slide(path)
    assert s.kind == "rgb" and s.mpp == pytest.approx(0.5)
    assert [lv.shape for lv in s.levels] == [(96, 128, 3), (48, 64, 3)] and s.downsamples == [1.0, 2.0]
    assert s.properties["napari_crafts"] == prov
    assert ("ome" in s.properties) == (version == "0.5")
    np.testing.assert_array_equal(s.read(1, 0, 0, 48, 64), img[:, ::2, ::2].transpose(1, 2, 0))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_labels_drop_singleton_tz(tmp_path, version):
    labels = np.zeros((1, 1, 1, 64, 80), np.uint32)
    labels[..., 10:20, 30:50] = 5
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"}, *SPACE]
    s = open_slide(write_ngff(tmp_path / "lab.ome.zarr", labels, axes, version=version, mpp=0.25))
    assert s.kind == "labels" and s.mpp == pytest.approx(0.25)
    assert [lv.shape for lv in s.levels] == [(64, 80), (32, 40)]
    np.testing.assert_array_equal(s.read(0, 0, 0, 64, 80), labels[0, 0, 0])


def test_ngff_channels_names(tmp_path):
    data = np.random.default_rng(2).integers(0, 999, (2, 64, 64), dtype=np.uint16)
    omero = {"channels": [{"label": "DAPI"}, {"label": "CD45"}]}
    path = write_ngff(tmp_path / "fluo", data, [{"name": "c", "type": "channel"}, *SPACE], version="0.4", omero=omero)
    s = open_slide(path)  # a folder without the .zarr suffix is recognised by its NGFF metadata
    assert s.kind == "channels" and s.channel_names == ["DAPI", "CD45"] and s.mpp == pytest.approx(0.5)
    assert [lv.shape for lv in s.levels] == [(2, 64, 64), (2, 32, 32)]
    assert napari_get_reader(str(path)) is not None


def test_ngff_without_unit(tmp_path):
    data = np.zeros((1, 64, 64), np.uint8)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert open_slide(write_ngff(tmp_path / "a.zarr", data, axes, version="0.4", mpp=1.0)).mpp is None
    assert open_slide(write_ngff(tmp_path / "b.zarr", data, axes, version="0.4", mpp=0.5)).mpp == 0.5


# --------------------------------------------------------------------------------------------- errors


def test_mrxs_is_refused_with_advice(tmp_path):
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"")
    with pytest.raises(SlideError, match=r"slide\.mrxs: MIRAX \(\.mrxs\) slides need OpenSlide.*convert to OME-TIFF"):
        open_slide(path)


@pytest.mark.parametrize("name, content", [("garbage.tif", b"this is not a tiff" * 10), ("garbage.svs", b"\0" * 64)])
def test_garbage_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match=rf"{name}: not a readable slide or image \(") as info:
        open_slide(path)
    assert "\n" not in str(info.value)


def test_truncated_svs(tmp_path):
    path = tmp_path / "cut.svs"
    path.write_bytes(SVS.read_bytes()[:4096])
    with pytest.raises(SlideError, match="cut.svs"):
        open_slide(path).read(0, 0, 0, 64, 64)


@pytest.mark.parametrize("keep", [4096, 1_000_000])
def test_truncated_svs_says_so_in_one_readable_line(tmp_path, keep):
    path = tmp_path / "cut.svs"
    path.write_bytes(SVS.read_bytes()[:keep])
    with pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable slide or image (the TIFF is truncated or damaged")
    assert f"{keep:,} bytes" in message and "IndexError" not in message and "\n" not in message


def test_tiff_content_is_read_whatever_its_name(tmp_path):
    """A TIFF is opened by what it is (.btf, .tf8, a renamed file), not refused by its extension."""
    planes = np.random.default_rng(0).integers(0, 4000, (2, 64, 80), dtype=np.uint16)
    path = tmp_path / "multiplex.btf"
    tifffile.imwrite(path, planes, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", bigtiff=True)
    slide = open_slide(path)
    assert slide.kind == "channels" and slide.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.read(0, 0, 0, 64, 80), planes)


def test_float_labels_open_as_labels_when_asked_and_fractions_are_refused(tmp_path):
    lab = tifffile.imread(MASK)[:64, :64].astype(np.float32)
    path = tmp_path / "float_labels.tif"
    tifffile.imwrite(path, lab, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    assert open_slide(path).kind == "channels"  # by content: one float channel (the whole-slide header says so)
    slide = open_slide(path, kind="labels")
    got = slide.read(0, 0, 0, 64, 64)
    assert slide.kind == "labels" and got.dtype == np.int32
    np.testing.assert_array_equal(got, lab.astype(np.int32))
    tifffile.imwrite(path, lab + 0.5, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    with pytest.raises(SlideError, match="float_labels.tif: read as labels .* fractional, negative or NaN values"):
        open_slide(path, kind="labels").read(0, 0, 0, 64, 64)


def test_unknown_and_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(SlideError, match="unsupported file type '.png'.*convert to OME-TIFF"):
        open_slide(tmp_path / "a.png")
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="not an OME-Zarr"):
        open_slide(tmp_path)


# --------------------------------------------------------------------------------------------- napari reader


def test_reader_rgb_multiscale_in_um(tmp_path):
    path = write_pyramid(tmp_path / "wsi.tif", pyramid(noisy_rgb(), 3), mpp=0.5)
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image" and kwargs["rgb"] is True and kwargs["multiscale"] is True
    assert isinstance(data, list) and len(data) == 3
    assert kwargs["name"] == "wsi" and kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("µm", "µm")
    assert kwargs["metadata"]["napari_crafts"]["mpp"] == 0.5
    assert kwargs["metadata"]["napari_crafts"]["path"] == str(path)


def test_reader_labels_without_mpp_warns(monkeypatch):
    import napari.utils.notifications as notifications

    warnings: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", warnings.append)
    [(data, kwargs, layer_type)] = napari_get_reader([str(MASK)])(str(MASK))
    assert layer_type == "labels" and kwargs["multiscale"] is False and isinstance(data, da.Array)
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["units"] == ("pixel", "pixel")
    assert kwargs["metadata"]["napari_crafts"]["mpp"] is None
    assert len(warnings) == 1 and "stardist_dsb2018_mask2d: the file has no pixel size" in warnings[0]


def test_reader_channels_and_provenance(tmp_path):
    data = np.zeros((2, 64, 64), np.uint16)
    prov = {"synthetic": True, "seed": 3}
    path = write_ngff(tmp_path / "fl.ome.zarr", data, [{"name": "c", "type": "channel"}, *SPACE], version="0.5",
                      omero={"channels": [{"label": "DAPI"}, {"label": "CD3"}]}, extra_attrs={"napari_crafts": prov})
    [(levels, kwargs, layer_type)] = napari_get_reader(str(path))(str(path))
    assert layer_type == "image" and kwargs["channel_axis"] == 0 and kwargs["name"] == ["DAPI", "CD3"]
    assert [lv.shape for lv in levels] == [(2, 64, 64), (2, 32, 32)]
    metas = [m["napari_crafts"] for m in kwargs["metadata"]]  # one record per channel layer, each naming its channel
    assert [(m["channel"], m["channel_index"]) for m in metas] == [("DAPI", 0), ("CD3", 1)]
    assert all(m["synthetic"] is True and m["seed"] == 3 and m["mpp"] == 0.5 for m in metas)


def test_reader_layer_tuples_build_napari_layers(tmp_path):
    from napari.layers import Layer

    path = write_pyramid(tmp_path / "wsi.tif", pyramid(noisy_rgb(), 2), mpp=0.5)
    [(data, kwargs, layer_type)] = napari_get_reader(str(path))(str(path))
    layer = Layer.create(data, kwargs, layer_type)
    assert layer.multiscale and layer.rgb and tuple(layer.scale) == (0.5, 0.5)
    assert str(layer.units[0]) == "micrometer"


def test_reader_declines_unsupported(tmp_path):
    shutil.copy(MASK, tmp_path / "a.tif")
    (tmp_path / "plain").mkdir()
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    assert napari_get_reader(str(tmp_path / "x.mrxs")) is None
    assert napari_get_reader(str(tmp_path / "plain")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "a.tif")]) is None
    assert napari_get_reader(str(tmp_path / "a.tif")) is not None
    assert napari_get_reader(str(tmp_path / "x.zarr")) is not None


def test_a_labels_file_is_recognised_without_the_default_dask_scheduler(tmp_path) -> None:  # noqa: ANN001
    """Inside a dask worker the default scheduler is the cluster's, which cannot run the recognition's read: it
    reads in its own thread (synth's and generate's workers open label tiles by path)."""
    import dask
    import tifffile

    from napari_crafts.io.slide import open_slide

    labels = np.zeros((96, 96), np.uint16)
    labels[10:30, 10:30], labels[50:70, 40:60] = 1, 2
    path = tmp_path / "tile_0001.tif"  # a name that says nothing about labels
    tifffile.imwrite(path, labels)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default dask scheduler was used")

    with dask.config.set(scheduler=refuse):
        slide = open_slide(path)
    assert slide.kind == "labels"
