"""Thin napari dock widgets over the Qt-free core (one widget per file)."""
