"""Controls shared by the generation widgets: model and diffusion settings (main ones first, the rest under
"Advanced"), pixel size and region, the long-run offer, start-and-place, and Save…."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    TextEdit,
    create_widget,
)
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QSizePolicy

from ..generation.job import ModelChoice, RegionJob
from ..generation.region import GenerationError, GenerationSettings, Region
from ..model.card import CRAFTS_MASK_PROMPT
from ..model.engine import SCHEDULERS
from ._layers import layer_pixel_size, output_units, place_over
from ._regions import region_for
from ._runner import JobOptions, JobRunner, add_output_layer
from ._text import (
    ADVANCED_CLOSED,
    ADVANCED_OPEN,
    BUTTON_TOOLTIPS,
    LONG_RUN,
    MPP_UNKNOWN,
    NO_MPP_BEFORE_RUN,
    NOT_A_MODEL_FOLDER,
    REGION_SHAPES,
    REGION_VIEW,
    REGION_WHOLE,
    TOO_LARGE,
    TOOLTIPS,
    WATERMARK_OFF,
    WIDGET_REGION_LIMIT,
    output_name,
)


class DockContainer(Container):
    """A dock widget that scrolls when it is taller than the window (laptop screens), is never cut off on the
    right, and lines up the labels of all its groups in one column.

    magicgui's ``scrollable`` Container puts its widgets in a QScrollArea, but ``native`` (what napari docks) is
    the inner widget, so napari would dock the widgets without the scroll area: ``native`` is the scroll area here.
    That scroll area has no horizontal scroll bar and magicgui sets its width once, before the dock is styled and
    before a slide's long layer names arrive: it follows the widgets' minimum width here (``_DockFit``), with room
    for the vertical scroll bar, so a taller dock grows its scroll bar beside the widgets, not over them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(scrollable=True, **kwargs)
        inner = self._widget._mgui_get_native_widget()
        inner._magic_widget = self  # as magicgui marks a container's widget
        inner.layout().addStretch(1)  # widgets keep their height at the top; the space left stays below
        for box in _nested(self, ComboBox):
            narrow(box, keep=True)  # layer lists: a slide's long name must not widen the dock
        self._fit = _DockFit(self.root_native_widget, inner, self.align_labels)
        self.align_labels()

    @property
    def native(self) -> Any:
        return self.root_native_widget

    def align_labels(self) -> None:
        """One label column for the whole dock: a group (a nested container) takes no label column of its own,
        a row without a label uses the whole width, and every label is as wide as the widest one (the folded
        Advanced ones included, so opening Advanced moves nothing)."""
        from magicgui.widgets._concrete import _LabeledWidget

        rows = []
        for widget in _nested(self, object):
            row = widget._labeled_widget()
            if isinstance(widget, Container) and not isinstance(widget, _LabeledWidget):
                widget.margins = (0, 0, 0, 0)  # a group is not indented
            if row is None:
                continue
            if isinstance(widget, Label):  # a text takes the row's width (magicgui's is fixed: the row centres it)
                widget.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            if str(widget.label).strip():
                rows.append(row)
            else:
                row._label_widget.visible = False
        widest = max((row._label_widget.native.sizeHint().width() for row in rows), default=0)
        for row in rows:
            row._label_widget.native.setFixedWidth(widest)


def _nested(container: Container, kind: type) -> list[Any]:
    """The widgets of ``kind`` inside ``container``, at any depth (not the labels magicgui adds)."""
    from magicgui.widgets._concrete import _LabeledWidget

    found = []
    for widget in container:
        if isinstance(widget, kind):
            found.append(widget)
        if isinstance(widget, Container) and not isinstance(widget, _LabeledWidget):
            found += _nested(widget, kind)
    return found


class _DockFit(QObject):
    """Keeps a dock's scroll area as wide as its widgets need plus the vertical scroll bar, and lines the labels
    up again once napari's style sheet (the font) reaches them."""

    def __init__(self, scroll: Any, inner: Any, align: Callable[[], None]) -> None:
        super().__init__(scroll)
        self._scroll, self._inner, self._align = scroll, inner, align
        inner.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        kind = event.type()
        # (an exception here would abort Python under PyQt6: a widget deleted while its dock closes is let go)
        with contextlib.suppress(RuntimeError):
            if kind in (QEvent.Type.StyleChange, QEvent.Type.FontChange, QEvent.Type.Show):
                self._align()
            if kind in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
                scroll = self._scroll
                width = max(self._inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
                            + 2 * scroll.frameWidth(), _title_width(scroll))
                if scroll.minimumWidth() != width:
                    scroll.setMinimumWidth(width)
        return False


