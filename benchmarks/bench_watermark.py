"""Measure the synthetic-H&E watermark: detection and false positives after common edits, quality, speed.

Carriers: the CC0 slide CMU-1-Small-Region.svs (real H&E, read with tiffslide). No trained model exists yet, so
the "synthetic" images are real H&E marked with :func:`napari_crafts.export.watermark.watermark_image` (marking is
content-agnostic: it reads only luma residuals). For each payload the whole 2220×2967 slide is marked chunk by
chunk on its 512-px grid, as the whole-slide writer will do, and windows of 512² are cut at random offsets
(so they straddle chunk borders). The same windows of the unmarked slide are the null set.

Every window then goes through each edit (JPEG 90/75/50, 2× and 4× pyramid means, a 2× mean then JPEG 75,
a 2× mean of a window shifted off the cell grid, random 256² and 128² crops at any offset, Reinhard stain
normalisation in LAB) and is checked with
:func:`~napari_crafts.export.watermark.detect_watermark`. Rows: all windows, windows that are mostly glass (≥ 90 %
background by :func:`napari_crafts.evaluation.metrics.tissue_mask`) and mostly tissue (≥ 75 % tissue).

Also: PSNR of marked vs unmarked, the change of SSIM/PSNR against a real reference (``pixel_metrics``), time per
512² chunk, the null z distribution over *all* detector hypotheses against the standard normal (the threshold's
calibration), and with ``--baseline`` the DWT-DCT method of invisible-watermark (``pip install --no-deps
invisible-watermark opencv-python-headless PyWavelets``; 48 payload bits, counted as found at ≤ 6 bit errors
of the known payload, its most favourable reading).

    python benchmarks/bench_watermark.py [--windows 120] [--baseline] [--extra] [--json out.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
DOCS = REPO / "docs" / "watermark.md"
MARKERS = {False: ("<!-- bench:start -->", "<!-- bench:end -->"), True: ("<!-- bench-extra:start -->",
                                                                        "<!-- bench-extra:end -->")}
WINDOW = 512
#: DWT-DCT counts as found at most this many wrong bits of the 48 it was given (null: Binomial(48, 1/2)).
BASELINE_MAX_ERRORS = 6


# --------------------------------------------------------------------------------------------- edits


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)  # Pillow's default 4:2:0 chroma
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def reinhard(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: LAB channels to the reference's mean and standard deviation."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(rgb)
    flat = lab.reshape(-1, 3)
    out = (lab - flat.mean(0)) / (flat.std(0) + 1e-6) * std + mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-gamut colours are clipped, as stain normalisers do
        return np.round(np.clip(lab2rgb(out), 0, 1) * 255).astype(np.uint8)


Edit = Callable[[np.ndarray], np.ndarray]


def edits(rng: np.random.Generator, lab_mean: np.ndarray, lab_std: np.ndarray) -> dict[str, Edit]:
    from napari_crafts.export.pyramid import mean_downsample_2x as down

    def crop(side: int) -> Edit:
        def f(a: np.ndarray) -> np.ndarray:
            y, x = (int(v) for v in rng.integers(0, WINDOW - side + 1, 2))
            return a[y : y + side, x : x + side]
        return f

    return {
        "none": lambda a: a,
        "JPEG 90": lambda a: jpeg(a, 90),
        "JPEG 75": lambda a: jpeg(a, 75),
        "JPEG 50": lambda a: jpeg(a, 50),
        "2× mean": down,
        "4× mean": lambda a: down(down(a)),
        "2× mean + JPEG 75": lambda a: jpeg(down(a), 75),
        "shift 1–3 px + 2× mean": lambda a: down(a[int(rng.integers(1, 4)):, int(rng.integers(1, 4)):]),
        "crop 256²": crop(256),
        "crop 128²": crop(128),
        "Reinhard (LAB)": lambda a: reinhard(a, lab_mean, lab_std),
    }


def extra_edits(rng: np.random.Generator) -> dict[str, Edit]:
    """Edits the method was not designed for (``--extra``): where it stops working."""
    from PIL import Image, ImageFilter

    from napari_crafts.export.pyramid import mean_downsample_2x as down

    def pil(a: np.ndarray, fn: Callable[[Any], Any]) -> np.ndarray:
        return np.asarray(fn(Image.fromarray(a)).convert("RGB"))

    def crop_jpeg(a: np.ndarray) -> np.ndarray:
        y, x = (int(v) for v in rng.integers(0, WINDOW - 256 + 1, 2))
        return jpeg(a[y : y + 256, x : x + 256], 75)

    return {
        "rotate 90°": lambda a: np.rot90(a).copy(),
        "flip left-right": lambda a: a[:, ::-1].copy(),
        "rotate 2° (bilinear)": lambda a: pil(a, lambda i: i.rotate(2, resample=Image.BILINEAR,
                                                                   fillcolor=(240, 240, 240))),
        "Gaussian blur σ = 1 px": lambda a: pil(a, lambda i: i.filter(ImageFilter.GaussianBlur(1))),
        "Gaussian noise σ = 3": lambda a: np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8),
        "gamma 0.8": lambda a: np.round(255 * (a / 255.0) ** 0.8).astype(np.uint8),
        "brightness +20, contrast ×1.2": lambda a: np.clip((a - 128.0) * 1.2 + 148, 0, 255).astype(np.uint8),
        "resize ×0.5 (PIL bicubic)": lambda a: pil(a, lambda i: i.resize((256, 256), Image.BICUBIC)),
        "resize ×0.75 (PIL bilinear)": lambda a: pil(a, lambda i: i.resize((384, 384), Image.BILINEAR)),
        "resize ×1.5 (PIL bicubic)": lambda a: pil(a, lambda i: i.resize((768, 768), Image.BICUBIC)),
        "8× mean (pyramid level 3)": lambda a: down(down(down(a))),
        "2× mean + JPEG 90 (TIFF writer's level 1)": lambda a: jpeg(down(a), 90),
        "crop 256² + JPEG 75": crop_jpeg,
    }


# --------------------------------------------------------------------------------------------- the run


def load_slide() -> np.ndarray:
    import tiffslide

    slide = tiffslide.TiffSlide(SLIDE)
    return np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3].copy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def baseline_detect(rgb: np.ndarray, bits: list[bool]) -> tuple[bool, int]:
    """invisible-watermark DWT-DCT: (found, bit errors) against the known payload; too small → not found."""
    from imwatermark import WatermarkDecoder

    try:
        got = WatermarkDecoder("bits", 48).decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")
    except RuntimeError:  # refuses images under 256×256 px
        return False, 48
    errors = int(np.count_nonzero(np.array(got, dtype=bool) != np.array(bits)))
    return errors <= BASELINE_MAX_ERRORS, errors


def run(n_windows: int, payloads: int, seed: int, baseline: bool, extra: bool = False) -> dict[str, Any]:
    from napari_crafts.evaluation.metrics import pixel_metrics, tissue_mask
    from napari_crafts.export.watermark import (
        MIN_SIDE,
        Z_THRESHOLD,
        Payload,
        _luma,
        correlations,
        detect_watermark,
        embed_watermark,
        watermark_image,
    )

    rng = np.random.default_rng(seed)
    real = load_slide()
    H, W = real.shape[:2]
    ref = real[1500:2012, 800:1312]  # a tissue-rich reference for the stain normaliser and the metrics
    from skimage.color import rgb2lab

    lab = rgb2lab(ref).reshape(-1, 3)
    edit_fns = extra_edits(rng) if extra else edits(rng, lab.mean(0), lab.std(0))

    marked_images, payload_list = [], []
    t0 = time.process_time()
    for _ in range(payloads):
        p = Payload(record_hash=int(rng.integers(0, 2**32)))
        payload_list.append(p)
        marked_images.append(watermark_image(real, p))
    chunks = payloads * -(-H // 512) * -(-W // 512)
    embed_ms = 1000 * (time.process_time() - t0) / chunks
    t0 = time.process_time()
    for _ in range(20):
        embed_watermark(ref, payload_list[0])
    embed512_ms = 1000 * (time.process_time() - t0) / 20

    if baseline:
        from imwatermark import WatermarkEncoder

    rows: dict[str, dict[str, list[Any]]] = {}
    quality: dict[str, list[float]] = {k: [] for k in ("psnr", "d_ssim", "d_psnr", "ssim_self", "d_ssim_jpeg90",
                                                         "d_psnr_jpeg90", "d_ssim_tissue")}
    null_counts = np.zeros(4, dtype=np.int64)  # hypotheses with z > 4, 4.5, 5, 5.5
    n_hyp = 0
    detect_ms: list[float] = []
    for i in range(n_windows):
        k = i % payloads
        # on the 4-px cell grid, as pyramid levels are (a level-2 pixel is a 4×4 block of level 0)
        y, x = 4 * int(rng.integers(0, (H - WINDOW) // 4 + 1)), 4 * int(rng.integers(0, (W - WINDOW) // 4 + 1))
        clean = real[y : y + WINDOW, x : x + WINDOW]
        marked = marked_images[k][y : y + WINDOW, x : x + WINDOW]
        expected = payload_list[k].hex
        glass = 1.0 - float(tissue_mask(clean).mean())
        kind = "glass" if glass >= 0.9 else "tissue" if glass <= 0.25 else "mixed"
        quality["psnr"].append(psnr(marked, clean))
        # "generated vs real" proxy: this window against a real window 256 px below it, before and after marking
        yr = y + 256 if y + 256 + WINDOW <= H else y - 256
        other = real[yr : yr + WINDOW, x : x + WINDOW]
        before, after = pixel_metrics(clean, other), pixel_metrics(marked, other)
        quality["d_ssim"].append(after["SSIM"] - before["SSIM"])
        quality["d_psnr"].append(after["PSNR"] - before["PSNR"])
        quality["ssim_self"].append(pixel_metrics(marked, clean)["SSIM"])
        recoded = pixel_metrics(jpeg(clean, 90), other)  # for scale: what a JPEG 90 re-encoding does
        quality["d_ssim_jpeg90"].append(recoded["SSIM"] - before["SSIM"])
        quality["d_psnr_jpeg90"].append(recoded["PSNR"] - before["PSNR"])
        tissue = tissue_mask(other)  # the evaluation's default: only the real image's tissue
        if tissue.mean() >= 0.05:
            quality["d_ssim_tissue"].append(pixel_metrics(marked, other, mask=tissue)["SSIM"]
                                            - pixel_metrics(clean, other, mask=tissue)["SSIM"])
        if baseline:
            bits = [bool(b) for b in payload_list[k].coded_bits()[:48]]
            enc = WatermarkEncoder()
            enc.set_watermark("bits", bits)
            base_marked = enc.encode(np.ascontiguousarray(clean[..., ::-1]), "dwtDct")[..., ::-1].copy()
            quality.setdefault("baseline_psnr", []).append(psnr(base_marked, clean))
        t1 = time.process_time()
        detect_watermark(marked)
        detect_ms.append(1000 * (time.process_time() - t1))
        for name, fn in edit_fns.items():
            state = rng.bit_generator.state
            m_img = fn(marked)
            rng.bit_generator.state = state  # the same crop of the unmarked window
            c_img = fn(clean)
            d = detect_watermark(m_img)
            null_z = 0.0  # the detector's z on the unmarked image, and its hypotheses' tail counts
            for _, z, _, _ in correlations(_luma(c_img)) if min(c_img.shape[:2]) >= MIN_SIDE else ():
                n_hyp += z.size
                null_counts += [(z > t).sum() for t in (4.0, 4.5, 5.0, 5.5)]
                null_z = max(null_z, float(z.max()))
            row = rows.setdefault(name, {"kind": [], "z": [], "ok": [], "null_z": [], "null_found": [],
                                         "errors": [], "base_found": [], "base_null": []})
            row["kind"].append(kind)
            row["z"].append(d.z)
            row["ok"].append(d.found and d.payload == expected)
            row["errors"].append(d.known_bit_errors)
            row["null_z"].append(null_z)
            row["null_found"].append(null_z >= Z_THRESHOLD)
            if baseline:
                state = rng.bit_generator.state
                b_img = fn(base_marked)
                rng.bit_generator.state = state
                row["base_found"].append(baseline_detect(b_img, bits)[0])
                row["base_null"].append(baseline_detect(c_img, bits)[0])
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{n_windows} windows", file=sys.stderr, flush=True)

    def rate(values: list[bool]) -> float:
        return float(np.mean(values)) if values else math.nan

    table = []
    for name, row in rows.items():
        kinds = np.array(row["kind"])
        entry: dict[str, Any] = {"edit": name}
        for subset in ("all", "glass", "tissue"):
            sel = np.ones(len(kinds), bool) if subset == "all" else kinds == subset
            z = np.array(row["z"])[sel]
            entry[subset] = {
                "n": int(sel.sum()),
                "detected": rate(list(np.array(row["z"])[sel] >= Z_THRESHOLD)),
                "payload_ok": rate(list(np.array(row["ok"])[sel])),
                "z_min": float(z.min()) if z.size else math.nan,
                "z_median": float(np.median(z)) if z.size else math.nan,
                "null_z_max": float(np.max(np.array(row["null_z"])[sel])) if sel.any() else math.nan,
                "false_positives": int(np.sum(np.array(row["null_found"])[sel])),
            }
            if baseline:
                entry[subset]["baseline_detected"] = rate(list(np.array(row["base_found"])[sel]))
                entry[subset]["baseline_false_positives"] = int(np.sum(np.array(row["base_null"])[sel]))
        table.append(entry)
    gauss = [0.5 * math.erfc(t / math.sqrt(2)) for t in (4.0, 4.5, 5.0, 5.5)]
    null_all = np.concatenate([r["null_z"] for r in rows.values()])
    return {
        "windows": n_windows, "payloads": payloads, "seed": seed, "threshold": Z_THRESHOLD,
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "embed_ms_per_512_chunk": round(embed512_ms, 2), "embed_ms_per_chunk_whole_slide": round(embed_ms, 2),
        "detect_ms_512": round(float(np.median(detect_ms)), 1),
        "psnr_mean": float(np.mean(quality["psnr"])), "psnr_min": float(np.min(quality["psnr"])),
        "ssim_marked_vs_clean_min": float(np.min(quality["ssim_self"])),
        "d_ssim_mean": float(np.mean(quality["d_ssim"])), "d_ssim_max_abs": float(np.max(np.abs(quality["d_ssim"]))),
        "d_psnr_mean": float(np.mean(quality["d_psnr"])), "d_psnr_max_abs": float(np.max(np.abs(quality["d_psnr"]))),
        **{f"{k}_mean": float(np.mean(quality[k])) for k in ("d_ssim_jpeg90", "d_psnr_jpeg90", "d_ssim_tissue")},
        **{f"{k}_max_abs": float(np.max(np.abs(quality[k]))) for k in ("d_ssim_jpeg90", "d_psnr_jpeg90",
                                                                         "d_ssim_tissue")},
        "baseline_psnr_mean": float(np.mean(quality["baseline_psnr"])) if baseline else None,
        "baseline_psnr_min": float(np.min(quality["baseline_psnr"])) if baseline else None,
        "null_images": int(null_all.size), "null_z_max": float(null_all.max()),
        "null_z_p99": float(np.percentile(null_all, 99)), "null_z_median": float(np.median(null_all)),
        "hypotheses_per_512_image": int(n_hyp / max(1, null_all.size)),
        "null_hypotheses": int(n_hyp),
        "null_tail": {f"z>{t}": {"observed": int(c), "gaussian": round(g * n_hyp, 1)}
                      for t, c, g in zip((4.0, 4.5, 5.0, 5.5), null_counts, gauss, strict=True)},
        "table": table,
    }


# --------------------------------------------------------------------------------------------- report


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.1f} %"


def markdown(res: dict[str, Any], subsets: tuple[str, ...] = ("all", "glass", "tissue")) -> str:
    base = res["baseline_psnr_mean"] is not None
    head = ["edit", "n", "detected", "payload read", "z min / median", "null: z max", "false pos."]
    if base:
        head += ["DWT-DCT detected", "DWT-DCT false pos."]
    lines = []
    titles = {"all": "All windows", "glass": "Mostly glass (≥ 90 % background)",
              "tissue": "Mostly tissue (≥ 75 % tissue)"}
    for subset in subsets:
        title = titles[subset]
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for entry in res["table"]:
            e = entry[subset]
            cells = [entry["edit"], str(e["n"]), _pct(e["detected"]), _pct(e["payload_ok"]),
                     f"{e['z_min']:.1f} / {e['z_median']:.1f}", f"{e['null_z_max']:.1f}", str(e["false_positives"])]
            if base:
                cells += [_pct(e["baseline_detected"]), str(e["baseline_false_positives"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    tail = res["null_tail"]
    lines += [
        f"{res['windows']} windows of 512² from CMU-1-Small-Region.svs, {res['payloads']} payloads, seed "
        f"{res['seed']}, threshold z ≥ {res['threshold']:g}; {res['machine']}.",
        "",
        f"- Quality: PSNR marked vs unmarked {res['psnr_mean']:.1f} dB mean, {res['psnr_min']:.1f} dB worst window; "
        f"SSIM marked vs unmarked ≥ {res['ssim_marked_vs_clean_min']:.4f}. Against a real reference window, "
        f"SSIM changes by {res['d_ssim_mean']:+.5f} on average (largest {res['d_ssim_max_abs']:.5f}), PSNR by "
        f"{res['d_psnr_mean']:+.3f} dB (largest {res['d_psnr_max_abs']:.3f} dB); over the reference's tissue only, "
        f"SSIM by {res['d_ssim_tissue_mean']:+.5f} (largest {res['d_ssim_tissue_max_abs']:.5f}). For scale, "
        f"re-encoding the unmarked window as JPEG 90 moves SSIM by {res['d_ssim_jpeg90_mean']:+.5f} (largest "
        f"{res['d_ssim_jpeg90_max_abs']:.5f}) and PSNR by {res['d_psnr_jpeg90_mean']:+.3f} dB (largest "
        f"{res['d_psnr_jpeg90_max_abs']:.3f} dB).",
        f"- Speed (CPU time of this process, so not inflated by other jobs on the machine): embedding "
        f"{res['embed_ms_per_512_chunk']:.1f} ms per 512² chunk ({res['embed_ms_per_chunk_whole_slide']:.1f} ms per "
        f"chunk over whole slides); detection {res['detect_ms_512']:.0f} ms per 512² image (median).",
        f"- Null: {res['null_images']} unmarked images (every window after every edit), z median "
        f"{res['null_z_median']:.2f}, 99th percentile {res['null_z_p99']:.2f}, max {res['null_z_max']:.2f}. Over "
        f"all {res['null_hypotheses']:,} detector hypotheses ({res['hypotheses_per_512_image']:,} per 512² image): "
        + ", ".join(f"{k}: {v['observed']} observed / {v['gaussian']} if N(0, 1)" for k, v in tail.items()) + ".",
    ]
    if base:
        lines.append(f"- DWT-DCT (invisible-watermark 0.2.0, 48 bits, found at ≤ {BASELINE_MAX_ERRORS} bit errors of "
                     f"the known payload): PSNR {res['baseline_psnr_mean']:.1f} dB mean, "
                     f"{res['baseline_psnr_min']:.1f} dB worst.")
    return "\n".join(lines)


def write_docs(text: str, extra: bool) -> None:
    doc = DOCS.read_text()
    first, last = MARKERS[extra]
    start, end = doc.index(first) + len(first), doc.index(last)
    DOCS.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=120, help="512² windows of the slide (default 120)")
    parser.add_argument("--payloads", type=int, default=4, help="marked copies of the slide (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also measure invisible-watermark's DWT-DCT")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--extra", action="store_true", help="the edits the method was not designed for instead")
    parser.add_argument("--write-docs", action="store_true", help=f"update the table in {DOCS.name}")
    args = parser.parse_args()
    res = run(args.windows, args.payloads, args.seed, args.baseline, args.extra)
    text = markdown(res, subsets=("all",) if args.extra else ("all", "glass", "tissue"))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.write_docs:
        write_docs(text, args.extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
