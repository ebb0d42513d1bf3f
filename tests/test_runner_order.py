"""JobRunner's status line ends on what the job ended with: a progress event handled late never writes over "done"
(issue 20). napari's activity-panel bar runs the event loop when it is set (QtLabeledProgressBar.setValue calls
processEvents), so a handler that sets it delivers the worker's later signals inside itself."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("napari")


def test_done_stays_when_every_event_is_queued_before_the_first_is_handled(make_napari_viewer: Any, qtbot: Any) -> None:
    from qtpy.QtCore import QThreadPool

    from napari_crafts._widgets._runner import JobRunner
    from napari_crafts.evaluation.plip_eval import EvalProgress

    viewer = make_napari_viewer()
    runner = JobRunner("Compute")
    viewer.window.add_dock_widget(runner, name="runner")

    def job() -> Any:
        for done in range(1, 6):
            yield EvalProgress("tiles", done, 5)
        return "scored"

    runner.start(job, viewer, None)
    assert QThreadPool.globalInstance().waitForDone(60_000)  # the worker has emitted everything, nothing handled
    qtbot.waitUntil(lambda: not runner.running, timeout=60_000)
    qtbot.wait(50)  # anything still queued
    assert runner._status.value == "done: scored"
    assert runner._progress.value == runner._progress.max == 5