#: napari's dock title bar: its close, hide and float buttons and margins beside the title (px).
TITLE_BUTTONS = 110


def _title_width(widget: Any) -> int:
    """The width napari's title bar needs for the title of the dock that holds ``widget`` (0: not docked)."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    if dock is None:
        return 0
    return int(dock.fontMetrics().horizontalAdvance(dock.windowTitle())) + TITLE_BUTTONS


def setting_box(name: str) -> Any:
    """The dock's control of generation setting ``name``, made from its one declaration (``generation.settings``):
    label, tooltip, default, valid range and increment (a spin box's range is the core's, within Qt's int32)."""
    from ..generation.settings import INTEGER, SETTINGS

    s, value = SETTINGS[name], getattr(GenerationSettings(), name)
    if name == "scheduler":
        return ComboBox(choices=SCHEDULERS, value=value, label=s.label, tooltip=s.help)
    if name == "prompt":
        return TextEdit(value=value, label=s.label, tooltip=s.help)
    if s.lo is None or s.hi is None:
        return LineEdit(value=value or "", label=s.label, tooltip=s.help)
    if INTEGER[name]:
        return SpinBox(value=value, min=int(s.lo), max=min(int(s.hi), 2**31 - 1), step=int(s.step), label=s.label,
                       tooltip=s.help)
    low = s.lo + s.step if s.low_open else s.lo  # the smallest valid value the box can show
    return FloatSpinBox(value=value, min=low, max=s.hi, step=s.step, label=s.label, tooltip=s.help)


def spin(label: str, value: float, lo: float, hi: float, step: float = 1, key: str = "") -> Any:
    cls = FloatSpinBox if isinstance(value, float) else SpinBox
    return cls(value=value, min=lo, max=hi, step=step, label=label, tooltip=TOOLTIPS.get(key, ""))


def wrapped(label: Label) -> Label:
    """A label whose long text wraps to the dock's width instead of widening the dock, always as tall as its lines
    need at its width (``_FitHeight``)."""
    native = label.native
    native.setWordWrap(True)
    native.installEventFilter(_FitHeight(native))
    label.changed.connect(lambda *_: _fit_height(native))
    return label


def _fit_height(label: Any) -> None:
    """Make a word-wrapped QLabel at least as tall as its text at its present width."""
    need = label.heightForWidth(label.width()) if label.width() > 0 else -1
    if need > 0 and label.minimumHeight() != need:
        label.setMinimumHeight(need)


class _FitHeight(QObject):
    """Refits a word-wrapped label (``_fit_height``) whenever it is resized or shown. A layout inside a scroll area
    asks a wrapped label for its height before it has given it its width, so without this a long text (the
    long-run offer's times) lost its first and last lines."""

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            _fit_height(obj)
        return False


def narrow(box: ComboBox, chars: int = 14, *, keep: bool = False) -> None:
    """Let a combo box with long entries shrink to ``chars`` characters, so the dock stays narrow (``keep``: unless
    it was narrowed already)."""
    from qtpy.QtWidgets import QComboBox

    native = box.native
    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    if isinstance(native, QComboBox) and not (keep and native.sizeAdjustPolicy() == policy):
        native.setSizeAdjustPolicy(policy)
        native.setMinimumContentsLength(chars)


class ModelPicker(Container):
    """The models this install knows (``model.catalog``), Browse… for a folder, and a hub id.

    ``value`` is what the engine is given: the hub id when one is typed, else the chosen entry. Setting it to a
    folder or id that is not listed adds it to the list.
    """

    def __init__(self) -> None:
        from ..model.catalog import default_model

        self._extra: list[str] = []
        self._choice_box = ComboBox(choices=self._choices, label="model", tooltip=TOOLTIPS["model"])
        narrow(self._choice_box)
        self._browse = PushButton(text="Browse…", tooltip=TOOLTIPS["browse"])
        self._hub = LineEdit(value="", label="or hub id", tooltip=TOOLTIPS["hub"])
        # Browse… beside the hub id, not the list: the list keeps the field's width and the dock stays narrow
        row: Container[Any] = Container(widgets=[self._hub, self._browse], layout="horizontal", labels=False,
                                        label="or hub id")
        row.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self._choice_box, row], labels=True)
        self.margins = (0, 0, 0, 0)
        self._browse.changed.connect(self.browse)
        self.value = default_model()

    def _choices(self, _: Any = None) -> list[tuple[str, str]]:
        from ..model.catalog import known_models

        listed = [(e.label, e.ref) for e in known_models()]
        refs = {ref for _, ref in listed}
        return listed + [(ref, ref) for ref in self._extra if ref not in refs]

    @property
    def value(self) -> str:
        return self._hub.value.strip() or str(self._choice_box.value or "")

    @value.setter
    def value(self, ref: str) -> None:
        ref = str(ref).strip()
        if ref not in [r for _, r in self._choices()]:
            self._extra.append(ref)
            self._choice_box.reset_choices()
        self._choice_box.value = ref
        self._hub.value = ""

    def browse(self) -> None:
        """Choose a model folder (a diffusers folder: model_index.json at its root)."""
        from magicgui.widgets import show_file_dialog
        from napari.utils.notifications import show_error

        from ..model.catalog import is_model_folder

        folder = show_file_dialog(mode="d", caption="Model folder (diffusers layout)")
        if not folder:
            return
        if not is_model_folder(folder):
            show_error(NOT_A_MODEL_FOLDER.format(path=folder))
            return
        self.value = str(folder)


