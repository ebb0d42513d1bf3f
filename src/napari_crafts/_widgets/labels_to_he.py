"""Dock widget "Labels → H&E": a Labels layer in, synthetic H&E tiles out, laid over the labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, FileEdit

from ..generation.region import GenerationError
from ..model.tiny import TINY_MODEL_ID, ensure_tiny_model
from ._controls import (
    DockContainer,
    GenerationControls,
    LongRunOffer,
    RegionControls,
    SaveButton,
    layer_box,
    spin,
    start_from_dock,
)
from ._layers import job_data, output_units, place_over
from ._live import LivePaint
from ._regions import layer_plane
from ._runner import JobRunner
from ._text import NO_BATCH_OUTPUT, NO_LABELS, TOOLTIPS, output_name
from ._tissue import TissueChoice


class LabelsToHE(DockContainer):
    """Pick labels, a model and a region; tiles of synthetic H&E appear over the labels as they finish."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._labels_layer = layer_box(napari.layers.Labels, "labels", TOOLTIPS["labels"])
        self.where = RegionControls(viewer)
        self.tissue = TissueChoice(viewer)
        self.controls = GenerationControls()
        self._background = CheckBox(value=False, text="background job → OME-Zarr", tooltip=TOOLTIPS["background"])
        self._batch_output = FileEdit(mode=FileDialogMode.OPTIONAL_FILE, filter="*.zarr", label="OME-Zarr output",
                                      visible=False, tooltip=TOOLTIPS["batch_output"])
        self._workers = spin("workers", 1, 1, 64, key="workers")
        self._workers.visible = False
        self.offer = LongRunOffer()
        self.runner = JobRunner("Generate H&&E")
        self._save = SaveButton(self.runner, viewer)
        self.live = LivePaint(self)  # the "live" box: edits of the labels redraw the H&E under them (_live.py)
        super().__init__(widgets=[self._labels_layer, self.where, self.tissue, self.controls, self._background,
                                  self._batch_output, self._workers, self.offer, self.runner, self.live, self._save])
        self._background.changed.connect(self._on_background_changed)
        self._labels_layer.changed.connect(self.where.take_mpp_from)
        self.runner.run_button.changed.connect(self.generate)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists and the pixel size shown (a slide in µm added beneath changes it)."""
        super().reset_choices()
        if self.where.mpp_origin != "typed here":
            self.where.take_mpp_from(self._labels_layer.value)

    def _on_background_changed(self, on: bool) -> None:
        self._batch_output.visible = self._workers.visible = on

    def generate(self) -> Any:
        """Start generation; returns the worker (None when the input was refused with a message)."""
        return start_from_dock(self, self._prepare)

    def _prepare(self) -> Any:
        """(layer, source, region) of a Generate click, or the background job's worker."""
        from napari.utils.notifications import show_info

        from ..generation.sources import LabelsSource

        layer = self._labels_layer.value
        if layer is None:
            raise GenerationError(NO_LABELS)
        plane, note = layer_plane(layer, self._viewer)
        if note:
            show_info(note)
        if self.where.mpp_origin != "typed here":
            self.where.take_mpp_from(layer)  # its scale may have changed since it was chosen
        if self._background.value:
            return self.start_background(layer, plane)
        region = self.where.region(layer, self._viewer, plane.shape)
        # the job reads a copy made now, never the layer: painting or removing it cannot touch the run
        source = LabelsSource(job_data(plane), name=layer.name, mpp=self.where.mpp,
                              tissue=self.tissue.spec(layer, plane.shape))
        return layer, source, region

    def start_background(self, layer: Any, plane: Any) -> Any:
        """Hand the region to the whole-slide path (dask.distributed → OME-Zarr); open the result when done."""
        from ..wsi.job import SlideOptions, background_job

        out = str(self._batch_output.value or "").strip()
        if not out or out == ".":
            raise GenerationError(NO_BATCH_OUTPUT)
        region = self.where.region(layer, self._viewer, plane.shape, limit=False)
        source_path = _as_file(layer, plane, region, Path(out).with_suffix(".labels.tif"), self.where.mpp)
        settings, model = self.controls.settings(), self.controls.model_choice()
        if model.model == TINY_MODEL_ID:  # the workers read a folder
            model = dataclasses.replace(model, model=str(ensure_tiny_model()))
        options = SlideOptions(mpp=self.where.mpp, kind="labels", n_workers=int(self._workers.value),
                               watermark=self.controls.watermark(),
                               tissue=_region_tissue(self.tissue.spec(layer, plane.shape), plane.shape, region))

        def job() -> Generator[Any, None, Any]:
            return (yield from background_job(source_path, out, model, settings, options))

        def opened(path: Any) -> None:
            from .._reader import read_slide

            for data, meta, kind in read_slide(str(path)):
                meta["name"] = output_name(layer.name, settings.exact)
                meta["scale"], meta["translate"] = place_over(layer, region.y, region.x)
                meta["units"] = output_units(layer)
                self._viewer.add_layer(napari.layers.Layer.create(data, meta, kind))

        return self.runner.start(job, self._viewer, None, on_done=opened)


def _region_tissue(spec: Any, shape: tuple[int, int], region: Any) -> Any:
    """The tissue spec for the region handed to the whole-slide path: a mask is cut to the region (the file the
    workers read is the region alone)."""
    if not isinstance(spec, np.ndarray) or (region.y, region.x, region.height, region.width) == (0, 0, *shape):
        return spec
    sy, sx = spec.shape[0] / shape[0], spec.shape[1] / shape[1]
    y0, x0 = int(region.y * sy), int(region.x * sx)
    y1, x1 = max(y0 + 1, round((region.y + region.height) * sy)), max(x0 + 1, round((region.x + region.width) * sx))
    return spec[y0:y1, x0:x1]


def _as_file(layer: Any, plane: Any, region: Any, fallback: Path, mpp: float | None) -> str:
    """The labels as a file the workers can read: the layer's own file when it is one whole 2-D level,
    else the region written to a tiled TIFF beside the output."""
    import tifffile

    path = layer.metadata.get("napari_crafts", {}).get("path") if isinstance(layer.metadata, dict) else None
    if path and plane.ndim == 2 and (region.y, region.x, region.height, region.width) == (0, 0, *plane.shape):
        return str(path)
    crop = plane[region.y : region.y + region.height, region.x : region.x + region.width]
    kw: dict[str, Any] = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    fallback.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(fallback, crop, tile=(512, 512), compression="zlib", **kw)
    return str(fallback)
