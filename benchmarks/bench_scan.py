"""The empty-tile scan of a whole-slide run on a 200,000 × 200,000 px labels image that is mostly empty.

    python benchmarks/bench_scan.py make  LABELS.ome.zarr      # ~1 min, ~32 MB: 4 tissue blobs of 10,240² px
    python benchmarks/bench_scan.py scan  LABELS.ome.zarr      # the scan as generate_slide runs it (wsi.scan)
    python benchmarks/bench_scan.py old   LABELS.ome.zarr 20   # the per-tile scan of c2cb0af on the first 20 rows

The image is an OME-Zarr (NGFF 0.4, zarr v2, int32, 1024-px chunks) as a segmenter's writer leaves it: only
chunks that hold nuclei are stored (real DSB 2018 nuclei, tiled), plus a labels pyramid made by subsampling.
Both scans run on a local cluster of 2 worker processes with 1 thread each, as ``generate_slide`` starts on
this machine, with the default settings (512-px tiles, 64 px overlap, tiny model at 0.25 µm/px: 199,809 tiles).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SIDE, CHUNK, MPP, BLOB = 200_000, 1024, 0.25, 10 * 1024
BLOBS = [(20_000, 30_000), (90_000, 110_000), (150_000, 60_000), (60_000, 170_000)]  # (y, x) of tissue


def make(path: str) -> None:
    import tifffile
    import zarr
    from numcodecs import Blosc

    nuclei = np.tile(tifffile.imread(DATA / "stardist_dsb2018_mask2d.tif").astype(np.int32)[:256, :256], (4, 4))
    root = zarr.open_group(path, mode="w", zarr_format=2)
    steps, n = [1], SIDE
    while n > 4096:
        n, steps = -(-n // 2), [*steps, steps[-1] * 2]
    levels = [root.create_array(str(i), shape=(-(-SIDE // d),) * 2, chunks=(CHUNK, CHUNK), dtype="int32",
                                fill_value=0, compressors=Blosc(cname="zstd", clevel=3),
                                chunk_key_encoding={"name": "v2", "separator": "/"}) for i, d in enumerate(steps)]
    for y, x in BLOBS:
        for cy in range(0, BLOB, CHUNK):
            for cx in range(0, BLOB, CHUNK):
                ids = (cy // CHUNK * 10 + cx // CHUNK) * 1000  # distinct labels per chunk
                levels[0][y + cy : y + cy + CHUNK, x + cx : x + cx + CHUNK] = nuclei + ids
        for i, d in enumerate(steps[1:], 1):  # the labels pyramid, by subsampling
            y0, x0, y1, x1 = y // d, x // d, -(-(y + BLOB) // d), -(-(x + BLOB) // d)
            levels[i][y0:y1, x0:x1] = np.asarray(levels[0][y0 * d : y1 * d : d, x0 * d : x1 * d : d])
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    root.attrs["multiscales"] = [{"version": "0.4", "name": "segmentation", "axes": axes, "datasets": [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [MPP * d, MPP * d]}]}
        for i, d in enumerate(steps)]}]


def _plan(path: str):  # type: ignore[no-untyped-def]
    from napari_crafts.generation.region import GenerationSettings, Region, plan_region
    from napari_crafts.model.description import ModelDescription
    from napari_crafts.model.tiny import ensure_tiny_model
    from napari_crafts.wsi.source_file import open_source

    source = open_source(path)
    plan = plan_region(source, Region(0, 0, *source.shape), ModelDescription.open(ensure_tiny_model()),
                       GenerationSettings())
    return source, replace(plan, grid=replace(plan.grid))  # as generate_slide ships it to the workers


def _cluster():  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, silence_logs=logging.CRITICAL)
    return cluster, Client(cluster)


def scan(path: str) -> None:
    from distributed import as_completed

    from napari_crafts.wsi.scan import scan_empty

    source, plan = _plan(path)
    cluster, client = _cluster()
    work: dict[str, int] = {}

    def run_tasks(name, fn, groups):  # type: ignore[no-untyped-def]  # as wsi.job._Job._run_scan_tasks
        futures = client.map(fn, list(groups), key=[f"crafts-{name}-{i}" for i in range(len(groups))], retries=2)
        index = {f.key: i for i, f in enumerate(futures)}
        out = [None] * len(futures)
        for fut in as_completed(futures):
            out[index[fut.key]] = fut.result()
        work[name] = sum(len(g) for g in groups)
        return out

    try:
        cpu = _cpu(client)
        start = time.perf_counter()
        empty = scan_empty(source, plan, run_tasks)
        seconds, cpu = time.perf_counter() - start, _cpu(client) - cpu
    finally:
        client.close()
        cluster.close()
    g = plan.grid
    print(f"scan: {seconds:.1f} s wall, {cpu:.1f} s CPU (client + workers) for {len(g):,} tiles; "
          f"{int((~empty).sum()):,} hold nuclei; work: {work}")
    rng = np.random.default_rng(0)
    sample = [*map(tuple, rng.integers(0, [g.rows, g.cols], (300, 2))), *map(tuple, np.argwhere(~empty)[::8])]
    wrong = sum(source.is_empty(r * g.stride, c * g.stride, g.tile) != empty[r, c] for r, c in sample)
    print(f"{len(sample)} tiles checked against source.is_empty: {wrong} differ")


def _old_scan_task(source, plan, rows):  # type: ignore[no-untyped-def]  # wsi/job.py at c2cb0af, verbatim
    g, (y, x) = plan.grid, plan.region.box[:2]
    return np.array([[source.is_empty(y + r * g.stride, x + c * g.stride, g.tile) for c in range(g.cols)]
                     for r in rows], dtype=bool).reshape(len(rows), g.cols)


def old(path: str, n_rows: int) -> None:
    source, plan = _plan(path)
    g = plan.grid
    cluster, client = _cluster()
    try:
        per = max(1, 256 // g.cols)
        groups = [list(range(r, min(r + per, n_rows))) for r in range(0, n_rows, per)]
        cpu = _cpu(client)
        start = time.perf_counter()
        client.gather(client.map(partial(_old_scan_task, source, plan), groups))
        seconds, cpu = time.perf_counter() - start, _cpu(client) - cpu
    finally:
        client.close()
        cluster.close()
    tiles, scale = n_rows * g.cols, len(g) / (n_rows * g.cols)
    print(f"old scan: {tiles:,} tiles in {seconds:.1f} s wall, {cpu:.1f} s CPU (client + workers); the whole grid "
          f"at that rate: {scale * seconds:,.0f} s wall, {scale * cpu:,.0f} s CPU")


def _cpu(client) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds used so far by this process and the workers (contention on a shared machine aside)."""
    return time.process_time() + sum(client.run(time.process_time).values())


if __name__ == "__main__":
    what, where = sys.argv[1], sys.argv[2]
    if what == "make":
        make(where)
    elif what == "scan":
        scan(where)
    else:
        old(where, int(sys.argv[3]) if len(sys.argv) > 3 else 20)
