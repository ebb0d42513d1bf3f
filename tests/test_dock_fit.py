"""Every napari-crafts dock fits a laptop screen (issue 20, item 11), measured in a real viewer window of
1366×768 under Xvfb: nothing clipped on the right (spin-box buttons, Browse…, the Compare legend, the Check
report), the action buttons reachable (Generate without scrolling while Advanced is folded), and one label
column per dock (no group indented more than another)."""

from __future__ import annotations

from typing import Any

import pytest

from _data import CMU1_SVS, DSB_IMAGE

pytest.importorskip("napari")

SCREEN = (1366, 768)
#: Each dock (napari.yaml) and the names of its action buttons (attribute paths on the dock widget).
DOCKS = {
    "Labels → H&E": ("runner._run", "runner._cancel"),
    "Fluorescence → H&E": ("runner._run", "runner._cancel"),
    "Prompt → H&E": ("runner._run", "runner._cancel"),
    "Compare": ("runner._run", "runner._cancel"),
    "Pixel size": ("_set",),
    "Check synthetic": ("_check",),
}
#: Docks whose Generate must show without scrolling in a 1366×768 window while Advanced is folded.
GENERATE_IN_VIEW = ("Labels → H&E", "Fluorescence → H&E", "Prompt → H&E", "Compare")


def _settle(qtbot: Any) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()
        qtbot.wait(10)


def _button(dock: Any, path: str) -> Any:
    obj = dock
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj.native


def _viewport(dock: Any) -> Any:
    from qtpy.QtWidgets import QScrollArea

    assert isinstance(dock.native, QScrollArea)
    return dock.native.viewport()


def clipped(dock: Any) -> list[str]:
    """The visible widgets of ``dock`` whose right edge lies beyond its viewport's (cut off on the right)."""
    from qtpy.QtWidgets import QLabel, QWidget

    viewport = _viewport(dock)
    inner = dock.native.widget()
    out = []
    for child in inner.findChildren(QWidget):
        if not child.isVisibleTo(inner) or child.width() <= 0:
            continue
        right = child.mapTo(viewport, child.rect().topRight()).x()
        if right >= viewport.width():
            text = child.text() if isinstance(child, QLabel) or hasattr(child, "text") else ""
            out.append(f"{type(child).__name__} {str(text)[:30]!r} ends at x={right} > {viewport.width() - 1}")
    return out


def in_view(dock: Any, widget: Any) -> bool:
    """``widget`` lies wholly inside the dock's visible area as it is scrolled now."""
    viewport = _viewport(dock)
    top_left = widget.mapTo(viewport, widget.rect().topLeft())
    bottom_right = widget.mapTo(viewport, widget.rect().bottomRight())
    return (
        top_left.x() >= 0
        and top_left.y() >= 0
        and bottom_right.x() < viewport.width()
        and bottom_right.y() < viewport.height()
    )


def reachable(dock: Any, widget: Any, qtbot: Any) -> bool:
    """``widget`` can be brought wholly into view by the dock's scroll bar."""
    dock.native.ensureWidgetVisible(widget, 0, 0)
    _settle(qtbot)
    seen = in_view(dock, widget)
    dock.native.verticalScrollBar().setValue(0)
    _settle(qtbot)
    return seen


def label_columns(dock: Any) -> set[tuple[int, int]]:
    """(x of the label, x of its field) of every visible labelled row of ``dock``, in the dock's coordinates:
    one pair when the labels of every group line up."""
    from magicgui.widgets import Container
    from magicgui.widgets._concrete import _LabeledWidget

    inner = dock.native.widget()
    found: set[tuple[int, int]] = set()

    def walk(container: Any) -> None:
        for w in container:
            row = w._labeled_widget() if hasattr(w, "_labeled_widget") else None
            if row is not None and str(w.label).strip() and w.native.isVisibleTo(inner):
                label = row._label_widget.native
                found.add(
                    (
                        label.mapTo(inner, label.rect().topLeft()).x(),
                        w.native.mapTo(inner, w.native.rect().topLeft()).x(),
                    )
                )
            if isinstance(w, Container) and not isinstance(w, _LabeledWidget):
                walk(w)

    walk(dock)
    return found


