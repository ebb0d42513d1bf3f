"""Validation of a training checkpoint: held-out control tiles → our Engine → metrics against their real H&E.

Besides the paper's pixel metrics (``evaluation.metrics.pixel_metrics``) two numbers say whether a picture is
H&E at all (NOTES.md): the haematoxylin optical density (``skimage.color.rgb2hed``) inside the nuclei of the
control over outside (real CMU-1 ≈ 6, a random model ≈ 1), and the fraction of tissue pixels where red > green
(real H&E ≈ 95 %, a random model ≈ 29 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._generators import run
from ..evaluation.metrics import he_checks
from ..model.threads import pinned
from .data import TileArrays


def spread_indices(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``n`` tiles (the same every time)."""
    count = min(count, n)
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if count else []


def generate_tiles(engine: Any, controls: np.ndarray | None, *, mode: str, prompt: str, steps: int, seed: int,
                   count: int | None = None, guidance_scale: float = 7.5, scheduler: str = "default") -> np.ndarray:
    """Generate one tile per control (or ``count`` prompt-only tiles) with the engine; RGB uint8 (N, S, S, 3)."""
    n = len(controls) if controls is not None else int(count or 1)
    size = controls.shape[1] if controls is not None else 128
    lat = size // engine.vae_scale_factor
    out = []
    for i in range(n):
        noise = np.random.default_rng([seed, i]).standard_normal((1, 4, lat, lat)).astype(np.float32)
        ctrl = controls[i: i + 1] if controls is not None else None
        # pixels as inference makes them: the thread count pinned as generation pins it (model.threads)
        gen = engine.generate(noise, ctrl, prompt=prompt, steps=steps, mode=mode, guidance_scale=guidance_scale,
                              scheduler=scheduler)
        out.append(run(pinned(gen))[0])
    return np.stack(out)


def validate_folder(model: Path, val: TileArrays, *, modes: list[str], out: Path, steps: int, tiles: int,
                    seed: int, prompt: str, scheduler: str = "default") -> list[dict[str, Any]]:
    """Generate the fixed held-out tiles of every mode (prompt-only when ``modes`` is empty) and score them.

    Writes ``out/<mode>.png`` (rows: control, generated, real; the generated tiles watermarked, the file with a
    record saying what it is) and returns one row per mode: {"mode", "tiles", "metrics": mean SSIM/PSNR/MSE/NCC
    over tiles + H&E checks} (scored on the unmarked tiles: the model's own pixels).
    """
    from ..evaluation.metrics import pixel_metrics
    from ..export.png import save_png
    from ..export.watermark import sign_record, watermark_image
    from ..model.engine import Engine
    from ..provenance import synthetic_header

    engine = Engine(model, device="cpu")
    idx = spread_indices(len(val), tiles)
    real = val.he[idx]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in modes or ["prompt"]:
        controls = val.controls[mode][idx] if mode != "prompt" else None
        gen = generate_tiles(engine, controls, mode=mode, prompt=prompt, steps=steps, seed=seed, count=len(idx),
                             scheduler=scheduler)
        per_tile = []
        for i in range(len(idx)):
            m = pixel_metrics(gen[i], real[i])
            nuclei = val.controls["labels"][idx[i]][..., 0] > 127 if "labels" in val.controls else None
            per_tile.append({**m, **he_checks(gen[i], nuclei)})
        mean = {k: float(np.nanmean([t[k] for t in per_tile])) for k in per_tile[0]}
        rows.append({"mode": mode, "tiles": len(idx), "metrics": mean})
        record = {**synthetic_header(), "what": "training validation: middle row synthetic, bottom row real",
                  "model": str(model), "mode": mode, "steps": steps, "scheduler": scheduler,
                  "seed": seed, "tiles": [int(i) for i in idx]}
        payload = sign_record(record)
        marked = [watermark_image(tile, payload) if payload is not None else tile for tile in gen]
        strips = [np.concatenate(marked, axis=1), np.concatenate(list(real), axis=1)]
        if controls is not None:
            strips.insert(0, np.concatenate(list(controls), axis=1))
        save_png(out / f"{mode}.png", np.concatenate(strips, axis=0), record)
    return rows
