"""The steps of ``benchmarks/gpu_run.sh`` that ``bench_engine.py`` does not do, and the report that joins them.

Each subcommand writes one JSON file and prints a line or two; ``report`` joins whatever the run's folder holds
(a step that timed out leaves its rows out, not the others') into ``results.json`` and ``rows.md``:

    gpu_run.py model KIND DIR              build the tiny or the full-size random model into DIR
    gpu_run.py floor OUT.json              bf16 matmul rate (fp32 off CUDA), FLOPs of one tile, floor s/tile
    gpu_run.py autobatch MODEL OUT.json    Engine.auto_batch's choice, its peak memory, a forced OOM that halves
    gpu_run.py labels SIDE OUT.tif         SIDE² px of nuclear labels (DSB 2018 nuclei, mirrored)
    gpu_run.py e2e MODEL LABELS OUT.json   napari-crafts generate on LABELS: wall time, tiles/s
    gpu_run.py report STEPDIR OUTDIR       OUTDIR/results.json (summary + every step file) and rows.md
    gpu_run.py docs RESULTS.json           merge its engine/pipeline rows into docs/benchmarks.md (GPU runs only)

See docs/benchmarks.md ("GPU figures in one command") for the device call and what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_engine  # noqa: E402  (a sibling script, not a package)

#: Bench JSON files gpu_run.sh writes, in the order of their importance (and of the rows in rows.md).
BENCH_FILES = ("bench_fp16.json", "bench_variants.json", "bench_compile.json")
#: Every step file ``report`` gathers into results.json (the device returns at most 8 files: the run hands
#: back three, results.json, rows.md and log.txt).
STEP_FILES = ("run.json", "env.json", *BENCH_FILES, "floor.json", "autobatch.json", "e2e.json")
#: ``napari-crafts generate`` without the console script (the GPU machine runs the package from src/).
CLI = "import sys; from napari_crafts.cli import main; sys.exit(main())"
#: 1 cm² of tissue at 0.25 µm/px (the arithmetic of the whole-slide estimate).
CM2_MPP = 0.25
#: The starting batch of the forced out-of-memory run, and the batch it must fit at (the limit is set for it).
OOM_START_BATCH, OOM_FITS = 8, 2


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")


def labels_image(side: int) -> np.ndarray:
    """``side``² int32 nuclear labels: the bundled DSB 2018 nuclei, mirrored to cover the square."""
    from napari_crafts._sample_data import load_nuclei

    _, labels = load_nuclei()
    reps = [-(-side // n) for n in labels.shape]
    labels = np.pad(labels, [(0, (r - 1) * n) for r, n in zip(reps, labels.shape, strict=True)], mode="symmetric")
    return np.ascontiguousarray(labels[:side, :side], dtype=np.int32)


# -- model -----------------------------------------------------------------------------------------------------
def cmd_model(args: argparse.Namespace) -> None:
    if args.kind == "tiny":
        from napari_crafts.model.tiny import build_tiny_model

        build_tiny_model(args.dir)
    else:
        t0 = time.perf_counter()
        bench_engine.build_full_model(args.dir)
        print(f"built the full-size random model in {time.perf_counter() - t0:.0f} s")


# -- floor -------------------------------------------------------------------------------------------------------
def matmul_rate(n: int, repeats: int = 10) -> dict[str, Any]:
    """TFLOP/s of an n×n×n matrix product on random data: bf16 on CUDA (timed with events), fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    dev = "cuda" if cuda else "cpu"
    pairs = [(torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)) for _ in range(3)]
    for a, b in pairs:  # warm-up: kernels chosen, handles made
        a @ b
    times = []
    for i in range(repeats):
        a, b = pairs[i % len(pairs)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "device": dev,
        "repeats": repeats,
        "median_s": median,
        "tflops": 2 * n**3 / median / 1e12,
    }


