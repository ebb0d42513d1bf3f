"""The viewer's rough edges of issue 20 ("In napari" 4-9), in a real napari viewer (Xvfb), tiny random model:
what the reader opens as labels, what Check synthetic counts as provenance, a removed output layer, what a
cancelled run leaves, and closing the window mid-run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import CMU1_SVS, DSB_IMAGE, DSB_MASK
from napari_crafts.export import watermark as wm
from napari_crafts.export.check import NO_SIGN

pytest.importorskip("napari")
WAIT_MS = 180_000
MPP = 0.25


def said(runner: Any) -> list[str]:
    """Every status line ``runner`` shows from now on."""
    texts: list[str] = []
    show = runner.status
    runner.status = lambda text: (texts.append(text), show(text))
    return texts


# -- 5. only images that look like labels open as labels -------------------------------------------------------


def test_a_fluorescence_tiff_opens_as_an_image_the_fluorescence_dock_takes_and_its_mask_as_labels(
    make_napari_viewer: Any, tmp_path: Path
) -> None:
    import napari
    import tifffile

    from napari_crafts.io.slide import open_slide

    viewer = make_napari_viewer()
    (image,) = viewer.open(DSB_IMAGE, plugin="napari-crafts")
    (mask,) = viewer.open(DSB_MASK, plugin="napari-crafts")
    assert isinstance(image, napari.layers.Image) and image.name == "stardist_dsb2018_img2d"
    assert image.data.shape == (512, 512) and image.data.dtype == np.uint16
    assert isinstance(mask, napari.layers.Labels)
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    assert w._channel_layers.value == [image]  # chosen: the last fluorescence file opened
    # the rule is the pixels', not the name's: the mask under a plain name is still labels
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, tifffile.imread(DSB_MASK))
    assert open_slide(plain).kind == "labels"
    # and a name that says labels opens as labels whatever its pixels; kind= overrides the rule
    named = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(named, tifffile.imread(DSB_IMAGE))
    assert open_slide(named).kind == "labels" and open_slide(DSB_IMAGE, kind="labels").kind == "labels"


# -- 6. Check synthetic: the reader's file info is not provenance; records read from the file ------------------


def test_check_synthetic_on_a_real_slide_finds_no_provenance(make_napari_viewer: Any) -> None:
    from napari_crafts._widgets.check import check_layer

    viewer = make_napari_viewer()
    (slide,) = viewer.open(CMU1_SVS, plugin="napari-crafts")
    assert slide.metadata["napari_crafts"]["mpp"] == pytest.approx(0.499)  # the reader's own file info
    rep = check_layer(slide, viewer)
    assert rep.provenance == {"found": False} and not rep.synthetic and rep.verdict == NO_SIGN


@pytest.fixture
def synthetic(he: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Real H&E marked as an output is, and its record."""
    from napari_crafts.provenance import make_provenance

    record = make_provenance(
        mode="labels",
        model={"name": "tiny-demo"},
        settings={"seed": 3, "steps": 2},
        source={"name": "nuclei"},
        region={"y0": 0, "x0": 0},
    )
    payload = wm.sign_record(record) or pytest.fail("not marked")
    return wm.watermark_image(np.ascontiguousarray(he[:256, :256]), payload), record


@pytest.mark.parametrize("reader", ["napari-crafts", "napari"])
def test_a_synthetic_layer_saved_by_naparis_tiff_writer_is_told_by_its_watermark(
    make_napari_viewer: Any, synthetic: tuple[np.ndarray, dict[str, Any]], tmp_path: Path, reader: str
) -> None:
    from napari_crafts._widgets.check import check_layer

    viewer = make_napari_viewer()
    rgb, record = synthetic
    viewer.add_image(rgb, rgb=True, name="synthetic", metadata={"napari_crafts": record})
    path = tmp_path / "saved.tif"
    viewer.layers.save(str(path), plugin="napari")  # napari's builtin writer: pixels only, no metadata
    (reopened,) = viewer.open(path, plugin=reader)
    rep = check_layer(reopened, viewer)
    assert rep.provenance == {"found": False} and rep.record_match is None
    assert rep.verdict == (
        "SYNTHETIC: napari-crafts watermark in the pixels (no provenance metadata: stripped or re-saved)"
    )


