"""Screenshots of every napari-crafts dock in a 1366×768 napari window (a laptop screen), for docs/.

Each dock is shown with the input it works on (the repository's test data): the sample nuclei labels for
Labels → H&E, the DSB 2018 fluorescence image for Fluorescence → H&E, the CMU-1 slide for the others. Compare shows
a real result, of a stand-in "synthetic" layer (CMU-1 with noise added, named so: no model runs here) against the
real CMU-1 under it. Each PNG is quantised to 128 colours and written as docs/dock_<name>.png; the dock's width and
whether its Generate button shows without scrolling are printed.

Run under a display (the README's setup gives Xvfb):
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python benchmarks/screenshot_docks.py [--out docs]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SCREEN = (1366, 768)
#: dock name → file name (docs/dock_<file>.png)
DOCKS = {
    "Labels → H&E": "labels_to_he",
    "Fluorescence → H&E": "fluorescence_to_he",
    "Prompt → H&E": "prompt_to_he",
    "Compare": "compare",
    "Pixel size": "pixel_size",
    "Check synthetic": "check_synthetic",
}


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def open_inputs(viewer: Any, name: str) -> Any:
    """Open what the dock ``name`` works on; returns the layer to show (selected), or None."""
    if name == "Labels → H&E":
        viewer.open_sample("napari-crafts", "nuclei")
        return viewer.layers[-1]
    if name == "Fluorescence → H&E":
        (layer,) = viewer.open(DATA / "stardist_dsb2018_img2d.tif", plugin="napari-crafts")
        return layer
    (slide,) = viewer.open(DATA / "CMU-1-Small-Region.svs", plugin="napari-crafts")
    return slide


def prepare(viewer: Any, name: str, dock: Any, layer: Any) -> None:
    """Put the dock in the state worth showing (Compare: a result; Check: a report)."""
    if name == "Compare":
        y, x, h, w = 800, 1100, 300, 500  # nearly all tissue (tests/_data.HE_WINDOW)
        level0 = layer.data[0] if layer.multiscale else layer.data
        real = np.asarray(level0[y : y + h, x : x + w, :3])
        noisy = np.clip(real + np.random.default_rng(0).normal(0, 12, real.shape), 0, 255).astype(np.uint8)
        real_layer = viewer.add_image(
            real,
            rgb=True,
            name="CMU-1 window (real H&E)",
            scale=layer.scale[-2:],
            translate=np.asarray(layer.scale[-2:]) * (y, x),
            units=("µm", "µm"),
        )
        viewer.add_image(
            noisy,
            rgb=True,
            name="stand-in: CMU-1 + noise",
            scale=layer.scale[-2:],
            translate=np.asarray(layer.scale[-2:]) * (y, x),
            units=("µm", "µm"),
            metadata={"napari_crafts": {"synthetic": True}},
        )
        viewer.layers.remove(layer)  # the window compared fills the canvas
        dock._synthetic_layer.value = viewer.layers["stand-in: CMU-1 + noise"]
        dock._real_layer.value = real_layer
        dock.compute()
        while dock.runner.running:
            settle(0.2)
        viewer.reset_view()
    elif name == "Check synthetic":
        dock.check(layer)


def save_png(rgb: np.ndarray, path: Path) -> int:
    """Quantised to 128 colours (small; the dock's text stays sharp). Returns the file's size in bytes."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path.stat().st_size


def main() -> None:
    import napari

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for dock_<name>.png (default: docs/)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, file in DOCKS.items():
        viewer = napari.Viewer(show=True)
        window = viewer.window._qt_window
        window.resize(*SCREEN)
        layer = open_inputs(viewer, name)
        _, dock = viewer.window.add_plugin_dock_widget("napari-crafts", name)
        if layer is not None:
            viewer.layers.selection.active = layer
        settle()
        prepare(viewer, name, dock, layer)
        settle(1.0)
        rgb = viewer.screenshot(canvas_only=False, flash=False)
        size = save_png(rgb, out / f"dock_{file}.png")
        run = getattr(getattr(dock, "runner", None), "run_button", None)
        shown = ""
        if run is not None:
            vp = dock.native.viewport()
            bottom = run.native.mapTo(vp, run.native.rect().bottomLeft()).y()
            shown = f", {run.text.replace('&&', '&')} {'in view' if bottom < vp.height() else 'below the fold'}"
        print(
            f"{name}: dock {dock.native.width()} px wide, window {window.width()}×{window.height()}{shown}; "
            f"{rgb.shape[1]}×{rgb.shape[0]} px, {size / 1024:.0f} KB → {out / f'dock_{file}.png'}"
        )
        viewer.close()


if __name__ == "__main__":
    main()
