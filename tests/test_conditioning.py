import numpy as np
import pytest

from napari_crafts.generation.conditioning import ConditioningError, check_labels, labels_to_control
from napari_crafts.generation.sources import LabelsSource


def test_touching_instances_stay_separate_by_a_one_pixel_line():
    lab = np.zeros((6, 8), np.int32)
    lab[1:5, 1:4] = 3
    lab[1:5, 4:7] = 9  # touches label 3 along column 3|4
    ctl = labels_to_control(lab)
    assert ctl.shape == (6, 8, 3) and ctl.dtype == np.uint8
    white = ctl[..., 0] == 255
    # the larger label's edge column is black, the rest of both nuclei white, background black
    assert not white[1:5, 4].any()
    assert white[1:5, 1:4].all() and white[1:5, 5:7].all()
    assert not white[0].any() and not white[:, 0].any()


def test_semantic_labels_give_the_plain_binary_mask():
    lab = np.zeros((5, 5), np.uint8)
    lab[1:4, 1:4] = 1
    assert (labels_to_control(lab)[..., 0] == np.where(lab > 0, 255, 0)).all()


def test_real_instance_mask_keeps_every_touching_pair_apart(nuclei):
    _, lab = nuclei
    ctl = labels_to_control(lab)[..., 0] > 0
    # no two distinct labels remain 4-connected through white pixels
    for a, b in ((ctl[:, :-1] & ctl[:, 1:], (lab[:, :-1], lab[:, 1:])), (ctl[:-1] & ctl[1:], (lab[:-1], lab[1:]))):
        assert not (a & (b[0] != b[1])).any()
    assert ctl.sum() >= 0.85 * (lab > 0).sum()  # boundary lines take only a thin slice of the nuclei
    assert not (ctl & (lab == 0)).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64, bool])
def test_any_integer_dtype(dtype):
    lab = np.zeros((4, 4), dtype)
    lab[1:3, 1:3] = 1
    check_labels(lab)
    assert labels_to_control(lab)[1, 1, 0] == 255


def test_float_and_negative_labels_are_refused_with_a_message():
    with pytest.raises(ConditioningError, match="'mask' holds float32.*integers"):
        check_labels(np.zeros((3, 3), np.float32), "mask")
    with pytest.raises(ConditioningError, match="negative values"):
        check_labels(np.array([[0, -1]], np.int16), "mask")
    with pytest.raises(ConditioningError, match="negative"):
        LabelsSource(np.array([[-2, 0], [0, 0]], np.int8), name="mask").control(0, 0, 2, 2)


def test_labels_source_tile_border_does_not_invent_boundaries(nuclei):
    """A tile's control equals the same crop of the whole image's control (context read across the edge)."""
    _, lab = nuclei
    whole = labels_to_control(lab)
    src = LabelsSource(lab, name="nuclei")
    for y, x in [(0, 0), (100, 37), (448, 448)]:
        tile = src.control(y, x, 64, 64)
        ref = np.zeros((64, 64, 3), np.uint8)
        crop = whole[y : y + 64, x : x + 64]
        ref[: crop.shape[0], : crop.shape[1]] = crop
        assert (tile == ref).all()


def test_labels_source_needs_two_dimensions():
    with pytest.raises(ConditioningError, match="shape \\(2, 4, 4\\)"):
        LabelsSource(np.zeros((2, 4, 4), np.uint8))
