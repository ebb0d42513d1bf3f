"""The "Labels → H&E" dock widget in a real napari viewer (headless under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import LabelsSource

pytest.importorskip("napari")
WAIT_MS = 180_000




@pytest.fixture
def widget(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")  # also checks the manifest
    c = w.controls
    c._model.value = str(tiny_model)
    c._steps.value, c._tile.value, c._overlap.value, c._seed.value = 2, 64, 16, 5
    c._prompt.value = "nuclei"
    return viewer, w


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)


def test_whole_layer_lands_exactly_over_the_labels(widget, qtbot, nuclei, engine):
    viewer, w = widget
    lab = nuclei[1][:100, :120]
    labels = viewer.add_labels(lab, name="nuclei", scale=(0.25, 0.25), translate=(5.0, -3.0))
    w._labels_layer.value = labels
    w.where._mpp_box.value = 0.25
    assert w.generate() is not None
    _wait(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "synthetic H&E (CRAFTS) · nuclei" and out.rgb
    assert out.data.shape == (100, 120, 3)
    np.testing.assert_allclose(out.scale, labels.scale)
    np.testing.assert_allclose(out.translate, labels.translate)
    meta = out.metadata["napari_crafts"]
    assert meta["synthetic"] is True and meta["seed"] == 5 and meta["steps"] == 2 and meta["prompt"] == "nuclei"
    assert meta["model"]["weights_sha256"] == engine.weights_sha256
    # the widget is a thin shell: its pixels are the core's pixels
    settings = GenerationSettings(prompt="nuclei", seed=5, steps=2, tile_size=64, overlap=16)
    ref = run(generate_region(engine, LabelsSource(lab, name="nuclei", mpp=0.25), Region(0, 0, 100, 120), settings))
    np.testing.assert_array_equal(out.data, ref.rgb)


def test_rectangle_region_is_placed_at_its_offset(widget, qtbot, nuclei):
    viewer, w = widget
    labels = viewer.add_labels(nuclei[1], name="nuclei", scale=(0.5, 0.5), translate=(10.0, 20.0))
    # a rectangle in world coordinates covering labels pixels [40:104, 60:124]
    y0, x0 = 10 + 40 * 0.5, 20 + 60 * 0.5
    shapes = viewer.add_shapes([[[y0, x0], [y0, x0 + 32], [y0 + 32, x0 + 32], [y0 + 32, x0]]], shape_type="rectangle",
                               name="roi")
    w.where._region_box.value = "rectangle (Shapes layer)"
    w.where._shapes_layer.value = shapes
    w.generate()
    _wait(qtbot, w)
    out = viewer.layers[-1]
    assert out.data.shape[:2] == (64, 64)
    np.testing.assert_allclose(out.translate, labels.translate + np.array([40, 60]) * 0.5)
    assert out.metadata["napari_crafts"]["region"] == {"y": 40, "x": 60, "height": 64, "width": 64}


def test_3d_labels_use_the_displayed_slice(widget, qtbot, nuclei, messages):
    viewer, w = widget
    stack = np.zeros((3, 64, 64), np.uint16)
    stack[1] = nuclei[1][:64, :64]
    labels = viewer.add_labels(stack, name="timelapse")
    viewer.dims.set_current_step(0, 1)
    w._labels_layer.value = labels
    w.generate()
    _wait(qtbot, w)
    assert any("using the displayed slice (1,)" in m for _, m in messages)
    assert viewer.layers[-1].data.shape == (64, 64, 3)


def test_cancel_keeps_finished_tiles(widget, qtbot, nuclei):
    viewer, w = widget
    viewer.add_labels(nuclei[1][:160, :160], name="nuclei")
    w.controls._steps.value = 6
    worker = w.generate()
    first: list = []
    worker.yielded.connect(lambda e: first.append(e) if type(e).__name__ == "TileDone" and not first else None)
    qtbot.waitUntil(lambda: bool(first), timeout=WAIT_MS)
    w.runner.cancel()
    _wait(qtbot, w)
    out = viewer.layers[-1]
    meta = out.metadata["napari_crafts"]
    assert meta["status"].startswith("cancelled after") and meta["synthetic"] is True
    y0, x0, y1, x1 = first[0].box
    assert out.data[y0:y1, x0:x1].any()  # the finished tile stayed
    assert not out.data[-20:, -20:].any()  # the last tile never ran
    assert meta.get("tiles_done", 0) < 16


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("none", "Choose a Labels layer first"),
        ("empty", "'blank' is empty in this region: paint or load nuclei first"),
        ("outside", "lies outside 'nuclei'"),
        ("missing-model", "not found"),
        ("pickle", "holds only pickle weights"),
    ],
)
def test_bad_input_gets_a_message_and_loses_nothing(widget, qtbot, nuclei, messages, setup, expected, tmp_path,
                                                    tiny_model):
    viewer, w = widget
    if setup == "empty":
        viewer.add_labels(np.zeros((64, 64), np.uint8), name="blank")
    elif setup != "none":
        viewer.add_labels(nuclei[1][:64, :64], name="nuclei")
    if setup == "outside":
        viewer.add_shapes([[[200, 200], [200, 230], [230, 230], [230, 200]]], shape_type="rectangle", name="roi")
        w.where._region_box.value = "rectangle (Shapes layer)"
        w.where._shapes_layer.value = viewer.layers["roi"]
    if setup == "missing-model":
        w.controls._model.value = str(tmp_path / "no-such-model")
    if setup == "pickle":
        import shutil

        import torch
        from safetensors.torch import load_file

        copy = shutil.copytree(tiny_model, tmp_path / "pickled")
        st = next((copy / "unet").glob("*.safetensors"))
        torch.save(load_file(st), copy / "unet" / "diffusion_pytorch_model.bin")
        st.unlink()
        w.controls._model.value = str(copy)
    before = [layer.name for layer in viewer.layers]
    if w.generate() is not None:
        _wait(qtbot, w)
    assert any(expected in m for sev, m in messages if sev == "error"), messages
    assert [layer.name for layer in viewer.layers] == before  # no half-made output layer left behind
    assert not w.runner.running and w.runner.run_button.enabled
    if setup == "pickle":  # the opt-in the message names works
        w.controls._allow_pickle.value = True
        w.controls._steps.value = 1
        w.generate()
        _wait(qtbot, w)
        assert viewer.layers[-1].metadata["napari_crafts"]["synthetic"] is True


def test_sample_data_opens_and_feeds_the_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-crafts", "nuclei")
    labels = viewer.layers["nuclei labels (DSB 2018)"]
    assert labels.data.shape == (512, 512) and len(np.unique(labels.data)) - 1 == 125


def test_pixel_size_widget_sets_the_scale_and_records_it(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((8, 8), np.uint8), name="no mpp")
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Pixel size")
    w(layers=[layer], mpp=0.5)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert layer.metadata["napari_crafts"]["mpp"] == 0.5


def test_background_job_writes_ome_zarr_and_opens_it_over_the_labels(widget, qtbot, nuclei, tmp_path, engine):
    viewer, w = widget
    lab = nuclei[1][:96, :128]
    labels = viewer.add_labels(lab, name="nuclei", scale=(0.25, 0.25), translate=(2.0, 3.0))
    w._labels_layer.value = labels
    w.where._mpp_box.value = 0.25
    w._background.value = True
    w._batch_output.value = tmp_path / "out.ome.zarr"
    worker = w.generate()
    assert worker is not None
    seen = []
    worker.yielded.connect(seen.append)
    _wait(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "synthetic H&E (CRAFTS) · nuclei"
    level0 = np.asarray(out.data[0] if out.multiscale else out.data)
    assert level0.shape == (96, 128, 3)
    np.testing.assert_allclose(out.scale, labels.scale)
    np.testing.assert_allclose(out.translate, labels.translate)
    assert out.metadata["napari_crafts"]["synthetic"] is True and out.metadata["napari_crafts"]["seed"] == 5
    assert any(type(e).__name__ == "BatchProgress" for e in seen)
    settings = GenerationSettings(prompt="nuclei", seed=5, steps=2, tile_size=64, overlap=16)
    from napari_crafts.export.watermark import payload_for, watermark_image
    from napari_crafts.model.threads import torch_threads

    with torch_threads(1):  # the workers' thread count: the same pixels
        ref = run(generate_region(engine, LabelsSource(lab, name="nuclei", mpp=0.25), Region(0, 0, 96, 128), settings,
                                  watermark=False))
    # watermarked once, after blending, with the payload of the output's own record
    np.testing.assert_array_equal(level0, watermark_image(ref.rgb, payload_for(out.metadata["napari_crafts"])))
