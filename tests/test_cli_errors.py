"""Bad input that used to end in an internal error or a misleading message (issue 20): one line on stderr, exit code
2, and nothing written. Every case is refused before a model runs, so these tests are fast."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_crafts.cli import main

MPP = 0.25


@pytest.fixture
def victim(tmp_path: Path, nuclei: tuple[np.ndarray, np.ndarray]) -> Path:
    """A labels slide the user cares about (96×96 px at 0.25 µm/px, the tiny model's pixel size)."""
    path = tmp_path / "victim.tif"
    tifffile.imwrite(path, nuclei[1][:96, :96], resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def run_cli(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    return err.strip()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- generate: pixel sizes


@pytest.mark.parametrize(
    ("mpp", "ratio"),
    [("1e-9", "250,000,000× finer"), ("0.001", "250× finer"), ("250", "1,000× coarser"), ("1e6", "4,000,000× coarser")],
)
def test_a_pixel_size_no_run_can_use_is_refused_before_anything_starts(
    victim: Path, tiny_model: Path, mpp: str, ratio: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(victim.parent)
    code, out, err = run_cli(
        ["generate", victim, victim.with_name("out.ome.zarr"), "--model", tiny_model, "--mpp", mpp], capsys
    )
    line = one_line(err)
    assert code == 2 and out == ""
    assert f"at {float(mpp):g} µm/px is {ratio} than the model's 0.25 µm/px" in line
    assert "works on 0.0156 to 4 µm/px" in line and "check the pixel size" in line
    assert snapshot(victim.parent) == before


def test_a_tile_too_large_for_memory_is_refused(tiny_model: Path) -> None:
    from napari_crafts.generation.region import GenerationError, GenerationSettings, Region, plan_region
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.model.engine import ModelDescription

    model = ModelDescription.open(tiny_model)
    side = 200_000  # a 1/16-size pixel: a 4096-px model tile would cover 65,536² source px
    labels = np.lib.stride_tricks.as_strided(np.ones(1, np.int32), (side, side), (0, 0))
    source = LabelsSource(labels, name="big", mpp=MPP / 16)
    with pytest.raises(GenerationError, match=r"covers 65,536 source px .* tile size of at most 1024 px"):
        plan_region(source, Region(0, 0, side, side), model, GenerationSettings(tile_size=4096))


# ------------------------------------------------------------------------------------------- generate: device


def test_a_device_this_torch_cannot_use_is_one_line(
    victim: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    before = snapshot(victim.parent)
    out = victim.with_name("out.ome.zarr")
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--device", "gpu"], capsys)
    assert code == 2 and "--device 'gpu' is not a device: use cpu, cuda, cuda:N or mps." in one_line(err)
    if not torch.cuda.is_available():
        code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--device", "cuda"], capsys)
        line = one_line(err)
        assert code == 2 and "--device cuda: this torch" in line and "sees no CUDA GPU: use --device cpu" in line
        code, _, err = run_cli(
            ["demo", "--out", victim.parent / "demo", "--model", tiny_model, "--device", "cuda"], capsys
        )
        assert code == 2 and "sees no CUDA GPU" in one_line(err)
    assert snapshot(victim.parent) == before and not (victim.parent / "demo").exists()


# --------------------------------------------------------------------------------- generate: scheduler address


def test_an_unreachable_scheduler_names_the_address_and_the_wait(
    victim: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_crafts.wsi import job

    monkeypatch.setattr(job, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = snapshot(victim.parent)
    out = victim.with_name("out.ome.zarr")
    address = f"tcp://127.0.0.1:{port}"
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--scheduler-address", address], capsys)
    assert code == 2 and f"No dask scheduler answered at {address} within 1 s" in one_line(err)
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--scheduler-address", "nowhere"], capsys)
    assert code == 2 and "--scheduler-address 'nowhere' is not a scheduler address" in one_line(err)
    assert snapshot(victim.parent) == before


# ------------------------------------------------------------------------------------------------- evaluate


def _picture(path: Path, seed: int = 0) -> Path:
    rgb = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_evaluate_names_a_file_that_is_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = _picture(tmp_path / "real.png")
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    code, _, err = run_cli(["evaluate", fake, real, "--clip-model", "none"], capsys)
    assert code == 2 and one_line(err).endswith(f"{fake}: not a readable PNG image: replace or remove it.")
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for folder in (gen, ref):
        _picture(folder / "a.png")
    (gen / "b.tif").write_text("not a tiff")
    _picture(ref / "b.tif")
    code, _, err = run_cli(["evaluate", gen, ref, "--clip-model", "none"], capsys)
    line = one_line(err)
    assert code == 2 and f"{gen / 'b.tif'}: not a readable TIFF image (not a TIFF file" in line
    (gen / "b.tif").unlink(), (ref / "b.tif").unlink()
    (gen / "c.png").write_bytes((ref / "a.png").read_bytes()[:100])  # cut short
    _picture(ref / "c.png")
    code, _, err = run_cli(["evaluate", gen, ref, "--clip-model", "none"], capsys)
    assert code == 2 and "c.png: not a readable PNG image (image file is truncated" in one_line(err)


def test_evaluate_warns_when_an_image_is_compared_with_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    _picture(folder / "a.png")
    code, out, err = run_cli(["evaluate", folder, f"{folder}/.", "--clip-model", "none"], capsys)
    assert code == 0 and "1.0000" in out
    assert one_line(err).startswith(f"warning: GENERATED and REAL are the same ({folder}): it is compared with itself")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "a.png").write_bytes((folder / "a.png").read_bytes())
    code, out, err = run_cli(["evaluate", folder, copy, "--clip-model", "none"], capsys)
    assert code == 0 and err == "" and "identical pixel for pixel (MSE 0)" in out


# ---------------------------------------------------------------------------------------------------- words


def test_counts_and_one_tile_seam_scores_read_as_english() -> None:
    from napari_crafts._plural import plural
    from napari_crafts.cli.generate import seam_line

    assert [plural(n, "tile") for n in (0, 1, 2, 204_166)] == ["0 tiles", "1 tile", "2 tiles", "204,166 tiles"]
    assert seam_line(float("nan"), 0.67) == "seam score: n/a (one tile: no seams)"
    assert seam_line(1.0, 0.9).endswith(": 1.00/0.90")
