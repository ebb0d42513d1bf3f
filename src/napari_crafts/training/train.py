"""``napari-crafts train``: train one stage of an SD1.5-shaped model on a pairs set; write a diffusers folder.

Stages (one per run; chain runs with ``--base`` = the previous run's output):

* ``controlnet`` — the issue's recipe: a ControlNet per mode (labels, fluorescence) over a frozen base model
  (``ControlNetModel.from_unet``, zero convolutions zero, noise-prediction MSE, prompt dropout for
  classifier-free guidance), as diffusers' ``examples/controlnet/train_controlnet.py`` does.
* ``base`` — fine-tune the base UNet (optionally the text encoder) on captioned images, with CRAFTS'
  L_corr / L_cate (``losses.py``) weighted into the diffusion loss (``--corr-weight``, ``--cate-weight``).
* ``vae``, ``unet``, ``joint`` — from scratch, for small models (``--config small``): the autoencoder
  (reconstruction + KL), then either the UNet alone and then ``controlnet``, or UNet and ControlNets together
  (``joint``; the ControlNets' zero convolutions start at small random values so the control is heard from
  the first step).

Every run writes ``OUT`` (an ordinary diffusers folder + napari_crafts.json + README.md, loadable by
``Engine(OUT)``) and ``OUT/training/`` (log.csv, run.json, checkpoints in safetensors, validation images).
A run killed at any point resumes with ``--resume`` from its last checkpoint and continues exactly as the
uninterrupted run would have: batches and random numbers are functions of (seed, step).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..export.safety import OutputError, check_output, claim_folder, is_disk_full, remove_output
from ..model.card import CRAFTS_MASK_PROMPT, MODEL_CARD_FILE
from .checkpoint import checkpoint_name, list_checkpoints, load_checkpoint, save_checkpoint
from .data import CONTROL_KEYS, PairsSplit, TileArrays, load_arrays, open_pairs
from .distill import STUDENT_STEPS, DistillStage, write_student
from .model_folder import (
    TRAIN_FOLDER_CONTENTS,
    TRAINED_BY,
    TRAINED_BY_VALUE,
    data_card,
    folder_size_mb,
    hardware,
    model_card,
    model_card_markdown,
    run_notes,
    run_prompt,
    run_summary,
    save_model_folder,
)
from .settings import STAGES, TrainingError, TrainSettings
from .stage import Parts, Stage, fit_scaling_factor, load_parts, size_multiple, start_controlnets, to_tensor

TRAINING_DIR = "training"


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    validation: list[dict[str, Any]]
    seconds: float


def _lr(settings: TrainSettings, step: int) -> float:
    if settings.warmup_steps <= 0:
        return settings.learning_rate
    return settings.learning_rate * min(1.0, (step + 1) / settings.warmup_steps)


# -- the loop -----------------------------------------------------------------------------------------------
def train(dataset: str | Path, out: str | Path, *, settings: TrainSettings, base: str | Path | None = None,
          config: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          manifest: str | Path | None = None, progress: bool = True, allow_pickle: bool = False,
          name: str | None = None, stop_after: int | None = None) -> TrainResult:
    """Train ``settings.stage`` on ``dataset`` and write the model folder ``out``.

    ``base``: the model folder to start from; ``config`` (``small`` or a JSON file) instead starts from a
    random small model. ``resume`` continues ``out``'s last checkpoint; ``overwrite`` replaces an earlier
    output of ours; ``name`` goes into the model card. ``stop_after`` stops after that many steps of this call,
    as a kill would (for tests). A run that fails before its first checkpoint removes the folder it created.
    """
    settings.check()
    _quiet()
    out = Path(out)
    if base is None and config is None:
        raise TrainingError("Give the model to start from (--base FOLDER) or --config small to start from scratch.")
    if base is not None and config is not None:
        raise TrainingError("Give either --base or --config, not both.")
    if settings.stage == "distill" and base is None:
        raise TrainingError("--stage distill distils an existing model: give it with --base FOLDER.")
    inputs = [dataset, base, config, manifest]
    if resume and not out.exists():
        resume = False
    if resume:
        check_output(out, kind="folder", inputs=inputs, resume=True)  # never over an input
        if not (out / TRAINING_DIR / "run.json").is_file():
            raise TrainingError(f"Cannot resume {out}: it was not written by napari-crafts train.")
    else:  # the output rule (export.safety): never over an input; replace only a model folder this command made
        check_output(out, kind="folder", inputs=inputs, overwrite=overwrite, advice="pass --resume to continue it")
        claim_folder(out, f"model folder ({TRAINED_BY_VALUE})", TRAIN_FOLDER_CONTENTS)
    try:
        return _train(dataset, out, settings=settings, base=base, config=config, resume=resume, manifest=manifest,
                      progress=progress, allow_pickle=allow_pickle, name=name, stop_after=stop_after)
    except BaseException as err:
        # a run that fails before its first checkpoint removes the folder it created (nothing worth resuming)
        kept = list_checkpoints(out / TRAINING_DIR / "checkpoints")
        if not resume and not kept:
            with contextlib.suppress(OutputError):
                remove_output(out, kind="folder")
        if is_disk_full(err):
            raise TrainingError(f"disk full while writing {out}: free space and rerun with --resume (it continues "
                                f"from step {kept[-1][0]}, its last checkpoint)." if kept else
                                f"disk full while writing {out}, before its first checkpoint (nothing kept): free "
                                "space and rerun.") from err
        raise


def _train(dataset: str | Path, out: Path, *, settings: TrainSettings, base: str | Path | None,
           config: str | Path | None, resume: bool, manifest: str | Path | None, progress: bool, allow_pickle: bool,
           name: str | None, stop_after: int | None) -> TrainResult:
    """:func:`train` once its output folder is there."""
    import torch

    train_split = open_pairs(dataset, "train", manifest=manifest)
    run_dir = out / TRAINING_DIR
    ckpt_dir = run_dir / "checkpoints"
    record = {"dataset": str(Path(dataset).resolve()), "base": str(base) if base else None,
              "config": str(config) if config else None, "settings": settings.record()}
    record = json.loads(json.dumps(record))  # as it reads back (tuples become lists)
    if resume and (run_dir / "run.json").is_file():
        _check_same_run(json.loads((run_dir / "run.json").read_text()), record)
    run_dir.mkdir(parents=True, exist_ok=True)
    (out / MODEL_CARD_FILE).write_text(json.dumps({TRAINED_BY: TRAINED_BY_VALUE, "status": "training"}) + "\n") \
        if not (out / MODEL_CARD_FILE).is_file() else None
    (run_dir / "run.json").write_text(json.dumps(record, indent=1))

    parts = _start_parts(base, config, settings, train_split, run_dir, allow_pickle)
    parts.card["name"] = name or f"napari-crafts model (stage {settings.stage}, {Path(out).name})"
    modes = _modes(settings, train_split, parts)
    mult = size_multiple(parts)
    if train_split.tile_px % mult:
        raise TrainingError(f"Tiles are {train_split.tile_px} px but this model needs multiples of {mult} px "
                            f"(VAE factor × 2^(UNet blocks − 1)): rebuild the pairs with --tile-px "
                            f"{max(mult, train_split.tile_px // mult * mult)}.")
    # the output holds the ControlNets this run trains, no others; where each starts: mode → "base" | "unet"
    # (distill: the model's own, all kept, unchanged)
    distill = settings.stage == "distill"
    controlnet_init = {} if distill else start_controlnets(parts, modes, settings, from_base=base is not None)
    needs = [m for m in modes if settings.stage in ("controlnet", "joint", "distill")]
    data = load_arrays(train_split, needs)
    val = _validation_data(dataset, settings, modes)

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps its state per process; each run (tests, the napari widget) sets its own precision
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=settings.device == "cpu",
                                  gradient_accumulation_steps=settings.grad_accum)
    except ValueError as exc:
        raise TrainingError(f"--mixed-precision {settings.mixed_precision}: {exc} (on CPU use bf16 or no).") from None
    if settings.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise TrainingError("--mixed-precision fp16 needs a GPU; on CPU use --mixed-precision bf16 or no.")
    if distill:
        stage: Stage = DistillStage(parts, settings, data, modes, accelerator.device, train_split)
    else:
        stage = Stage(parts, settings, data, modes, accelerator.device, train_split)
    params = stage.named_params()
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.learning_rate, weight_decay=1e-2)
    optimizer = accelerator.prepare(optimizer)
    ema = None
    if settings.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(list(params.values()), decay=settings.ema_decay)

    start, elapsed, log_rows, validation = 0, 0.0, [], []
    checkpoints = list_checkpoints(ckpt_dir)
    if resume and checkpoints:
        step0, path = checkpoints[-1]
        meta = load_checkpoint(path, params={**params, **stage.state_tensors()}, optimizer=optimizer, ema=ema)
        start, elapsed, validation = step0, float(meta.get("elapsed_s", 0.0)), list(meta.get("validation", []))
        if settings.stage == "vae" and meta.get("scaling_factor"):
            parts.vae.register_to_config(scaling_factor=meta["scaling_factor"])
    log_path = run_dir / "log.csv"
    log_rows = _read_log(log_path, upto=start) if resume else []

    def write_model(path: Path, dtype: str = "fp32", readme: str | None = None, card: dict | None = None) -> None:
        extra = None
        if isinstance(stage, DistillStage):
            extra = partial(write_student, stage)
        with _ema_weights(ema, params):
            save_model_folder(path, vae=parts.vae, unet=parts.unet, text_encoder=parts.text_encoder,
                              tokenizer=parts.tokenizer, scheduler_config=parts.scheduler_config,
                              controlnets=parts.controlnets, card=card or model_card(parts, train_split, settings),
                              readme=readme, dtype=dtype, replace=True, keep=(TRAINING_DIR,), extra=extra)

    bar = _progress(settings.steps, start, progress)
    t_start = time.perf_counter()
    last_loss = float("nan")
    step = start
    try:
        for step in range(start, settings.steps):
            if stop_after is not None and step - start >= stop_after:
                break
            lr = _lr(settings, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            totals: dict[str, float] = {}
            loss_sum = 0.0
            for micro in range(settings.grad_accum):
                with accelerator.accumulate(*stage.modules.values()):
                    loss, comps = stage.loss(step, micro, accelerator.autocast)
                    if not torch.isfinite(loss):
                        raise _NaN(step + 1)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and settings.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(list(params.values()), settings.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.item() / settings.grad_accum
                for k, v in comps.items():
                    totals[k] = totals.get(k, 0.0) + v / settings.grad_accum
            if ema is not None:
                ema.step(list(params.values()))
            stage.after_step()
            dt = time.perf_counter() - t0
            elapsed += dt
            last_loss = loss_sum
            log_rows.append({"step": step + 1, "loss": loss_sum, **totals, "lr": lr, "seconds": round(dt, 4),
                             "elapsed_s": round(elapsed, 2)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            done = step + 1
            if done % 25 == 0:
                _write_log(log_path, log_rows)
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                info = {"elapsed_s": elapsed, "stage": settings.stage, "loss": loss_sum}
                if settings.stage == "vae":  # fitted on the weights the model folder gets (EMA when on)
                    with _ema_weights(ema, params):
                        info["scaling_factor"] = fit_scaling_factor(stage)
                    parts.vae.register_to_config(scaling_factor=info["scaling_factor"])
                ckpt = save_checkpoint(ckpt_dir, done, params={**params, **stage.state_tensors()}, optimizer=optimizer,
                                       ema=ema,
                                       info={**info, "validation": validation}, write_model=write_model,
                                       keep=settings.keep_checkpoints)
                rows = _validate(ckpt, stage, val, settings, modes, done, ema, params)
                if rows:
                    validation.extend(rows)
                    meta = json.loads((ckpt / "state.json").read_text())
                    meta["validation"] = validation
                    (ckpt / "state.json").write_text(json.dumps(meta, indent=1, default=str))
                _write_log(log_path, log_rows)
                bar.write(f"step {done}: loss {loss_sum:.4f}, checkpoint {ckpt.name}"
                          + "".join(f"; {r['mode']} " + ", ".join(f"{k} {v:.3g}" for k, v in r["metrics"].items()
                                                                if k in ("SSIM", "PSNR", "H_ratio", "red_gt_green"))
                                    for r in rows))
    except _NaN as nan:
        _write_log(log_path, log_rows)
        good = list_checkpoints(ckpt_dir)
        kept = (f"the last good checkpoint is {good[-1][1]} (step {good[-1][0]})" if good
                else "no checkpoint was written yet")
        raise TrainingError(f"The loss became NaN/inf at step {nan.step}: training stopped; {kept}. Lower "
                            "--learning-rate, or train in fp32 (--mixed-precision no), then --resume.") from None
    except RuntimeError as exc:
        from ..model.engine import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        _write_log(log_path, log_rows)
        raise TrainingError(f"Out of memory at batch size {settings.batch_size}: lower --batch-size (keep the "
                            "effective batch with --grad-accum), add --gradient-checkpointing, or use "
                            "--mixed-precision bf16/fp16; then --resume.") from None
    finally:
        bar.close()
    _write_log(log_path, log_rows)
    finished = step + 1 >= settings.steps and (stop_after is None or step - start < stop_after)
    if finished:
        device_words = hardware(accelerator.device)
        info = {"name": model_card(parts, train_split, settings)["name"], "mpp": train_split.mpp,
                "summary": run_summary(settings, modes), "recipe": settings.stage, "steps": settings.steps,
                "batch_size": settings.batch_size * settings.grad_accum, "hardware": device_words,
                "wall_time": f"{elapsed / 60:.1f} min of training steps", "weights_dtype": settings.save_dtype,
                "prompt": run_prompt(settings, train_split), "seed": settings.seed,
                "data": data_card(train_split), "validation": validation[-max(1, len(modes) or 1):],
                "notes": run_notes(settings)}
        card = model_card(parts, train_split, settings)
        card["training"] = {k: info[k] for k in ("recipe", "steps", "batch_size", "hardware", "wall_time", "seed")}
        card["training"]["settings"] = settings.record()
        card["training"]["controlnet_init"] = controlnet_init
        card["training"]["base"] = str(base) if base else f"config {config}"
        card["data"] = info["data"]
        card["validation"] = info["validation"]
        write_model(out, dtype=settings.save_dtype, readme=None, card=card)
        info["weights_mb"] = f"{folder_size_mb(out):.1f} MB"
        (out / "README.md").write_text(model_card_markdown(info))
    return TrainResult(out, step + 1 if finished else step, last_loss, validation,
                       time.perf_counter() - t_start)


@contextlib.contextmanager
def _ema_weights(ema: Any, params: dict[str, Any]) -> Iterator[None]:
    """The EMA weights in the modules for the duration (nothing when EMA is off)."""
    if ema is None:
        yield
        return
    ema.store(list(params.values()))
    ema.copy_to(list(params.values()))
    try:
        yield
    finally:
        ema.restore(list(params.values()))


def _quiet() -> None:
    """No per-file progress bars from diffusers/transformers while saving and loading checkpoints."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


