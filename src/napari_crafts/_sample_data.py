"""napari sample data: real nuclei with their labels (DSB 2018, CC0), to try the widgets in one click."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(fluorescence image uint16, instance labels uint16), both 512×512."""
    with files("napari_crafts").joinpath("data/dsb2018_nuclei.npz").open("rb") as fh:
        data = np.load(fh)
        return data["image"], data["labels"]


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    image, labels = load_nuclei()
    meta = {"napari_crafts": {"source": "DSB 2018 (BBBC038), CC0", "mpp": None}}
    return [
        (image, {"name": "nuclei fluorescence (DSB 2018)", "colormap": "blue", "blending": "additive",
                 "metadata": meta}, "image"),
        (labels, {"name": "nuclei labels (DSB 2018)", "metadata": meta}, "labels"),
    ]
