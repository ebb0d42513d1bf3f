"""Models known to this install: what the widgets offer in their model list (Qt-free, no torch).

In order: the bundled trained demo model (``demo``, when this install ships it), the tiny random test model
(``tiny-demo``), folders used before (remembered in ``recent_models.json`` in the user cache), and every
diffusers folder under the models cache (``<cache>/models/``) or in the Hugging Face hub cache. A model is a
diffusers folder: ``model_index.json`` at its root (Stable Diffusion 1.5 layout: ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), a ControlNet in ``controlnet/`` (or given apart), and an
optional ``napari_crafts.json`` card (pixel size, prompt, ControlNet per mode; see ``model.card``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .._files import atomic_file
from .tiny import TINY_MODEL_ID

#: Model name that means "the trained demo model bundled with napari-crafts".
DEMO_MODEL_ID = "demo"
#: Where the bundled demo model lives inside the package.
DEMO_MODEL_DIR = "data/demo_model"
NO_DEMO_MODEL = ("This napari-crafts install has no bundled demo model ('demo'): choose 'tiny-demo' or a model "
                 "folder (--model PATH, or Browse… in the widget).")
RECENT_FILE = "recent_models.json"
#: How many folders/hub ids the recent list keeps.
RECENT_LIMIT = 10


@dataclass(frozen=True)
class ModelEntry:
    """One model the list offers: ``ref`` is what the engine is given, ``label`` what the user reads."""

    ref: str
    label: str
    origin: str  # "demo", "tiny", "recent", "cache" or "hub-cache"



class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the path and what to do (``model.description`` raises its
    kinds; defined here, the lower module, as ``bundled_demo_model`` raises it too)."""

def cache_root() -> Path:
    """The user cache of napari-crafts: ``$NAPARI_CRAFTS_CACHE`` or ``~/.cache/napari-crafts``."""
    return Path(os.environ.get("NAPARI_CRAFTS_CACHE", Path.home() / ".cache" / "napari-crafts"))


def models_dir() -> Path:
    """The models cache: put (or link) diffusers model folders here and they appear in the list."""
    return cache_root() / "models"


def demo_model_path() -> Path | None:
    """The bundled trained demo model's folder, or None when this install has none."""
    path = Path(str(files("napari_crafts").joinpath(DEMO_MODEL_DIR)))
    return path if is_model_folder(path) else None


def is_demo_model(path: str | Path) -> bool:
    """Whether ``path`` is the bundled demo model's folder."""
    bundled = demo_model_path()
    return bundled is not None and Path(path).expanduser().resolve() == bundled.resolve()


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers model folder (a pipeline or a single model)."""
    p = Path(path)
    return (p / "model_index.json").is_file() or (p / "config.json").is_file()


def bundled_demo_model() -> Path:
    """The bundled demo model's folder (what ``demo`` means); a ModelLoadError when this install has none."""
    path = demo_model_path()
    if path is None:
        raise ModelLoadError(NO_DEMO_MODEL)
    return path


def resolve(ref: str) -> str:
    """What the engine should load for a list entry: ``demo`` becomes the bundled folder, the rest is as given."""
    ref = ref.strip()
    return str(bundled_demo_model()) if ref == DEMO_MODEL_ID else ref


def default_model() -> str:
    """The model a new widget starts with: the trained demo model when bundled, else the tiny test model."""
    return DEMO_MODEL_ID if demo_model_path() is not None else TINY_MODEL_ID


def recent_models() -> list[str]:
    """Folders and hub ids used before, newest first (folders that no longer exist are left out)."""
    try:
        data = json.loads((cache_root() / RECENT_FILE).read_text())
    except (OSError, ValueError):
        return []
    refs = [str(r) for r in data.get("models", [])] if isinstance(data, dict) else []
    return [r for r in refs if not _looks_like_path(r) or Path(r).expanduser().is_dir()]


def remember_model(ref: str) -> None:
    """Put ``ref`` (a folder or hub id that loaded) at the top of the recent list; built-in ids are not kept."""
    ref = ref.strip()
    if not ref or ref in (DEMO_MODEL_ID, TINY_MODEL_ID):
        return
    if _looks_like_path(ref):
        ref = str(Path(ref).expanduser().absolute())
    refs = [ref] + [r for r in recent_models() if r != ref]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with atomic_file(root / RECENT_FILE, unique=True) as tmp:  # a reader never sees half a file
        tmp.write_text(json.dumps({"models": refs[:RECENT_LIMIT]}, indent=1))


def known_models() -> list[ModelEntry]:
    """Every model this install knows of, each once, in the order the list shows them."""
    entries: list[ModelEntry] = []
    if demo_model_path() is not None:
        entries.append(ModelEntry(DEMO_MODEL_ID, "demo (trained, CMU-1)", "demo"))
    entries.append(ModelEntry(TINY_MODEL_ID, "tiny-demo (random)", "tiny"))
    entries += [ModelEntry(r, r, "recent") for r in recent_models()]
    entries += [ModelEntry(str(p), str(p), "cache") for p in _cached_folders(models_dir())]
    entries += [ModelEntry(repo, f"{repo} (hub cache)", "hub-cache") for repo in _hub_cache_models()]
    seen: set[str] = set()
    unique = []
    for entry in entries:
        if entry.ref not in seen:
            seen.add(entry.ref)
            unique.append(entry)
    return unique


def _looks_like_path(ref: str) -> bool:
    """A folder (absolute, relative or existing), not a hub id ('org/name')."""
    if ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists():
        return True
    return "/" in ref and ref.count("/") != 1


def _cached_folders(root: Path) -> list[Path]:
    """Model folders directly under ``root`` (sorted by name)."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    return [p.absolute() for p in children if is_model_folder(p)]


def _hub_cache_models() -> list[str]:
    """Hub ids of pipelines in the Hugging Face cache (``models--org--name`` with a ``model_index.json``)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub")
    try:
        repos = sorted(p for p in Path(hub).iterdir() if p.name.startswith("models--"))
    except OSError:
        return []
    found = []
    for repo in repos:
        snapshots = repo / "snapshots"
        if snapshots.is_dir() and any(is_model_folder(s) for s in snapshots.iterdir()):
            found.append(repo.name.removeprefix("models--").replace("--", "/", 1))
    return found


def model_mpp(ref: str) -> float:
    """The pixel size a model works at, read from its card without loading it (the default for hub ids)."""
    from .card import DEFAULT_MODEL_MPP, ModelCard, ModelCardError
    from .tiny import TINY_MODEL_MPP

    if ref.strip() == TINY_MODEL_ID:
        return TINY_MODEL_MPP
    try:
        path = Path(resolve(ref)).expanduser()
    except ValueError:
        return DEFAULT_MODEL_MPP
    try:
        return ModelCard.read(path).mpp if path.is_dir() else DEFAULT_MODEL_MPP
    except ModelCardError:  # said in one line when the model is opened
        return DEFAULT_MODEL_MPP