class _NaN(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


def _check_same_run(old: dict[str, Any], new: dict[str, Any]) -> None:
    """A resumed run must train the same thing the same way (only --steps may grow)."""
    defaults = TrainSettings().record()  # settings added since the run started read as their defaults
    a, b = {**defaults, **old["settings"]}, {**defaults, **new["settings"]}
    a.pop("steps", None), b.pop("steps", None)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "device")
    if diff or old.get("dataset") != new.get("dataset"):
        what = ", ".join(diff) if diff else "the dataset"
        raise TrainingError(f"--resume with other settings than the interrupted run ({what}): resume with the "
                            "same ones, or start a new output.")


def _start_parts(base: Any, config: Any, settings: TrainSettings, split: PairsSplit, run_dir: Path,
                 allow_pickle: bool) -> Parts:
    if base is not None:
        return load_parts(base, allow_pickle=allow_pickle)
    from .architectures import build_small_model, load_config

    cfg = load_config(config)
    init = run_dir / "init"
    if not (init / MODEL_CARD_FILE).is_file():
        shutil.rmtree(init, ignore_errors=True)
        modes = [m for m in CONTROL_KEYS if m in split.modes()] or ["labels"]
        build_small_model(init, cfg, modes=tuple(modes), tile_px=split.tile_px, seed=settings.seed,
                          mpp=split.mpp)
    parts = load_parts(init)
    parts.card.setdefault("architecture", cfg.to_dict())
    return parts


