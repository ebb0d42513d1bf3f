"""LoRA weights for a model's UNet (and its ControlNets): found, hashed, checked against the networks, loaded.

A LoRA is a file of low-rank weight updates, ``W + B·A``, for some layers of a network. Three layouts read:
diffusers' (``unet.<layer>.lora_A.weight``, as ``save_lora_weights`` writes and the public LCM-LoRA ships; also
its older ``lora.down``/``lora.up`` names), peft's (``base_model.model.<layer>.lora_A.weight``: a bare UNet
adapter) and kohya's (``lora_unet_<layer>.lora_down.weight``), all turned into peft's layout by diffusers' own
converters. Keys under ``controlnet.`` go to every ControlNet the engine loads. Weights load from safetensors;
a pickle file (``.bin``, ``.pt``, …) only with ``allow_pickle`` (it can run code when loaded).

Every layer the LoRA names is checked against the network before anything loads (:func:`check_fits`): a LoRA
made for another model (SD1.5's on the demo model, say) is one line naming the first layer that does not fit.
Finding and hashing the file is torch-free (``description.open_lora``); this module loads it. The adapters stay
separate from the weights (peft layers), so an engine turns each on or off per call: the
few-step student of a model (``lcm``) is one such adapter, used only by the runs that ask for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .description import LoraError, LoraFile

#: Networks a LoRA may adapt, by the prefix of its keys.
TARGETS = ("unet", "controlnet")


def read_lora(lora: LoraFile) -> dict[str, dict[str, Any]]:
    """The LoRA's weights per target network (``TARGETS``), in peft's layout (``<layer>.lora_A.weight``), and
    each target's ``alpha`` values as ``<target>.alphas`` (empty when the file gives none: scale 1)."""
    import torch

    try:
        if lora.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(lora.path))
        else:  # allowed by the caller (allow_pickle)
            raw = torch.load(lora.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise LoraError(f"--lora {lora.path}: could not be read ({exc}).") from None
    return split_lora(dict(raw), lora.path)


def split_lora(raw: dict[str, Any], where: Path) -> dict[str, dict[str, Any]]:
    """``raw`` (any of the layouts above) → {"unet": {...}, "controlnet": {...}, "unet.alphas": {...}, …}."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft

    if any(k.startswith("base_model.model.") for k in raw):  # a bare peft adapter of the UNet
        raw = {"unet." + k.removeprefix("base_model.model.").replace(".default.", "."): v for k, v in raw.items()}
    control = {k.removeprefix("controlnet."): v for k, v in raw.items() if k.startswith("controlnet.")}
    rest = {k: v for k, v in raw.items() if not k.startswith("controlnet.")}
    out: dict[str, dict[str, Any]] = {t: {} for t in TARGETS}
    alphas: dict[str, dict[str, Any]] = {t: {} for t in TARGETS}
    if rest:
        try:  # diffusers' reader: kohya and old diffusers names → diffusers' (prefixed "unet.", "text_encoder.")
            state, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(rest)[:2]
        except (ValueError, KeyError, TypeError) as exc:
            raise LoraError(f"--lora {where}: not a LoRA layout napari-crafts reads ({exc}).") from None
        out["unet"] = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        alphas["unet"] = {
            k.removeprefix("unet."): v for k, v in (network_alphas or {}).items() if k.startswith("unet.")
        }
        if not out["unet"] and not control:
            kinds = sorted({k.split(".")[0] for k in state})
            raise LoraError(
                f"--lora {where} has no weights for the UNet (it adapts {', '.join(kinds) or 'nothing'}):"
                " napari-crafts loads UNet and ControlNet LoRAs."
            )
    for target, state in (("unet", out["unet"]), ("controlnet", control)):
        if state:
            out[target] = convert_unet_state_dict_to_peft(state)
    return {**out, **{f"{t}.alphas": alphas[t] for t in TARGETS}}


def layer_sizes(module: Any) -> tuple[int, int] | None:
    """(in, out) features or channels of a Linear or Conv2d; None for anything else."""
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        return int(module.in_channels), int(module.out_channels)
    return None


def check_fits(network: Any, state: dict[str, Any], what: str, where: Path) -> None:
    """Refuse, in one line, a LoRA naming a layer ``network`` lacks or whose sizes differ from that layer's."""
    for key, value in sorted(state.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        layer = key.split(".lora_")[0]
        try:
            module = network.get_submodule(layer)
        except AttributeError:
            raise LoraError(
                f"--lora {where} adapts layer '{layer}', which this model's {what} does not have: the "
                "LoRA was made for another model; use one trained on this model."
            ) from None
        if hasattr(module, "base_layer"):  # a layer another adapter already wraps
            module = module.base_layer
        sizes = layer_sizes(module)
        if sizes is None:
            raise LoraError(
                f"--lora {where} adapts '{layer}', which is no linear or convolution layer in this "
                f"model's {what}: the LoRA was made for another model."
            )
        shape = tuple(value.shape)
        got = shape[1] if ".lora_A." in key else shape[0]
        want = sizes[0] if ".lora_A." in key else sizes[1]
        if len(shape) < 2 or got != want:
            side = "inputs" if ".lora_A." in key else "outputs"
            raise LoraError(
                f"--lora {where} does not fit this model's {what}: layer '{layer}' has {want} {side}, "
                f"the LoRA's weights {got}; it was made for another model (use one trained on this one)."
            )


def load_adapter(
    network: Any, state: dict[str, Any], alphas: dict[str, Any], name: str, what: str, where: Path
) -> None:
    """Check ``state`` against ``network`` and add it as peft adapter ``name`` (active until ``set_adapters``)."""
    check_fits(network, state, what, where)
    try:
        network.load_lora_adapter(dict(state), prefix=None, adapter_name=name, network_alphas=alphas or None)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise LoraError(f"--lora {where} could not be loaded into the {what}: {exc}") from None


def use_adapters(network: Any, names: list[str]) -> None:
    """Turn on exactly the adapters ``names`` of ``network`` (none: its own weights only)."""
    if not getattr(network, "_hf_peft_config_loaded", False):
        return
    if names:
        network.enable_adapters()
        network.set_adapters(names)
    else:
        network.disable_adapters()
