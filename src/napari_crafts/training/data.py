"""Read a training set in the ``napari-crafts-pairs-v1`` format (written by ``napari-crafts pairs``).

    DATASET/dataset.json                 card: "format", "mpp" (model µm/px), "tile_px", sources, …
    DATASET/{train,test}/metadata.jsonl  one JSON per tile: id, he, control_labels, control_fluorescence,
                                         caption, category, …
    DATASET/{train,test}/he/*.png …      tile_px² RGB uint8

Tiles are small (128² px), so a split is read into memory once as uint8 arrays. Batches are drawn by step
number alone (``batch_indices``): the order is a seeded permutation per epoch, so a run resumed at step k
sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "napari-crafts-pairs-v1"
#: Control kinds in a pairs set, by generation mode.
CONTROL_KEYS = {"labels": "control_labels", "fluorescence": "control_fluorescence"}


class DatasetError(ValueError):
    """A training set that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class PairRecord:
    id: str
    he: Path
    controls: dict[str, Path]
    caption: str
    category: str | None


@dataclass
class PairsSplit:
    """One split (train or test) of a pairs set, with its card."""

    root: Path
    split: str
    card: dict[str, Any]
    records: list[PairRecord]

    @property
    def mpp(self) -> float:
        return float(self.card["mpp"])

    @property
    def tile_px(self) -> int:
        return int(self.card["tile_px"])

    def modes(self) -> list[str]:
        """Control modes every record of this split has (``labels``, ``fluorescence``)."""
        return [m for m in CONTROL_KEYS if self.records and all(m in r.controls for r in self.records)]


@dataclass
class TileArrays:
    """A split in memory: H&E (N, S, S, 3) uint8, controls per mode, captions and categories per tile."""

    he: np.ndarray
    controls: dict[str, np.ndarray] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.he)


def _read_card(root: Path) -> dict[str, Any]:
    card_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"Dataset {root} does not exist: build one with 'napari-crafts pairs'.")
    if not card_path.is_file():
        raise DatasetError(f"{root} has no dataset.json: it is not a napari-crafts pairs set "
                           "(build one with 'napari-crafts pairs').")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{card_path} is not valid JSON ({exc}).") from None
    if card.get("format") != FORMAT:
        raise DatasetError(f"{card_path} has format {card.get('format')!r}, expected '{FORMAT}'.")
    for key in ("mpp", "tile_px"):
        if key not in card:
            raise DatasetError(f"{card_path} has no '{key}'.")
    return card


def open_pairs(path: str | Path, split: str = "train", *, manifest: str | Path | None = None) -> PairsSplit:
    """The records of one split; captions/categories from the metadata, or from ``manifest`` where it has them."""
    root = Path(path)
    card = _read_card(root)
    meta = root / split / "metadata.jsonl"
    if not meta.is_file():
        raise DatasetError(f"{root} has no {split}/metadata.jsonl.")
    overrides = read_manifest(manifest) if manifest else {}
    records = []
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rid = str(row["id"])
            he = root / split / row["he"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{meta} line {n} is not a tile record ({type(exc).__name__}: {exc}).") from None
        controls = {mode: root / split / row[key] for mode, key in CONTROL_KEYS.items() if row.get(key)}
        caption, category = row.get("caption") or "", row.get("category")
        if rid in overrides:
            caption, category = overrides[rid].get("caption", caption), overrides[rid].get("category", category)
        records.append(PairRecord(rid, he, controls, str(caption), None if category is None else str(category)))
    if not records:
        raise DatasetError(f"{meta} lists no tiles: the {split} split is empty (rebuild the set with more "
                           "tissue, or a lower --min-tissue).")
    return PairsSplit(root, split, card, records)


def read_manifest(path: str | Path) -> dict[str, dict[str, str | None]]:
    """Captions and categories by tile id from a CSV (columns id, caption[, category]) or JSON file.

    JSON: a list of {"id", "caption", "category"} objects, or a mapping id → {"caption", "category"}.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Caption manifest {path} does not exist.")
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"Caption manifest {path} is not valid JSON ({exc}).") from None
        rows = [{"id": k, **v} for k, v in data.items()] if isinstance(data, dict) else list(data)
    out: dict[str, dict[str, str | None]] = {}
    for row in rows:
        if "id" not in row or "caption" not in row:
            raise DatasetError(f"Caption manifest {path}: every entry needs 'id' and 'caption' ({row}).")
        category = row.get("category")
        out[str(row["id"])] = {"caption": str(row["caption"]), "category": category or None}
    return out


def _read_png(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read tile {path} ({exc}).") from None
    if rgb.shape != (size, size, 3):
        raise DatasetError(f"Tile {path} is {rgb.shape[1]}×{rgb.shape[0]} px; the dataset card says {size}² px.")
    return rgb


def load_arrays(split: PairsSplit, modes: list[str] | tuple[str, ...] = ()) -> TileArrays:
    """Read every H&E tile and the controls of ``modes`` into memory."""
    s = split.tile_px
    for mode in modes:
        missing = [r.id for r in split.records if mode not in r.controls]
        if missing:
            raise DatasetError(f"{len(missing)} tiles of {split.root}/{split.split} have no {CONTROL_KEYS[mode]} "
                               f"(e.g. {missing[0]}): rebuild the pairs with that control, or train other modes.")
    he = np.stack([_read_png(r.he, s) for r in split.records])
    controls = {m: np.stack([_read_png(r.controls[m], s) for r in split.records]) for m in modes}
    return TileArrays(he, controls, [r.caption for r in split.records], [r.category for r in split.records],
                      [r.id for r in split.records])


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations/flips (k in 0–7) of (…, H, W, C) images: pixel-exact, so controls stay aligned."""
    out = np.rot90(images, k % 4, axes=(-3, -2))
    if k >= 4:
        out = out[..., ::-1, :]
    return np.ascontiguousarray(out)


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The tile order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, step: int, seed: int) -> np.ndarray:
    """Tile indices of batch ``step`` (0-based): consecutive slices of the per-epoch permutations."""
    start = step * batch
    idx: list[int] = []
    while len(idx) < batch:
        epoch, pos = divmod(start + len(idx), n)
        order = epoch_order(n, epoch, seed)
        idx.extend(order[pos: pos + batch - len(idx)].tolist())
    return np.asarray(idx)
