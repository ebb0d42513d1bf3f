"""Count the floating-point work of one 512² tile for each engine mode, on the full-size SD1.5 architecture.

Hardware-independent companion to ``bench_engine.py``: the networks are built on PyTorch's ``meta`` device (no
weights, no memory, no arithmetic) and ``torch.utils.flop_counter.FlopCounterMode`` adds up the FLOPs of every
matrix multiply and convolution of the real diffusers forward passes, including our shallow branch of feature
reuse (``napari_crafts.model.deepcache``). A FLOP ratio is the speed-up a mode can give where the GPU is busy with
matrix work; the time ratio measured by ``bench_engine.py`` is what it does give.

    python benchmarks/count_flops.py [--tile 512] [--json flops.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NOMINAL_STEPS, FAST_STEPS = 50, 20
#: (label, steps, cache interval, CFG cut-off) per mode, as in bench_engine's rows.
MODES = [
    ("exact: default scheduler, 50 steps, CFG 7.5", NOMINAL_STEPS, 1, 1.0),
    ("unipc 20 steps", FAST_STEPS, 1, 1.0),
    ("feature reuse, full UNet every 3 steps", NOMINAL_STEPS, 3, 1.0),
    ("unipc 20 steps + reuse every 2 + CFG for 50%", FAST_STEPS, 2, 0.5),
    # the few-step student (--scheduler lcm): no CFG; its LoRA run unfused adds 2r/(in+out) of each adapted layer
    # (rank 64 on SD1.5's 320-1280 channels: 2-10 % of those layers), not counted here
    *((f"lcm {n} steps (student, no CFG)", n, 1, 0.0) for n in (2, 4, 8)),
]


def sd15_nets(device: str = "meta") -> tuple[Any, Any, Any]:
    """Full-size SD1.5 UNet, its ControlNet and the VAE (configs as in bench_engine.build_full_model)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        net = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet.eval(), net.eval(), vae.eval()


def step_flops(unet: Any, net: Any, tile_px: int, batch: int, *, shallow: bool) -> float:
    """FLOPs of one denoising step (ControlNet + UNet) on ``batch`` latents (2 = one tile with CFG)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_crafts.model.deepcache import FeatureCache, shallow_controlnet, shallow_unet, skip_count

    dev = next(unet.parameters()).device
    lat = tile_px // 8
    x = torch.randn(batch, 4, lat, lat, device=dev)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, device=dev)
    cond = torch.rand(batch, 3, tile_px, tile_px, device=dev)
    t = torch.tensor(500, device=dev)
    with torch.inference_mode(), FeatureCache(unet) as cache:
        down, mid = net(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        with FlopCounterMode(display=False) as full:
            down, mid = net(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid, return_dict=False)
        if not shallow:
            return float(full.get_total_flops())
        with FlopCounterMode(display=False) as part:
            res = shallow_controlnet(net, x, t, text, cond, 1.0, skip_count(unet))
            shallow_unet(unet, cache, x, t, text, res)
    return float(part.get_total_flops())


def decode_flops(vae: Any, tile_px: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, 4, tile_px // 8, tile_px // 8, device=next(vae.parameters()).device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        vae.decode(z, return_dict=False)
    return float(fc.get_total_flops())


def tile_flops(steps: int, interval: int, cutoff: float, per_step: dict[tuple[int, bool], float], decode: float) -> float:
    """One tile's FLOPs: each step full or shallow, with CFG (batch 2) or after the cut-off without (batch 1)."""
    from napari_crafts.model.deepcache import full_step_indices

    full = full_step_indices(steps, interval)
    guided = round(cutoff * steps)
    return decode + sum(per_step[(2 if i < guided else 1, i not in full)] for i in range(steps))


def count(tile_px: int = 512) -> dict[str, Any]:
    unet, net, vae = sd15_nets()
    per_step = {(b, s): step_flops(unet, net, tile_px, b, shallow=s) for b in (1, 2) for s in (False, True)}
    decode = decode_flops(vae, tile_px)
    rows = [{"mode": label, "tflop_per_tile": tile_flops(steps, k, c, per_step, decode) / 1e12}
            for label, steps, k, c in MODES]
    for r in rows:
        r["work_ratio_vs_exact"] = rows[0]["tflop_per_tile"] / r["tflop_per_tile"]
    return {"tile_px": tile_px, "step_tflop_cfg_full": per_step[(2, False)] / 1e12,
            "step_tflop_cfg_shallow": per_step[(2, True)] / 1e12, "vae_decode_tflop": decode / 1e12, "modes": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=int, default=512, help="tile side in px (default 512)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = count(args.tile)
    print(f"full-size SD1.5 + ControlNet, one {args.tile}² tile; one step with CFG: "
          f"{result['step_tflop_cfg_full']:.2f} TFLOP full, {result['step_tflop_cfg_shallow']:.2f} TFLOP shallow "
          f"branch; VAE decode {result['vae_decode_tflop']:.2f} TFLOP")
    print("| Mode | TFLOP per tile | Work ratio vs exact |\n|---|---|---|")
    for r in result["modes"]:
        print(f"| {r['mode']} | {r['tflop_per_tile']:.1f} | {r['work_ratio_vs_exact']:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
