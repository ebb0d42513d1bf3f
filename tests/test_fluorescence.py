"""Fluorescence channels → control image: roles, normalisation, encoding, and the tiled source."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _data import dsb_pair
from napari_crafts.generation.conditioning import (
    ConditioningError,
    as_channels_first,
    channel_limits,
    fluorescence_limits,
    fluorescence_to_control,
    guess_role,
    guess_roles,
    normalize_percentile,
)
from napari_crafts.generation.sources import LIMITS_SAMPLE_PIXELS, FluorescenceSource, limits_sample


@pytest.fixture(scope="module")
def dsb() -> tuple[np.ndarray, np.ndarray]:
    """Real DSB 2018 nuclei fluorescence (uint16, 512×512) and its instance mask."""
    return dsb_pair()


# ── roles ───────────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("name, role", [
    ("DAPI", "nuclear"), ("DAPI - Ch1", "nuclear"), ("ch0_hoechst", "nuclear"), ("Hoechst 33342", "nuclear"),
    ("DRAQ5", "nuclear"), ("NucBlue", "nuclear"), ("Nuclei", "nuclear"), ("nuclear stain", "nuclear"),
    ("PanCK", "cytoplasm"), ("Pan-Cytokeratin", "cytoplasm"), ("CK8/18", "cytoplasm"), ("KRT19", "cytoplasm"),
    ("eosin", "cytoplasm"), ("Autofluorescence", "cytoplasm"),
    ("CD45", "membrane"), ("CD45 AF647", "membrane"), ("Na+/K+-ATPase", "membrane"), ("E-Cadherin", "membrane"),
    ("WGA", "membrane"), ("Cell membrane", "membrane"),
    ("Alexa Fluor 488", "other"), ("Ch1-T1", "other"), ("Ki67", "other"), ("nucleolin", "other"),
])
def test_role_is_guessed_from_realistic_channel_names(name, role):
    assert guess_role(name) == role


def test_only_the_first_nuclear_channel_is_nuclear():
    # cyclic IF repeats DAPI every cycle
    assert guess_roles(["DAPI_1", "CD3", "panCK", "DAPI_2"]) == {0: "nuclear", 1: "membrane", 2: "cytoplasm",
                                                                 3: "other"}


def test_a_single_unknown_channel_is_nuclear_but_several_are_not():
    assert guess_roles(["Ch1"]) == {0: "nuclear"}
    assert guess_roles(["Ch1", "Ch2"]) == {0: "other", 1: "other"}
    assert guess_roles(["PanCK"]) == {0: "cytoplasm"}


# ── normalisation ───────────────────────────────────────────────────────────────────────────────────────

def test_uint16_percentiles_ignore_a_handful_of_hot_pixels():
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 200, (256, 256)).clip(0, None).astype(np.uint16)
    hot = rng.choice(img.size, 20, replace=False)  # 0.03 % of pixels, below the 0.2 % above the 99.8th
    img.flat[hot] = 65535
    lo, hi = np.percentile(img, [1.0, 99.8])  # independently
    assert hi < 2500  # the outliers do not set the top of the stretch

    out = normalize_percentile(img)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    typical = np.flatnonzero(np.abs(img.astype(float) - 1000) < 5)[0]
    expected = (float(img.flat[typical]) - lo) / (hi - lo)
    assert out.flat[typical] == pytest.approx(expected, rel=1e-5)
    assert 0.3 < out.flat[typical] < 0.7  # not squashed into black by the hot pixels
    assert (out.flat[hot] == 1.0).all()
    # with precomputed limits the same result
    np.testing.assert_allclose(normalize_percentile(img, limits=(lo, hi)), out, rtol=1e-6)


def test_float_input():
    x = np.linspace(-0.5, 3.0, 1000, dtype=np.float64).reshape(20, 50)
    lo, hi = np.percentile(x, [1.0, 99.8])
    out = normalize_percentile(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_nan_is_ignored_for_percentiles_and_becomes_zero():
    x = np.arange(100, dtype=np.float32).reshape(10, 10)
    x[0, :5] = np.nan
    lo, hi = np.nanpercentile(x, [1.0, 99.8])
    out = normalize_percentile(x)
    assert (out[0, :5] == 0).all() and not np.isnan(out).any()
    np.testing.assert_allclose(out[5], np.clip((x[5] - lo) / (hi - lo), 0, 1), rtol=1e-6)


def test_constant_and_all_nan_channels_say_so():
    with pytest.raises(ConditioningError, match=r"Channel 'DAPI' is constant \(value 7\): nothing to normalise"):
        normalize_percentile(np.full((8, 8), 7, np.uint16), name="DAPI")
    assert not normalize_percentile(np.full((8, 8), 7, np.uint16), allow_constant=True).any()
    with pytest.raises(ConditioningError, match="only NaN"):
        normalize_percentile(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ConditioningError, match="only NaN"):
        channel_limits(np.full((8, 8), np.nan))


def test_sparse_signal_falls_back_to_the_maximum():
    x = np.zeros((100, 100), np.uint16)
    x[50, 50] = 300  # percentiles 1 and 99.8 are both 0
    assert channel_limits(x) == (0.0, 300.0)


# ── encoding ────────────────────────────────────────────────────────────────────────────────────────────

def test_nuclear_only_is_gray_and_roles_fill_rgb():
    rng = np.random.default_rng(1)
    ch = rng.integers(0, 4000, (3, 16, 16), dtype=np.uint16)
    limits = fluorescence_limits(ch, {0: "nuclear", 1: "cytoplasm", 2: "membrane"})
    gray = fluorescence_to_control(ch, {0: "nuclear", 1: "other"}, limits=limits)
    assert gray.shape == (16, 16, 3) and gray.dtype == np.uint8
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgb = fluorescence_to_control(ch, {0: "nuclear", 1: "cytoplasm"}, limits=limits)
    assert (rgb[..., 0] == gray[..., 0]).all()
    expected_g = np.rint(normalize_percentile(ch[1], limits=limits[1]) * 255).astype(np.uint8)
    assert (rgb[..., 1] == expected_g).all() and not rgb[..., 2].any()
    # two channels of one role merge by their maximum
    both = fluorescence_to_control(ch, {0: "nuclear", 1: "cytoplasm", 2: "cytoplasm"}, limits=limits)
    expected_max = np.rint(np.maximum(normalize_percentile(ch[1], limits=limits[1]),
                                      normalize_percentile(ch[2], limits=limits[2])) * 255)
    assert (both[..., 1] == expected_max).all()


def test_real_nuclei_are_bright_where_the_mask_has_nuclei(dsb):
    img, mask = dsb
    ch = as_channels_first(img, channel_axis=None)
    roles = {0: "nuclear"}
    ctl = fluorescence_to_control(ch, roles, limits=fluorescence_limits(ch, roles))
    assert ctl.shape == (512, 512, 3) and ctl.dtype == np.uint8
    inside, outside = ctl[..., 0][mask > 0], ctl[..., 0][mask == 0]
    assert inside.mean() > 3 * outside.mean()  # measured: 76 vs 19 (dim nuclei, bright cytoplasmic haze)
    assert inside.mean() > 60 and outside.mean() < 25
    bright = ctl[..., 0] > 128
    assert (mask[bright] > 0).mean() > 0.95  # bright control pixels are nuclei


def test_wrong_channel_index_names_both():
    ch = np.zeros((3, 4, 4), np.uint16)
    with pytest.raises(ConditioningError, match=r"Role 'nuclear' points to channel 5, but 'image' has 3 channels"):
        fluorescence_to_control(ch, {5: "nuclear"}, limits={5: (0.0, 1.0)})
    with pytest.raises(ConditioningError, match=r"channel 5, but 'tissue' has 3 channels"):
        FluorescenceSource(ch, roles={5: "nuclear"}, name="tissue")
    with pytest.raises(ConditioningError, match="Unknown role 'nucleus'"):
        fluorescence_to_control(ch, {0: "nucleus"}, limits={0: (0.0, 1.0)})
    with pytest.raises(ConditioningError, match="No channel .* has a role"):
        fluorescence_to_control(ch, {0: "other"}, limits={})


def test_a_3d_array_needs_its_channel_axis():
    rgb16 = np.zeros((64, 48, 3), np.uint16)
    rgb16[..., 1] = 9
    with pytest.raises(ConditioningError,
                       match=r"has 3 dimensions \(64, 48, 3\) but no channel axis: say which axis holds channels"):
        as_channels_first(rgb16, channel_axis=None)
    ch = as_channels_first(rgb16, channel_axis=-1)
    assert ch.shape == (3, 64, 48) and (ch[1] == 9).all() and not ch[0].any()
    assert as_channels_first(rgb16[..., 0], channel_axis=None).shape == (1, 64, 48)
    with pytest.raises(ConditioningError, match="pick the plane"):
        as_channels_first(np.zeros((2, 3, 8, 8)), channel_axis=1)


# ── the tiled source ────────────────────────────────────────────────────────────────────────────────────

def test_tiles_are_crops_of_the_whole_image_control(dsb):
    """Shared limits: a tile's control is the crop of the whole image's, so tiles cannot disagree at seams."""
    import dask.array as da

    img, _ = dsb
    cyto = np.roll(img, 7, axis=1) // 2 + np.linspace(0, 300, 512, dtype=np.uint16)  # a second, different channel
    stack = np.stack([img, cyto])
    src = FluorescenceSource(da.from_array(stack, chunks=(1, 100, 100)), channel_names=["DAPI", "panCK"])
    assert src.roles == {0: "nuclear", 1: "cytoplasm"}
    full = fluorescence_to_control(stack, src.roles, limits=src.limits)
    tile_wise_differs = False
    for y in range(0, 512, 96):
        for x in range(0, 512, 96):
            tile = src.control(y, x, 128, 128)
            h, w = min(128, 512 - y), min(128, 512 - x)
            assert (tile[:h, :w] == full[y : y + h, x : x + w]).all()
            assert not tile[h:].any() and not tile[:, w:].any()  # outside the image: no signal
            own = fluorescence_to_control(stack[:, y : y + h, x : x + w], src.roles,
                                          limits=fluorescence_limits(stack[:, y : y + h, x : x + w], src.roles))
            tile_wise_differs |= bool((own != full[y : y + h, x : x + w]).any())
    assert tile_wise_differs  # per-tile percentiles would have made seams
    assert src.control(0, 0, 128, 64).shape == (64, 64, 3)


def test_dark_windows_are_empty():
    img = np.zeros((256, 256), np.uint16)
    img[:, 128:] = np.random.default_rng(2).integers(0, 2000, (256, 128))
    src = FluorescenceSource(img)
    assert src.roles == {0: "nuclear"} and src.limits[0][0] == 0.0
    assert src.is_empty(0, 0, 100)
    assert src.is_empty(-300, -300, 100)  # wholly outside
    assert not src.is_empty(0, 100, 100)
    assert not src.control(0, 0, 100, 100).any()


def test_describe_records_channels_roles_limits_and_encoding(dsb):
    img, _ = dsb
    src = FluorescenceSource(np.stack([img, img]), roles={0: "nuclear", 1: "other"}, channel_names=["DAPI", "x"],
                             name="dsb", mpp=0.5)
    d = json.loads(json.dumps(src.describe()))
    assert d["kind"] == "fluorescence" and d["shape"] == [512, 512] and d["percentiles"] == [1.0, 99.8]
    assert d["channels"][0] == {"index": 0, "name": "DAPI", "role": "nuclear",
                                "limits": list(np.percentile(img, [1.0, 99.8]))}
    assert d["channels"][1]["limits"] is None  # 'other' channels are not normalised
    assert "R=nuclear" in d["encoding"] and "whole channel" in d["limits_from"]


class _CountingArray:
    """A lazy (C, Y, X) array-like that counts the pixels read through it."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape, self.dtype, self.read = shape, np.dtype(np.uint8), 0

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        out = np.broadcast_to(np.uint8(0), self.shape)[key]  # a view, to learn the shape asked for
        out = np.broadcast_to(np.arange(out.shape[-1], dtype=np.uint8), out.shape)
        self.read += out.size
        return out


def test_limits_of_a_large_image_come_from_a_sample():
    H = W = 4500  # just above the 4096² threshold
    big = np.broadcast_to(np.arange(W, dtype=np.uint16) % 251, (1, H, W))
    sample, how = limits_sample(big[0])
    assert sample.size <= LIMITS_SAMPLE_PIXELS and "stride" in how
    lazy = _CountingArray((2, H, W))
    src = FluorescenceSource(lazy, roles={0: "nuclear"})  # channel 1 has no role: never read
    assert 0 < lazy.read <= 1.1 * LIMITS_SAMPLE_PIXELS < H * W
    assert "windows" in src.limits_from and src.limits[0][1] > src.limits[0][0]
