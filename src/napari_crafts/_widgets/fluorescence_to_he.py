"""Dock widget "Fluorescence → H&E": fluorescence channels in, with roles and a preview of the control image."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton, Select

from ..generation.conditioning import PERCENTILES, ROLES, as_channels_first, guess_roles
from ..generation.region import GenerationError
from ..model.card import FLUORESCENCE_PROMPT
from ._controls import (
    DockContainer,
    GenerationControls,
    LongRunOffer,
    RegionControls,
    SaveButton,
    spin,
    start_from_dock,
)
from ._layers import job_data, output_units, place_over, record
from ._regions import layer_plane
from ._runner import JobRunner
from ._text import BUTTON_TOOLTIPS, NO_CHANNELS, TOOLTIPS
from ._tissue import TissueChoice

#: More planes than this along the chosen axis means it is not the channel axis.
MAX_CHANNELS = 64
#: A channel's name as its role's label: at most this many characters (the whole name is in the tooltip).
ROLE_LABEL_CHARS = 16


def _short(name: str) -> str:
    return name if len(name) <= ROLE_LABEL_CHARS else name[: ROLE_LABEL_CHARS - 1] + "…"


class FluorescenceToHE(DockContainer):
    """Choose channel layers (or one layer with a channel axis), give each a role, preview, generate."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        # a vertical list (multi-select), not a row of combo boxes: the dock stays narrow with many channels
        self._channel_layers = Select(choices=self._image_layers, label="channels", tooltip=TOOLTIPS["channels"])
        self._channel_layers.max_height = 110
        self._channel_axis = spin("channel axis", 0, 0, 3, key="channel_axis")
        self._channel_axis.visible = False  # shown when one layer with a channel axis is chosen
        # one row per channel, labelled by its name, in the dock's label column (a group: no label of its own)
        self._roles: Container[ComboBox] = Container(labels=True, label="")
        self._low = spin("low %", PERCENTILES[0], 0.0, 50.0, 0.1, key="percentiles")
        self._high = spin("high %", PERCENTILES[1], 50.0, 100.0, 0.1, key="percentiles")
        self._preview = PushButton(text="Preview control image", tooltip=BUTTON_TOOLTIPS["preview"])
        self.where = RegionControls(viewer)
        self.tissue = TissueChoice(viewer)
        self.controls = GenerationControls(FLUORESCENCE_PROMPT)
        self.offer = LongRunOffer()
        self.runner = JobRunner("Generate H&&E")
        self._save = SaveButton(self.runner, viewer)
        super().__init__(widgets=[self._channel_layers, self._channel_axis, self._roles, self._low, self._high,
                                  self.where, self.tissue, self._preview, self.controls, self.offer, self.runner,
                                  self._save])
        self._channel_layers.changed.connect(self._on_channels_changed)
        self._channel_axis.changed.connect(lambda _: self._on_channels_changed(self._channel_layers.value))
        self._preview.changed.connect(self.preview)
        self.runner.run_button.changed.connect(self.generate)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    # -- channels and roles ---------------------------------------------------------------------------------
    def _image_layers(self, _: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, napari.layers.Image)]

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer list; with nothing chosen yet, choose the channels of the last IF file opened."""
        super().reset_choices()
        if self._channel_layers.value:
            return
        images = [layer for _, layer in self._image_layers() if not layer.rgb]
        from_file = [layer for layer in images if record(layer).get("channel_index") is not None]
        if from_file:
            path = record(from_file[-1]).get("path")
            self._channel_layers.value = [layer for layer in from_file if record(layer).get("path") == path]
        elif len(images) == 1:
            self._channel_layers.value = images

    def channel_names(self) -> list[str]:
        layers = list(self._channel_layers.value or [])
        if len(layers) == 1 and self._is_stack(layers[0]):
            n = layers[0].data.shape[int(self._channel_axis.value)]
            if n > MAX_CHANNELS:  # not a channel axis: say so when generating, offer no roles
                return []
            names = layers[0].metadata.get("napari_crafts", {}).get("channel_names")
            return list(names) if names and len(names) == n else [f"{layers[0].name} [{i}]" for i in range(n)]
        return [layer.name for layer in layers]

    @staticmethod
    def _is_stack(layer: Any) -> bool:
        return not layer.rgb and layer.data.ndim == 3

    def _on_channels_changed(self, layers: Any) -> None:
        self._roles.clear()
        names = self.channel_names()
        guessed = guess_roles(names) if names else {}
        for i, name in enumerate(names):
            self._roles.append(ComboBox(choices=ROLES, value=guessed.get(i, "other"), label=_short(name),
                                        tooltip=f"Role of '{name}'. {TOOLTIPS['roles']}"))
        chosen = list(layers or [])
        self._channel_axis.visible = len(chosen) == 1 and self._is_stack(chosen[0])  # else it means nothing
        self.align_labels()  # the channel names join the dock's label column
        if layers:
            self.where.take_mpp_from(layers[0])

    def roles(self) -> dict[int, str]:
        return {i: box.value for i, box in enumerate(self._roles)}

    def source(self) -> tuple[Any, Any]:
        """(FluorescenceSource over the displayed (C, Y, X) planes, the layer the output is placed over)."""
        from ..generation.sources import FluorescenceSource

        layers = list(self._channel_layers.value or [])
        if not layers:
            raise GenerationError(NO_CHANNELS)
        if any(layer.rgb for layer in layers):
            raise GenerationError(
                f"'{next(layer.name for layer in layers if layer.rgb)}' is shown as an RGB image, not fluorescence "
                "channels: if it holds channels (e.g. 16-bit), split it (right-click › Split RGB) and choose those."
            )
        if len(layers) == 1 and self._is_stack(layers[0]):
            axis = int(self._channel_axis.value)
            if layers[0].data.shape[axis] > MAX_CHANNELS:
                raise GenerationError(
                    f"'{layers[0].name}' has {layers[0].data.shape[axis]} planes along axis {axis}: set 'channel axis' "
                    f"to the axis that holds the channels (shape {tuple(layers[0].data.shape)})."
                )
            data = job_data(as_channels_first(layers[0].data, channel_axis=axis, name=layers[0].name))
        else:
            planes = [layer_plane(layer, self._viewer)[0] for layer in layers]
            shapes = {tuple(p.shape) for p in planes}
            if len(shapes) > 1:
                raise GenerationError(f"The channel layers differ in size ({', '.join(map(str, sorted(shapes)))}).")
            if all(isinstance(p, np.ndarray) for p in planes):
                data = np.stack(planes)  # a copy: the job never reads the layers
            else:  # channels of a large file: stay lazy (read window by window from the file)
                import dask.array as da

                data = da.stack([da.asarray(p) for p in planes])
        source = FluorescenceSource(
            data, roles=self.roles(), channel_names=self.channel_names(), name=layers[0].name, mpp=self.where.mpp,
            percentiles=(float(self._low.value), float(self._high.value)),
            tissue=self.tissue.spec(layers[0], tuple(data.shape[-2:])),
        )
        return source, layers[0]

    # -- actions --------------------------------------------------------------------------------------------
    def preview(self) -> Any:
        """Add (or refresh) a layer showing exactly the control image the model will receive, over the region."""
        from napari.utils.notifications import show_error

        try:
            source, layer = self.source()
            region = self.where.region(layer, self._viewer, source.shape)
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        side = max(region.height, region.width)
        control = source.control(region.y, region.x, side, side)[: region.height, : region.width]
        name = f"control preview · {layer.name}"
        scale, translate = place_over(layer, region.y, region.x)
        meta = {"napari_crafts": {"control_preview": True, "source": source.describe()}}
        self._preview_tissue(source, region, layer, scale, translate)
        if name in self._viewer.layers:
            out = self._viewer.layers[name]
            out.data, out.scale, out.translate, out.metadata = control, scale, translate, meta
            return out
        return self._viewer.add_image(control, rgb=True, name=name, scale=scale, translate=translate, metadata=meta,
                                      units=output_units(layer))

    def _preview_tissue(self, source: Any, region: Any, layer: Any, scale: Any, translate: Any) -> None:
        """The tissue extent the run will use, as a Labels layer (1 = tissue; glass is transparent)."""
        from ..generation.tissue import resolve_tissue
        from ..model.card import DEFAULT_MODEL_MPP

        mask = resolve_tissue(source, region.box, source.mpp or DEFAULT_MODEL_MPP)
        name = f"tissue preview · {layer.name}"
        tissue = (np.ones((region.height, region.width), np.uint8) if mask is None
                  else (mask.alpha(region.y, region.x, region.height, region.width) >= 0.5).astype(np.uint8))
        if name in self._viewer.layers:
            out = self._viewer.layers[name]
            out.data, out.scale, out.translate = tissue, scale, translate
        else:
            self._viewer.add_labels(tissue, name=name, scale=scale, translate=translate, opacity=0.35,
                                    units=output_units(layer))

    def generate(self) -> Any:
        """Start generation; returns the worker (None when the input was refused with a message)."""
        return start_from_dock(self, self._prepare)

    def _prepare(self) -> tuple[Any, Any, Any]:
        source, layer = self.source()
        return layer, source, self.where.region(layer, self._viewer, source.shape)
