"""The diffusion engine: a model's networks on one device, and the denoising loop.

An :class:`Engine` is built from a :class:`~napari_crafts.model.description.ModelDescription` (what the model
is: files, card, geometry, hashes) and owns what needs torch: the networks, denoising, and the memory probes
that size batches. torch/diffusers are imported only when an Engine is built, so opening napari or a slide
does not pay for them. ``Engine.generate`` is a generator that yields once per denoising step (so a caller can
report progress or stop within a step) and returns the decoded images. Its loop is the one of diffusers'
``StableDiffusionControlNetPipeline.__call__`` (same scheduler, CFG and ControlNet math), written as numbered
steps so that we control the starting noise, batching and the text-embedding cache.

Sharing: one Engine may serve two jobs at once (a Labels and a Fluorescence widget). Everything that changes
between steps lives in the call (scheduler, latents, feature-reuse cache); what touches shared networks or
global CUDA statistics (a step, a decode, a memory probe, loading a ControlNet, encoding a prompt) runs under
the device's lock, so two jobs interleave step by step and each gets the pixels it would get alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard
from .deepcache import FeatureCache, check_supported, full_step_indices, shallow_controlnet, shallow_unet, skip_count
from .description import (  # noqa: F401  (re-exported: this module's 0.1 API)
    PICKLE_SUFFIXES,
    WEIGHT_COMPONENTS,
    DeviceUnavailable,
    LoraError,
    ModelDescription,
    ModelLoadError,
    PickleRefused,
    Runtime,
    check_weights_format,
    open_lora,
    read_config,
    resolve_model,
    weights_sha256,
)
from .lora import load_adapter, read_lora, use_adapters

SCHEDULERS = ("default", "ddim", "unipc", "dpm++", "lcm")
#: diffusers scheduler class per SCHEDULERS name ("default": the model's own, from its scheduler config).
SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "unipc": "UniPCMultistepScheduler",
                     "dpm++": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler"}
#: The scheduler of the few-step student (``train --stage distill``): it runs the student, without CFG.
FEW_STEP_SCHEDULER = "lcm"
#: Steps of a student's schedule (LCMScheduler's original_inference_steps): the most ``lcm`` can take.
LCM_MAX_STEPS = 50
#: Steps ``lcm`` takes when none are given (the student's sweet spot: 2-8).
LCM_DEFAULT_STEPS = 4
#: Adapter names in the UNet: a user's LoRA (``--lora``) and the model's student.
USER_LORA, STUDENT = "lora", "student"
#: Tiles per VAE decode on CUDA before ``Engine.auto_batch`` has measured one (an explicit batch size).
UNMEASURED_DECODE_BATCH = 4
#: Prompt embeddings kept per engine (each is 77 × 768 floats for SD1.5; a region reuses one pair per tile).
PROMPT_CACHE_SIZE = 32
#: Engines kept per device by ``get_engine``: switching models frees the previous one's memory.
ENGINES_PER_DEVICE = 1


@dataclass(frozen=True)
class Step:
    """Progress of one ``Engine.generate`` call: ``step`` of ``steps`` denoising steps done."""

    step: int
    steps: int


def pick_device(device: str | None = None) -> str:
    """``device`` once checked (``check_device``), else the best one here: CUDA, MPS, then the CPU."""
    import torch

    if device:
        check_device(device)
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """Refuse a device this machine's torch cannot use, in one line that says what it has."""
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise DeviceUnavailable(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps.") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceUnavailable(f"--device {device}: this torch ({torch.__version__}, {build}) sees no CUDA "
                                    "GPU: use --device cpu, or install a CUDA build of torch on a GPU machine.")
        n = torch.cuda.device_count()
        if where.index is not None and where.index >= n:
            raise DeviceUnavailable(f"--device {device}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                                    f"(cuda:0 to cuda:{n - 1}).")
    elif where.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable(f"--device {device}: Apple's MPS is not available here: use --device cpu.")
    elif where.type != "cpu":
        raise DeviceUnavailable(f"--device {device}: napari-crafts runs on cpu, cuda, cuda:N or mps.")


def pick_dtype(device: str, dtype: str | None = None) -> Any:
    import torch

    if dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return torch.float16 if device.startswith("cuda") else torch.float32


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


_DEVICE_LOCKS: dict[str, threading.RLock] = {}
_DEVICE_LOCKS_LOCK = threading.Lock()


def device_lock(device: str) -> threading.RLock:
    """The lock that serialises work on ``device`` in this process (networks and CUDA statistics are shared)."""
    with _DEVICE_LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(device, threading.RLock())


class Engine:
    """SD1.5-family base model (UNet, VAE, CLIP text encoder, tokenizer, scheduler) plus ControlNets by path.

    The base loads once; each ControlNet loads on first use and stays cached, so the labels and the
    fluorescence ControlNet share one base model. Weights load from safetensors unless ``allow_pickle``;
    a single original-layout checkpoint loads through diffusers' ``from_single_file`` (see ``description``).
    """

    def __init__(
        self,
        model: str | Path | ModelDescription,
        *,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        lora: str | Path | None = None,
    ) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        self.model = model if isinstance(model, ModelDescription) else ModelDescription.open(
            model, allow_pickle=allow_pickle, lora=lora)
        if lora is not None and self.model.lora is None:
            self.model = dataclasses.replace(self.model, lora=open_lora(lora, allow_pickle=self.model.allow_pickle))
        self._torch = torch
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.channels_last, self.compile = channels_last, compile
        self.lock = device_lock(self.device)
        unet, vae, text_encoder = self._load_base()
        # a LoRA is checked against the networks and loaded before anything runs (peft adapters, switchable)
        user = self.model.lora
        self._lora = read_lora(user) if user is not None else None
        self._unet_adapters: list[str] = []
        if user is not None and self._lora is not None and self._lora["unet"]:
            load_adapter(unet, self._lora["unet"], self._lora["unet.alphas"], USER_LORA, "UNet", user.path)
            self._unet_adapters.append(USER_LORA)
        self._active_adapters = tuple(self._unet_adapters)
        self._student_loaded = False
        self.scheduler_config = read_config(self.model.config, "scheduler")
        text_encoder.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.vae = self._prepare(vae, compile_it=False)
        self.unet = self._prepare(unet)
        self._controlnets: dict[Path, Any] = {}
        self._prompt_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._step_bytes: dict[tuple[int, bool, bool], int] = {}  # (tile px, CFG, ControlNet) → one tile's step
        self._decode_bytes: dict[int, int] = {}  # tile px → one tile's VAE decode
        self._batch_caps: dict[tuple[int, bool, bool], int] = {}  # largest batch that did not run out of memory

    def _load_base(self) -> tuple[Any, Any, Any]:
        """(UNet, VAE, text encoder) from the folder, or from the single checkpoint with the config folder."""
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

        m, pickled = self.model, self.model.allow_pickle
        try:
            if m.single_file:
                pipe = StableDiffusionPipeline.from_single_file(
                    str(m.path), config=str(m.config), local_files_only=True, torch_dtype=self.dtype,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                    tokenizer=m.tokenizer)
                return pipe.unet, pipe.vae, pipe.text_encoder
            kw: dict[str, Any] = dict(torch_dtype=self.dtype, use_safetensors=None if pickled else True)
            return (UNet2DConditionModel.from_pretrained(m.path, subfolder="unet", **kw),
                    AutoencoderKL.from_pretrained(m.path, subfolder="vae", **kw),
                    CLIPTextModel.from_pretrained(m.path, subfolder="text_encoder", **kw))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"Could not load the base model from {m.path}: {exc}") from None

    def _prepare(self, module: Any, compile_it: bool = True) -> Any:
        """On the device, in eval mode, frozen; channels-last and compiled when asked (exact-mode speed-ups)."""
        module = module.to(self.device).eval().requires_grad_(False)
        if self.channels_last:
            module = module.to(memory_format=self._torch.channels_last)
        if self.compile and compile_it:
            # compiled: the full forward (the shallow branch of feature reuse runs the eager submodules)
            module.forward = self._torch.compile(module.forward, dynamic=False)
        return module

    # -- what the model is (ModelDescription) and where it runs (Runtime) ------------------------------------
    @property
    def runtime(self) -> Runtime:
        return Runtime(self.device, str(self.dtype).removeprefix("torch."), self.channels_last, self.compile)

    @property
    def options(self) -> dict[str, Any]:
        """How the networks run (not what they compute): recorded in provenance, part of the engine cache key."""
        return self.runtime.options

    @property
    def path(self) -> Path:
        return self.model.path

    @property
    def model_ref(self) -> str:
        return self.model.ref

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def allow_pickle(self) -> bool:
        return self.model.allow_pickle

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def vae_scale_factor(self) -> int:
        return self.model.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor × UNet downsamplings)."""
        return self.model.size_multiple

    @property
    def mpp(self) -> float:
        return self.model.mpp

    @property
    def glass_rgb(self) -> tuple[int, int, int] | None:
        return self.model.glass_rgb

    @property
    def control_encoding(self) -> dict[str, str]:
        return self.model.control_encoding

    @cached_property
    def weights_sha256(self) -> str:
        return self.model.weights_sha256

    def truncated_tokens(self, prompt: str) -> list[str]:
        """The words CLIP's 77-token window cuts off ``prompt`` (empty when it fits)."""
        return self.model.truncated_tokens(prompt)

    def describe(self, controlnet: str | Path | None = None, mode: str | None = "labels") -> dict[str, Any]:
        """Provenance of the weights in use (``mode`` None: prompt only, no ControlNet) and of this runtime."""
        return self.model.describe(controlnet, mode, self.runtime)

    # -- ControlNets ----------------------------------------------------------------------------------------
    def controlnet_path(self, ref: str | Path | None = None, mode: str = "labels") -> Path:
        """The ControlNet for ``mode``: ``ref`` when given, else the model card's, else ``controlnet/``."""
        return self.model.controlnet_path(ref, mode)

    def controlnet(self, ref: str | Path | None = None, mode: str = "labels") -> Any:
        """The ControlNet for ``mode`` (see ``controlnet_path``), loaded once and kept beside the base model."""
        from diffusers import ControlNetModel

        path = self.controlnet_path(ref, mode).resolve()
        with self.lock:
            if path not in self._controlnets:
                check_weights_format(path, allow_pickle=self.allow_pickle)
                try:
                    if path.is_file():  # ControlNet 1.1 single file: its config from the model's config folder
                        net = ControlNetModel.from_single_file(
                            str(path), config=str(self.model.config), subfolder="controlnet", local_files_only=True,
                            torch_dtype=self.dtype)
                    else:
                        net = ControlNetModel.from_pretrained(
                            path, torch_dtype=self.dtype, use_safetensors=None if self.allow_pickle else True)
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    raise ModelLoadError(f"Could not load the ControlNet from {path}: {exc}") from None
                if self._lora is not None and self._lora["controlnet"] and self.model.lora is not None:
                    load_adapter(net, self._lora["controlnet"], self._lora["controlnet.alphas"], USER_LORA,
                                 "ControlNet", self.model.lora.path)
                self._controlnets[path] = self._prepare(net)
            return self._controlnets[path]

    # -- the few-step student -------------------------------------------------------------------------------
    def load_student(self) -> None:
        """Load the student the model declares into the UNet (once; checked: ``ModelDescription.student``)."""
        with self.lock:
            if self._student_loaded:
                return
            student = self.model.student()
            state = read_lora(student)
            if not state["unet"]:
                raise LoraError(f"{student.path}: the student holds no UNet weights: distil the model again.")
            load_adapter(self.unet, state["unet"], state["unet.alphas"], STUDENT, "UNet", student.path)
            self._student_loaded = True
            self._active_adapters = (*self._unet_adapters, STUDENT)
            self._use_adapters(False)

    def _use_adapters(self, student: bool) -> None:
        """The UNet's adapters for one step: the user's LoRA always, the student only for the lcm scheduler."""
        want = (*self._unet_adapters, STUDENT) if student else tuple(self._unet_adapters)
        if want != self._active_adapters:
            use_adapters(self.unet, list(want))
            self._active_adapters = want

    def make_scheduler(self, name: str = "default") -> Any:
        """A fresh scheduler (schedulers keep state between steps, so one per call)."""
        import diffusers

        cfg = self.scheduler_config
        cls_name = cfg["_class_name"] if name == "default" else SCHEDULER_CLASSES.get(name)
        if cls_name is None:
            raise ValueError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}.")
        if name == FEW_STEP_SCHEDULER:  # the student's grid: the 50 DDIM steps it was distilled on
            cfg = {**cfg, "original_inference_steps": LCM_MAX_STEPS}
        return getattr(diffusers, cls_name).from_config(cfg)

    # -- generation -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Any, Any]:
        """(prompt, negative) CLIP embeddings, cached (the last PROMPT_CACHE_SIZE pairs): reused by every tile."""
        key = (prompt, negative_prompt)
        with self.lock:
            if key in self._prompt_cache:
                self._prompt_cache.move_to_end(key)
            else:
                self._prompt_cache[key] = (self._encode(prompt), self._encode(negative_prompt))
                while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                    self._prompt_cache.popitem(last=False)
            return self._prompt_cache[key]

    def _encode(self, text: str) -> Any:
        tok = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with self._torch.inference_mode():
            return self.text_encoder(tok.input_ids.to(self.device))[0]

    def generate(
        self,
        noise: np.ndarray,
        control: np.ndarray | None = None,
        *,
        prompt: str,
        negative_prompt: str = "",
        steps: int = 50,
        guidance_scale: float = 7.5,
        controlnet: str | Path | None = None,
        controlnet_scale: float = 1.0,
        scheduler: str = "default",
        mode: str = "labels",
        cfg_cutoff: float = 1.0,
        cache_interval: int = 1,
    ) -> Generator[Step, None, np.ndarray]:
        """Denoise a batch; yields a Step after each step; returns RGB uint8 images (B, H, W, 3).

        ``noise`` (B, 4, H/f, W/f) is the starting noise (see ``tiling.noise_field``); ``control`` (B, H, W, 3)
        uint8 is the control image, or None for prompt-only generation (no ControlNet); ``mode`` picks the
        ControlNet when ``controlnet`` is not given. ``cfg_cutoff`` < 1 (approximate) stops classifier-free
        guidance after that fraction of the steps: the unconditional half of the batch is no longer computed.
        ``cache_interval`` N > 1 (approximate, see ``deepcache``) runs the full UNet every N-th step and only its
        shallow branch, on the deep feature kept from the last full step, in between. ``scheduler`` "lcm" runs the
        model's few-step student (its guidance is folded in: no CFG, ``guidance_scale`` is not used).
        """
        torch = self._torch
        # 1. Check inputs.
        b, _, lh, lw = noise.shape
        h, w = lh * self.vae_scale_factor, lw * self.vae_scale_factor
        if control is not None and control.shape != (b, h, w, 3):
            raise ValueError(f"Control batch {control.shape} does not match noise {noise.shape} "
                             f"(expected {(b, h, w, 3)}).")
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"Tile {h}×{w} px is not a multiple of {self.size_multiple} px.")
        few = scheduler == FEW_STEP_SCHEDULER
        if few:
            if not 1 <= steps <= LCM_MAX_STEPS:
                raise ValueError(f"--steps {steps}: the lcm scheduler takes 1 to {LCM_MAX_STEPS} steps.")
            if not self.model.lora_is_student:  # else the user's LoRA (always on) is the consistency model
                self.load_student()
        cfg = guidance_scale > 1.0 and not few
        # 2. Encode the prompt (cached across tiles).
        cond, uncond = self.encode_prompt(prompt, negative_prompt)
        embeds = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)]) if cfg else cond.expand(b, -1, -1)
        # 3. Prepare the control image, as the pipeline's control image processor does: float in [0, 1].
        net = self.controlnet(controlnet, mode) if control is not None else None
        cond_image = None
        if control is not None:
            # contiguous NCHW as the pipeline's image processor gives: a permuted view picks other conv kernels
            cond_image = torch.from_numpy(np.ascontiguousarray(control)).permute(0, 3, 1, 2).contiguous()
            cond_image = cond_image.to(self.device, self.dtype) / 255.0
            if cfg:
                cond_image = torch.cat([cond_image, cond_image])
        # 4. Prepare the latents.
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(steps, device=self.device)
        # the nets take each timestep as a device tensor, the scheduler as a Python number: indexing its
        # host-side tables with a GPU tensor would make the GPU wait (a sync per step); one sync here instead
        timesteps, step_numbers = sched.timesteps, sched.timesteps.tolist()
        latents = torch.from_numpy(noise).to(self.device, self.dtype) * sched.init_noise_sigma
        # 5. Denoise, one yield per step; feature reuse keeps its deep feature in this call's cache.
        guided_steps = round(cfg_cutoff * len(sched.timesteps)) if cfg else 0
        full_steps = full_step_indices(len(sched.timesteps), cache_interval)
        cache = FeatureCache(self.unet) if cache_interval > 1 else None
        if cache is not None:
            check_supported(self.unet, net)
        start = latents
        for i, t in enumerate(step_numbers):
            if cfg and i == guided_steps:  # CFG cut-off: from here on, the conditional half only
                cfg, embeds = False, embeds[b:]
                cond_image = cond_image[b:] if cond_image is not None else None
            # lcm: the noise added back between steps, from this tile's own starting noise (see lcm_noise)
            renoise = lcm_noise(start, i) if few and i + 1 < len(step_numbers) else None
            latents = self._step(sched, t, timesteps[i], latents, embeds, net, cond_image, controlnet_scale,
                                 guidance_scale, cfg, cache, full=i in full_steps, student=few,
                                 renoise=renoise, next_t=step_numbers[i + 1] if renoise is not None else None)
            yield Step(i + 1, len(step_numbers))
        # 6. Decode.
        return self._decode(latents)

    def _step(self, sched: Any, step_t: Any, t: Any, latents: Any, embeds: Any, net: Any, cond_image: Any,
              cn_scale: float, guidance: float, cfg: bool, cache: FeatureCache | None, full: bool = True,
              student: bool = False, renoise: Any = None, next_t: int | None = None) -> Any:
        """One denoising step: the full UNet (+ ControlNet), or with a ``cache`` and not ``full`` only their
        shallow branch; a full step with a ``cache`` keeps the deep feature in it.

        ``step_t`` is the timestep as a number (for the scheduler), ``t`` the same on the device (for the nets).
        ``student``: the UNet with the model's student on (lcm); ``renoise`` (lcm, not the last step) the noise
        that takes the step's clean estimate to timestep ``next_t``.
        Runs under the device lock: the networks (and their hooks) are shared with other calls.
        """
        torch = self._torch
        with self.lock, torch.inference_mode():
            self._use_adapters(student)
            x = torch.cat([latents, latents]) if cfg else latents
            x = sched.scale_model_input(x, step_t)
            if cache is not None and not full:
                down = None if net is None else shallow_controlnet(
                    net, x, t, embeds, cond_image, cn_scale, skip_count(self.unet))
                eps = shallow_unet(self.unet, cache, x, t, embeds, down)
            else:
                down = mid = None
                if net is not None:
                    down, mid = net(
                        x, t, encoder_hidden_states=embeds, controlnet_cond=cond_image,
                        conditioning_scale=cn_scale, return_dict=False,
                    )
                with cache.recording() if cache is not None else contextlib.nullcontext():
                    eps = self.unet(
                        x, t, encoder_hidden_states=embeds,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
                    )[0]
            if cfg:
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_text - eps_uncond)
            if not student:
                return sched.step(eps, step_t, latents, return_dict=False)[0]
            # LCM: the clean estimate (boundary condition), taken to the next timestep with our noise, not the
            # scheduler's (its own draw is from an unseeded global generator and would differ tile by tile)
            denoised = sched.step(eps, step_t, latents, generator=torch.Generator().manual_seed(0)).denoised
            if renoise is None:
                return denoised
            alpha = sched.alphas_cumprod[next_t].to(latents.device, latents.dtype)
            return alpha.sqrt() * denoised + (1 - alpha).sqrt() * renoise

    def _decode(self, latents: Any) -> np.ndarray:
        """Latents → RGB uint8, ``decode_batch`` tiles per VAE call (bounds the decoder's memory)."""
        torch = self._torch
        chunk = self.decode_batch(latents.shape[-1] * self.vae_scale_factor)
        with self.lock, torch.inference_mode():
            images = [self.vae.decode(latents[i : i + chunk] / self.vae.config.scaling_factor, return_dict=False)[0]
                      for i in range(0, len(latents), chunk)]
            # as the pipeline's post-processing: clamp in the model's dtype, scale in float32; uint8 to the host
            image = ((torch.cat(images) / 2 + 0.5).clamp(0, 1).float() * 255).round().to(torch.uint8)
            return image.permute(0, 2, 3, 1).cpu().numpy()

    # -- memory ---------------------------------------------------------------------------------------------
    def decode_batch(self, tile_px: int) -> int:
        """Tiles per VAE decode: 1 off CUDA (as the pipeline at batch 1); on CUDA as many as fit in free memory
        once ``auto_batch`` has measured a decode of this tile size, else ``UNMEASURED_DECODE_BATCH``."""
        if not self.device.startswith("cuda"):
            return 1
        if tile_px not in self._decode_bytes:
            return UNMEASURED_DECODE_BATCH
        return choose_batch(self._free_bytes(), self._decode_bytes[tile_px])

    def auto_batch(self, tile_px: int, *, guidance: bool = True, control: bool = True, cap: int = 16) -> int:
        """Tiles per model call that fit in free accelerator memory (1 off CUDA, where batching does not pay).

        The working memory of one tile (a denoising step, and a VAE decode) is measured once per tile size by
        a probe at batch 1; 90 % of the free memory is then shared out (``choose_batch``), never more than a
        batch that ran out of memory before (``batch_cap``).
        """
        if not self.device.startswith("cuda"):
            return 1
        key = (tile_px, guidance, control)
        with self.lock:
            if key not in self._step_bytes:
                self._step_bytes[key] = self._probe_step_bytes(tile_px, guidance, control)
            if tile_px not in self._decode_bytes:
                self._decode_bytes[tile_px] = self._probe_decode_bytes(tile_px)
        fits = choose_batch(self._free_bytes(), self._step_bytes[key], cap=cap)
        return min(fits, self.batch_cap(tile_px, guidance=guidance, control=control) or fits)

    def batch_cap(self, tile_px: int, *, guidance: bool, control: bool) -> int | None:
        """The batch this engine fell back to after running out of memory at this tile size (None: never did)."""
        return self._batch_caps.get((tile_px, guidance, control))

    def cap_batch(self, tile_px: int, batch: int, *, guidance: bool, control: bool) -> None:
        """Remember that ``batch`` is the most that fits (after an out-of-memory at a larger one)."""
        key = (tile_px, guidance, control)
        self._batch_caps[key] = min(batch, self._batch_caps.get(key, batch))

    def _free_bytes(self) -> int:
        return self._torch.cuda.mem_get_info(self._torch.device(self.device))[0]

    def _probe_step_bytes(self, tile_px: int, guidance: bool, control: bool) -> int:
        """Peak working memory (bytes) of one tile's denoising step, measured on the GPU."""
        torch = self._torch
        noise = self._probe_latents(tile_px)
        cond, uncond = self.encode_prompt("")
        embeds = torch.cat([uncond, cond]) if guidance else cond
        net = self.controlnet() if control else None
        image = torch.zeros(len(embeds), 3, tile_px, tile_px, device=self.device, dtype=self.dtype) if control else None
        sched = self.make_scheduler("ddim")
        sched.set_timesteps(1, device=self.device)
        t = sched.timesteps[0]
        return self._peak_bytes(
            lambda: self._step(sched, int(t), t, noise, embeds, net, image, 1.0, 7.5, guidance, None))

    def _probe_decode_bytes(self, tile_px: int) -> int:
        """Peak working memory (bytes) of one tile's VAE decode, measured on the GPU."""
        noise = self._probe_latents(tile_px)
        return self._peak_bytes(lambda: self.vae.decode(noise, return_dict=False))

    def _probe_latents(self, tile_px: int) -> Any:
        lat = tile_px // self.vae_scale_factor
        return self._torch.zeros(1, 4, lat, lat, device=self.device, dtype=self.dtype)

    def _peak_bytes(self, work: Callable[[], Any]) -> int:
        """GPU memory ``work()`` allocates at its peak beyond what was allocated before (under the device lock:
        the peak statistics are global to the device)."""
        torch = self._torch
        with self.lock:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with torch.inference_mode():
                work()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base


