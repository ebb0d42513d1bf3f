"""The watermark in napari (issue 17): a widget run's final layer is its result marked once (tiles shown during
the run are previews); the Watermark box turns it off, recorded; a cancelled run's kept tiles are marked once; the
writer stores pixels as they are and says when a layer has no watermark; "Check synthetic" (dock and Layers ›
Metadata menu) gives the same verdict as ``napari-crafts check``. Real viewer (Xvfb), tiny random model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_crafts.export import watermark as wm
from napari_crafts.export.check import check_array, check_paths

pytest.importorskip("napari")
WAIT_MS = 180_000
MPP = 0.25


def _run(viewer: Any, w: Any, labels: np.ndarray, qtbot: Any, *, cancel_after: int = 0) -> tuple[Any, np.ndarray]:
    """Generate from ``labels`` (Cancel once ``cancel_after`` tiles are painted); the output layer and the RGB it
    showed after its last painted tile."""
    layer = viewer.add_labels(labels, name="nuclei", scale=(MPP, MPP), units=("µm", "µm"))
    w._labels_layer.value = layer
    worker = w.generate()
    out = viewer.layers[-1]
    shown: list[np.ndarray] = []

    def on_event(event: Any) -> None:  # connected after the runner's handler: the tile is painted by now
        if type(event).__name__ == "TileDone":
            shown[:] = [out.data[..., :3].copy()]
            if event.tiles_done == cancel_after:
                w.runner.cancel()

    worker.yielded.connect(on_event)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    return out, shown[0]


def test_the_finished_layer_is_its_result_marked_once_and_check_synthetic_says_so(
        labels_widget: tuple[Any, Any], nuclei: tuple[np.ndarray, np.ndarray], he: np.ndarray, qtbot: Any,
        messages: list[tuple[str, str]]) -> None:
    from napari._app_model import get_app_model

    viewer, w = labels_widget
    assert w.controls._watermark.value is True and w.controls._watermark.text == "watermark"  # on by default
    out, preview = _run(viewer, w, nuclei[1][:256, :256].copy(), qtbot)
    record = out.metadata["napari_crafts"]
    assert out.data.shape == (256, 256, 3) and record["watermark"]["enabled"] is True
    # the previews were the blended tiles; the layer now holds that image marked once with its record's payload
    np.testing.assert_array_equal(out.data, wm.watermark_image(preview, wm.payload_for(record)))
    assert (out.data != preview).any()

    _, dock = viewer.window.add_plugin_dock_widget("napari-crafts", "Check synthetic")
    rep = dock.check(out)
    assert rep.synthetic and rep.record_match is True and rep.watermark["payload"] == record["watermark"]["payload"]
    assert dock.result.endswith("verdict:    SYNTHETIC: napari-crafts watermark and provenance record, and they "
                                "match")
    assert ("info", f"'{out.name}': {rep.verdict}") in messages
    real = viewer.add_image(he, name="real H&E", rgb=True)
    rep = dock.check(real)
    assert not rep.synthetic and not rep.watermark["found"] and rep.watermark["checked"]
    assert rep.verdict.startswith("no napari-crafts provenance or watermark found")
    # Layers › Metadata › Check synthetic: the same check on the selected layer
    viewer.layers.selection.active = out
    menu = get_app_model().commands.execute_command("napari-crafts.check_layer").result()
    assert menu.record_match is True and menu.verdict == dock.check(out).verdict


def test_unticked_watermark_is_recorded_and_leaves_the_pixels(labels_widget: tuple[Any, Any],
                                                               nuclei: tuple[np.ndarray, np.ndarray],
                                                               qtbot: Any) -> None:
    from napari_crafts._widgets._text import WATERMARK_OFF

    viewer, w = labels_widget
    w.controls._watermark.value = False
    out, preview = _run(viewer, w, nuclei[1][:64, :112].copy(), qtbot)
    record = out.metadata["napari_crafts"]
    assert record["watermark"] == wm.describe_no_watermark(WATERMARK_OFF) == {
        "enabled": False, "method": "napari-crafts cell-sign", "reason": "napari: Watermark unticked"}
    np.testing.assert_array_equal(out.data, preview)
    rep = check_array(out.data, record)
    assert rep.synthetic and not rep.watermark["found"] and "the record says it was turned off" in rep.verdict
    w.controls.restore_defaults()
    assert w.controls._watermark.value is True


def test_a_cancelled_runs_kept_tiles_are_marked_once_and_saved_as_they_are(labels_widget: tuple[Any, Any],
                                                                          nuclei: tuple[np.ndarray, np.ndarray],
                                                                          qtbot: Any, tmp_path: Path) -> None:
    from PIL import Image

    viewer, w = labels_widget
    # 5×5 tiles of 64 px (stride 48): Cancel after the first three rows (160 of 256 rows painted)
    out, preview = _run(viewer, w, nuclei[1][:256, :256].copy(), qtbot, cancel_after=15)
    record = out.metadata["napari_crafts"]
    assert re.fullmatch(r"cancelled after 1[5-9]/25 tiles", record["status"]), record["status"]
    assert out.data.shape == (256, 256, 4) and record["watermark"]["payload"] == wm.payload_for(record).hex
    painted = out.data[..., 3] == 255
    assert painted.any() and not painted.all() and not out.data[~painted].any()  # the rest: transparent black
    assert (out.data[..., :3][painted] != preview[painted]).any()  # the kept tiles got the mark
    rep = check_array(out.data, record)
    assert rep.record_match is True and "they match" in rep.verdict
    before = out.data.copy()
    (png,) = w._save.save(str(tmp_path / "kept.png"))  # Save… stores the layer as it is: marked once
    with Image.open(png) as saved:
        np.testing.assert_array_equal(np.asarray(saved), before)
    (file_rep,) = check_paths([png])
    assert file_rep.record_match is True and file_rep.watermark["payload"] == record["watermark"]["payload"]


def test_the_writer_never_marks_and_says_when_a_layer_has_no_watermark(he: np.ndarray, tmp_path: Path,
                                                                       messages: list[tuple[str, str]]) -> None:
    from napari_crafts._writer import NOT_MARKED, save_layer_data
    from napari_crafts.export import read_provenance

    image = np.ascontiguousarray(he[:256, :256])
    old = {"synthetic": True, "warning": "SYNTHETIC IMAGE", "seed": 1}  # a record from before the watermark
    (path,) = save_layer_data(str(tmp_path / "old.ome.zarr"), image, {"name": "old", "metadata": {
        "napari_crafts": old}}, kind="ome-zarr")
    assert ("warning", "'old' has no watermark in its record: saved without one in its pixels (its provenance "
                       "still says synthetic).") in messages
    assert "watermark" not in old  # the layer's own record is left alone
    stored = read_provenance(path)
    assert stored["watermark"] == wm.describe_no_watermark(NOT_MARKED)
    (rep,) = check_paths([path])
    assert rep.synthetic and not rep.watermark["found"] and "turned off" in rep.verdict
    # a stack of one image (Prompt → H&E, 1 image) is saved with that image's own record, whose payload it carries
    own = {"synthetic": True, "warning": "SYNTHETIC IMAGE", "seed": 2}
    marked = wm.watermark_image(image, wm.sign_record(own) or pytest.fail("not marked"))
    stack = {"synthetic": True, "images": [own], "warning": "SYNTHETIC IMAGE"}
    (png,) = save_layer_data(str(tmp_path / "one.png"), marked[None], {"name": "stack", "metadata": {
        "napari_crafts": stack}}, kind="png")
    (rep,) = check_paths([png])
    assert rep.record_match is True and rep.watermark["payload"] == own["watermark"]["payload"]
    assert len(messages) == 1  # no warning for the marked stack
