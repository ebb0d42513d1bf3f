"""The headless entry points: the README's demo, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

from napari_crafts.cli import main

SMALL = ["--size", "96", "--steps", "1", "--tile-size", "64", "--overlap", "16"]


def test_demo_writes_a_synthetic_ome_zarr_png_and_provenance(tmp_path, tiny_model, capsys):
    from PIL import Image

    from napari_crafts.export import is_complete, read_provenance

    assert main(["demo", "--out", str(tmp_path), "--model", str(tiny_model), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "synthetic H&E:" in out and "seam score" in out
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["synthetic"] is True and prov["steps"] == 1 and prov["region"]["height"] == 96
    assert is_complete(tmp_path / "synthetic_he.ome.zarr")
    assert read_provenance(tmp_path / "synthetic_he.ome.zarr")["model"]["weights_sha256"] == prov["model"]["weights_sha256"]
    png = Image.open(tmp_path / "synthetic_he_SYNTHETIC.png")
    assert png.size == (192, 96) and "SYNTHETIC" in png.text["Description"]
    assert json.loads(png.text["napari_crafts"])["seed"] == prov["seed"]


def test_pickle_weights_are_refused_in_one_line_then_allowed_on_request(tmp_path, tiny_model, capsys):
    import torch
    from safetensors.torch import load_file

    model = shutil.copytree(tiny_model, tmp_path / "pickled")
    st = next((model / "unet").glob("*.safetensors"))
    torch.save(load_file(st), model / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    assert main(["demo", "--out", str(tmp_path / "a"), "--model", str(model), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-crafts demo: error:") and "--allow-pickle" in err and "\n" not in err
    assert main(["demo", "--out", str(tmp_path / "b"), "--model", str(model), "--allow-pickle", *SMALL]) == 0
