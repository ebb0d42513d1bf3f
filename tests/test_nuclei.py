"""Built-in nuclei segmentation (--nuclei auto) and colour deconvolution, on real CMU-1 H&E and on drawn scenes."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from _data import CMU1_SVS as CMU1
from napari_crafts.evaluation.metrics import tissue_mask
from napari_crafts.io.slide import open_slide
from napari_crafts.training.nuclei import (
    NucleiError,
    NucleiParams,
    segment_nuclei,
    segment_slide,
    slide_threshold,
)
from napari_crafts.training.stain import eosin_od, haematoxylin_od

PINK, PURPLE, TEAL = (235, 160, 200), (90, 40, 130), (60, 170, 160)


@pytest.fixture(scope="module")
def cmu1_crop() -> tuple[np.ndarray, float]:
    """512×512 px of real H&E (epidermis and dermis) from CMU-1, read with tiffslide, and its µm/px."""
    slide = open_slide(CMU1)
    assert slide.mpp is not None
    return slide.read(0, 2300, 1450, 512, 512), slide.mpp


def reader(rgb: np.ndarray):  # type: ignore[no-untyped-def]
    def read(y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w, 3), np.uint8)
        out[: max(0, min(h, rgb.shape[0] - y)), : max(0, min(w, rgb.shape[1] - x))] = rgb[y : y + h, x : x + w]
        return out

    return read


def scene(discs: list[tuple[int, int, int, tuple[int, int, int]]], shape: tuple[int, int] = (96, 96)) -> np.ndarray:
    """Pink tissue with coloured discs (cy, cx, radius, colour)."""
    rgb = np.empty((*shape, 3), np.uint8)
    rgb[:] = PINK
    for cy, cx, r, colour in discs:
        rgb[disk((cy, cx), r, shape=shape)] = colour
    return rgb


def test_stain_separates_haematoxylin_from_eosin():
    px = np.array([[PINK, PURPLE]], np.uint8)
    h, e = haematoxylin_od(px)[0], eosin_od(px)[0]
    assert h[1] > 2 * h[0]  # purple (nuclei) holds more haematoxylin than pink (stroma)
    assert e[0] > h[0]  # pink is mostly eosin
    assert haematoxylin_od(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(0, abs=1e-3)  # glass


def test_auto_nuclei_on_real_cmu1_are_plausible(cmu1_crop):
    rgb, mpp = cmu1_crop
    labels = np.zeros(rgb.shape[:2], np.int32)
    threshold, stats = segment_slide(reader(rgb), rgb.shape[:2], labels, mpp=mpp)
    found = stats.record(mpp)
    n = len(np.unique(labels)) - 1
    assert n == found["count"] == labels.max()
    assert 60 <= n <= 600  # 128 µm × 128 µm of epidermis and dermis
    assert 12 <= found["mean_area_um2"] <= 60  # nuclei, not specks or tissue
    h = haematoxylin_od(rgb)
    tissue = tissue_mask(rgb)
    inside, outside = h[labels > 0].mean(), h[(labels == 0) & tissue].mean()
    assert inside / outside > 3 and found["h_od_ratio"] == pytest.approx(inside / outside, rel=0.01)
    assert 0.03 < threshold < 0.3


def test_blocks_leave_no_seams(cmu1_crop):
    """Segmenting in 160-px blocks finds the same nuclei as in one block (a nucleus goes to its centre's block)."""
    rgb, mpp = cmu1_crop
    whole, blocks = np.zeros(rgb.shape[:2], np.int32), np.zeros(rgb.shape[:2], np.int32)
    segment_slide(reader(rgb), rgb.shape[:2], whole, mpp=mpp)
    segment_slide(reader(rgb), rgb.shape[:2], blocks, mpp=mpp, block=160)
    a, b = whole > 0, blocks > 0
    assert (a & b).sum() / (a | b).sum() > 0.97
    assert abs(int(blocks.max()) - int(whole.max())) <= 0.03 * whole.max()


def test_touching_nuclei_are_split():
    rgb = scene([(48, 38, 9, PURPLE), (48, 56, 9, PURPLE)])  # two discs of 9 px overlapping by 2 px
    labels = segment_nuclei(rgb, mpp=0.5, threshold=slide_threshold(reader(rgb), rgb.shape[:2], mpp=0.5))
    assert labels.max() == 2
    left, right = labels[48, 34], labels[48, 60]
    assert left != right and left > 0 and right > 0
    area = np.pi * 81
    assert all(0.6 * area < (labels == i).sum() < 1.3 * area for i in (1, 2))


def test_marking_dye_is_not_a_nucleus():
    rgb = scene([(30, 30, 8, PURPLE), (66, 66, 8, TEAL)])
    labels = segment_nuclei(rgb, mpp=0.5, threshold=0.05)
    assert labels.max() == 1 and labels[30, 30] == 1 and labels[66, 66] == 0
    kept = segment_nuclei(rgb, mpp=0.5, threshold=0.05, params=NucleiParams(ink_margin=None))
    assert kept.max() == 2  # the filter, not the threshold, removed it


def test_size_filter_in_um():
    rgb = scene([(30, 30, 2, PURPLE), (66, 66, 6, PURPLE)])  # ~3 µm² and ~28 µm² at 0.5 µm/px
    labels = segment_nuclei(rgb, mpp=0.5, threshold=0.05)
    assert labels.max() == 1 and labels[66, 66] == 1 and labels[30, 30] == 0


def test_glass_only_is_refused():
    glass = np.full((64, 64, 3), 242, np.uint8)
    with pytest.raises(NucleiError, match="no tissue"):
        slide_threshold(reader(glass), glass.shape[:2], mpp=0.5)


def test_default_settings_label_most_of_the_dark_haematoxylin(cmu1_crop):
    """The defaults (those of the demo model's pairs, scripts/train_demo_model.sh) relax solidity and area: on
    real CMU-1 the stricter earlier ones (0.85, 8 µm²) leave ~40 % of the strongly haematoxylin-stained pixels
    unlabelled (a model trained on them learns to draw nuclei where the labels have none); the defaults label
    ~80 % and stay on haematoxylin."""
    rgb, mpp = cmu1_crop
    h, tissue = haematoxylin_od(rgb), tissue_mask(rgb)
    recall, ratio = {}, {}
    for name, params in {"strict": NucleiParams(min_solidity=0.85, min_area_um2=8.0), "default": NucleiParams()}.items():
        labels = np.zeros(rgb.shape[:2], np.int32)
        threshold, stats = segment_slide(reader(rgb), rgb.shape[:2], labels, mpp=mpp, params=params)
        dark = (h > 2 * threshold) & tissue
        recall[name], ratio[name] = float((labels[dark] > 0).mean()), stats.record(mpp)["h_od_ratio"]
    assert recall["strict"] < 0.7 and recall["default"] > 0.75  # measured 0.60 and 0.80
    assert ratio["default"] >= ratio["strict"] > 3  # the extra nuclei are haematoxylin, not stroma
