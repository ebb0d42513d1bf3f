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

from _cli import one_line, run_cli
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


# ------------------------------------------------------------------ issue 20: ours, and holding nothing else


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file's bytes and every entry's mtime under ``root``, ``root`` itself included."""
    return {p.relative_to(root.parent).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def plant(output: Path) -> Path:
    """A file of the user's, put into an earlier output of ours (a folder or an OME-Zarr store)."""
    rois = output / "analysis" / "rois.csv"
    rois.parent.mkdir()
    rois.write_text("id,x,y\n1,10,20\n")
    return rois


def small_pairs(tmp_path: Path, labels: np.ndarray) -> tuple[Path, Path]:
    """A real pairs run (napari-crafts pairs) on a pink-and-purple H&E drawn from ``labels``: (H&E, dataset)."""
    from napari_crafts.training.pairs import build_pairs

    rgb = np.empty((*labels.shape, 3), np.uint8)
    rgb[:] = (235, 160, 200)
    rgb[labels > 0] = (80, 30, 120)
    he = tmp_path / "he.tif"
    tifffile.imwrite(he, rgb, photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return he, build_pairs(he, tmp_path / "pairs", nuclei="auto", mpp=MPP, tile_px=32, min_tissue=0.1,
                           test_fraction=0)


@pytest.mark.parametrize("command", ["generate", "demo", "pairs", "train", "tiny-model"])
def test_overwrite_leaves_an_output_of_ours_holding_a_file_of_someone_else(
        command: str, victim: Path, tiny_model: Path, nuclei: tuple[np.ndarray, np.ndarray], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: ``--overwrite`` onto an earlier output of ours into which the user put a file deleted it."""
    from napari_crafts.model.card import MODEL_FOLDER_CONTENTS
    from napari_crafts.training.model_folder import TRAIN_FOLDER_CONTENTS

    if command in ("generate", "demo"):  # the store as create_ome_zarr writes it (the writer of both commands)
        out = tmp_path / "demo" / "synthetic_he.ome.zarr" if command == "demo" else tmp_path / "out.ome.zarr"
        save_ome_zarr(out, np.full((96, 96, 3), 200, np.uint8), mpp=MPP, provenance=PROV, chunk=32)
        argv = (["demo", "--out", out.parent, "--model", tiny_model] if command == "demo"
                else ["generate", victim, out, "--model", tiny_model])
    elif command == "pairs":
        he, out = small_pairs(tmp_path, nuclei[1][:96, :96])
        argv = ["pairs", he, out, "--mpp", MPP, "--tile-px", 32, "--quiet"]
    else:  # a model folder as train / tiny-model mark it
        out = shutil.copytree(tiny_model, tmp_path / "model")
        contents = TRAIN_FOLDER_CONTENTS if command == "train" else MODEL_FOLDER_CONTENTS
        mark_folder(out, "test", contents)
        dataset = tmp_path / "dataset"
        dataset.mkdir()
        argv = (["train", dataset, "--base", tiny_model, "--out", out] if command == "train"
                else ["tiny-model", out])
    assert is_ours(out)
    rois = plant(out)
    before = snapshot(out)
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    line = one_line(err)
    assert code == 2 and str(out) in line and "(analysis/rois.csv)" in line and "not replacing it" in line, line
    assert snapshot(out) == before and rois.read_text() == "id,x,y\n1,10,20\n"


def test_the_napari_writer_and_remove_output_leave_a_store_holding_a_file_of_someone_else(tmp_path: Path) -> None:
    from napari_crafts._writer import save_layer_data

    out = tmp_path / "saved.ome.zarr"
    rgb = np.full((32, 32, 3), 200, np.uint8)
    save_ome_zarr(out, rgb, mpp=MPP, provenance=PROV, chunk=16)
    plant(out)
    before = snapshot(out)
    with pytest.raises(OutputError, match=r"holds files napari-crafts did not write there \(analysis/rois.csv\)"):
        save_layer_data(str(out), rgb, {"name": "synthetic", "metadata": {"napari_crafts": PROV}}, kind="ome-zarr")
    for replace in (lambda: remove_output(out, kind="ome-zarr"),
                    lambda: save_ome_zarr(out, rgb, mpp=MPP, provenance=PROV, chunk=16, overwrite=True)):
        with pytest.raises(OutputError, match=r"\(analysis/rois.csv\): not deleting it"):
            replace()
    assert snapshot(out) == before


def test_an_ome_zarr_store_of_ours_holds_exactly_what_we_write(tmp_path: Path) -> None:
    """Levels, chunks, resume markers, the private tile store and zarr's temporary files are ours; a file with a
    name like ours (a .partial of someone else's, a non-numbered level) is not; resuming keeps others' files."""
    from napari_crafts.export import create_ome_zarr
    from napari_crafts.export.safety import EMPTY_MASK, TILE_STORE, foreign_files, remove_private

    out = tmp_path / "run.ome.zarr"
    writer = create_ome_zarr(out, (96, 96), mpp=MPP, provenance=PROV, chunk=32)  # a run cut short: markers
    writer.write_chunk(0, 0, 0, np.full((32, 32, 3), 9, np.uint8))
    tiles = create_ome_zarr(out / TILE_STORE, (64, 64), mpp=None, provenance=PROV, chunk=32, levels=1)
    tiles.write_chunk(0, 1, 1, np.full((32, 32, 3), 9, np.uint8))
    np.save(out / TILE_STORE / EMPTY_MASK, np.zeros((2, 2), bool))
    (out / "0" / "0" / "0" / "1.0123456789abcdef0123456789abcdef.partial").write_bytes(b"half")  # zarr's own
    assert foreign_files(out, kind="ome-zarr") == []
    theirs = [out / "0" / "notes.partial", out / "0" / "0" / "0" / "x", out / "level0" / ".zarray",
              out / TILE_STORE / "mine.txt"]
    for f in theirs:
        f.parent.mkdir(exist_ok=True)
        f.write_text("mine")
    assert foreign_files(out, kind="ome-zarr") == sorted(theirs)
    assert check_output(out, kind="ome-zarr", resume=True) == out  # continued in place: nothing is deleted
    remove_private(out, TILE_STORE)  # what a finished run does with its tile store: only our files go
    assert [p.name for p in (out / TILE_STORE).rglob("*")] == ["mine.txt"]
    assert all(f.read_text() == "mine" for f in theirs)


def test_an_ome_tiff_is_ours_by_its_record_not_by_a_string_in_its_xml(tmp_path: Path) -> None:
    from napari_crafts.export import TIFF_NAMESPACE

    theirs = tmp_path / "theirs.ome.tif"  # our namespace, but no napari-crafts record under it
    tifffile.imwrite(theirs, np.zeros((3, 16, 16), np.uint8), ome=True, metadata={
        "axes": "CYX", "MapAnnotation": {"Namespace": TIFF_NAMESPACE, "Value": {"napari_crafts_notes": "{}"}}})
    assert TIFF_NAMESPACE in tifffile.TiffFile(theirs).ome_metadata and output_kind(theirs) is None
    before = theirs.read_bytes()
    with pytest.raises(OutputError, match="did not write"):
        check_output(theirs, kind="ome-tiff", overwrite=True)
    assert theirs.read_bytes() == before


@pytest.mark.parametrize("command", ["generate", "demo", "pairs", "train", "evaluate", "tiny-model"])
def test_no_command_writes_inside_the_installed_package(command: str, victim: Path, tiny_model: Path,
                                                        tmp_path: Path, he: np.ndarray,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: an output inside the package's own folder (its demo model, its data) was accepted."""
    from napari_crafts.export.safety import package_folder

    inside = package_folder() / "data" / "demo_model" / f"_test_output_{tmp_path.name}"
    assert not inside.exists()
    rgb = tmp_path / "he.tif"
    tifffile.imwrite(rgb, he[:64, :64], photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP),
                     resolutionunit="CENTIMETER")
    argv = {
        "generate": ["generate", victim, inside, "--model", tiny_model],
        "demo": ["demo", "--out", inside, "--model", tiny_model],
        "pairs": ["pairs", rgb, inside, "--mpp", MPP, "--quiet"],
        "train": ["train", tmp_path, "--base", tiny_model, "--out", inside],
        "evaluate": ["evaluate", tmp_path, tmp_path, "--clip-model", "none", "--csv", inside],
        "tiny-model": ["tiny-model", inside],
    }[command]
    try:
        code, _, err = run_cli(argv, capsys)
        line = one_line(err)
        assert code == 2 and "lies inside the installed napari-crafts package" in line, line
        assert not inside.exists()
    finally:
        if inside.exists():  # made by this test only (a failure above): do not leave it in the package
            shutil.rmtree(inside) if inside.is_dir() else inside.unlink()


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
        line = one_line(capsys.readouterr().err, internal=True)
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
