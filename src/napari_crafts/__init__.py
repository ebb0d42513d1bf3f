"""napari-crafts: synthetic H&E from nuclear labels, fluorescence or a prompt with CRAFTS, in napari and on slides.

Importing the package is cheap: torch and diffusers load only when a model is used.
"""

from .provenance import package_version

__version__ = package_version()
