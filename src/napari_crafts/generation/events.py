"""What a running generation says about itself: the one small set of events every job yields (Qt-free).

The run layer (``generation.job.run_job``) and the whole-slide path yield these; ``_widgets._runner`` maps them to
the dock and its layer in one place, the CLI prints them. ``RunEstimate`` (``generation.estimate``) joins them when a
CPU run is long.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .settings import GenerationSettings


@dataclass(frozen=True)
class Stage:
    """What a job is doing between steps ("model loaded on cpu", "estimating how long this takes…")."""

    text: str


@dataclass(frozen=True)
class Progress:
    """A network pass done: ``step`` of ``steps`` of the tile(s) being drawn, ``tiles_done`` of ``tiles`` finished."""

    tiles_done: int
    tiles: int
    step: int
    steps: int


@dataclass(frozen=True)
class TileDone:
    """A tile finished: ``box`` (y0, x0, y1, x1) in region pixels now reads ``rgb`` (blended so far)."""

    tiles_done: int
    tiles: int
    box: tuple[int, int, int, int]
    rgb: np.ndarray
    skipped: bool = False
    plane: tuple[int, ...] = ()  # leading index in a stacked output (several images), else ()


@dataclass(frozen=True)
class BatchProgress:
    """``done`` of ``total`` tiles (or chunks) of a whole-slide run (``wsi.job.generate_slide``) are finished."""

    what: str
    done: int
    total: int


@dataclass(frozen=True)
class Restart:
    """The run starts again with ``settings`` (the user chose the fast ones after the first tile): what was shown
    so far is superseded."""

    settings: GenerationSettings
