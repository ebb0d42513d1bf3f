"""Write what training produces: an ordinary diffusers folder + ``napari_crafts.json`` + a model card.

The folder is what ``Engine(path)`` and diffusers' ``StableDiffusionControlNetPipeline.from_pretrained`` load:
model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, controlnet/ (the labels ControlNet, or
the first mode's), controlnet_<mode>/ for the others, all weights in safetensors. ``napari_crafts.json`` says
which ControlNet serves which mode (``{"controlnets": {"labels": "controlnet", "fluorescence":
"controlnet_fluorescence"}}``), the µm/px the model was trained at, and who made it (``TRAINED_BY``).
What may be replaced is decided by the output rule (``export.safety``): ``train`` marks its folder
(``TRAIN_FOLDER_CONTENTS``) and replaces only such a folder, only while it holds nothing else.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..export.safety import check_output
from ..model.card import CONTROL_ENCODINGS, CRAFTS_MASK_PROMPT, MODEL_CARD_FILE, MODEL_FOLDER_CONTENTS

if TYPE_CHECKING:
    from .data import PairsSplit
    from .parts import Parts
    from .settings import TrainSettings

#: Key in napari_crafts.json that says who made the model (information: what may be replaced is decided by the
#: folder marker of ``export.safety``).
TRAINED_BY = "trained_by"
TRAINED_BY_VALUE = "napari-crafts train"
#: The human-readable model card beside the weights.
README = "README.md"


#: What ``napari-crafts train`` writes in its output folder (the marker's contents, ``export.safety``).
TRAIN_FOLDER_CONTENTS = (*MODEL_FOLDER_CONTENTS, "training/**")


def controlnet_subfolder(mode: str, first: bool) -> str:
    """``controlnet`` for the labels ControlNet (or the only one), ``controlnet_<mode>`` for the others."""
    return "controlnet" if first else f"controlnet_{mode}"


def ordered_modes(modes: Any) -> list[str]:
    """Modes with 'labels' first: it gets the plain ``controlnet/`` folder, as in diffusers pipelines."""
    return sorted(modes, key=lambda m: (m != "labels", m))


def _model_entry(name: str) -> bool:
    """Whether a top-level entry of a model folder is part of the model (what :func:`save_model_folder` writes)."""
    return any(fnmatchcase(name, pattern.split("/")[0]) for pattern in MODEL_FOLDER_CONTENTS)


def _half(module: Any, dtype: str) -> Any:
    import torch

    if dtype == "fp32":
        return module
    return copy.deepcopy(module).to({"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])


def save_model_folder(path: str | Path, *, vae: Any, unet: Any, text_encoder: Any, tokenizer: Any,
                      scheduler_config: dict[str, Any], controlnets: dict[str, Any], card: dict[str, Any],
                      readme: str | None = None, dtype: str = "fp32", replace: bool = False,
                      keep: tuple[str, ...] = (), extra: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    """Write the model to ``path`` (built in a temporary folder beside it, then moved into place).

    ``controlnets`` maps mode → ControlNetModel; ``card`` goes into napari_crafts.json (with our marker and
    the ``controlnets`` map added); ``dtype`` 'fp16' stores half-precision weights (the engine upcasts on CPU).
    An existing folder is refused unless ``replace`` (the caller has checked it is its own output, see
    ``export.safety``); then the old model's parts are replaced, and anything else in it (the marker, the
    entries named in ``keep``, e.g. ``training``, a file someone put there) stays. ``extra(folder)`` writes more
    of the model into the folder being built (distill: ``student/``) and returns what the card says of it.
    """
    import diffusers
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    path = Path(path)
    if path.exists() and not replace:
        check_output(path, kind="folder")  # refused: it exists
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
        parts = dict(vae=_half(vae, dtype), text_encoder=_half(text_encoder, dtype), tokenizer=tokenizer,
                     unet=_half(unet, dtype), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                     requires_safety_checker=False)
        modes = ordered_modes(controlnets)
        pipe: Any  # the pipeline class only decides which folders save_pretrained writes
        if modes:
            pipe = StableDiffusionControlNetPipeline(controlnet=_half(controlnets[modes[0]], dtype), **parts)
        else:
            pipe = StableDiffusionPipeline(**parts)
        pipe.save_pretrained(tmp, safe_serialization=True)
        folders = {}
        for i, mode in enumerate(modes):
            sub = controlnet_subfolder(mode, i == 0)
            folders[mode] = sub
            if i:
                _half(controlnets[mode], dtype).save_pretrained(tmp / sub, safe_serialization=True)
        full_card = {**card, **(extra(tmp) if extra is not None else {}), "controlnets": folders,
                     TRAINED_BY: TRAINED_BY_VALUE, "weights_dtype": dtype}
        (tmp / MODEL_CARD_FILE).write_text(json.dumps(full_card, indent=2) + "\n")
        if readme is not None:
            (tmp / README).write_text(readme)
        if path.exists():
            new = {entry.name for entry in tmp.iterdir()}
            for entry in sorted(tmp.iterdir(), key=lambda e: e.name == MODEL_CARD_FILE):  # the marker last
                _remove(path / entry.name)
                entry.rename(path / entry.name)
            for entry in path.iterdir():
                if entry.name not in new and entry.name not in keep and _model_entry(entry.name):
                    _remove(entry)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def folder_size_mb(path: str | Path, skip: tuple[str, ...] = ("training",)) -> float:
    """Size of the model's weight files (safetensors) in MB (10**6 bytes), not counting the ``skip`` subfolders
    (a run's checkpoints)."""
    root = Path(path)
    return sum(f.stat().st_size for f in root.rglob("*.safetensors")
               if f.relative_to(root).parts[0] not in skip) / 1e6


def model_card_markdown(info: dict[str, Any]) -> str:
    """The README.md of a trained model: what it is, the data it saw, how it was trained, what it scored."""
    lines = [f"# {info.get('name', 'napari-crafts model')}", ""]
    lines += [info.get("summary", "A model trained with `napari-crafts train`."), ""]
    lines += ["**Every image this model makes is synthetic.** napari-crafts records that in each output's "
              "provenance.", ""]
    lines += ["| | |", "|---|---|"]
    for key in ("mpp", "recipe", "stages", "steps", "batch_size", "hardware", "wall_time", "weights_dtype",
                "weights_mb", "prompt", "seed"):
        if key in info:
            lines.append(f"| {key} | {info[key]} |")
    lines.append("")
    if info.get("data"):
        data = info["data"]
        lines += ["## Training data", ""]
        for key in ("path", "format", "mpp", "tile_px", "counts", "sources", "nuclei", "fluorescence", "split"):
            if key in data:
                lines.append(f"- **{key}**: `{json.dumps(data[key], default=str)}`")
        lines.append("")
    if info.get("validation"):
        lines += ["## Validation (held-out tiles, generated through napari_crafts.model.engine.Engine)", ""]
        lines.append("| step | mode | tiles | " + " | ".join(info["validation"][0]["metrics"]) + " |")
        lines.append("|---" * (3 + len(info["validation"][0]["metrics"])) + "|")
        for row in info["validation"]:
            vals = " | ".join(f"{v:.4g}" for v in row["metrics"].values())
            lines.append(f"| {row['step']} | {row['mode']} | {row['tiles']} | {vals} |")
        lines.append("")
    if info.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in info["notes"]] + [""]
    return "\n".join(lines)


