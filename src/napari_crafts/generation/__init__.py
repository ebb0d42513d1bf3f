"""Generation over a region: control images (``conditioning``), control sources (``sources``), tiles, noise and
blending (``tiling``), the region generator behind widgets and CLI (``region``), prompt presets (``prompts``).
No Qt."""

from .region import GenerationError, GenerationSettings, Region, RegionResult, generate_region, run
from .sources import FluorescenceSource, LabelsSource

__all__ = ["FluorescenceSource", "GenerationError", "GenerationSettings", "LabelsSource", "Region", "RegionResult",
           "generate_region", "run"]