#: Shown above Generate while the settings are approximate (e.g. after "Use fast settings"), with EXACT_BUTTON.
APPROXIMATE = "Settings are {what}: faster, not the model's exact output."
EXACT_BUTTON = "Back to exact settings"
EXACT_TOOLTIP = ("The model's own scheduler, guidance on every step and no feature reuse; the steps and tile size "
                 "from before 'Use fast settings'.")


class GenerationControls(Container):
    """Model and diffusion settings shared by the generation widgets; the less used ones under "Advanced"."""

    def __init__(self, prompt: str = CRAFTS_MASK_PROMPT, *, controlnet: bool = True) -> None:
        self._default_prompt = prompt
        self._model = ModelPicker()
        self._prompt = setting_box("prompt")
        self._prompt.value = prompt
        self._prompt.max_height = 64
        self._seed, self._steps, self._cfg = (setting_box(n) for n in ("seed", "steps", "guidance_scale"))
        self._controlnet, self._negative, self._scheduler = (setting_box(n) for n in ("controlnet", "negative_prompt",
                                                                                     "scheduler"))
        self._cfg_cutoff, self._cache_interval = setting_box("cfg_cutoff"), setting_box("cache_interval")
        self._tile, self._overlap, self._batch = (setting_box(n) for n in ("tile_size", "overlap", "batch_size"))
        self._device = ComboBox(choices=["auto", "cuda", "mps", "cpu"], value="auto", label="device",
                                tooltip=TOOLTIPS["device"])
        self._allow_pickle = CheckBox(value=False, text="allow pickle weights", tooltip=TOOLTIPS["allow_pickle"])
        self._watermark = CheckBox(value=True, text="watermark", tooltip=TOOLTIPS["watermark"])
        self._restore = PushButton(text="Restore defaults", tooltip=TOOLTIPS["restore"])
        advanced = [self._negative, self._scheduler, self._cfg_cutoff, self._cache_interval, self._tile,
                    self._overlap, self._batch, self._device, self._allow_pickle, self._watermark, self._restore]
        if controlnet:
            advanced.insert(0, self._controlnet)
        self._advanced = Container(widgets=advanced, labels=True, visible=False)
        self._advanced.margins = (0, 0, 0, 0)
        self._advanced_button = PushButton(text=ADVANCED_CLOSED, tooltip=TOOLTIPS["advanced"])
        self._approximate = wrapped(Label(value="", label=""))
        self._exact_button = PushButton(text=EXACT_BUTTON, tooltip=EXACT_TOOLTIP)
        self._approximate_row: Container[Any] = Container(widgets=[self._approximate, self._exact_button],
                                                          labels=False, visible=False, label="")
        self._approximate_row.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self._model, self._prompt, self._steps, self._seed, self._cfg,
                                  self._advanced_button, self._advanced, self._approximate_row], labels=True)
        self.margins = (0, 0, 0, 0)
        self.advanced_shown = False
        self._before_fast: GenerationSettings | None = None  # the exact settings "Use fast settings" replaced
        self._advanced_button.changed.connect(lambda: self.show_advanced(not self.advanced_shown))
        self._restore.changed.connect(self.restore_defaults)
        self._exact_button.changed.connect(self.back_to_exact)
        for box in (self._scheduler, self._cfg_cutoff, self._cache_interval):
            box.changed.connect(self._show_approximate)
        self._scheduler.changed.connect(self._on_scheduler)

    def _on_scheduler(self, name: str) -> None:
        """The few-step student takes its own steps (4 by default, at most 50): choosing it sets them."""
        from ..model.engine import FEW_STEP_SCHEDULER, LCM_DEFAULT_STEPS

        if name == FEW_STEP_SCHEDULER:
            self._steps.value = LCM_DEFAULT_STEPS

    def show_advanced(self, show: bool = True) -> None:
        self.advanced_shown = show
        self._advanced.visible = show
        self._advanced_button.text = ADVANCED_OPEN if show else ADVANCED_CLOSED

    def restore_defaults(self) -> None:
        """Every setting back to its default (the model list and prompt too)."""
        from ..model.catalog import default_model

        self._before_fast = None
        self.apply(GenerationSettings(prompt=self._default_prompt))
        self._model.value = default_model()
        self._seed.value, self._cfg.value = 0, GenerationSettings().guidance_scale
        self._negative.value, self._controlnet.value, self._batch.value = "", "", 0
        self._device.value, self._allow_pickle.value, self._watermark.value = "auto", False, True

    @property
    def approximate_text(self) -> str:
        """What the dock says while the settings are approximate ("" when they are exact)."""
        return str(self._approximate.value)

    def _show_approximate(self, *_: Any) -> None:
        """Say, above Generate, when the settings are approximate (fast mode), with a way back to exact."""
        try:
            what = self.settings().approximation
        except ValueError:  # a combination being typed (e.g. overlap above half the tile): say nothing yet
            return
        self._approximate.value = APPROXIMATE.format(what=what) if what else ""
        self._approximate_row.visible = bool(what)

    def back_to_exact(self) -> None:
        """The settings "Use fast settings" replaced (steps, scheduler, tiles…), else the exact scheduler, full
        guidance and no feature reuse with the other values kept."""
        before, self._before_fast = self._before_fast, None
        now = self.settings()
        kept = before if before is not None else now
        self.apply(dataclasses.replace(now, scheduler="default", cfg_cutoff=1.0, cache_interval=1, steps=kept.steps,
                                       tile_size=kept.tile_size, overlap=kept.overlap))

    def apply(self, settings: GenerationSettings) -> None:
        """Show ``settings`` in the controls (e.g. the fast settings the long-run offer chose)."""
        current = self.settings()
        if current.exact and not settings.exact:
            self._before_fast = current
        self._prompt.value = settings.prompt
        self._scheduler.value, self._steps.value = settings.scheduler, settings.steps  # lcm sets its steps first
        self._cfg_cutoff.value, self._cache_interval.value = settings.cfg_cutoff, settings.cache_interval
        self._tile.value, self._overlap.value = settings.tile_size, settings.overlap
        self._show_approximate()

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            prompt=self._prompt.value.strip(), negative_prompt=self._negative.value, seed=int(self._seed.value),
            steps=int(self._steps.value), guidance_scale=float(self._cfg.value), scheduler=self._scheduler.value,
            tile_size=int(self._tile.value), overlap=int(self._overlap.value), batch_size=int(self._batch.value),
            controlnet=self._controlnet.value.strip() or None, cfg_cutoff=float(self._cfg_cutoff.value),
            cache_interval=int(self._cache_interval.value),
        )

    def watermark(self) -> bool | str:
        """``generate_region``'s ``watermark``: True, or the name of the switch that turned it off."""
        return True if self._watermark.value else WATERMARK_OFF

    def model_choice(self) -> ModelChoice:
        """The model, device and pickle opt-in chosen here (what the run layer loads)."""
        device = None if self._device.value == "auto" else self._device.value
        return ModelChoice.chosen(self._model.value, device=device, allow_pickle=bool(self._allow_pickle.value))

    def job(self, source: Any, region: Region, *, images: int = 1) -> RegionJob:
        """What a Generate click runs: ``region`` of ``source`` with the settings and watermark chosen here."""
        return RegionJob(source, region, self.settings(), self.watermark(), images)


