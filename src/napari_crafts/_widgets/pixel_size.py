"""Dock widget "Pixel size": give layers their µm/px when the file did not say (or said it wrong)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import napari
from magicgui.widgets import FloatSpinBox, Label, PushButton, Select

from ._controls import DockContainer
from ._layers import layer_pixel_size, record
from ._text import BUTTON_TOOLTIPS, PREFERRED_READER, SLIDE_PATTERNS

NO_LAYER_CHOSEN = "Choose one or more layers in the list first (click, Ctrl/Shift-click for several)."


class PixelSizeWidget(DockContainer):
    """A list of layers (the active one preselected), a µm/px value, and "Set pixel size"."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._layers = Select(choices=self._all_layers, label="layers",
                              tooltip="The layers to set (Ctrl/Shift-click for several).")
        self._layers.max_height = 140
        self._mpp = FloatSpinBox(value=0.25, min=0.001, max=1000.0, step=0.001, label="µm/px",
                                 tooltip="Pixel size in µm per pixel (0.25 ≈ 40x, 0.5 ≈ 20x).")
        self._current = Label(value="", label="now")
        self._current.native.setWordWrap(True)
        self._set = PushButton(text="Set pixel size", tooltip=BUTTON_TOOLTIPS["set_pixel_size"])
        self._prefer = PushButton(text="Open slides with napari-crafts", tooltip=BUTTON_TOOLTIPS["prefer_reader"])
        super().__init__(widgets=[self._layers, self._mpp, self._current, self._set, self._prefer])
        self._set.changed.connect(lambda: self.set_pixel_size())
        self._prefer.changed.connect(lambda: self.prefer_reader())
        self._layers.changed.connect(self._show_current)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        viewer.layers.selection.events.active.connect(lambda _: self.select_active())
        self.reset_choices()
        self.select_active()

    def _all_layers(self, _: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers]

    def select_active(self) -> None:
        """Preselect the viewer's active layer (what the user is looking at) when nothing else is chosen."""
        active = self._viewer.layers.selection.active
        if active is not None and not self._layers.value:
            self._layers.value = [active]

    def _show_current(self, layers: Any) -> None:
        found = [layer_pixel_size(layer, self._viewer) for layer in layers or []]
        self._current.value = "; ".join(f"{f.mpp:g} µm/px ({f.origin})" if f.known else "unknown" for f in found)
        known = [f.mpp for f in found if f.mpp]
        if known:
            self._mpp.value = known[0]

    def __call__(self, layers: Sequence[Any] | None = None, mpp: float | None = None) -> list[Any]:
        return self.set_pixel_size(layers, mpp)

    def set_pixel_size(self, layers: Sequence[Any] | None = None, mpp: float | None = None) -> list[Any]:
        """Set µm/px on the Y and X axes of ``layers`` (default: those chosen) and record it; returns them."""
        from napari.utils.notifications import show_error, show_info

        chosen = list(self._layers.value if layers is None else layers)
        value = float(self._mpp.value if mpp is None else mpp)
        if not chosen:
            show_error(NO_LAYER_CHOSEN)
            return []
        for layer in chosen:  # the record first: the docks showing this layer read it when its scale changes
            meta = record(layer)
            meta.update(mpp=value, mpp_set_by="user")
            layer.metadata["napari_crafts"] = meta
            scale = list(layer.scale)
            scale[-2:] = [value, value]
            layer.scale = scale
            layer.units = (*[str(u) for u in layer.units[:-2]], "µm", "µm")
        show_info(f"Pixel size {value:g} µm/px set on {', '.join(layer.name for layer in chosen)}.")
        self._show_current(chosen)
        return chosen

    def prefer_reader(self) -> list[str]:
        """Make napari-crafts napari's reader for :data:`SLIDE_PATTERNS` (saved in napari's settings)."""
        from napari.utils.notifications import show_info

        done = prefer_napari_crafts_reader()
        show_info(PREFERRED_READER.format(patterns=", ".join(p.removeprefix("*") for p in done)))
        return done


def prefer_napari_crafts_reader() -> list[str]:
    """Set napari's preferred reader (``settings.plugins.extension2reader``, what Preferences › Plugins › File
    extension readers edits) to napari-crafts for :data:`SLIDE_PATTERNS`; other extensions are left alone."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader, **dict.fromkeys(SLIDE_PATTERNS, "napari-crafts")}
    return list(SLIDE_PATTERNS)
