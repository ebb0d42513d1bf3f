"""What the ControlNet sees: labels (and, later, fluorescence channels) → a control image.

The CRAFTS mask→H&E ControlNet (GLySAC, CoNSeP) takes a nuclear segmentation mask: nuclei white on a black
background. Instance labels add one thing a binary mask loses: where two nuclei touch. We keep that boundary
as a one-pixel black line so touching nuclei stay separate in the synthetic H&E.
"""

from __future__ import annotations

import numpy as np

#: Control value of nuclei and of everything else (the paper's binary mask).
NUCLEUS, BACKGROUND = 255, 0


class ConditioningError(ValueError):
    """Input that cannot become a control image; the message says what to do."""


def check_labels(labels: np.ndarray, name: str = "labels") -> None:
    """Refuse what is not a label image: floats, negative values (emptiness is the caller's question)."""
    dtype = np.dtype(labels.dtype)
    if dtype.kind == "f":
        raise ConditioningError(
            f"Labels layer '{name}' holds {dtype} values; labels must be integers "
            "(convert with Layer › Convert to Labels, or round and cast your mask)."
        )
    if dtype.kind not in "iub":
        raise ConditioningError(f"Labels layer '{name}' has unsupported dtype {dtype}.")
    if dtype.kind == "i" and labels.size and int(np.min(labels)) < 0:
        raise ConditioningError(
            f"Labels layer '{name}' has negative values; nuclei must be labelled 1, 2, … on a background of 0."
        )


def touching_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus that touch (4-connectivity) another nucleus with a smaller label: a 1-px line."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    for axis in (0, 1):
        a = np.moveaxis(lab, axis, 0)
        e = np.moveaxis(edge, axis, 0)
        upper, lower = a[:-1], a[1:]
        differ = (upper > 0) & (lower > 0) & (upper != lower)
        # Mark the side with the larger label, so the line is one pixel wide.
        e[:-1] |= differ & (upper > lower)
        e[1:] |= differ & (lower > upper)
    return edge


def labels_to_control(labels: np.ndarray, *, boundaries: bool = True) -> np.ndarray:
    """Labels (H, W) of any integer dtype, instance or semantic → control image (H, W, 3) uint8.

    Nuclei (label > 0) are white, background black; with ``boundaries`` the border between two touching
    instances is drawn black, one pixel wide. Semantic labels (every nucleus 1) give the plain binary mask.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ConditioningError(f"Expected a 2-D labels image, got shape {lab.shape}.")
    mask = lab > 0
    if boundaries:
        mask &= ~touching_boundaries(lab)
    control = np.where(mask, NUCLEUS, BACKGROUND).astype(np.uint8)
    return np.repeat(control[..., None], 3, axis=-1)
