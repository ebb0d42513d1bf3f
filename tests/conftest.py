from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tiny demo model ('tiny-demo') is built into a per-session cache, never the user's."""
    os.environ["NAPARI_CRAFTS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_crafts.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def engine(tiny_model: Path):  # type: ignore[no-untyped-def]
    from napari_crafts.engine import Engine

    return Engine(tiny_model)


@pytest.fixture(scope="session")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Real DSB 2018 fluorescence nuclei (uint16) and their instance labels, from ../shared/data."""
    import tifffile

    return tifffile.imread(DATA / "stardist_dsb2018_img2d.tif"), tifffile.imread(DATA / "stardist_dsb2018_mask2d.tif")


@pytest.fixture
def fast():  # type: ignore[no-untyped-def]
    """Settings small enough for CPU tests (tiles of 64 px, 2 steps)."""
    from napari_crafts.generate import GenerationSettings

    return GenerationSettings(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=7)
