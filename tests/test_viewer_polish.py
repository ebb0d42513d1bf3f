"""The viewer's polish of issue 20 ("In napari" 12-14), in a real napari viewer (Xvfb), tiny random model: a saved
file keeps the µm/px the user gave, the sample data and the first-run warning agree on pixel sizes, progress in
napari's activity panel, tooltips, what Compare's numbers mean, the Prompt dock's units, and the reader offered for
slide extensions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("napari")
WAIT_MS = 180_000


@pytest.fixture
def labels_widget(make_napari_viewer: Any, tiny_model: Path) -> tuple[Any, Any]:
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    c = w.controls
    c._model.value = str(tiny_model)
    c._steps.value, c._tile.value, c._overlap.value, c._seed.value, c._prompt.value = 1, 64, 16, 5, "nuclei"
    return viewer, w


def ome_tiff_mpp(path: Path) -> tuple[float, float, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata or ""
    found = dict(re.findall(r'(PhysicalSize[XY]Unit|PhysicalSize[XY])="([^"]*)"', xml))
    return float(found["PhysicalSizeX"]), float(found["PhysicalSizeY"]), found["PhysicalSizeXUnit"]


def ome_zarr_scale(path: Path) -> tuple[list[float], list[str | None]]:
    attrs = (
        json.loads((path / "zarr.json").read_text())["attributes"]
        if (path / "zarr.json").exists()
        else json.loads((path / ".zattrs").read_text())
    )
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    return ms["datasets"][0]["coordinateTransformations"][0]["scale"], [a.get("unit") for a in ms["axes"]]


# -- 13. saving keeps the µm/px the user gave; the sample and the warning agree -------------------------------------


@pytest.mark.parametrize("how", ["Pixel size widget", "typed in the dock"])
def test_saving_keeps_the_pixel_size_the_user_gave(
    labels_widget: tuple[Any, Any], nuclei: tuple[np.ndarray, np.ndarray], qtbot: Any, tmp_path: Path, how: str
) -> None:
    from PIL import Image

    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:96, :96], name="nuclei")  # no pixel size: pixel units
    if how == "Pixel size widget":
        _, pixel_size = viewer.window.add_plugin_dock_widget("napari-crafts", "Pixel size")
        pixel_size.set_pixel_size([labels], 0.3)
        w._labels_layer.value = labels
    else:
        w._labels_layer.value = labels
        w.where._mpp_box.value = 0.3
    w.generate()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    assert w.where.mpp == 0.3  # the run's pixel size, read again at Generate
    out = viewer.layers[-1]
    assert out.metadata["napari_crafts"]["synthetic"] is True
    tif, zarr_, png = (str(tmp_path / f"out{ext}") for ext in (".ome.tif", ".ome.zarr", ".png"))
    for path in (tif, zarr_, png):
        assert w._save.save(path) == [path]
    assert ome_tiff_mpp(Path(tif)) == (pytest.approx(0.3), pytest.approx(0.3), "µm")
    scale, units = ome_zarr_scale(Path(zarr_))
    assert scale[-2:] == pytest.approx([0.3, 0.3]) and units[-2:] == ["micrometer", "micrometer"]
    with Image.open(png) as im:
        assert im.info["dpi"] == pytest.approx((25400 / 0.3, 25400 / 0.3), rel=1e-3)


def test_a_name_typed_in_the_save_dialog_gets_an_extension(
    labels_widget: tuple[Any, Any],
    nuclei: tuple[np.ndarray, np.ndarray],
    qtbot: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import magicgui.widgets

    viewer, w = labels_widget
    w._labels_layer.value = viewer.add_labels(
        nuclei[1][:64, :64], name="nuclei", scale=(0.25, 0.25), units=("µm", "µm")
    )
    w.generate()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    asked: list[dict[str, Any]] = []

    def dialog(**kwargs: Any) -> str:
        asked.append(kwargs)
        return str(tmp_path / "my result")  # typed without an extension

    monkeypatch.setattr(magicgui.widgets, "show_file_dialog", dialog)
    assert w._save.save() == [str(tmp_path / "my result.ome.tif")]
    assert asked[0]["start_path"] == "synthetic_HE_CRAFTS_nuclei.ome.tif"  # the proposed name has one too
    assert ome_tiff_mpp(tmp_path / "my result.ome.tif")[0] == pytest.approx(0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my result.ome.tif"]


def test_the_sample_data_opens_at_its_documented_pixel_size(make_napari_viewer: Any) -> None:
    from napari_crafts._sample_data import SAMPLE_MPP
    from napari_crafts._widgets.check import check_layer

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert SAMPLE_MPP == 0.25 and "opens at 0.25 µm/px" in readme
    viewer = make_napari_viewer()
    viewer.open_sample("napari-crafts", "nuclei")
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    w._labels_layer.value = viewer.layers["nuclei labels (DSB 2018)"]
    assert w.where.mpp == 0.25 and w.where.mpp_origin == "from the layer's scale (micrometer)"
    # its notes are file info, not a provenance record that "does not say synthetic"
    assert check_layer(viewer.layers["nuclei labels (DSB 2018)"], viewer).provenance == {"found": False}


def test_the_unknown_pixel_size_warning_names_the_demo_models_own(
    make_napari_viewer: Any, messages: list[tuple[str, str]]
) -> None:
    from napari_crafts._widgets._controls import warn_unknown_mpp
    from napari_crafts.model.card import ModelCard
    from napari_crafts.model.catalog import resolve

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((8, 8), np.uint8), name="unknown")
    demo_mpp = ModelCard.read(Path(resolve("demo"))).mpp
    assert demo_mpp == 0.5  # the bundled demo model's card
    assert warn_unknown_mpp(layer, None, {"ref": "demo"}) == ("'unknown' has no pixel size",)
    (told,) = [m for sev, m in messages if sev == "warning"]
    assert "generated as if it were at the model's 0.5 µm/px" in told
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "the bundled\n   demo model: 0.5 µm/px" in readme