def layer_box(kind: type, label: str, tooltip: str, *, nullable: bool = False) -> ComboBox:
    """A chooser of the viewer's layers of one kind (magicgui fills it and refreshes it on reset_choices);
    ``nullable``: it may also be empty (nothing chosen)."""
    box = create_widget(annotation=kind, label=label, options={"tooltip": tooltip, "nullable": nullable})
    if not isinstance(box, ComboBox):
        raise TypeError(f"magicgui made a {type(box).__name__} for {kind.__name__}, not a ComboBox.")
    return box


class RegionChoice:
    """Which part of a layer to work on (whole layer, current view, a Shapes rectangle): the two controls every
    widget that takes a region shows (generation and Compare), for its own layout, and the Region they pick."""

    def __init__(self, tooltips: dict[str, str]) -> None:
        self.box = ComboBox(choices=[REGION_WHOLE, REGION_VIEW, REGION_SHAPES], value=REGION_WHOLE, label="region",
                            tooltip=tooltips["region"])
        self.shapes = layer_box(napari.layers.Shapes, "rectangle from", tooltips["shapes"])
        self.shapes.visible = False
        self.box.changed.connect(lambda v: setattr(self.shapes, "visible", v == REGION_SHAPES))

    @property
    def widgets(self) -> list[Any]:
        return [self.box, self.shapes]

    def region(self, layer: Any, viewer: Any, shape: tuple[int, int]) -> Region:
        """The Region of ``layer`` (2-D plane of ``shape``) chosen here, clipped to the layer."""
        return region_for(self.box.value, layer, viewer, shape, self.shapes.value)


