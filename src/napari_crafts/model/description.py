"""What a model is, without loading it: where its weights are, what its card says, its geometry and hashes.

A :class:`ModelDescription` reads only small files (the model card, the networks' ``config.json``, the
tokenizer when asked) and never imports torch, so a dask client, a CLI planning a run or a widget can plan
tiles, check settings and write provenance without the networks. :class:`~napari_crafts.model.engine.Engine`
is built from one and owns the networks. :class:`Runtime` says where networks run (device, dtype, options):
a provenance record holds the runtime of the process that made the tiles.

Two layouts load: a diffusers folder (``model_index.json`` or ``config.json`` beside the weights) and a single
``.safetensors`` file in the original Stable Diffusion layout, read with the SD1.5 configs kept in the package
(``configs/sd15``; see :func:`single_file_config`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .card import ModelCard, ModelCardError
from .catalog import DEMO_MODEL_ID, ModelLoadError, bundled_demo_model, is_demo_model

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
#: Components of a diffusers folder whose weights we load (and hash).
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "controlnet")
#: Diffusers-layout configs (no weights) of Stable Diffusion 1.5 and its ControlNet 1.1, for single files.
SD15_CONFIG = Path(__file__).with_name("configs") / "sd15"


class DeviceUnavailable(ModelLoadError):
    """The device asked for is not one this machine's torch can run on; the message says what it has."""


class PickleRefused(ModelLoadError):
    """Weights only in pickle format, which can run code on load; loading them needs an explicit opt-in."""


@dataclass(frozen=True)
class Runtime:
    """Where and how networks run: device, dtype and the exact-mode speed options (not the maths)."""

    device: str
    dtype: str  # "float32", "float16", "bfloat16"
    channels_last: bool = False
    compile: bool = False

    @property
    def options(self) -> dict[str, Any]:
        """How the networks run (not what they compute): part of the engine cache key."""
        return {"channels_last": self.channels_last, "compile": self.compile}

    def record(self) -> dict[str, Any]:
        """The runtime as provenance records it."""
        return {"device": self.device, "dtype": self.dtype, **self.options}


def is_single_file(path: Path) -> bool:
    """A weights file (not a folder): loaded as an original-layout checkpoint."""
    return path.is_file() and path.suffix in (".safetensors", *PICKLE_SUFFIXES)


def resolve_model(ref: str | Path, *, allow_pickle: bool = False) -> Path:
    """A local diffusers folder or single checkpoint file for ``ref`` (a path, a hub id fetched into the cache, or
    ``demo``: the trained demo model bundled in the package, read in place)."""

    path = bundled_demo_model() if str(ref).strip() == DEMO_MODEL_ID else Path(ref).expanduser()
    if not path.exists():
        if str(ref).count("/") != 1 or str(ref).startswith((".", "/", "~")):
            raise ModelLoadError(f"Model '{ref}' not found: give a local diffusers folder or a hub id like 'org/name'.")
        if path.parent.is_dir():  # 'models/mine' beside a folder 'models': a path, not a hub id
            raise ModelLoadError(f"Model folder '{ref}': no such folder in {path.parent.absolute()}; give an "
                                 "existing diffusers folder (or a hub id like 'org/name').")
        path = _download(str(ref), allow_pickle)
    if path.is_file():
        check_single_file(path, allow_pickle=allow_pickle)
        return path
    if not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(f"Model '{ref}' is not a diffusers folder: it has no model_index.json or config.json.")
    check_weights_format(path, allow_pickle=allow_pickle)
    return path


def check_single_file(path: Path, *, allow_pickle: bool) -> None:
    """Accept a ``.safetensors`` checkpoint; a pickle one (``.ckpt`` …) only with ``allow_pickle``."""
    if path.suffix == ".safetensors":
        return
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefused(
                f"{path} is a single file in pickle format; pickle files can run code when loaded. Convert it to "
                "safetensors, "
                "or, if you trust its source, opt in: --allow-pickle, allow_pickle=True, or 'allow pickle weights' "
                "in the widget."
            )
        return
    raise ModelLoadError(f"Model '{path}' is a file but not a checkpoint: give a .safetensors file (original Stable "
                         "Diffusion or ControlNet layout) or a diffusers folder.")


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 -- network (httpx), auth, missing repo: one message for all
        raise ModelLoadError(
            f"'{repo_id}' is no folder here, and fetching it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {exc}). Check the path, or the id and your connection."
        ) from None


def _weight_folders(path: Path) -> list[Path]:
    subs = [path / c for c in WEIGHT_COMPONENTS if (path / c).is_dir()]
    return subs or [path]


