"""Old flat module paths (napari-crafts 0.1), kept importable for one release.

``napari_crafts.engine`` is ``napari_crafts.model.engine`` (the same module object, not a copy), so scripts,
monkeypatches and objects pickled by module path (dask tasks, saved settings) keep working. Importing an old
path warns once (DeprecationWarning) and names the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: Old module (0.1) → the module that holds its code now.
MOVED = {
    "slide": "io.slide",
    "geojson": "io.geojson",
    "model_card": "model.card",
    "engine": "model.engine",
    "deepcache": "model.deepcache",
    "tiny_model": "model.tiny",
    "conditioning": "generation.conditioning",
    "sources": "generation.sources",
    "tiling": "generation.tiling",
    "generate": "generation.region",
    "prompts": "generation.prompts",
    "batch": "wsi.job",
    "batch_sources": "wsi.source_file",
    "batch_cli": "cli.generate",
    "export_zarr": "export.ome_zarr",
    "export_tiff": "export.ome_tiff",
    "pyramid": "export.pyramid",
    "metrics": "evaluation.metrics",
    "plip": "evaluation.plip",
    "evaluate": "evaluation",
    "evaluate_inputs": "evaluation.inputs",
    "evaluate_plip": "evaluation.plip_eval",
    "evaluate_scoring": "evaluation.scoring",
    "evaluate_cli": "cli.evaluate",
}
PACKAGE = __name__.rpartition(".")[0]


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``napari_crafts.<old>`` to the module that now holds the code."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"{PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release.",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is already executed: it is the new one."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
