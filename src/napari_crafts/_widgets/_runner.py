"""One worker pattern for every generation widget: thread, progress, Cancel, live output layer, provenance.

The job is a Qt-free generator (``generation.region.generate_region``) started in napari's ``thread_worker``; layers
are touched only in the ``yielded``/``returned``/``errored`` handlers, which run on the main thread.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton


class JobRunner(Container):
    """Run/Cancel buttons, a progress bar and a status line; runs one job at a time."""

    def __init__(self, run_text: str = "Generate") -> None:
        self._run = PushButton(text=run_text)
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self._status = Label(value="")
        super().__init__(widgets=[self._run, self._cancel, self._progress, self._status])
        self._cancel.changed.connect(self.cancel)
        self.worker: Any = None
        self.output: Any = None
        self._viewer: Any = None
        self._tiles = (0, 0)

    @property
    def run_button(self) -> PushButton:
        return self._run

    @property
    def running(self) -> bool:
        return self.worker is not None

    def status(self, text: str) -> None:
        self._status.value = text

    def start(self, job: Callable[[], Generator[Any, None, Any]], viewer: Any, output: Any,
              on_done: Callable[[Any], None] | None = None) -> Any:
        """Start ``job`` in a thread; ``output`` (in ``viewer``) receives tiles as they finish."""
        from napari.qt.threading import create_worker

        self.output, self._viewer = output, viewer
        self._tiles = (0, 0)
        def run_job() -> Generator[Any, None, Any]:  # a generator function, so napari makes a GeneratorWorker
            return (yield from job())

        worker = create_worker(run_job, _start_thread=False, _connect={
            "yielded": self._on_yielded,
            "returned": lambda result: self._on_returned(result, on_done),
            "errored": self._on_errored,
            "aborted": self._on_aborted,
            "finished": self._on_finished,
        })
        # Connecting "errored" here (not after creation) keeps superqt from re-raising in the event loop:
        # our handler tells the user in one line and keeps what was generated.
        self.worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        self._progress.value = 0
        self.status("loading the model…")
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.status("cancelling (stops after the current step)…")
            self.worker.quit()

    # -- handlers (main thread) -------------------------------------------------------------------------------
    def _on_yielded(self, event: Any) -> None:
        from ..generation.region import (  # light: batch (dask) stays out of the UI thread
            BatchProgress,
            Progress,
            TileDone,
        )

        if isinstance(event, BatchProgress):
            if event.what == "tiles":
                self._progress.max, self._progress.value = max(1, event.total), event.done
                self._tiles = (event.done, event.total)
            self.status(f"background job: {event.done}/{event.total} {event.what}")
        elif isinstance(event, Progress):
            self._progress.max = max(1, event.tiles * event.steps)
            self._progress.value = event.tiles_done * event.steps + event.step
            self.status(f"tile {event.tiles_done + 1}/{event.tiles}, step {event.step}/{event.steps}")
        elif isinstance(event, TileDone):
            y0, x0, y1, x1 = event.box
            window = (*event.plane, slice(y0, y1), slice(x0, x1))
            self.output.data[window] = event.rgb
            self.output.refresh()
            self._tiles = (event.tiles_done, event.tiles)
            meta = self.output.metadata["napari_crafts"]
            meta["tiles_done"] = event.tiles_done
            self.status(f"{event.tiles_done}/{event.tiles} tiles" + (" (empty: filled)" if event.skipped else ""))

    def _on_returned(self, result: Any, on_done: Callable[[Any], None] | None) -> None:
        if result is None:
            return
        if self.output is None:  # a background job: its result is a file that on_done opens
            self._progress.value = self._progress.max
            self.status(f"done: {result}")
            if on_done is not None:
                on_done(result)
            return
        self.output.data[...] = result.rgb
        self.output.metadata["napari_crafts"] = result.provenance
        self.output.refresh()
        self._progress.value = self._progress.max
        self.status(f"done: {result.tiles_generated} tiles generated, {result.tiles_skipped} empty")
        from napari.utils.notifications import show_warning

        for note in result.notes:
            show_warning(note)
        if on_done is not None:
            on_done(result)

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        done, total = self._tiles
        meta = self.output.metadata.get("napari_crafts", {}) if self.output is not None else {}
        meta["status"] = f"failed after {done}/{total} tiles: {exc}"
        if self.output is not None and done == 0 and self.output in self._viewer.layers:
            self._viewer.layers.remove(self.output)  # nothing generated: leave no empty layer behind
            self.output = None
        self.status(f"error: {exc}")
        show_error(str(exc))

    def _on_aborted(self) -> None:
        done, total = self._tiles
        if self.output is not None:
            self.output.metadata["napari_crafts"]["status"] = f"cancelled after {done}/{total} tiles"
        self.status(f"cancelled: {done}/{total} tiles kept")

    def _on_finished(self) -> None:
        self.worker = None
        self._run.enabled, self._cancel.enabled = True, False


def add_output_layer(viewer: Any, shape_yx: tuple[int, int], *, name: str, scale: Any, translate: Any,
                     provenance: dict[str, Any], planes: tuple[int, ...] = ()) -> Any:
    """An empty RGB layer (``planes`` × Y × X) that will receive the synthetic H&E, placed over the source."""
    lead = (1.0,) * len(planes)
    return viewer.add_image(
        np.zeros((*planes, *shape_yx, 3), dtype=np.uint8), rgb=True, name=name, scale=(*lead, *scale),
        translate=((0.0,) * len(planes) + tuple(translate)), metadata={"napari_crafts": provenance},
    )