def lcm_noise(start: Any, step: int) -> Any:
    """The noise LCM adds back after ``step``: the tile's starting noise with its latent channels permuted and
    sign-flipped by a fixed rule per step. Still N(0, 1), a function of the seed, and the same value at the same
    place for every tile that covers it (point by point, as the starting noise field), so overlaps agree."""
    import torch

    rng = np.random.default_rng([23, step])
    channels = start.shape[1]
    perm = torch.as_tensor(rng.permutation(channels), device=start.device)
    signs = torch.as_tensor(rng.choice([-1.0, 1.0], channels), device=start.device, dtype=start.dtype)
    return start[:, perm] * signs.view(1, -1, 1, 1)


def choose_batch(free_bytes: int, tile_bytes: int, *, cap: int = 16, reserve: float = 0.1) -> int:
    """How many tiles of ``tile_bytes`` working memory fit in ``free_bytes`` less a ``reserve`` fraction (≥ 1)."""
    if tile_bytes <= 0:
        return cap
    return int(max(1, min(cap, free_bytes * (1 - reserve) // tile_bytes)))


# --------------------------------------------------------------------------------------------- engine cache

_ENGINES: OrderedDict[tuple[Any, ...], Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()


def get_engine(
    model: str | Path, *, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
    channels_last: bool = False, compile: bool = False, per_device: int | None = None,
    lora: str | Path | None = None,
) -> Engine:
    """The cached Engine for these arguments; ``model`` may be ``"demo"`` (the bundled trained demo model) or
    ``"tiny-demo"`` (built on first use). ``lora``: a LoRA file (or folder) loaded over the UNet (and ControlNets
    where it has weights for them); safetensors unless ``allow_pickle``; its hash goes into provenance.

    At most ``per_device`` (default ``ENGINES_PER_DEVICE``) engines are kept per device: asking for another
    model drops the least recently used one first and frees its memory (``gc`` and the CUDA cache), so
    switching models in a widget does not pile them up on the GPU. A caller still holding a dropped engine
    keeps it working; its memory is freed when the caller lets go.
    """
    from .catalog import DEMO_MODEL_ID
    from .tiny import TINY_MODEL_ID, ensure_tiny_model

    if str(model) == TINY_MODEL_ID:
        model = ensure_tiny_model()
    elif str(model) == DEMO_MODEL_ID:
        model = resolve_model(model)  # the bundled folder: one cache entry whether asked by id or by path
    path = Path(model).expanduser()
    where = pick_device(device)
    lora_key = None if lora is None else open_lora(lora, allow_pickle=allow_pickle)  # refused before any load
    key = (str(path.resolve()) if path.exists() else str(model), where, dtype, allow_pickle, channels_last, compile,
           lora_key)
    keep = ENGINES_PER_DEVICE if per_device is None else per_device
    with _ENGINES_LOCK:
        if key in _ENGINES:
            _ENGINES.move_to_end(key)
            return _ENGINES[key]
        same_device = [k for k in _ENGINES if k[1] == where]
        dropped = [_ENGINES.pop(k) for k in same_device[: max(0, len(same_device) - keep + 1)]]
        if dropped:
            del dropped
            free_memory(where)
        engine = Engine(model, device=where, dtype=dtype, allow_pickle=allow_pickle, channels_last=channels_last,
                        compile=compile, lora=lora)
        _ENGINES[key] = engine
        return engine


def cached_engines() -> list[Engine]:
    """The engines ``get_engine`` holds, least recently used first."""
    with _ENGINES_LOCK:
        return list(_ENGINES.values())


def free_memory(device: str) -> None:
    """Collect unreachable networks and hand the CUDA cache of ``device`` back to the driver."""
    gc.collect()
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        with torch.cuda.device(torch.device(device)):
            torch.cuda.empty_cache()
