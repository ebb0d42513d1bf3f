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
    old = pickle.dumps(settings, protocol=0).replace(b"napari_crafts.generation.settings", b"napari_crafts.generate")
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


def test_no_module_of_the_package_imports_itself_back() -> None:
    """No import circle, at module or function level (a function-level import is for import cost, never to hide a
    circle): every module's imports of the package, followed, never come back to it."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "src" / "napari_crafts"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [target, *subs]  # `from . import sub`: the sub
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}

    def back(start: str) -> list[str] | None:  # a path of imports from start back to start, if there is one
        seen, todo = set(), [(start, [start])]
        while todo:
            here, path = todo.pop()
            for there in graph[here]:
                if there == start:
                    return [*path, start]
                if there not in seen:
                    seen.add(there)
                    todo.append((there, [*path, there]))
        return None

    circles = [circle for name in sorted(graph) if (circle := back(name))]
    assert not circles, circles[:3]
