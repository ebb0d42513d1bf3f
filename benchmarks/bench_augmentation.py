"""Does a synthetic dataset help a nuclei segmenter? A small U-Net trained on a few real CMU-1 pairs, with and
without synthetic pairs from ``napari-crafts synth``, scored on the held-out real tiles.

1. ``napari-crafts pairs CMU-1-Small-Region.svs PAIRS --nuclei auto --mpp 0.5 --tile-px 128 --stride-px 128``
   (run beforehand; pass ``--pairs PAIRS``): H&E tiles, their nuclei (the built-in haematoxylin segmentation, drawn
   as the ``nuclei-v1`` control: nuclei white with black boundaries), a held-out band at the bottom.
2. ``--real N`` train tiles with nuclei, evenly spaced, are the "few real pairs"; their nuclei, as instance labels
   (connected components of the control's white), go to ``napari-crafts synth --labels`` (``--count``,
   ``--augment``): synthetic H&E drawn from the same masks, and turned/flipped/thinned copies.
3. Two U-Nets (3 levels, 16-64 channels, torch on CPU), same seed and steps: real only, and real + synthetic.
4. Scored on every held-out real tile: Dice of the nuclei pixels, object F1 (a predicted object matches a true one
   at IoU ≥ 0.5).

The targets are the built-in segmentation's, not a pathologist's: the score says how well each U-Net learns that
segmentation from real H&E.

    nice -n 10 python benchmarks/bench_augmentation.py --pairs PAIRS --work DIR [--real 16] [--count 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def control_to_labels(control: np.ndarray) -> np.ndarray:
    """Instance labels from a ``nuclei-v1`` control tile: connected components of its white pixels."""
    from skimage.measure import label

    return label(control[..., 0] > 127, connectivity=1).astype(np.uint16)


def read_split(pairs: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(H&E (N, S, S, 3) uint8, nuclei (N, S, S) bool) of a pairs split."""
    from PIL import Image

    he, nuclei = [], []
    for line in (pairs / split / "metadata.jsonl").read_text().splitlines():
        rec = json.loads(line)
        he.append(np.asarray(Image.open(pairs / split / rec["he"]).convert("RGB")))
        control = np.asarray(Image.open(pairs / split / rec["control_labels"]).convert("RGB"))
        nuclei.append(control[..., 0] > 127)
    return np.stack(he), np.stack(nuclei)


def unet(width: int = 16) -> Any:
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
            nn.Conv2d(o, o, 3, padding=1),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.d1, self.d2, self.d3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.u2, self.u1 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), nn.ConvTranspose2d(2 * w, w, 2, 2)
            self.c2, self.c1 = block(4 * w, 2 * w), block(2 * w, w)
            self.out = nn.Conv2d(w, 1, 1)

        def forward(self, x: Any) -> Any:
            a = self.d1(x)
            b = self.d2(nn.functional.max_pool2d(a, 2))
            c = self.d3(nn.functional.max_pool2d(b, 2))
            b = self.c2(torch.cat([self.u2(c), b], 1))
            return self.out(self.c1(torch.cat([self.u1(b), a], 1)))

    return UNet()


