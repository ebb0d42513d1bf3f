"""Channel names and colours of immunofluorescence TIFFs: Akoya/PerkinElmer QPTIFF and OME-TIFF (no Qt, no torch).

A Vectra/PhenoImager QPTIFF holds one 2-D page per channel; each page's ImageDescription is a
``<PerkinElmer-QPI-ImageDescription>`` XML (declared utf-16) with ``<Name>DAPI</Name>``,
``<Color>0,0,255</Color>`` and, on newer scanners, ``<Biomarker>CD8</Biomarker>``. Thumbnail, reduced
resolutions, overview and label pages follow; tifffile recognises the file (``TiffFile.is_qpi``) and gives the
channels as the series 'Baseline' (axes CYX). The pixel size is in the resolution tags (read by ``io.slide``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChannelInfo:
    name: str
    color: tuple[int, int, int] | None = None


def qpi_channels(tif: Any) -> list[ChannelInfo] | None:
    """The channels of a QPTIFF's 'Baseline' series, named as the file names them; None if not a QPTIFF."""
    if not getattr(tif, "is_qpi", False):
        return None
    series = tif.series[0]
    pages = list(series.pages)
    infos = [_qpi_page_channel(page, i) for i, page in enumerate(pages)]
    names = [c.name for c in infos]
    if len(set(names)) != len(names):  # duplicated names (e.g. two DAPI cycles): keep them apart
        infos = [ChannelInfo(f"{c.name} [{i}]", c.color) for i, c in enumerate(infos)]
    return infos


def _qpi_page_channel(page: Any, index: int) -> ChannelInfo:
    fields = _qpi_fields(_description(page))
    name = fields.get("Name", "").strip()
    marker = fields.get("Biomarker", "").strip()
    if marker and marker.lower() != name.lower() and marker.lower() not in ("", "none", "autofluorescence"):
        name = f"{marker} ({name})" if name else marker
    return ChannelInfo(name or f"channel {index}", _rgb(fields.get("Color", "")))


def _description(page: Any) -> str:
    """A page's ImageDescription as text (QPTIFFs declare utf-16 but may store any encoding)."""
    tag = page.tags.get("ImageDescription")
    value = tag.value if tag is not None else ""
    if isinstance(value, bytes):
        for codec in ("utf-16", "utf-8", "latin-1"):
            try:
                text = value.decode(codec)
            except UnicodeDecodeError:
                continue
            if "<" in text:
                return text
        return ""
    return str(value)


def _qpi_fields(xml: str) -> dict[str, str]:
    """Top-level text fields of a PerkinElmer-QPI-ImageDescription (empty dict if it is not one)."""
    body = re.sub(r"^\s*<\?xml[^>]*\?>", "", xml.replace("\x00", "")).strip()
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    return {child.tag: (child.text or "") for child in root if len(child) == 0}


def _rgb(text: str) -> tuple[int, int, int] | None:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    r, g, b = (min(255, int(p)) for p in parts)
    return r, g, b


def ome_channel_colors(xml: str, n: int) -> list[tuple[int, int, int] | None] | None:
    """Per-channel colours of an OME-XML image (``Channel/@Color``, signed RGBA int); None when it has none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    channels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Channel"][:n]
    if len(channels) != n or not any(c.get("Color") for c in channels):
        return None
    colors: list[tuple[int, int, int] | None] = []
    for c in channels:
        try:
            rgba = int(c.get("Color", "")) & 0xFFFFFFFF
        except ValueError:
            colors.append(None)
            continue
        colors.append(((rgba >> 24) & 255, (rgba >> 16) & 255, (rgba >> 8) & 255))
    return colors

