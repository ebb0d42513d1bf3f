"""Dock widget "Compare": how close is a synthetic H&E layer to the real H&E under it (the CRAFTS metrics).

The two layers are compared in world coordinates: the real layer's pixels over the chosen region, and the
synthetic layer sampled at the same places (a plain slice when the grids coincide, else resampled onto the
real layer's grid — said in a notification). Only scale and translate are taken into account (not rotate,
shear or affine). Scoring runs :func:`napari_crafts.evaluation.iter_evaluate_images` in a worker; the result
is shown in the widget and as a per-tile SSIM heat map laid over the region.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, FloatSlider, Label, LineEdit, PushButton, SpinBox

from ..evaluation import (
    EvaluationError,
    ImageEvaluation,
    ResampledImage,
    iter_evaluate_images,
    load_scorer,
)
from ..evaluation import metrics as M
from ..evaluation import plip as P
from ..generation.region import GenerationError, Region
from ._controls import DockContainer, RegionChoice, layer_box
from ._layers import place_over
from ._regions import layer_plane
from ._runner import JobOptions, JobRunner
from ._text import (
    BUTTON_TOOLTIPS,
    COMPARE_MEANING,
    COMPARE_TOO_LARGE,
    COMPARE_TOOLTIPS,
    HEAT_LEGEND,
    HEAT_NAME,
    NO_LAYERS,
    NO_OVERLAP,
    NOT_RGB,
    RESAMPLED,
    SAME_LAYER,
    SHIFTED,
    WIDGET_ADVICE,
    WIDGET_REGION_LIMIT,
)


@functools.lru_cache(maxsize=1)
def _scorer(model: str) -> P.ClipScorer | None:
    """The CLIP model, loaded once (in the worker) and kept for the next Compute."""
    return load_scorer(model, advice=WIDGET_ADVICE)


def _rgb_plane(layer: Any, viewer: Any) -> tuple[Any, str | None]:
    """The displayed (Y, X, 3) plane of an RGB Image layer (level 0 if multiscale) and a note for N-D data."""
    data = layer.data[0] if layer.multiscale else layer.data
    if not layer.rgb or data.shape[-1] not in (3, 4):
        raise EvaluationError(NOT_RGB.format(name=layer.name, what=f"shape {tuple(data.shape)}"))
    if data.dtype != np.uint8:
        raise EvaluationError(NOT_RGB.format(name=layer.name, what=f"{data.dtype} values"))
    plane, note = layer_plane(layer, viewer)
    return plane[..., :3], note


def _grid(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(layer.scale[-2:], float), np.asarray(layer.translate[-2:], float)


def _overlap(synthetic: Any, syn_shape: tuple[int, ...], real: Any, region: Region) -> Region:
    """The part of ``region`` (real-layer pixels) whose pixel centres lie on the synthetic layer."""
    (s_s, t_s), (s_r, t_r) = _grid(synthetic), _grid(real)
    box = []
    for axis, (start, size) in enumerate(((region.y, region.height), (region.x, region.width))):
        lo = (t_s[axis] - 0.5 * s_s[axis] - t_r[axis]) / s_r[axis]
        hi = (t_s[axis] + (syn_shape[axis] - 0.5) * s_s[axis] - t_r[axis]) / s_r[axis]
        box.append((max(start, math.ceil(lo - 1e-6)), min(start + size, math.floor(hi + 1e-6) + 1)))
    (y0, y1), (x0, x1) = box
    if y1 <= y0 or x1 <= x0:
        where = "" if region.y == region.x == 0 else " in the chosen region"
        raise EvaluationError(NO_OVERLAP.format(syn=synthetic.name, real=real.name, where=where))
    return Region(y0, x0, y1 - y0, x1 - x0)


def _synthetic_on_grid(synthetic: Any, plane: Any, real: Any, box: Region) -> tuple[Any, str | None]:
    """The synthetic pixels at the real layer's pixel centres of ``box``: a slice, or a resampled view."""
    (s_s, t_s), (s_r, t_r) = _grid(synthetic), _grid(real)
    a = s_r / s_s
    b = (t_r + np.array([box.y, box.x]) * s_r - t_s) / s_s
    if np.allclose(a, 1.0, rtol=0, atol=1e-6) and np.allclose(b, np.round(b), rtol=0, atol=1e-6):
        y, x = (int(v) for v in np.round(b))
        return plane[y:y + box.height, x:x + box.width], None
    if np.allclose(a, 1.0, rtol=0, atol=1e-6):
        note = SHIFTED.format(syn=synthetic.name, real=real.name)
    else:
        note = RESAMPLED.format(syn=synthetic.name, real=real.name, s=" × ".join(f"{v:g}" for v in s_s),
                                r=" × ".join(f"{v:g}" for v in s_r))
    return ResampledImage(plane, (box.height, box.width), a, b), note


#: A readable heat map: about this many tiles across the region's shorter side, at most HEAT_MAX_CELLS along its
#: longer side, tiles of HEAT_TILE_RANGE px (multiples of 16; SSIM's 7-px window needs room inside a tile).
HEAT_CELLS, HEAT_MAX_CELLS, HEAT_TILE_RANGE = 8, 128, (32, 1024)


