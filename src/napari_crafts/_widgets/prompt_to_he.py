"""Dock widget "Prompt → H&E": text only (no ControlNet), one or several images as a stack with provenance."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Generator
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, PushButton

from .._generators import mapped
from ..generation.prompts import MAGNIFICATIONS, TCGA_CANCER_TYPES, TISSUE_DESCRIPTORS, preset_prompt
from ..generation.region import GenerationError, Progress, Region, RegionResult, TileDone, generate_region
from ._controls import (
    DockContainer,
    GenerationControls,
    LongRunOffer,
    SaveButton,
    engine_job,
    narrow,
    running_record,
    spin,
)
from ._layers import axis_unit
from ._runner import JobOptions, JobRunner, add_output_layer
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

        try:
            settings, engine_args = self.controls.settings(), self.controls.engine_args()
            if not settings.prompt:
                raise GenerationError("Write a prompt, or use a preset.")
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        from ..generation.estimate import RunDecision, settings_to_run
        from ..generation.progress import ProgressClock
        from ..generation.region import plan_region
        from ..model.catalog import model_mpp

        n, h, w = int(self._count.value), int(self._height.value), int(self._width.value)
        scale, units = prompt_placement(self._viewer, model_mpp(engine_args["ref"]))
        watermark = self.controls.watermark()
        output = add_output_layer(
            self._viewer, (h, w), name=output_name("prompt", settings.exact), scale=scale, translate=(0.0, 0.0),
            provenance=running_record(watermark), planes=(n,), units=units,
        )
        decision = RunDecision()

        def job() -> Generator[Any, None, Any]:
            decision.cancel = self.runner.cancel_event

            def run(engine: Any) -> Generator[Any, None, Any]:
                chosen = yield from settings_to_run(engine, lambda s: plan_region(None, Region(0, 0, h, w), engine, s),
                                                    settings, control=False, copies=n, decision=decision)
                return (yield from prompt_images(engine, chosen, n, h, w, watermark=watermark))

            return (yield from engine_job(engine_args, run))

        def long_run(estimate: Any) -> None:
            def fast() -> None:
                chosen = estimate.fast or settings
                self.controls.apply(chosen)
                output.name = output_name("prompt", chosen.exact)
                options.clock.steps = chosen.steps
                decision.go(chosen)

            self.offer.ask(estimate, lambda: decision.go(settings), fast)

        options = JobOptions(clock=ProgressClock(settings.steps, images=n), on_long_run=long_run,
                             on_finished=self.offer.close)
        return self.runner.start(job, self._viewer, output, on_done=lambda r: _set_model_scale(output, r),
                                 options=options)


def prompt_images(engine: Any, settings: Any, count: int, height: int, width: int, *,
                  watermark: bool | str = True) -> Generator[Progress | TileDone, None, RegionResult]:
    """``count`` images from the prompt alone, seeds seed, seed+1, …; events carry the image index as plane.
    Each image is watermarked with its own record (``"images"``), as ``generate_region`` marks one."""
    images, records = [], []
    for i in range(count):
        gen = generate_region(engine, None, Region(0, 0, height, width),
                              dataclasses.replace(settings, seed=settings.seed + i), watermark=watermark)
        result = yield from mapped(gen, functools.partial(_in_stack, image=i, count=count))
        images.append(result.rgb)
        records.append(result.provenance)
    prov = {"synthetic": True, "mode": "prompt", "images": records, "warning": records[0]["warning"],
            "seeds": [r["seed"] for r in records], "model": records[0]["model"], "prompt": settings.prompt}
    return RegionResult(np.stack(images), prov, sum(r["tiles"] for r in records), 0, records[0]["notes"])


def _in_stack(event: Progress | TileDone, *, image: int, count: int) -> Progress | TileDone:
    """An image's event counted over the whole stack (its tiles land on plane ``image``)."""
    done, total = event.tiles_done + image * event.tiles, event.tiles * count
    if isinstance(event, TileDone):
        return dataclasses.replace(event, tiles_done=done, tiles=total, plane=(image,))
    return dataclasses.replace(event, tiles_done=done, tiles=total)


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
