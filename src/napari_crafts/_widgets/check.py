"""Dock widget "Check synthetic" (and Layers › Metadata › Check synthetic): does an image layer say it is
synthetic H&E from napari-crafts?

The same check as ``napari-crafts check`` (``export.check``), on a layer instead of a file: the provenance record
in the layer's metadata, the invisible watermark in its pixels (the displayed plane, level 0, by windows when
large), whether the two match, and a verdict, shown in the dock and as a notification.
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import Label, PushButton

from ._controls import DockContainer, layer_box, wrapped
from ._layers import provenance_record, record
from ._regions import layer_plane
from ._text import BUTTON_TOOLTIPS

NO_IMAGE = "Choose an image layer to check."
NO_ACTIVE_IMAGE = "Select an image layer in the layer list first, then Check synthetic."


class CheckSynthetic(DockContainer):
    """An image layer, "Check", and the report: provenance, watermark, match, verdict."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._layer = layer_box(napari.layers.Image, "image", "The image layer to check (the displayed plane).")
        self._check = PushButton(text="Check synthetic", tooltip=BUTTON_TOOLTIPS["check_synthetic"])
        self._result = wrapped(Label(value=""))
        super().__init__(widgets=[self._layer, self._check, self._result])
        self._check.changed.connect(lambda: self.check())
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()
        active = viewer.layers.selection.active
        if isinstance(active, napari.layers.Image):
            self._layer.value = active

    @property
    def result(self) -> str:
        return str(self._result.value)

    def check(self, layer: Any = None) -> Any:
        """Check ``layer`` (default: the chosen one); returns the ``export.check.ImageReport`` (None: no layer)."""
        from napari.utils.notifications import show_error

        layer = layer if layer is not None else self._layer.value
        if layer is None:
            show_error(NO_IMAGE)
            self._result.value = NO_IMAGE
            return None
        report = check_layer(layer, self._viewer)
        from ..export.check import format_report

        self._result.value = format_report(report)
        return report


def check_layer(layer: Any, viewer: Any) -> Any:
    """``export.check.check_array`` on the displayed plane of ``layer`` and its record; the verdict is shown as a
    notification. Returns the ``ImageReport``."""
    from napari.utils.notifications import show_error, show_info

    from ..export.check import check_array, file_record

    plane, _ = layer_plane(layer, viewer)
    found, source = plane_record(layer, viewer), None
    if found is None:  # e.g. our PNG opened by napari's own reader: the record is in the file, not the layer
        source = getattr(getattr(layer, "source", None), "path", None)
        found = file_record(source) if source else None
    report = check_array(plane, found, name=layer.name, record_from=source if found is not None else None)
    (show_error if report.error else show_info)(f"'{layer.name}': {report.verdict}")
    return report


def check_active_layer(viewer: napari.viewer.Viewer) -> Any:
    """Layers › Metadata › Check synthetic (npe2 menu command): the active image layer's verdict as a
    notification; the ``ImageReport`` (None when no image layer is selected)."""
    from napari.utils.notifications import show_error

    layer = viewer.layers.selection.active
    if not isinstance(layer, napari.layers.Image):
        show_error(NO_ACTIVE_IMAGE)
        return None
    return check_layer(layer, viewer)


def plane_record(layer: Any, viewer: Any) -> dict[str, Any] | None:
    """The provenance record of the displayed plane: a stack's own record for its image (``"images"``, as the
    Prompt → H&E widget stores them), else the layer's (None when the layer's metadata holds only what our reader
    or Pixel size note about its file: ``_layers.provenance_record``)."""
    meta = record(layer)
    images = meta.get("images")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    lead = data.ndim - 2 - int(bool(getattr(layer, "rgb", False)))
    if lead == 1 and isinstance(images, list) and len(images) == data.shape[0]:
        i = int(np.clip(round(layer.world_to_data(viewer.dims.point)[0]), 0, data.shape[0] - 1))
        return images[i] if isinstance(images[i], dict) else None
    return provenance_record(layer)
