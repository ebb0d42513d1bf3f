"""napari-crafts: synthetic H&E from nuclear labels, fluorescence or a prompt with CRAFTS, in napari and on slides.

Importing the package is cheap: torch and diffusers load only when a model is used.
"""

from ._compat import install as _install_old_paths
from .provenance import package_version

_install_old_paths()  # napari_crafts.engine etc. still import (one release)

__version__ = package_version()
