"""Nothing lost, nothing misleading (issue 15): the output rule, argument checks, one-line errors.

Every refusal here happens before a model or a cluster starts, so these tests are fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_crafts.cli import build_parser, main
from napari_crafts.cli._errors import LOG_DIR, report
from napari_crafts.export import save_ome_zarr, write_pyramidal_tiff
from napari_crafts.export.safety import (
    FOLDER_MARKER,
    OutputError,
    OutputExists,
    check_output,
    is_ours,
    mark_folder,
    output_kind,
    remove_output,
)
from napari_crafts.generation.region import GenerationSettings, SettingsError
from napari_crafts.io.slide import SlideError

MPP = 0.25
PROV = {"synthetic": True, "generator": "napari-crafts", "seed": 1}


@pytest.fixture
def victim(tmp_path: Path, nuclei: tuple[np.ndarray, np.ndarray]) -> Path:
    """A labels slide the user cares about."""
    path = tmp_path / "victim.tif"
    tifffile.imwrite(path, nuclei[1][:96, :96], resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------------------------------- 1. data loss


@pytest.mark.parametrize("where", ["same", "relative", "symlink", "tiff", "tiff-relative"])
def test_the_source_is_never_an_output_even_with_overwrite(victim: Path, tiny_model: Path, where: str,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    before = victim.read_bytes()
    link = victim.with_name("link.tif")
    link.symlink_to(victim)
    monkeypatch.chdir(victim.parent)
    outputs = {"same": victim, "relative": Path("sub/../victim.tif"), "symlink": link}
    out = outputs.get(where, victim.with_name("o.zarr"))
    extra = {"tiff": ["--tiff", victim], "tiff-relative": ["--tiff", "./victim.tif"]}.get(where, [])
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--overwrite", *extra], capsys)
    line = one_line(err)
    assert code == 2 and "is also an input of this command" in line and str(victim) in line
    assert victim.read_bytes() == before and not victim.with_name("o.zarr").exists()


def test_outputs_inside_or_around_the_source_are_refused(tmp_path: Path, tiny_model: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "labels.ome.zarr"
    zarr.open_group(src, mode="w", zarr_format=2)
    code, _, err = run_cli(["generate", src, src / "out.ome.zarr", "--model", tiny_model], capsys)
    assert code == 2 and "lies inside the input" in one_line(err)
    code, _, err = run_cli(["generate", src, tmp_path, "--model", tiny_model, "--overwrite"], capsys)
    assert code == 2 and "holds the input" in one_line(err)
    assert (src / ".zgroup").exists() and tmp_path.exists()


@pytest.mark.parametrize("thing", ["file", "folder", "zarr", "our-tiff"])
def test_overwrite_refuses_what_napari_crafts_did_not_write(victim: Path, tiny_model: Path, thing: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = victim.with_name("out.ome.zarr")
    if thing == "file":
        out.write_text("precious")
    elif thing == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    elif thing == "zarr":  # someone else's zarr store
        zarr.open_group(out, mode="w", zarr_format=2).attrs["multiscales"] = []
    else:  # ours, but an OME-TIFF: not replaced by an OME-Zarr
        write_pyramidal_tiff(out, np.zeros((32, 32, 3), np.uint8), mpp=MPP, provenance=PROV, tile=16)
    before = {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model, "--overwrite"], capsys)
    line = one_line(err)
    assert code == 2 and str(out) in line and "not replacing it" in line
    assert {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()} == before


def test_existing_output_without_overwrite_names_both_ways_out(victim: Path, tiny_model: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = victim.with_name("out.ome.zarr")
    save_ome_zarr(out, np.zeros((32, 32, 3), np.uint8), mpp=MPP, provenance=PROV, chunk=16)
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model], capsys)
    assert code == 2 and "already exists: pass --resume to continue it, or use --overwrite" in one_line(err)


def test_evaluate_writes_marked_results_and_replaces_only_its_own(tmp_path: Path, he: np.ndarray,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    gen, real = tmp_path / "gen", tmp_path / "real"
    for folder, img in ((gen, he), (real, he[::-1].copy())):
        folder.mkdir()
        tifffile.imwrite(folder / "a.tif", img[:64, :64])
    csv_path, json_path = tmp_path / "table.csv", tmp_path / "table.json"
    base = ["evaluate", gen, real, "--clip-model", "none", "--csv", csv_path, "--json", json_path]
    assert run_cli(base, capsys)[0] == 0
    assert output_kind(csv_path) == "csv" and output_kind(json_path) == "json"
    assert json.loads(json_path.read_text())["gen"]["generator"].startswith("napari-crafts ")
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "--csv" in one_line(err) and "already exists" in err
    assert run_cli([*base, "--overwrite"], capsys)[0] == 0
    foreign = tmp_path / "mine.csv"
    foreign.write_text("a,b\n1,2\n")
    code, _, err = run_cli(["evaluate", gen, real, "--clip-model", "none", "--csv", foreign, "--overwrite"], capsys)
    assert code == 2 and "not replacing it" in one_line(err) and foreign.read_text() == "a,b\n1,2\n"
    code, _, err = run_cli(["evaluate", gen, real, "--clip-model", "none", "--csv", gen / "a.tif"], capsys)
    assert code == 2 and "lies inside the input" in one_line(err)


def test_demo_and_tiny_model_follow_the_same_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "provenance.json").write_text('{"mine": true}')
    for flags in ([], ["--overwrite"]):
        code, _, err = run_cli(["demo", "--out", out, *flags], capsys)
        assert code == 2 and "provenance.json" in one_line(err)
    assert (out / "provenance.json").read_text() == '{"mine": true}'
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    code, _, err = run_cli(["tiny-model", folder, "--overwrite"], capsys)
    assert code == 2 and "did not write" in one_line(err) and (folder / "thesis.tex").exists()
    model = tmp_path / "tiny"
    assert run_cli(["tiny-model", model], capsys)[0] == 0 and is_ours(model)
    code, _, err = run_cli(["tiny-model", model], capsys)
    assert code == 2 and "--overwrite" in one_line(err)
    assert run_cli(["tiny-model", model, "--overwrite", "--seed", "1"], capsys)[0] == 0
    (model / "unet_notes.txt").write_text("mine")  # a file napari-crafts did not write, inside its own output
    code, _, err = run_cli(["tiny-model", model, "--overwrite"], capsys)
    assert code == 2 and "holds files napari-crafts did not write there (unet_notes.txt)" in one_line(err)
    assert (model / "unet_notes.txt").read_text() == "mine" and (model / "unet").is_dir()


def test_output_kinds_are_recognised_by_content(tmp_path: Path) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    zarr_out = tmp_path / "a.zarr"
    save_ome_zarr(zarr_out, np.zeros((16, 16, 3), np.uint8), mpp=MPP, provenance=PROV, chunk=16)
    tiff_out = tmp_path / "not-a-tiff-name.dat"
    write_pyramidal_tiff(tiff_out, np.zeros((32, 32, 3), np.uint8), mpp=MPP, provenance=PROV, tile=16)
    info = PngInfo()
    info.add_text("napari_crafts", json.dumps(PROV))
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, pnginfo=info)
    plain_png = tmp_path / "b.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(plain_png)
    record = tmp_path / "prov.json"
    record.write_text(json.dumps(PROV))
    folder = tmp_path / "model"
    mark_folder(folder, "test", ["a.txt"])
    link = tmp_path / "link.zarr"
    link.symlink_to(zarr_out)
    assert [output_kind(p) for p in (zarr_out, tiff_out, png, record, folder)] == [
        "ome-zarr", "ome-tiff", "png", "json", "folder"]
    plain_tiff = tmp_path / "plain.tif"
    tifffile.imwrite(plain_tiff, np.zeros((8, 8), np.uint8))
    assert [output_kind(p) for p in (plain_png, plain_tiff, link, tmp_path / "missing")] == [None] * 4
    (folder / FOLDER_MARKER).unlink()
    assert not is_ours(folder)
    with pytest.raises(OutputError, match="not a napari-crafts output folder: not deleting it"):
        remove_output(folder, kind="folder")
    with pytest.raises(OutputExists, match="--csv .* already exists: use --overwrite"):
        check_output(record, kind="csv", flag="--csv")
    with pytest.raises(OutputError, match="is a napari-crafts JSON file, not a CSV file"):
        check_output(record, kind="csv", overwrite=True)


# ------------------------------------------------------------------------------------------- 2. failed runs
# (a run that fails before any tile removes its output: tests/test_batch_failures.py)


# ------------------------------------------------------------------------------------------- 3, 4. arguments


@pytest.mark.parametrize(("flags", "named"), [
    (["--steps", "0"], "--steps 0: must be an integer from 1 to 1000"),
    (["--steps", "-1"], "--steps -1: must be an integer from 1 to 1000"),
    (["--guidance", "nan"], "--guidance nan: must be a number ≥ 0 and ≤ 100"),
    (["--seed", "-5"], "--seed -5: must be an integer from 0 to"),
    (["--tile-size", "7"], "--tile-size 7: must be an integer from 32 to 4096"),
    (["--tile-size", "128", "--overlap", "100"], "--overlap 100: must be an integer from 0 to half the tile size (64)"),
    (["--cfg-cutoff", "0"], "--cfg-cutoff 0.0: must be a number > 0 and ≤ 1"),
    (["--cfg-cutoff", "3"], "--cfg-cutoff 3.0: must be a number > 0 and ≤ 1"),
    (["--cache-interval", "0"], "--cache-interval 0: must be an integer from 1"),
    (["--batch", "-2"], "--batch -2: must be an integer from 0 to 256"),
    (["--chunk", "7"], "argument --chunk: '7': must be an integer from 16 to 8192"),
    (["--workers", "0"], "argument --workers: '0': must be an integer from 1 to 1024"),
    (["--mpp", "nan"], "argument --mpp: 'nan': must be a finite number > 0"),
    (["--cfg", "3"], "unrecognized arguments: --cfg 3"),  # no prefix matching (it was --cfg-cutoff 3)
])
def test_every_number_is_checked_before_anything_starts(victim: Path, tiny_model: Path, flags: list[str],
                                                        named: str, capfd: pytest.CaptureFixture[str]) -> None:
    out = victim.with_name("out.ome.zarr")
    try:
        code = main(["generate", str(victim), str(out), "--model", str(tiny_model), *flags])
    except SystemExit as stop:  # argparse: usage errors exit at once
        code = int(stop.code or 0)
    err = capfd.readouterr().err
    assert code == 2 and named in one_line(err) and not out.exists()


def test_settings_refuse_what_no_run_can_use_in_the_python_api_too() -> None:
    with pytest.raises(SettingsError, match=r"^steps must be an integer from 1 to 1000, got 0\.$") as info:
        GenerationSettings(steps=0)
    assert (info.value.field, info.value.value) == ("steps", 0)
    for bad in ({"guidance_scale": float("nan")}, {"seed": -5}, {"tile_size": 7}, {"overlap": 300},
                {"cfg_cutoff": 0.0}, {"scheduler": "fastest"}, {"steps": 2.5}, {"batch_size": True}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            GenerationSettings(**bad)  # type: ignore[arg-type]
    settings = GenerationSettings(steps=3, cfg_cutoff=0.5)
    json.loads(json.dumps(settings.record(), allow_nan=False))  # provenance is always valid JSON


def test_no_parser_matches_prefixes() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert parser.allow_abbrev is False
    assert {name: p.allow_abbrev for name, p in subparsers.choices.items()} == dict.fromkeys(subparsers.choices, False)


# ------------------------------------------------------------------------------------------- 5. files by content


def test_a_float_image_read_as_fluorescence_says_so_and_kind_labels_reads_it(tmp_path: Path,
                                                                               nuclei: tuple[np.ndarray, np.ndarray]
                                                                               ) -> None:
    from napari_crafts.wsi.job import _read_as
    from napari_crafts.wsi.source_file import open_source

    path = tmp_path / "segmentation.tif"
    tifffile.imwrite(path, nuclei[1][:96, :96].astype(np.float32), resolution=(1e4 / MPP, 1e4 / MPP),
                     resolutionunit="CENTIMETER")
    header = _read_as(open_source(path), None)  # what the header line of a run says after "from <file>"
    assert header.startswith("fluorescence: one channel of float32 values") and "rerun with --kind labels" in header
    labels = open_source(path, kind="labels")
    assert labels.mode == "labels" and _read_as(labels, "labels") == "labels"
    np.testing.assert_array_equal(labels.data[0:96, 0:96], nuclei[1][:96, :96])


# ------------------------------------------------------------------------------------------- 6, 7. errors


def test_user_errors_are_one_line_and_bugs_point_to_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def raised(exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException as caught:  # noqa: BLE001
            return caught

    assert report("generate", raised(SlideError("x.svs: no such file or folder."))) == 2
    assert one_line(capsys.readouterr().err) == "napari-crafts generate: error: x.svs: no such file or folder."
    try:
        np.zeros((2, 2)).reshape(3)  # a ValueError from numpy is not a user error
    except ValueError as exc:
        numpy_error: BaseException = exc
    for exc in (raised(RuntimeError("CUDA error: an illegal memory access")), numpy_error):
        assert report("generate", exc) == 1
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"napari-crafts generate: internal error: {type(exc).__name__}: ")
        log = Path(line.split("the traceback is in ")[1].split(" (or rerun with --verbose)")[0])
        assert log.parent == LOG_DIR and "Traceback" in log.read_text() and type(exc).__name__ in log.read_text()
    assert report("generate", raised(RuntimeError("boom")), verbose=True) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1].endswith("the traceback is above; please report it.")


@pytest.mark.slow
def test_local_workers_leave_ctrl_c_to_the_client() -> None:
    """A terminal's Ctrl-C reaches the worker processes too; they ignore it (no traceback from each worker), and
    the client stops the run in one line."""
    import signal

    from napari_crafts.wsi.job import _connect

    with _connect(None, 1, lambda *args: None) as client:
        ignored = client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    assert list(ignored.values()) == [True]


def test_cli_prints_no_library_advice(tmp_path: Path, tiny_model: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without accelerate, diffusers advises installing it at every model load: not while a command runs (but with
    --verbose, which also shows that the load did happen)."""
    import logging

    import diffusers.models.modeling_utils as modeling_utils

    heard: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: heard.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("diffusers").addHandler(handler)
    monkeypatch.setattr(modeling_utils, "is_accelerate_available", lambda: False)
    small = ["--size", "64", "--steps", "1", "--tile-size", "64", "--overlap", "0"]
    try:
        for verbose in (False, True):
            heard.clear()
            model = shutil.copytree(tiny_model, tmp_path / f"model-{verbose}")  # a model not loaded yet
            flags = ["--verbose"] if verbose else []
            out = str(tmp_path / f"out-{verbose}")
            assert main(["demo", "--out", out, "--model", str(model), *small, *flags]) == 0
            assert any("install accelerate" in m for m in heard) == verbose, heard
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
