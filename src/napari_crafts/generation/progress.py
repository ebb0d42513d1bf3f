"""What a running generation says about itself: "tile 2/9 · step 3/50 · about 4 min left" (Qt-free).

``ProgressClock`` turns the ``Progress`` and ``TileDone`` events of ``generate_region`` (or of several images in
a stack) into a line of text and a remaining-time estimate measured from the steps so far. Steps are counted
as the user asked for them: schedulers such as PNDM make one more network pass than steps (3 passes for 2
steps), and "step 3/2" would read as a bug.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .events import Stage  # noqa: F401  (this module's API since 0.2)


def format_duration(seconds: float) -> str:
    """'40 s', '14 min', '2 h 10 min' (rounded up, so a short wait is never promised)."""
    if not math.isfinite(seconds):
        return "unknown"
    s = max(1, math.ceil(seconds))
    if s < 60:
        return f"{s} s"
    minutes = math.ceil(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def shown_step(step: int, passes: int, requested: int | None) -> int:
    """Step ``step`` of ``passes`` network passes, as a step of the ``requested`` steps (1 … requested)."""
    if not requested or requested == passes:
        return step
    return max(1, min(requested, round(step * requested / passes)))


@dataclass
class ProgressClock:
    """Progress text and remaining time of one job; ``images`` > 1 for a stack of prompt images."""

    steps: int | None = None
    images: int = 1
    started: float = field(default_factory=time.perf_counter)
    _first: tuple[float, int] | None = None  # (time, passes done) at the first step event
    _last: tuple[float, int] | None = None

    def passes_done(self, event: Any) -> int:
        return int(event.tiles_done) * int(event.steps) + int(event.step)

    def update(self, event: Any, now: float | None = None) -> str:
        """The status line after a ``Progress`` event."""
        now = time.perf_counter() if now is None else now
        done = self.passes_done(event)
        if self._first is None:
            self._first = (now, done)
        self._last = (now, done)
        where = self.where(event.tiles_done, event.tiles)
        text = f"{where} · step {shown_step(event.step, event.steps, self.steps)}/{self.steps or event.steps}"
        left = self.seconds_left(event)
        return text + (f" · about {format_duration(left)} left" if left is not None else "")

    def where(self, tiles_done: int, tiles: int) -> str:
        """'tile 2/9', or for a stack 'image 1/2' (one tile per image) or 'image 1/2, tile 3/4'."""
        current = min(tiles_done + 1, tiles)
        if self.images <= 1:
            return f"tile {current}/{tiles}"
        per_image = max(1, tiles // self.images)
        image, tile = divmod(current - 1, per_image)
        text = f"image {image + 1}/{self.images}"
        return text if per_image == 1 else f"{text}, tile {tile + 1}/{per_image}"

    def seconds_per_pass(self) -> float | None:
        """Measured seconds per network pass (from the first step event seen), None before two events."""
        if self._first is None or self._last is None or self._last[1] <= self._first[1]:
            return None
        return (self._last[0] - self._first[0]) / (self._last[1] - self._first[1])

    def seconds_left(self, event: Any) -> float | None:
        rate = self.seconds_per_pass()
        if rate is None:
            return None
        total = int(event.tiles) * int(event.steps)
        return rate * max(0, total - self.passes_done(event))
