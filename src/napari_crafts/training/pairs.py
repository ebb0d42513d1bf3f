"""Training pairs from real slides: (control image, H&E tile) at the model's pixel size, split by region.

The control images are made by the code inference uses (``LabelsSource.control`` / ``FluorescenceSource.control``,
the functions ``generation.region.render_tiles`` calls) and the H&E window is resampled with
``generation.sources.resize``, so a model trained on these pairs sees at training what it sees at inference.
A tile of ``tile_px`` model px covers ``round(tile_px / (source_mpp / mpp))`` source px (``plan_region``'s rule).

Output (the format ``napari-crafts-pairs-v1``; the training code reads it)::

    DATASET/dataset.json                        the card: sources and their sha256, scales, method, split, counts
    DATASET/{train,test}/metadata.jsonl         one JSON object per tile
    DATASET/{train,test}/{he,control_labels,control_fluorescence}/<id>.png   tile_px² RGB uint8
    DATASET/preview.png                         a few train and test tiles beside their controls

The run writes into a hidden folder next to ``out`` and renames it at the end: a failed or cancelled run
leaves nothing behind, and ``overwrite`` replaces only a folder this builder wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._generators import run
from ..evaluation.metrics import tissue_mask
from ..export.safety import check_output, check_removable, mark_folder, remove_output
from ..generation.conditioning import (
    CONTROL_ENCODINGS,
    FLUORESCENCE_ENCODING,
    FLUORESCENCE_RGB_V1,
    LABELS_ENCODING_TEXT,
    NUCLEI_V1,
    TISSUE_ENCODINGS,
    parse_channel_roles,
)
from ..generation.sources import FluorescenceSource, LabelsSource, read_padded, resize
from ..io.slide import Slide, open_slide
from ..model.card import CRAFTS_MASK_PROMPT, FLUORESCENCE_PROMPT, ModelCard
from ..model.catalog import resolve
from ..provenance import package_version
from .nuclei import ALGORITHM, NucleiError, NucleiParams, iter_segment_slide
from .stain import SIMULATED_IF_HOW, ReadRGB, simulated_if_source

FORMAT = "napari-crafts-pairs-v1"
CARD = "dataset.json"
#: The split folders and the tile folders inside each (all that the builder writes, with the card,
#: preview.png and each split's metadata.jsonl).
TILE_KINDS = ("he", "control_labels", "control_fluorescence")
SPLITS = ("train", "test")
#: What the builder writes in a dataset folder (``export.safety.mark_folder``): ``--overwrite`` replaces a dataset
#: only while it holds nothing else.
CONTENTS = (CARD, "preview.png", *(f"{s}/metadata.jsonl" for s in SPLITS),
            *(f"{s}/{k}/*.png" for s in SPLITS for k in TILE_KINDS))
RESAMPLING = ("H&E: generation.sources.resize (area-averaged when shrinking), as generated tiles are; controls: "
              "LabelsSource.control / FluorescenceSource.control, the functions inference calls")
TISSUE_RULE = "metrics.tissue_mask (largest channel OD > 0.1) on the H&E window at source resolution"
#: The tissue drawn into ``NUCLEI_TISSUE_V1`` controls: ``TISSUE_RULE``, closed over ``CONTROL_TISSUE_CLOSE_UM`` (the
#: pale gaps between fibres are tissue, as the coarse masks of generation say) with specks and pin-holes smaller
#: than ``CONTROL_TISSUE_SPECK_UM2`` removed (dust on glass, single pale pixels).
CONTROL_TISSUE_CLOSE_UM = 2.0
CONTROL_TISSUE_SPECK_UM2 = 25.0
CONTROL_TISSUE_RULE = (f"{TISSUE_RULE}, binary closing with a disc of {CONTROL_TISSUE_CLOSE_UM:g} µm radius, then "
                       f"pieces of tissue and holes under {CONTROL_TISSUE_SPECK_UM2:g} µm² removed")
#: Above this many level-0 pixels, automatic nuclei are kept in a temporary zarr array instead of memory.
IN_MEMORY_LABELS = 2**28
#: Relative difference of pixel sizes still taken as the same scale.
MPP_TOLERANCE = 0.01


class PairsError(ValueError):
    """Input or output the pair builder cannot use; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class PairsOptions:
    """What to build: which controls, at which scale, how to split. Sizes in model px unless named source."""

    nuclei: str | Path | None = "auto"  # "auto", a labels file (TIFF, OME-Zarr, GeoJSON) or None
    fluorescence: str | Path | None = None  # co-registered IF channels (C, Y, X) on the H&E's pixel grid
    channels: str | None = None  # "DAPI=nuclear,panCK=cytoplasm" (name or index = role); None: guessed from names
    simulate_if: bool = False  # nuclear/cytoplasm channels from haematoxylin/eosin OD
    mpp: float | None = None  # the model's µm/px; None = from ``model``'s napari_crafts.json
    model: str | Path | None = None
    source_mpp: float | None = None  # overrides the H&E file's pixel size
    tile_px: int = 512
    stride_px: int | None = None  # None = tile_px // 2
    min_tissue: float = 0.5
    test_band: tuple[int, int | None] | None = None  # rows [y0, y1) in source px; None = the last ``test_fraction``
    test_fraction: float = 0.2
    caption: str | None = None
    category: str | None = None
    control_encoding: str = NUCLEI_V1  # of the labels controls: NUCLEI_V1 or NUCLEI_TISSUE_V1 (tissue from the H&E)
    nuclei_params: NucleiParams = field(default_factory=NucleiParams)


