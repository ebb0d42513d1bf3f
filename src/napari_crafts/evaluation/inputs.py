"""What an evaluation compares: open an image file, say what kind of input a path is, align two images.

Images are whole-slide files, (OME-)TIFF, OME-Zarr (read lazily through :mod:`napari_crafts.io.slide`) or PNG/JPEG
pictures
(read whole); a folder that is none of these is a folder of tiles. :func:`align_images` checks that two
images are RGB and cover the same pixels, resampling the generated one (:class:`ResampledImage`) when asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.windows import WindowedArray

#: Single-image formats read whole (no pyramid, no pixel size).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


class EvaluationError(ValueError):
    """Input that cannot be evaluated; the message names what was wrong and what to do (one line)."""


# --- aligning two images -------------------------------------------------------------------------------


class ResampledImage(WindowedArray):
    """Lazy view of an RGB image on another pixel grid: output pixel (i, j) samples the source at
    (``scale[0]·i + offset[0]``, ``scale[1]·j + offset[1]``) in source pixels.

    Bilinear interpolation; when shrinking (scale > 1), a Gaussian of σ = (scale − 1)/2 first (as
    scikit-image's anti-aliasing). Edges repeat the nearest pixel. Each slice reads only the source window
    it needs, with enough margin that any window equals the same part of the whole resampled image.
    """

    channels_last = True

    def __init__(self, source: Any, shape_yx: tuple[int, int], scale: Sequence[float],
                 offset: Sequence[float]) -> None:
        self.source = source
        self.shape = (int(shape_yx[0]), int(shape_yx[1]), 3)
        self.dtype = np.dtype(source.dtype)
        self.scale = (float(scale[0]), float(scale[1]))
        self.offset = (float(offset[0]), float(offset[1]))
        self.sigma = tuple(max(0.0, (s - 1.0) / 2.0) for s in self.scale)

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        return self._window(y, y + height, x, x + width)

    def _axis(self, axis: int, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Source coordinates of output pixels [start, stop) on ``axis`` and the source rows to read."""
        size = int(self.source.shape[axis])
        coords = np.clip(self.scale[axis] * np.arange(start, stop) + self.offset[axis], 0, size - 1)
        margin = int(4.0 * self.sigma[axis] + 0.5) + 1  # scipy's Gaussian radius (truncate 4) + interpolation
        lo = max(int(np.floor(coords.min())) - margin, 0) if len(coords) else 0
        hi = min(int(np.floor(coords.max())) + margin + 2, size) if len(coords) else 0
        return coords - lo, lo, hi

    def _window(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        from scipy import ndimage

        if i1 == i0 or j1 == j0:
            return np.zeros((i1 - i0, j1 - j0, 3), self.dtype)
        cy, ya, yb = self._axis(0, i0, i1)
        cx, xa, xb = self._axis(1, j0, j1)
        win = np.asarray(self.source[ya:yb, xa:xb])[..., :3].astype(np.float64)
        if any(self.sigma):
            win = ndimage.gaussian_filter(win, sigma=(*self.sigma, 0), mode="nearest")
        grid = np.meshgrid(cy, cx, indexing="ij")
        out = np.stack([ndimage.map_coordinates(win[..., c], grid, order=1, mode="nearest", prefilter=False)
                        for c in range(3)], axis=-1)
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(self.dtype)
        return out.astype(self.dtype)


def rescaled(image: Any, mpp: float, to_mpp: float) -> ResampledImage:
    """``image`` (µm/px ``mpp``) on a grid of ``to_mpp``: same top-left corner, pixel centres on pixel centres."""
    f = to_mpp / mpp
    h, w = (max(1, round(int(s) / f)) for s in image.shape[:2])
    return ResampledImage(image, (h, w), (f, f), (0.5 * f - 0.5, 0.5 * f - 0.5))


def _check_rgb(image: Any, what: str) -> Any:
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3 or shape[-1] not in (3, 4):
        raise EvaluationError(f"The {what} image has shape {shape}: expected RGB (height, width, 3).")
    if shape[0] == 0 or shape[1] == 0:
        raise EvaluationError(f"The {what} image is empty ({shape[0]}×{shape[1]} px).")
    return image[..., :3] if shape[-1] == 4 else image


def align_images(generated: Any, real: Any, *, generated_mpp: float | None = None, real_mpp: float | None = None,
                 resample: bool = False) -> tuple[Any, Any, list[str]]:
    """Make two RGB images comparable pixel for pixel: (generated, real, notes), still lazy.

    Pixel sizes (µm/px) equal within 2 % or unknown: unchanged. Different: with ``resample`` the generated
    image becomes a :class:`ResampledImage` on the real image's grid (same top-left corner), else
    :class:`EvaluationError` naming both. Shapes must then match (after resampling, a 1 px rounding
    difference is cropped away); otherwise the error names both shapes.
    """
    generated, real = _check_rgb(generated, "generated"), _check_rgb(real, "real")
    notes: list[str] = []
    resampled = False
    if generated_mpp is None or real_mpp is None:
        if generated_mpp != real_mpp:
            which = "generated" if generated_mpp is None else "real"
            notes.append(f"Pixel size of the {which} image unknown: compared pixel to pixel.")
    elif not math.isclose(generated_mpp, real_mpp, rel_tol=0.02):
        if not resample:
            raise EvaluationError(
                f"Pixel sizes differ: generated {generated_mpp:g} µm/px, real {real_mpp:g} µm/px, so pixels cannot "
                "be compared one to one. Use --resample (resample=True) to resample the generated image to the "
                "real image's pixel size."
            )
        before = tuple(int(s) for s in generated.shape[:2])
        generated = rescaled(generated, generated_mpp, real_mpp)
        after = generated.shape[:2]
        resampled = True
        notes.append(f"Generated image resampled from {generated_mpp:g} to {real_mpp:g} µm/px "
                     f"({before[0]}×{before[1]} → {after[0]}×{after[1]} px).")
    g_shape, r_shape = tuple(int(s) for s in generated.shape), tuple(int(s) for s in real.shape)
    if g_shape != r_shape:
        dy, dx = abs(g_shape[0] - r_shape[0]), abs(g_shape[1] - r_shape[1])
        if not (resampled and dy <= 1 and dx <= 1):
            how = " after resampling" if resampled else ""
            raise EvaluationError(
                f"Generated image {g_shape}{how} and real image {r_shape} differ in size: they must cover the "
                "same area pixel for pixel. Crop both to the same region (and use --resample if their pixel "
                "sizes differ)."
            )
        h, w = min(g_shape[0], r_shape[0]), min(g_shape[1], r_shape[1])
        generated = ResampledImage(generated.source, (h, w), generated.scale, generated.offset)  # still lazy
        real = real[:h, :w]
        notes.append(f"Cropped to the common {h}×{w} px after resampling (rounding).")
    return generated, real, notes


# --- files and folders ---------------------------------------------------------------------------------


def input_kind(path: Path) -> str:
    """"picture" (PNG/JPEG, read whole), "image" (a file or a store the slide reader knows) or "tiles"."""
    from ..io.slide import is_supported

    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder.")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return "picture"
    if is_supported(path) or not path.is_dir():
        return "image"
    return "tiles"


def read_picture(path: Path) -> np.ndarray:
    """A PNG/JPEG file as an RGB uint8 array; a file that is not one is an EvaluationError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # not an image at all; truncated; broken chunks
        kind = path.suffix.lstrip(".").upper() or "picture"
        why = "" if isinstance(err, UnidentifiedImageError) else f" ({' '.join(str(err).split())})"
        raise EvaluationError(f"{path}: not a readable {kind} image{why}: replace or remove it.") from None


def open_image(path: str | Path) -> tuple[Any, float | None]:
    """(level-0 RGB array, lazy where the format allows; µm/px or None) of a slide, TIFF, OME-Zarr or picture."""
    p = Path(path).expanduser()
    if input_kind(p) == "picture":
        return read_picture(p), None
    from ..io.slide import open_slide

    slide = open_slide(p)
    if slide.kind != "rgb":
        raise EvaluationError(f"{p}: opened as {slide.kind}, not RGB: both images must be RGB H&E.")
    return slide.levels[0], slide.mpp
