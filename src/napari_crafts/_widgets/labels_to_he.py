"""Dock widget "Labels → H&E": a Labels layer in, synthetic H&E tiles out, laid over the labels."""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import Container, create_widget

from ..generate import GenerationError
from ._controls import GenerationControls, RegionControls, start_region_job
from ._regions import layer_plane
from ._runner import JobRunner
from ._text import NO_LABELS, TOOLTIPS


class LabelsToHE(Container):
    """Pick labels, a model and a region; tiles of synthetic H&E appear over the labels as they finish."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._labels_layer = create_widget(annotation=napari.layers.Labels, label="labels",
                                           options={"tooltip": TOOLTIPS["labels"]})
        self.where = RegionControls()
        self.controls = GenerationControls()
        self.runner = JobRunner("Generate H&&E")
        super().__init__(widgets=[self._labels_layer, self.where, self.controls, self.runner])
        self._labels_layer.changed.connect(self.where.take_mpp_from)
        self.runner.run_button.changed.connect(self.generate)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()
        self.where.take_mpp_from(self._labels_layer.value)

    def generate(self) -> Any:
        """Start generation; returns the worker (None when the input was refused with a message)."""
        from napari.utils.notifications import show_error, show_info

        from ..sources import LabelsSource

        try:
            layer = self._labels_layer.value
            if layer is None:
                raise GenerationError(NO_LABELS)
            plane, note = layer_plane(layer, self._viewer)
            if note:
                show_info(note)
            region = self.where.region(layer, self._viewer, plane.shape)
            source = LabelsSource(plane, name=layer.name, mpp=self.where.mpp)
            settings, engine_args = self.controls.settings(), self.controls.engine_args()
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        return start_region_job(self._viewer, self.runner, layer, source, region, settings, engine_args)