class RegionControls(Container):
    """Pixel size of the input (and where it came from), and which part of it to render."""

    def __init__(self, viewer: Any = None) -> None:
        self._viewer = viewer
        self._mpp_box = spin("µm/px", 0.0, 0.0, 100.0, 0.0001, key="mpp")
        self._found: float | None = None  # the exact value found (the box shows it rounded)
        self._mpp_origin = wrapped(Label(value="", label=""))
        self._choice = RegionChoice(TOOLTIPS)
        self._region_box, self._shapes_layer = self._choice.box, self._choice.shapes
        super().__init__(widgets=[self._mpp_box, self._mpp_origin, *self._choice.widgets], labels=True)
        self.margins = (0, 0, 0, 0)
        self._setting = False
        self._followed: Any = None  # the layer whose pixel size is shown (followed when its scale changes)
        self._mpp_box.changed.connect(self._on_mpp_typed)

    @property
    def mpp(self) -> float | None:
        shown = float(self._mpp_box.value)
        if self._found is not None and abs(shown - self._found) < 0.5e-4:
            return self._found
        return shown or None

    @property
    def mpp_origin(self) -> str:
        return str(self._mpp_origin.value)

    def take_mpp_from(self, layer: Any) -> None:
        """Show ``layer``'s pixel size and where it came from (file, Pixel size, its scale, unknown)."""
        if layer is None or self._viewer is None:
            return
        found = layer_pixel_size(layer, self._viewer)
        self._found = found.mpp
        self._setting = True
        try:
            self._mpp_box.value = found.mpp or 0.0
        finally:
            self._setting = False
        self._mpp_origin.value = found.origin if found.known else MPP_UNKNOWN
        self._follow(layer)

    def _follow(self, layer: Any) -> None:
        """Show ``layer``'s pixel size again when its scale or units change (Pixel size, a script), unless one was
        typed here."""
        if layer is self._followed:
            return
        for old in (self._followed,) if self._followed is not None else ():
            old.events.scale.disconnect(self._on_layer_rescaled)
            old.events.units.disconnect(self._on_layer_rescaled)
        self._followed = layer
        layer.events.scale.connect(self._on_layer_rescaled)
        layer.events.units.connect(self._on_layer_rescaled)

    def _on_layer_rescaled(self, _: Any = None) -> None:
        if self.mpp_origin != "typed here" and self._followed is not None:
            self.take_mpp_from(self._followed)

    def _on_mpp_typed(self, value: float) -> None:
        if not self._setting:
            self._mpp_origin.value = "typed here" if value else MPP_UNKNOWN

    def region(self, layer: Any, viewer: Any, shape: tuple[int, int], *, limit: bool = True) -> Region:
        region = self._choice.region(layer, viewer, shape)
        if limit and region.height * region.width > WIDGET_REGION_LIMIT:
            raise GenerationError(TOO_LARGE.format(h=region.height, w=region.width))
        return region


