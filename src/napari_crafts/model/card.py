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
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> ModelCard:
        f = Path(folder) / MODEL_CARD_FILE
        if not f.is_file():
            return cls(name=Path(folder).name)
        data = json.loads(f.read_text())
        known = {"name", "mpp", "prompt", "tiny", "controlnets", "glass_rgb"}
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
            extra={k: v for k, v in data.items() if k not in known},
        )
