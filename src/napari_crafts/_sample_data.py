"""napari sample data: real nuclei with their labels (DSB 2018, CC0), to try the widgets in one click."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

#: µm/px the sample opens with. DSB 2018 does not record a pixel size; at 0.25 µm/px (a 40× scan) its median
#: nucleus (24 px across) is 6 µm, a real nucleus's size, and it is what the ``demo`` command and the README's
#: screenshot assume. The docks resample it to the model's own pixel size (the bundled demo model: 0.5 µm/px).
SAMPLE_MPP = 0.25
#: What the sample layers' record says about that pixel size (the docks read the layers' scale, in µm).
SAMPLE_MPP_NOTE = f"assumed {SAMPLE_MPP} µm/px (DSB 2018 does not record it); set another with Pixel size"


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(fluorescence image uint16, instance labels uint16), both 512×512."""
    with files("napari_crafts").joinpath("data/dsb2018_nuclei.npz").open("rb") as fh:
        data = np.load(fh)
        return data["image"], data["labels"]


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """The DSB pair as two layers in µm (:data:`SAMPLE_MPP`), one over the other."""
    image, labels = load_nuclei()
    placed = {"scale": (SAMPLE_MPP, SAMPLE_MPP), "units": ("µm", "µm")}
    meta = {"napari_crafts": {"sample": "DSB 2018 (BBBC038), CC0", "mpp_note": SAMPLE_MPP_NOTE}}
    return [
        (
            image,
            {
                "name": "nuclei fluorescence (DSB 2018)",
                "colormap": "blue",
                "blending": "additive",
                "metadata": meta,
                **placed,
            },
            "image",
        ),
        (labels, {"name": "nuclei labels (DSB 2018)", "metadata": meta, **placed}, "labels"),
    ]