def test_our_png_opened_by_naparis_reader_is_checked_with_the_record_in_its_file(
    make_napari_viewer: Any, synthetic: tuple[np.ndarray, dict[str, Any]], tmp_path: Path
) -> None:
    from napari_crafts._widgets.check import CheckSynthetic
    from napari_crafts._writer import save_layer_data

    viewer = make_napari_viewer()
    rgb, record = synthetic
    (png,) = save_layer_data(
        str(tmp_path / "out.png"), rgb, {"name": "out", "metadata": {"napari_crafts": record}}, kind="png"
    )
    (layer,) = viewer.open(png, plugin="napari")  # napari's reader: the layer's metadata holds no record
    assert "napari_crafts" not in layer.metadata
    rep = CheckSynthetic(viewer).check(layer)
    assert rep.record_match is True and rep.provenance["synthetic"] is True and rep.provenance["from"] == png
    assert rep.verdict == "SYNTHETIC: napari-crafts watermark and provenance record, and they match"
    # a layer with a record of its own is checked with that record, not its file's
    layer.metadata["napari_crafts"] = {**record, "seed": 4}
    rep = CheckSynthetic(viewer).check(layer)
    assert rep.record_match is False and "from" not in rep.provenance


# -- 7. removing the output layer stops the run --------------------------------------------------------------------


def test_removing_the_output_layer_stops_the_run_and_says_so(
    labels_widget: tuple[Any, Any], nuclei: tuple[np.ndarray, np.ndarray], qtbot: Any, messages: list[tuple[str, str]]
) -> None:
    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:160, :160], name="nuclei", scale=(MPP, MPP), units=("µm", "µm"))
    w._labels_layer.value = labels
    texts = said(w.runner)
    worker = w.generate()
    out = viewer.layers[-1]
    events: list[Any] = []
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: out.data[..., 3].any(), timeout=WAIT_MS)
    viewer.layers.remove(out)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    why = f"The output layer '{out.name}' was removed: generation stopped."
    assert texts[-1] == why and w.runner._status.value == why
    assert ("warning", why) in messages  # no "tiles kept": the layer that held them is gone
    assert [layer.name for layer in viewer.layers] == ["nuclei"]
    assert sum(type(e).__name__ == "TileDone" for e in events) < 9  # stopped, not run to the end of 9 tiles


# -- 8. a cancelled run keeps only the model's tiles: glass stays clear ----------------------------------------------


def test_a_cancelled_run_leaves_glass_clear_and_keeps_the_models_tiles_only(
    make_napari_viewer: Any, qtbot: Any, he: np.ndarray
) -> None:
    from napari_crafts._widgets._runner import JobRunner, add_output_layer
    from napari_crafts.generation.progress import Stage
    from napari_crafts.generation.region import TileDone

    viewer = make_napari_viewer()
    runner = JobRunner()
    out = add_output_layer(
        viewer,
        (64, 256),
        name="out",
        scale=(1, 1),
        translate=(0, 0),
        provenance={"synthetic": True, "status": "running", "watermark": {"enabled": False}},
    )
    glass = np.full((64, 64, 3), 240, np.uint8)
    drawn = np.ascontiguousarray(he[:64, :64])

    def job() -> Any:  # as generate_region orders them: glass (no tissue) first, then the model's tiles
        yield TileDone(1, 4, (0, 128, 64, 192), glass, skipped=True)
        yield TileDone(2, 4, (0, 192, 64, 256), glass, skipped=True)
        yield TileDone(3, 4, (0, 0, 64, 64), drawn)
        while True:  # the model's next tile, until Cancel
            time.sleep(0.01)
            yield Stage("drawing")

    runner.start(job, viewer, out)
    qtbot.waitUntil(lambda: out.data[..., 3].any(), timeout=WAIT_MS)  # the model's first tile is shown
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_MS)
    assert (out.data[:, :64, 3] == 255).all() and not out.data[:, 64:].any()  # the glass blocks stay clear
    np.testing.assert_array_equal(out.data[:, :64, :3], drawn)
    assert out.metadata["napari_crafts"]["status"] == "cancelled after 1/2 tiles"  # of the model's 2 tiles
    assert runner._status.value == "cancelled: 1/2 tiles kept"


