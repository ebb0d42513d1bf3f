"""A tiny, random-initialised CRAFTS-shaped model, built offline from real diffusers/transformers classes.

It is saved as an ordinary diffusers folder (safetensors) that the engine loads by path exactly as it loads
real CRAFTS or SD1.5 + ControlNet weights. Its pictures are noise-like: it exists for tests, the offline
demo and architecture checks, never for science.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .card import MODEL_CARD_FILE

#: Model name that means "the tiny random demo model, built on first use in the user cache".
TINY_MODEL_ID = "tiny-demo"
#: Bump when build_tiny_model changes, so cached copies are rebuilt.
TINY_MODEL_VERSION = 4

#: Pixel size the tiny model declares (µm/px); the paper's ControlNets are trained on 40x patches (~0.25).
TINY_MODEL_MPP = 0.25


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a word's symbols, as CLIP's tokenizer does."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:], strict=False))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _word_merges(text: str) -> list[tuple[str, str]]:
    """BPE merges that make each word of ``text`` one token (CLIP marks a word's end with ``</w>``).

    Each word is first split by the merges made for earlier words; only the joins it still needs are added,
    after them, so no later merge can break an earlier word apart.
    """
    import re

    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(re.findall(r"[a-z]+", text.lower())):
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], {m: i for i, m in enumerate(merges)})
        acc = pieces[0]
        for piece in pieces[1:]:
            if (acc, piece) not in merges:
                merges.append((acc, piece))
            acc += piece
    return merges


def _byte_level_vocab(merges: list[tuple[str, str]] = ()) -> dict[str, int]:  # type: ignore[assignment]
    """The 256 byte-level characters of CLIP's BPE, plain and word-final, the tokens ``merges`` make, and the
    two special tokens."""
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 up.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    chars = [chr(b) for b in printable] + [chr(256 + i) for i, _ in enumerate(extra)]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def _tiny_controlnet(unet: Any) -> Any:
    """A ControlNet for ``unet`` whose control image changes the output.

    A fresh ControlNet's output convolutions are zero ("zero convs"), so the control image would have no
    effect at all; small random values make it change the output (a trained ControlNet follows it, this random
    one only perturbs), so tests can see that the control reaches the model.
    """
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0.0, 0.5)
    return net


def build_tiny_model(path: str | Path, *, seed: int = 0, with_controlnet: bool = True) -> Path:
    """Write a tiny SD1.5-shaped pipeline (+ ControlNet) to ``path`` and return it.

    Same classes as the real model (UNet2DConditionModel, ControlNetModel, AutoencoderKL, CLIPTextModel,
    CLIPTokenizer, PNDMScheduler), a few thousand times smaller. Deterministic for a given ``seed``.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    vocab_dir = path / "_vocab"
    vocab_dir.mkdir(exist_ok=True)
    # Whole-word tokens for the default prompts, so they fit CLIP's 77 tokens as with a real vocabulary.
    from .card import CRAFTS_MASK_PROMPT, FLUORESCENCE_PROMPT

    merges = _word_merges(CRAFTS_MASK_PROMPT + " " + FLUORESCENCE_PROMPT)
    (vocab_dir / "vocab.json").write_text(json.dumps(_byte_level_vocab(merges)))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77
    )

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    )
    # Two VAE blocks: latents are 1/2 of the image size (SD1.5 has four blocks and 1/8).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        # Cross-attention only at the lower resolution keeps CPU tests fast at 128-px tiles.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    parts = dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe: Any  # diffusers' lazy module hides the pipelines' types from mypy
    if with_controlnet:
        controlnet = _tiny_controlnet(unet)
        pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **parts)
    else:
        pipe = StableDiffusionPipeline(**parts)
    pipe.save_pretrained(path, safe_serialization=True)
    card: dict = {"name": "napari-crafts tiny random model", "mpp": TINY_MODEL_MPP, "tiny": True}
    if with_controlnet:
        # A second ControlNet for fluorescence → H&E, as CRAFTS has one per mode; both share the base model.
        if_net = _tiny_controlnet(unet)
        if_net.save_pretrained(path / "controlnet_fluorescence", safe_serialization=True)
        card["controlnets"] = {"labels": "controlnet", "fluorescence": "controlnet_fluorescence"}
    for f in vocab_dir.iterdir():
        f.unlink()
    vocab_dir.rmdir()
    (path / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    return path


def tiny_model_path() -> Path:
    """Where the tiny demo model lives (``$NAPARI_CRAFTS_CACHE`` or ``~/.cache/napari-crafts``)."""
    import os

    root = Path(os.environ.get("NAPARI_CRAFTS_CACHE", Path.home() / ".cache" / "napari-crafts"))
    return root / f"tiny-model-v{TINY_MODEL_VERSION}"


def ensure_tiny_model() -> Path:
    """The tiny demo model's folder, built on first use (atomically: a half-built folder is never used)."""
    import shutil
    import tempfile

    path = tiny_model_path()
    if (path / MODEL_CARD_FILE).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        build_tiny_model(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            if not (path / MODEL_CARD_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
