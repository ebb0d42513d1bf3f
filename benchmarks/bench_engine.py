"""Time napari-crafts' Engine against the naive diffusers pipeline, on the same tiles and starting latents.

Rows, all in one run, all from the same noise (``tiling.noise_field``) and control tiles (DSB 2018 nuclei):

  (a) ``StableDiffusionControlNetPipeline.from_pretrained(folder)`` as a typical user writes it: default
      attention, fp16 on CUDA / fp32 on CPU, one call per tile, ``latents=`` the same noise, ``output_type="np"``;
  (b) ``Engine.generate`` at the same schedule, ``--batch`` tiles per call (one row per batch size and mode);
  (c) the engine's approximate fast modes (``APPROX_MODES``: fewer UniPC steps, DeepCache-style feature reuse,
      a CFG cut-off, and all together), each scored by SSIM/PSNR against (b)'s exact output.

(b) must reproduce (a) (same math): the largest pixel difference is printed for every (b) row. One warm-up
call per row is excluded from the timing. Run ``python benchmarks/bench_engine.py --help``; see
docs/benchmarks.md for what the numbers mean and the recorded results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
DOCS_START, DOCS_END = "<!-- bench:start -->", "<!-- bench:end -->"
#: The CRAFTS schedule: 50 steps, CFG 7.5. Runs with fewer steps are scaled to this (see ``Timing.scaled``).
NOMINAL_STEPS, GUIDANCE = 50, 7.5
#: Full-size SD1.5 parameter counts (millions) that ``--model full`` must reproduce (see NOTES).
SD15_PARAMS_M = {"unet": 859.5, "controlnet": 361.3, "vae": 83.7, "text_encoder": 123.1}
#: Engine configurations benchmarked as exact (b) rows: name → Engine(...) kwargs; chosen with --modes.
#: They change how the networks run, not what they compute (the check column holds them to (a)).
ENGINE_MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},  # the warm-up call holds the compilation: reported as compile_s
    "compile+channels_last": {"compile": True, "channels_last": True},
}
#: Approximate (c) rows: name → (label, Engine.generate(...) kwargs, steps or None for --fast-steps).
APPROX_MODES: dict[str, tuple[str, dict[str, Any], int | None]] = {
    "unipc": ("unipc {fast} steps", {"scheduler": "unipc"}, None),
    "reuse3": ("feature reuse, full UNet every 3 steps", {"cache_interval": 3}, NOMINAL_STEPS),
    "fast": ("unipc {fast} steps + reuse every 2 + CFG for 50%", {"scheduler": "unipc", "cache_interval": 2,
                                                                   "cfg_cutoff": 0.5}, None),
}


# -- the models -------------------------------------------------------------------------------------------
def build_full_model(path: Path) -> None:
    """Full-size SD1.5 + ControlNet architecture with random weights, saved as a safetensors diffusers folder."""
    import torch
    from diffusers import (AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from napari_crafts.model.tiny import _byte_level_vocab

    torch.manual_seed(0)
    vocab = path / "_vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "vocab.json").write_text(json.dumps(_byte_level_vocab()))
    (vocab / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    )
    controlnet = ControlNetModel.from_unet(unet)
    with torch.no_grad():  # fresh zero convs would make the control image a no-op; let it reach the output
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.01)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    for f in vocab.iterdir():
        f.unlink()
    vocab.rmdir()
    (path / "napari_crafts.json").write_text(json.dumps({"name": "SD1.5 + ControlNet shapes, random weights"}))


def prepare_model(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """(diffusers folder, label for the tables)."""
    if args.model == "tiny":
        from napari_crafts.model.tiny import build_tiny_model

        return build_tiny_model(tmp / "tiny"), "tiny random"
    if args.model == "full":
        folder = args.model_dir or tmp / "full"
        if (folder / "model_index.json").is_file():  # built by an earlier run with this --model-dir
            return folder, "SD1.5-size random"
        t0 = time.perf_counter()
        # In a child process, so that building does not inflate this process's RSS (the CPU memory figure).
        subprocess.run([sys.executable, __file__, "--build-full", str(folder)], check=True)
        print(f"built the full-size random model in {time.perf_counter() - t0:.0f} s")
        return folder, "SD1.5-size random"
    from napari_crafts.model.engine import resolve_model

    path = resolve_model(args.model)
    return path, path.name


def param_counts(pipe: Any) -> dict[str, float]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6 for name in SD15_PARAMS_M}


# -- the tiles ---------------------------------------------------------------------------------------------
def make_tiles(n: int, size: int, vae_factor: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noise (n, 4, size/f, size/f) float32, control (n, size, size, 3) uint8) for n tiles on a grid.

    Control tiles are cut from the bundled DSB 2018 nuclei labels, mirrored to cover the grid; the noise is
    the slide-wide noise field at each tile's position, exactly what ``generate_region`` would use.
    """
    from napari_crafts._sample_data import load_nuclei
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.generation.tiling import noise_field

    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    _, labels = load_nuclei()
    reps = (-(-rows * size // labels.shape[0]), -(-cols * size // labels.shape[1]))
    labels = np.pad(labels, [(0, (r - 1) * s) for r, s in zip(reps, labels.shape)], mode="symmetric")
    source = LabelsSource(labels, name="DSB 2018 nuclei")
    boxes = [(i // cols * size, i % cols * size) for i in range(n)]
    lat = size // vae_factor
    noise = np.stack([noise_field(seed, y // vae_factor, x // vae_factor, lat, lat) for y, x in boxes])
    control = np.stack([source.control(y, x, size, size) for y, x in boxes])
    return noise, control


# -- timing and memory ---------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Wall time of the timed calls of a row, and the mean time of one denoising step."""

    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # per call: mean of steps 2..n

    def scaled(self, steps_run: int, steps_nominal: int, calls: int) -> float:
        """Seconds the same calls would take at ``steps_nominal`` steps: measured + missing steps × step time."""
        if steps_run == steps_nominal or not self.step_seconds:
            return self.seconds
        return self.seconds + (steps_nominal - steps_run) * float(np.mean(self.step_seconds)) * calls


class StepClock:
    """Timestamps a call's start and each of its steps (synchronising the GPU first when ``sync``)."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.marks: list[float] = []

    def mark(self, *_: Any) -> dict:
        if self.sync is not None:
            self.sync()
        self.marks.append(time.perf_counter())
        return {}  # also serves as a diffusers callback_on_step_end

    def step_time(self) -> float | None:
        m = self.marks
        if len(m) >= 3:
            return (m[-1] - m[1]) / (len(m) - 2)  # steps 2..n: the first also holds prompt and latent setup
        return m[-1] - m[0] if len(m) == 2 else None


class PeakMemory:
    """Peak GPU memory (torch.cuda.max_memory_allocated, reset on entry) or peak process RSS (sampled)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            try:
                with open("/proc/self/statm") as fh:
                    self.peak = max(self.peak, int(fh.read().split()[1]) * page)
            except OSError:  # no /proc (macOS): fall back to the process-lifetime peak
                self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            if self._stop.wait(0.01):
                return

    def __exit__(self, *_: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


@dataclass
class Row:
    key: str  # a, b, c
    label: str
    batch: int
    steps_run: int
    steps_nominal: int
    scheduler: str
    approximate: bool = False
    load_s: float | None = None
    warmup_s: float | None = None  # the untimed first call (holds torch.compile's compilation)
    timed_s: float = 0.0
    s_per_tile: float = 0.0
    s_per_tile_nominal: float = 0.0
    step_s: float | None = None
    peak_memory_gib: float = 0.0
    max_abs_diff_vs_a: int | None = None
    mean_abs_diff_vs_a: float | None = None
    ssim_vs_ref: float | None = None
    psnr_vs_ref: float | None = None
    gpu_syncs: int | None = None  # GPU→CPU syncs in one 3-step call (CUDA only; the final copy is one)
    notes: list[str] = field(default_factory=list)


def time_row(row: Row, call: Any, chunks: list[np.ndarray], ctx: dict) -> np.ndarray:
    """Warm up with one call, then time ``call(indices, steps, clock)`` over ``chunks`` (best of ``repeats``
    passes); returns the images."""
    torch = ctx["torch"]
    sync = torch.cuda.synchronize if ctx["cuda"] else None
    best = None
    with PeakMemory(ctx["cuda"]) as mem:
        t0 = time.perf_counter()
        call(chunks[0], row.steps_run, StepClock(sync))  # warm-up, not timed
        if sync:
            sync()
        row.warmup_s = time.perf_counter() - t0
        for _ in range(ctx["repeats"]):
            if sync:
                sync()
            timing, images = Timing(), []
            t0 = time.perf_counter()
            for idx in chunks:
                clock = StepClock(sync if ctx["scaled"] else None)
                clock.mark()
                images.append(call(idx, row.steps_run, clock))
                step = clock.step_time()
                if step is not None:
                    timing.step_seconds.append(step)
            if sync:
                sync()
            timing.seconds = time.perf_counter() - t0
            best = timing if best is None or timing.seconds < best.seconds else best
    n = sum(len(c) for c in chunks)
    row.timed_s = best.seconds
    row.s_per_tile = best.seconds / n
    row.s_per_tile_nominal = best.scaled(row.steps_run, row.steps_nominal, len(chunks)) / n
    row.step_s = float(np.mean(best.step_seconds)) if ctx["scaled"] and best.step_seconds else None
    row.peak_memory_gib = mem.peak / 2**30
    return np.concatenate(images)


def dtype_label(dtype: Any) -> str:
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[str(dtype).removeprefix("torch.")]


def free(ctx: dict) -> None:
    gc.collect()
    if ctx["cuda"]:
        ctx["torch"].cuda.empty_cache()


# -- the rows ------------------------------------------------------------------------------------------------
def run_pipeline(folder: Path, noise: np.ndarray, control: np.ndarray, args: argparse.Namespace, ctx: dict) -> tuple[Row, np.ndarray]:
    """(a): the naive diffusers pipeline, one tile per call."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    t0 = time.perf_counter()
    kw: dict[str, Any] = {} if ctx["dtype"] == torch.float32 else {"torch_dtype": ctx["dtype"]}
    if args.controlnet:
        kw["controlnet"] = ControlNetModel.from_pretrained(args.controlnet, **kw)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(folder, **kw).to(ctx["device"])
    pipe.set_progress_bar_config(disable=True)
    ctx["params_m"] = param_counts(pipe)
    row = Row("a", "(a) diffusers pipeline", 1, args.steps, NOMINAL_STEPS, "default",
              load_s=time.perf_counter() - t0)
    size = control.shape[1]

    def call(idx: np.ndarray, steps: int, clock: StepClock) -> np.ndarray:
        (i,) = idx
        out = pipe(prompt=args.prompt, image=Image.fromarray(control[i]), height=size, width=size,
                   num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="np",
                   latents=torch.from_numpy(noise[i : i + 1]).to(ctx["device"], ctx["dtype"]),
                   callback_on_step_end=clock.mark).images
        if not np.isfinite(out).all():
            row.notes.append("pipeline output has NaN/inf (random weights overflowing?)")
        return (np.nan_to_num(out) * 255).round().astype(np.uint8)

    return row, time_row(row, call, [np.array([i]) for i in range(len(noise))], ctx)


def run_engine(folder: Path, noise: np.ndarray, control: np.ndarray, args: argparse.Namespace, ctx: dict,
               mode: str, approx: list[str]) -> list[tuple[Row, np.ndarray]]:
    """(b) for ``mode`` at every batch size, then the ``approx`` (c) rows at the largest batch."""
    from napari_crafts.model.engine import Engine
    from napari_crafts.generation.region import run

    t0 = time.perf_counter()
    engine = Engine(folder, device=ctx["device"], dtype=dtype_label(ctx["dtype"]), **ENGINE_MODES[mode])
    load_s = time.perf_counter() - t0

    def caller(**generate_kw: Any) -> Any:
        def call(idx: np.ndarray, steps: int, clock: StepClock) -> np.ndarray:
            gen = engine.generate(noise[idx], control[idx], prompt=args.prompt, steps=steps, guidance_scale=GUIDANCE,
                                  controlnet=args.controlnet, **generate_kw)
            return run(gen, on_event=clock.mark)
        return call

    out = []
    name = "engine" if mode == "default" else f"engine {mode}"
    for i, batch in enumerate(args.batch):
        label = f"(b) {name}, batch {batch}"
        if batch == 0:  # auto: what fits in free GPU memory (Engine.auto_batch; 1 off CUDA), as --batch 0 does
            chosen = engine.auto_batch(control.shape[1])
            batch = min(chosen, len(noise))
            label = f"(b) {name}, batch auto ({chosen}{'' if batch == chosen else f'; all {batch} tiles in one call'})"
        row = Row("b", label, batch, args.steps, NOMINAL_STEPS, "default", load_s=load_s)
        out.append((row, time_row(row, caller(), chunked(len(noise), batch), ctx)))
        if ctx["cuda"] and mode == "default" and i == 0:
            row.gpu_syncs = count_syncs(caller(), ctx)
    batch = max(row.batch for row, _ in out)
    for key in approx:
        label, generate_kw, nominal = APPROX_MODES[key]
        nominal = nominal or args.fast_steps
        uniform = generate_kw.get("cache_interval", 1) == 1 and generate_kw.get("cfg_cutoff", 1.0) >= 1.0
        if ctx["scaled"] and not uniform:  # its steps differ in cost: per-step scaling would be wrong
            print(f"skipped (c) {label}: a per-step-scaled run cannot time it; run it at full steps")
            continue
        steps = min(nominal, args.steps) if ctx["scaled"] else nominal
        row = Row("c", f"(c) {name}, {label.format(fast=args.fast_steps)} (approx.), batch {batch}", batch, steps,
                  nominal, generate_kw.get("scheduler", "default"), approximate=True, load_s=load_s)
        out.append((row, time_row(row, caller(**generate_kw), chunked(len(noise), batch), ctx)))
    return out


def count_syncs(call: Any, ctx: dict) -> int:
    """GPU→CPU synchronisations in one engine call (torch's sync debug mode warns at each one)."""
    import warnings

    torch = ctx["torch"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call(np.array([0]), 3, StepClock(None))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def chunked(n: int, batch: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]


def compare(rows: list[tuple[Row, np.ndarray]]) -> None:
    """(b) against (a): largest and mean pixel difference. (c) against the first (b): SSIM and PSNR."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = next(img for row, img in rows if row.key == "a").astype(np.int16)
    ref_row, ref = next((row, img) for row, img in rows if row.key == "b")
    for row, img in rows:
        if row.key == "b":
            diff = np.abs(img.astype(np.int16) - a)
            row.max_abs_diff_vs_a, row.mean_abs_diff_vs_a = int(diff.max()), float(diff.mean())
        elif row.key == "c":
            if row.steps_run != row.steps_nominal:
                row.notes.append("SSIM/PSNR skipped: run at fewer steps than the approximate mode uses")
                continue
            row.ssim_vs_ref = float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255)
                                             for x, y in zip(img, ref)]))
            row.psnr_vs_ref = float(np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(img, ref)]))
            row.notes.append(f"SSIM/PSNR against {ref_row.label} at {ref_row.steps_run} steps")


# -- reporting -----------------------------------------------------------------------------------------------
def device_name(ctx: dict) -> str:
    if ctx["cuda"]:
        return ctx["torch"].cuda.get_device_name(ctx["device"])
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = ctx["torch"].get_num_threads()
    return f"CPU {name} ({os.cpu_count()} cores, {threads} torch thread{'s' if threads > 1 else ''})"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other processes on the machine make CPU timings slower and noisier."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def check_cell(row: Row, tol: int) -> str:
    if row.key == "a":
        return "reference"
    if row.key == "b":
        verdict = "ok" if row.max_abs_diff_vs_a <= tol else f"MISMATCH (tolerance {tol})"
        return f"max abs diff vs (a) {row.max_abs_diff_vs_a} ({verdict})"
    if row.ssim_vs_ref is None:
        return "n/a (scaled run)"
    return f"SSIM {row.ssim_vs_ref:.3f}, PSNR {row.psnr_vs_ref:.1f} dB vs (b)"


def seconds(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def table_rows(result: dict) -> list[list[str]]:
    meta = result["meta"]
    a = next(r for r in result["rows"] if r["key"] == "a")
    mem = "GPU" if meta["cuda"] else "RSS"
    out = []
    for r in result["rows"]:
        row = Row(**r)
        steps = f"{row.steps_run}" if row.steps_run == row.steps_nominal else f"{row.steps_run} → {row.steps_nominal}*"
        out.append([
            meta["device_name"], f"{meta['model_label']}, {meta['tile_px']} px, {meta['dtype']}", row.label,
            steps, seconds(row.s_per_tile_nominal), f"{a['s_per_tile_nominal'] / row.s_per_tile_nominal:.2f}×",
            f"{row.peak_memory_gib:.2f} GiB {mem}", check_cell(row, meta["tolerance"]),
            f"{meta['torch']} / {meta['diffusers']}", meta["date"],
        ])
    return out


HEADER = ["Device", "Model", "Mode", "Steps", "s/tile", "Speed-up vs (a)", "Peak memory", "Check",
          "torch / diffusers", "Date"]


def markdown(rows: list[list[str]], header: list[str] = HEADER) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_docs(rows: list[list[str]], path: Path = DOCS) -> None:
    """Replace this device/model/mode's rows in the docs table between the markers; keep everyone else's."""
    text = path.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{path} has no {DOCS_START} … {DOCS_END} markers; add them where the table goes.")
    head, rest = text.split(DOCS_START, 1)
    body, tail = rest.split(DOCS_END, 1)
    old = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
           if line.startswith("|") and not line.startswith(("| Device", "|---"))]
    merged = {tuple(r[:3]): r for r in old if len(r) == len(HEADER)}
    merged.update({tuple(r[:3]): r for r in rows})
    path.write_text(f"{head}{DOCS_START}\n{markdown(list(merged.values()))}\n{DOCS_END}{tail}")
    print(f"updated {path.relative_to(REPO)}")


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="tiny | full | PATH/hub id (default: tiny on CPU, full on CUDA)")
    p.add_argument("--controlnet", default=None, help="ControlNet folder when the model folder has none")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="with --model full: build the model into this folder once and reuse it in later runs")
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--tile-size", type=int, default=None, help="px (default 128 for tiny, else 512)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"default {NOMINAL_STEPS}; 2 for the full-size model on CPU (times then scaled to {NOMINAL_STEPS})")
    p.add_argument("--fast-steps", type=int, default=20, help="steps of the approximate unipc row (c)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="tiles per engine call, 0 = auto (Engine.auto_batch) (default: 1 and min(tiles, 4))")
    p.add_argument("--modes", nargs="+", default=["default"], choices=list(ENGINE_MODES),
                   help="exact engine rows (b); the first also gets the approximate rows (c)")
    p.add_argument("--approx", nargs="*", default=list(APPROX_MODES), choices=list(APPROX_MODES),
                   help="approximate rows (c) (default: all; none: --approx with no names)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="default fp16 on CUDA, else fp32")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per row; the fastest counts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help="default: the CRAFTS mask prompt")
    p.add_argument("--tolerance", type=int, default=None, help="max abs pixel diff accepted (default 1 fp32, 16 fp16)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--write-docs", action="store_true", help=f"update the table in {DOCS.relative_to(REPO)}")
    p.add_argument("--build-full", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.build_full:
        build_full_model(args.build_full)
        return None
    import diffusers
    import torch
    import transformers
    from diffusers.utils import logging as dlog

    from napari_crafts.model.engine import pick_device, pick_dtype
    from napari_crafts.model.card import CRAFTS_MASK_PROMPT

    dlog.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.startswith("cuda")
    args.model = args.model or ("full" if cuda else "tiny")
    args.tile_size = args.tile_size or (128 if args.model == "tiny" else 512)
    if args.steps is None:
        args.steps = 2 if (args.model != "tiny" and not cuda) else NOMINAL_STEPS
    args.batch = args.batch or sorted({1, min(args.tiles, 4)})
    args.prompt = args.prompt or CRAFTS_MASK_PROMPT
    dtype = pick_dtype(device, args.dtype)
    dtype_name = dtype_label(dtype)
    tol = args.tolerance if args.tolerance is not None else (1 if dtype == torch.float32 else 16)
    ctx = {"torch": torch, "device": device, "cuda": cuda, "dtype": dtype, "scaled": args.steps < NOMINAL_STEPS,
           "repeats": max(1, args.repeats)}

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-crafts-") as tmp:
        folder, label = prepare_model(args, Path(tmp))
        vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
        noise, control = make_tiles(args.tiles, args.tile_size, 2 ** (len(vae_cfg["block_out_channels"]) - 1), args.seed)
        print(f"{device_name(ctx)} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
              f"{label} | {args.tiles} tiles of {args.tile_size} px | {args.steps} steps | {dtype_name} | "
              f"load average {load_before}")
        row_a, img_a = run_pipeline(folder, noise, control, args, ctx)
        print("parameters (M): " + ", ".join(f"{k} {v:.1f}" for k, v in ctx["params_m"].items()))
        if args.model == "full":
            off = {k: v for k, v in ctx["params_m"].items() if abs(v / SD15_PARAMS_M[k] - 1) > 0.01}
            print("parameter counts match SD1.5" if not off else f"WARNING: parameter counts differ from SD1.5: {off}")
        free(ctx)  # (a)'s pipeline is gone once run_pipeline returns
        rows = [(row_a, img_a)]
        for m, mode in enumerate(args.modes):
            rows += run_engine(folder, noise, control, args, ctx, mode, args.approx if m == 0 else [])
            free(ctx)
    compare(rows)

    result = {
        "meta": {
            "device": device, "device_name": device_name(ctx), "cuda": cuda, "dtype": dtype_name,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "model": args.model, "model_label": label, "params_m": ctx["params_m"], "tile_px": args.tile_size,
            "tiles": args.tiles, "steps": args.steps, "nominal_steps": NOMINAL_STEPS, "fast_steps": args.fast_steps,
            "guidance_scale": GUIDANCE, "seed": args.seed, "repeats": ctx["repeats"], "batch": args.batch,
            "tolerance": tol, "scaled": ctx["scaled"], "load_average_before": load_before,
            "load_average_after": load_average(),
            "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            "date": time.strftime("%Y-%m-%d"),
        },
        "rows": [asdict(row) for row, _ in rows],
    }
    table = table_rows(result)
    print()
    print(markdown([r[2:-2] for r in table], HEADER[2:-2]))
    for row, _ in rows:
        for note in row.notes:
            print(f"note {row.key}: {note}")
        print(f"{row.label}: load {row.load_s:.1f} s, first call {row.warmup_s:.1f} s, timed {row.timed_s:.2f} s"
              + (f", {row.step_s:.3f} s/step" if row.step_s else "")
              + (f", {row.gpu_syncs} GPU syncs per call" if row.gpu_syncs is not None else ""))
    if ctx["scaled"]:
        print(f"* per-step-scaled: measured at {args.steps} steps, reported for {NOMINAL_STEPS} ((c): {args.fast_steps}) "
              "as measured + missing steps × mean step time.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if args.write_docs:
        write_docs(table)
    return result


if __name__ == "__main__":
    main()
