"""The diffusion engine: loads SD1.5-family weights + ControlNets (diffusers folders), generates tiles.

Qt-free, and torch/diffusers are imported only when an Engine is built, so opening napari or a slide does not
pay for them. ``Engine.generate`` is a generator that yields once per denoising step (so a caller can report
progress or stop within a step) and returns the decoded images. Its loop is the one of diffusers'
``StableDiffusionControlNetPipeline.__call__`` (same scheduler, CFG and ControlNet math), written as
numbered steps so that we control the starting noise, batching and the text-embedding cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Generator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard
from .deepcache import FeatureCache, check_supported, full_step_indices, shallow_controlnet, shallow_unet, skip_count

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
#: Components of a diffusers folder whose weights we load (and hash).
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "controlnet")
SCHEDULERS = ("default", "ddim", "unipc", "dpm++")
#: Tiles per VAE decode on CUDA before ``Engine.auto_batch`` has measured one (an explicit batch size).
UNMEASURED_DECODE_BATCH = 4


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the path and what to do."""


class PickleRefused(ModelLoadError):
    """Weights only in pickle format, which can run code on load; loading them needs an explicit opt-in."""


@dataclass(frozen=True)
class Step:
    """Progress of one ``Engine.generate`` call: ``step`` of ``steps`` denoising steps done."""

    step: int
    steps: int


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str | None = None) -> Any:
    import torch

    if dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return torch.float16 if device.startswith("cuda") else torch.float32


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def resolve_model(ref: str | Path, *, allow_pickle: bool = False) -> Path:
    """A local diffusers folder for ``ref`` (a path, or a hub id fetched into the local cache)."""
    path = Path(ref).expanduser()
    if not path.exists():
        if str(ref).count("/") != 1 or str(ref).startswith((".", "/", "~")):
            raise ModelLoadError(f"Model '{ref}' not found: give a local diffusers folder or a hub id like 'org/name'.")
        path = _download(str(ref), allow_pickle)
    if path.is_file():
        raise ModelLoadError(
            f"Model '{ref}' is a single file; napari-crafts loads diffusers folders (model_index.json or "
            "config.json beside the weights). Convert single-file checkpoints with diffusers first."
        )
    if not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(f"Model '{ref}' is not a diffusers folder: it has no model_index.json or config.json.")
    check_weights_format(path, allow_pickle=allow_pickle)
    return path


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 -- network (httpx), auth, missing repo: one message for all
        raise ModelLoadError(
            f"Could not fetch '{repo_id}' from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Check the id and your connection, or download the model and give its folder."
        ) from None


def _weight_folders(path: Path) -> list[Path]:
    subs = [path / c for c in WEIGHT_COMPONENTS if (path / c).is_dir()]
    return subs or [path]


def check_weights_format(path: Path, *, allow_pickle: bool) -> None:
    """Refuse folders whose weights exist only as pickle files, unless ``allow_pickle``."""
    for folder in _weight_folders(path):
        files = [f for f in folder.iterdir() if f.is_file()]
        if any(f.suffix == ".safetensors" for f in files):
            continue
        pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise PickleRefused(
                f"{folder} holds only pickle weights ({', '.join(sorted(pickles))}); pickle files can run code "
                "when loaded. Convert them to safetensors, or, if you trust their source, opt in: --allow-pickle, "
                "allow_pickle=True, or 'allow pickle weights' in the widget."
            )
        if not pickles and folder.name in WEIGHT_COMPONENTS:
            raise ModelLoadError(f"{folder} has no weights (no .safetensors file).")


