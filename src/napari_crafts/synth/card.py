"""What a synthetic dataset says about itself: ``metadata.jsonl`` (one line per image) and ``dataset.json``.

Layout of a dataset folder::

    dataset.json            the card: synthetic, model and weight hashes, settings, counts, checks, diversity
    metadata.jsonl          one line per kept image: file_name (relative), class, prompt, seed, settings, checks
    images/<class>/<id>.png prompts → classes (Hugging Face "imagefolder", torchvision ImageFolder)
    images/<id>.png         masks → pairs, with
    masks/<id>.tif          the exact instance labels the image was drawn from
    _synth/                 the run's state and one record per finished image (for --resume)

Every PNG carries its provenance record and the watermark (``napari-crafts check``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_file
from ..provenance import synthetic_header
from .plan import SynthPlan

STATE = "_synth"
ITEMS = f"{STATE}/items"
#: What a dataset folder may hold (``export.safety.mark_folder``): --overwrite replaces only such a folder.
CONTENTS = (
    "dataset.json",
    "metadata.jsonl",
    "metadata.jsonl.partial",
    "dataset.json.partial",
    "images/*.png",
    "images/*/*.png",
    "images/*.partial",
    "images/*/*.partial",
    "masks/*.tif",
    "masks/*.partial",
    f"{STATE}/*.json",
    f"{STATE}/*.partial",
    f"{ITEMS}/*.json",
    f"{ITEMS}/*.partial",
)
LAYOUT = {
    "classes": "images/<class>/<id>.png + metadata.jsonl (Hugging Face imagefolder, torchvision ImageFolder)",
    "pairs": "images/<id>.png + masks/<id>.tif (uint16 instance labels, 0 = background) + metadata.jsonl",
}
#: Images per group compared pairwise for the diversity figure (evenly spaced through the group).
DIVERSITY_SAMPLE = 16
DIVERSITY_RULE = (
    "mean SSIM (evaluation.metrics.ssim) over all pairs of up to 16 kept images per group, evenly "
    "spaced; 1 = identical images (a collapsed model); 16 real CMU-1 tissue tiles of 256 px: 0.041"
)


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, written beside it and renamed (never half-written)."""
    _write_text(path, json.dumps(data, indent=1, allow_nan=False, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as partial:
        partial.write_text(text, encoding="utf-8")


def records(out: Path, plan: SynthPlan) -> list[dict[str, Any]]:
    """The record of every image of the plan, in plan order (all finished)."""
    return [json.loads((out / ITEMS / f"{item.id}.json").read_text(encoding="utf-8")) for item in plan.items]


def diversity(out: Path, groups: dict[str, list[str]]) -> dict[str, float | None]:
    """Mean pairwise SSIM of the kept images of each group (None: fewer than 2 images); see ``DIVERSITY_RULE``."""
    from PIL import Image

    from ..evaluation.metrics import ssim

    figures: dict[str, float | None] = {}
    for name, files in groups.items():
        if len(files) < 2:
            figures[name] = None
            continue
        picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(DIVERSITY_SAMPLE, len(files)))})
        images = [np.asarray(Image.open(out / files[i]).convert("RGB")) for i in picks]
        pairs = [(a, b) for i, a in enumerate(images) for b in images[i + 1 :] if a.shape == b.shape]
        figures[name] = round(float(np.mean([ssim(a, b) for a, b in pairs])), 4) if pairs else None
    return figures


def finish_dataset(
    out: Path,
    plan: SynthPlan,
    model: dict[str, Any],
    settings: Any,
    *,
    created: str,
    reject_below: dict[str, float],
    watermark: bool | str,
) -> dict[str, Any]:
    """Write ``metadata.jsonl`` and ``dataset.json`` from the finished images' records; returns the card."""
    rows = records(out, plan)
    kept = [r for r in rows if r["kept"]]
    settings_record = {k: v for k, v in settings.record().items() if k not in ("prompt", "seed")}
    lines = []
    for r in kept:
        line = {k: v for k, v in r.items() if k not in ("kept", "id", "notes") and v is not None}
        line["settings"] = settings_record
        lines.append(json.dumps(line, sort_keys=True, allow_nan=False))
    _write_text(out / "metadata.jsonl", "".join(f"{line}\n" for line in lines))
    groups: dict[str, list[str]] = defaultdict(list)
    for r in kept:  # classes: per class; pairs: the images of one mask (a model that ignores the seed shows here)
        src = r.get("mask_source") or {}
        groups[r["class"] or f"{src.get('path')}@{src.get('y')},{src.get('x')}"].append(r["file_name"])
    figures = diversity(out, dict(groups))
    per_group = [v for v in figures.values() if v is not None]
    rejected = [{"id": r["id"], "reason": r.get("reason")} for r in rows if not r["kept"]]
    by_class: dict[str, int] = defaultdict(int)
    for r in kept:
        by_class[r["class"] or "pairs"] += 1
    card = {
        **synthetic_header(),
        "what": (
            "Every image in images/ is SYNTHETIC: drawn by a diffusion model (napari-crafts synth), not "
            "photographed from a stained tissue section. "
            + (
                "Each image was drawn from the nuclear instance labels of masks/<same id>.tif; the labels are the "
                "input, the H&E is synthetic."
                if plan.kind == "pairs"
                else "Each image was drawn from a text prompt; its class is the prompt's class, not a diagnosis."
            )
        ),
        "kind": plan.kind,
        "made_from": plan.made_from,
        "model": model,
        "settings": settings_record,
        "seeds": "each image's own (metadata.jsonl 'seed'); its starting noise follows the record's seed_rule",
        "created": created,
        "counts": {"planned": len(rows), "kept": len(kept), "rejected": len(rejected), "by_class": dict(by_class)},
        "reject_below": reject_below,
        "rejected": rejected,
        "checks": (
            "per image in metadata.jsonl 'checks' (evaluation.metrics.he_checks): H_ratio = haematoxylin OD "
            "inside the mask's nuclei over outside (real CMU-1 ≈ 6, a random model ≈ 1; pairs only), "
            "red_gt_green = fraction of tissue pixels with red > green (real H&E ≈ 0.95)"
        ),
        "diversity": {
            "rule": DIVERSITY_RULE,
            "groups": "classes" if plan.kind == "classes" else "images of one mask",
            "mean": round(float(np.mean(per_group)), 4) if per_group else None,
            "per_group": figures if plan.kind == "classes" else None,
        },
        "watermark": (
            "every PNG: invisible watermark + provenance record in its 'napari_crafts' text chunk; check "
            "with: napari-crafts check images/"
        )
        if watermark is True
        else f"off ({watermark})",
        "notes": list(plan.notes),
        "layout": LAYOUT[plan.kind],
    }
    write_json(out / "dataset.json", card)
    return card
