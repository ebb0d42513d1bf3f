"""Whole-slide batch generation when things break mid-run: a worker process killed while it renders, the disk
filling up; each ends with the same bytes as an undisturbed run (real dask clusters, tiny model, CPU). Also
what ``on_progress`` hears without progress bars (the napari widget's background job runs without them)."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.storage._local as local_store  # LocalStore writes every file through its _put

from napari_crafts.export import PROGRESS_GROUP, read_provenance
from napari_crafts.wsi.job import TILE_STORE, DiskFull, SlideOptions, generate_slide
from test_batch import SETTINGS, chunk_files, inproc, write_labels  # noqa: F401 (inproc is a fixture)

CHUNK = 64  # 160² px: 3×3 tiles of 64 px (stride 48) in batches of 2, 3×3 level-0 chunks, 3 levels


@dataclass
class Run:
    path: Path
    events: list[tuple[str, int, int]]  # what on_progress heard


@pytest.fixture(scope="module")
def source(nuclei: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160² px of the real DSB 2018 labels."""
    return write_labels(tmp_path_factory.mktemp("src") / "labels.tif", nuclei[1][:160, :160])


@pytest.fixture(scope="module")
def undisturbed(source: Path, tiny_model: Path, inproc: str,  # noqa: F811
                tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The reference: one run that nothing interrupts."""
    events: list[tuple[str, int, int]] = []
    out = generate_slide(source, tmp_path_factory.mktemp("undisturbed") / "slide.ome.zarr", model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=CHUNK, scheduler_address=inproc), progress=False, on_progress=lambda *event: events.append(event))
    assert read_provenance(out)["complete"] is True
    return Run(out, events)


def tiles_done(out: Path) -> list[Path]:
    """Done markers of the rendered tiles in the private tile store."""
    return sorted((out / TILE_STORE / PROGRESS_GROUP / "0").glob("*/*"))


# ------------------------------------------------------------------------------------------- worker dies


@pytest.mark.slow
def test_worker_killed_while_rendering_is_replaced_and_output_is_unchanged(source: Path, tiny_model: Path,
                                                                           undisturbed: Run, tmp_path: Path) -> None:
    """The cluster's worker process is SIGKILLed while it executes a render task, after the first tile is stored.

    The scheduler reschedules what it was running and recomputes the results it held; its nanny starts a new
    worker process, which loads the model again (the registered plugin) and finishes the run. One worker, so
    the replacement must do the rest (and the test stays quick on two cores).
    """
    from distributed import Client, LocalCluster

    out = tmp_path / "killed.ome.zarr"
    killed: list[tuple[int, list[str], int]] = []  # (pid, keys it was executing, tiles stored by then)

    def executing(dask_worker: Any) -> tuple[int, list[str]]:  # runs on each worker
        return os.getpid(), [str(ts.key) for ts in dask_worker.state.executing]

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:

        def kill_a_rendering_worker(what: str, done: int, total: int) -> None:
            """Once a tile is stored, SIGKILL a worker caught executing a render task (watch for up to 2 s)."""
            deadline = time.monotonic() + 2
            while not killed and (stored := len(tiles_done(out))) and time.monotonic() < deadline:
                for pid, keys in client.run(executing).values():
                    if any(key.startswith("crafts-render-") for key in keys):
                        os.kill(pid, signal.SIGKILL)  # the worker, not its nanny
                        killed.append((pid, keys, stored))
                        return
                time.sleep(0.02)

        result = generate_slide(source, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=CHUNK, scheduler_address=cluster.scheduler_address), progress=False, on_progress=kill_a_rendering_worker)
        workers_after = client.run(os.getpid)

    assert killed, "the worker was never caught executing a render task: nothing was killed"
    pid, keys, stored = killed[0]
    assert stored >= 1 and any(key.startswith("crafts-render-") for key in keys)
    assert len(workers_after) == 1 and pid not in workers_after.values()  # replaced by a new process
    assert result == out and read_provenance(out)["complete"] is True and not (out / TILE_STORE).exists()
    assert chunk_files(out) == chunk_files(undisturbed.path)  # every level, byte for byte


# ------------------------------------------------------------------------------------------- disk full


@pytest.mark.slow
def test_disk_full_mid_run_names_resume_and_resume_completes_unchanged(source: Path, tiny_model: Path,
                                                                       undisturbed: Run, tmp_path: Path,
                                                                       inproc: str,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The output's disk fills up just after the second tile's pixels are written (before its done marker).

    ENOSPC is raised where zarr's LocalStore writes a file, on the threaded in-process cluster (a patch in this
    process does not reach worker processes); it travels back through the task's retries to generate_slide.
    """
    out = tmp_path / "full.ome.zarr"
    tile_pixels = str(out / TILE_STORE / "0") + os.sep
    real_put = local_store._put
    written: list[str] = []  # tile pixel chunks written, in order
    fill_after: list[int] = [2]  # the disk is full after this many tile writes (empty: never)
    full = threading.Event()

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        if str(path).startswith(str(out) + os.sep):
            if full.is_set():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            if str(path).startswith(tile_pixels) and path.name.isdigit():  # a chunk, not .zarray
                written.append(str(path))
                if fill_after and len(written) == fill_after[0]:
                    full.set()  # this write still lands; every later write to the output fails
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(local_store, "_put", put)
    with pytest.raises(DiskFull, match=r"^disk full while writing .*full\.ome\.zarr; free space and rerun "
                                           r"with --resume\.$") as failure:
        generate_slide(source, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=CHUNK, scheduler_address=inproc), progress=False)
    cause = failure.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    assert read_provenance(out)["complete"] is False
    first, second = written
    assert len(tiles_done(out)) == 1  # the second tile's pixels landed, its done marker did not

    fill_after.clear()  # space freed
    full.clear()
    written.clear()
    result = generate_slide(source, out, model=tiny_model, settings=SETTINGS, options=SlideOptions(chunk=CHUNK, scheduler_address=inproc, resume=True), progress=False)
    assert first not in written and second in written  # kept what was marked done, redid the rest
    assert result == out and read_provenance(out)["complete"] is True and not (out / TILE_STORE).exists()
    assert chunk_files(out) == chunk_files(undisturbed.path)  # every level, byte for byte


