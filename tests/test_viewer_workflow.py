"""The viewer workflow of issue 14, point by point, in a real napari viewer (headless, Xvfb), tiny model."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import LabelsSource

pytest.importorskip("napari")
WAIT_MS = 180_000


def small(controls, model, steps: int = 2) -> None:
    controls._model.value = str(model)
    controls._steps.value, controls._tile.value, controls._overlap.value, controls._seed.value = steps, 64, 16, 5
    controls._prompt.value = "nuclei"


@pytest.fixture
def labels_widget(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    small(w.controls, tiny_model)
    return viewer, w


def wait(qtbot, w) -> None:
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)


def said(runner) -> list[str]:
    """Every status line ``runner`` shows from now on."""
    texts: list[str] = []
    show = runner.status
    runner.status = lambda text: (texts.append(text), show(text))
    return texts


def warnings_(messages) -> list[str]:
    return [m for severity, m in messages if severity == "warning"]


# -- 1. Pixel size -----------------------------------------------------------------------------------------------


def test_pixel_size_lists_the_layers_with_the_active_one_chosen(make_napari_viewer, messages):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8), np.float32), name="image")
    labels = viewer.add_labels(np.zeros((8, 8), np.uint8), name="labels")  # added last: the active layer
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Pixel size")
    assert list(w._layers.choices) == [image, labels]
    assert w._layers.value == [labels]
    w._layers.value = []
    w._set.clicked.emit()
    assert ("error", "Choose one or more layers in the list first (click, Ctrl/Shift-click for several).") in messages
    w._layers.value = [image, labels]
    w._mpp.value = 0.5
    w._set.clicked.emit()
    for layer in (image, labels):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
        assert layer.metadata["napari_crafts"]["mpp"] == 0.5
    _, g = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    g._labels_layer.value = labels
    assert g.where.mpp == 0.5 and g.where.mpp_origin == "set in Pixel size"


# -- 3. µm/px from the layer; unknown said before the run -----------------------------------------------------------


def test_pixel_size_comes_from_the_layer_and_unknown_is_said_before_the_run(labels_widget, nuclei, qtbot, messages):
    viewer, w = labels_widget
    lab = nuclei[1][:64, :64]
    in_um = viewer.add_labels(lab, name="in µm", scale=(0.499, 0.499), units=("µm", "µm"))
    w._labels_layer.value = in_um
    assert w.where.mpp == 0.499 and w.where.mpp_origin == "from the layer's scale (micrometer)"
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="CMU-1", scale=(0.499, 0.499),
                     units=("µm", "µm"), metadata={"napari_crafts": {"mpp": 0.499, "kind": "rgb"}})
    plain = viewer.add_labels(lab, name="plain", scale=(0.499, 0.499))  # no unit, over a slide in µm
    w._labels_layer.value = plain
    assert w.where.mpp == 0.499 and w.where.mpp_origin == "from the layer's scale (µm, as 'CMU-1')"
    unknown = viewer.add_labels(lab, name="unknown")
    w._labels_layer.value = unknown
    assert w.where.mpp is None and w.where.mpp_origin.startswith("unknown")
    assert w.generate() is not None
    told = [m for m in warnings_(messages) if "'unknown' has no pixel size" in m]
    assert told and "model's 0.25 µm/px" in told[0]  # before the run, not after
    wait(qtbot, w)
    assert sum("has no pixel size" in m for m in warnings_(messages)) == 1  # and not again at the end


# -- 2, 6, 8, 9, 12: one run watched from start to end -------------------------------------------------------------


def test_a_run_is_transparent_until_painted_reads_a_copy_says_its_progress_and_saves(labels_widget, nuclei, qtbot,
                                                                                       engine, tmp_path):
    from napari_crafts.export import read_provenance

    viewer, w = labels_widget
    lab = nuclei[1][:100, :120].copy()
    labels = viewer.add_labels(lab.copy(), name="nuclei", scale=(0.25, 0.25), units=("µm", "µm"))
    w._labels_layer.value = labels
    texts = said(w.runner)
    worker = w.generate()
    labels.data[:] = 0  # painted over while it runs: the run has its own copy
    out = viewer.layers[-1]
    assert out.name == "synthetic H&E (CRAFTS) · nuclei"  # what it is first: the layer list never cuts it off
    assert out.data.shape == (100, 120, 4) and not out.data[..., 3].any()  # transparent: the labels stay visible
    assert [str(u) for u in out.units] == ["micrometer", "micrometer"]
    after_first: list[np.ndarray] = []
    worker.yielded.connect(lambda e: after_first.append(out.data[..., 3].copy())
                           if type(e).__name__ == "TileDone" and not after_first else None)
    wait(qtbot, w)
    assert after_first[0].any() and not after_first[0].all()  # the first tile is opaque, the rest still clear
    steps = [t for t in texts if " step " in t]
    assert steps and all(re.search(r"^tile \d/\d · step [12]/2( · about \d+ s left)?$", t) for t in steps), steps
    assert any(t.endswith("s left") for t in steps)  # the time left, measured from the steps so far
    assert out.data.shape == (100, 120, 3)  # done: every pixel painted
    settings = GenerationSettings(prompt="nuclei", seed=5, steps=2, tile_size=64, overlap=16)
    ref = run(generate_region(engine, LabelsSource(lab, name="nuclei", mpp=0.25), Region(0, 0, 100, 120), settings))
    np.testing.assert_array_equal(out.data, ref.rgb)
    written = w._save.save(str(tmp_path / "nuclei_synthetic.ome.tif"))
    record = read_provenance(written[0])
    assert record["synthetic"] is True and record["seed"] == 5 and record["mpp"] == 0.25


def test_cancel_stops_inside_the_first_step_and_leaves_no_empty_layer(labels_widget, nuclei, qtbot, tiny_model):
    from napari_crafts.model.engine import get_engine

    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:64, :64], name="nuclei", scale=(0.25, 0.25), units=("µm", "µm"))
    w._labels_layer.value = labels
    unet = get_engine(str(tiny_model)).unet  # the engine the widget uses (cached)
    inside, release = threading.Event(), threading.Event()

    def slow_step(module, args):  # a first step that lasts until the test has pressed Cancel
        inside.set()
        release.wait(20)

    hold = unet.mid_block.register_forward_pre_hook(slow_step)
    try:
        events: list = []
        worker = w.generate()
        worker.yielded.connect(events.append)
        qtbot.waitUntil(inside.is_set, timeout=WAIT_MS)
        w.runner.cancel()
        release.set()
        wait(qtbot, w)
    finally:
        hold.remove()
        release.set()
    assert not [e for e in events if type(e).__name__ == "Progress"]  # stopped inside step 1, not after it
    assert w.runner._status.value == "cancelled: nothing generated"
    assert [layer.name for layer in viewer.layers] == ["nuclei"]  # the empty output layer is gone


def test_removing_the_source_layer_stops_the_run_and_says_so(labels_widget, nuclei, qtbot, messages):
    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:160, :160], name="nuclei", scale=(0.25, 0.25), units=("µm", "µm"))
    w._labels_layer.value = labels
    w.generate()
    out = viewer.layers[-1]
    refreshed: list[int] = []
    real_refresh = out.refresh
    out.refresh = lambda *a, **k: (refreshed.append(1), real_refresh(*a, **k))
    qtbot.waitUntil(lambda: len(refreshed) >= 1, timeout=WAIT_MS)
    viewer.layers.remove(labels)
    seen = len(refreshed)
    wait(qtbot, w)
    assert len(refreshed) == seen  # nothing touches the viewer's layers after the removal
    assert any("'nuclei' was removed while generating from it: generation stopped." in m
               for m in warnings_(messages))
    assert out in viewer.layers and out.data[..., 3].any()  # the tiles already made stay


# -- 6. long CPU runs: say how long, offer the fast settings --------------------------------------------------------


def test_a_long_cpu_run_is_announced_with_the_fast_settings_offered(labels_widget, nuclei, qtbot, monkeypatch):
    from napari_crafts.generation import estimate

    monkeypatch.setattr(estimate, "LONG_RUN_S", 0.0)  # every run is "long" here
    monkeypatch.setattr(estimate, "FIRST_TILE_S", 1e9)  # and timed on its whole first tile, however busy the CPU
    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:64, :64], name="nuclei", scale=(0.25, 0.25), units=("µm", "µm"))
    w._labels_layer.value = labels
    w.controls._steps.value = 20
    w.generate()
    qtbot.waitUntil(lambda: w.offer.asking, timeout=WAIT_MS)
    assert re.search(r"would take about \d+ (s|min) on the CPU \(1 tile × 20 steps at 64 px, timed on the first\)"
                     r"\. Fast settings — UniPC, 10 steps, .*: about \d+ (s|min)", w.offer.text), w.offer.text
    assert w.runner.running and viewer.layers[-1].data[..., 3].all()  # waiting, with the timed first tile shown
    w.offer._fast.clicked.emit()
    wait(qtbot, w)
    out = viewer.layers[-1]
    meta = out.metadata["napari_crafts"]
    assert (meta["scheduler"], meta["steps"], meta["cfg_cutoff"], meta["exact"]) == ("unipc", 10, 0.5, False)
    assert out.name == "synthetic H&E (CRAFTS) · nuclei [approximate]"
    assert (w.controls._scheduler.value, w.controls._steps.value) == ("unipc", 10)  # the controls say so too
    assert w.controls.approximate_text.startswith("Settings are approximate (fast mode)")  # above Generate


# -- 5. presets, 9. prompt progress ------------------------------------------------------------------------------


def test_the_prompt_follows_the_preset_until_edited_and_progress_counts_images(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Prompt → H&E")
    luad = next(c for c in w._cancer.choices if c.startswith("LUAD"))
    w._cancer.value = luad
    assert "lung adenocarcinoma (LUAD)" in w.controls._prompt.value
    w._tissue.value = "stroma"
    assert "stroma" in w.controls._prompt.value and "LUAD" in w.controls._prompt.value
    w.controls._prompt.value = "he"  # edited: the preset no longer writes over it
    w._cancer.value = next(c for c in w._cancer.choices if c.startswith("BRCA"))
    assert w.controls._prompt.value == "he"
    small(w.controls, tiny_model)
    w.controls._prompt.value = "he"
    w._height.value, w._width.value, w._count.value = 64, 64, 2
    texts = said(w.runner)
    w.generate()
    wait(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "synthetic H&E (CRAFTS) · prompt" and out.data.shape == (2, 64, 64, 3)
    assert out.metadata["napari_crafts"]["prompt"] == "he"
    steps = [t for t in texts if " step " in t]
    assert any(t.startswith("image 1/2 · step") for t in steps) and any(t.startswith("image 2/2 · step") for t in steps)
    assert not any("tile" in t or "step 3/" in t for t in steps), steps


# -- 7. compact docks -------------------------------------------------------------------------------------------


def test_docks_fit_a_laptop_screen(make_napari_viewer):
    from magicgui.widgets import Select
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1366, 768)
    for name in ("Labels → H&E", "Fluorescence → H&E", "Prompt → H&E", "Compare", "Pixel size"):
        _, w = viewer.window.add_plugin_dock_widget("napari-crafts", name)
        assert isinstance(w.native, QScrollArea), name  # taller than the window: it scrolls, the window stays
        assert w.native.minimumSizeHint().height() < 300, name
        assert w.native.sizeHint().width() <= 420, (name, w.native.sizeHint().width())
        controls = getattr(w, "controls", None)
        if controls is not None:
            assert not controls.advanced_shown  # scheduler, fast mode, batch, device, pickle: folded away
            controls._steps.value, controls._scheduler.value, controls._tile.value = 7, "ddim", 128
            controls._restore.clicked.emit()
            assert (controls._steps.value, controls._scheduler.value, controls._tile.value) == (50, "default", 512)
    _, fluo = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    assert isinstance(fluo._channel_layers, Select)  # a vertical list, not a row of combo boxes


# -- 10. Compare ------------------------------------------------------------------------------------------------


def test_compare_never_pairs_a_layer_with_itself_prefills_the_prompt_and_shows_a_legend(make_napari_viewer, qtbot,
                                                                                           he, noisy):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Compare")
    syn = viewer.add_image(noisy, rgb=True, name="synthetic H&E (CRAFTS) · nuclei", units=("µm", "µm"),
                           metadata={"napari_crafts": {"synthetic": True, "prompt": "H&E of lung adenocarcinoma"}})
    assert w._synthetic_layer.value is syn and w._real_layer.value is None
    assert w._prompt_box.value == "H&E of lung adenocarcinoma"  # from the layer's provenance
    real = viewer.add_image(he, rgb=True, name="real H&E", units=("µm", "µm"))
    assert w._synthetic_layer.value is syn and w._real_layer.value is real
    w._tile_box.value = 128
    assert w.compute() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    heat = viewer.layers["SSIM per tile · synthetic H&E (CRAFTS) · nuclei"]
    assert heat.colorbar.visible and tuple(heat.contrast_limits) == (0.0, 1.0)
    assert "SSIM per tile, 0 (dark blue) → 1 (yellow)" in w._results.value
    assert [str(u) for u in heat.units] == ["micrometer", "micrometer"]


# -- 11. where models come from ---------------------------------------------------------------------------------


def test_the_model_list_knows_this_install_and_browse_and_hub_ids(make_napari_viewer, tiny_model, tmp_path,
                                                                  monkeypatch, messages):
    from napari_crafts.model.catalog import remember_model

    cached = Path(os.environ["NAPARI_CRAFTS_CACHE"]) / "models" / "crafts-lung"
    cached.mkdir(parents=True, exist_ok=True)
    (cached / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionControlNetPipeline"}))
    remember_model(str(tiny_model))
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    picker = w.controls._model
    refs = [ref for _, ref in picker._choices()]
    assert refs[0] in ("demo", "tiny-demo") and "tiny-demo" in refs
    assert str(tiny_model) in refs and str(cached) in refs  # used before; in the models cache
    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    monkeypatch.setattr("magicgui.widgets.show_file_dialog", lambda **kw: str(not_a_model))
    picker.browse()
    assert any(sev == "error" and "is not a diffusers model folder" in m for sev, m in messages)
    monkeypatch.setattr("magicgui.widgets.show_file_dialog", lambda **kw: str(cached))
    picker.browse()
    assert w.controls.model_choice().model == str(cached)
    picker._hub.value = "org/crafts-sd15"
    assert w.controls.model_choice().model == "org/crafts-sd15"  # a hub id, while typed, wins