_HASHES: dict[tuple[str, int, float], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 over the weight files of a diffusers folder (names and contents), cached per file state."""
    digest = hashlib.sha256()
    for folder in _weight_folders(path):
        for f in sorted(folder.iterdir()):
            if f.suffix not in (".safetensors", *PICKLE_SUFFIXES) or not f.is_file():
                continue
            st = f.stat()
            key = (str(f.resolve()), st.st_size, st.st_mtime)
            if key not in _HASHES:
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        h.update(block)
                _HASHES[key] = h.hexdigest()
            digest.update(f"{f.relative_to(path)}:{_HASHES[key]}\n".encode())
    return digest.hexdigest()


class Engine:
    """SD1.5-family base model (UNet, VAE, CLIP text encoder, tokenizer, scheduler) plus ControlNets by path.

    The base loads once; each ControlNet loads on first use and stays cached, so the labels and the
    fluorescence ControlNet share one base model. Weights load from safetensors unless ``allow_pickle``.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.utils import logging as diffusers_logging
        from transformers import CLIPTextModel, CLIPTokenizer

        diffusers_logging.disable_progress_bar()
        self.model_ref = str(model)
        self.path = resolve_model(model, allow_pickle=allow_pickle)
        self.allow_pickle = allow_pickle
        self.card = ModelCard.read(self.path)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        kw = dict(torch_dtype=self.dtype, use_safetensors=None if allow_pickle else True)
        try:
            self.unet = UNet2DConditionModel.from_pretrained(self.path, subfolder="unet", **kw)
            self.vae = AutoencoderKL.from_pretrained(self.path, subfolder="vae", **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder", **kw)
            self.tokenizer = CLIPTokenizer.from_pretrained(self.path, subfolder="tokenizer")
            self.scheduler_config = _read_scheduler_config(self.path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"Could not load the base model from {self.path}: {exc}") from None
        self._torch = torch
        self.channels_last, self.compile = channels_last, compile
        text_encoder: Any = self.text_encoder  # transformers types PreTrainedModel.to as an unbound wrapper
        text_encoder.to(self.device).eval().requires_grad_(False)
        self.vae = self._prepare(self.vae, compile_it=False)
        self.unet = self._prepare(self.unet)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._controlnets: dict[Path, Any] = {}
        self._prompt_cache: dict[tuple[str, str], Any] = {}
        self._step_bytes: dict[tuple[int, bool, bool], int] = {}  # (tile px, CFG, ControlNet) → one tile's step
        self._decode_bytes: dict[int, int] = {}  # tile px → one tile's VAE decode

    def _prepare(self, module: Any, compile_it: bool = True) -> Any:
        """On the device, in eval mode, frozen; channels-last and compiled when asked (exact-mode speed-ups)."""
        module = module.to(self.device).eval().requires_grad_(False)
        if self.channels_last:
            module = module.to(memory_format=self._torch.channels_last)
        if self.compile and compile_it:
            # compiled: the full forward (the shallow branch of feature reuse runs the eager submodules)
            module.forward = self._torch.compile(module.forward, dynamic=False)
        return module

    @property
    def options(self) -> dict[str, Any]:
        """How the networks run (not what they compute): recorded in provenance, part of the engine cache key."""
        return {"channels_last": self.channels_last, "compile": self.compile}

    # -- models ---------------------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor × UNet downsamplings)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def mpp(self) -> float:
        return self.card.mpp

    def controlnet_path(self, ref: str | Path | None = None, mode: str = "labels") -> Path:
        """The ControlNet folder for ``mode``: ``ref`` when given, else the model card's, else ``controlnet/``."""
        if ref:
            path = Path(ref).expanduser()
            return path if path.exists() else resolve_model(str(ref), allow_pickle=self.allow_pickle)
        sub = self.card.controlnets.get(mode, "controlnet")
        path = self.path / sub
        if not path.is_dir():
            raise ModelLoadError(
                f"{self.path} has no ControlNet for '{mode}' (no {sub}/ folder); give one with --controlnet."
            )
        return path

    def controlnet(self, ref: str | Path | None = None, mode: str = "labels") -> Any:
        """The ControlNet for ``mode`` (see ``controlnet_path``), loaded once and kept beside the base model."""
        from diffusers import ControlNetModel

        path = self.controlnet_path(ref, mode).resolve()
        if path not in self._controlnets:
            check_weights_format(path, allow_pickle=self.allow_pickle)
            try:
                net = ControlNetModel.from_pretrained(
                    path, torch_dtype=self.dtype, use_safetensors=None if self.allow_pickle else True
                )
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"Could not load the ControlNet from {path}: {exc}") from None
            self._controlnets[path] = self._prepare(net)
        return self._controlnets[path]

    @cached_property
    def weights_sha256(self) -> str:
        return weights_sha256(self.path)

    def describe(self, controlnet: str | Path | None = None, mode: str | None = "labels") -> dict[str, Any]:
        """Provenance of the weights in use (``mode`` None: prompt only, no ControlNet)."""
        out: dict[str, Any] = {
            "id": self.model_ref,
            "name": self.card.name,
            "weights_sha256": self.weights_sha256,
            "mpp": self.card.mpp,
            "mpp_declared": self.card.mpp_declared,
            "tiny_random_model": self.card.tiny,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.options,
        }
        if mode is not None:
            cn = self.controlnet_path(controlnet, mode)
            out["controlnet"] = str(controlnet) if controlnet else cn.name
            out["controlnet_sha256"] = weights_sha256(cn)
        return out

    def make_scheduler(self, name: str = "default") -> Any:
        """A fresh scheduler (schedulers keep state between steps, so one per call)."""
        import diffusers

        cfg = self.scheduler_config
        cls_name = {
            "default": cfg["_class_name"],
            "ddim": "DDIMScheduler",
            "unipc": "UniPCMultistepScheduler",
            "dpm++": "DPMSolverMultistepScheduler",
        }.get(name)
        if cls_name is None:
            raise ValueError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}.")
        return getattr(diffusers, cls_name).from_config(cfg)

    # -- generation -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Any, Any]:
        """(prompt, negative) CLIP embeddings, cached: reused by every tile of a region."""
        key = (prompt, negative_prompt)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = (self._encode(prompt), self._encode(negative_prompt))
        return self._prompt_cache[key]

    def truncated_tokens(self, prompt: str) -> list[str]:
        """The words CLIP's 77-token window cuts off ``prompt`` (empty when it fits)."""
        ids = self.tokenizer(prompt, truncation=False, verbose=False).input_ids
        limit = self.tokenizer.model_max_length
        if len(ids) <= limit:
            return []
        return self.tokenizer.decode(ids[limit - 1 : -1]).split()

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
        shallow branch, on the deep feature kept from the last full step, in between.
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
        cfg = guidance_scale > 1.0
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
        # 5. Denoise, one yield per step.
        guided_steps = round(cfg_cutoff * len(sched.timesteps)) if cfg else 0
        full_steps = full_step_indices(len(sched.timesteps), cache_interval)
        if cache_interval > 1:
            check_supported(self.unet, net)
        with FeatureCache(self.unet) if cache_interval > 1 else contextlib.nullcontext() as cache:
            for i, t in enumerate(step_numbers):
                if cfg and i == guided_steps:  # CFG cut-off: from here on, the conditional half only
                    cfg, embeds = False, embeds[b:]
                    cond_image = cond_image[b:] if cond_image is not None else None
                latents = self._step(sched, t, timesteps[i], latents, embeds, net, cond_image, controlnet_scale,
                                     guidance_scale, cfg, None if i in full_steps else cache)
                yield Step(i + 1, len(step_numbers))
        # 6. Decode.
        return self._decode(latents)

    def _step(self, sched, step_t, t, latents, embeds, net, cond_image, cn_scale, guidance, cfg, cache):
        """One denoising step: the full UNet (+ ControlNet), or with a ``cache`` only their shallow branch.

        ``step_t`` is the timestep as a number (for the scheduler), ``t`` the same on the device (for the nets).
        """
        torch = self._torch
        with torch.inference_mode():
            x = torch.cat([latents, latents]) if cfg else latents
            x = sched.scale_model_input(x, step_t)
            if cache is not None:
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
                eps = self.unet(
                    x, t, encoder_hidden_states=embeds,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
                )[0]
            if cfg:
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_text - eps_uncond)
            return sched.step(eps, step_t, latents, return_dict=False)[0]

    def _decode(self, latents: Any) -> np.ndarray:
        """Latents → RGB uint8, ``decode_batch`` tiles per VAE call (bounds the decoder's memory)."""
        torch = self._torch
        chunk = self.decode_batch(latents.shape[-1] * self.vae_scale_factor)
        with torch.inference_mode():
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
        a probe at batch 1; 90 % of the free memory is then shared out (``choose_batch``).
        """
        if not self.device.startswith("cuda"):
            return 1
        key = (tile_px, guidance, control)
        if key not in self._step_bytes:
            self._step_bytes[key] = self._probe_step_bytes(tile_px, guidance, control)
        if tile_px not in self._decode_bytes:
            self._decode_bytes[tile_px] = self._probe_decode_bytes(tile_px)
        return choose_batch(self._free_bytes(), self._step_bytes[key], cap=cap)

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

    def _peak_bytes(self, work: Any) -> int:
        """GPU memory ``work()`` allocates at its peak beyond what was allocated before."""
        torch = self._torch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            work()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base


def choose_batch(free_bytes: int, tile_bytes: int, *, cap: int = 16, reserve: float = 0.1) -> int:
    """How many tiles of ``tile_bytes`` working memory fit in ``free_bytes`` less a ``reserve`` fraction (≥ 1)."""
    if tile_bytes <= 0:
        return cap
    return int(max(1, min(cap, free_bytes * (1 - reserve) // tile_bytes)))


def _read_scheduler_config(path: Path) -> dict[str, Any]:
    import json

    f = path / "scheduler" / "scheduler_config.json"
    if not f.is_file():
        raise ModelLoadError(f"{path} has no scheduler/scheduler_config.json.")
    return json.loads(f.read_text())


_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(
    model: str | Path, *, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
    channels_last: bool = False, compile: bool = False,
) -> Engine:
    """The cached Engine for these arguments (one base model in memory per model/device/dtype/options).

    ``model`` may be ``"tiny-demo"``: the tiny random model, built on first use.
    """
    from .tiny import TINY_MODEL_ID, ensure_tiny_model

    if str(model) == TINY_MODEL_ID:
        model = ensure_tiny_model()
    path = Path(model).expanduser()
    key = (str(path.resolve()) if path.exists() else str(model), device, dtype, allow_pickle, channels_last, compile)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Engine(model, device=device, dtype=dtype, allow_pickle=allow_pickle,
                                   channels_last=channels_last, compile=compile)
        return _ENGINES[key]
