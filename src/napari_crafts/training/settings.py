"""What a ``napari-crafts train`` run does: its stage and settings (one frozen dataclass), and its error type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STAGES = ("controlnet", "base", "vae", "unet", "joint", "distill")
#: Where a run's ControlNets start (``TrainSettings.controlnet_init``; ``stage.start_controlnets``).
CONTROLNET_INITS = ("auto", "unet", "base")


class TrainingError(ValueError):
    """Training cannot start or go on; the message says what happened, what was kept and what to do."""


@dataclass(frozen=True)
class TrainSettings:
    stage: str = "controlnet"
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validation_tiles: int = 4  # held-out tiles generated per mode at each checkpoint (0: none)
    validation_steps: int = 20
    modes: tuple[str, ...] = ()  # ControlNet modes; () = every control the dataset has
    prompt_dropout: float = 0.1  # fraction of captions replaced by "" (classifier-free guidance)
    control_dropout: float = 0.1  # joint: fraction of samples without ControlNet (prompt-only generation)
    controlnet_init_std: float = 0.01  # joint: std of the ControlNets' zero convolutions at the start
    # auto: the base's own ControlNet for each mode it has one for (stage controlnet), else fresh; unet: fresh from
    # the UNet (ControlNetModel.from_unet, the ControlNet recipe); base: the base's own (refused where it has none)
    controlnet_init: str = "auto"
    snr_gamma: float = 0.0  # > 0: Min-SNR-γ weighting of the diffusion loss
    corr_weight: float = 0.0
    cate_weight: float = 0.0
    train_text_encoder: bool = False
    augment: bool = True  # the 8 rotations/flips of each tile
    vae_crop: int = 0  # vae: random crops of this size (0: whole tiles)
    kl_weight: float = 1e-6
    caption: str | None = None  # one caption for every tile (default: each tile's own)
    save_dtype: str = "fp32"  # fp32 | fp16 | bf16 for the final folder
    device: str | None = None
    lora_rank: int = 16  # distill: rank of the student's LoRA
    guidance: float = 7.5  # distill: the teacher's classifier-free guidance, folded into the student

    def check(self) -> None:
        if self.stage not in STAGES:
            raise TrainingError(f"Unknown stage '{self.stage}'; choose one of {', '.join(STAGES)}.")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise TrainingError("--steps, --batch-size and --grad-accum must be at least 1.")
        if self.checkpoint_every < 1:
            raise TrainingError("--checkpoint-every must be at least 1.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainingError(f"--mixed-precision must be no, fp16 or bf16, not '{self.mixed_precision}'.")
        for name in ("prompt_dropout", "control_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be between 0 and 1.")
        if (self.corr_weight or self.cate_weight) and self.stage != "base":
            raise TrainingError("--corr-weight/--cate-weight apply when fine-tuning the base (--stage base).")
        if self.controlnet_init not in CONTROLNET_INITS:
            raise TrainingError(f"--controlnet-init must be {', '.join(CONTROLNET_INITS)}, not "
                                f"'{self.controlnet_init}'.")
        if self.stage == "distill" and self.ema:
            raise TrainingError("--ema does not apply to --stage distill: it keeps its own EMA target (decay 0.95) "
                                "and writes that as the student.")
        if self.lora_rank < 1 or not 1.0 <= self.guidance <= 30.0:
            raise TrainingError("--lora-rank must be at least 1 and --guidance between 1 and 30.")
        if self.train_text_encoder and self.stage != "base":
            raise TrainingError("--train-text-encoder applies to --stage base only.")

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
