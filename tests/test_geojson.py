"""GeoJSON nuclei (QuPath export) → lazy labels: rasterised window by window, usable by generate and napari."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from napari_crafts.io.geojson import GeoJSONError, GeoJSONLabels, geojson_levels, read_polygons


def polygons_of(labels: np.ndarray) -> list[list[list[float]]]:
    """Each instance's outline as a closed (x, y) ring, traced as QuPath would draw it (pixel-edge contour)."""
    from skimage.measure import find_contours, regionprops

    rings = []
    for r in regionprops(labels):
        y0, x0 = r.bbox[:2]
        contour = max(find_contours(np.pad(r.image, 1).astype(float), 0.5), key=len)
        ring = [[float(x + x0 - 1), float(y + y0 - 1)] for y, x in contour]
        rings.append(ring + [ring[0]])
    return rings


def write_geojson(path: Path, rings: list, *, cells: bool = False) -> Path:
    features = []
    for ring in rings:
        geometry = {"type": "Polygon", "coordinates": [ring]}
        if cells:  # QuPath cells: the outline is the cell, the nucleus is nucleusGeometry
            big = [[x * 1.0, y * 1.0] for x, y in ring]
            features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": big[0]},
                             "nucleusGeometry": geometry, "properties": {"objectType": "cell"}})
        else:
            features.append({"type": "Feature", "geometry": geometry, "properties": {"objectType": "detection"}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def real(nuclei, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The real DSB 2018 labels and the same nuclei as a QuPath-style GeoJSON file."""
    labels = nuclei[1]
    return labels, write_geojson(tmp_path_factory.mktemp("geo") / "nuclei.geojson", polygons_of(labels))


def test_polygons_rasterise_back_to_the_labels_they_came_from(real) -> None:  # type: ignore[no-untyped-def]
    from skimage.measure import regionprops

    labels, path = real
    rows, cols = np.nonzero(labels)
    assert GeoJSONLabels(path).shape == (rows.max() + 1, cols.max() + 1)  # without a shape: the nuclei's extent
    geo = GeoJSONLabels(path, labels.shape)
    assert geo.shape == labels.shape and geo.count == len(np.unique(labels)) - 1
    out = geo[...]
    assert ((out > 0) == (labels > 0)).mean() > 0.999
    ious = []
    for i, r in enumerate(regionprops(labels)):  # nucleus i of the file is label i + 1
        a, b = labels == r.label, out == i + 1
        ious.append((a & b).sum() / (a | b).sum())
    assert min(ious) > 0.98


def test_a_window_is_the_same_crop_of_the_whole_and_draws_only_its_nuclei(real, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import skimage.draw

    labels, path = real
    geo = GeoJSONLabels(path, labels.shape)
    whole = geo[...]
    drawn = []
    real_fill = skimage.draw.polygon
    monkeypatch.setattr(skimage.draw, "polygon", lambda *a, **k: drawn.append(1) or real_fill(*a, **k))
    window = geo[..., 100:180, 300:420]
    np.testing.assert_array_equal(window, whole[100:180, 300:420])
    assert 0 < len(drawn) < geo.count / 4  # a window rasterises its own nuclei, not the slide's
    np.testing.assert_array_equal(geo[5, 7:9], whole[5, 7:9])


def test_pickles_as_its_path(real) -> None:  # type: ignore[no-untyped-def]
    _, path = real
    geo = GeoJSONLabels(path)
    blob = pickle.dumps(geo)
    assert len(blob) < 1000  # the polygons are not shipped to workers: they reopen the file
    np.testing.assert_array_equal(pickle.loads(blob)[40:90, 40:90], geo[40:90, 40:90])


def test_pyramid_levels_are_lazy_and_downsampled(real) -> None:  # type: ignore[no-untyped-def]
    labels, path = real
    levels = geojson_levels(path, labels.shape, smallest=128, chunk=64)
    assert [lv.shape for lv in levels] == [(512, 512), (256, 256), (128, 128)]
    half = np.asarray(levels[1])
    # nearest-sample agreement with the full-resolution labels
    assert ((half > 0) == (np.asarray(levels[0])[::2, ::2] > 0)).mean() > 0.95


def test_qupath_cells_use_the_nucleus_and_odd_geometries_are_counted(tmp_path, real) -> None:  # type: ignore[no-untyped-def]
    labels, _ = real
    rings = polygons_of(labels[:128, :128])
    path = write_geojson(tmp_path / "cells.geojson", rings, cells=True)
    np.testing.assert_array_equal(GeoJSONLabels(path)[...] > 0, GeoJSONLabels(
        write_geojson(tmp_path / "det.geojson", rings))[...] > 0)
    doc = json.loads(path.read_text())
    doc["features"].append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}})
    path.write_text(json.dumps(doc))
    assert read_polygons(path).skipped == {"LineString": 1}


def test_holes_stay_empty_and_multipolygon_parts_share_a_label(tmp_path) -> None:
    square = [[10, 10], [40, 10], [40, 40], [10, 40], [10, 10]]
    hole = [[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]]
    other = [[[60, 60], [70, 60], [70, 70], [60, 70], [60, 60]]]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[square, hole], other]}}]}
    (tmp_path / "h.geojson").write_text(json.dumps(doc))
    out = GeoJSONLabels(tmp_path / "h.geojson")[...]
    assert out[15, 15] == 1 and out[25, 25] == 0 and out[65, 65] == 1 and out.max() == 1


@pytest.mark.parametrize("content, message", [
    ("not json", "could not be read as GeoJSON"),
    ('{"type": "FeatureCollection", "features": []}', "has no nucleus polygons (no features)"),
    ('{"type": "Point", "coordinates": [3, 4]}', "has no nucleus polygons (1 Point)"),
    ('{"type": "Polygon", "coordinates": [[[-73.9, 40.7], [-73.8, 40.7], [-73.8, 40.8], [-73.9, 40.7]]]}',
     "negative coordinates"),
])
def test_bad_geojson_gets_a_message(tmp_path, content, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(GeoJSONError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GeoJSONLabels(path)


def test_reader_opens_geojson_as_a_lazy_multiscale_labels_layer(real, make_napari_viewer) -> None:  # type: ignore[no-untyped-def]
    from napari_crafts._reader import napari_get_reader

    labels, path = real
    reader = napari_get_reader(str(path))
    assert reader is not None
    viewer = make_napari_viewer()
    [(data, kwargs, kind)] = reader(str(path))
    layer = viewer.add_layer(__import__("napari").layers.Layer.create(data, kwargs, kind))
    assert kind == "labels" and layer.name == "nuclei"
    level0 = layer.data[0] if layer.multiscale else layer.data
    h, w = level0.shape
    assert ((np.asarray(level0) > 0) == (labels[:h, :w] > 0)).mean() > 0.999
