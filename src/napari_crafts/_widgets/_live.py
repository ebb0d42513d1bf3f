"""Live paint in the Labels → H&E dock: edit the labels, and the synthetic H&E under the brush redraws.

Ticking **live** generates the chosen region once with the live settings (the dock's runner: progress, Cancel), and
from then on every edit of the labels layer (a brush stroke, fill, polygon, erase, undo/redo, a script assigning
into ``layer.data`` and calling ``refresh()``, ``layer.data = …``) marks what changed; 250 ms after the last edit
the tiles under it are generated again in a worker (``generation.live.regenerate``) and written into the output
layer in place, on the main thread. A newer edit stops a running regeneration within a step and is merged into the
next one. **Refine** turns live off and runs the dock's exact settings over the layer (a normal run).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton
from qtpy.QtCore import QTimer

from ..generation.region import GenerationError, Progress
from ._runner import JobOptions, _WindowClosed, add_output_layer, unwrap
from ._text import BUTTON_TOOLTIPS, LIVE_TEXT, TOOLTIPS, output_name

#: ms without edits before the edited tiles are generated again.
DEBOUNCE_MS = 250
Box = tuple[int, int, int, int]

#: Live workers whose thread may still run (their Qt signals must outlive the dock; see _runner._RUNNING).
_LIVE_WORKERS: set[Any] = set()


def union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def changed_box(before: np.ndarray, after: np.ndarray) -> Box | None:
    """The box (y0, x0, y1, x1) of the pixels that differ, None when none does."""
    rows = np.flatnonzero((before != after).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((before[rows[0] : rows[-1] + 1] != after[rows[0] : rows[-1] + 1]).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def atoms_box(atoms: Any) -> Box | None:
    """The box of a Labels ``paint`` event's history atoms (a masked paint's slices, or (indices, old, new))."""
    box: Box | None = None
    for atom in atoms or ():
        key = getattr(atom, "slice_key", None)
        if key is not None and len(key) >= 2:
            ys, xs = key[-2], key[-1]
            box = union(box, (int(ys.start or 0), int(xs.start or 0), int(ys.stop), int(xs.stop)))
        elif isinstance(atom, tuple) and atom and len(atom[0]) >= 2 and np.size(atom[0][-1]):
            ys, xs = np.asarray(atom[0][-2]), np.asarray(atom[0][-1])
            box = union(box, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
    return box


class LivePaint(Container):
    """The dock's "live" checkbox, what live runs with, and Refine; follows one labels layer while ticked."""

    def __init__(self, dock: Any) -> None:
        self._dock = dock
        self._on = CheckBox(value=False, text="live", tooltip=TOOLTIPS["live"])
        self._refine = PushButton(text="Refine (exact)", tooltip=BUTTON_TOOLTIPS["refine"])
        self._text = Label(value=LIVE_TEXT["off"])
        self._text.native.setWordWrap(True)
        row: Container[Any] = Container(widgets=[self._on, self._refine], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        super().__init__(widgets=[row, self._text], labels=False)
        self.margins = (0, 0, 0, 0)
        self.live: Any = None  # the LiveRegion, once the first run has finished
        self.layer: Any = None  # the labels layer followed
        self.output: Any = None
        self.updates = 0  # regenerations written into the output (for scripts and tests)
        self._snapshot: np.ndarray | None = None  # the labels as last regenerated (numpy layers)
        self._boxes: Box | None = None  # edited boxes from paint events (layers that are not numpy)
        self._pending: Box | None = None  # boxes whose regeneration was stopped before it finished (redo now)
        self._deferred: Box | None = None  # boxes whose regeneration failed (redone with the next edit)
        self._worker: Any = None
        self._running: Box | None = None
        self._cancel = threading.Event()
        self._started_at = 0.0
        self._window_watch: Any = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.flush)
        self._on.changed.connect(self._toggled)
        self._refine.changed.connect(self.refine)
        dock.runner.run_button.changed.connect(self._normal_run_started)
        dock._viewer.layers.events.removed.connect(self._on_removed)

    @property
    def on(self) -> bool:
        return bool(self._on.value)

    @on.setter
    def on(self, value: bool) -> None:
        self._on.value = value

    @property
    def busy(self) -> bool:
        """Whether live work is going on or due: the first run, a regeneration, or edits waiting for the pause."""
        return self._worker is not None or self._timer.isActive() or (self.on and self.live is None)

    def say(self, text: str) -> None:
        self._text.value = text

    # -- on / off -----------------------------------------------------------------------------------------------
    def _toggled(self, on: bool) -> None:
        if on and self.layer is None:
            self.start()
        elif not on and self.layer is not None:
            self.stop(LIVE_TEXT["off"])

    def start(self) -> Any:
        """Check the input, add the output layer and run the first live generation; None when refused (said)."""
        from napari.utils.notifications import show_error

        from ..generation.live import run_live
        from ..generation.progress import ProgressClock
        from ..generation.sources import LabelsSource
        from ._controls import warn_unknown_mpp
        from ._layers import output_units, place_over

        dock, viewer = self._dock, self._dock._viewer
        try:
            if dock.runner.running:
                raise GenerationError(LIVE_TEXT["busy"])
            layer = unwrap(dock._labels_layer.value)
            if layer is None:
                raise GenerationError(LIVE_TEXT["no_labels"])
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
            if data.ndim != 2:
                raise GenerationError(LIVE_TEXT["not_2d"].format(name=layer.name, shape=tuple(data.shape)))
            if dock.where.mpp_origin != "typed here":
                dock.where.take_mpp_from(layer)
            region = dock.where.region(layer, viewer, data.shape)
            source = LabelsSource(
                data,
                name=layer.name,
                mpp=dock.where.mpp,  # the layer itself: live follows it
                tissue=dock.tissue.spec(layer, data.shape),
            )
            controls = dock.controls
            settings, model, watermark = controls.settings(), controls.model_choice(), controls.watermark()
        except (GenerationError, ValueError) as exc:
            show_error(str(exc))
            self.say(f"live is off: {exc}")
            self._on.value = False
            return None
        notes_shown = warn_unknown_mpp(layer, source.mpp, model)
        scale, translate = place_over(layer, region.y, region.x)
        self.layer, self.live, self._pending, self._boxes = layer, None, None, None
        self._snapshot = np.array(data, copy=True) if isinstance(data, np.ndarray) else None
        self.output = add_output_layer(
            viewer,
            (region.height, region.width),
            scale=scale,
            translate=translate,
            name=output_name(layer.name, exact=False) + " · live",
            provenance={"synthetic": True, "status": "running", "source": layer.name},
            units=output_units(layer),
        )
        for event in (layer.events.paint, layer.events.labels_update, layer.events.set_data, layer.events.data):
            event.connect(self._on_edit)
        self._watch_window()
        self.say(LIVE_TEXT["starting"])
        options = JobOptions(
            watch=[layer], clock=ProgressClock(10), notes_shown=notes_shown, on_finished=self._first_run_ended
        )
        return dock.runner.start(
            lambda: run_live(model, source, region, settings, watermark=watermark),
            viewer,
            self.output,
            on_done=self._first_run_done,
            options=options,
        )

    def _watch_window(self) -> None:
        """Live off when the viewer's main window closes (a regeneration stops within a step: exit does not wait)."""
        window = self.native
        while window.parentWidget() is not None:
            window = window.parentWidget()
        if window.isWindow() and self._window_watch is None:
            self._window_watch = _WindowClosed(window, lambda: self.stop(LIVE_TEXT["off"], first_run=False))
            window.installEventFilter(self._window_watch)

    def _first_run_done(self, live: Any) -> None:
        self.live = live
        self.say(LIVE_TEXT["on"].format(what=live.settings.approximation))
        if self._boxes is not None or self._snapshot is not None:
            self.flush()  # edits made during the first run

    def _first_run_ended(self) -> None:
        if self.live is None and self.layer is not None:  # cancelled, failed or stopped: live is off
            self._disconnect()
            self._on.value = False
            self.say(LIVE_TEXT["off"])

    def stop(self, why: str, *, first_run: bool = True) -> None:
        """Live off: stop a regeneration within a step (and the first run, unless ``first_run`` is False: the
        runner stops it itself when its layers go), follow the layer no more; the output layer stays."""
        self._timer.stop()
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
        if first_run and self.live is None and self._dock.runner.running and self.layer is not None:
            self._dock.runner.cancel()
        self._disconnect()
        self.live = None
        self.say(why)
        if self.on:
            self._on.value = False

    def _disconnect(self) -> None:
        layer, self.layer = self.layer, None
        if layer is not None:
            for event in (layer.events.paint, layer.events.labels_update, layer.events.set_data, layer.events.data):
                event.disconnect(self._on_edit)

    def _on_removed(self, event: Any) -> None:
        layer = unwrap(event.value)
        if self.layer is None or (layer is not self.layer and layer is not self.output):
            return
        from napari.utils.notifications import show_warning

        text = LIVE_TEXT["removed"].format(name=layer.name)
        if layer is self.output:
            self.output = None
        if self.live is not None:  # during the first run the runner, which watches both layers, says it
            show_warning(text)
        self.stop(text, first_run=False)

    def _normal_run_started(self, *_: Any) -> None:
        if self.layer is not None and self.live is not None:
            self.stop(LIVE_TEXT["normal_run"])

    def refine(self) -> Any:
        """Live off, then the dock's exact settings over the layer (a normal run into a new layer)."""
        from napari.utils.notifications import show_error

        if self._dock.runner.running:
            show_error(LIVE_TEXT["busy_refine"])
            return None
        if self.layer is not None:
            self.stop(LIVE_TEXT["refined"])
        controls = self._dock.controls
        if not controls.settings().exact:
            controls.back_to_exact()
        return self._dock.generate()

    # -- edits ----------------------------------------------------------------------------------------------------
    def _on_edit(self, event: Any) -> None:
        if self.layer is None:
            return
        if getattr(event, "type", "") == "paint" and self._snapshot is None:
            self._boxes = union(self._boxes, atoms_box(getattr(event, "value", None)))
        self._timer.start()  # (re)start the pause

    def edited_box(self, data: Any) -> Box | None:
        """What changed in ``data`` since the last look (the snapshot is brought up to date there). Runs in the
        regeneration's worker (a diff of the whole layer is no work for the event loop); one worker at a time."""
        snapshot = self._snapshot
        if snapshot is None or not isinstance(data, np.ndarray):
            return None
        found = changed_box(snapshot, data)
        if found is not None:
            y0, x0, y1, x1 = found
            snapshot[y0:y1, x0:x1] = data[y0:y1, x0:x1]
        return found

    def flush(self) -> None:
        """The pause after the edits has come: generate again what they changed (or stop the running one first)."""
        from napari.utils.notifications import show_warning

        layer = self.layer
        if layer is None or self.live is None:
            return
        if self._worker is not None:  # superseded: it stops within a step, and its box is merged into the next
            self._cancel.set()
            self._worker.quit()
            return
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        if tuple(data.shape) != tuple(self.live.source.shape):
            text = LIVE_TEXT["reshaped"].format(name=layer.name, shape=tuple(data.shape))
            show_warning(text)
            self.stop(text)
            return
        known = union(union(self._boxes, self._pending), self._deferred)  # paint events' boxes, unfinished ones
        self._boxes = self._pending = self._deferred = None
        self._start_worker(data, known)

    def _start_worker(self, data: Any, known: Box | None) -> None:
        from napari.qt.threading import create_worker

        from ..generation.live import regenerate
        from ..model.interrupt import cancel_scope

        live = self.live
        self._cancel = event = threading.Event()
        self._running, self._started_at = None, time.perf_counter()

        def work() -> Any:
            with cancel_scope(event):
                box = union(known, self.edited_box(data))
                self._running = box  # until it is committed: redone by the next regeneration if stopped
                if box is None:
                    return None
                return (yield from regenerate(live, data, box))

        worker = create_worker(
            work,
            _start_thread=False,
            _connect={
                "yielded": self._on_progress,
                "returned": self._on_updated,
                "errored": self._on_failed,
                "finished": self._on_finished,
            },
        )
        self._worker = worker
        _LIVE_WORKERS.add(worker)
        worker.finished.connect(lambda: _LIVE_WORKERS.discard(worker))
        worker.start()

    # -- worker handlers (main thread) ----------------------------------------------------------------------------
    def _on_progress(self, event: Any) -> None:
        if isinstance(event, Progress) and self.layer is not None:
            self.say(
                LIVE_TEXT["working"].format(
                    done=event.tiles_done, tiles=event.tiles, step=event.step, steps=event.steps
                )
            )

    def _on_updated(self, update: Any) -> None:
        self._running = None
        output = self.output
        if update is None or output is None or self.layer is None:  # nothing changed, or live is off
            return
        y0, x0, y1, x1 = update.box
        if y1 > y0 and x1 > x0:
            output.data[y0:y1, x0:x1, :3] = update.rgb  # the whole box at once: never a half-written tile
            output.metadata["napari_crafts"] = update.provenance
            output.refresh()
            self.updates += 1
        seconds = time.perf_counter() - self._started_at
        self.say(
            LIVE_TEXT["updated"].format(
                tiles=update.tiles, seconds=seconds, what=self.live.settings.approximation if self.live else ""
            )
        )

    def _on_failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_warning

        from ..model.interrupt import JobCancelled

        if isinstance(exc, JobCancelled) or self.layer is None:
            return
        self._deferred, self._running = union(self._deferred, self._running), None
        self.say(f"live: {exc}")
        show_warning(str(exc))  # e.g. every nucleus erased: the layer keeps the last pixels

    def _on_finished(self) -> None:
        self._worker = None
        if self._running is not None:  # stopped or failed before it committed: its edits are still to do
            self._pending, self._running = union(self._pending, self._running), None
        if self._cancel.is_set():  # superseded by newer edits (stopped: flush does nothing)
            self.flush()
