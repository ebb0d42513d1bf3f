"""What a synthetic dataset will hold, decided and checked before any model loads (no Qt, no torch).

A :class:`SynthPlan` lists one :class:`Item` per image: its id, where its PNG goes, its class and prompt (prompts
→ classes), or the label tile it is drawn from and how that tile was augmented (masks → paired images), and its
seed. Everything a user can get wrong (an empty prompt file, a class with no prompt, a labels folder with no
images or with mixed pixel sizes, masks that are not integer labels, a count of 0) is a :class:`SynthError`
with one line that says what to do, raised here, before anything is written.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The two kinds of dataset: prompts → class folders, label tiles → paired images and masks.
KINDS = ("classes", "pairs")
#: ``--prompts presets``: one class per TCGA project (generation.prompts).
PRESETS = "presets"
#: Label files read from a folder (one tile each) or cut into tiles (one large image).
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
#: Pixel sizes of the label files must agree to this relative tolerance.
MPP_RTOL = 0.01
#: Most images one plan may hold (a typo such as --count 1000000 is refused, not started).
MAX_ITEMS = 10_000_000
#: Fraction of the nuclei that ``--augment``'s dropout removes from an augmented copy.
DROPOUT = 0.1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SynthError(ValueError):
    """Input a dataset cannot be made from; the message is one line that names it and says what to do."""


@dataclass(frozen=True)
class MaskRef:
    """A label tile: ``box`` (y, x, height, width) of the labels file ``path`` at ``mpp`` µm/px."""

    path: str
    box: tuple[int, int, int, int]
    mpp: float


@dataclass(frozen=True)
class Item:
    """One image of the dataset."""

    id: str
    file_name: str  # the PNG, relative to the dataset folder
    seed: int
    prompt: str
    cls: str | None = None  # prompts → classes: the class (folder name)
    mask: MaskRef | None = None  # masks → pairs: the label tile drawn from
    copy: int = 0  # masks → pairs: which of the --count images of this tile
    augment: tuple[str, ...] = ()  # masks → pairs: what --augment did to the tile (in order)

    @property
    def mask_name(self) -> str | None:
        """The mask TIFF of a pair, relative to the dataset folder (None for class images)."""
        return f"masks/{self.id}.tif" if self.mask is not None else None


@dataclass(frozen=True)
class SynthPlan:
    kind: str
    items: tuple[Item, ...]
    inputs: tuple[str, ...]  # the files the dataset is made from (never written)
    made_from: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    size: int = 0  # prompts → classes: image side in px (at the model's pixel size)

    @property
    def classes(self) -> list[str]:
        return sorted({i.cls for i in self.items if i.cls is not None})

    def record(self) -> dict[str, Any]:
        """The plan as JSON (what ``--resume`` compares: a resumed run must make exactly this)."""
        return {
            "kind": self.kind,
            "size": self.size,
            "made_from": self.made_from,
            "notes": list(self.notes),
            "items": [asdict(i) for i in self.items],
        }


def safe_name(text: str) -> str:
    """``text`` as a file or folder name (letters, digits, ``._-``; other runs become ``_``)."""
    return _SAFE.sub("_", text.strip()).strip("._") or "_"


def check_count(count: int) -> None:
    if count < 1:
        raise SynthError(f"--count {count}: give at least 1 image per class (or per mask).")


# --------------------------------------------------------------------------------------------- prompts → classes


def read_prompts(spec: str, count: int) -> list[tuple[str, str, int]]:
    """(class, prompt, count) rows from ``presets`` or a CSV file ``class,prompt[,count]`` (header optional)."""
    from ..generation.prompts import TCGA_CANCER_TYPES, preset_prompt

    check_count(count)
    if spec == PRESETS:
        return [(code, preset_prompt(code), count) for code in TCGA_CANCER_TYPES]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SynthError(f"--prompts {spec}: no such file; give 'presets' or a CSV file of class,prompt[,count].")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SynthError(f"--prompts {path}: cannot read it as UTF-8 text ({err}).") from None
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["class", "prompt"]:
        rows = rows[1:]
    if not rows:
        raise SynthError(f"--prompts {path} holds no prompts: write one line per prompt, 'class,prompt[,count]'.")
    out = []
    for n, row in enumerate(rows, 1):
        cls, prompt = (row[0].strip(), row[1].strip()) if len(row) > 1 else (row[0].strip(), "")
        if not cls:
            raise SynthError(f"--prompts {path}, row {n}: the class is empty; write 'class,prompt[,count]'.")
        if not prompt:
            raise SynthError(f"--prompts {path}: class '{cls}' has no prompt (row {n}); write 'class,prompt[,count]'.")
        if safe_name(cls) != cls:
            raise SynthError(
                f"--prompts {path}: class '{cls}' (row {n}) is not a usable folder name; use letters, "
                f"digits, '.', '_' and '-' (e.g. '{safe_name(cls)}')."
            )
        n_images = count
        if len(row) > 2 and row[2].strip():
            try:
                n_images = int(row[2])
            except ValueError:
                n_images = -1
            if n_images < 1:
                raise SynthError(f"--prompts {path}, row {n}: count '{row[2].strip()}' must be an integer ≥ 1.")
        out.append((cls, prompt, n_images))
    return out


def plan_classes(spec: str, *, count: int, seed: int = 0, size: int = 256) -> SynthPlan:
    """Prompts → classes: ``count`` images per prompt row (or the row's own count), seeds ``seed``, ``seed+1``, …"""
    rows = read_prompts(spec, count)
    _check_total(sum(r[2] for r in rows))
    items: list[Item] = []
    per_class = dict.fromkeys((r[0] for r in rows), 0)
    for cls, prompt, n_images in rows:
        for _ in range(n_images):
            k = per_class[cls]
            per_class[cls] += 1
            item_id = f"{cls}-{k:05d}"
            items.append(Item(item_id, f"images/{cls}/{item_id}.png", seed + len(items), prompt, cls=cls))
    inputs: tuple[str, ...] = () if spec == PRESETS else (str(Path(spec).expanduser().resolve()),)
    made_from = {
        "prompts": inputs[0] if inputs else "generation.prompts TCGA presets",
        "classes": len(per_class),
        "images_per_class": per_class,
    }
    return SynthPlan("classes", tuple(items), inputs, made_from, size=size)


def _check_total(n: int) -> None:
    if n > MAX_ITEMS:
        raise SynthError(f"The plan holds {n:,} images, more than {MAX_ITEMS:,}: lower --count.")


# --------------------------------------------------------------------------------------------- masks → pairs


def read_labels(path: Path, mpp: float | None) -> tuple[np.ndarray, float | None]:
    """A labels file as a 2-D integer array and its pixel size (``mpp`` wins over the file's)."""
    data = label_pixels(path)
    if mpp is not None or path.suffix.lower() == ".png":
        return data, mpp
    from ..io.slide import SlideError, open_slide

    try:
        return data, open_slide(path).mpp
    except SlideError as err:
        raise SynthError(str(err)) from None


def label_pixels(path: Path) -> np.ndarray:
    """The pixels of a labels file (PNG with Pillow, TIFF with tifffile) as 2-D integer instance labels."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as img:
                data = np.asarray(img)
        else:
            import tifffile

            data = np.squeeze(np.asarray(tifffile.imread(path, level=0)))
    except (OSError, ValueError) as err:
        raise SynthError(f"--labels {path}: cannot read it as an image ({type(err).__name__}: {err}).") from None
    if data.ndim != 2:
        raise SynthError(
            f"--labels {path}: has shape {data.shape}, not a 2-D labels image (0 = background, 1, 2, … = nuclei)."
        )
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or (data < 0).any() or (data != np.floor(data)).any():
            raise SynthError(
                f"--labels {path}: holds fractional, negative or NaN values: masks must be integer "
                "instance labels (0 = background, 1, 2, … = nuclei)."
            )
        return data.astype(np.int32)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind not in "iu" or (data.dtype.kind == "i" and data.size and data.min() < 0):
        raise SynthError(
            f"--labels {path}: {data.dtype} values are not integer instance labels (0 = background, 1, 2, … = nuclei)."
        )
    return data


def _label_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in LABEL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def plan_pairs(
    labels: str | Path,
    *,
    count: int,
    seed: int = 0,
    tile_px: int = 256,
    mpp: float | None = None,
    augment: bool = False,
) -> SynthPlan:
    """Masks → pairs: ``count`` images per label tile (a folder of tiles, or one large image cut into tiles)."""
    check_count(count)
    root = Path(labels).expanduser()
    if not root.exists():
        raise SynthError(f"--labels {root}: no such file or folder.")
    notes: list[str] = []
    tiles: list[tuple[str, MaskRef]] = []  # (name, tile)
    if root.is_dir():
        files = _label_files(root)
        if not files:
            raise SynthError(
                f"--labels {root}: no label images in this folder (looked for {', '.join(LABEL_SUFFIXES)} files)."
            )
        sizes: dict[Path, float | None] = {}
        empty = 0
        for f in files:
            data, sizes[f] = read_labels(f, mpp)
            if not data.any():
                empty += 1
                continue
            tiles.append(
                (
                    safe_name(f.relative_to(root).with_suffix("").as_posix().replace("/", "-")),
                    MaskRef(str(f.resolve()), (0, 0, *data.shape), 0.0),
                )
            )
        unknown = [f for f, v in sizes.items() if v is None]
        if unknown:
            raise SynthError(f"--labels {unknown[0]}: the file has no pixel size; pass --mpp (µm/px).")
        known = [v for v in sizes.values() if v is not None]
        lo, hi = min(known), max(known)
        if hi > lo * (1 + MPP_RTOL):
            small = next(f for f, v in sizes.items() if v == lo)
            large = next(f for f, v in sizes.items() if v == hi)
            raise SynthError(
                f"--labels {root}: mixed pixel sizes ({small.name} {lo:g} µm/px, {large.name} {hi:g} "
                "µm/px): put tiles of one pixel size in a folder, or pass --mpp to override them all."
            )
        tiles = [(n, MaskRef(t.path, t.box, lo)) for n, t in tiles]
        if empty:
            notes.append(f"{empty} label file(s) hold no nuclei: skipped.")
        made_from = {"labels": str(root.resolve()), "label_files": len(files), "mpp": lo}
    else:
        data, found = read_labels(root, mpp)
        if found is None:
            raise SynthError(f"--labels {root}: the file has no pixel size; pass --mpp (µm/px).")
        H, W = data.shape
        if min(H, W) < tile_px:
            raise SynthError(f"--labels {root}: {H}×{W} px is smaller than one {tile_px}-px tile; lower --tile-px.")
        empty = 0
        for y in range(0, H - tile_px + 1, tile_px):
            for x in range(0, W - tile_px + 1, tile_px):
                if not data[y : y + tile_px, x : x + tile_px].any():
                    empty += 1
                    continue
                tiles.append(
                    (f"{safe_name(root.stem)}-y{y}-x{x}", MaskRef(str(root.resolve()), (y, x, tile_px, tile_px), found))
                )
        if empty:
            notes.append(f"{empty} tile(s) of {tile_px} px hold no nuclei: skipped.")
        if H % tile_px or W % tile_px:
            notes.append(
                f"the last {H % tile_px} row(s) and {W % tile_px} column(s) of px do not fill a tile: left out."
            )
        made_from = {"labels": str(root.resolve()), "shape": [H, W], "tile_px": tile_px, "mpp": found}
    if not tiles:
        raise SynthError(f"--labels {root}: no tile holds a nucleus (all labels are 0).")
    _check_total(len(tiles) * count)
    items: list[Item] = []
    for k, (name, ref) in enumerate(tiles):
        for j in range(count):
            item_id = f"{name}-{j:03d}"
            s = seed + len(items)
            ops = augment_ops(s, k, j) if augment else ()
            items.append(Item(item_id, f"images/{item_id}.png", s, "", mask=ref, copy=j, augment=ops))
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):  # two files with one safe name: number them instead
        items = [
            Item(
                f"{k:06d}-{i.id}",
                f"images/{k:06d}-{i.id}.png",
                i.seed,
                i.prompt,
                mask=i.mask,
                copy=i.copy,
                augment=i.augment,
            )
            for k, i in enumerate(items)
        ]
    made_from.update(
        {
            "tiles": len(tiles),
            "images_per_tile": count,
            "augment": f"copies 1… of each tile: 90° turns, flips, dropout of {DROPOUT:.0%} of the nuclei "
            "(seeded; each image's ops in metadata.jsonl)"
            if augment
            else None,
        }
    )
    inputs = (str(root.resolve()),)
    return SynthPlan("pairs", tuple(items), inputs, made_from, tuple(notes))


# --------------------------------------------------------------------------------------------- augmentation


def augment_ops(seed: int, tile: int, copy: int) -> tuple[str, ...]:
    """The augmentation of copy ``copy`` of a tile (copy 0: none): 'rot90x<k>', 'flip-lr', 'dropout:<seed>'."""
    if copy == 0:
        return ()
    rng = np.random.default_rng([seed, tile, copy])
    ops = [f"rot90x{int(rng.integers(1, 4))}"] if rng.random() < 0.75 else []
    if rng.random() < 0.5:
        ops.append("flip-lr")
    if rng.random() < 0.5:
        ops.append(f"dropout:{int(rng.integers(2**31))}")
    return tuple(ops) or ("flip-lr",)


def apply_augment(labels: np.ndarray, ops: tuple[str, ...]) -> np.ndarray:
    """``labels`` after ``ops`` (see :func:`augment_ops`); dropout sets ``DROPOUT`` of the nuclei to 0."""
    out = labels
    for op in ops:
        if op.startswith("rot90x"):
            out = np.rot90(out, int(op[len("rot90x") :]))
        elif op == "flip-lr":
            out = out[:, ::-1]
        elif op.startswith("dropout:"):
            ids = np.unique(out)
            ids = ids[ids != 0]
            n = int(math.floor(len(ids) * DROPOUT))
            if n and len(ids) > n:
                drop = np.random.default_rng(int(op.split(":")[1])).choice(ids, n, replace=False)
                out = np.where(np.isin(out, drop), 0, out)
        else:
            raise ValueError(f"Unknown augmentation {op!r}.")
    return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=2)
def _labels_file(path: str) -> np.ndarray:
    return label_pixels(Path(path))


def read_mask(item: Item) -> np.ndarray:
    """The exact labels ``item`` is drawn from (its tile, augmented)."""
    assert item.mask is not None
    data = _labels_file(item.mask.path)
    y, x, h, w = item.mask.box
    return apply_augment(data[y : y + h, x : x + w], item.augment)
