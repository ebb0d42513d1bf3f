from __future__ import annotations
import numpy as np, pytest
WAIT_MS = 180_000

def test_remove_output(make_napari_viewer, tiny_model, nuclei, qtbot, messages):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    c = w.controls
    c._model.value = str(tiny_model)
    c._steps.value, c._tile.value, c._overlap.value, c._seed.value, c._prompt.value = 1, 64, 16, 5, "nuclei"
    labels = viewer.add_labels(nuclei[1][:160, :160], name="nuclei", scale=(0.25, 0.25), units=("µm", "µm"))
    w._labels_layer.value = labels
    texts=[]
    show = w.runner.status
    w.runner.status = lambda t: (texts.append(t), show(t))
    w.generate()
    out = viewer.layers[-1]
    qtbot.waitUntil(lambda: out.data[..., 3].any(), timeout=WAIT_MS)
    print("OUT", w.runner.output is out, w.runner._stopped, w.runner.worker); orig=w.runner._on_layer_removed
    viewer.layers.remove(out)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    print(texts, messages, [l.name for l in viewer.layers])