def check_weights_format(path: Path, *, allow_pickle: bool) -> None:
    """Refuse folders whose weights exist only as pickle files, unless ``allow_pickle``."""
    if path.is_file():
        check_single_file(path, allow_pickle=allow_pickle)
        return
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


#: The file a LoRA folder holds (diffusers' name first, then peft's).
LORA_FILE_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.bin",
                   "adapter_model.bin")
class LoraError(ModelLoadError):
    """A LoRA that cannot be used with this model; the message names the file and what to do."""


@dataclass(frozen=True)
class LoraFile:
    """A LoRA on disk: its path and the SHA-256 of its bytes (what provenance records)."""

    path: Path
    sha256: str

    def record(self) -> dict[str, Any]:
        return {"file": self.path.name, "sha256": self.sha256}


def open_lora(ref: str | Path, *, allow_pickle: bool = False) -> LoraFile:
    """The LoRA file ``ref`` names (a file, or a folder holding one of ``LORA_FILE_NAMES``), checked and hashed."""
    path = Path(ref).expanduser()
    if path.is_dir():
        found = [path / n for n in LORA_FILE_NAMES if (path / n).is_file()]
        if not found:
            raise LoraError(f"--lora {ref}: the folder holds no LoRA file ({', '.join(LORA_FILE_NAMES[:2])}).")
        path = found[0]
    elif not path.is_file():
        raise LoraError(f"--lora {ref}: no such file or folder.")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefused(f"--lora {path} is in pickle format, which can run code when loaded: convert it to "
                                ".safetensors, or, if you trust its source, add --allow-pickle.")
    elif path.suffix != ".safetensors":
        raise LoraError(f"--lora {path}: not a LoRA file (give a .safetensors file, or a folder holding one).")
    return LoraFile(path, _file_sha256(path))


_HASHES: dict[tuple[str, int, float], str] = {}