# ------------------------------------------------------------------------------------------- a task fails


@pytest.mark.slow
def test_worker_failure_is_one_line_leaves_no_output_and_resume_then_runs(source: Path, tiny_model: Path,
                                                                          undisturbed: Run, tmp_path: Path,
                                                                          inproc: str,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """Every render task fails (an internal error, not the user's) before any tile is written: the command
    says so in one line that names the log holding the traceback (no dask "Compute Failed" blocks), removes the
    output it created, and a rerun with --resume then runs as usual."""
    import argparse

    from napari_crafts.cli.generate import configure_parser, main
    from napari_crafts.export import OmeZarrWriter

    def broken(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    out = tmp_path / "failed.ome.zarr"
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    argv = [str(source), str(out), "--model", str(tiny_model), "--steps", "2", "--tile-size", "64", "--overlap", "16",
            "--seed", "7", "--prompt", "nuclei", "--batch", "2", "--chunk", str(CHUNK), "--scheduler-address", inproc]
    capfd.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(OmeZarrWriter, "write_chunk", broken)  # the in-process worker runs this class
        code = main(parser.parse_args(argv))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("napari-crafts generate: internal error: RuntimeError: CUDA error: an illegal memory")
    log = Path(lines[0].split("the traceback is in ")[1].split(" (or rerun")[0])
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
    assert not out.exists()  # nothing was generated: nothing left behind to block the rerun
    assert main(parser.parse_args([*argv, "--resume"])) == 0
    assert chunk_files(out) == chunk_files(undisturbed.path)


# ------------------------------------------------------------------------------------------- progress


def test_on_progress_counts_finished_tiles_and_chunks_without_progress_bars(undisturbed: Run) -> None:
    for what in ("tiles", "chunks"):
        counts = [(done, total) for w, done, total in undisturbed.events if w == what]
        assert counts and counts[-1][0] == counts[-1][1] > 0, f"{what}: last heard {counts[-1:]}"
        assert [d for d, _ in counts] == sorted(d for d, _ in counts)
