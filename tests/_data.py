"""The real test data, kept in the repository (tests/data, CC0; see tests/data/README.md): one place for its paths.

Tests read these files through this module only, so a clean clone runs the suite with nothing beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
#: Aperio SVS, H&E skin, 2220×2967 px at 0.499 µm/px (OpenSlide test data, CC0).
CMU1_SVS = DATA / "CMU-1-Small-Region.svs"
#: DSB 2018 fluorescence nuclei (uint16, 512×512) and their instance labels (CC0).
DSB_IMAGE = DATA / "stardist_dsb2018_img2d.tif"
DSB_MASK = DATA / "stardist_dsb2018_mask2d.tif"
#: A 300×500 px window of CMU-1, nearly all tissue: the real H&E tile of the metric tests.
HE_WINDOW = (800, 1100, 300, 500)  # y, x, height, width in level-0 px (98 % tissue)


def dsb_pair() -> tuple[np.ndarray, np.ndarray]:
    """The DSB 2018 image (uint16) and its instance labels."""
    import tifffile

    return tifffile.imread(DSB_IMAGE), tifffile.imread(DSB_MASK)


def he_tile() -> np.ndarray:
    """Real H&E (300×500 RGB uint8) cut from CMU-1 at ``HE_WINDOW``."""
    import tifffile

    y, x, h, w = HE_WINDOW
    return np.ascontiguousarray(tifffile.imread(CMU1_SVS, key=0)[y : y + h, x : x + w, :3])
