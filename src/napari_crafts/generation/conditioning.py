"""What the ControlNet sees: labels or fluorescence channels → a control image.

The CRAFTS mask→H&E ControlNet (GLySAC, CoNSeP) takes a nuclear segmentation mask: nuclei white on a black
background. Instance labels add one thing a binary mask loses: where two nuclei touch. We keep that boundary
as a one-pixel black line so touching nuclei stay separate in the synthetic H&E.

Fluorescence channels get roles (nuclear, cytoplasm, membrane) and a shared percentile stretch; see
``fluorescence_to_control`` for the encoding.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..model.card import (  # noqa: F401  (the encoding names: declared by model cards, drawn here)
    CONTROL_ENCODINGS,
    FLUORESCENCE_RGB_V1,
    NUCLEI_TISSUE_V1,
    NUCLEI_V1,
    TISSUE_ENCODINGS,
)

#: Control value of nuclei and of everything else (the paper's binary mask, ``NUCLEI_V1``).
NUCLEUS, BACKGROUND = 255, 0
#: ``NUCLEI_TISSUE_V1``: tissue without nuclei (and the border between touching nuclei); glass stays ``BACKGROUND``.
TISSUE = 128
#: What each labels encoding draws, in words (provenance, dataset cards).
LABELS_ENCODING_TEXT = {
    NUCLEI_V1: "conditioning.labels_to_control: nuclei 255, background 0, touching borders 0",
    NUCLEI_TISSUE_V1: f"conditioning.labels_to_control with tissue ({NUCLEI_TISSUE_V1}): glass {BACKGROUND}, tissue "
                      f"without nuclei {TISSUE}, nuclei {NUCLEUS}, touching-instance borders {TISSUE}",
}


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


def labels_to_control(labels: np.ndarray, *, boundaries: bool = True, tissue: np.ndarray | None = None) -> np.ndarray:
    """Labels (H, W) of any integer dtype, instance or semantic → control image (H, W, 3) uint8.

    Without ``tissue`` (``NUCLEI_V1``, the paper's mask): nuclei (label > 0) are white, the rest black; with
    ``boundaries`` the border between two touching instances is drawn black, one pixel wide. Semantic labels
    (every nucleus 1) give the plain binary mask.

    With ``tissue`` (``NUCLEI_TISSUE_V1``; (H, W) bool, True = tissue): glass 0, tissue without nuclei 128,
    nuclei 255 (inside the mask or not: a nucleus is tissue), touching-instance borders 128.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ConditioningError(f"Expected a 2-D labels image, got shape {lab.shape}.")
    mask = lab > 0
    border = touching_boundaries(lab) if boundaries else np.zeros(lab.shape, bool)
    if tissue is None:
        control = np.where(mask & ~border, NUCLEUS, BACKGROUND).astype(np.uint8)
    else:
        if np.shape(tissue) != lab.shape:
            raise ConditioningError(f"The tissue mask {np.shape(tissue)} does not match the labels {lab.shape}.")
        control = np.where(np.asarray(tissue, bool) | border, TISSUE, BACKGROUND).astype(np.uint8)
        control[mask & ~border] = NUCLEUS
    return np.repeat(control[..., None], 3, axis=-1)


# ── Fluorescence channels → control image ────────────────────────────────────────────────────────────────
#
# The CRAFTS immunofluorescence→H&E ControlNet (HEMIT: DAPI, CD3, panCK; SHIFT: DAPI, panCK) sees
# fluorescence as an 8-bit RGB image. Each channel gets a *role*; channels of one role are merged (maximum),
# every channel is stretched between its own percentile limits, and the roles fill the colour channels.

#: What a fluorescence channel shows. "other" channels are kept in the data but not sent to the model.
ROLES = ("nuclear", "cytoplasm", "membrane", "other")

#: Which role fills R, G and B of the control image (see ``fluorescence_to_control``).
FLUORESCENCE_RGB_ROLES = ("nuclear", "cytoplasm", "membrane")

#: Short name of the encoding, recorded in provenance; change it whenever the encoding changes.
FLUORESCENCE_ENCODING = "fluorescence-rgb-v1: R=nuclear G=cytoplasm B=membrane; nuclear only → gray"

#: Default percentiles (low, high) that map to 0 and 1: robust to background noise and hot pixels.
PERCENTILES = (1.0, 99.8)

# Patterns on the lower-cased name with punctuation turned into spaces ("DAPI - Ch1" → "dapi ch1").
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("nuclear", r"dapi\d*|hoechst\d*|draq[57]|nucblue|nuc ?spot|sytox\w*|nucle(?:i|us|ar)|h2b"),
    ("cytoplasm", r"pan ?ck|pan ?cytokeratin|cytokeratin\w*|keratin|ck\d*|krt\d*|eosin|auto ?fluo\w*"
                  r"|cytoplasm\w*"),
    ("membrane", r"cd\d+\w*|na ?k ?atpase|atp1a1|e ?cadherin|ecad|cdh1|pan ?cadherin|wga|epcam|beta catenin"
                 r"|membrane\w*"),
)


