"""Bad input that used to end in an internal error or a misleading message (issue 20): one line on stderr, exit code
2, and nothing written. Every case is refused before a model runs, so these tests are fast."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from _cli import one_line, run_cli

MPP = 0.25








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


def test_the_demo_refuses_such_a_pixel_size_and_leaves_no_folder(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code, _, err = run_cli(["demo", "--out", out, "--model", tiny_model, "--mpp", "1e-9", "--steps", "1"], capsys)
    assert code == 2 and "is 250,000,000× finer than the model's 0.25 µm/px" in one_line(err)
    assert not out.exists()


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


# ---------------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pairs set of real CMU-1 tiles (32 px), as test_train makes it."""
    from _data import he_tile
    from test_train import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs") / "cmu1", he_tile()[:128, :256])


@pytest.mark.parametrize("fail_at", [1, 2])
def test_train_on_a_full_disk_says_free_space_and_resume(
    pairs: Path,
    tiny_model: Path,
    tmp_path: Path,
    fail_at: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from napari_crafts.training import train as train_mod

    real = train_mod.save_checkpoint
    calls: list[int] = []

    def fill_the_disk(folder: Path, step: int, **kwargs: object) -> Path:
        calls.append(step)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real(folder, step, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "save_checkpoint", fill_the_disk)
    out = tmp_path / "model"
    argv = [
        "train",
        pairs,
        "--base",
        tiny_model,
        "--out",
        out,
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "2",
        "--modes",
        "labels",
        "--validation-tiles",
        "0",
        "--quiet",
    ]
    code, _, err = run_cli(argv, capsys)
    line = one_line(err)
    assert code == 2
    if fail_at == 1:  # nothing worth resuming: the folder it made is gone
        assert (
            line.endswith(
                f"disk full while writing {out}, before its first checkpoint (nothing kept): free space and rerun."
            )
            and not out.exists()
        )
    else:
        assert line.endswith(
            f"disk full while writing {out}: free space and rerun with --resume (it continues "
            "from step 1, its last checkpoint)."
        )
        monkeypatch.setattr(train_mod, "save_checkpoint", real)
        code, out_text, _ = run_cli([*argv, "--resume"], capsys)
        assert code == 0 and f"model: {out} (2 steps" in out_text


def test_resume_with_no_earlier_run_says_it_starts_fresh(
    victim: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new.ome.zarr"
    code, said, err = run_cli(["generate", victim, out, "--model", tiny_model, "--resume", "--mpp", "1e-9"], capsys)
    assert said == f"note: nothing to resume at {out} (no earlier run there): starting a new run.\n"
    assert code == 2 and "µm/px" in one_line(err) and not out.exists()  # the run itself is refused (pixel size)
    model = tmp_path / "model"
    code, said, err = run_cli(
        ["train", tmp_path / "no-pairs", "--base", tiny_model, "--out", model, "--resume"], capsys
    )
    assert said == f"note: nothing to resume at {model} (no earlier run there): starting a new run.\n"
    assert code == 2 and not model.exists()


# -------------------------------------------------------------------------------------- names and numbers


def test_a_relative_model_folder_that_does_not_exist_is_not_taken_for_a_hub_id(
    victim: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(victim.parent)
    (victim.parent / "models").mkdir()
    code, _, err = run_cli(["generate", victim, "out.ome.zarr", "--model", "models/mine"], capsys)
    line = one_line(err)
    assert code == 2 and f"Model folder 'models/mine': no such folder in {victim.parent / 'models'}" in line
    assert "Hugging Face" not in line and not (victim.parent / "out.ome.zarr").exists()


@pytest.mark.parametrize("name", ["out.tif", "out.png"])
def test_an_output_named_like_a_file_is_refused(
    victim: Path, tiny_model: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = victim.with_name(name)
    code, _, err = run_cli(["generate", victim, out, "--model", tiny_model], capsys)
    line = one_line(err)
    assert (
        code == 2
        and f"is named like a {out.suffix} file, but generate writes an OME-Zarr folder: name it "
        f"{victim.with_name('out.ome.zarr')}"
        in line
    )
    assert ("--tiff" in line) == (name == "out.tif") and not out.exists()


def test_a_reversed_test_band_says_reversed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _data import CMU1_SVS

    out = tmp_path / "pairs"
    code, _, err = run_cli(["pairs", CMU1_SVS, out, "--mpp", "0.5", "--test-band", "2900:2400"], capsys)
    line = one_line(err)
    assert code == 2 and line.endswith(
        "Test band 2900:2400 is reversed: give Y0:Y1 with Y0 < Y1 (rows in H&E pixels); did you mean 2400:2900?"
    )
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- io


def test_a_truncated_tiff_is_one_line_without_the_reader_log(
    victim: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = victim.read_bytes()
    for n in (200, len(data) // 2):  # tags pointing past the end (tifffile logs them); pixels cut short
        cut = tmp_path / f"cut{n}.tif"
        cut.write_bytes(data[:n])
        code, _, err = run_cli(["generate", cut, tmp_path / "o.ome.zarr", "--model", tiny_model], capsys)
        line = one_line(err)
        assert (
            code == 2
            and f"{cut}: not a readable slide or image (the TIFF is truncated or damaged: it has {n:,} bytes" in line
            and "tifffile" not in line
        )
    assert not (tmp_path / "o.ome.zarr").exists()


def test_a_stack_of_labels_planes_says_how_to_pick_one(
    tmp_path: Path, tiny_model: Path, nuclei: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    labels = nuclei[1][:96, :96]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([labels, labels[::-1], labels[:, ::-1]]), imagej=True, metadata={"axes": "ZYX"})
    code, _, err = run_cli(["generate", stack, tmp_path / "o.ome.zarr", "--model", tiny_model, "--mpp", "0.25"], capsys)
    line = one_line(err)
    assert (
        code == 2
        and "a stack of 3 planes of uint16 labels (3×96×96); napari-crafts reads one 2-D labels "
        "image: save the plane you want on its own"
        in line
    )
    fluo = tmp_path / "fluo.tif"  # channels of a fluorescence image still open as channels
    tifffile.imwrite(fluo, np.stack([nuclei[0][:96, :96]] * 2), imagej=True, metadata={"axes": "CYX"})
    from napari_crafts.io.slide import open_slide

    assert open_slide(fluo).kind == "channels" and not (tmp_path / "o.ome.zarr").exists()


def test_the_local_cluster_takes_a_free_dashboard_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    from napari_crafts.wsi import job

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def local_cluster(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    with pytest.raises(Stop), job._connect(None, 1, print):
        pass
    assert seen["dashboard_address"] == ":0"  # never the often-taken 8787 (a warning on every run)


# ------------------------------------------------------------------------------- mostly glass: batched chunks


def test_glass_chunks_are_written_in_batches_with_the_same_bytes(
    tmp_path: Path, tiny_model: Path, nuclei: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slide that is mostly glass: the chunks only glass touches (and the reduced chunks above only them) are
    written a batch per task, not a task each, and every level has the bytes the task-per-chunk path writes."""
    from distributed import LocalCluster

    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.wsi import job

    labels = np.zeros((768, 768), np.uint16)
    labels[:96, :96] = nuclei[1][:96, :96]
    src = tmp_path / "sparse.tif"
    tifffile.imwrite(src, labels, resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    settings = GenerationSettings(steps=1, tile_size=64, overlap=16, seed=3)
    tasks: list[tuple[int, int]] = []
    wait = job._Job.wait

    def counting(self: job._Job, *args: object, **kwargs: object) -> None:
        tasks.append((len({f.key for f in self.chunks.values()}), len(self.chunks)))
        wait(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(job._Job, "wait", counting)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        options = job.SlideOptions(chunk=64, scheduler_address=cluster.scheduler_address)
        run = dict(model=tiny_model, settings=settings, progress=False)
        batched = job.generate_slide(src, tmp_path / "batched.ome.zarr", options=options, **run)  # type: ignore[arg-type]
        # stopped after level 0, then resumed: the reduced levels are batched too
        from napari_crafts.export import OmeZarrWriter

        def stop(self: OmeZarrWriter) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(job._Job, "submit_pyramid", lambda self: None)
            m.setattr(OmeZarrWriter, "finish", stop)
            with pytest.raises(KeyboardInterrupt):
                job.generate_slide(src, tmp_path / "resumed.ome.zarr", options=options, **run)  # type: ignore[arg-type]
        resumed = job.generate_slide(  # type: ignore[arg-type]
            src, tmp_path / "resumed.ome.zarr", options=dataclasses.replace(options, resume=True), **run
        )
        monkeypatch.setattr(
            job, "_glass_classes", lambda w, g, m: [np.full(w.grid(i), None, object) for i in range(w.levels)]
        )
        each = job.generate_slide(src, tmp_path / "each.ome.zarr", options=options, **run)  # type: ignore[arg-type]
    (batched_tasks, chunks), _, (resumed_tasks, pyramid_chunks), (each_tasks, same_chunks) = tasks
    assert pyramid_chunks == 36 + 9 + 4 + 1 and resumed_tasks <= 10  # 10: 7 chunks above nuclei, 3 glass tasks
    assert chunks == same_chunks == 144 + 36 + 9 + 4 + 1 and each_tasks == chunks
    assert batched_tasks <= 20  # 20: the chunks the nuclei touch, those above them, one glass task per level
    import zarr

    a, b, c = (zarr.open_group(out, mode="r") for out in (batched, each, resumed))
    assert sorted(a.array_keys()) == sorted(b.array_keys()) == sorted(c.array_keys()) == ["0", "1", "2", "3", "4"]
    for level in a.array_keys():
        assert np.array_equal(np.asarray(a[level]), np.asarray(b[level])), level
        assert np.array_equal(np.asarray(c[level]), np.asarray(b[level])), level