def cmd_floor(args: argparse.Namespace) -> None:
    import count_flops
    import torch

    rate = matmul_rate(args.n)
    work = count_flops.count(args.tile)
    tflop = work["modes"][0]["tflop_per_tile"]  # exact: 50 steps with CFG + one VAE decode
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    out = {
        "device_name": name,
        "matmul": rate,
        "tile_px": args.tile,
        "tflop_per_tile_exact": tflop,
        "flops": work,
        "floor_s_per_tile": tflop / rate["tflops"],
        "what": "full-size SD1.5 + ControlNet work of one exact tile (count_flops.py) over the measured matmul rate",
    }
    print(
        f"{name}: {rate['dtype']} {args.n}³ matmul {rate['tflops']:.1f} TFLOP/s; one exact {args.tile}² tile "
        f"{tflop:.1f} TFLOP → floor {out['floor_s_per_tile']:.3g} s/tile"
    )
    write_json(args.out, out)


# -- auto batch and out of memory ------------------------------------------------------------------------------
class BatchSpy:
    """Wraps ``Engine.generate``: records each call's batch size; with ``fail_above`` (CPU: no real OOM to force)
    raises torch's out-of-memory error for larger batches, as the allocator does on a full GPU."""

    def __init__(self, engine: Any, fail_above: int | None = None) -> None:
        self.engine, self.generate, self.fail_above = engine, engine.generate, fail_above
        self.batches: list[int] = []

    def __call__(self, noise: np.ndarray, *a: Any, **kw: Any) -> Any:
        import torch

        self.batches.append(len(noise))
        if self.fail_above is not None and len(noise) > self.fail_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: batch {len(noise)} > {self.fail_above})")
        return self.generate(noise, *a, **kw)


