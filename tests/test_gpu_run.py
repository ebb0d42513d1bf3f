"""benchmarks/gpu_run.sh --dry-run: the GPU benchmark's every step on CPU with the tiny model, so it cannot rot.

One dry run (about a minute on a loaded 2-core machine) serves every test here; the figures it writes are CPU
figures of a tiny random model and are checked for shape and sanity, never for speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_run.sh"
STEPS = ["check", "model", "bench", "floor", "autobatch", "labels", "e2e", "variants"]


def run_script(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_RUN_BUDGET": "400"}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu_run") / "out"
    proc = run_script("--dry-run", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def load(out: Path, name: str) -> Any:
    """``name`` (summary, run, env, bench_fp16, floor, ...) from the run's results.json."""
    return json.loads((out / "results.json").read_text())[name]


@pytest.mark.slow
def test_dry_run_runs_every_step(dry_run: Path) -> None:
    # three files come back from the device (it returns at most eight)
    assert sorted(p.name for p in dry_run.iterdir()) == ["log.txt", "results.json", "rows.md"]
    steps = load(dry_run, "summary")["steps"]
    assert [s["step"] for s in steps] == STEPS
    assert all(s["rc"] == 0 and not s["timed_out"] for s in steps), steps
    results = json.loads((dry_run / "results.json").read_text())
    assert sorted(results) == ["autobatch", "bench_fp16", "bench_variants", "e2e", "env", "floor", "run", "summary"]
    assert load(dry_run, "run")["dry_run"] is True
    assert load(dry_run, "env")["cuda"] is False
    assert "== done in" in (dry_run / "log.txt").read_text()


@pytest.mark.slow
def test_dry_run_engine_reproduces_the_pipeline(dry_run: Path) -> None:
    bench = load(dry_run, "bench_fp16")
    labels = [r["label"] for r in bench["rows"]]
    assert labels == [
        "(a) diffusers pipeline",
        "(b) engine, batch 1",
        "(b) engine, batch 2",
        "(b) engine, batch auto (1)",
        "(c) engine, unipc 20 steps (approx.), batch 2",
    ]
    for row in bench["rows"]:
        assert 0 < row["s_per_tile"] <= row["s_per_tile_nominal"], row
        assert row["peak_memory_gib"] > 0
    s = load(dry_run, "summary")
    assert s["dry_run"] is True
    assert s["pixel_check"]["tolerance"] == 1 and s["pixel_check"]["ok"] is True
    assert s["pixel_check"]["max_abs_diff_vs_a"] <= 1  # fp32: same maths as the pipeline
    assert s["best_exact"]["label"].startswith("(b) engine")
    assert s["best_exact"]["speedup_vs_a"] == pytest.approx(s["a_s_per_tile"] / s["best_exact"]["s_per_tile"])
    assert s["gpu_syncs_per_call"] is None  # counted on CUDA only
    variants = [r["label"] for r in load(dry_run, "bench_variants")["rows"]]
    assert variants == ["(a) diffusers pipeline", "(b) engine, batch 2", "(b) engine channels_last, batch 2"]


@pytest.mark.slow
def test_dry_run_floor_autobatch_and_end_to_end(dry_run: Path) -> None:
    from napari_crafts.generation.tiling import TileGrid

    s = load(dry_run, "summary")
    floor = load(dry_run, "floor")
    assert floor["matmul"]["tflops"] > 0 and floor["matmul"]["n"] == 256
    assert floor["tile_px"] == 64 and floor["tflop_per_tile_exact"] > 0
    assert s["floor_s_per_tile"] == pytest.approx(floor["tflop_per_tile_exact"] / floor["matmul"]["tflops"])
    assert "gap_to_floor" not in s  # the floor's work is the SD1.5-size model's, not the tiny one's
    auto = s["auto_batch"]
    assert auto["chosen_batch"] == 1  # off CUDA
    assert auto["batches_called"] == [8, 4, 2, 2, 2, 2]  # halved twice, then the 8 tiles two at a time
    assert auto["batch_cap_after"] == 2 and auto["recovered"] is True
    assert auto["max_abs_diff_vs_batch1"] <= 1
    e2e = load(dry_run, "e2e")
    assert e2e["returncode"] == 0 and e2e["labels_px"] == [128, 128]
    assert e2e["tiles_with_nuclei"] == s["e2e"]["tiles_with_nuclei"] == 9
    assert s["e2e"]["tiles_per_s"] == pytest.approx(9 / e2e["wall_s"])
    assert 0 < s["e2e"]["engine_s_per_tile"] and s["e2e"]["share_around_model"] < 1
    assert s["cm2"]["px"] == 40_000 and s["cm2"]["tiles"] == len(TileGrid(40_000, 40_000, 64, 8))
    assert s["cm2"]["hours_at_e2e_rate"] == pytest.approx(s["cm2"]["tiles"] * e2e["s_per_tile"] / 3600)


@pytest.mark.slow
def test_dry_run_rows_are_marked_and_complete(dry_run: Path) -> None:
    rows = (dry_run / "rows.md").read_text()
    assert rows.startswith("# GPU run (DRY RUN on CPU")
    assert "| Device | Model | Mode |" in rows
    assert rows.count("| (a) diffusers pipeline |") == 2  # fp32 and bf16
    for what in (
        "floor",
        "auto batch",
        "forced out of memory",
        "napari-crafts generate end to end",
        "1 cm² at 0.25 µm/px",
    ):
        assert f"| {what} |" in rows, what
    assert "DRY RUN on CPU, tiny model (not a GPU figure)" in rows
    assert "H100" not in rows


@pytest.mark.slow
def test_report_keeps_what_finished_before_a_time_out(dry_run: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_run

    steps, out = tmp_path / "steps", tmp_path / "out"
    steps.mkdir()
    out.mkdir()
    (steps / "bench_fp16.json").write_text(json.dumps(load(dry_run, "bench_fp16")))
    (steps / "steps.tsv").write_text("check\t0\t5\nmodel\t0\t40\nbench\t0\t150\nfloor\t124\t60\n")
    gpu_run.main(["report", str(steps), str(out)])
    s = load(out, "summary")
    assert s["pixel_check"]["ok"] is True and "floor_s_per_tile" not in s and "e2e" not in s
    assert s["steps"][-1] == {"step": "floor", "rc": 124, "seconds": 60, "timed_out": True}
    assert "| floor | 124 (timed out) | 60 |" in (out / "rows.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "rows.md"]


def test_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    proc = run_script("--dry-run", tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"gpu_run: {tmp_path} exists and is not an empty folder: give a new or empty folder.\n"
    assert sorted(tmp_path.iterdir()) == [keep] and keep.read_text() == "mine"


@pytest.mark.slow
def test_docs_refuses_the_figures_of_a_dry_run(dry_run: Path) -> None:
    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes()
    results = dry_run / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_run.py"), "docs", str(results)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"{results} is from a dry run (or says nothing of it): its figures are not GPU figures; "
        "docs/benchmarks.md is unchanged.\n"
    )
    assert docs.read_bytes() == before