def train(images: np.ndarray, masks: np.ndarray, steps: int, batch: int, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = unet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(masks[:, None].astype(np.float32))
    net.train()
    for _ in range(steps):
        idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        xb, yb = torch.rot90(x[idx], k, (2, 3)), torch.rot90(y[idx], k, (2, 3))
        if flip:
            xb, yb = xb.flip(3), yb.flip(3)
        logits = net(xb)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * yb).sum() + 1) / (prob.sum() + yb.sum() + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def predict(net: Any, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return (torch.cat([net(x[i : i + 16]) for i in range(0, len(x), 16)])[:, 0] > 0).numpy()


def object_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 of objects (connected components) matched one-to-one at IoU ≥ 0.5, summed over tiles."""
    from skimage.measure import label

    tp = fp = fn = 0
    for p, t in zip(pred, true, strict=True):
        lp, lt = label(p, connectivity=1), label(t, connectivity=1)
        n_p, n_t = int(lp.max()), int(lt.max())
        matched = 0
        if n_p and n_t:
            inter = np.zeros((n_p + 1, n_t + 1), np.int64)
            np.add.at(inter, (lp.ravel(), lt.ravel()), 1)
            area_p, area_t = inter.sum(1), inter.sum(0)
            iou = inter / np.maximum(area_p[:, None] + area_t[None, :] - inter, 1)
            matched = int((iou[1:, 1:] >= 0.5).sum())  # IoU ≥ 0.5 matches are one-to-one
        tp, fp, fn = tp + matched, fp + n_p - matched, fn + n_t - matched
    return 2 * tp / max(1, 2 * tp + fp + fn)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    return float(2 * (pred & true).sum() / max(1, pred.sum() + true.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True, help="a pairs set of CMU-1 (napari-crafts pairs)")
    parser.add_argument(
        "--work",
        type=Path,
        required=True,
        help="a folder for the label tiles and synth set (one already there is reused)",
    )
    parser.add_argument("--model", default="demo")
    parser.add_argument("--real", type=int, default=16, help="real train tiles (the 'few pairs')")
    parser.add_argument("--count", type=int, default=2, help="synthetic images per real mask")
    parser.add_argument("--synth-steps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300, help="U-Net training steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import tifffile

    he, nuclei = read_split(args.pairs, "train")
    test_he, test_nuclei = read_split(args.pairs, "test")
    with_nuclei = np.flatnonzero(nuclei.mean((1, 2)) > 0.02)
    pick = with_nuclei[np.linspace(0, len(with_nuclei) - 1, args.real).round().astype(int)]
    real_he, real_nuclei = he[pick], nuclei[pick]
    mpp = json.loads((args.pairs / "dataset.json").read_text())["mpp"]
    synth = args.work / "synth"
    synth_s = 0.0
    if not (synth / "dataset.json").is_file():  # an earlier run's set (same --real) is reused: other seeds
        tiles = args.work / "label_tiles"
        tiles.mkdir(parents=True)
        for i, mask in zip(pick, real_nuclei, strict=True):
            tifffile.imwrite(
                tiles / f"t{i:04d}.tif",
                control_to_labels(np.repeat(mask[..., None] * 255, 3, -1)),
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
            )
        start = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "napari-crafts"),
                "synth",
                str(synth),
                "--model",
                args.model,
                "--labels",
                str(tiles),
                "--count",
                str(args.count),
                "--augment",
                "--steps",
                str(args.synth_steps),
                "--tile-size",
                str(he.shape[1]),
                "--tissue",
                "all",
            ],
            check=True,
        )
        synth_s = time.perf_counter() - start
    s_he, s_nuclei = [], []
    from PIL import Image

    for line in (synth / "metadata.jsonl").read_text().splitlines():
        rec = json.loads(line)
        s_he.append(np.asarray(Image.open(synth / rec["file_name"]).convert("RGB")))
        s_nuclei.append(tifffile.imread(synth / rec["mask_file_name"]) > 0)
    both_he = np.concatenate([real_he, np.stack(s_he)])
    both_nuclei = np.concatenate([real_nuclei, np.stack(s_nuclei)])
    result: dict[str, Any] = {
        "real_train_tiles": len(real_he),
        "synthetic_tiles": len(s_he),
        "test_tiles": len(test_he),
        "tile_px": int(he.shape[1]),
        "mpp": mpp,
        "unet_steps": args.steps,
        "batch": args.batch,
        "synth_seconds": round(synth_s, 1),
    }
    for name, (x, y) in {"real only": (real_he, real_nuclei), "real + synthetic": (both_he, both_nuclei)}.items():
        t = time.perf_counter()
        net = train(x, y, args.steps, args.batch, args.seed)
        pred = predict(net, test_he)
        result[name] = {
            "dice": round(dice(pred, test_nuclei), 4),
            "object_f1": round(object_f1(pred, test_nuclei), 4),
            "train_seconds": round(time.perf_counter() - t, 1),
        }
        print(json.dumps({name: result[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
