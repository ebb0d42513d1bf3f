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
        w._labels_layer.value = labels
        assert w.where.mpp is None
        pixel_size.set_pixel_size([labels], 0.3)  # the dock shows it at once, not only at Generate
        assert (w.where.mpp, w.where.mpp_origin) == (0.3, "set in Pixel size")
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
    from napari_crafts.generation.job import ModelChoice
    from napari_crafts.model.card import ModelCard
    from napari_crafts.model.catalog import resolve

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((8, 8), np.uint8), name="unknown")
    demo_mpp = ModelCard.read(Path(resolve("demo"))).mpp
    assert demo_mpp == 0.5  # the bundled demo model's card
    assert warn_unknown_mpp(layer, None, ModelChoice.chosen("demo")) == ("'unknown' has no pixel size",)
    (told,) = [m for sev, m in messages if sev == "warning"]
    assert "generated as if it were at the model's 0.5 µm/px" in told
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "the bundled\n   demo model: 0.5 µm/px" in readme


# -- 14. progress in napari's activity panel, tooltips, Compare's numbers, the Prompt dock's units ----------------


def activity_bars(viewer: Any) -> list[Any]:
    """The progress bars napari's activity panel shows now."""
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    dialog = viewer.window._qt_window._activity_dialog
    return [bar for bar in dialog.findChildren(QtLabeledProgressBar) if bar.progress is not None]


@pytest.mark.parametrize("ending", ["done", "cancelled", "failed", "window closed"])
def test_a_runs_progress_is_shown_in_the_activity_panel_and_closed_however_it_ends(
    make_napari_viewer: Any, qtbot: Any, ending: str
) -> None:
    import threading

    from napari.utils import progress

    from napari_crafts._widgets._runner import JobRunner
    from napari_crafts.generation.progress import Stage
    from napari_crafts.generation.region import Progress

    viewer = make_napari_viewer()
    runner = JobRunner("Generate H&&E")
    viewer.window.add_dock_widget(runner.native)
    release = threading.Event()

    def job() -> Any:
        yield Progress(tiles_done=1, tiles=3, step=1, steps=2)  # 3 of 6 network passes
        while not release.is_set():
            if runner.cancel_event.is_set():
                return None
            yield Stage("drawing")
            release.wait(0.01)
        if ending == "failed":
            raise OSError("disk full")  # (not RuntimeError: superqt takes that for a deleted worker)
        yield Progress(tiles_done=3, tiles=3, step=0, steps=2)
        return "finished"

    before = set(progress._all_instances)
    seen: list[str] = []
    show = runner.status
    runner.status = lambda text: (seen.append(text), show(text))  # type: ignore[method-assign]
    runner.start(job, viewer, None)
    ours = [bar for bar in progress._all_instances if bar not in before]
    assert [bar.desc for bar in ours] == ["napari-crafts: Generate H&E"]
    qtbot.waitUntil(lambda: runner._progress.value == 3, timeout=WAIT_MS)
    (bar,) = ours
    assert (bar.n, bar.total) == (3, 6) and (runner._progress.value, runner._progress.max) == (3, 6)
    (shown,) = [b for b in activity_bars(viewer) if b.progress is bar]  # in the panel, as in the dock
    assert shown.description_label.text() == "napari-crafts: Generate H&E: "
    assert (shown.qt_progress_bar.value(), shown.qt_progress_bar.maximum()) == (3, 6)
    if ending == "cancelled":
        runner.cancel()
    elif ending == "window closed":
        runner.shutdown()
    else:
        release.set()
    qtbot.waitUntil(lambda: not runner.running or ending == "window closed", timeout=WAIT_MS)
    release.set()
    assert bar not in progress._all_instances and runner._activity is None  # closed, not left spinning
    dialog = viewer.window._qt_window._activity_dialog
    assert dialog.get_pbar_from_prog(bar) is None or not dialog.get_pbar_from_prog(bar).isVisible()  # panel: gone
    assert ("done: finished" in seen) == (ending == "done") and runner.worker is None or ending == "window closed"


