from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import dsb_pair, he_tile


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tiny demo model ('tiny-demo') is built into a per-session cache, never the user's."""
    os.environ["NAPARI_CRAFTS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_crafts.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def engine(tiny_model: Path):  # type: ignore[no-untyped-def]
    from napari_crafts.model.engine import Engine

    return Engine(tiny_model)


@pytest.fixture(scope="session")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Real DSB 2018 fluorescence nuclei (uint16) and their instance labels (tests/data)."""
    return dsb_pair()


@pytest.fixture
def fast():  # type: ignore[no-untyped-def]
    """Settings small enough for CPU tests (tiles of 64 px, 2 steps)."""
    from napari_crafts.generation.region import GenerationSettings

    return GenerationSettings(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=7)

@pytest.fixture(scope="session")
def he() -> np.ndarray:
    """Real H&E tile (300×500 RGB uint8)."""
    return he_tile()


@pytest.fixture(scope="session")
def noisy(he: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(he + rng.normal(0, 12, he.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (projection 16-d, 32 px images) with tokenizer and image processor, saved offline."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    from napari_crafts.model.tiny import _byte_level_vocab

    path = tmp_path_factory.mktemp("clip")
    (path / "vocab.json").write_text(json.dumps(_byte_level_vocab()))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    out = path / "tiny-clip"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def scorer(tiny_clip: Path):  # type: ignore[no-untyped-def]
    """The tiny CLIP as a PLIP scorer."""
    from napari_crafts.evaluation.plip import ClipScorer

    return ClipScorer(tiny_clip, device="cpu", batch_size=8)


def tile_crops(image: np.ndarray, n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` random size×size crops of ``image`` (same seed, same crops)."""
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, image.shape[0] - size, n), rng.integers(0, image.shape[1] - size, n)
    return [image[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]


@pytest.fixture
def messages():  # type: ignore[no-untyped-def]
    """Notifications shown to the user during the test, as (severity, text)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def keep(n):  # type: ignore[no-untyped-def]
        seen.append((str(n.severity), n.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture
def labels_widget(make_napari_viewer: Any, tiny_model: Path) -> tuple[Any, Any]:
    """A viewer with the Labels → H&E dock set to the tiny model, 1 step, 64-px tiles, seed 5, prompt 'nuclei'."""
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    c = w.controls
    c._model.value = str(tiny_model)
    c._steps.value, c._tile.value, c._overlap.value, c._seed.value, c._prompt.value = 1, 64, 16, 5, "nuclei"
    return viewer, w


@pytest.fixture
def victim(tmp_path: Path, nuclei: tuple[np.ndarray, np.ndarray]) -> Path:
    """A labels slide the user cares about (96×96 px at 0.25 µm/px, the tiny model's pixel size)."""
    import tifffile

    path = tmp_path / "victim.tif"
    tifffile.imwrite(path, nuclei[1][:96, :96], resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path