@dataclass(frozen=True)
class PairsProgress:
    """``done`` of ``total`` units of ``stage`` ("nuclei": segmentation blocks, "tiles") are finished."""

    stage: str
    done: int
    total: int
    train: int = 0
    test: int = 0


@dataclass(frozen=True)
class Split:
    """Rows [band_y0, band_y1) are test; train tiles keep ``guard`` source px away from the band."""

    band: tuple[int, int] | None
    guard: int

    def of(self, y: int, size: int) -> str | None:
        if self.band is None:
            return "train"
        y0, y1 = self.band
        if y >= y0 and y + size <= y1:
            return "test"
        if y + size <= y0 - self.guard or y >= y1 + self.guard:
            return "train"
        return None  # too close to the band: dropped, so no training tile touches a test tile

    def record(self) -> dict[str, Any]:
        return {"rule": "by region: test = tiles inside a band of rows; train = tiles at least guard_px away "
                        "from it; tiles between are dropped" if self.band else "none: every tile is train",
                "axis": "y", "band": list(self.band) if self.band else None, "guard_px": self.guard,
                "units": "level-0 px of the H&E"}


# ------------------------------------------------------------------------------------------------ inputs


def parse_band(text: str) -> tuple[int, int] | tuple[int, None]:
    """'y0:y1' (or 'y0:' for the rest of the slide) in source px."""
    try:
        a, b = text.split(":")
        return (int(a), int(b)) if b.strip() else (int(a), None)
    except ValueError:
        raise PairsError(f"Test band '{text}' is not 'y0:y1' (rows in H&E pixels, e.g. 2400:2967).") from None


