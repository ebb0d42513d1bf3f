"""``napari-crafts train DATASET --out OUT (--base MODEL | --config small) [--stage …]``.

    # the issue's recipe: a ControlNet per mode over a frozen base model
    napari-crafts train pairs/ --base path/to/sd15-or-crafts --out my-controlnets
    # fine-tune the base with the CRAFTS alignment losses (captions/categories from the pairs or a manifest)
    napari-crafts train pairs/ --base BASE --stage base --corr-weight 0.1 --cate-weight 0.1 --captions m.csv --out ft
    # a few-step student of a model (sampled with --scheduler lcm in 2-8 steps)
    napari-crafts train pairs/ --base MODEL --stage distill --out fast-model
    # a small model from scratch: the autoencoder, then UNet + ControlNets
    napari-crafts train pairs/ --config small --stage vae --out run/vae
    napari-crafts train pairs/ --base run/vae --stage joint --out run/model

``configure_parser``/``main`` are the ``train`` command of ``napari_crafts.cli`` (errors: ``cli._errors``).
"""

from __future__ import annotations

import argparse
import os
import sys

from .._plural import plural
from .settings import CONTROLNET_INITS
from .train import STAGES, TrainSettings


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainSettings()
    p = parser
    p.add_argument("dataset", help="a pairs set (napari-crafts pairs): DATASET/dataset.json, train/, test/")
    p.add_argument("--out", required=True, help="the model folder to write (a diffusers folder; training/ inside "
                   "holds the log, checkpoints and validation images)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--base", help="model folder to start from (SD1.5-style diffusers folder, or a previous stage)")
    start.add_argument("--config", help="start from a random small model: 'small' or a JSON file of sizes")
    p.add_argument("--stage", choices=STAGES, default=d.stage,
                   help="controlnet: ControlNets over the frozen base (default); base: fine-tune UNet with CRAFTS "
                        "losses; vae/unet/joint: training from scratch; distill: a few-step student (LoRA) of the "
                        "--base model by latent consistency distillation, used by --scheduler lcm")
    p.add_argument("--modes", default="", help="ControlNet modes, comma-separated (labels,fluorescence); "
                   "default: every control the dataset has")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=d.mixed_precision)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--ema", action="store_true", help="keep EMA weights and write them as the model")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--validation-tiles", type=int, default=d.validation_tiles,
                   help="held-out test tiles generated per mode at each checkpoint (0: no validation)")
    p.add_argument("--validation-steps", type=int, default=d.validation_steps)
    p.add_argument("--prompt-dropout", type=float, default=d.prompt_dropout)
    p.add_argument("--control-dropout", type=float, default=d.control_dropout)
    p.add_argument("--controlnet-init-std", type=float, default=d.controlnet_init_std,
                   help="joint: std of the ControlNets' zero convolutions at the start (0: zero)")
    p.add_argument("--controlnet-init", choices=CONTROLNET_INITS, default=d.controlnet_init,
                   help="auto (default): --stage controlnet continues the base's own ControlNet for each mode it has "
                        "one for (few-shot fine-tuning), other modes and stages start fresh; unet: new ControlNets "
                        "copied from the UNet (the ControlNet recipe; needs thousands of steps); base: continue the "
                        "base's own")
    p.add_argument("--snr-gamma", type=float, default=d.snr_gamma, help="Min-SNR-γ loss weighting (0: off)")
    p.add_argument("--corr-weight", type=float, default=d.corr_weight, help="weight of CRAFTS' L_corr (stage base)")
    p.add_argument("--cate-weight", type=float, default=d.cate_weight, help="weight of CRAFTS' L_cate (stage base)")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--captions", help="CSV/JSON manifest of captions and categories by tile id")
    p.add_argument("--caption", help="one caption for every tile")
    p.add_argument("--no-augment", action="store_true", help="no rotations/flips of the tiles")
    p.add_argument("--vae-crop", type=int, default=d.vae_crop)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="distill: rank of the student's LoRA")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help="distill: the teacher's classifier-free guidance scale, folded into the student")
    p.add_argument("--name", help="model name for its card (napari_crafts.json, README.md)")
    p.add_argument("--save-dtype", choices=("fp32", "fp16", "bf16"), default=d.save_dtype)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue OUT from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier output of ours")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(
        stage=args.stage, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, ema=args.ema, ema_decay=args.ema_decay,
        seed=args.seed, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        validation_tiles=args.validation_tiles, validation_steps=args.validation_steps,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()), prompt_dropout=args.prompt_dropout,
        control_dropout=args.control_dropout, controlnet_init_std=args.controlnet_init_std,
        controlnet_init=args.controlnet_init,
        snr_gamma=args.snr_gamma, corr_weight=args.corr_weight, cate_weight=args.cate_weight,
        train_text_encoder=args.train_text_encoder, augment=not args.no_augment, vae_crop=args.vae_crop,
        kl_weight=args.kl_weight, caption=args.caption, save_dtype=args.save_dtype, device=args.device,
        lora_rank=args.lora_rank, guidance=args.guidance,
    )


def main(args: argparse.Namespace) -> int:
    from .train import train

    if args.threads:
        import torch

        from ..model.threads import set_default_threads

        set_default_threads(args.threads)  # validation images are made with the same count (model.threads)
        torch.set_num_threads(args.threads)
    if args.resume and not os.path.lexists(args.out):  # a script may always pass --resume: go on, but say so
        print(f"note: nothing to resume at {args.out} (no earlier run there): starting a new run.", flush=True)
    result = train(args.dataset, args.out, settings=settings_from_args(args), base=args.base, config=args.config,
                   resume=args.resume, overwrite=args.overwrite, manifest=args.captions,
                   progress=not args.quiet, allow_pickle=args.allow_pickle, name=args.name)
    print(f"model: {result.out} ({plural(result.steps, 'step')}, final loss {result.final_loss:.4f})")
    for row in result.validation[-4:]:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in row["metrics"].items())
        print(f"validation step {row['step']} {row['mode']}: {metrics}")
    return 0


if __name__ == "__main__":  # python -m napari_crafts.training.train_cli …: the same command, the same errors
    from ..cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