def test_every_button_says_what_it_does(make_napari_viewer: Any) -> None:
    from napari_crafts._widgets._text import BUTTON_TOOLTIPS

    viewer = make_napari_viewer()
    docks = {
        name: viewer.window.add_plugin_dock_widget("napari-crafts", name)[1]
        for name in ("Labels → H&E", "Fluorescence → H&E", "Prompt → H&E", "Compare", "Pixel size", "Check synthetic")
    }
    labels, fluorescence, prompt = docks["Labels → H&E"], docks["Fluorescence → H&E"], docks["Prompt → H&E"]
    expected = {
        labels.runner.run_button: "generate",
        labels.runner._cancel: "cancel",
        fluorescence._preview: "preview",
        prompt._use_preset: "use_preset",
        docks["Pixel size"]._set: "set_pixel_size",
        docks["Check synthetic"]._check: "check_synthetic",
        docks["Compare"].runner.run_button: "compute",
        labels.offer._anyway: "run_anyway",
    }
    for button, key in expected.items():
        assert button.tooltip == BUTTON_TOOLTIPS[key] and button.native.toolTip() == BUTTON_TOOLTIPS[key]
    from qtpy.QtWidgets import QPushButton

    for dock in docks.values():  # and no button anywhere in the docks without one (its own, or its field's)
        buttons = dock.native.findChildren(QPushButton)
        bare = [b.text() for b in buttons if b.text() and not (b.toolTip() or b.parentWidget().toolTip())]
        assert bare == [], bare


def test_compare_says_what_its_numbers_mean(make_napari_viewer: Any, he: np.ndarray, qtbot: Any) -> None:
    from napari_crafts._widgets._text import COMPARE_MEANING

    viewer = make_napari_viewer()
    real = np.ascontiguousarray(he[:128, :128])
    viewer.add_image(real, rgb=True, name="real")
    shifted = np.roll(real, 3, axis=1)  # the same tissue, 3 px off: what texture that is not aligned scores
    viewer.add_image(shifted, rgb=True, name="synthetic", metadata={"napari_crafts": {"synthetic": True}})
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Compare")
    w._tile_box.value = 64
    assert w._synthetic_layer.value.name == "synthetic" and w._real_layer.value.name == "real"
    w.compute()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w._results.value.endswith(COMPARE_MEANING) and w._results.tooltip == COMPARE_MEANING
    assert "pixel-for-pixel" in COMPARE_MEANING and "SSIM 0.16, PSNR 12.4 dB, NCC 0.42" in COMPARE_MEANING
    # the line's point, on real H&E: the same tissue 3 px off already scores far below 1
    assert w.evaluation is not None and w.evaluation.result.to_row()["SSIM"] < 0.6


@pytest.mark.parametrize("others", ["pixels", "µm", "none"])
def test_the_prompt_docks_output_sits_in_the_units_of_the_other_layers(
    make_napari_viewer: Any, tiny_model: Path, qtbot: Any, tmp_path: Path, others: str
) -> None:
    viewer = make_napari_viewer()
    if others == "pixels":
        viewer.add_labels(np.zeros((64, 64), np.uint8), name="nuclei")
    elif others == "µm":
        viewer.add_labels(np.zeros((64, 64), np.uint8), name="nuclei", scale=(0.5, 0.5), units=("µm", "µm"))
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Prompt → H&E")
    c = w.controls
    c._model.value = str(tiny_model)
    c._steps.value, c._tile.value, c._overlap.value, c._seed.value = 1, 64, 16, 1
    w._height.value = w._width.value = 64
    w.generate()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    out = viewer.layers[-1]
    assert out.metadata["napari_crafts"]["mode"] == "prompt"
    mpp = out.metadata["napari_crafts"]["model"]["mpp"]
    if others == "pixels":
        assert [str(u) for u in out.units[-2:]] == ["pixel", "pixel"]
        np.testing.assert_allclose(out.scale[-2:], (1.0, 1.0))
    else:
        assert [str(u) for u in out.units[-2:]] == ["micrometer", "micrometer"]
        np.testing.assert_allclose(out.scale[-2:], (mpp, mpp))
    (saved,) = w._save.save(str(tmp_path / "prompt.ome.tif"))  # the file has the model's µm/px either way
    assert ome_tiff_mpp(Path(saved))[:2] == (pytest.approx(mpp), pytest.approx(mpp))


# -- 12. napari-crafts as the preferred reader for slide extensions ----------------------------------------------