def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes; of a folder (OME-Zarr): of its sorted relative paths and their files' sha256."""
    import hashlib

    def of_file(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    if path.is_file():
        return of_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{of_file(p)}\n".encode())
    return h.hexdigest()


def _open_brightfield(path: Path, source_mpp: float | None) -> Slide:
    """The H&E, refused in one line unless it is brightfield RGB(A) with 8-bit samples (an immunofluorescence
    file, a grey or 16-bit image would give near-black tiles and false nuclei)."""
    he = open_slide(path, mpp=source_mpp)
    if he.kind != "rgb":
        level0 = he.levels[0]
        n = int(level0.shape[0]) if he.kind == "channels" else 1
        names = (he.channel_names or []) if he.kind == "channels" else []
        looks = (f"{n} channel{'s' if n != 1 else ''} of {np.dtype(level0.dtype)}"
                 + (f" ({', '.join(names[:4])}{', …' if len(names) > 4 else ''})" if names else "")
                 + (", read as labels" if he.kind == "labels" else ""))
        raise PairsError(f"{path.name} is not a brightfield H&E image: it holds {looks}; pairs needs an RGB(A) "
                         "slide of 8-bit samples (uint8). Give immunofluorescence with --fluorescence beside the H&E.")
    return he


def _model_mpp(options: PairsOptions, model_path: Path | None) -> float:
    if options.mpp is not None:
        if not options.mpp > 0:
            raise PairsError(f"The model's pixel size must be a positive µm/px, got {options.mpp}.")
        return float(options.mpp)
    if model_path is not None:
        card = ModelCard.read(model_path)
        if card.mpp_declared:
            return card.mpp
        raise PairsError(f"Model folder {options.model} does not declare its pixel size (no 'mpp' in its "
                         "napari_crafts.json): pass the model's µm/px with --mpp.")
    raise PairsError("The model's pixel size is unknown: pass --mpp (µm/px the model works at, e.g. 0.5) or "
                     "--model with a folder whose napari_crafts.json declares it.")


def _same_grid(he: Slide, path: Path, shape: tuple[int, int], mpp: float | None, what: str) -> None:
    """Nuclei/IF must lie on the H&E's level-0 pixel grid: same size and (when known) same scale."""
    assert he.mpp is not None
    if mpp is not None and abs(mpp / he.mpp - 1) > MPP_TOLERANCE:
        raise PairsError(f"{what} {path.name} is at {mpp:g} µm/px but the H&E at {he.mpp:g} µm/px: they must "
                         "share the H&E's level-0 pixel grid (export them at the H&E's full resolution).")
    if tuple(shape) != tuple(he.shape):
        raise PairsError(f"{what} {path.name} is {shape[0]}×{shape[1]} px but the H&E is {he.shape[0]}×"
                         f"{he.shape[1]} px: they must share the H&E's level-0 pixel grid.")


def _open_labels(path: Path, he: Slide) -> tuple[LabelsSource, dict[str, Any]]:
    from ..io.geojson import SUFFIXES as GEOJSON_SUFFIXES
    from ..io.geojson import GeoJSONLabels

    if path.suffix.lower() in GEOJSON_SUFFIXES:
        data: Any = GeoJSONLabels(path, shape=he.shape)
        extent = data.polygons.extent
        if extent[0] > he.shape[0] + 1 or extent[1] > he.shape[1] + 1:
            raise PairsError(f"Nuclei {path.name} reach {extent[0]}×{extent[1]} px, beyond the H&E "
                             f"({he.shape[0]}×{he.shape[1]} px): were they drawn on another slide or level?")
        mpp = he.mpp
    else:
        slide = open_slide(path, kind="labels")
        _same_grid(he, path, slide.shape, slide.mpp, "Nuclei")
        data, mpp = slide.levels[0], he.mpp
    source = LabelsSource(data, name=path.name, mpp=mpp)
    return source, {"path": str(path), "role": "labels", "mpp": mpp, "shape": list(he.shape)}


def _open_fluorescence(path: Path, he: Slide, channels: str | None) -> tuple[FluorescenceSource, dict]:
    slide = open_slide(path, kind="channels")
    _same_grid(he, path, slide.shape, slide.mpp, "Fluorescence")
    n = slide.levels[0].shape[0]
    names = slide.channel_names or [f"channel {i}" for i in range(n)]
    roles = parse_channel_roles(channels, names, name=path.name) if channels else None
    source = FluorescenceSource(slide.levels[0], roles=roles, channel_names=names, name=path.name, mpp=he.mpp)
    return source, {"path": str(path), "role": "fluorescence", "mpp": he.mpp, "shape": [n, *he.shape]}


# ------------------------------------------------------------------------------------------------ output


def _save_png(path: Path, rgb: np.ndarray, note: str | None = None) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", f"napari-crafts {package_version()}")
    if note:
        info.add_text("Description", note)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path, pnginfo=info)


