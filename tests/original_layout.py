"""Diffusers folders → single checkpoint files in the original Stable Diffusion / ControlNet 1.1 layout.

The inverse of diffusers' ``loaders.single_file_utils`` conversions (LDM key names: ``model.diffusion_model.``,
``first_stage_model.``, ``cond_stage_model.transformer.``, ControlNet's ``input_hint_block``/``zero_convs``),
for any SD1.5-shaped network (any number of levels and layers per block), so tests can write the tiny model
as the one-file checkpoints users download and check that loading them gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                 ("to_out.0.", "proj_out.")]


def _resnet(rest: str) -> str:
    for new, old in RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _encoder_key(key: str, layers: int) -> str | None:
    """A UNet/ControlNet encoder key (time embedding, conv_in, down and mid blocks) in LDM names, else None."""
    parts = key.split(".")
    if parts[0] == "time_embedding":
        return key.replace("time_embedding.linear_1", "time_embed.0").replace("time_embedding.linear_2", "time_embed.2")
    if parts[0] == "conv_in":
        return "input_blocks.0.0." + ".".join(parts[1:])
    if parts[0] == "down_blocks":
        i = int(parts[1])
        if parts[2] == "resnets":
            return f"input_blocks.{i * (layers + 1) + int(parts[3]) + 1}.0." + _resnet(".".join(parts[4:]))
        if parts[2] == "attentions":
            return f"input_blocks.{i * (layers + 1) + int(parts[3]) + 1}.1." + ".".join(parts[4:])
        if parts[2] == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{(i + 1) * (layers + 1)}.0.op." + ".".join(parts[5:])
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}." + _resnet(".".join(parts[3:]))
        return "middle_block.1." + ".".join(parts[3:])
    return None


def _renamed(state: dict[str, Any], prefix: str, name: Any, what: str) -> dict[str, Any]:
    """``state`` with every key ``k`` as ``prefix + name(k)``; a key ``name`` cannot place is an error."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        ldm = name(key)
        if ldm is None:
            raise KeyError(f"no LDM name for {what} key {key}")
        out[prefix + ldm] = value
    return out


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    layers = int(config["layers_per_block"])
    up_types = list(config["up_block_types"])

    def name(key: str) -> str | None:
        parts = key.split(".")
        if parts[0] == "up_blocks":
            i = int(parts[1])
            first = i * (layers + 1)
            if parts[2] == "resnets":
                return f"output_blocks.{first + int(parts[3])}.0." + _resnet(".".join(parts[4:]))
            if parts[2] == "attentions":
                return f"output_blocks.{first + int(parts[3])}.1." + ".".join(parts[4:])
            slot = 2 if "CrossAttn" in up_types[i] else 1  # upsamplers.0.conv
            return f"output_blocks.{first + layers}.{slot}." + ".".join(parts[4:])
        if parts[0] in ("conv_norm_out", "conv_out"):
            return ("out.0." if parts[0] == "conv_norm_out" else "out.2.") + ".".join(parts[1:])
        return _encoder_key(key, layers)

    return _renamed(state, "model.diffusion_model.", name, "UNet")


def controlnet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """ControlNet 1.1 layout (keys as in ``control_v11p_sd15_*.pth``, with the ``control_model.`` prefix)."""
    layers = int(config["layers_per_block"])
    hint = {"conv_in": "input_hint_block.0.", "conv_out": "input_hint_block.14."}

    def name(key: str) -> str | None:
        parts = key.split(".")
        if parts[0] == "controlnet_down_blocks":
            return f"zero_convs.{parts[1]}.0." + parts[2]
        if parts[0] == "controlnet_mid_block":
            return "middle_block_out.0." + parts[1]
        if parts[0] == "controlnet_cond_embedding":  # conv_in, blocks.k, conv_out
            return hint[parts[1]] + parts[2] if parts[1] in hint else \
                f"input_hint_block.{2 * (int(parts[2]) + 1)}." + parts[3]
        return _encoder_key(key, layers)

    return _renamed(state, "control_model.", name, "ControlNet")


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    levels = len(config["block_out_channels"])
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        ldm = key.replace("conv_norm_out", "norm_out")
        if parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            where = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                ldm = f"{parts[0]}.{where}.{i}.block.{parts[4]}." + ".".join(parts[5:])
            else:  # downsamplers.0.conv / upsamplers.0.conv
                ldm = f"{parts[0]}.{where}.{i}.{where}sample." + ".".join(parts[5:])
            ldm = ldm.replace("conv_shortcut", "nin_shortcut")
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                ldm = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
                ldm = ldm.replace("conv_shortcut", "nin_shortcut")
            else:
                rest = ".".join(parts[4:]) + "."
                for new, old in VAE_ATTENTION:
                    rest = rest.replace(new, old) if rest.startswith(new) else rest
                ldm = f"{parts[0]}.mid.attn_1." + rest.rstrip(".")
                if value.ndim == 2:  # the original attention is 1×1 convolutions
                    value = value[:, :, None, None]
        out["first_stage_model." + ldm] = value
    return out


def save_original_layout(folder: Path, checkpoint: Path, controlnet: Path | None = None) -> None:
    """The base of diffusers ``folder`` as one SD checkpoint, and (optionally) its ControlNet as a second file."""
    import json

    from safetensors.torch import load_file, save_file

    def weights(sub: str) -> dict[str, Any]:
        return load_file(next((folder / sub).glob("*.safetensors")))

    def config(sub: str) -> dict[str, Any]:
        return json.loads((folder / sub / "config.json").read_text())

    text = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in weights("text_encoder").items()}
    base = {**unet_to_ldm(weights("unet"), config("unet")), **vae_to_ldm(weights("vae"), config("vae")), **text}
    save_file({k: v.contiguous() for k, v in base.items()}, checkpoint)
    if controlnet is not None:
        net = controlnet_to_ldm(weights("controlnet"), config("controlnet"))
        save_file({k: v.contiguous() for k, v in net.items()}, controlnet)