def _modes(settings: TrainSettings, split: PairsSplit, parts: Parts) -> list[str]:
    if settings.stage in ("vae", "unet", "base"):
        return []
    have = split.modes()
    if settings.stage == "distill":  # the teacher's ControlNets that the pairs have controls for
        have = [m for m in have if m in parts.controlnets]
        if missing := [m for m in settings.modes if m not in have]:
            raise TrainingError(f"--modes {','.join(missing)}: the base model has no ControlNet for it, or the "
                                f"pairs no controls; this run can distil with {', '.join(have) or 'no ControlNet'}.")
        return list(settings.modes) or have
    modes = list(settings.modes) or have
    unknown = [m for m in modes if m not in CONTROL_KEYS]
    if unknown:
        raise TrainingError(f"Unknown mode(s) {unknown}; choose from {', '.join(CONTROL_KEYS)}.")
    missing = [m for m in modes if m not in have]
    if missing or not modes:
        raise TrainingError(f"The dataset has no {', '.join(CONTROL_KEYS[m] for m in missing) or 'control images'} "
                            f"for every tile: train the modes it has ({', '.join(have) or 'none'}) or rebuild it.")
    return modes


def _validation_data(dataset: Any, settings: TrainSettings, modes: list[str]) -> TileArrays | None:
    if settings.validation_tiles <= 0:
        return None
    from .data import DatasetError

    try:
        split = open_pairs(dataset, "test")
    except DatasetError:
        return None
    have = split.modes()
    return load_arrays(split, [m for m in ("labels", *modes) if m in have and m in CONTROL_KEYS])


