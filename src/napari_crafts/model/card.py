"""What a model folder says about itself: its pixel size, its prompt, which ControlNet serves which mode."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

#: Optional JSON file at a model folder's root. Every key is optional.
MODEL_CARD_FILE = "napari_crafts.json"
#: What a diffusers model folder holds (the paths napari-crafts writes when it makes one: tiny-model, train), as
#: patterns for ``export.safety.mark_folder``: the pipeline index, our card, one folder per component.
MODEL_FOLDER_CONTENTS = (
    "model_index.json", MODEL_CARD_FILE, "README.md",
    "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "controlnet/*", "controlnet_*/*",
    "student/*",
)

#: The CRAFTS paper's mask → H&E prompt (arXiv 2512.13164).
CRAFTS_MASK_PROMPT = (
    "translate the given nuclear segmentation mask into a realistic H&E-stained histology image, "
    "generating hematoxylin-stained nuclei and eosin-stained cytoplasm/background with accurate tissue "
    "texture and color distribution"
)

#: Our default prompt for fluorescence → H&E: the paper's mask prompt, adapted to fluorescence input.
FLUORESCENCE_PROMPT = (
    "translate the given immunofluorescence image into a realistic H&E-stained histology image, generating "
    "hematoxylin-stained nuclei and eosin-stained cytoplasm/background with accurate tissue texture and color "
    "distribution"
)
#: Pixel size assumed when a model folder does not declare one: the 40x patches (CoNSeP, GLySAC) of the paper.
DEFAULT_MODEL_MPP = 0.25

# ── control encodings: what a model's ControlNet was trained to read (``generation.conditioning`` draws them) ──
#: The paper's mask: nuclei 255 on 0, touching-instance borders 0. Cannot tell glass from nucleus-free tissue.
NUCLEI_V1 = "nuclei-v1"
#: Glass 0, tissue without nuclei 128, nuclei 255, touching-instance borders 128 (the tissue value).
NUCLEI_TISSUE_V1 = "nuclei-tissue-v1"
#: Fluorescence: R = nuclear, G = cytoplasm, B = membrane (``conditioning.FLUORESCENCE_ENCODING``).
FLUORESCENCE_RGB_V1 = "fluorescence-rgb-v1"
#: The encodings each mode knows, the first being what a folder that declares nothing gets (CRAFTS, SD1.5).
CONTROL_ENCODINGS: dict[str, tuple[str, ...]] = {
    "labels": (NUCLEI_V1, NUCLEI_TISSUE_V1),
    "fluorescence": (FLUORESCENCE_RGB_V1,),
}
#: Encodings that draw the tissue extent themselves (generation does not composite glass around the tissue).
TISSUE_ENCODINGS = frozenset({NUCLEI_TISSUE_V1})


class ModelCardError(ValueError):
    """A napari_crafts.json that cannot be used; the message names the file, the key and what is valid."""


def check_control_encoding(value: object, where: str) -> dict[str, str]:
    """``{"labels": "nuclei-tissue-v1"}`` checked against ``CONTROL_ENCODINGS``; refused in one line otherwise."""
    if not isinstance(value, dict):
        raise ModelCardError(f"{where}: 'control_encoding' must map a mode to an encoding, e.g. "
                             f'{{"labels": "{NUCLEI_TISSUE_V1}"}}; got {value!r}.')
    out = {}
    for mode, name in value.items():
        known = CONTROL_ENCODINGS.get(str(mode))
        if known is None:
            raise ModelCardError(f"{where}: 'control_encoding' names an unknown mode '{mode}'; modes: "
                                 f"{', '.join(CONTROL_ENCODINGS)}.")
        if name not in known:
            raise ModelCardError(f"{where}: unknown {mode} control encoding {name!r}; this napari-crafts knows "
                                 f"{', '.join(known)} (update napari-crafts, or fix the model's card).")
        out[str(mode)] = str(name)
    return out


def check_student(value: object, where: str) -> dict:
    """A student declaration (``{"lora": "student/…safetensors", "sha256": …, "base_sha256": …}``), or {}."""
    if not value:
        return {}
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("lora", "sha256",
                                                                                     "base_sha256")):
        raise ModelCardError(f"{where}: 'student' must give 'lora' (a file in the folder), 'sha256' and "
                             f"'base_sha256'; got {value!r}.")
    return dict(value)


@dataclass(frozen=True)
class ModelCard:
    name: str = ""
    mpp: float = DEFAULT_MODEL_MPP
    mpp_declared: bool = False
    prompt: str = CRAFTS_MASK_PROMPT
    tiny: bool = False
    #: ControlNet subfolder per mode ("labels", "fluorescence"); a mode not listed uses "controlnet".
    controlnets: dict = field(default_factory=dict)
    #: RGB of bare glass on the slides the model learnt from (composited around tissue); None: not declared.
    glass_rgb: tuple[int, int, int] | None = None
    #: Control encoding per mode, as declared (a mode not listed gets the first of ``CONTROL_ENCODINGS``).
    control_encoding: dict = field(default_factory=dict)
    #: The few-step student (``train --stage distill``): {"lora": path in the folder, "sha256", "base_sha256",
    #: "steps", "guidance", …}; empty: none.
    student: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def encoding(self, mode: str) -> str:
        """The control encoding of ``mode`` ("labels", "fluorescence"): declared, else the mode's default."""
        return self.control_encoding.get(mode) or CONTROL_ENCODINGS.get(mode, ("",))[0]

    @property
    def encodings(self) -> dict[str, str]:
        """Every mode's control encoding (declared or default)."""
        return {mode: self.encoding(mode) for mode in CONTROL_ENCODINGS}

    @classmethod
    def read(cls, folder: str | Path) -> ModelCard:
        f = Path(folder) / MODEL_CARD_FILE
        if not f.is_file():
            return cls(name=Path(folder).name)
        data = json.loads(f.read_text())
        known = {"name", "mpp", "prompt", "tiny", "controlnets", "glass_rgb", "control_encoding", "student"}
        glass = data.get("glass_rgb")
        return cls(
            name=str(data.get("name", Path(folder).name)),
            mpp=float(data.get("mpp", DEFAULT_MODEL_MPP)),
            mpp_declared="mpp" in data,
            prompt=str(data.get("prompt", CRAFTS_MASK_PROMPT)),
            tiny=bool(data.get("tiny", False)),
            controlnets={str(k): str(v) for k, v in dict(data.get("controlnets", {})).items()},
            glass_rgb=(int(glass[0]), int(glass[1]), int(glass[2])) if isinstance(glass, list) and len(glass) == 3
            else None,
            control_encoding=check_control_encoding(data.get("control_encoding", {}), str(f)),
            student=check_student(data.get("student", {}), str(f)),
            extra={k: v for k, v in data.items() if k not in known},
        )