def guess_role(channel_name: str) -> str:
    """A channel's role from its name: 'DAPI - Ch1' → nuclear, 'PanCK' → cytoplasm, 'CD45' → membrane.

    Case and punctuation do not matter ('ch0_hoechst', 'Na+/K+-ATPase'); unknown names give 'other'.
    """
    text = re.sub(r"[^a-z0-9]+", " ", str(channel_name).lower()).strip()
    for role, pattern in _ROLE_PATTERNS:
        if re.search(rf"\b(?:{pattern})\b", text):
            return role
    return "other"


def guess_roles(names: list[str]) -> dict[int, str]:
    """Roles of all channels by name, with at most one nuclear channel (the first that looks nuclear).

    Later nuclear-looking channels (DAPI of each cycle in cyclic IF) become 'other'. A single channel with an
    unknown name is taken as nuclear: a one-channel fluorescence image is almost always a nuclear stain.
    """
    roles = {i: guess_role(n) for i, n in enumerate(names)}
    nuclear = [i for i, r in roles.items() if r == "nuclear"]
    for i in nuclear[1:]:
        roles[i] = "other"
    if not nuclear and len(roles) == 1 and roles[0] == "other":
        roles[0] = "nuclear"
    return roles


def as_channels_first(array: Any, *, channel_axis: int | None, name: str = "image") -> Any:
    """(Y, X) → (1, Y, X); a 3-D array → (C, Y, X) with its channels moved from ``channel_axis`` to the front.

    A 3-D array is never guessed: (Y, X, 3) uint16 may be three fluorescence channels or a 16-bit RGB image,
    (3, Y, X) a channel stack or a tiny z-stack, so a 3-D array needs ``channel_axis``. Lazy arrays stay
    lazy when they implement ``moveaxis`` (dask does).
    """
    shape = tuple(array.shape)
    if len(shape) == 2:
        if channel_axis is not None:
            raise ConditioningError(
                f"'{name}' is 2-D {shape} (one channel), but channel_axis={channel_axis} was given: "
                "leave channel_axis unset for a single channel."
            )
        return array[None]
    if len(shape) != 3:
        raise ConditioningError(
            f"'{name}' has shape {shape}; fluorescence must be (Y, X) or 3-D with one channel axis: "
            "pick the plane (time, z) to use first."
        )
    if channel_axis is None:
        raise ConditioningError(
            f"'{name}' has 3 dimensions {shape} but no channel axis: say which axis holds channels "
            "(channel_axis=0 for (C, Y, X), channel_axis=-1 for (Y, X, C))."
        )
    if not -3 <= channel_axis < 3:
        raise ConditioningError(f"channel_axis={channel_axis} does not exist in '{name}' of shape {shape}.")
    return np.moveaxis(array, channel_axis, 0) if channel_axis % 3 else array


