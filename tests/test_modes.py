"""Fluorescence → H&E and Prompt → H&E: core paths and their widgets in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_crafts.generation.prompts import TCGA_CANCER_TYPES, preset_prompt
from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import FluorescenceSource

WAIT_MS = 180_000


def test_each_mode_has_its_controlnet_and_they_share_one_base_model(engine):
    labels_net = engine.controlnet(mode="labels")
    if_net = engine.controlnet(mode="fluorescence")
    assert labels_net is not if_net
    assert engine.controlnet(mode="fluorescence") is if_net  # cached, not reloaded
    d = engine.describe(mode="fluorescence")
    assert d["controlnet"] == "controlnet_fluorescence" and d["controlnet_sha256"] != engine.describe()["controlnet_sha256"]
    assert engine.describe(mode=None).get("controlnet") is None


def test_fluorescence_region_uses_the_fluorescence_controlnet(engine, nuclei, fast):
    image, _ = nuclei
    src = FluorescenceSource(image[:100, :100], channel_names=["DAPI"], name="dsb", mpp=0.25)
    result = run(generate_region(engine, src, Region(0, 0, 100, 100), fast))
    assert result.rgb.shape == (100, 100, 3)
    p = result.provenance
    assert p["mode"] == "fluorescence" and p["model"]["controlnet"] == "controlnet_fluorescence"
    assert p["source"]["channels"][0]["role"] == "nuclear"


def test_presets_cover_tcga_and_say_the_cancer_type():
    assert len(TCGA_CANCER_TYPES) == 32 and "LAML" not in TCGA_CANCER_TYPES
    assert "lung adenocarcinoma (LUAD)" in preset_prompt("LUAD", "stroma", "20x")
    with pytest.raises(ValueError, match="Unknown TCGA project 'XYZ'"):
        preset_prompt("XYZ")


def test_long_prompts_are_cut_and_the_user_is_told(engine, fast):
    import dataclasses

    long = dataclasses.replace(fast, prompt="eosinophilic " * 20)
    result = run(generate_region(engine, None, Region(0, 0, 64, 64), long))
    assert any("longer than CLIP's 77 tokens" in n for n in result.notes)
    assert result.provenance["notes"] == result.notes


# -- widgets ------------------------------------------------------------------------------------------------


def _small(controls, model):
    controls._model.value = str(model)
    controls._steps.value, controls._tile.value, controls._overlap.value, controls._seed.value = 2, 64, 16, 3
    controls._prompt.value = "he"


def test_fluorescence_widget_previews_exactly_what_the_model_receives(make_napari_viewer, qtbot, tiny_model, nuclei,
                                                                      monkeypatch):
    from napari_crafts.model.engine import Engine

    image, _ = nuclei
    viewer = make_napari_viewer()
    dapi = viewer.add_image(image[:96, :96], name="DAPI", scale=(0.25, 0.25), translate=(4.0, 8.0))
    viewer.add_image((image[:96, :96] // 2 + 3).astype(np.uint16), name="panCK", scale=(0.25, 0.25),
                     translate=(4.0, 8.0))
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    _small(w.controls, tiny_model)
    w._channel_layers.value = [dapi, viewer.layers["panCK"]]
    assert w.roles() == {0: "nuclear", 1: "cytoplasm"}
    w.where._mpp_box.value = 0.25
    preview = w.preview()
    assert preview.data.shape == (96, 96, 3) and preview.metadata["napari_crafts"]["control_preview"]
    np.testing.assert_allclose(preview.translate, dapi.translate)

    received = []
    real = Engine.generate

    def spy(self, noise, control=None, **kw):
        received.append(control)
        return (yield from real(self, noise, control, **kw))

    monkeypatch.setattr(Engine, "generate", spy)
    w.generate()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    # the first tile (origin 0, 0; 64 px at the model's own pixel size) is the preview's top-left corner
    np.testing.assert_array_equal(received[0][0], preview.data[:64, :64])
    out = viewer.layers[-1]
    assert out.data.shape == (96, 96, 3) and out.data.any()
    np.testing.assert_allclose(out.translate, dapi.translate)
    meta = out.metadata["napari_crafts"]
    assert meta["synthetic"] is True and meta["mode"] == "fluorescence"
    assert [c["role"] for c in meta["source"]["channels"]] == ["nuclear", "cytoplasm"]


def test_fluorescence_widget_bad_input(make_napari_viewer, tiny_model, messages):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Fluorescence → H&E")
    _small(w.controls, tiny_model)
    assert w.generate() is None
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    w._channel_layers.value = [rgb]
    assert w.generate() is None
    flat = viewer.add_image(np.full((32, 32), 7, np.uint16), name="DAPI")
    w._channel_layers.value = [flat]
    assert w.generate() is None
    rgb16 = viewer.add_image(np.zeros((80, 80, 3), np.uint16), name="rgb16")  # napari shows it as RGB
    w._channel_layers.value = [rgb16]
    assert w.generate() is None
    stack = viewer.add_image(np.ones((80, 80, 7), np.uint16), name="stack")  # channels last, not RGB
    w._channel_layers.value = [stack]
    assert w.generate() is None
    w._channel_axis.value = 2
    assert len(w.roles()) == 7
    errors = [m for sev, m in messages if sev == "error"]
    assert any("Choose the fluorescence channel" in m for m in errors)
    assert any("'photo' is shown as an RGB image" in m for m in errors)
    assert any("'DAPI' is constant (value 7)" in m for m in errors)
    assert any("'rgb16' is shown as an RGB image" in m and "Split RGB" in m for m in errors)
    assert any("'stack' has 80 planes along axis 0: set 'channel axis'" in m for m in errors)
    assert [layer.name for layer in viewer.layers] == ["photo", "DAPI", "rgb16", "stack"]


def test_prompt_widget_makes_a_stack_with_one_record_per_image(make_napari_viewer, qtbot, tiny_model, engine):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Prompt → H&E")
    _small(w.controls, tiny_model)
    w._use_preset.clicked.emit()  # the preset writes a caption-style prompt
    assert "H&E-stained histopathology image of" in w.controls._prompt.value
    w.controls._prompt.value = "he"
    w._height.value, w._width.value, w._count.value = 64, 64, 2
    w.generate()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    out = viewer.layers[-1]
    assert out.data.shape == (2, 64, 64, 3) and "synthetic" in out.name
    meta = out.metadata["napari_crafts"]
    assert meta["synthetic"] is True and meta["seeds"] == [3, 4] and len(meta["images"]) == 2
    assert not np.array_equal(out.data[0], out.data[1])
    ref = run(generate_region(engine, None, Region(0, 0, 64, 64),
                              GenerationSettings(prompt="he", seed=4, steps=2, tile_size=64, overlap=16)))
    np.testing.assert_array_equal(out.data[1], ref.rgb)
    np.testing.assert_allclose(out.scale[-2:], (0.25, 0.25))  # the model's pixel size
