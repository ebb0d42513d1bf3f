"""Pieces that used to be written twice or more, now one each: the generator driver, the OME provenance reader,
the zero-padded window read and the lazy array base (numpy only; fast)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from napari_crafts._generators import mapped, run
from napari_crafts.evaluation.inputs import ResampledImage
from napari_crafts.io.windows import WindowedArray, read_padded
from napari_crafts.provenance import OME_NAMESPACE, PROVENANCE_KEY, record_from_ome_xml


def _job(log: list[str]) -> Any:
    try:
        yield 1
        yield 2
        return "result"
    finally:
        log.append("closed")


def test_run_hands_every_event_on_and_returns_the_result() -> None:
    seen: list[int] = []
    assert run(_job([]), seen.append) == "result" and seen == [1, 2]


def test_mapped_passes_changed_events_and_closing_it_closes_the_job() -> None:
    log: list[str] = []
    gen = mapped(_job(log), lambda e: e * 10)
    assert next(gen) == 10
    gen.close()  # what napari's Cancel does at the next yield
    assert log == ["closed"]
    assert run(mapped(_job([]), str)) == "result"


def _ome(namespace: str, value: str) -> str:
    return (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><StructuredAnnotations>'
            f'<MapAnnotation ID="Annotation:0" Namespace="{namespace}"><Value><M K="{PROVENANCE_KEY}">{value}</M>'
            f'</Value></MapAnnotation></StructuredAnnotations></OME>')


def test_one_reader_for_the_provenance_an_ome_tiff_carries() -> None:
    record = {"synthetic": True, "seed": 7}
    assert record_from_ome_xml(_ome(OME_NAMESPACE, json.dumps(record))) == record
    assert record_from_ome_xml(_ome("someone-else/annotations", json.dumps(record))) is None
    assert record_from_ome_xml(_ome(OME_NAMESPACE, "{not json")) is None
    assert record_from_ome_xml("<OME") is None  # damaged XML: no record, no exception


def test_padded_reads_put_zeros_outside_on_either_axis_layout() -> None:
    yx = np.arange(2 * 5 * 6).reshape(2, 5, 6)  # (C, Y, X)
    out = read_padded(yx, -1, 4, 3, 4)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[:, 1:, :2], yx[:, 0:2, 4:6])
    assert not out[:, 0].any() and not out[:, :, 2:].any()
    last = np.moveaxis(yx, 0, -1)  # (Y, X, C)
    np.testing.assert_array_equal(read_padded(last, -1, 4, 3, 4, channels_last=True), np.moveaxis(out, 0, -1))


class _Numpy(WindowedArray):
    def __init__(self, data: np.ndarray, channels_last: bool) -> None:
        self.data, self.shape, self.dtype, self.channels_last = data, data.shape, data.dtype, channels_last

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        win = (slice(y, y + height), slice(x, x + width))
        return self.data[win] if self.channels_last else self.data[(slice(None), *win)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_lazy_arrays_slice_like_numpy(channels_last: bool) -> None:
    data = np.arange(3 * 7 * 9).reshape((7, 9, 3) if channels_last else (3, 7, 9))
    lazy = _Numpy(data, channels_last)
    keys = [(slice(1, 5), slice(2, 8)), (..., slice(None, None, 2)), (2,), (slice(-3, None), 4)]
    for key in keys:
        np.testing.assert_array_equal(lazy[key], data[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(lazy), data)


def test_a_resampled_image_slices_like_the_whole_resampled_array() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    image = ResampledImage(rgb, (20, 15), (2, 2), (0.5, 0.5))
    whole = np.asarray(image)
    assert whole.shape == (20, 15, 3) and whole.dtype == np.uint8
    for key in [(slice(3, 11), slice(0, 7)), (slice(None, None, 3), 4), (5, slice(2, 9), 1)]:
        np.testing.assert_array_equal(image[key], whole[key], err_msg=str(key))