def readable_tile(height: int, width: int) -> int:
    """The default tile side for a region of ``height`` × ``width`` px: a heat map of about 8 cells across."""
    lo, hi = HEAT_TILE_RANGE
    side = max(min(height, width) / HEAT_CELLS, max(height, width) / HEAT_MAX_CELLS)
    return int(min(hi, max(lo, 16 * round(side / 16))))


def format_metrics(result: M.EvaluationResult, *, plip: bool) -> str:
    """The metrics as lines "SSIM↑ 0.8123" (PLIP ones too when ``plip``)."""
    row = result.to_row()
    keys = [k for k in M.COLUMNS if plip or k in M.PIXEL_METRICS]
    return "\n".join(f"{M.COLUMNS[k]}  {M._fmt(row[k], k)}" for k in keys)


class Compare(DockContainer):
    """Pick a synthetic and a real H&E layer and a region; Compute shows the metrics and an SSIM heat map."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._synthetic_layer = layer_box(napari.layers.Image, "synthetic", COMPARE_TOOLTIPS["synthetic"])
        self._real_layer = layer_box(napari.layers.Image, "real H&E", COMPARE_TOOLTIPS["real"], nullable=True)
        self._where = RegionChoice(COMPARE_TOOLTIPS)
        self._region_box, self._shapes_layer = self._where.box, self._where.shapes
        self._tile_box = SpinBox(value=256, min=16, max=4096, step=16, label="tile size",
                                 tooltip=COMPARE_TOOLTIPS["tile"])
        self._tile_auto, self._setting_tile = True, False  # the tile follows the region until the user sets it
        self._mask_box = CheckBox(value=True, label="tissue mask", tooltip=COMPARE_TOOLTIPS["mask"])
        self._clip_box = LineEdit(value="", label="CLIP model", tooltip=COMPARE_TOOLTIPS["clip"])
        self._prompt_box = LineEdit(value="", label="prompt", tooltip=COMPARE_TOOLTIPS["prompt"])
        # Compute, Cancel, progress and status: the generation widgets' runner
        self.runner = JobRunner("Compute", BUTTON_TOOLTIPS["compute"])
        self._compute_button = self.runner.run_button
        self._results = Label(value="", label="")  # the metrics and what they mean: the dock's whole width
        self._toggle_button = PushButton(text="Toggle synthetic", tooltip=COMPARE_TOOLTIPS["toggle"])
        self._opacity_slider = FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, label="synthetic opacity",
                                           tooltip=COMPARE_TOOLTIPS["opacity"])
        self._results.tooltip = COMPARE_MEANING
        self._results.native.setWordWrap(True)  # long notes and the legend wrap instead of widening the dock
        super().__init__(widgets=[
            self._synthetic_layer, self._real_layer, self._region_box, self._shapes_layer, self._tile_box,
            self._mask_box, self._clip_box, self._prompt_box, self.runner, self._results, self._toggle_button,
            self._opacity_slider,
        ], labels=True)
        self.evaluation: ImageEvaluation | None = None
        self._prefilled = ""  # the prompt last taken from a synthetic layer's provenance
        self._synthetic_layer.changed.connect(self._on_synthetic_changed)
        self._compute_button.changed.connect(self.compute)
        self._tile_box.changed.connect(self._on_tile_set)
        self._toggle_button.changed.connect(self.toggle_synthetic)
        self._opacity_slider.changed.connect(self._on_opacity)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists; when both point at one layer, guess the pair (synthetic: marked or on top)."""
        super().reset_choices()
        synthetic, real = self._synthetic_layer.value, self._real_layer.value
        if synthetic is None or (real is not None and real is not synthetic):
            return
        rgb = [layer for layer in self._real_layer.choices if layer is not None and getattr(layer, "rgb", False)]
        if len(rgb) < 2:
            if real is synthetic:
                self._real_layer.value = None  # never one layer as both: wait for the real H&E
            return
        marked = [layer for layer in rgb if (layer.metadata.get("napari_crafts") or {}).get("synthetic") is True]
        synthetic = (marked or rgb)[-1]
        self._synthetic_layer.value = synthetic
        self._real_layer.value = next(layer for layer in rgb if layer is not synthetic)

    @property
    def running(self) -> bool:
        return self.runner.running

    @property
    def worker(self) -> Any:
        return self.runner.worker

    # -- compute --------------------------------------------------------------------------------------------
    def compute(self) -> Any:
        """Start scoring; returns the worker (None when the input was refused with a message)."""
        from napari.utils.notifications import show_error, show_info

        if self.running:
            return None
        try:
            inputs = self._inputs()
        except (EvaluationError, GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        for note in inputs["notes"]:
            show_info(note)
        return self._start(inputs)

    def _inputs(self) -> dict[str, Any]:
        """Check the choices and cut out the two co-registered arrays (lazy) over the region."""
        synthetic, real = self._synthetic_layer.value, self._real_layer.value
        if synthetic is None or real is None:
            raise EvaluationError(NO_LAYERS)
        if synthetic is real:
            raise EvaluationError(SAME_LAYER.format(name=real.name))
        syn_plane, syn_note = _rgb_plane(synthetic, self._viewer)
        real_plane, real_note = _rgb_plane(real, self._viewer)
        region = self._where.region(real, self._viewer, real_plane.shape[:2])
        box = _overlap(synthetic, syn_plane.shape, real, region)
        if box.height * box.width > WIDGET_REGION_LIMIT:
            raise EvaluationError(COMPARE_TOO_LARGE.format(h=box.height, w=box.width))
        generated, grid_note = _synthetic_on_grid(synthetic, syn_plane, real, box)
        if self._tile_auto:
            self._setting_tile = True
            try:
                self._tile_box.value = readable_tile(box.height, box.width)
            finally:
                self._setting_tile = False
        y0, x0, y1, x1 = box.box
        return {
            "synthetic": synthetic, "real": real, "box": box, "generated": generated,
            "real_data": real_plane[y0:y1, x0:x1], "tile": int(self._tile_box.value),
            "mask": "tissue" if self._mask_box.value else None, "model": self._clip_box.value.strip(),
            "prompt": self._prompt_box.value.strip() or None,
            "notes": [n for n in (syn_note, real_note, grid_note) if n],
        }

    def _start(self, inputs: dict[str, Any]) -> Any:
        def job() -> Any:  # a generator of EvalProgress that returns the ImageEvaluation
            scorer = _scorer(inputs["model"]) if inputs["model"] else None
            return (yield from iter_evaluate_images(inputs["generated"], inputs["real_data"], tile=inputs["tile"],
                                                    mask=inputs["mask"], scorer=scorer, prompt=inputs["prompt"]))

        worker = self.runner.start(job, self._viewer, None, on_done=lambda result: self._on_returned(result, inputs),
                                   options=JobOptions(watch=(inputs["synthetic"], inputs["real"])))
        self.runner.status("loading the CLIP model…" if inputs["model"] else "scoring tiles…")
        return worker

    def cancel(self) -> None:
        self.runner.cancel()

    # -- handlers (main thread) -----------------------------------------------------------------------------
    def _on_returned(self, evaluation: ImageEvaluation, inputs: dict[str, Any]) -> None:
        from napari.utils.notifications import show_warning

        if evaluation is None:
            return
        self.evaluation = evaluation
        result, real, box, tile = evaluation.result, inputs["real"], inputs["box"], evaluation.tile
        pixels = sum(t.n_pixels for t in evaluation.tiles)
        self._results.value = (format_metrics(result, plip=bool(inputs["model"])) +
                               f"\n{result.n} tiles of {tile} px, {pixels:,} px compared"
                               + (" (tissue)" if inputs["mask"] else ""))
        scale, translate = (np.asarray(v) for v in place_over(real, box.y, box.x))
        record = {
            "metrics": result.to_row(), "result": result.to_dict(),
            "synthetic": inputs["synthetic"].name, "real": real.name, "tile": tile, "mask": inputs["mask"],
            "region": {"y": box.y, "x": box.x, "height": box.height, "width": box.width},
            "notes": list(result.notes) + inputs["notes"],
        }
        name = HEAT_NAME.format(name=inputs["synthetic"].name)
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        heat = self._viewer.add_image(
            evaluation.heat_map("SSIM"), name=name, colormap="viridis", contrast_limits=(0.0, 1.0), opacity=0.5,
            scale=tile * scale, translate=translate + (tile - 1) / 2 * scale,  # one heat pixel per tile
            metadata={"napari_crafts": record}, units=tuple(str(u) for u in real.units[-2:]),
        )
        heat.colorbar.visible = True  # the legend: SSIM 0 (dark) → 1 (yellow), on the canvas
        self._results.value += "\n" + HEAT_LEGEND + "\n" + COMPARE_MEANING
        self.runner.status("done")
        for note in result.notes:
            if "not computed" in note or note.startswith("Pixel size"):
                show_warning(note)

    def _on_tile_set(self, _: Any = None) -> None:
        if not self._setting_tile:
            self._tile_auto = False  # the user's tile size stays

    # -- swipe / compare ------------------------------------------------------------------------------------
    def toggle_synthetic(self) -> None:
        """Show or hide the synthetic layer (compare by blinking)."""
        layer = self._synthetic_layer.value
        if layer is None:
            from napari.utils.notifications import show_error

            show_error(NO_LAYERS)
            return
        layer.visible = not layer.visible

    def _on_opacity(self, value: float) -> None:
        layer = self._synthetic_layer.value
        if layer is not None:
            layer.opacity = float(value)

    def _on_synthetic_changed(self, layer: Any) -> None:
        if layer is not None:
            self._opacity_slider.value = float(layer.opacity)
            record = layer.metadata.get("napari_crafts") if isinstance(layer.metadata, dict) else None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            typed = self._prompt_box.value.strip()
            if isinstance(prompt, str) and (not typed or typed == self._prefilled):  # never over a typed prompt
                self._prompt_box.value = self._prefilled = prompt
