"""The "Compare" dock widget in a real napari viewer (headless under Xvfb)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_crafts.evaluation import metrics as M

pytest.importorskip("napari")
WAIT_MS = 60_000








@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Compare")  # also checks the manifest
    return viewer, w


def compute(qtbot, w) -> bool:
    """Press Compute and wait; False when the input was refused before starting."""
    if w.compute() is None:
        return False
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    return True


def shown(w, header: str) -> str:
    found = re.search(re.escape(header) + r"\s+(\S+)", w._results.value)
    assert found, w._results.value
    return found[1]


def test_metrics_and_heat_map_over_the_layer(widget, qtbot, he, noisy):
    viewer, w = widget
    real = viewer.add_image(he, rgb=True, name="real H&E", scale=(0.5, 0.5), translate=(10.0, -4.0))
    syn = viewer.add_image(noisy, rgb=True, name="synthetic", scale=(0.5, 0.5), translate=(10.0, -4.0),
                           metadata={"napari_crafts": {"synthetic": True}})
    assert w._synthetic_layer.value is syn and w._real_layer.value is real  # guessed from the metadata
    w._tile_box.value = 128
    assert compute(qtbot, w)

    tiles = M.tile_metrics(noisy, he, tile=128)
    expected = M.aggregate(tiles)
    assert shown(w, "SSIM↑") == f"{expected['SSIM']:.4f}" and shown(w, "MSE↓") == f"{expected['MSE']:.2f}"
    assert shown(w, "PSNR↑") == f"{expected['PSNR']:.2f}" and shown(w, "NCC↑") == f"{expected['NCC']:.4f}"
    assert "PLIP" not in w._results.value  # no CLIP model: pixel metrics only

    heat = viewer.layers["SSIM per tile · synthetic"]
    assert heat.data.shape == (3, 4) and heat.colormap.name == "viridis" and heat.opacity == 0.5
    assert tuple(heat.contrast_limits) == (0.0, 1.0)
    np.testing.assert_allclose(heat.data, M.metric_map(tiles, he.shape, 128))
    np.testing.assert_allclose(heat.scale, (64.0, 64.0))
    # each heat-map pixel covers its tile: cell (r, c) spans real pixels [128 r, 128 (r + 1)) in world space
    for r, c in ((0, 0), (2, 3)):
        cell_corner = np.asarray(heat.data_to_world((r - 0.5, c - 0.5)))
        tile_corner = np.asarray(real.data_to_world((128 * r - 0.5, 128 * c - 0.5)))
        np.testing.assert_allclose(cell_corner, tile_corner)
    meta = heat.metadata["napari_crafts"]
    assert meta["metrics"]["SSIM"] == pytest.approx(expected["SSIM"], rel=1e-12)
    assert meta["synthetic"] == "synthetic" and meta["real"] == "real H&E" and meta["tile"] == 128
    assert meta["region"] == {"y": 0, "x": 0, "height": 300, "width": 500} and meta["mask"] == "tissue"

    # swipe/compare helpers
    w._toggle_button.changed.emit(True)
    assert not syn.visible
    w.toggle_synthetic()
    assert syn.visible
    w._opacity_slider.value = 0.3
    assert syn.opacity == pytest.approx(0.3)

    assert compute(qtbot, w)  # again: the heat map is replaced, not duplicated
    assert [layer.name for layer in viewer.layers].count("SSIM per tile · synthetic") == 1


def test_identical_layers_score_perfectly(widget, qtbot, he):
    viewer, w = widget
    real = viewer.add_image(he, rgb=True, name="real H&E")
    same = viewer.add_image(he.copy(), rgb=True, name="copy")
    w._synthetic_layer.value, w._real_layer.value = same, real
    w._mask_box.value = False
    assert compute(qtbot, w)
    assert shown(w, "SSIM↑") == "1.0000" and shown(w, "MSE↓") == "0.00" and shown(w, "PSNR↑") == "∞"
    assert shown(w, "NCC↑") == "1.0000"
    assert viewer.layers[-1].metadata["napari_crafts"]["metrics"]["MSE"] == 0.0


def test_finer_synthetic_is_resampled_over_a_rectangle(widget, qtbot, he, noisy, messages):
    viewer, w = widget
    real = viewer.add_image(he, rgb=True, name="real H&E", scale=(0.5, 0.5), translate=(10.0, -4.0))
    fine = np.repeat(np.repeat(noisy, 2, axis=0), 2, axis=1)  # same tissue at 0.25 per px, same top-left edge
    syn = viewer.add_image(fine, rgb=True, name="fine", scale=(0.25, 0.25), translate=(10.0 - 0.125, -4.0 - 0.125))
    # a rectangle over real pixels [64, 192) × [100, 300)
    y0, x0, y1, x1 = 10 + 64 * 0.5, -4 + 100 * 0.5, 10 + 191.9 * 0.5, -4 + 299.9 * 0.5
    shapes = viewer.add_shapes([[[y0, x0], [y0, x1], [y1, x1], [y1, x0]]], shape_type="rectangle", name="roi")
    w._synthetic_layer.value, w._real_layer.value = syn, real
    w._region_box.value = "rectangle (Shapes layer)"
    w._shapes_layer.value = shapes
    w._tile_box.value = 64
    assert compute(qtbot, w)
    assert any("'fine' (0.25 × 0.25 per px) was resampled onto the pixel grid of 'real H&E'" in m
               for _, m in messages)
    heat = viewer.layers["SSIM per tile · fine"]
    assert heat.metadata["napari_crafts"]["region"] == {"y": 64, "x": 100, "height": 128, "width": 200}
    assert heat.data.shape == (2, 4)
    np.testing.assert_allclose(heat.data_to_world((-0.5, -0.5)), real.data_to_world((63.5, 99.5)))
    # resampling 2×2 repeated pixels back is the noisy image, lightly smoothed by the anti-aliasing
    plain = M.aggregate(M.tile_metrics(noisy[64:192, 100:300], he[64:192, 100:300], tile=64))
    assert float(shown(w, "MSE↓")) < plain["MSE"] and float(shown(w, "SSIM↑")) > 0.5


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("same", "'real H&E' is chosen as both synthetic and real H&E: pick two different layers"),
        ("gray", "'gray' is not an 8-bit RGB image"),
        ("apart", "'synthetic' and 'real H&E' do not overlap"),
        ("glass", "The tissue mask is empty"),
    ],
)
def test_bad_input_gets_a_message_and_adds_nothing(widget, qtbot, he, noisy, messages, setup, expected):
    viewer, w = widget
    if setup == "glass":
        he = noisy = np.full((96, 96, 3), 238, np.uint8)
    real = viewer.add_image(he, rgb=True, name="real H&E")
    syn = viewer.add_image(noisy, rgb=True, name="synthetic", translate=(1000, 0) if setup == "apart" else (0, 0))
    w._synthetic_layer.value, w._real_layer.value = syn, real
    if setup == "same":
        w._synthetic_layer.value = real
    if setup == "gray":
        w._synthetic_layer.value = viewer.add_image(he[..., 0], name="gray")
    before = [layer.name for layer in viewer.layers]
    compute(qtbot, w)
    assert any(expected in m for sev, m in messages if sev == "error"), messages
    assert [layer.name for layer in viewer.layers] == before
    assert not w.running and w._compute_button.enabled