def _finite_values(channel: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(channel)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    elif a.dtype.kind not in "iuf":
        raise ConditioningError(f"Channel '{name}' has unsupported dtype {a.dtype}; use integers or floats.")
    if a.size == 0:
        raise ConditioningError(f"Channel '{name}' is empty (shape {a.shape}).")
    if a.dtype.kind == "f":
        a = a[np.isfinite(a)]
        if a.size == 0:
            raise ConditioningError(f"Channel '{name}' holds only NaN (no finite value): nothing to normalise.")
    return a


def channel_limits(channel_or_sample: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1], *,
                   name: str = "channel", allow_constant: bool = False) -> tuple[float, float]:
    """Intensities (lo, hi) at the ``low`` and ``high`` percentiles, NaN and ±inf ignored.

    Pass the whole channel, a lower pyramid level, or a sample of tiles: the limits then serve every tile of
    the full-resolution image, so all tiles share one normalisation (per-tile percentiles would make seams).
    When the percentiles coincide (sparse signal on a flat background) hi falls back to the maximum; a
    constant channel raises, unless ``allow_constant`` (then lo == hi == its value).
    """
    if not 0 <= low < high <= 100:
        raise ConditioningError(f"Percentiles must satisfy 0 ≤ low < high ≤ 100, got ({low}, {high}).")
    values = _finite_values(channel_or_sample, name)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        hi = float(np.max(values))
    if hi <= lo:
        if not allow_constant:
            raise ConditioningError(
                f"Channel '{name}' is constant (value {lo:g}): nothing to normalise. "
                "Choose another channel, or set its role to 'other'."
            )
        lo = hi = float(np.min(values))
    return lo, hi