class LongRunOffer(Container):
    """Shown when a CPU run would take long: how long, and "Run anyway" / "Use fast settings" (Cancel: the
    runner's button)."""

    def __init__(self) -> None:
        self._text = wrapped(Label(value=""))
        self._anyway = PushButton(text="Run anyway", tooltip=BUTTON_TOOLTIPS["run_anyway"])
        self._fast = PushButton(text="Use fast settings", tooltip=TOOLTIPS["fast"])
        buttons: Container[Any] = Container(widgets=[self._anyway, self._fast], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self._text, buttons], labels=False, visible=False)
        self.margins = (0, 0, 0, 0)
        self.asking = False
        self._on_anyway: Callable[[], None] = lambda: None
        self._on_fast: Callable[[], None] = lambda: None
        self._anyway.changed.connect(lambda: self._answer(self._on_anyway))
        self._fast.changed.connect(lambda: self._answer(self._on_fast))

    @property
    def text(self) -> str:
        return str(self._text.value)

    def ask(self, estimate: Any, on_anyway: Callable[[], None], on_fast: Callable[[], None]) -> None:
        self._text.value = LONG_RUN.format(estimate=estimate.text(), fast=estimate.fast_text())
        self._on_anyway, self._on_fast = on_anyway, on_fast
        self.visible = self.asking = True

    def close(self) -> None:
        self.visible = self.asking = False

    def _answer(self, action: Callable[[], None]) -> None:
        self.close()
        action()


def warn_unknown_mpp(layer: Any, mpp: float | None, model: ModelChoice) -> tuple[str, ...]:
    """Before a run: say so when the pixel size is unknown; returns the note prefix the run need not repeat."""
    from napari.utils.notifications import show_warning

    if mpp is not None:
        return ()
    show_warning(NO_MPP_BEFORE_RUN.format(name=layer.name, mpp=model.mpp()))
    return (f"'{layer.name}' has no pixel size",)


def start_from_dock(dock: Any, prepare: Callable[[], Any]) -> Any:
    """What a dock's Generate does: ``prepare()`` returns (layer, source, region) to run over, or a worker it has
    started itself (the Labels dock's background path); an input it refuses raises GenerationError or ValueError,
    said in one line. The dock has ``controls``, ``offer``, ``runner`` and ``_viewer``."""
    from napari.utils.notifications import show_error

    try:
        prepared = prepare()
        if not isinstance(prepared, tuple):
            return prepared
        layer, source, region = prepared
        job, model = dock.controls.job(source, region), dock.controls.model_choice()
    except (GenerationError, ValueError) as exc:
        show_error(str(exc))
        return None
    return start_region_job(dock._viewer, dock.runner, layer, job, model, offer=dock.offer, controls=dock.controls)


def start_region_job(viewer: Any, runner: JobRunner, layer: Any, job: RegionJob, model: ModelChoice, *,
                     offer: LongRunOffer | None = None, controls: GenerationControls | None = None) -> Any:
    """Add a transparent output layer exactly over ``job.region`` of ``layer`` and run ``job`` into it
    (``start_job``). An unknown pixel size is said first (``warn_unknown_mpp``, once: the run's own note is not
    repeated). The job reads only ``job.source`` (built before it starts); removing ``layer`` stops it."""
    region = job.region
    notes_shown = warn_unknown_mpp(layer, job.source.mpp if job.source is not None else None, model)
    scale, translate = place_over(layer, region.y, region.x)
    output = add_output_layer(
        viewer, (region.height, region.width), scale=scale, translate=translate,
        name=output_name(layer.name, job.settings.exact),
        provenance=running_record(job.watermark, source=layer.name), units=output_units(layer),
    )
    return start_job(viewer, runner, model, job, output, named=layer.name, watch=[layer], notes_shown=notes_shown,
                     offer=offer, controls=controls)


