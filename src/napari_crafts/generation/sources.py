"""Control sources: where the control image of a tile comes from (nuclear labels, fluorescence channels).

A source is read window by window in its own level-0 pixels (never whole), so it can be a numpy array, a dask
array over a slide, or a zarr array; it must pickle (for dask.distributed workers) when its data does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..io.windows import WindowedArray, read_padded  # noqa: F401  (WindowedArray: re-exported)
from .conditioning import (
    FLUORESCENCE_ENCODING,
    FLUORESCENCE_RGB_V1,
    LABELS_ENCODING_TEXT,
    NUCLEI_V1,
    PERCENTILES,
    ConditioningError,
    channel_limits,
    check_labels,
    check_roles,
    fluorescence_to_control,
    guess_roles,
    labels_to_control,
    normalize_percentile,
)
from .tissue import check_spec, describe_spec


class ControlSource(Protocol):
    """Where control images come from (labels, fluorescence channels), and where their tissue is."""

    mode: str
    name: str
    mpp: float | None
    tissue: Any  # "auto", "all", a mask file, a mask array or a TissueMask (see generation.tissue)

    @property
    def shape(self) -> tuple[int, int]: ...

    def control(self, y: int, x: int, size: int, out_size: int, tissue: np.ndarray | None = None) -> np.ndarray: ...
    def is_empty(self, y: int, x: int, size: int) -> bool: ...
    def describe(self) -> dict[str, Any]: ...


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
    """Nuclear labels (any 2-D integer array-like: numpy, dask, zarr) as a control source.

    ``tissue``: where the tissue is — "auto" (from the nuclei), "all", a mask file or array (generation.tissue).
    """

    data: Any
    name: str = "labels"
    mpp: float | None = None
    mode: str = "labels"
    tissue: Any = "auto"

    def __post_init__(self) -> None:
        check_spec(self.tissue)
        if len(self.data.shape) != 2:
            raise ConditioningError(
                f"Labels layer '{self.name}' has shape {tuple(self.data.shape)}; pass the 2-D slice to generate."
            )
        check_labels(np.asarray(self.data[:1, :1]), self.name)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def control(self, y: int, x: int, size: int, out_size: int, tissue: np.ndarray | None = None) -> np.ndarray:
        """The control image of the window (``size``² source px → ``out_size``² model px).

        ``tissue`` ((size, size) bool, True = tissue) draws ``NUCLEI_TISSUE_V1``; without it ``NUCLEI_V1``.
        """
        # One pixel of context on each side so boundaries between nuclei cut by the tile edge stay right.
        lab = read_padded(self.data, y - 1, x - 1, size + 2, size + 2)
        check_labels(lab, self.name)
        if tissue is not None:
            tissue = np.pad(np.asarray(tissue, bool), 1, mode="edge")
        return resize(labels_to_control(lab, tissue=tissue)[1:-1, 1:-1], out_size, nearest=True)

    def is_empty(self, y: int, x: int, size: int) -> bool:
        return not read_padded(self.data, y, x, size, size).any()

    def describe(self) -> dict[str, Any]:
        return {"layer": self.name, "kind": "labels", "shape": list(self.shape), "mpp": self.mpp,
                "encoding": LABELS_ENCODING_TEXT[NUCLEI_V1],
                "tissue_spec": describe_spec(self.tissue)}


#: Above this many pixels per channel, normalisation limits come from a sample, never the whole channel.
LIMITS_SAMPLE_PIXELS = 4096 * 4096
#: Side of the windows sampled from lazy (dask, zarr) arrays for the limits.
LIMITS_WINDOW = 512


class _Plane(WindowedArray):
    """Channel ``index`` of a (C, Y, X) array-like, sliced in one read (zarr reads only the window asked)."""

    def __init__(self, data: Any, index: int) -> None:
        self.data, self.index = data, index
        self.shape, self.dtype = tuple(data.shape[1:]), np.dtype(data.dtype)

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        return np.asarray(self.data[self.index, y : y + height, x : x + width])


def limits_sample(plane: Any, max_pixels: int = LIMITS_SAMPLE_PIXELS) -> tuple[np.ndarray, str]:
    """Pixels of a 2-D array-like to compute percentile limits on, and how they were taken.

    Small planes are read whole. Larger numpy planes are subsampled with a stride; larger lazy planes (dask,
    zarr: a stride would still read every chunk) by an evenly spaced grid of windows, about ``max_pixels``
    in all.
    """
    H, W = plane.shape[-2:]
    if H * W <= max_pixels:
        return np.asarray(plane[:, :]), "whole channel"
    if isinstance(plane, np.ndarray):
        step = math.ceil(math.sqrt(H * W / max_pixels))
        return plane[::step, ::step], f"a {step}-px stride in y and x"
    win = min(LIMITS_WINDOW, H, W)
    n = max(1, math.ceil(math.sqrt(max_pixels / win**2)))
    ys = np.linspace(0, H - win, n).round().astype(int)
    xs = np.linspace(0, W - win, n).round().astype(int)
    windows = [np.asarray(plane[y : y + win, x : x + win]) for y in ys for x in xs]
    return np.stack(windows), f"{len(windows)} windows of {win}×{win} px on a regular grid"


@dataclass
class FluorescenceSource:
    """Fluorescence channels (C, Y, X) — or one channel (Y, X) — of any array-like as a control source.

    ``roles`` maps channel index → 'nuclear' / 'cytoplasm' / 'membrane' / 'other' (guessed from
    ``channel_names`` when None). ``limits`` maps each channel with a role to the (lo, hi) intensities that
    become 0 and 255; when None they are computed once, at ``percentiles``, on a sample of the data (see
    ``limits_sample``), so every tile shares one normalisation. ``tissue``: where the tissue is — "auto" (where
    the channels have signal), "all", a mask file or array (generation.tissue).
    """

    data: Any
    roles: dict[int, str] | None = None
    limits: dict[int, tuple[float, float]] | None = None
    channel_names: list[str] | None = None
    percentiles: tuple[float, float] = PERCENTILES
    name: str = "fluorescence"
    mpp: float | None = None
    mode: str = "fluorescence"
    tissue: Any = "auto"
    limits_from: str = field(default="given", init=False)

    def __post_init__(self) -> None:
        check_spec(self.tissue)
        ndim = len(self.data.shape)
        if ndim not in (2, 3):
            raise ConditioningError(
                f"Image '{self.name}' has shape {tuple(self.data.shape)}; pass channels as (C, Y, X) "
                "(see conditioning.as_channels_first) or one channel as (Y, X)."
            )
        n = self.n_channels
        names = list(self.channel_names) if self.channel_names is not None else [f"channel {i}" for i in range(n)]
        if len(names) != n:
            raise ConditioningError(f"Image '{self.name}' has {n} channels but {len(names)} channel names.")
        self.channel_names = names
        roles = guess_roles(names) if self.roles is None else self.roles
        self.roles = {int(i): str(r) for i, r in roles.items()}
        check_roles(self.roles, n, self.name)
        active = self._active
        if self.limits is None:
            self.limits, how = {}, set()
            for i in active:
                sample, how_i = limits_sample(self._plane(i))
                self.limits[i] = channel_limits(sample, *self.percentiles, name=names[i])
                how.add(how_i)
            self.limits_from = f"percentiles {tuple(self.percentiles)} of " + "; ".join(sorted(how))
        else:
            self.limits = {int(i): (float(v[0]), float(v[1])) for i, v in self.limits.items()}
            missing = [names[i] for i in active if i not in self.limits]
            if missing:
                raise ConditioningError(
                    f"No normalisation limits for channel(s) {', '.join(missing)} of '{self.name}'; "
                    "pass them, or leave limits unset to compute them."
                )

    @property
    def n_channels(self) -> int:
        return 1 if len(self.data.shape) == 2 else int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[-2:])

    @property
    def _active(self) -> list[int]:
        """Channels that reach the model (role other than 'other'), in order."""
        return [i for i, r in sorted(self.roles.items()) if r != "other"]  # type: ignore[union-attr]

    def _plane(self, index: int) -> Any:
        if len(self.data.shape) == 2:
            return self.data
        return self.data[index] if isinstance(self.data, np.ndarray) else _Plane(self.data, index)

    def _window(self, y: int, x: int, size: int, width: int | None = None) -> np.ndarray:
        """(len(active), size, width or size): only the channels with a role are read."""
        return np.stack([read_padded(self._plane(i), y, x, size, width or size) for i in self._active])

    def signal(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """(height, width) float32 in [0, 1]: the brightest channel with a role, each between its limits."""
        win = self._window(y, x, height, width)
        norm = [normalize_percentile(win[j], limits=self.limits[i], name=self.name)  # type: ignore[index]
                for j, i in enumerate(self._active)]
        return np.max(norm, axis=0).astype(np.float32)

    def control(self, y: int, x: int, size: int, out_size: int, tissue: np.ndarray | None = None) -> np.ndarray:
        if tissue is not None:
            raise ConditioningError(f"Fluorescence has no control encoding that carries tissue yet "
                                    f"({FLUORESCENCE_RGB_V1} only): the model's card must not ask for one.")
        active = self._active
        roles = {j: self.roles[i] for j, i in enumerate(active)}  # type: ignore[index]
        limits = {j: self.limits[i] for j, i in enumerate(active)}  # type: ignore[index]
        ctl = fluorescence_to_control(self._window(y, x, size), roles, limits=limits, name=self.name)
        return resize(ctl, out_size)

    def is_empty(self, y: int, x: int, size: int) -> bool:
        """No signal: every channel with a role is at or below its low limit (the control would be black)."""
        win = self._window(y, x, size)
        return all(not (win[j] > self.limits[i][0]).any() for j, i in enumerate(self._active))  # type: ignore[index]

    def describe(self) -> dict[str, Any]:
        names = self.channel_names or []
        channels = [
            {"index": i, "name": names[i], "role": self.roles.get(i, "other"),  # type: ignore[union-attr]
             "limits": list(self.limits[i]) if i in self.limits else None}  # type: ignore[operator,index]
            for i in range(self.n_channels)
        ]
        return {"layer": self.name, "kind": "fluorescence", "shape": list(self.shape), "mpp": self.mpp,
                "channels": channels, "percentiles": list(self.percentiles), "limits_from": self.limits_from,
                "encoding": f"conditioning.fluorescence_to_control: {FLUORESCENCE_ENCODING}",
                "tissue_spec": describe_spec(self.tissue)}