def _preview(folder: Path, rows: dict[str, list[dict[str, Any]]], kinds: list[str], per_split: int = 4) -> None:
    """A few train (left) and test (right) tiles, each as H&E then its controls, at ≤ 128 px."""
    from PIL import Image

    def pick(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not items:
            return []
        return [items[i] for i in np.linspace(0, len(items) - 1, min(per_split, len(items))).round().astype(int)]

    chosen = {s: pick(rows[s]) for s in SPLITS}
    n = max(1, *(len(v) for v in chosen.values()))
    side, gap = 128, 4
    cols = len(kinds)
    width = 2 * cols * (side + gap) + 4 * gap
    sheet = np.full((n * (side + gap) + gap, width, 3), 255, np.uint8)
    for s_i, split in enumerate(SPLITS):
        x0 = gap + s_i * (cols * (side + gap) + 3 * gap)
        for r, row in enumerate(chosen[split]):
            for c, kind in enumerate(kinds):
                img = np.asarray(Image.open(folder / split / row[kind]).convert("RGB"))
                y, x = gap + r * (side + gap), x0 + c * (side + gap)
                sheet[y : y + side, x : x + side] = resize(img, side)
    _save_png(folder / "preview.png", sheet, "left: train, right: test; each tile: " + ", ".join(kinds))


# ------------------------------------------------------------------------------------------------ builder


def _positions(shape: tuple[int, int], size: int, stride: int) -> Iterator[tuple[int, int, int, int]]:
    """(row, col, y, x) of every whole tile of ``size`` source px on a ``stride`` grid from (0, 0)."""
    H, W = shape
    for r, y in enumerate(range(0, H - size + 1, stride)):
        for c, x in enumerate(range(0, W - size + 1, stride)):
            yield r, c, y, x


def _band(options: PairsOptions, shape: tuple[int, int], size: int) -> tuple[int, int] | None:
    H = shape[0]
    if options.test_band is not None:
        y0, y1 = options.test_band
        y1 = H if y1 is None else y1
        if y1 <= y0:
            swap = f"; did you mean {y1}:{y0}?" if y1 < y0 else "."
            raise PairsError(f"Test band {y0}:{y1} is {'reversed' if y1 < y0 else 'empty'}: give Y0:Y1 with Y0 < Y1 "
                             f"(rows in H&E pixels){swap}")
        if not 0 <= y0 < y1 <= H:
            raise PairsError(f"Test band {y0}:{y1} lies outside the H&E's rows 0:{H}.")
    elif options.test_fraction > 0:
        if not options.test_fraction < 1:
            raise PairsError(f"Test fraction must be in [0, 1), got {options.test_fraction}.")
        y0, y1 = H - round(H * options.test_fraction), H
    else:
        return None
    if y1 - y0 < size:
        raise PairsError(f"Test band {y0}:{y1} is {y1 - y0} rows high, less than one tile ({size} source px): "
                         "make it taller or the tiles smaller.")
    return y0, y1


def _check_options(options: PairsOptions) -> None:
    if options.tile_px < 8:
        raise PairsError(f"Tile size must be at least 8 px, got {options.tile_px}.")
    if options.stride_px is not None and options.stride_px <= 0:
        raise PairsError(f"Stride must be a positive number of px, got {options.stride_px}.")
    if not 0 <= options.min_tissue <= 1:
        raise PairsError(f"--min-tissue is a fraction in [0, 1], got {options.min_tissue}.")
    if options.simulate_if and options.fluorescence is not None:
        raise PairsError("Pass either real fluorescence (--fluorescence) or --simulate-if, not both.")
    if options.channels and options.fluorescence is None:
        raise PairsError("--channels gives the roles of the --fluorescence file's channels: pass --fluorescence too.")
    if options.control_encoding not in CONTROL_ENCODINGS["labels"]:
        raise PairsError(f"Unknown control encoding '{options.control_encoding}'; choose "
                         f"{' or '.join(CONTROL_ENCODINGS['labels'])}.")
    if options.control_encoding != NUCLEI_V1 and options.nuclei is None:
        raise PairsError(f"--control-encoding {options.control_encoding} draws the labels controls: give nuclei "
                         "(--nuclei auto or a labels file).")
    if options.nuclei is None and options.fluorescence is None and not options.simulate_if:
        raise PairsError("No control to pair with the H&E: give nuclei (--nuclei auto or a labels file), "
                         "--fluorescence, or --simulate-if.")


def iter_pairs(he_path: str | Path, out: str | Path, options: PairsOptions = PairsOptions(), *,
               overwrite: bool = False) -> Generator[PairsProgress, None, Path]:
    """Build the dataset, yielding progress (segmentation blocks, then tiles); returns the dataset folder."""
    _check_options(options)
    he_path = Path(he_path).expanduser().resolve()
    out = Path(os.path.abspath(Path(out).expanduser()))  # '..' folded, links kept (a linked output is refused)
    he = _open_brightfield(he_path, options.source_mpp)
    if he.mpp is None:
        raise PairsError(f"{he_path.name} does not say its pixel size: pass it with --source-mpp (µm/px).")
    model_path = None if options.model is None else Path(resolve(str(options.model))).expanduser().resolve()
    mpp = _model_mpp(options, model_path)
    nuclei_path = None if options.nuclei in (None, "auto") else Path(options.nuclei).expanduser().resolve()
    if_path = None if options.fluorescence is None else Path(options.fluorescence).expanduser().resolve()
    inputs = [p for p in (he_path, nuclei_path, if_path, model_path) if p is not None and os.path.lexists(p)]
    out = check_output(out, kind="folder", inputs=inputs, overwrite=overwrite)  # export.safety's rule
    size = max(1, round(options.tile_px / (he.mpp / mpp)))  # plan_region's rule
    stride_px = options.stride_px or max(1, options.tile_px // 2)
    stride = max(1, round(stride_px / (he.mpp / mpp)))
    if size > min(he.shape):
        raise PairsError(f"{he_path.name} ({he.shape[0]}×{he.shape[1]} px) is smaller than one tile "
                         f"({size} source px = {options.tile_px} px at {mpp:g} µm/px): use smaller tiles.")
    split = Split(_band(options, he.shape, size), guard=size)
    read_rgb = _reader(he)

    created = _make_parents(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    mark_folder(work, "training pairs (napari-crafts pairs)", CONTENTS)
    try:
        controls = yield from _open_controls(he, read_rgb, work, options, nuclei_path, if_path)
        caption = options.caption or (CRAFTS_MASK_PROMPT if controls.labels is not None else FLUORESCENCE_PROMPT)
        tiles = _Tiles(work, controls.labels, controls.fluo, size, options.tile_px, caption, options.category,
                       simulated=bool(options.simulate_if), encoding=options.control_encoding, mpp=he.mpp)
        counts = yield from tiles.cut(read_rgb, list(_positions(he.shape, size, stride)), split, options.min_tissue)
        if counts["train"] + counts["test"] == 0:
            raise _nothing_left(he_path, counts, options.min_tissue)
        card = {
            "format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": f"napari-crafts {package_version()}",
            "sources": [{"path": str(s["path"]), "sha256": sha256_path(Path(s["path"])), "role": s["role"],
                         "mpp": s["mpp"], "shape": s["shape"]} for s in controls.sources],
            "source_mpp": he.mpp, "mpp": mpp, "tile_px": options.tile_px, "stride_px": stride_px,
            "size_source_px": size, "stride_source_px": stride, "resampling": RESAMPLING,
            "nuclei": controls.nuclei_card, "fluorescence": controls.fluo_card, "split": split.record(),
            "counts": counts, "conditioning": controls.encodings(options.control_encoding),
            "control_encoding": controls.control_encoding(options.control_encoding),
            **({"control_tissue_rule": CONTROL_TISSUE_RULE} if tiles.draws_tissue else {}),
            "min_tissue": options.min_tissue,
            "tissue_rule": TISSUE_RULE, "caption": caption, "category": options.category, "controls": tiles.kinds[1:],
        }
        (work / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        _preview(work, tiles.rows, tiles.kinds)
        shutil.rmtree(work / ".work", ignore_errors=True)
        _move_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for d in reversed(created):
            _rmdir(d)
        raise
    return out


@dataclass
class _Controls:
    """The control sources of a run and what the card says about them."""

    sources: list[dict[str, Any]]
    labels: LabelsSource | None = None
    fluo: FluorescenceSource | None = None
    nuclei_card: dict[str, Any] | None = None
    fluo_card: dict[str, Any] | None = None

    def encodings(self, labels_encoding: str = NUCLEI_V1) -> dict[str, Any]:
        labels = None
        if self.labels is not None:
            labels = LABELS_ENCODING_TEXT[labels_encoding]
        return {"labels": labels,
                "fluorescence": self.fluo.describe()["encoding"] if self.fluo is not None else None}

    def control_encoding(self, labels_encoding: str) -> dict[str, str]:
        """Mode → control encoding name of the controls written (``train`` copies it into the model's card)."""
        return {**({"labels": labels_encoding} if self.labels is not None else {}),
                **({"fluorescence": FLUORESCENCE_RGB_V1} if self.fluo is not None else {})}


def _open_controls(he: Slide, read_rgb: ReadRGB, work: Path, options: PairsOptions, nuclei_path: Path | None,
                   if_path: Path | None) -> Generator[PairsProgress, None, _Controls]:
    """Nuclei (auto: segmented here, yielding progress; or a file) and fluorescence (a file or simulated)."""
    c = _Controls([{"path": he.path, "role": "he", "mpp": he.mpp, "shape": [*he.shape, 3]}])
    if options.nuclei == "auto":
        c.labels, c.nuclei_card = yield from _auto_nuclei(he, read_rgb, work, options.nuclei_params)
    elif nuclei_path is not None:
        c.labels, record = _open_labels(nuclei_path, he)
        c.sources.append(record)
        c.nuclei_card = {"method": "labels", "path": str(nuclei_path)}
    if if_path is not None:
        c.fluo, record = _open_fluorescence(if_path, he, options.channels)
        c.sources.append(record)
        c.fluo_card = {"simulated": False, "how": f"real immunofluorescence from {if_path.name}"}
    elif options.simulate_if:
        c.fluo = simulated_if_source(read_rgb, he.shape, mpp=he.mpp, name=he.path.name, path=str(he.path))
        c.fluo_card = {"simulated": True, "how": SIMULATED_IF_HOW}
    if c.fluo is not None and c.fluo_card is not None:
        info = c.fluo.describe()
        limits = {str(ch["index"]): ch["limits"] for ch in info["channels"] if ch["limits"] is not None}
        c.fluo_card |= {"channels": info["channels"], "limits": limits, "limits_from": info["limits_from"],
                        "encoding": FLUORESCENCE_ENCODING}
    return c


def build_pairs(he_path: str | Path, out: str | Path, *, overwrite: bool = False,
                on_progress: Callable[[PairsProgress], None] | None = None, **options: Any) -> Path:
    """Build a training set from an H&E slide (see :class:`PairsOptions` for ``options``); returns its folder.

    ``build_pairs("slide.svs", "pairs", nuclei="auto", simulate_if=True, mpp=0.5, tile_px=128)``
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(PairsOptions)}
    if unknown:
        raise TypeError(f"build_pairs() got unknown options: {', '.join(sorted(unknown))}")
    # a callback that raises (Ctrl-C, a cancel) closes the run, which cleans up what it wrote
    return run(iter_pairs(he_path, out, PairsOptions(**options), overwrite=overwrite), on_progress)


def _reader(he: Slide) -> ReadRGB:
    def read(y: int, x: int, h: int, w: int) -> np.ndarray:
        return he.read(0, y, x, h, w)

    return read


def _auto_nuclei(he: Slide, read_rgb: ReadRGB, work: Path, params: NucleiParams,
                 ) -> Generator[PairsProgress, None, tuple[LabelsSource, dict[str, Any]]]:
    assert he.mpp is not None
    H, W = he.shape
    if H * W <= IN_MEMORY_LABELS:
        store: Any = np.zeros((H, W), np.int32)
    else:
        import zarr

        store = zarr.create_array(work / ".work" / "nuclei.zarr", shape=(H, W), chunks=(2048, 2048),
                                  dtype="int32", fill_value=0)
    gen = iter_segment_slide(read_rgb, he.shape, store, mpp=he.mpp, params=params)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            threshold, stats = stop.value
            break
        except NucleiError as err:
            raise PairsError(f"{he.path.name}: {err}") from None
        yield PairsProgress("nuclei", done, total)
    if stats.count == 0:
        raise PairsError(f"Automatic segmentation found no nuclei in {he.path.name} (haematoxylin threshold "
                         f"{threshold:.3f}): check the stain, or pass nuclei labels with --nuclei FILE.")
    card = {"method": "auto", "algorithm": ALGORITHM, "parameters": params.record(),
            "threshold_h_od": round(threshold, 5), "found": stats.record(he.mpp)}
    return LabelsSource(store, name=f"{he.path.name} (auto nuclei)", mpp=he.mpp), card


class _Tiles:
    """Cuts tiles and writes their PNGs and metadata lines into ``folder/<split>/``."""

    def __init__(self, folder: Path, labels: LabelsSource | None, fluo: FluorescenceSource | None, size: int,
                 tile_px: int, caption: str, category: str | None, *, simulated: bool, encoding: str = NUCLEI_V1,
                 mpp: float = 0.5) -> None:
        self.folder, self.labels, self.fluo, self.size, self.tile_px = folder, labels, fluo, size, tile_px
        self.caption, self.category, self.simulated = caption, category, simulated
        self.draws_tissue = labels is not None and encoding in TISSUE_ENCODINGS
        self.mpp = mpp  # µm per source px (for the control tissue rule)
        self.kinds = ["he"] + ["control_labels"] * (labels is not None) + ["control_fluorescence"] * (fluo is not None)
        self.rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}

    def cut(self, read_rgb: ReadRGB, positions: list[tuple[int, int, int, int]], split: Split,
            min_tissue: float) -> Generator[PairsProgress, None, dict[str, int]]:
        counts = {"train": 0, "test": 0, "skipped_no_tissue": 0, "skipped_no_nuclei": 0, "dropped_near_band": 0}
        files = {}
        for s in SPLITS:
            for kind in self.kinds:
                (self.folder / s / kind).mkdir(parents=True)
            files[s] = open(self.folder / s / "metadata.jsonl", "w")  # noqa: SIM115  (closed below)
        try:
            for i, (r, c, y, x) in enumerate(positions):
                which = split.of(y, self.size)
                if which is None:
                    counts["dropped_near_band"] += 1
                else:
                    row = self._tile(read_rgb, which, f"r{r:04d}_c{c:04d}", y, x, min_tissue, counts)
                    if row is not None:
                        files[which].write(json.dumps(row, ensure_ascii=False) + "\n")
                        self.rows[which].append(row)
                        counts[which] += 1
                yield PairsProgress("tiles", i + 1, len(positions), counts["train"], counts["test"])
        finally:
            for f in files.values():
                f.close()
        return counts

    def _tile(self, read_rgb: ReadRGB, split: str, tile_id: str, y: int, x: int, min_tissue: float,
              counts: dict[str, int]) -> dict[str, Any] | None:
        S, out_px = self.size, self.tile_px
        rgb = read_rgb(y, x, S, S)
        tissue = float(tissue_mask(rgb).mean())
        if tissue < min_tissue or tissue == 0:
            counts["skipped_no_tissue"] += 1
            return None
        nuclei = None
        if self.labels is not None:
            window = read_padded(self.labels.data, y, x, S, S)
            nuclei = int(np.unique(window).size - (window.min() == 0))
            if nuclei == 0:
                counts["skipped_no_nuclei"] += 1
                return None
        base = self.folder / split
        row: dict[str, Any] = {"id": tile_id, "y": y, "x": x, "size_source_px": S, "he": f"he/{tile_id}.png"}
        _save_png(base / row["he"], resize(rgb, out_px))
        if self.labels is not None:
            row["control_labels"] = f"control_labels/{tile_id}.png"
            drawn = control_tissue(rgb, self.mpp) if self.draws_tissue else None
            _save_png(base / row["control_labels"], self.labels.control(y, x, S, out_px, tissue=drawn))
        if self.fluo is not None:
            row["control_fluorescence"] = f"control_fluorescence/{tile_id}.png"
            _save_png(base / row["control_fluorescence"], self.fluo.control(y, x, S, out_px),
                      SIMULATED_IF_HOW if self.simulated else None)
        row |= {"caption": self.caption, "category": self.category, "tissue_fraction": round(tissue, 4),
                "nuclei": nuclei}
        return row


def control_tissue(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The tissue of an H&E window for ``NUCLEI_TISSUE_V1`` controls (``CONTROL_TISSUE_RULE``); (H, W) bool."""
    from scipy import ndimage

    mask = tissue_mask(rgb)
    r = max(1, round(CONTROL_TISSUE_CLOSE_UM / mpp))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = yy**2 + xx**2 <= r * r
    # padded with the edge so the tile border neither grows nor loses tissue
    mask = ndimage.binary_closing(np.pad(mask, r, mode="edge"), disc)[r:-r, r:-r]
    speck = CONTROL_TISSUE_SPECK_UM2 / mpp**2
    for value in (True, False):  # specks of tissue on glass, then pin-holes of glass in tissue
        pieces, n = ndimage.label(mask == value)
        if n:
            small = np.bincount(pieces.ravel())[1:] < speck
            mask[np.isin(pieces, np.flatnonzero(small) + 1)] = not value
    return mask


def _nothing_left(he_path: Path, counts: dict[str, int], min_tissue: float) -> PairsError:
    if counts["skipped_no_nuclei"]:
        return PairsError(f"No tile of {he_path.name} has both tissue and nuclei ({counts['skipped_no_nuclei']} "
                          "tissue tiles hold no nucleus): check that the nuclei belong to this slide.")
    return PairsError(f"No tile of {he_path.name} has at least {min_tissue:.0%} tissue: check the image, or "
                      "lower --min-tissue.")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns those created (outermost first)."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _rmdir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (someone else wrote there): leave it
        folder.rmdir()


def _move_into_place(work: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old dataset there goes only after that, and only while it is
    still an output of ours that holds nothing else (``export.safety``, checked again: it may have changed)."""
    if not os.path.lexists(out):
        work.rename(out)
        return
    check_removable(out, kind="folder")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        work.rename(out)
    except BaseException:
        old.rename(out)
        raise
    remove_output(old, kind="folder")
