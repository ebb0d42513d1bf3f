"""Control sources: where the control image of a tile comes from (nuclear labels, fluorescence channels).

A source is read window by window in its own level-0 pixels (never whole), so it can be a numpy array, a dask
array over a slide, or a zarr array; it must pickle (for dask.distributed workers) when its data does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .conditioning import ConditioningError, check_labels, labels_to_control


class ControlSource(Protocol):
    """Where control images come from (labels, fluorescence channels)."""

    mode: str
    name: str
    mpp: float | None
    shape: tuple[int, int]

    def control(self, y: int, x: int, size: int, out_size: int) -> np.ndarray: ...
    def is_empty(self, y: int, x: int, size: int) -> bool: ...
    def describe(self) -> dict[str, Any]: ...


def read_padded(data: Any, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Window [y, y+h) × [x, x+w) of a 2-D (or …×Y×X) array-like, zero where it falls outside."""
    H, W = data.shape[-2:]
    out = np.zeros((*data.shape[:-2], h, w), dtype=data.dtype)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y1 > y0 and x1 > x0:
        out[..., y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(data[..., y0:y1, x0:x1])
    return out


def resize(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Square resample of (S, S[, C]) to (size, size[, C]); area-averaged when shrinking, same dtype."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from skimage.transform import resize as sk_resize

    shrink = size < image.shape[0]
    out = sk_resize(image, (size, size) + image.shape[2:], order=0 if nearest else 1,
                    anti_aliasing=shrink and not nearest, preserve_range=True)
    return np.rint(out).astype(image.dtype) if image.dtype.kind in "iub" else out.astype(image.dtype)


@dataclass
class LabelsSource:
    """Nuclear labels (any 2-D integer array-like: numpy, dask, zarr) as a control source."""

    data: Any
    name: str = "labels"
    mpp: float | None = None
    mode: str = "labels"

    def __post_init__(self) -> None:
        if len(self.data.shape) != 2:
            raise ConditioningError(
                f"Labels layer '{self.name}' has shape {tuple(self.data.shape)}; pass the 2-D slice to generate."
            )
        check_labels(np.asarray(self.data[:1, :1]), self.name)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def control(self, y: int, x: int, size: int, out_size: int) -> np.ndarray:
        # One pixel of context on each side so boundaries between nuclei cut by the tile edge stay right.
        lab = read_padded(self.data, y - 1, x - 1, size + 2, size + 2)
        check_labels(lab, self.name)
        return resize(labels_to_control(lab)[1:-1, 1:-1], out_size, nearest=True)

    def is_empty(self, y: int, x: int, size: int) -> bool:
        return not read_padded(self.data, y, x, size, size).any()

    def describe(self) -> dict[str, Any]:
        return {"layer": self.name, "kind": "labels", "shape": list(self.shape), "mpp": self.mpp,
                "encoding": "conditioning.labels_to_control: nuclei 255, background 0, touching borders 0"}