def measure(viewer: Any, qtbot: Any, *, advanced: bool, prepare: Any = None) -> dict[str, list[str]]:
    """Add each dock to ``viewer``'s 1366×768 window (Advanced open or folded) and list what does not fit."""
    problems: dict[str, list[str]] = {}
    for name, buttons in DOCKS.items():
        dock_widget, dock = viewer.window.add_plugin_dock_widget("napari-crafts", name)
        if getattr(dock, "controls", None) is not None:
            dock.controls.show_advanced(advanced)
        if prepare is not None:
            prepare(name, dock)
        _settle(qtbot)
        found = clipped(dock)
        for path in buttons:
            button = _button(dock, path)
            if not reachable(dock, button, qtbot):
                found.append(f"{path} cannot be scrolled into view")
        if name in GENERATE_IN_VIEW and not advanced and not in_view(dock, _button(dock, buttons[0])):
            found.append(f"{buttons[0]} is below the fold")
        columns = label_columns(dock)
        if len(columns) > 1:
            found.append(f"labels in {len(columns)} columns (label x, field x): {sorted(columns)}")
        if found:
            problems[name] = found
        viewer.window.remove_dock_widget(dock_widget)
    return problems


def report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{name}: {len(found)} problems, e.g. " + "; ".join(found[:4]) for name, found in problems.items())


@pytest.fixture
def laptop(make_napari_viewer: Any, qtbot: Any) -> Any:
    """A shown viewer whose window is 1366×768 (a hidden one is not laid out)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*SCREEN)
    _settle(qtbot)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == SCREEN
    return viewer


@pytest.mark.parametrize("advanced", [False, True], ids=["folded", "advanced"])
def test_every_dock_fits_1366x768_without_a_slide(laptop: Any, qtbot: Any, advanced: bool) -> None:
    problems = measure(laptop, qtbot, advanced=advanced)
    assert not problems, report(problems)


@pytest.mark.parametrize("advanced", [False, True], ids=["folded", "advanced"])
def test_every_dock_fits_1366x768_with_a_slide_and_results(
    laptop: Any, qtbot: Any, he: Any, noisy: Any, advanced: bool
) -> None:
    """CMU-1 and the DSB fluorescence image open with our reader (long layer names, a channel's role row), the
    Compare legend and the Check report shown."""
    (slide,) = laptop.open(CMU1_SVS, plugin="napari-crafts")
    laptop.open(DSB_IMAGE, plugin="napari-crafts")  # fluorescence: the Fluorescence dock adds a role row for it
    real = laptop.add_image(he[:128, :192], rgb=True, name="real H&E window of CMU-1-Small-Region", units=("µm", "µm"))
    laptop.add_image(
        noisy[:128, :192],
        rgb=True,
        name="synthetic H&E (CRAFTS) · nuclei of CMU-1-Small-Region",
        units=("µm", "µm"),
        metadata={"napari_crafts": {"synthetic": True}},
    )

    def prepare(name: str, dock: Any) -> None:
        if name == "Compare":
            dock._real_layer.value = real
            dock._tile_box.value = 64  # a few tiles: the legend is what is measured
            dock.compute()
            qtbot.waitUntil(lambda: not dock.runner.running and dock.evaluation is not None, timeout=60_000)
            assert "SSIM" in dock._results.value and "heat map" in dock._results.value
        elif name == "Fluorescence → H&E":
            assert [box.label for box in dock._roles] == ["stardist_dsb201…"]  # its name, cut to the column
        elif name == "Check synthetic":
            dock.check(slide)
            assert dock.result

    problems = measure(laptop, qtbot, advanced=advanced, prepare=prepare)
    assert not problems, report(problems)


@pytest.mark.parametrize("name", ["Labels → H&E", "Prompt → H&E"])
def test_the_long_run_offer_shows_every_line_of_its_times(laptop: Any, qtbot: Any, name: str) -> None:
    """Issue 20, item 10: the offer's first and last lines (the ones with the times) were cut off."""
    from napari_crafts.generation.estimate import RunEstimate, fast_settings
    from napari_crafts.generation.settings import GenerationSettings

    _, dock = laptop.window.add_plugin_dock_widget("napari-crafts", name)
    estimate = RunEstimate(1234.0, 9, 50, 512, "cpu", fast=fast_settings(GenerationSettings()), fast_seconds=40.0)
    dock.offer.ask(estimate, lambda: None, lambda: None)
    _settle(qtbot)
    label = dock.offer._text.native
    assert label.isVisible() and "about 21 min" in label.text() and "about 40 s" in label.text()
    needed = label.heightForWidth(label.width())
    assert label.height() >= needed, (label.height(), needed, label.width())  # every line of the text shows
    assert not clipped(dock), clipped(dock)
    viewport = _viewport(dock)
    bottom = label.mapTo(viewport, label.rect().bottomRight())
    assert bottom.x() <= viewport.width()  # and nothing of it past the right edge