def model_card(parts: Parts, split: PairsSplit, settings: TrainSettings) -> dict[str, Any]:
    """napari_crafts.json of a trained model: the base's card (minus what training rewrites), µm/px, prompt."""
    card = {k: v for k, v in parts.card.items() if k not in ("controlnets", TRAINED_BY, "status", "weights_dtype",
                                                           "training", "data", "validation", "tiny",
                                                           "control_encoding")}
    card["mpp"] = split.mpp
    if parts.controlnets:  # the ControlNets in the folder read what the training set's controls were drawn with
        declared = split.card.get("control_encoding") or {}
        card["control_encoding"] = {m: declared.get(m) or CONTROL_ENCODINGS[m][0] for m in parts.controlnets}
    card["prompt"] = run_prompt(settings, split)
    return card


def run_prompt(settings: TrainSettings, split: PairsSplit) -> str:
    """The model's default prompt: the one caption of the run, else the training set's most common caption."""
    from collections import Counter

    if settings.caption is not None:
        return settings.caption
    common = Counter(r.caption for r in split.records if r.caption).most_common(1)
    return common[0][0] if common else CRAFTS_MASK_PROMPT


def data_card(split: PairsSplit) -> dict[str, Any]:
    """The training set's card, shortened for the model card: format, scale, counts, sources, method, split."""
    keep = ("format", "mpp", "tile_px", "counts", "sources", "nuclei", "fluorescence", "split", "created")
    card = {k: split.card[k] for k in keep if k in split.card}
    if isinstance(card.get("nuclei"), dict):
        card["nuclei"] = {k: card["nuclei"][k] for k in ("method", "found") if k in card["nuclei"]}
    if isinstance(card.get("fluorescence"), dict):
        card["fluorescence"] = {k: card["fluorescence"][k] for k in ("simulated", "how") if k in card["fluorescence"]}
    return {"path": str(split.root), **card}


def run_summary(settings: TrainSettings, modes: list[str]) -> str:
    what = {"vae": "the autoencoder (reconstruction + KL)", "unet": "the UNet (prompt only)",
            "controlnet": f"ControlNet(s) for {', '.join(modes)} over a frozen base",
            "joint": f"the UNet and ControlNet(s) for {', '.join(modes)} together",
            "base": "the base UNet" + (" and text encoder" if settings.train_text_encoder else "")
                    + " on captioned images",
            "distill": f"a few-step student (LoRA, rank {settings.lora_rank}) by latent consistency distillation "
                       f"of the frozen model, guidance {settings.guidance:g} folded in"}[settings.stage]
    return f"Trained with `napari-crafts train --stage {settings.stage}`: {what}."


def run_notes(settings: TrainSettings) -> list[str]:
    notes = []
    if settings.stage == "joint" and settings.controlnet_init_std > 0:
        notes.append(f"ControlNet zero convolutions initialised N(0, {settings.controlnet_init_std}²), not zero, "
                     "because UNet and ControlNet start together from random weights.")
    if settings.corr_weight or settings.cate_weight:
        notes.append(f"CRAFTS losses: L_corr × {settings.corr_weight}, L_cate × {settings.cate_weight} "
                     "(t: pooled text features, z: the UNet's estimate of the clean latents).")
    if settings.snr_gamma:
        notes.append(f"Min-SNR-γ loss weighting, γ = {settings.snr_gamma}.")
    return notes


def hardware(device: Any) -> str:
    """The device in words, for the model card."""
    import os
    import platform

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
