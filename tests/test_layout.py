"""The package layout: subpackages by concern, a Qt-free core, and the 0.1 module paths kept for one release."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import pytest

from napari_crafts._compat import MOVED

CORE = ("io", "model", "generation", "wsi", "export", "evaluation", "training", "cli")


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old: str) -> None:
    import importlib

    new = importlib.import_module(f"napari_crafts.{MOVED[old]}")
    sys.modules.pop(f"napari_crafts.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(f"napari_crafts.{old}")
    assert mod is new
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)


def test_object_pickled_under_an_old_path_loads() -> None:
    from napari_crafts.generation.region import GenerationSettings

    settings = GenerationSettings(seed=3)
    # what 0.1 wrote: the class under its old module path
    old = pickle.dumps(settings, protocol=0).replace(b"napari_crafts.generation.region", b"napari_crafts.generate")
    assert old != pickle.dumps(settings, protocol=0)
    assert pickle.loads(old) == settings


def test_core_imports_neither_qt_nor_torch() -> None:
    """The core subpackages import without a Qt binding or torch (they load lazily, when a model is used)."""
    mods = ", ".join(f"napari_crafts.{m}" for m in CORE)
    code = (f"import sys, {mods}; "
            "print(sorted(m for m in ('torch', 'diffusers', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'napari') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