def _file_sha256(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(path: Path) -> str:
    """SHA-256 over the weight files of a diffusers folder (names and contents), or of one checkpoint file;
    cached per file state."""
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for folder in _weight_folders(path):
        for f in sorted(folder.iterdir()):
            if f.suffix not in (".safetensors", *PICKLE_SUFFIXES) or not f.is_file():
                continue
            digest.update(f"{f.relative_to(path)}:{_file_sha256(f)}\n".encode())
    return digest.hexdigest()


def read_config(folder: Path, component: str) -> dict[str, Any]:
    """``<folder>/<component>/config.json`` (``scheduler``: its ``scheduler_config.json``) as a dict."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    f = folder / component / name
    if not f.is_file():
        raise ModelLoadError(f"{folder} has no {component}/{name}.")
    try:
        return dict(json.loads(f.read_text()))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{f} could not be read as JSON ({exc}).") from None


def single_file_config(config: str | Path | None = None) -> Path:
    """The diffusers-layout config folder for single-file checkpoints: ``config`` or the packaged SD1.5 one.

    diffusers' ``from_single_file`` needs the networks' configs beside the weights; given a local folder
    (``config=``) it reads them from there and never asks the hub. The packaged folder holds SD1.5's
    (``runwayml/stable-diffusion-v1-5`` layout: unet, vae, text_encoder, scheduler) and ControlNet 1.1's, and
    its tokenizer is made from CLIP's byte-pair merges on first use (see :func:`ensure_sd15_tokenizer`).
    """
    if config is not None:
        folder = Path(config).expanduser()
        if not (folder / "unet" / "config.json").is_file():
            raise ModelLoadError(f"Config folder {folder} has no unet/config.json: give a diffusers-layout folder "
                                 "(configs only are enough) for the single-file checkpoint.")
        return folder
    return ensure_sd15_tokenizer()


@dataclass(frozen=True, eq=False)
class ModelDescription:
    """A model as files: identity, card, geometry and hashes, with no network loaded (torch-free).

    ``ref`` is what the user gave (path or hub id), ``path`` the local folder or checkpoint file, ``config`` the
    folder holding the networks' configs and tokenizer (``path`` itself for a diffusers folder).
    """

    ref: str
    path: Path
    config: Path
    card: ModelCard
    allow_pickle: bool
    vae_scale_factor: int
    unet_levels: int  # UNet resolution levels (len of block_out_channels)
    notes: tuple[str, ...] = field(default=())
    lora: LoraFile | None = None  # a LoRA loaded over the weights (``--lora``)

    @classmethod
    def open(cls, model: str | Path, *, allow_pickle: bool = False, config: str | Path | None = None,
             lora: str | Path | None = None) -> ModelDescription:
        """Describe ``model``: a diffusers folder, a single checkpoint file, a hub id, ``"demo"`` or ``"tiny-demo"``.

        ``config``: for a single file, the diffusers-layout folder with the networks' configs (default: SD1.5's,
        in the package). ``lora``: a LoRA file (or folder) the engine loads over the UNet (checked, hashed here).
        """

        from .tiny import TINY_MODEL_ID, ensure_tiny_model, tiny_model_path

        ref = str(model)
        path = ensure_tiny_model() if ref == TINY_MODEL_ID else resolve_model(model, allow_pickle=allow_pickle)
        # asked for by id or by its folder, provenance names a model we ship by its id (not a machine's path)
        if is_demo_model(path):
            ref = DEMO_MODEL_ID
        elif path.resolve() == tiny_model_path().resolve():
            ref = TINY_MODEL_ID
        if path.is_file():
            folder, card = single_file_config(config), ModelCard(name=path.name)  # a bare file declares nothing
        else:
            try:
                folder, card = path, ModelCard.read(path)
            except ModelCardError as exc:
                raise ModelLoadError(str(exc)) from None
        vae, unet = read_config(folder, "vae"), read_config(folder, "unet")
        return cls(ref, path, folder, card, allow_pickle, 2 ** (len(vae["block_out_channels"]) - 1),
                   len(unet["block_out_channels"]),
                   lora=open_lora(lora, allow_pickle=allow_pickle) if lora is not None else None)

    # -- geometry ---------------------------------------------------------------------------------------------
    @property
    def single_file(self) -> bool:
        return self.path.is_file()

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor × UNet downsamplings)."""
        return self.vae_scale_factor * 2 ** (self.unet_levels - 1)

    @property
    def mpp(self) -> float:
        return self.card.mpp

    @property
    def glass_rgb(self) -> tuple[int, int, int] | None:
        """The glass colour the card declares (None: not declared)."""
        return self.card.glass_rgb

    @property
    def control_encoding(self) -> dict[str, str]:
        """The control encoding of each mode ("labels" → "nuclei-v1", …): the card's, else the default."""
        return self.card.encodings

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight files (what a worker holds in memory, at their stored precision)."""
        if self.single_file:
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*.safetensors"))

    @cached_property
    def weights_sha256(self) -> str:
        return weights_sha256(self.path)

    # -- prompt -----------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> Any:
        """CLIP's tokenizer of this model (loads transformers, not torch networks)."""
        from transformers import CLIPTokenizer

        try:
            return CLIPTokenizer.from_pretrained(self.config, subfolder="tokenizer")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load the tokenizer from {self.config}: {exc}") from None

    def truncated_tokens(self, prompt: str) -> list[str]:
        """The words CLIP's 77-token window cuts off ``prompt`` (empty when it fits)."""
        ids = self.tokenizer(prompt, truncation=False, verbose=False).input_ids
        limit = self.tokenizer.model_max_length
        if len(ids) <= limit:
            return []
        return self.tokenizer.decode(ids[limit - 1 : -1]).split()

    # -- ControlNets ------------------------------------------------------------------------------------------
    def controlnet_path(self, ref: str | Path | None = None, mode: str = "labels") -> Path:
        """The ControlNet for ``mode``: ``ref`` when given (folder, single file or hub id), else the model card's,
        else ``controlnet/``."""
        if ref:
            path = Path(ref).expanduser()
            if path.is_file():
                check_single_file(path, allow_pickle=self.allow_pickle)
                return path
            return path if path.exists() else resolve_model(str(ref), allow_pickle=self.allow_pickle)
        if self.single_file:
            raise ModelLoadError(f"{self.path.name} is a single checkpoint with no ControlNet beside it: give one "
                                 "with --controlnet (a folder or a ControlNet 1.1 .safetensors file).")
        sub = self.card.controlnets.get(mode, "controlnet")
        path = self.path / sub
        if not path.is_dir():
            raise ModelLoadError(
                f"{self.path} has no ControlNet for '{mode}' (no {sub}/ folder); give one with --controlnet."
            )
        return path

    # -- the few-step student (``train --stage distill``; used by the lcm scheduler) ----------------------------
    def student(self) -> LoraFile:
        """The student the card declares, checked: its file is there with the declared hash, and it was distilled
        from these weights. One line otherwise (no student, another base, a changed file)."""
        declared = self.card.student
        if not declared:
            raise LoraError(f"--scheduler lcm needs a few-step student, and model '{self.ref}' declares none: "
                            "make one with `napari-crafts train PAIRS --base MODEL --stage distill --out FAST`, give "
                            "a consistency LoRA made for these weights with --lora (e.g. LCM-LoRA for SD1.5), or "
                            "use another scheduler.")
        path = self.path / declared["lora"]
        if self.single_file or not path.is_file() or path.resolve().parent.parent != self.path.resolve():
            raise LoraError(f"{self.path}: the card's student '{declared['lora']}' is not a file in the model "
                            "folder: distil the model again.")
        if _file_sha256(path) != declared["sha256"]:
            raise LoraError(f"{path} is not the student the card declares (its SHA-256 differs): distil the model "
                            "again, or restore the file.")
        if declared["base_sha256"] != self.weights_sha256:
            raise LoraError(f"model '{self.ref}': its student was distilled from other weights (base "
                            f"{declared['base_sha256'][:12]}…, this model {self.weights_sha256[:12]}…): distil this "
                            "model again with --stage distill.")
        return LoraFile(path, declared["sha256"])

    @property
    def lora_is_student(self) -> bool:
        """lcm with no declared student runs on the user's ``--lora`` alone (e.g. the public LCM-LoRA for SD1.5)."""
        return self.lora is not None and not self.card.student

    def check_few_step(self) -> None:
        """What ``--scheduler lcm`` will run is there: the declared student (checked), or the user's LoRA."""
        if not self.lora_is_student:
            self.student()

    # -- provenance -------------------------------------------------------------------------------------------
    def describe(self, controlnet: str | Path | None = None, mode: str | None = "labels",
                 runtime: Runtime | None = None) -> dict[str, Any]:
        """Provenance of the weights in use (``mode`` None: prompt only, no ControlNet), and where they ran."""
        out: dict[str, Any] = {
            "id": self.ref,
            "name": self.card.name,
            "weights_sha256": self.weights_sha256,
            "mpp": self.card.mpp,
            "mpp_declared": self.card.mpp_declared,
            "tiny_random_model": self.card.tiny,
            **(runtime.record() if runtime is not None else {}),
        }
        if self.single_file:
            out["single_file"] = True
        if self.lora is not None:
            out["lora"] = self.lora.record()
        if self.card.student:  # the lcm scheduler uses it (settings.scheduler says whether it did)
            out["student"] = {k: self.card.student.get(k) for k in ("lora", "sha256", "base_sha256", "steps",
                                                                     "guidance")}
        if mode is not None:
            cn = self.controlnet_path(controlnet, mode)
            out["controlnet"] = str(controlnet) if controlnet else cn.name
            out["controlnet_sha256"] = weights_sha256(cn)
            out["control_encoding"] = self.card.encoding(mode)
        return out

    def at(self, runtime: Runtime) -> PlacedModel:
        """This model as ``runtime`` runs it: what the provenance of tiles made there describes."""
        return PlacedModel(self, runtime)