def start_job(viewer: Any, runner: JobRunner, model: ModelChoice, job: RegionJob, output: Any, *, named: str,
              watch: list[Any] | None = None, notes_shown: tuple[str, ...] = (), offer: LongRunOffer | None = None,
              controls: GenerationControls | None = None, on_done: Callable[[Any], None] | None = None) -> Any:
    """Run ``job`` (``generation.job.run_job``: the one run layer) in the background into ``output``.

    On a CPU a long run (timed on its first tile) waits for the user's answer in ``offer``: run anyway (the
    first tile is kept), or the fast settings, which ``controls`` then show and the output's name says. Tiles
    shown during the run are previews; the result is watermarked unless the job says otherwise. ``named``: what
    the output layer's name is made from.
    """
    from ..generation.estimate import RunDecision
    from ..generation.job import run_job
    from ..generation.progress import ProgressClock

    settings = job.settings
    decision = RunDecision()

    def long_run(estimate: Any) -> None:
        if offer is None:
            decision.go(settings)
            return

        def fast() -> None:
            chosen = estimate.fast or settings
            if controls is not None:
                controls.apply(chosen)
            output.name = output_name(named, chosen.exact)
            decision.go(chosen)  # the run starts again with them (``Restart``: the runner resets its counts)

        offer.ask(estimate, lambda: decision.go(settings), fast)

    options = JobOptions(watch=watch or [], clock=ProgressClock(settings.steps, images=job.images),
                         on_long_run=long_run, notes_shown=notes_shown,
                         on_finished=offer.close if offer is not None else None)
    return runner.start(lambda: run_job(model, job, decision=decision), viewer, output, on_done=on_done,
                        options=options)


def running_record(watermark: bool | str, **extra: Any) -> dict[str, Any]:
    """The output layer's record while a run fills it; with the watermark off it says so already, so that the
    tiles a cancelled run keeps are left unmarked (``JobRunner``; ``export.watermark.mark_kept_pixels``)."""
    from ..export.watermark import describe_no_watermark

    record: dict[str, Any] = {"synthetic": True, "status": "running", **extra}
    if watermark is not True:
        record["watermark"] = describe_no_watermark(str(watermark))
    return record


class SaveButton(PushButton):
    """Save… the widget's last output layer (OME-TIFF, OME-Zarr or PNG, with its provenance)."""

    def __init__(self, runner: JobRunner, viewer: Any) -> None:
        super().__init__(text="Save…", tooltip=TOOLTIPS["save"])
        self._runner, self._viewer = runner, viewer
        self.changed.connect(self.save)

    def layer(self) -> Any:
        """The layer Save… writes: the last output, else the selected layer when it is synthetic."""
        out = self._runner.output
        if out is not None and out in self._viewer.layers:
            return out
        active = self._viewer.layers.selection.active
        meta = active.metadata.get("napari_crafts") if active is not None else None
        return active if isinstance(meta, dict) and meta.get("synthetic") else None

    def save(self, path: str | None = None) -> list[str]:
        from magicgui.widgets import show_file_dialog
        from napari.utils.notifications import show_error, show_info

        from .._writer import default_file_name, save_layer, with_extension

        layer = self.layer()
        if layer is None:
            show_error("Nothing to save yet: generate synthetic H&E first (or select a synthetic layer).")
            return []
        if self._runner.running and layer is self._runner.output:
            show_error(f"'{layer.name}' is still being generated: save it when the run has finished or been "
                       "cancelled.")
            return []
        if not path:  # the dialog proposes a name with an extension; a name typed without one gets .ome.tif
            chosen = show_file_dialog(mode="w", caption=f"Save '{layer.name}' with its provenance",
                                      start_path=default_file_name(layer.name), filter="*.ome.tif *.ome.zarr *.png")
            path = with_extension(chosen) if chosen else None
        if not path:
            return []
        try:
            written = save_layer(path, layer)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return []
        show_info(f"Saved '{layer.name}' with its provenance (synthetic) to {', '.join(written)}.")
        return written