# -- 4. closing the window while the model loads --------------------------------------------------------------------


def test_closing_the_window_while_the_model_loads_ends_the_job_without_waiting_for_the_imports(
    make_napari_viewer: Any,
    tiny_model: Path,
    nuclei: tuple[np.ndarray, np.ndarray],
    qtbot: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    messages: list[tuple[str, str]],
) -> None:
    import sys
    import threading

    from napari_crafts._widgets import _runner
    from napari_crafts.generation import job

    gate = threading.Event()  # the "import" lasts until the test opens the gate
    (tmp_path / "nc_slow_import.py").write_text("import sys\nsys.modules['nc_gate'].wait(120)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "nc_gate", gate)
    monkeypatch.setattr(job, "HEAVY_IMPORTS", {"nc_slow_import": ()})
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    c = w.controls
    c._model.value, c._steps.value, c._tile.value, c._overlap.value = str(tiny_model), 1, 64, 16
    labels = viewer.add_labels(nuclei[1][:64, :64], name="nuclei", scale=(MPP, MPP), units=("µm", "µm"))
    w._labels_layer.value = labels
    try:
        worker = w.generate()
        seen: list[Any] = []
        worker.yielded.connect(seen.append)
        qtbot.waitUntil(lambda: len(seen) >= 2, timeout=WAIT_MS)  # waiting for the import
        out = viewer.layers[-1]
        texts = said(w.runner)
        viewer.window._qt_window.hide()  # what closing the main window does first (then napari quits)
        assert w.runner.cancel_event.is_set() and worker.abort_requested
        qtbot.waitUntil(lambda: worker not in _runner._RUNNING, timeout=WAIT_MS)  # the worker's thread has ended
        assert not gate.is_set()  # ... while the import still runs: nothing waits for it
        assert seen == [None] * len(seen)  # nothing but the import's heartbeat
        assert texts == []  # no handler ran after the close (the dock's widgets are gone)
        assert not out.data.any() and not [m for m in messages if m[0] == "error"]
    finally:
        gate.set()


# -- 9. approximate settings are said above Generate, with a way back to exact ---------------------------------------


def test_fast_settings_are_said_near_generate_with_one_click_back_to_exact(make_napari_viewer: Any) -> None:
    from napari_crafts.generation.estimate import fast_settings

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    c = w.controls
    c._steps.value, c._tile.value, c._overlap.value = 30, 1024, 128
    exact = c.settings()
    assert exact.exact and c.approximate_text == "" and c._approximate_row.native.isHidden()
    c.apply(fast_settings(exact))  # what "Use fast settings" does
    fast = c.settings()
    assert not fast.exact and (fast.steps, fast.tile_size) != (30, 1024)
    assert c.approximate_text == f"Settings are {fast.approximation}: faster, not the model's exact output."
    assert not c._approximate_row.native.isHidden() and c._exact_button.text == "Back to exact settings"
    c._exact_button.clicked.emit()
    assert c.settings() == exact and c.approximate_text == ""  # the settings from before, exactly
    c._cache_interval.value = 3  # an approximation chosen by hand under Advanced is said too
    assert "full UNet every 3 steps" in c.approximate_text
    c._exact_button.clicked.emit()
    assert c.settings() == exact and c._approximate_row.native.isHidden()
