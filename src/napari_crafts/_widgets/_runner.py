"""One worker pattern for every generation widget: thread, progress, Cancel, live output layer, provenance.

The job is a Qt-free generator (``generation.region.generate_region``) started in napari's ``thread_worker``; layers
are touched only in the ``yielded``/``returned``/``errored`` handlers, which run on the main thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QEvent, QObject

from .._plural import plural


class JobRunner(Container):
    """Run/Cancel buttons, a progress bar and a status line; runs one job at a time."""

    def __init__(self, run_text: str = "Generate", run_tooltip: str | None = None) -> None:
        from ._text import BUTTON_TOOLTIPS

        self._run = PushButton(text=run_text, tooltip=run_tooltip or BUTTON_TOOLTIPS["generate"])
        self._cancel = PushButton(text="Cancel", enabled=False, tooltip=BUTTON_TOOLTIPS["cancel"])
        self._progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long message wraps instead of widening the dock
        super().__init__(widgets=[self._run, self._cancel, self._progress, self._status])
        self._cancel.changed.connect(self.cancel)
        self.worker: Any = None
        self.output: Any = None
        self._viewer: Any = None
        self._tiles = (0, 0)  # (tiles drawn by the model and shown, tiles the model draws)
        self._glass = 0  # glass tiles so far (no tissue: not drawn by the model, not shown until the end)
        #: Set by Cancel (and when a watched layer is removed): the networks stop at their next block.
        self.cancel_event = threading.Event()
        self._job = JobOptions()
        self._stopped = False  # after a stop, late events from the worker are ignored (no layer is touched)
        self._slots: dict[str, Callable[..., Any]] = {}  # the worker's signal → our handler
        self._window_watch: Any = None  # the event filter on the viewer's window (see _watch_window)
        self._activity: Any = None  # the job's napari.utils.progress (napari's activity panel), while it runs

    @property
    def run_button(self) -> PushButton:
        return self._run

    @property
    def running(self) -> bool:
        return self.worker is not None

    def status(self, text: str) -> None:
        self._status.value = text

    def start(self, job: Callable[[], Generator[Any, None, Any]], viewer: Any, output: Any,
              on_done: Callable[[Any], None] | None = None, options: JobOptions | None = None) -> Any:
        """Start ``job`` in a thread; ``output`` (in ``viewer``) receives tiles as they finish.

        ``options``: layers whose removal stops the job, the progress clock, the long-run handler, notes
        already shown (see :class:`JobOptions`).
        """
        from napari.qt.threading import create_worker

        from ..model.interrupt import cancel_scope

        # A plugin's viewer is napari's PublicOnlyProxy, and so are the layers it adds: keep the layer itself, so
        # that ``is`` finds it in the layer list's events (a removed output is then noticed).
        self.output, self._viewer = unwrap(output), viewer
        self._tiles, self._glass = (0, 0), 0
        self._job, self._stopped = options or JobOptions(), False
        self.cancel_event = event = threading.Event()
        viewer.layers.events.removed.connect(self._on_layer_removed)

        def run_job() -> Generator[Any, None, Any]:  # a generator function, so napari makes a GeneratorWorker
            with cancel_scope(event):
                return (yield from job())

        self._slots = {
            "yielded": self._on_yielded,
            "returned": lambda result: self._on_returned(result, on_done),
            "errored": self._on_errored,
            "aborted": self._on_aborted,
            "finished": self._on_finished,
        }
        worker = create_worker(run_job, _start_thread=False, _connect=self._slots)
        # Connecting "errored" here (not after creation) keeps superqt from re-raising in the event loop:
        # our handler tells the user in one line and keeps what was generated.
        self.worker = worker
        _RUNNING.add(worker)  # its signals live until its thread has ended, whatever happens to this dock
        worker.finished.connect(functools.partial(_RUNNING.discard, worker))
        self._watch_window()
        self._run.enabled, self._cancel.enabled = False, True
        self._progress.value = 0
        self._open_activity(self.output.name if self.output is not None else self._run.text.replace("&&", "&"))
        self.status("loading the model…")
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.status("cancelling…")
            self.cancel_event.set()
            self.worker.quit()

    def stop(self, why: str) -> None:
        """Stop the job now and leave every layer alone from here on (e.g. its source layer was removed)."""
        from napari.utils.notifications import show_warning

        if self.worker is None or self._stopped:
            return
        self._stopped = True
        self.cancel_event.set()
        self.worker.quit()
        done, total = self._tiles
        kept = bool(done) and self.output is not None  # None: the output layer itself was removed
        if kept:
            self._mark_kept(f"stopped after {done}/{total} tiles")
        show_warning(why + (f" {done}/{total} tiles kept." if kept else ""))
        self.status(why)

    def shutdown(self) -> None:
        """The viewer's window closed: stop the job at its next check (a step's next block, the next yield; the
        model's imports run in a daemon thread, ``generation.job.background_imports``), and let nothing from it
        reach this dock or the layers again (its handlers are disconnected), so napari's exit neither waits long
        nor aborts."""
        worker = self.worker
        if worker is None:
            return
        self._stopped = True
        self.cancel_event.set()
        worker.quit()
        self._close_activity()
        for name, slot in self._slots.items():
            with contextlib.suppress(TypeError, RuntimeError):  # already gone
                getattr(worker, name).disconnect(slot)

    def _watch_window(self) -> None:
        """Call :meth:`shutdown` when the viewer's main window closes (``_WindowClosed``)."""
        window = self.native
        while window.parentWidget() is not None:  # a floating dock is a window too: go up to the main window
            window = window.parentWidget()
        if window.isWindow() and self._window_watch is None:
            self._window_watch = _WindowClosed(window, self.shutdown)
            window.installEventFilter(self._window_watch)

    def _on_layer_removed(self, event: Any) -> None:
        layer = unwrap(event.value)
        if self.worker is None or self._stopped:
            return
        if layer is self.output:
            self.output = None
            self.stop(f"The output layer '{layer.name}' was removed: generation stopped.")
        elif any(layer is watched for watched in self._job.watch):
            self.stop(f"'{layer.name}' was removed while generating from it: generation stopped.")

    # -- progress: the dock's bar and napari's activity panel ----------------------------------------------------
    def _open_activity(self, what: str) -> None:
        """A ``napari.utils.progress`` for this job: napari's activity panel (bottom right) shows it while the dock
        may be hidden; it follows the dock's bar and closes when the job ends, however it ends."""
        from napari.utils import progress

        from ._text import ACTIVITY

        self._close_activity()
        self._activity = progress(total=0, desc=ACTIVITY.format(what=what))  # 0: busy until the first count

    def _show_progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` (tiles × steps, tiles, chunks) in the dock's bar and the activity panel.

        napari's activity bar runs the event loop when it is set (``QtLabeledProgressBar.setValue`` calls
        ``processEvents``), which delivers the worker's later signals (``returned``: "done") inside the handler
        that calls this: handlers call it last, so that nothing they write afterwards is older than those."""
        self._progress.max, self._progress.value = max(1, total), min(done, max(1, total))
        bar = self._activity
        if bar is None:
            return
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def _close_activity(self) -> None:
        bar, self._activity = self._activity, None
        if bar is not None:
            with contextlib.suppress(KeyError):  # already closed
                bar.close()

    # -- handlers (main thread) -------------------------------------------------------------------------------
    def _on_yielded(self, event: Any) -> None:
        from ..evaluation.plip_eval import EvalProgress
        from ..generation.estimate import RunEstimate
        from ..generation.events import BatchProgress, Progress, Restart, Stage, TileDone
        from ..generation.progress import ProgressClock

        if self._stopped:
            return
        if isinstance(event, EvalProgress):  # Compare: tiles scored, then embedded
            self.status(f"{event.done}/{event.total} " + ("tiles scored" if event.stage == "tiles"
                                                          else "tiles embedded (PLIP)"))
            self._show_progress(event.done, event.total)  # last: it may run the event loop (_show_progress)
        elif isinstance(event, Stage):
            self.status(event.text)
        elif isinstance(event, Restart):  # the fast settings were chosen after the first tile: start again
            self._tiles, self._glass = (0, 0), 0
            self._job.clock = ProgressClock(event.settings.steps, images=self._job.clock.images)
            if self.output is not None:
                self.output.data[...] = 0  # the exact tile(s) shown so far are superseded
                self.output.refresh()
            self.status("running with the fast settings…")
        elif isinstance(event, RunEstimate):
            if event.long and self._job.on_long_run is not None:
                self.status("waiting for your answer: run anyway, or use the fast settings?")
                self._job.on_long_run(event)
            else:
                self.status(f"estimated: {event.text()}")
        elif isinstance(event, BatchProgress):
            self.status(f"background job: {event.done}/{event.total} {event.what}")
            if event.what == "tiles":
                self._tiles = (event.done, event.total)
                self._show_progress(event.done, event.total)
        elif isinstance(event, Progress):
            self.status(self._job.clock.update(event))
            self._show_progress(event.tiles_done * event.steps + event.step, event.tiles * event.steps)
        elif isinstance(event, TileDone) and event.skipped:
            # Glass (no tissue) comes first and is not the model's work: it stays clear until the result fills
            # it, so a cancelled run keeps only drawn tiles, in the order the model drew them (no white blocks).
            self._glass += 1
            self.status(f"{event.tiles_done}/{event.tiles} tiles (glass: filled at the end)")
        elif isinstance(event, TileDone):
            y0, x0, y1, x1 = event.box
            window = (*event.plane, slice(y0, y1), slice(x0, x1))
            self.output.data[window + (slice(0, 3),)] = event.rgb
            self.output.data[window + (3,)] = 255  # painted: opaque (the rest stays transparent)
            self.output.refresh()
            self._tiles = (event.tiles_done - self._glass, event.tiles - self._glass)  # the model's tiles
            meta = self.output.metadata["napari_crafts"]
            meta["tiles_done"] = self._tiles[0]
            self.status(f"{event.tiles_done}/{event.tiles} tiles")

    def _on_returned(self, result: Any, on_done: Callable[[Any], None] | None) -> None:
        if result is None or self._stopped:
            return
        if self.output is None:  # a job without a layer (background file, Compare): on_done shows the result
            self._progress.value = self._progress.max
            self.status(f"done: {result}" if isinstance(result, (str, os.PathLike)) else "done")
            if on_done is not None:
                on_done(result)
            return
        self.output.data = result.rgb  # every pixel painted: plain RGB
        self.output.metadata["napari_crafts"] = result.provenance
        self.output.refresh()
        self._progress.value = self._progress.max
        glass = f", {result.tiles_skipped} glass" if result.tiles_skipped else ""  # glass: no tissue, no model
        self.status(f"done: {plural(result.tiles_generated, 'tile')} generated{glass}")
        from napari.utils.notifications import show_warning

        for note in result.notes:
            if not any(note.startswith(shown) for shown in self._job.notes_shown):
                show_warning(note)
        if on_done is not None:
            on_done(result)

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from ..model.interrupt import JobCancelled

        if isinstance(exc, JobCancelled) or self._stopped:  # cancelled inside a step, or stopped: not an error
            self._on_aborted()
            return
        done, total = self._tiles
        meta = self.output.metadata.get("napari_crafts", {}) if self.output is not None else {}
        meta["status"] = f"failed after {done}/{total} tiles: {exc}"
        if self.output is not None and done == 0 and self.output in self._viewer.layers:
            self._viewer.layers.remove(self.output)  # nothing generated: leave no empty layer behind
            self.output = None
        elif done:
            self._mark_kept()
        self.status(f"error: {exc}")
        show_error(str(exc))

    def _on_aborted(self) -> None:
        done, total = self._tiles
        if self._stopped:  # stop() has said why; the layers are left alone
            return
        if self.output is not None and done == 0 and self.output in self._viewer.layers:
            self._viewer.layers.remove(self.output)  # nothing painted: leave no empty layer behind
            self.output = None
        elif self.output is not None:
            self._mark_kept(f"cancelled after {done}/{total} tiles")
        self.status(f"cancelled: {done}/{total} tiles kept" if done else "cancelled: nothing generated")

    def _mark_kept(self, status: str | None = None) -> None:
        """The tiles a stopped run keeps are its output: they get the watermark once, the record its entry
        (``export.watermark.mark_kept_pixels``; left alone when the record says it is marked or turned off).
        ``status`` goes into the record first, as the record the payload stands for must be final."""
        from ..export.watermark import mark_kept_pixels

        layer = self.output
        if layer is None or self._viewer is None or layer not in self._viewer.layers:
            return
        meta = layer.metadata.setdefault("napari_crafts", {"synthetic": True})
        if status is not None:
            meta["status"] = status
        if isinstance(layer.data, np.ndarray) and mark_kept_pixels(layer.data, meta):
            layer.refresh()

    def _on_finished(self) -> None:
        self._close_activity()
        self.worker = None
        self._run.enabled, self._cancel.enabled = True, False
        if self._viewer is not None:
            self._viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if self._job.on_finished is not None:
            self._job.on_finished()


class _WindowClosed(QObject):
    """Event filter on a main window: calls ``on_close`` when the window hides itself (as closing does), not when
    the window system hides it (minimised; macOS's Hide)."""

    def __init__(self, window: Any, on_close: Callable[[], None]) -> None:
        super().__init__(window)
        self._on_close = on_close

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Hide and not event.spontaneous() and not obj.isMinimized():
            self._on_close()
        return False


#: Workers whose thread may still run: referenced here so that their signals (Qt objects) are never deleted
#: while their thread can still emit ("wrapped C/C++ object … has been deleted" aborts Python).
_RUNNING: set[Any] = set()


class JobOptions:
    """What a job adds to the runner: ``watch`` (layers whose removal stops it), ``clock`` (progress text),
    ``on_long_run`` (called with a long ``RunEstimate`` on a CPU), ``notes_shown`` (note prefixes already told),
    ``on_finished`` (called when the job has ended, however it ended)."""

    def __init__(self, *, watch: Sequence[Any] = (), clock: Any = None,
                 on_long_run: Callable[[Any], None] | None = None, notes_shown: Sequence[str] = (),
                 on_finished: Callable[[], None] | None = None) -> None:
        from ..generation.progress import ProgressClock

        self.watch = tuple(unwrap(layer) for layer in watch)
        self.clock = clock if clock is not None else ProgressClock()
        self.on_long_run = on_long_run
        self.notes_shown = tuple(notes_shown)
        self.on_finished = on_finished


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (a plugin's viewer hands out proxies), else ``obj``."""
    return getattr(obj, "__wrapped__", obj)


def add_output_layer(viewer: Any, shape_yx: tuple[int, int], *, name: str, scale: Any, translate: Any,
                     provenance: dict[str, Any], planes: tuple[int, ...] = (),
                     units: tuple[str, str] = ("pixel", "pixel")) -> Any:
    """An empty, transparent RGBA layer (``planes`` × Y × X) that will receive the synthetic H&E over the source.

    Tiles become opaque as they land, so the source stays visible around them; ``units`` are the source's.
    """
    lead = (1.0,) * len(planes)
    return viewer.add_image(
        np.zeros((*planes, *shape_yx, 4), dtype=np.uint8), rgb=True, name=name, scale=(*lead, *scale),
        translate=((0.0,) * len(planes) + tuple(translate)), metadata={"napari_crafts": provenance},
        units=("pixel",) * len(planes) + tuple(units),
    )