def cmd_autobatch(args: argparse.Namespace) -> None:
    import torch

    from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.model.engine import Engine

    engine = Engine(args.model)
    cuda = engine.device.startswith("cuda")
    tile, overlap = args.tile_size, args.tile_size // 8
    t0 = time.perf_counter()
    chosen = engine.auto_batch(tile)
    probe_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "device": engine.device,
        "device_name": torch.cuda.get_device_name() if cuda else "CPU",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "tile_px": tile,
        "chosen_batch": chosen,
        "probe_s": probe_s,
        "steps": args.steps,
        # measured by the probes (CUDA only): one tile's working memory in a step with CFG and in a decode
        "step_bytes_per_tile": engine._step_bytes.get((tile, True, True)),
        "decode_bytes_per_tile": engine._decode_bytes.get(tile),
        "free_bytes_before": engine._free_bytes() if cuda else None,
    }
    rows, cols = 2, OOM_START_BATCH // 2
    stride = tile - overlap
    source = LabelsSource(labels_image(max(rows, cols) * stride + overlap), name="DSB 2018 nuclei")
    # 1. One call at the chosen batch: its peak memory (weights included, as bench_engine reports it).
    f, n = engine.vae_scale_factor, chosen
    noise = np.random.default_rng(0).standard_normal((n, 4, tile // f, tile // f)).astype(np.float32)
    control = np.stack([source.control(0, 0, tile, tile)] * n)
    with bench_engine.PeakMemory(cuda) as mem:
        t0 = time.perf_counter()
        run(engine.generate(noise, control, prompt="", steps=args.steps))
        out["chosen_call_s"] = time.perf_counter() - t0
    out["chosen_peak_gib"] = mem.peak / 2**30
    out["memory"] = "GPU max_memory_allocated" if cuda else "process RSS"
    # 2. A forced out of memory: a region of 8 tiles asked at batch 8 where only 2 fit, then the same at batch 1.
    region = Region(0, 0, rows * stride + overlap, cols * stride + overlap)
    settings = GenerationSettings(steps=args.steps, tile_size=tile, overlap=overlap, batch_size=OOM_START_BATCH)
    limit = None
    if cuda:  # the caching allocator refuses more than this fraction: real out-of-memory errors from torch
        torch.cuda.empty_cache()
        per_tile = max(out["step_bytes_per_tile"] or 0, out["decode_bytes_per_tile"] or 0)
        limit = torch.cuda.memory_allocated() + (OOM_FITS + 0.5) * per_tile
        torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
    spy = BatchSpy(engine, fail_above=None if cuda else OOM_FITS)
    engine.generate = spy  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        forced = run(generate_region(engine, source, region, settings, source_mpp=engine.mpp, watermark=False))
        out["oom_run_s"] = time.perf_counter() - t0
        out["oom_error"] = None
    except Exception as exc:  # noqa: BLE001 - a failed recovery is the finding to report
        traceback.print_exc()
        forced, out["oom_error"] = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
    out["oom"] = {
        "forced_by": (
            f"torch.cuda.set_per_process_memory_fraction: weights + {OOM_FITS + 0.5} tiles' working memory"
            if cuda
            else f"simulated on CPU: Engine.generate raises OutOfMemoryError above batch {OOM_FITS}"
        ),
        "limit_bytes": limit,
        "start_batch": OOM_START_BATCH,
        "batches_called": spy.batches,
        "batch_cap_after": engine.batch_cap(tile, guidance=True, control=True),
        "tiles": rows * cols,
        "recovered": forced is not None,
    }
    # 3. The recovered pixels against the same region at batch 1 (same noise, same tiles: must agree).
    if forced is not None:
        engine.generate = spy.generate  # type: ignore[method-assign]
        ref = run(
            generate_region(
                engine,
                source,
                region,
                GenerationSettings(steps=args.steps, tile_size=tile, overlap=overlap, batch_size=1),
                source_mpp=engine.mpp,
                watermark=False,
            )
        )
        diff = np.abs(forced.rgb.astype(np.int16) - ref.rgb.astype(np.int16))
        out["oom"]["max_abs_diff_vs_batch1"] = int(diff.max())
    print(
        f"auto batch {chosen} at {tile} px (peak {out['chosen_peak_gib']:.2f} GiB); forced OOM: batches "
        f"{spy.batches}, cap after {out['oom']['batch_cap_after']}, recovered {out['oom']['recovered']}"
    )
    write_json(args.out, out)


# -- end to end ---------------------------------------------------------------------------------------------------
def cmd_labels(args: argparse.Namespace) -> None:
    import tifffile

    if args.out.exists():
        raise SystemExit(f"{args.out} exists: give a new file name.")
    tifffile.imwrite(args.out, labels_image(args.side), tile=(512, 512), compression="zlib")
    print(f"wrote {args.out} ({args.side}² px labels)")


def tile_phase_seconds(stderr: str) -> float | None:
    """Seconds of the CLI's "tiles" progress bar (model work and blending, without start-up and pyramid)."""
    done = re.findall(r"tiles: 100%\|[^\[]*\[(?:(\d+):)?(\d+):(\d+)<", stderr)
    if not done:
        return None
    h, m, sec = done[-1]
    return int(h or 0) * 3600 + int(m) * 60 + int(sec)


def cmd_e2e(args: argparse.Namespace) -> None:
    import tifffile

    from napari_crafts.generation.tiling import TileGrid
    from napari_crafts.model.description import ModelDescription

    mpp = ModelDescription.open(args.model).mpp  # the labels are at the model's pixel size: no resampling
    output = args.workdir / "e2e.ome.zarr"
    cmd = [
        sys.executable,
        "-c",
        CLI,
        "generate",
        str(args.labels),
        str(output),
        "--model",
        str(args.model),
        "--mpp",
        str(mpp),
        "--steps",
        str(args.steps),
        "--tile-size",
        str(args.tile_size),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
        "--workers",
        "1",
    ]
    print(" ".join(cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    labels = tifffile.imread(args.labels)
    grid = TileGrid(*labels.shape, args.tile_size, args.overlap)
    tiles = sum(bool(labels[t.y : t.y + t.size, t.x : t.x + t.size].any()) for t in grid.tiles)
    out = {
        "command": "napari-crafts " + " ".join(cmd[3:]),
        "returncode": proc.returncode,
        "wall_s": wall,
        "labels_px": list(labels.shape),
        "mpp": mpp,
        "steps": args.steps,
        "tile_px": args.tile_size,
        "overlap_px": args.overlap,
        "batch": args.batch,
        "grid_tiles": len(grid),
        "tiles_with_nuclei": tiles,
        "tiles_per_s": tiles / wall,
        "s_per_tile": wall / tiles,
        "tile_phase_s": tile_phase_seconds(proc.stderr),
        "stdout_tail": proc.stdout[-1500:],
        "stderr_tail": proc.stderr[-3000:],
    }
    print(f"rc {proc.returncode}: {tiles} tiles in {wall:.1f} s ({out['tiles_per_s']:.3g} tiles/s)")
    write_json(args.out, out)
    if proc.returncode:
        raise SystemExit(proc.returncode)


# -- report ---------------------------------------------------------------------------------------------------------
def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def cm2_tiles(tile: int, overlap: int, mpp: float = CM2_MPP) -> int:
    from napari_crafts.generation.tiling import TileGrid

    side = round(1e4 / mpp)  # 1 cm = 10,000 µm
    return len(TileGrid(side, side, tile, overlap))


def summarise(folder: Path) -> dict[str, Any]:
    """The headline figures of a run's step folder (absent where the step that gives one did not finish)."""
    run_info = load(folder, "run.json") or {}
    s: dict[str, Any] = {"dry_run": run_info.get("dry_run"), "started": run_info.get("started"), "steps": []}
    steps_file = folder / "steps.tsv"
    if steps_file.is_file():
        for line in steps_file.read_text().splitlines():
            name, rc, secs = line.split("\t")[:3]
            s["steps"].append({"step": name, "rc": int(rc), "seconds": int(secs), "timed_out": rc in ("124", "137")})
    main = load(folder, "bench_fp16.json")
    exact = []
    if main:
        s["device_name"], s["model"] = main["meta"]["device_name"], main["meta"]["model_label"]
        rows = main["rows"]
        a = next(r for r in rows if r["key"] == "a")
        exact = [r for r in rows if r["key"] == "b"]
        best = min(exact, key=lambda r: r["s_per_tile_nominal"])
        s["a_s_per_tile"] = a["s_per_tile_nominal"]
        s["best_exact"] = {
            "label": best["label"],
            "s_per_tile": best["s_per_tile_nominal"],
            "speedup_vs_a": a["s_per_tile_nominal"] / best["s_per_tile_nominal"],
            "peak_memory_gib": best["peak_memory_gib"],
        }
        s["goal_4x_met"] = s["best_exact"]["speedup_vs_a"] >= 4
        s["pixel_check"] = {
            "max_abs_diff_vs_a": max(r["max_abs_diff_vs_a"] for r in exact),
            "tolerance": main["meta"]["tolerance"],
        }
        s["pixel_check"]["ok"] = s["pixel_check"]["max_abs_diff_vs_a"] <= s["pixel_check"]["tolerance"]
        s["gpu_syncs_per_call"] = next((r["gpu_syncs"] for r in exact if r["gpu_syncs"] is not None), None)
    floor = load(folder, "floor.json")
    if floor:
        s["matmul_tflops"], s["floor_s_per_tile"] = floor["matmul"]["tflops"], floor["floor_s_per_tile"]
        if main and main["meta"]["model"] == "full" and main["meta"]["tile_px"] == floor["tile_px"]:
            s["gap_to_floor"] = s["best_exact"]["s_per_tile"] / floor["floor_s_per_tile"]
    auto = load(folder, "autobatch.json")
    if auto:
        s["auto_batch"] = {k: auto[k] for k in ("chosen_batch", "chosen_peak_gib", "memory")}
        s["auto_batch"].update({k: auto["oom"][k] for k in ("batches_called", "batch_cap_after", "recovered")})
        s["auto_batch"]["max_abs_diff_vs_batch1"] = auto["oom"].get("max_abs_diff_vs_batch1")
    e2e = load(folder, "e2e.json")
    if e2e and e2e["returncode"] == 0:
        s["e2e"] = {
            k: e2e[k] for k in ("labels_px", "tiles_with_nuclei", "wall_s", "tiles_per_s", "s_per_tile", "tile_phase_s")
        }
        # the engine's time for the same tiles at the same steps and batch policy (auto): (b)'s auto row, unscaled
        engine_row = next((r for r in exact if "auto" in r["label"]), None)
        if engine_row and engine_row["steps_run"] == e2e["steps"]:
            share = 1 - engine_row["s_per_tile"] / e2e["s_per_tile"]
            s["e2e"].update(engine_s_per_tile=engine_row["s_per_tile"], share_around_model=share)
        tiles = cm2_tiles(e2e["tile_px"], e2e["overlap_px"])
        s["cm2"] = {
            "mpp": CM2_MPP,
            "px": round(1e4 / CM2_MPP),
            "tiles": tiles,
            "steps": e2e["steps"],
            "hours_at_e2e_rate": tiles * e2e["s_per_tile"] / 3600,
        }
        if e2e.get("tile_phase_s"):  # start-up is paid once per run, not per tile: the steady rate as well
            s["cm2"]["hours_at_tile_phase_rate"] = tiles * e2e["tile_phase_s"] / e2e["tiles_with_nuclei"] / 3600
    return s


def summary_rows(s: dict[str, Any]) -> list[str]:
    """Markdown lines for the figures bench_engine's table does not hold."""
    tag = "DRY RUN on CPU, tiny model (not a GPU figure)" if s.get("dry_run") else s.get("device_name", "?")
    lines = ["| Figure | Value | Run |", "|---|---|---|"]

    def add(what: str, value: str) -> None:
        lines.append(f"| {what} | {value} | {tag} |")

    if "best_exact" in s:
        b = s["best_exact"]
        add(
            "best exact engine row vs (a)",
            f"{b['label']}: {b['s_per_tile']:.3g} s/tile, {b['speedup_vs_a']:.2f}× "
            f"(goal ≥ 4×: {'met' if s['goal_4x_met'] else 'not met'})",
        )
        add(
            "pixel check (b) vs (a)",
            f"max abs diff {s['pixel_check']['max_abs_diff_vs_a']} (tolerance {s['pixel_check']['tolerance']})",
        )
    if "floor_s_per_tile" in s:
        gap = (
            f", exact is {s['gap_to_floor']:.1f}× the floor"
            if "gap_to_floor" in s
            else " (SD1.5-size work; no gap: the run's model is not SD1.5-size)"
        )
        add("floor", f"{s['floor_s_per_tile']:.3g} s/tile at {s['matmul_tflops']:.3g} TFLOP/s measured{gap}")
    if "auto_batch" in s:
        a = s["auto_batch"]
        add("auto batch", f"{a['chosen_batch']} tiles, peak {a['chosen_peak_gib']:.2f} GiB ({a['memory']})")
        add(
            "forced out of memory",
            f"batches {a['batches_called']}, cap after {a['batch_cap_after']}, "
            f"recovered: {a['recovered']}, max abs diff vs batch 1: {a['max_abs_diff_vs_batch1']}",
        )
    if "e2e" in s:
        e = s["e2e"]
        around = (
            (
                f"; engine alone {e['engine_s_per_tile']:.3g} s/tile, {100 * e['share_around_model']:.0f} % "
                "around the model"
            )
            if "share_around_model" in e
            else ""
        )
        add(
            "napari-crafts generate end to end",
            f"{e['labels_px'][0]}² px, {e['tiles_with_nuclei']} tiles in "
            f"{e['wall_s']:.1f} s: {e['tiles_per_s']:.3g} tiles/s{around}",
        )
        c = s["cm2"]
        steady = (
            f"; {c['hours_at_tile_phase_rate']:.2f} h at the tile phase's rate ({e['tile_phase_s']} s for "
            f"the tiles, without start-up)"
            if "hours_at_tile_phase_rate" in c
            else ""
        )
        add(
            "1 cm² at 0.25 µm/px",
            f"{c['px']:,}² px = {c['tiles']:,} tiles × {e['s_per_tile']:.3g} s "
            f"= {c['hours_at_e2e_rate']:.2f} h ({c['steps']} steps){steady}",
        )
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    folder, out = args.stepdir, args.outdir
    s = summarise(folder)
    md = [
        "# GPU run" + (" (DRY RUN on CPU with the tiny model: no figure here is a GPU figure)" if s["dry_run"] else ""),
        "",
        "## Engine vs pipeline (rows for the table in docs/benchmarks.md)",
        "",
    ]
    rows = []
    for name in BENCH_FILES:
        result = load(folder, name)
        if result:
            rows += bench_engine.table_rows(result)
    md += [
        bench_engine.markdown(rows) if rows else "(no bench step finished)",
        "",
        "## Floor, auto batch, end to end",
        "",
        *summary_rows(s),
        "",
        "## Steps",
        "",
        "| Step | rc | s |",
        "|---|---|---|",
        *[
            f"| {x['step']} | {x['rc']}{' (timed out)' if x['timed_out'] else ''} | {x['seconds']} |"
            for x in s["steps"]
        ],
    ]
    steps = {name.removesuffix(".json"): load(folder, name) for name in STEP_FILES}
    results = {"summary": s, **{k: v for k, v in steps.items() if v is not None}}
    for name, text in (("results.json", json.dumps(results, indent=2)), ("rows.md", "\n".join(md) + "\n")):
        (out / f".{name}.part").write_text(text)  # then renamed: a run killed mid-write keeps the last report
        (out / f".{name}.part").replace(out / name)
    print(f"wrote {out / 'results.json'} and {out / 'rows.md'}")


def cmd_docs(args: argparse.Namespace) -> None:
    """The bench rows of a GPU run's results.json into the table of docs/benchmarks.md (``--write-docs``'s merge)."""
    results = json.loads(args.results.read_text())
    if results["summary"].get("dry_run") is not False:
        raise SystemExit(
            f"{args.results} is from a dry run (or says nothing of it): its figures are not GPU figures; "
            "docs/benchmarks.md is unchanged."
        )
    rows = [
        r
        for name in BENCH_FILES
        if name.removesuffix(".json") in results
        for r in bench_engine.table_rows(results[name.removesuffix(".json")])
    ]
    if not rows:
        raise SystemExit(f"{args.results} holds no finished bench step; docs/benchmarks.md is unchanged.")
    bench_engine.write_docs(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model")
    m.add_argument("kind", choices=("tiny", "full"))
    m.add_argument("dir", type=Path)
    m.set_defaults(func=cmd_model)
    f = sub.add_parser("floor")
    f.add_argument("out", type=Path)
    f.add_argument("--n", type=int, default=8192, help="matmul side (default 8192)")
    f.add_argument("--tile", type=int, default=512)
    f.set_defaults(func=cmd_floor)
    a = sub.add_parser("autobatch")
    a.add_argument("model", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--tile-size", type=int, default=512)
    a.add_argument("--steps", type=int, default=2, help="steps per call (memory does not depend on them)")
    a.set_defaults(func=cmd_autobatch)
    lab = sub.add_parser("labels")
    lab.add_argument("side", type=int)
    lab.add_argument("out", type=Path)
    lab.set_defaults(func=cmd_labels)
    e = sub.add_parser("e2e")
    e.add_argument("model", type=Path)
    e.add_argument("labels", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--workdir", type=Path, required=True, help="where the OME-Zarr output goes")
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--tile-size", type=int, default=512)
    e.add_argument("--overlap", type=int, default=64)
    e.add_argument("--batch", type=int, default=0)
    e.set_defaults(func=cmd_e2e)
    r = sub.add_parser("report")
    r.add_argument("stepdir", type=Path, help="the step files")
    r.add_argument("outdir", type=Path, help="where results.json and rows.md go")
    r.set_defaults(func=cmd_report)
    d = sub.add_parser("docs")
    d.add_argument("results", type=Path)
    d.set_defaults(func=cmd_docs)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