def normalize_percentile(channel: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1], *,
                         limits: tuple[float, float] | None = None, name: str = "channel",
                         allow_constant: bool = False) -> np.ndarray:
    """A channel of any numeric dtype → float32 in [0, 1]: lo ↦ 0, hi ↦ 1, clipped; NaN ↦ 0.

    ``limits`` (lo, hi) from ``channel_limits`` make tiles of one image share the same stretch; without them
    the channel's own percentiles are used. Equal limits (an allowed constant channel) give a step: 1 above
    the value, 0 elsewhere.
    """
    a = np.asarray(channel)
    if limits is None:
        lo, hi = channel_limits(a, low, high, name=name, allow_constant=allow_constant)
    else:
        lo, hi = float(limits[0]), float(limits[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ConditioningError(f"Limits of channel '{name}' must be finite with low ≤ high, got {limits}.")
    x = a.astype(np.float32, copy=False) if a.dtype.kind in "fiu" else np.asarray(a, np.float32)
    if hi == lo:
        out = (x > hi).astype(np.float32)
    else:
        out = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False)


def check_roles(roles: dict[int, str], n_channels: int, name: str = "image") -> None:
    """Every role is known and points to an existing channel; at least one channel is sent to the model."""
    for index, role in roles.items():
        if role not in ROLES:
            raise ConditioningError(f"Unknown role '{role}' for channel {index}; choose one of {', '.join(ROLES)}.")
        if not isinstance(index, (int, np.integer)) or not 0 <= index < n_channels:
            raise ConditioningError(
                f"Role '{role}' points to channel {index}, but '{name}' has {n_channels} channel"
                f"{'s' if n_channels != 1 else ''} (0–{n_channels - 1})."
            )
    if not any(r != "other" for r in roles.values()):
        raise ConditioningError(
            f"No channel of '{name}' has a role: mark the nuclear channel (DAPI, Hoechst) at least."
        )


def fluorescence_limits(
    channels: np.ndarray, roles: dict[int, str], low: float = PERCENTILES[0], high: float = PERCENTILES[1],
    *, names: list[str] | None = None,
) -> dict[int, tuple[float, float]]:
    """``channel_limits`` of every channel that has a role (not 'other'), from (C, Y, X) data or a sample."""
    check_roles(roles, len(channels))
    return {i: channel_limits(channels[i], low, high, name=names[i] if names else f"channel {i}")
            for i, r in sorted(roles.items()) if r != "other"}


def fluorescence_to_control(channels: np.ndarray, roles: dict[int, str], *,
                            limits: dict[int, tuple[float, float]], name: str = "image") -> np.ndarray:
    """Fluorescence channels (C, H, W) with roles → control image (H, W, 3) uint8.

    The encoding (``FLUORESCENCE_ENCODING``), kept in this one function so that it is easy to swap for the
    one a given IF ControlNet was trained on:

    * every channel with a role is stretched to [0, 1] between its ``limits`` (lo ↦ 0, hi ↦ 1);
      channels of the same role are merged by their maximum; 'other' channels are ignored;
    * nuclear is the only role → gray image, the nuclear signal in R, G and B (a DAPI-only input, as in
      nuclei-only IF→H&E);
    * otherwise R, G, B = nuclear, cytoplasm, membrane (``FLUORESCENCE_RGB_ROLES``), a missing role black.

    ``limits`` are required and shared by all tiles of an image (see ``channel_limits``): the encoding is
    then pixel-wise, so a tile's control equals the crop of the whole image's control (no seams).
    """
    chans = np.asarray(channels)
    if chans.ndim != 3:
        raise ConditioningError(
            f"Expected fluorescence channels (C, H, W), got shape {chans.shape}; see as_channels_first."
        )
    check_roles(roles, chans.shape[0], name)
    missing = [i for i, r in roles.items() if r != "other" and i not in limits]
    if missing:
        raise ConditioningError(f"No normalisation limits for channel(s) {missing} of '{name}'; "
                                "compute them with fluorescence_limits.")
    merged: dict[str, np.ndarray] = {}
    for index, role in sorted(roles.items()):
        if role == "other":
            continue
        norm = normalize_percentile(chans[index], limits=limits[index], name=f"{name}[{index}]")
        merged[role] = np.maximum(merged[role], norm) if role in merged else norm
    if set(merged) == {"nuclear"}:
        planes = [merged["nuclear"]] * 3
    else:
        zero = np.zeros(chans.shape[1:], np.float32)
        planes = [merged.get(role, zero) for role in FLUORESCENCE_RGB_ROLES]
    return np.rint(np.stack(planes, axis=-1) * 255).astype(np.uint8)


def parse_channel_roles(text: str, channel_names: list[str], *, name: str = "image") -> dict[int, str]:
    """Roles from ``"DAPI=nuclear,FITC=cytoplasm"`` (the CLI's ``--channels``): channel name or index = role.

    Names match the names the file stores, ignoring case; channels not listed get 'other'. Errors name the
    channel or role that was not understood and list what the file has.
    """
    roles = dict.fromkeys(range(len(channel_names)), "other")
    lowered = [str(n).strip().lower() for n in channel_names]
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(channel_names)) or "none"
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, role = (s.strip() for s in item.partition("="))
        if not sep or not key or not role:
            raise ConditioningError(f"'{item}' is not CHANNEL=ROLE (e.g. DAPI=nuclear,FITC=cytoplasm).")
        if role.lower() not in ROLES:
            raise ConditioningError(f"Unknown role '{role}' for channel '{key}'; choose one of {', '.join(ROLES)}.")
        if key.lower() in lowered:
            index = lowered.index(key.lower())
        elif key.isdigit() and int(key) < len(channel_names):
            index = int(key)
        else:
            raise ConditioningError(f"'{name}' has no channel '{key}'; its channels are: {listed}.")
        roles[index] = role.lower()
    check_roles(roles, len(channel_names), name)
    return roles