@dataclass(frozen=True)
class PlacedModel:
    """A model description and the runtime that made the tiles (a whole-slide client's view of its workers)."""

    model: ModelDescription
    runtime: Runtime

    def describe(self, controlnet: str | Path | None = None, mode: str | None = "labels") -> dict[str, Any]:
        return self.model.describe(controlnet, mode, self.runtime)


# --------------------------------------------------------------------------------------------- SD1.5 tokenizer

#: CLIP's byte-pair merges (OpenAI CLIP, MIT licence), gzipped as the CLIP and open_clip packages ship them.
CLIP_BPE = SD15_CONFIG / "bpe_simple_vocab_16e6.txt.gz"
_CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP uses (the vocabulary is 49,408 tokens)


def ensure_sd15_tokenizer() -> Path:
    """The packaged SD1.5 config folder, with ``tokenizer/`` (CLIP ViT-L/14's) made from CLIP_BPE on first use.

    The folder is copied into the user cache (``$NAPARI_CRAFTS_CACHE`` or ``~/.cache/napari-crafts``) with the
    tokenizer's vocab.json and merges.txt written beside the configs, atomically.
    """
    import os
    import shutil
    import tempfile

    root = Path(os.environ.get("NAPARI_CRAFTS_CACHE", Path.home() / ".cache" / "napari-crafts"))
    target = root / f"sd15-config-{_tree_digest(SD15_CONFIG)[:12]}"
    if (target / "tokenizer" / "merges.txt").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sd15-", dir=root))
    try:
        shutil.copytree(SD15_CONFIG, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.gz"))
        write_clip_tokenizer(tmp / "tokenizer")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "tokenizer" / "merges.txt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(folder)}:{_file_sha256(f)}\n".encode())
    return digest.hexdigest()


def write_clip_tokenizer(folder: Path) -> None:
    """CLIP's tokenizer files (vocab.json, merges.txt, configs) from its byte-pair merges, as CLIP builds them."""
    import gzip

    from .tiny import _byte_level_vocab

    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1]]
    vocab = _byte_level_vocab(merges)  # type: ignore[arg-type]
    if len(vocab) != 49408:
        raise ModelLoadError(f"{CLIP_BPE} gave {len(vocab)} tokens, not CLIP's 49,408: the file is damaged.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
