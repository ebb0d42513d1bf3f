"""``napari-crafts check`` on files written here: PNG (text chunk), JPEG, OME-Zarr, OME-TIFF, folders; exit codes, JSON.

The marked pixels are real H&E (CMU-1, CC0) marked with the watermark, as a generated output will be.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import CMU1_SVS as SVS
from napari_crafts.cli import check as check_cli
from napari_crafts.export import check
from napari_crafts.export import watermark as wm


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    """640×576 px of real H&E with tissue and glass."""
    import tiffslide

    ts = tiffslide.TiffSlide(SVS)
    return np.asarray(ts.read_region((600, 1000), 0, (576, 640)))[..., :3].copy()


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    from napari_crafts.provenance import make_provenance

    prov = make_provenance(mode="labels", model={"name": "tiny-demo"}, settings={"seed": 3, "steps": 2},
                           source={"name": "nuclei"}, region={"y0": 0, "x0": 0})
    prov["watermark"] = wm.describe_watermark(wm.payload_for(prov))
    return prov


@pytest.fixture(scope="module")
def marked(real: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    return wm.watermark_image(real, wm.payload_for(record))


def _png(path: Path, rgb: np.ndarray, record: dict[str, Any] | None = None) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if record is not None:
        info.add_text("napari_crafts", json.dumps(record))  # as cli._save_png writes it
    Image.fromarray(rgb).save(path, pnginfo=info)
    return path


def _run(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    parser = argparse.ArgumentParser()
    check_cli.configure_parser(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = check_cli.main(parser.parse_args(list(argv)))
    return code, out.getvalue()


# --------------------------------------------------------------------------------------------- one image


def test_png_with_record_and_watermark(tmp_path: Path, marked: np.ndarray, record: dict[str, Any]) -> None:
    rep = check.check_image(_png(tmp_path / "out.png", marked, record))
    assert rep.error is None and rep.format == "png" and rep.shape == [640, 576]
    assert rep.provenance["found"] and rep.provenance["synthetic"] is True
    assert rep.provenance["record_hash"] == f"{wm.record_hash(record):08x}"
    mark = rep.watermark
    assert mark["found"] and mark["z"] >= wm.Z_THRESHOLD and mark["payload"] == wm.payload_for(record).hex
    assert mark["tiles_checked"] == 1 and mark["known_bit_errors"] == 0
    assert rep.record_match is True and rep.synthetic
    assert rep.verdict == "SYNTHETIC: napari-crafts watermark and provenance record, and they match"


def test_stripped_and_recompressed_copies_are_still_found(tmp_path: Path, marked: np.ndarray) -> None:
    from PIL import Image

    _png(tmp_path / "stripped.png", marked)
    Image.fromarray(marked).save(tmp_path / "copy.jpg", quality=75)
    for name in ("stripped.png", "copy.jpg"):
        rep = check.check_image(tmp_path / name)
        assert not rep.provenance["found"] and rep.watermark["found"] and rep.synthetic, name
        assert rep.record_match is None
        assert "no provenance metadata" in rep.verdict


def test_real_image_is_not_flagged(tmp_path: Path, real: np.ndarray) -> None:
    rep = check.check_image(_png(tmp_path / "real.png", real))
    assert not rep.synthetic and not rep.watermark["found"] and rep.watermark["z"] < wm.Z_THRESHOLD
    assert rep.verdict == check.NO_SIGN


def test_record_without_watermark_and_mismatched_record(tmp_path: Path, real: np.ndarray, marked: np.ndarray,
                                                        record: dict[str, Any]) -> None:
    off = {**record, "watermark": wm.describe_no_watermark("--no-watermark")}
    rep = check.check_image(_png(tmp_path / "off.png", real, off))
    assert rep.synthetic and not rep.watermark["found"]
    assert rep.verdict == ("SYNTHETIC: the provenance record says so; no watermark found "
                           "(the record says it was turned off)")
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("napari_crafts", "{not json")
    Image.fromarray(real).save(tmp_path / "garbled.png", pnginfo=info)
    code, out = _run(str(tmp_path / "garbled.png"))
    assert code == 1 and "provenance: found, but the 'napari_crafts' text chunk is not a JSON record" in out
    edited = {**record, "seed": 4}  # the record no longer hashes to the watermark's payload
    rep = check.check_image(_png(tmp_path / "edited.png", marked, edited))
    assert rep.synthetic and rep.record_match is False and "does not match" in rep.verdict


def test_ome_zarr_and_ome_tiff(tmp_path: Path, marked: np.ndarray, record: dict[str, Any]) -> None:
    from napari_crafts.export import save_ome_zarr, write_pyramidal_tiff

    save_ome_zarr(tmp_path / "out.ome.zarr", marked, mpp=0.5, provenance=record, chunk=256)
    write_pyramidal_tiff(tmp_path / "out.ome.tif", marked, mpp=0.5, provenance=record, tile=256)  # JPEG 90
    for name, fmt in (("out.ome.zarr", "ome-zarr"), ("out.ome.tif", "tif")):
        rep = check.check_image(tmp_path / name)
        assert rep.format == fmt and rep.shape == [640, 576], name
        assert rep.provenance["found"] and rep.watermark["found"] and rep.record_match is True, name


def test_large_images_are_read_by_windows(tmp_path: Path, marked: np.ndarray, record: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_crafts.export import save_ome_zarr

    save_ome_zarr(tmp_path / "big.ome.zarr", marked, mpp=0.5, provenance=record)
    monkeypatch.setattr(check, "WHOLE_IMAGE_PX", 256 * 256)  # 640×576 now counts as large: 512² windows
    rep = check.check_image(tmp_path / "big.ome.zarr", max_tiles=3)
    assert rep.watermark["found"] and 1 <= rep.watermark["tiles_checked"] <= 3
    assert rep.watermark["tiles_found"] == rep.watermark["tiles_checked"]


def test_windows_spread_over_the_image() -> None:
    boxes = check.windows((20000, 9000), max_tiles=16)
    assert 9 <= len(boxes) <= 16
    assert all(y % 512 == 0 and x % 512 == 0 and y + h <= 20000 and x + w <= 9000 for y, x, h, w in boxes)
    assert min(b[0] for b in boxes) == 0 and max(b[0] + b[2] for b in boxes) == 20000  # first and last rows
    assert max(b[1] + b[3] for b in boxes) == 9000
    assert check.windows((1000, 1200), max_tiles=16) == [(0, 0, 1000, 1200)]  # small: whole


def test_non_rgb_image_reports_only_metadata(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "labels.tif", np.arange(128 * 128, dtype=np.uint16).reshape(128, 128))
    rep = check.check_image(tmp_path / "labels.tif")
    assert rep.error is None and not rep.watermark["checked"] and "not an RGB image" in rep.watermark["note"]
    assert not rep.synthetic


# --------------------------------------------------------------------------------------------- CLI


def test_folder_exit_codes_and_text(tmp_path: Path, real: np.ndarray, marked: np.ndarray,
                                    record: dict[str, Any]) -> None:
    tiles = tmp_path / "tiles"
    (tiles / "sub").mkdir(parents=True)
    _png(tiles / "a_real.png", real)
    _png(tiles / "sub" / "b_synthetic.png", marked[:256, :256], record)
    (tiles / "notes.txt").write_text("not an image")
    code, out = _run(str(tiles))
    assert code == check.EXIT_SYNTHETIC == 0
    assert out.index("a_real.png") < out.index("b_synthetic.png")
    assert "verdict:    SYNTHETIC" in out and "notes.txt" not in out
    assert out.rstrip().endswith("2 images: 1 synthetic, 1 without a sign, 0 errors")
    code, _ = _run(str(tiles / "a_real.png"))
    assert code == check.EXIT_NONE == 1


def test_errors_exit_2_with_one_line(tmp_path: Path, real: np.ndarray) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "real.png", real)
    (tmp_path / "notes.txt").write_text("text")
    code, out = _run(str(tmp_path / "broken.png"), str(tmp_path / "empty"), str(tmp_path / "missing.tif"),
                     str(tmp_path / "notes.txt"), str(tmp_path / "real.png"))
    assert code == check.EXIT_ERROR == 2
    errors = [line for line in out.splitlines() if line.startswith("  error:")]
    assert len(errors) == 4
    assert "cannot read it as an image" in errors[0] and "no images in this folder" in errors[1]
    assert "missing.tif: no such file or folder." in errors[2]
    assert "notes.txt: not an image check reads (.png, .jpg" in errors[3]
    assert "Traceback" not in out


def test_json_shape(tmp_path: Path, marked: np.ndarray, record: dict[str, Any]) -> None:
    _png(tmp_path / "out.png", marked, record)
    code, out = _run(str(tmp_path / "out.png"), str(tmp_path / "nothing.png"), "--json")
    doc = json.loads(out)
    assert code == 2 and set(doc) == {"reports", "summary"}
    assert doc["summary"] == {"images": 2, "synthetic": 1, "errors": 1, "exit_code": 2}
    first, second = doc["reports"]
    assert set(first) == {"path", "format", "shape", "provenance", "watermark", "record_match", "synthetic",
                          "verdict", "error"}
    assert first["synthetic"] is True and first["watermark"]["payload"] == wm.payload_for(record).hex
    assert set(first["watermark"]) >= {"checked", "found", "z", "threshold", "payload", "record_hash",
                                       "known_bit_errors", "corrected_bits", "tiles_checked", "tiles_found"}
    assert second["error"].endswith("nothing.png: no such file or folder.") and second["synthetic"] is False