def test_our_reader_is_offered_for_slides_and_the_readmes_setting_makes_it_the_one_used(
    make_napari_viewer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari.settings
    from napari.plugins._npe2 import get_readers
    from napari.settings import NapariSettings

    from _data import CMU1_SVS, DSB_IMAGE

    viewer = make_napari_viewer()  # plugins discovered
    qptiff = tmp_path / "core.qptiff"  # the offer goes by the manifest's filename patterns
    qptiff.write_bytes(b"")
    for path in (CMU1_SVS, qptiff, DSB_IMAGE, tmp_path / "slide.ndpi", tmp_path / "x.ome.tiff"):
        assert "napari-crafts" in get_readers(path), path
    assert "napari-crafts" in get_readers(CMU1_SVS) and len(get_readers(CMU1_SVS)) > 1  # napari asks which
    # the README's snippet, run against settings that are never saved (not the user's file)
    monkeypatch.setattr(napari.settings, "_SETTINGS", NapariSettings(config_path=None))
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("from napari.settings import get_settings", 1)[1].split("```", 1)[0]
    exec("from napari.settings import get_settings" + snippet.replace("\n   ", "\n"), {})  # noqa: S102
    prefs = napari.settings.get_settings().plugins.extension2reader
    assert {p: prefs[p] for p in ("*.svs", "*.qptiff", "*.tif")} == dict.fromkeys(
        ("*.svs", "*.qptiff", "*.tif"), "napari-crafts"
    )
    (slide,) = viewer.open(CMU1_SVS, plugin=None)  # as File › Open does: the preference, no dialog: ours, in µm
    assert slide.metadata["napari_crafts"]["mpp"] == pytest.approx(0.499)
    assert [str(u) for u in slide.units[-2:]] == ["micrometer", "micrometer"]


def test_compare_picks_a_readable_heat_map_tile_until_the_user_sets_one(
    make_napari_viewer: Any, he: np.ndarray, qtbot: Any
) -> None:
    from napari_crafts._widgets.compare import readable_tile

    viewer = make_napari_viewer()
    real = np.ascontiguousarray(he[:256, :384])
    viewer.add_image(real, rgb=True, name="real")
    viewer.add_image(
        np.roll(real, 3, axis=1), rgb=True, name="synthetic", metadata={"napari_crafts": {"synthetic": True}}
    )
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Compare")
    w.compute()  # the default 256-px tile would give a 1 × 2 heat map
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    heat = viewer.layers["SSIM per tile · synthetic"]
    assert w._tile_box.value == readable_tile(256, 384) == 32 and heat.data.shape == (8, 12)
    w._tile_box.value = 128  # the user's choice stays
    w.compute()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w._tile_box.value == 128 and viewer.layers["SSIM per tile · synthetic"].data.shape == (2, 3)
    assert [readable_tile(*hw) for hw in ((512, 512), (2967, 2220), (100_000, 80_000))] == [64, 272, 1024]


def test_the_pixel_size_docks_button_makes_our_reader_the_preferred_one_for_the_manifests_slide_patterns(
    make_napari_viewer: Any, monkeypatch: pytest.MonkeyPatch, messages: list[tuple[str, str]]
) -> None:
    import napari.settings
    import yaml
    from napari.settings import NapariSettings

    import napari_crafts
    from napari_crafts._widgets._text import BUTTON_TOOLTIPS, SLIDE_PATTERNS

    manifest = yaml.safe_load((Path(napari_crafts.__file__).parent / "napari.yaml").read_text(encoding="utf-8"))
    (reader,) = manifest["contributions"]["readers"]
    assert set(SLIDE_PATTERNS) <= set(reader["filename_patterns"])
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"ours = {SLIDE_PATTERNS!r}".replace("'", '"') in readme  # the README's snippet sets the same
    monkeypatch.setattr(napari.settings, "_SETTINGS", NapariSettings(config_path=None))  # never the user's file
    napari.settings.get_settings().plugins.extension2reader = {"*.czi": "someone-else", "*.tif": "napari"}
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Pixel size")
    assert w._prefer.tooltip == BUTTON_TOOLTIPS["prefer_reader"]
    w._prefer.changed.emit(None)  # the click
    prefs = napari.settings.get_settings().plugins.extension2reader
    assert prefs == {"*.czi": "someone-else", **dict.fromkeys(SLIDE_PATTERNS, "napari-crafts")}
    assert any(sev == "info" and m.startswith("napari-crafts now opens .svs, .ndpi") for sev, m in messages)
