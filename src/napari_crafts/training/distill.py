"""``train --stage distill``: latent consistency distillation (LCM, Luo et al. 2023) of a model into a LoRA student.

The student is the model's own UNet with a peft LoRA on its attention, feed-forward and convolution layers (as
LCM-LoRA); base, VAE, text encoder and ControlNets stay frozen. Each micro-batch, as in diffusers'
``examples/consistency_distillation`` (our code, same maths):

1. clean latents ``x0`` of training tiles; a step ``t`` of the 50-step DDIM grid (``t = 20k − 1``) and
   ``s = t − 20`` (skipping-step: one grid step back); ``x_t`` = ``x0`` noised to ``t``;
2. teacher = the model itself with classifier-free guidance ``w`` folded in (uncond + w·(cond − uncond), as
   at inference), each tile's ControlNet residuals fed as at inference: one DDIM step ``x_t → x_s``;
3. target = the EMA copy of the student's LoRA (decay ``TARGET_DECAY``) at ``x_s``; student at ``x_t``; both
   map to their clean-latent estimate through LCM's boundary condition (``c_skip·x + c_out·x̂0``, timesteps
   scaled by 10), and the loss is the pseudo-Huber distance between them.

The student then samples in 2–8 steps with diffusers' ``LCMScheduler`` (``--scheduler lcm``), no CFG at run time,
with the model's ControlNets unchanged. It is written into the output model folder as ``student/`` and declared
by the card (``STUDENT_KEY``); the base weights it was distilled on are hashed into the declaration.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from ..model.engine import LCM_DEFAULT_STEPS as STUDENT_STEPS
from .data import dihedral
from .stage import Stage, to_tensor

#: The model card key that declares a student: {"lora", "sha256", "base_sha256", "steps", "guidance", …}.
STUDENT_KEY = "student"
STUDENT_DIR = "student"
STUDENT_FILE = "pytorch_lora_weights.safetensors"
#: Steps of the teacher's DDIM grid (LCMScheduler's ``original_inference_steps``).
ORIGINAL_STEPS = 50
#: LCM's boundary condition: σ_data and the timestep scaling of LCMScheduler.
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0
HUBER_C = 0.001
#: Decay of the target network (the EMA of the student's LoRA), as LCM's full-model recipe.
TARGET_DECAY = 0.95
#: Layers the student adapts (LCM-LoRA's list for SD1.5).
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def boundary_scalings(t: Any) -> tuple[Any, Any]:
    """LCM's (c_skip, c_out) at timesteps ``t`` (c_skip 1, c_out 0 at t = 0: the consistency function is x)."""
    scaled = t * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def x0_and_eps(pred: Any, x: Any, alpha_bar: Any, prediction_type: str) -> tuple[Any, Any]:
    """(clean latents, noise) a network's output ``pred`` at ``x`` implies (ε- or v-prediction)."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * x - s * pred, a * pred + s * x
    return (x - s * pred) / a, pred


def ddim_grid(num_train_timesteps: int) -> np.ndarray:
    """The teacher's 50-step grid (``20k − 1`` for 1000 train steps), as LCMScheduler's origin timesteps."""
    ratio = num_train_timesteps // ORIGINAL_STEPS
    return np.arange(1, ORIGINAL_STEPS + 1) * ratio - 1


class DistillStage(Stage):
    """The distill stage: the student (the UNet + a LoRA) trains; teacher, target and ControlNets do not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from peft import LoraConfig

        s, torch = self.s, self.torch
        with torch.random.fork_rng():  # the LoRA's random init, by seed (not global state)
            torch.manual_seed(s.seed + 4242)
            student = copy.deepcopy(self.p.unet).requires_grad_(False)
            student.add_adapter(
                LoraConfig(
                    r=s.lora_rank,
                    lora_alpha=s.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=list(LORA_TARGETS),
                )
            )
        student.to(self.device).train()
        if s.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        self.student = student
        self.modules["student"] = student
        self.target = {n: p.detach().clone() for n, p in self.named_params().items()}
        self.grid = torch.as_tensor(ddim_grid(self.noise_scheduler.config.num_train_timesteps))
        self.skip = int(self.grid[0]) + 1

    # -- state beside the trainable weights (checkpoints) -----------------------------------------------------
    def state_tensors(self) -> dict[str, Any]:
        return {f"target.{n}": t for n, t in self.target.items()}

    def after_step(self) -> None:
        """The target follows the student: target ← decay·target + (1 − decay)·student."""
        with self.torch.no_grad():
            for name, p in self.named_params().items():
                self.target[name].mul_(TARGET_DECAY).add_(p.detach(), alpha=1 - TARGET_DECAY)

    def _swap_target(self) -> None:
        """Exchange the student's LoRA weights with the target's (twice: back as they were)."""
        with self.torch.no_grad():
            for name, p in self.named_params().items():
                held = p.detach().clone()
                p.copy_(self.target[name])
                self.target[name].copy_(held)

    def student_state(self) -> dict[str, Any]:
        """The target's LoRA (what the folder ships) as diffusers' layout: ``unet.<layer>.lora_A.weight``, in the
        run's ``save_dtype`` (as the model's other weights)."""
        torch = self.torch
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.s.save_dtype, torch.float32)
        out = {}
        for name, t in self.target.items():
            layer = name.removeprefix("student.").replace(".default.", ".").replace(".default", "")
            out[f"unet.{layer}"] = t.detach().to(dtype).cpu().contiguous()
        return out

    # -- one micro-batch ------------------------------------------------------------------------------------
    def _diffusion_loss(self, idx: np.ndarray, views: np.ndarray, gen: Any) -> tuple[Any, dict[str, float]]:
        torch, s, p = self.torch, self.s, self.p
        b = len(idx)
        sel = torch.as_tensor(idx), torch.as_tensor(views)
        eps0 = torch.randn(self.latent_mean[sel].shape, generator=gen)
        x0 = ((self.latent_mean[sel] + self.latent_std[sel] * eps0) * p.vae.config.scaling_factor).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        k = torch.randint(0, ORIGINAL_STEPS, (b,), generator=gen)
        t = self.grid[k].to(self.device)
        t_prev = (t - self.skip).clamp(min=0)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        cond, _ = self._encode_text(self.captions(idx))
        uncond, _ = self._encode_text([""] * b)
        controls = self._controls(idx, views)
        alphas = self.alphas.to(self.device)
        a_t, a_prev = alphas[t].view(-1, 1, 1, 1), alphas[t_prev].view(-1, 1, 1, 1)
        kind = self.noise_scheduler.config.prediction_type
        w = s.guidance
        with torch.no_grad():
            # 2. the teacher, guided, one DDIM step t → s on the 50-step grid
            both = torch.cat([x_t, x_t])
            pred = self._unet(p.unet, both, torch.cat([t, t]), torch.cat([uncond, cond]), controls + controls)
            x0_both, eps_both = x0_and_eps(pred, both, torch.cat([a_t, a_t]), kind)
            (x0_u, x0_c), (eps_u, eps_c) = x0_both.chunk(2), eps_both.chunk(2)
            x0_g, eps_g = x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)
            x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * eps_g
            # 3. the target (the EMA LoRA) at s
            self._swap_target()
            try:
                pred_prev = self._unet(self.student, x_prev, t_prev, cond, controls)
            finally:
                self._swap_target()
            skip_p, out_p = boundary_scalings(t_prev.float().view(-1, 1, 1, 1))
            target = skip_p * x_prev + out_p * x0_and_eps(pred_prev, x_prev, a_prev, kind)[0]
        pred_s = self._unet(self.student, x_t, t, cond, controls)
        skip_t, out_t = boundary_scalings(t.float().view(-1, 1, 1, 1))
        model = skip_t * x_t + out_t * x0_and_eps(pred_s, x_t, a_t, kind)[0]
        loss = (((model.float() - target.float()) ** 2 + HUBER_C**2).sqrt() - HUBER_C).mean()
        return loss, {"huber": loss.item()}

    def _controls(self, idx: np.ndarray, views: np.ndarray) -> list[tuple[str | None, Any]]:
        """Each tile's (mode, control image as at inference) — modes in turn over the batch; (None, None) when
        the run has no ControlNet."""
        if not self.modes:
            return [(None, None)] * len(idx)
        out: list[tuple[str | None, Any]] = []
        for i in range(len(idx)):
            mode = self.modes[(i + int(idx[0])) % len(self.modes)]
            image = dihedral(self.data.controls[mode][idx[i]], int(views[i]))
            out.append((mode, to_tensor(image[None], self.device)[0]))
        return out

    def _unet(self, unet: Any, x: Any, t: Any, embeds: Any, controls: list[tuple[str | None, Any]]) -> Any:
        """``unet``'s output at ``x``, each row with its own mode's ControlNet residuals (as at inference)."""
        torch = self.torch
        down: list[Any] | None = None
        mid: Any = None
        for mode in {m for m, _ in controls if m is not None}:
            rows = torch.as_tensor([i for i, (m, _) in enumerate(controls) if m == mode], device=self.device)
            image = torch.stack([controls[int(i)][1] for i in rows])
            d, m = self.p.controlnets[mode](
                x[rows], t[rows], encoder_hidden_states=embeds[rows], controlnet_cond=image, return_dict=False
            )
            if down is None:
                down = [torch.zeros((len(x), *r.shape[1:]), dtype=r.dtype, device=r.device) for r in d]
                mid = torch.zeros((len(x), *m.shape[1:]), dtype=m.dtype, device=m.device)
            down = [full.index_copy(0, rows, r) for full, r in zip(down, d, strict=True)]
            mid = mid.index_copy(0, rows, m)
        return unet(
            x, t, encoder_hidden_states=embeds, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample


def write_student(stage: DistillStage, folder: Path) -> dict[str, Any]:
    """Write the student's LoRA into the model folder being written (``folder``) and return the card's
    declaration; ``base_sha256`` is the hash of the weights written beside it (what the student was distilled on)."""
    from safetensors.torch import save_file

    from ..model.description import _file_sha256, weights_sha256

    (folder / STUDENT_DIR).mkdir(parents=True, exist_ok=True)
    path = folder / STUDENT_DIR / STUDENT_FILE
    save_file(stage.student_state(), str(path), metadata={"format": "pt", "napari_crafts": "lcm student"})
    return {
        STUDENT_KEY: {
            "lora": f"{STUDENT_DIR}/{STUDENT_FILE}",
            "sha256": _file_sha256(path),
            "base_sha256": weights_sha256(folder),
            "steps": STUDENT_STEPS,
            "guidance": stage.s.guidance,
            "rank": stage.s.lora_rank,
            "original_steps": ORIGINAL_STEPS,
            "modes": list(stage.modes),
            "method": "latent consistency distillation (LCM-LoRA recipe), pseudo-Huber loss, EMA "
            f"target {TARGET_DECAY}",
        }
    }
