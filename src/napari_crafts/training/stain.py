"""Colour deconvolution of H&E (Ruifrok & Johnston, via ``skimage.color.rgb2hed``) and the simulated IF built on it.

Haematoxylin and eosin optical densities (OD) are what the classical nuclei segmentation thresholds
(:mod:`.nuclei`) and what ``--simulate-if`` turns into a nuclear and a cytoplasm channel when a slide has no
real immunofluorescence. Everything here works window by window on RGB uint8; nothing reads a slide whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..generation.sources import FluorescenceSource
from ..io.windows import WindowedArray

#: Channels of :class:`StainChannels`, in order.
STAIN_CHANNELS = ("haematoxylin OD", "eosin OD")
#: Roles given to the stain channels when they stand in for immunofluorescence.
SIMULATED_ROLES = {0: "nuclear", 1: "cytoplasm"}
#: What ``--simulate-if`` is, in the words every dataset card uses.
SIMULATED_IF_HOW = (
    "simulated from the H&E by colour deconvolution, not real immunofluorescence: nuclear channel = "
    "haematoxylin optical density, cytoplasm channel = eosin optical density (skimage.color.rgb2hed, "
    "Ruifrok & Johnston stain vectors), each stretched between percentile limits computed once over the slide"
)

#: A window reader: (y, x, height, width) in level-0 px → RGB uint8 (height, width, 3), zero outside the image.
ReadRGB = Callable[[int, int, int, int], np.ndarray]


def stain_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB optical densities (H, W, 3) float32 of an RGB uint8 image (≥ 0)."""
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"Colour deconvolution needs an RGB image (H, W, 3), got shape {rgb.shape}.")
    return rgb2hed(rgb[..., :3]).astype(np.float32)


def haematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (H, W) float32: high in nuclei, ~0 on glass."""
    return stain_od(rgb)[..., 0]


def eosin_od(rgb: np.ndarray) -> np.ndarray:
    """Eosin optical density (H, W) float32: cytoplasm, collagen, red cells."""
    return stain_od(rgb)[..., 1]


class StainChannels(WindowedArray):
    """A lazy (2, Y, X) float32 array of an H&E slide's haematoxylin and eosin OD, computed per window read.

    ``read_rgb`` reads the slide (e.g. ``lambda y, x, h, w: slide.read(0, y, x, h, w)``); the last window is
    kept, so the two channels of one window cost one deconvolution.
    """

    def __init__(self, read_rgb: ReadRGB, shape: tuple[int, int], path: str = "") -> None:
        self.read_rgb, self.path = read_rgb, path
        self.shape, self.dtype = (2, int(shape[0]), int(shape[1])), np.dtype(np.float32)
        self._last: tuple[tuple[int, int, int, int], np.ndarray] | None = None

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        key = (y, x, height, width)
        if self._last is None or self._last[0] != key:
            od = stain_od(self.read_rgb(y, x, height, width))
            self._last = key, np.ascontiguousarray(np.moveaxis(od[..., :2], -1, 0))
        return self._last[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}


def simulated_if_source(read_rgb: ReadRGB, shape: tuple[int, int], *, mpp: float | None, name: str = "H&E",
                        path: str = "") -> FluorescenceSource:
    """A :class:`FluorescenceSource` whose nuclear/cytoplasm channels are the H&E's haematoxylin/eosin OD.

    Its normalisation limits are computed once over the whole slide (by ``FluorescenceSource``, as for real
    IF), so every tile shares one stretch, exactly as at inference.
    """
    data = StainChannels(read_rgb, shape, path)
    return FluorescenceSource(
        data, roles=dict(SIMULATED_ROLES), name=f"{name} (simulated IF)", mpp=mpp,
        channel_names=[f"{c} (simulated {SIMULATED_ROLES[i]})" for i, c in enumerate(STAIN_CHANNELS)],
    )