def _validate(ckpt: Path, stage: Stage, val: TileArrays | None, settings: TrainSettings, modes: list[str],
              step: int, ema: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    if val is None:
        return []
    out = ckpt / "validation"
    if settings.stage == "vae":
        rows = [{"mode": "reconstruction", **_validate_vae(stage, val, out, settings)}]
    else:
        from .validation import validate_folder

        few = settings.stage == "distill"  # the student, as it is used: lcm, its own steps, no CFG
        rows = validate_folder(ckpt / "model", val, modes=modes, out=out,
                               steps=STUDENT_STEPS if few else settings.validation_steps,
                               tiles=settings.validation_tiles, seed=settings.seed,
                               prompt=settings.caption or CRAFTS_MASK_PROMPT, scheduler="lcm" if few else "default")
    for row in rows:
        row["step"] = step
    (out / "metrics.json").write_text(json.dumps(rows, indent=1))
    return rows


def _validate_vae(stage: Stage, val: TileArrays, out: Path, settings: TrainSettings) -> dict[str, Any]:
    """Held-out tiles through the autoencoder (posterior mean): pixel metrics of the reconstructions."""
    import torch
    from PIL import Image

    from ..evaluation.metrics import pixel_metrics
    from .validation import spread_indices

    idx = spread_indices(len(val), max(settings.validation_tiles, 1))
    vae = stage.p.vae
    was_training = vae.training
    vae.eval()
    with torch.no_grad():
        x = to_tensor(val.he[idx], stage.device) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    vae.train(was_training)
    rgb = ((rec / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    metrics = [pixel_metrics(g, r) for g, r in zip(rgb, val.he[idx], strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.concatenate(list(rgb), 1), np.concatenate(list(val.he[idx]), 1)], 0)).save(
        out / "reconstruction.png")
    return {"tiles": len(idx), "metrics": {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}}


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The log rows of steps ≤ ``upto`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def iter_log(out: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a run's log.csv (step, loss, its parts, lr, seconds, elapsed_s)."""
    with open(Path(out) / TRAINING_DIR / "log.csv", newline="") as fh:
        yield from csv.DictReader(fh)


__all__ = ["STAGES", "TrainResult", "TrainSettings", "TrainingError", "checkpoint_name", "load_parts", "train"]
