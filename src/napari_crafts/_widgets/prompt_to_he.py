"""Dock widget "Prompt → H&E": text only (no ControlNet), one or several images as a stack with provenance."""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import ComboBox, PushButton

from ..generation.prompts import MAGNIFICATIONS, TCGA_CANCER_TYPES, TISSUE_DESCRIPTORS, preset_prompt
from ..generation.region import GenerationError, Region, RegionResult
from ._controls import (
    DockContainer,
    GenerationControls,
    LongRunOffer,
    SaveButton,
    narrow,
    running_record,
    spin,
    start_job,
)
from ._layers import axis_unit
from ._runner import JobRunner, add_output_layer
from ._text import BUTTON_TOOLTIPS, TOOLTIPS, output_name


class PromptToHE(DockContainer):
    """Write a prompt (or build one from TCGA presets); images appear in a stack layer as they finish."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._cancer = ComboBox(choices=[f"{c} · {n}" for c, n in TCGA_CANCER_TYPES.items()], label="cancer type",
                                tooltip=TOOLTIPS["preset"])
        narrow(self._cancer, 20)
        self._tissue = ComboBox(choices=TISSUE_DESCRIPTORS, label="tissue")
        self._magnification = ComboBox(choices=MAGNIFICATIONS, label="magnification")
        self._use_preset = PushButton(text="Use preset as prompt", tooltip=BUTTON_TOOLTIPS["use_preset"])
        self._height = spin("height", 512, 64, 4096, 64, key="size")
        self._width = spin("width", 512, 64, 4096, 64, key="size")
        self._count = spin("images", 1, 1, 64, key="count")
        self._following = self.preset()  # the prompt follows the preset until the user edits it
        self.controls = GenerationControls(self._following, controlnet=False)
        self.offer = LongRunOffer()
        self.runner = JobRunner("Generate H&&E")
        self._save = SaveButton(self.runner, viewer)
        super().__init__(widgets=[self._cancer, self._tissue, self._magnification, self._use_preset, self._height,
                                  self._width, self._count, self.controls, self.offer, self.runner, self._save])
        self._use_preset.changed.connect(self.use_preset)
        for box in (self._cancer, self._tissue, self._magnification):
            box.changed.connect(self._on_preset_changed)
        self.runner.run_button.changed.connect(self.generate)

    def preset(self) -> str:
        return preset_prompt(self._cancer.value.split(" · ")[0], self._tissue.value, self._magnification.value)

    def use_preset(self) -> None:
        """Write the preset into the prompt; it follows the preset again from now on."""
        self._following = self.preset()
        self.controls._prompt.value = self._following

    def _on_preset_changed(self, *_: Any) -> None:
        if self.controls._prompt.value.strip() == self._following.strip():  # not edited since: follow
            self.use_preset()

    def generate(self) -> Any:
        from napari.utils.notifications import show_error

        n, h, w = int(self._count.value), int(self._height.value), int(self._width.value)
        try:
            job, model = self.controls.job(None, Region(0, 0, h, w), images=n), self.controls.model_choice()
            if not job.settings.prompt:
                raise GenerationError("Write a prompt, or use a preset.")
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        scale, units = prompt_placement(self._viewer, model.mpp())
        output = add_output_layer(
            self._viewer, (h, w), name=output_name("prompt", job.settings.exact), scale=scale, translate=(0.0, 0.0),
            provenance=running_record(job.watermark), planes=(n,), units=units,
        )
        return start_job(self._viewer, self.runner, model, job, output, named="prompt", offer=self.offer,
                         controls=self.controls, on_done=lambda r: _set_model_scale(output, r))


def prompt_placement(viewer: Any, mpp: float) -> tuple[tuple[float, float], tuple[str, str]]:
    """(scale, units) of the images made from text: the model's pixel size in µm, in the units of the layers already
    in the viewer. When every one of them is in pixels (labels or images without a pixel size), the images are too
    (scale 1), so that they sit beside those layers at the same size per pixel; their record keeps the µm/px."""
    others = [layer for layer in viewer.layers if not output_of_prompt(layer)]
    if others and all(axis_unit(layer) == "pixel" for layer in others):
        return (1.0, 1.0), ("pixel", "pixel")
    return (mpp, mpp), ("µm", "µm")


def output_of_prompt(layer: Any) -> bool:
    """Whether ``layer`` is an earlier output of this dock (it follows the others' units, it does not set them)."""
    meta = layer.metadata.get("napari_crafts") if isinstance(layer.metadata, dict) else None
    return isinstance(meta, dict) and meta.get("mode") == "prompt"


def _set_model_scale(layer: Any, result: RegionResult) -> None:
    """Images made from text have the model's pixel size: shown in µm when the layer is (``prompt_placement``)."""
    mpp = result.provenance["model"].get("mpp")
    if mpp and axis_unit(layer) == "micrometer":
        layer.scale = (1.0, mpp, mpp)
