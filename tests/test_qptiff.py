"""Immunofluorescence files open as one layer per named channel, in µm (QPTIFF, OME-TIFF), and roles by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_crafts._reader import napari_get_reader
from napari_crafts.generation.conditioning import ConditioningError, parse_channel_roles
from napari_crafts.io.slide import open_slide

MPP = 0.4977
CHANNELS = [("DAPI", "0,0,255", ""), ("Opal 520", "0,255,0", "PanCK"), ("Cy3", "255,255,0", "")]


def qpi_xml(name: str, color: str, marker: str = "", kind: str = "FullResolution") -> str:
    """A page description as Vectra/PhenoImager scanners write it (declared utf-16)."""
    biomarker = f"<Biomarker>{marker}</Biomarker>" if marker else ""
    return ('<?xml version="1.0" encoding="utf-16"?>\r\n<PerkinElmer-QPI-ImageDescription>\r\n'
            f"<DescriptionVersion>2</DescriptionVersion><ImageType>{kind}</ImageType>"
            f"<Name>{name}</Name><Color>{color}</Color>{biomarker}</PerkinElmer-QPI-ImageDescription>")


def write_qptiff(path: Path, data: np.ndarray, channels=CHANNELS, mpp: float = MPP) -> Path:
    """One 2-D page per channel (pixel size in the resolution tags, cm), then an RGB thumbnail page."""
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        for (name, color, marker), plane in zip(channels, data, strict=True):
            tw.write(plane, description=qpi_xml(name, color, marker), software="PerkinElmer-QPI", metadata=None,
                     **res)
        thumb = np.zeros((data.shape[1] // 4, data.shape[2] // 4, 3), np.uint8)
        tw.write(thumb, description=qpi_xml("", "", kind="Thumbnail"), software="PerkinElmer-QPI", metadata=None,
                 photometric="rgb")
    return path


@pytest.fixture
def channels(nuclei) -> np.ndarray:
    image = nuclei[0][:96, :128].astype(np.uint16)
    return np.stack([image, image // 2 + 10, (image[::-1] // 3).astype(np.uint16)])


def test_qptiff_opens_as_named_channels_in_um(tmp_path, channels):
    path = write_qptiff(tmp_path / "vectra.qptiff", channels)
    slide = open_slide(path)
    assert slide.kind == "channels" and slide.mpp == pytest.approx(MPP)
    assert slide.channel_names == ["DAPI", "PanCK (Opal 520)", "Cy3"]  # the biomarker first: roles read it
    assert slide.properties["channel_colors"] == [(0, 0, 255), (0, 255, 0), (255, 255, 0)]
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), channels)  # the thumbnail page is not a channel

    reader = napari_get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert len(layers) == 1
    data, meta, kind = layers[0]
    assert kind == "image" and meta["channel_axis"] == 0
    assert meta["name"] == ["DAPI", "PanCK (Opal 520)", "Cy3"]
    assert meta["scale"] == (pytest.approx(MPP), pytest.approx(MPP)) and meta["units"] == ("µm", "µm")
    blue, green, yellow = (np.asarray(c.colors[-1][:3]) for c in meta["colormap"])
    np.testing.assert_allclose(blue, (0, 0, 1)) and np.testing.assert_allclose(green, (0, 1, 0))
    np.testing.assert_allclose(yellow, (1, 1, 0))
    lo, hi = meta["contrast_limits"][0]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(channels[0], (0.5, 99.8))))
    # each channel layer has its own record (not one dict shared by all)
    assert [m["napari_crafts"]["channel"] for m in meta["metadata"]] == meta["name"]
    assert len({id(m) for m in meta["metadata"]}) == 3


def test_qptiff_opens_in_napari_as_one_layer_per_channel(make_napari_viewer, tmp_path, channels):
    viewer = make_napari_viewer()
    path = write_qptiff(tmp_path / "vectra.qptiff", channels)
    viewer.open(str(path), plugin="napari-crafts")
    assert [layer.name for layer in viewer.layers] == ["DAPI", "PanCK (Opal 520)", "Cy3"]
    dapi = viewer.layers["DAPI"]
    np.testing.assert_allclose(dapi.scale, (MPP, MPP))
    assert str(dapi.units[-1]) == "micrometer" and dapi.blending == "additive"
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    assert w._channel_layers.value == list(viewer.layers)  # the file's channels are chosen
    assert w.roles() == {0: "nuclear", 1: "cytoplasm", 2: "other"}
    assert w.where.mpp == pytest.approx(MPP) and w.where.mpp_origin == "from the file"


def test_ome_tiff_channels_keep_their_names_and_colours(tmp_path, channels):
    path = tmp_path / "if.ome.tif"
    tifffile.imwrite(path, channels, photometric="minisblack", metadata={
        "axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
        "Channel": {"Name": ["Hoechst", "CD45", "Ki67"], "Color": [0x0000FFFF, 0x00FF00FF, -16776961]},
    })
    data, meta, _ = napari_get_reader(str(path))(str(path))[0]
    assert meta["name"] == ["Hoechst", "CD45", "Ki67"] and meta["scale"] == (0.325, 0.325)
    np.testing.assert_allclose(np.asarray(meta["colormap"][0].colors[-1][:3]), (0, 0, 1))
    np.testing.assert_allclose(np.asarray(meta["colormap"][2].colors[-1][:3]), (1, 0, 0))  # 0xFF0000FF: red


def test_channel_roles_from_the_command_line():
    names = ["DAPI", "FITC", "Cy3"]
    assert parse_channel_roles("DAPI=nuclear,FITC=cytoplasm", names) == {0: "nuclear", 1: "cytoplasm", 2: "other"}
    assert parse_channel_roles(" dapi = nuclear , 2=membrane ", names) == {0: "nuclear", 1: "other", 2: "membrane"}
    with pytest.raises(ConditioningError, match="'x.qptiff' has no channel 'TRITC'; its channels are: 0=DAPI, 1=FITC"):
        parse_channel_roles("TRITC=nuclear", names, name="x.qptiff")
    with pytest.raises(ConditioningError, match="Unknown role 'nucleus' for channel 'DAPI'"):
        parse_channel_roles("DAPI=nucleus", names)
    with pytest.raises(ConditioningError, match="'DAPI' is not CHANNEL=ROLE"):
        parse_channel_roles("DAPI", names)
    with pytest.raises(ConditioningError, match="mark the nuclear channel"):
        parse_channel_roles("Cy3=other", names)


def test_generate_takes_channel_roles_by_the_names_the_file_stores(tmp_path, channels, capsys):
    from napari_crafts.cli import main
    from napari_crafts.wsi.source_file import open_source

    path = write_qptiff(tmp_path / "vectra.qptiff", channels)
    guessed = open_source(path).roles
    given = open_source(path, channels="cy3=nuclear,PanCK (Opal 520)=cytoplasm").roles
    assert given == {0: "other", 1: "cytoplasm", 2: "nuclear"} and given != guessed
    # an unknown name: one line listing the file's channels, before any model or cluster starts, nothing written
    out = tmp_path / "out.ome.zarr"
    assert main(["generate", str(path), str(out), "--model", "tiny-demo", "--channels", "FITC=nuclear"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("'vectra.qptiff' has no channel 'FITC'; its channels are: 0=DAPI, 1=PanCK (Opal 520), 2=Cy3.")
    assert "\n" not in err and not out.exists()
    with pytest.raises(ValueError, match="holds nuclear labels: --channels is for fluorescence"):
        open_source(tifffile_labels(tmp_path / "labels.tif"), mpp=0.5, channels="DAPI=nuclear")


def tifffile_labels(path: Path) -> Path:
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    tifffile.imwrite(path, labels)
    return path
