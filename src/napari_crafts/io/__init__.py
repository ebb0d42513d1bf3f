"""Reading: slides and images as lazy pyramids in µm (``slide``), GeoJSON nuclei (``geojson``), lazy windows
(``windows``). No Qt, no torch."""

from .slide import Slide, SlideError, open_slide

__all__ = ["Slide", "SlideError", "open_slide"]
