"""Dock widget "Prompt → H&E": text only (no ControlNet), one or several images as a stack with provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton

from ..generation.prompts import MAGNIFICATIONS, TCGA_CANCER_TYPES, TISSUE_DESCRIPTORS, preset_prompt
from ..generation.region import GenerationError, Progress, Region, RegionResult, TileDone, generate_region
from ..provenance import SYNTHETIC_SUFFIX
from ._controls import GenerationControls, engine_job, spin
from ._runner import JobRunner, add_output_layer
from ._text import TOOLTIPS


class PromptToHE(Container):
    """Write a prompt (or build one from TCGA presets); images appear in a stack layer as they finish."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._cancer = ComboBox(choices=[f"{c} · {n}" for c, n in TCGA_CANCER_TYPES.items()], label="cancer type",
                                tooltip=TOOLTIPS["preset"])
        self._tissue = ComboBox(choices=TISSUE_DESCRIPTORS, label="tissue")
        self._magnification = ComboBox(choices=MAGNIFICATIONS, label="magnification")
        self._use_preset = PushButton(text="Use preset as prompt")
        self._height = spin("height", 512, 64, 4096, 64, key="size")
        self._width = spin("width", 512, 64, 4096, 64, key="size")
        self._count = spin("images", 1, 1, 64, key="count")
        self.controls = GenerationControls(self.preset(), controlnet=False)
        self.runner = JobRunner("Generate H&&E")
        super().__init__(widgets=[self._cancer, self._tissue, self._magnification, self._use_preset, self._height,
                                  self._width, self._count, self.controls, self.runner])
        self._use_preset.changed.connect(lambda: setattr(self.controls._prompt, "value", self.preset()))
        self.runner.run_button.changed.connect(self.generate)

    def preset(self) -> str:
        return preset_prompt(self._cancer.value.split(" · ")[0], self._tissue.value, self._magnification.value)

    def generate(self) -> Any:
        from napari.utils.notifications import show_error

        try:
            settings, engine_args = self.controls.settings(), self.controls.engine_args()
            if not settings.prompt:
                raise GenerationError("Write a prompt, or use a preset.")
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            return None
        n, h, w = int(self._count.value), int(self._height.value), int(self._width.value)
        output = add_output_layer(
            self._viewer, (h, w), name=f"{SYNTHETIC_SUFFIX} · prompt", scale=(1.0, 1.0), translate=(0.0, 0.0),
            provenance={"synthetic": True, "status": "running"}, planes=(n,),
        )

        def job() -> Generator[Any, None, Any]:
            return (yield from engine_job(engine_args, lambda engine: prompt_images(engine, settings, n, h, w)))

        return self.runner.start(job, self._viewer, output, on_done=lambda r: _set_model_scale(output, r))


def prompt_images(engine: Any, settings: Any, count: int, height: int, width: int
                  ) -> Generator[Progress | TileDone, None, RegionResult]:
    """``count`` images from the prompt alone, seeds seed, seed+1, …; events carry the image index as plane."""
    images, records = [], []
    for i in range(count):
        gen = generate_region(engine, None, Region(0, 0, height, width),
                              dataclasses.replace(settings, seed=settings.seed + i))
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            total = event.tiles * count
            done = event.tiles_done + i * event.tiles
            if isinstance(event, TileDone):
                yield dataclasses.replace(event, tiles_done=done, tiles=total, plane=(i,))
            else:
                yield dataclasses.replace(event, tiles_done=done, tiles=total)
        images.append(result.rgb)
        records.append(result.provenance)
    prov = {"synthetic": True, "mode": "prompt", "images": records, "warning": records[0]["warning"],
            "seeds": [r["seed"] for r in records], "model": records[0]["model"], "prompt": settings.prompt}
    return RegionResult(np.stack(images), prov, sum(r["tiles"] for r in records), 0, records[0]["notes"])


def _set_model_scale(layer: Any, result: RegionResult) -> None:
    """Images made from text have the model's pixel size: show them in µm."""
    mpp = result.provenance["model"].get("mpp")
    if mpp:
        layer.scale = (1.0, mpp, mpp)
