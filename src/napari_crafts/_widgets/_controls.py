"""Controls shared by the generation widgets: model and diffusion settings, region choice, start-and-place."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox, TextEdit, create_widget

from ..generation.region import GenerationError, GenerationSettings, Region, generate_region
from ..model.card import CRAFTS_MASK_PROMPT
from ..model.engine import SCHEDULERS
from ..model.tiny import TINY_MODEL_ID
from ..provenance import synthetic_name
from ._regions import layer_mpp, region_for
from ._runner import JobRunner, add_output_layer
from ._text import REGION_SHAPES, REGION_VIEW, REGION_WHOLE, TOO_LARGE, TOOLTIPS, WIDGET_REGION_LIMIT


def spin(label: str, value: float, lo: float, hi: float, step: float = 1, key: str = "") -> Any:
    cls = FloatSpinBox if isinstance(value, float) else SpinBox
    return cls(value=value, min=lo, max=hi, step=step, label=label, tooltip=TOOLTIPS.get(key, ""))


class GenerationControls(Container):
    """Model and diffusion settings shared by the generation widgets."""

    def __init__(self, prompt: str = CRAFTS_MASK_PROMPT, *, controlnet: bool = True) -> None:
        self._model = LineEdit(value=TINY_MODEL_ID, label="model", tooltip=TOOLTIPS["model"])
        self._controlnet = LineEdit(value="", label="ControlNet", tooltip=TOOLTIPS["controlnet"])
        self._prompt = TextEdit(value=prompt, label="prompt", tooltip=TOOLTIPS["prompt"])
        self._negative = LineEdit(value="", label="negative prompt", tooltip=TOOLTIPS["negative_prompt"])
        self._seed = spin("seed", 0, 0, 2**31 - 1, key="seed")
        self._steps = spin("steps", 50, 1, 500, key="steps")
        self._cfg = spin("guidance (CFG)", 7.5, 1.0, 30.0, 0.5, key="guidance_scale")
        self._scheduler = ComboBox(choices=SCHEDULERS, value="default", label="scheduler",
                                   tooltip=TOOLTIPS["scheduler"])
        self._cfg_cutoff = spin("CFG for first (fraction)", 1.0, 0.0, 1.0, 0.05, key="cfg_cutoff")
        self._cache_interval = spin("full UNet every N steps", 1, 1, 10, key="cache_interval")
        self._tile = spin("tile size", 512, 64, 2048, 64, key="tile_size")
        self._overlap = spin("overlap", 64, 0, 512, 8, key="overlap")
        self._batch = spin("batch (0 = auto)", 0, 0, 64, key="batch_size")
        self._device = ComboBox(choices=["auto", "cuda", "mps", "cpu"], value="auto", label="device",
                                tooltip=TOOLTIPS["device"])
        self._allow_pickle = CheckBox(value=False, text="allow pickle weights", tooltip=TOOLTIPS["allow_pickle"])
        widgets = [self._model, self._controlnet, self._prompt, self._negative, self._seed, self._steps, self._cfg,
                   self._scheduler, self._cfg_cutoff, self._cache_interval, self._tile, self._overlap, self._batch,
                   self._device,
                   self._allow_pickle]
        if not controlnet:
            widgets.remove(self._controlnet)
        super().__init__(widgets=widgets, labels=True)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            prompt=self._prompt.value.strip(), negative_prompt=self._negative.value, seed=int(self._seed.value),
            steps=int(self._steps.value), guidance_scale=float(self._cfg.value), scheduler=self._scheduler.value,
            tile_size=int(self._tile.value), overlap=int(self._overlap.value), batch_size=int(self._batch.value),
            controlnet=self._controlnet.value.strip() or None, cfg_cutoff=float(self._cfg_cutoff.value),
            cache_interval=int(self._cache_interval.value),
        )

    def engine_args(self) -> dict[str, Any]:
        model = self._model.value.strip()
        if not model:
            raise GenerationError("Give a model: a diffusers folder, a hub id, or 'tiny-demo' to try the plugin.")
        device = None if self._device.value == "auto" else self._device.value
        return {"model": model, "device": device, "allow_pickle": bool(self._allow_pickle.value)}


def layer_box(kind: type, label: str, tooltip: str) -> ComboBox:
    """A chooser of the viewer's layers of one kind (magicgui fills it and refreshes it on reset_choices)."""
    box = create_widget(annotation=kind, label=label, options={"tooltip": tooltip})
    if not isinstance(box, ComboBox):
        raise TypeError(f"magicgui made a {type(box).__name__} for {kind.__name__}, not a ComboBox.")
    return box


class RegionControls(Container):
    """Pixel size of the input, and which part of it to render (whole layer, view, rectangle)."""

    def __init__(self) -> None:
        self._mpp_box = spin("µm/px", 0.0, 0.0, 100.0, 0.001, key="mpp")
        self._region_box = ComboBox(choices=[REGION_WHOLE, REGION_VIEW, REGION_SHAPES], value=REGION_WHOLE,
                                    label="region", tooltip=TOOLTIPS["region"])
        self._shapes_layer = layer_box(napari.layers.Shapes, "rectangle from", TOOLTIPS["shapes"])
        self._shapes_layer.visible = False
        super().__init__(widgets=[self._mpp_box, self._region_box, self._shapes_layer], labels=True)
        self._region_box.changed.connect(lambda v: setattr(self._shapes_layer, "visible", v == REGION_SHAPES))

    @property
    def mpp(self) -> float | None:
        return float(self._mpp_box.value) or None

    def take_mpp_from(self, layer: Any) -> None:
        if layer is not None:
            self._mpp_box.value = layer_mpp(layer) or 0.0

    def region(self, layer: Any, viewer: Any, shape: tuple[int, int], *, limit: bool = True) -> Region:
        region = region_for(self._region_box.value, layer, viewer, shape, self._shapes_layer.value)
        if limit and region.height * region.width > WIDGET_REGION_LIMIT:
            raise GenerationError(TOO_LARGE.format(h=region.height, w=region.width))
        return region


def engine_job(engine_args: dict[str, Any], make_job: Any) -> Generator[Any, None, Any]:
    """A generator that loads (or reuses) the engine inside the worker, then runs ``make_job(engine)``."""
    from ..model.engine import get_engine

    engine = get_engine(engine_args["model"], device=engine_args.get("device"),
                        allow_pickle=engine_args.get("allow_pickle", False))
    return (yield from make_job(engine))


def start_region_job(viewer: Any, runner: JobRunner, layer: Any, source: Any, region: Region,
                     settings: GenerationSettings, engine_args: dict[str, Any]) -> Any:
    """Add the output layer exactly over ``region`` of ``layer`` and generate into it in the background."""
    scale = tuple(layer.scale[-2:])
    translate = tuple(t + o * s for t, o, s in zip(layer.translate[-2:], (region.y, region.x), scale, strict=True))
    output = add_output_layer(
        viewer, (region.height, region.width), scale=scale, translate=translate,
        name=synthetic_name(layer.name) + ("" if settings.exact else " [approximate]"),
        provenance={"synthetic": True, "status": "running", "source": layer.name},
    )

    def job() -> Generator[Any, None, Any]:
        return (yield from engine_job(engine_args, lambda engine: generate_region(engine, source, region, settings)))

    return runner.start(job, viewer, output)
