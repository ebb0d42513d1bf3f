"""napari-crafts train: a few real steps on real CMU-1 tiles, exact resume after a kill, the model folder the
engine loads, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

from _data import CMU1_SVS
from napari_crafts.export.safety import OutputError, OutputExists  # noqa: E402
from napari_crafts.training import stage as stage_mod  # noqa: E402
from napari_crafts.training.data import DatasetError  # noqa: E402
from napari_crafts.training.train import TrainingError, TrainSettings, train  # noqa: E402

TILE = 32
FAST = dict(batch_size=4, validation_tiles=0, augment=True)


def write_pairs(root: Path, rgb: np.ndarray, tile: int = TILE, test_rows: tuple[int, ...] = (7,),
                gap_rows: tuple[int, ...] = (6,)) -> Path:
    """A pairs set in the napari-crafts-pairs-v1 format from an H&E crop: nuclei by haematoxylin threshold,
    simulated IF from rgb2hed, cut into ``tile``² tiles (train rows above, a test band below a gap)."""
    from PIL import Image
    from skimage.color import rgb2hed

    from napari_crafts.generation.conditioning import fluorescence_to_control, labels_to_control

    hed = rgb2hed(rgb)
    nuclei = (hed[..., 0] > 0.1).astype(np.uint8)
    labels = labels_to_control(nuclei)
    channels = np.stack([np.clip(hed[..., 0], 0, None), np.clip(hed[..., 1], 0, None)])
    fluo = fluorescence_to_control(channels, {0: "nuclear", 1: "cytoplasm"},
                                   limits={0: (0.0, float(channels[0].max())), 1: (0.0, float(channels[1].max()))})
    counts = {"train": 0, "test": 0}
    for split in ("train", "test"):
        for sub in ("he", "control_labels", "control_fluorescence"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for r in range(rgb.shape[0] // tile):
            if r in gap_rows or (split == "test") != (r in test_rows):
                continue
            for c in range(rgb.shape[1] // tile):
                tid = f"r{r:04d}_c{c:04d}"
                box = np.s_[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                for sub, img in (("he", rgb), ("control_labels", labels), ("control_fluorescence", fluo)):
                    Image.fromarray(np.ascontiguousarray(img[box])).save(root / split / sub / f"{tid}.png")
                lines.append(json.dumps({
                    "id": tid, "y": r * tile, "x": c * tile, "size_source_px": tile, "he": f"he/{tid}.png",
                    "control_labels": f"control_labels/{tid}.png",
                    "control_fluorescence": f"control_fluorescence/{tid}.png",
                    "caption": "translate the given nuclear segmentation mask into a realistic H&E-stained image",
                    "category": None, "tissue_fraction": 1.0, "nuclei": int(nuclei[box].any())}))
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        counts[split] = len(lines)
    card = {"format": "napari-crafts-pairs-v1", "mpp": 0.5, "tile_px": tile, "counts": counts,
            "sources": [{"path": "CMU-1-Small-Region.svs", "role": "he", "mpp": 0.499}]}
    (root / "dataset.json").write_text(json.dumps(card))
    return root


@pytest.fixture(scope="module")
def cmu1_crop() -> np.ndarray:
    """A 256² px crop of dense tissue (epidermis/dermis) of the real CMU-1 slide (CC0)."""
    tiffslide = pytest.importorskip("tiffslide")
    with tiffslide.TiffSlide(CMU1_SVS) as slide:
        return np.asarray(slide.read_region((1024, 1024), 0, (256, 256)).convert("RGB"))


@pytest.fixture(scope="module")
def pairs(cmu1_crop: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "cmu1", cmu1_crop)


def log(out: Path) -> list[dict[str, str]]:
    with open(out / "training" / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(root)}:{f.read_bytes().hex()}".encode())
    return h.hexdigest()


def test_joint_training_learns_and_the_engine_loads_and_generates(pairs, tiny_model, tmp_path):
    from napari_crafts.model.engine import Engine
    from napari_crafts.training.data import load_arrays, open_pairs
    from napari_crafts.training.validation import generate_tiles

    before = tree_hash(pairs)
    out = tmp_path / "model"
    settings = TrainSettings(stage="joint", steps=16, batch_size=8, learning_rate=2e-3, checkpoint_every=16,
                             validation_tiles=2, validation_steps=2, ema=True, ema_decay=0.9)
    result = train(pairs, out, base=tiny_model, settings=settings, progress=False, name="test model")
    losses = [float(r["loss"]) for r in log(out)]
    assert len(losses) == 16 and result.steps == 16
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])  # the diffusion loss falls
    assert tree_hash(pairs) == before  # the dataset is read, never written

    card = json.loads((out / "napari_crafts.json").read_text())
    assert card["controlnets"] == {"labels": "controlnet", "fluorescence": "controlnet_fluorescence"}
    assert card["mpp"] == 0.5 and card["name"] == "test model" and card["trained_by"] == "napari-crafts train"
    readme = (out / "README.md").read_text()
    assert "Every image this model makes is synthetic" in readme
    from napari_crafts.training.model_folder import folder_size_mb

    weights = sum(f.stat().st_size for p in ("unet", "vae", "text_encoder", "controlnet", "controlnet_fluorescence")
                  for f in (out / p).glob("*.safetensors")) / 1e6
    assert folder_size_mb(out) == pytest.approx(weights) and f"| weights_mb | {weights:.1f} MB |" in readme
    # validation images and numbers beside the checkpoint, from held-out tiles
    ckpt = out / "training" / "checkpoints" / "step-000016"
    assert (ckpt / "validation" / "labels.png").is_file() and (ckpt / "validation" / "fluorescence.png").is_file()
    rows = json.loads((ckpt / "validation" / "metrics.json").read_text())
    assert {r["mode"] for r in rows} == {"labels", "fluorescence"} and all(r["tiles"] == 2 for r in rows)
    assert all(np.isfinite(r["metrics"]["SSIM"]) for r in rows)
    from napari_crafts.export.check import check_image

    report = check_image(ckpt / "validation" / "labels.png")  # says what it is: metadata, and marked tiles
    assert report.synthetic and report.provenance["found"] and report.provenance["watermark"]["enabled"]

    engine = Engine(out)
    val = load_arrays(open_pairs(pairs, "test"), ["labels"])
    a = generate_tiles(engine, val.controls["labels"][:1], mode="labels", prompt="x", steps=2, seed=3)
    b = generate_tiles(engine, val.controls["labels"][:1], mode="labels", prompt="x", steps=2, seed=3)
    assert a.shape == (1, TILE, TILE, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert engine.controlnet_path(mode="fluorescence").name == "controlnet_fluorescence"


def test_resume_after_a_kill_continues_with_the_same_losses(pairs, tiny_model, tmp_path):
    settings = TrainSettings(stage="controlnet", steps=5, checkpoint_every=2, ema=True, grad_accum=2,
                             learning_rate=1e-3, **FAST)
    whole = tmp_path / "whole"
    train(pairs, whole, base=tiny_model, settings=settings, progress=False)
    killed = tmp_path / "killed"
    # killed during step 4: step 3 was done but never checkpointed, the last checkpoint is step 2
    r = train(pairs, killed, base=tiny_model, settings=settings, progress=False, stop_after=3)
    assert r.steps == 3 and [int(row["step"]) for row in log(killed)] == [1, 2, 3]
    with pytest.raises(OutputExists, match="--resume"):
        train(pairs, killed, base=tiny_model, settings=settings, progress=False)
    train(pairs, killed, base=tiny_model, settings=settings, progress=False, resume=True)
    a, b = log(whole), log(killed)
    assert [row["step"] for row in b] == ["1", "2", "3", "4", "5"]
    assert [row["loss"] for row in b] == [row["loss"] for row in a]  # exactly, from step 3 on too
    from safetensors.torch import load_file

    wa = load_file(whole / "controlnet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(killed / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    with pytest.raises(TrainingError, match="other settings"):
        train(pairs, killed, base=tiny_model, settings=TrainSettings(**{**settings.record(), "learning_rate": 1.0}),
              progress=False, resume=True)


def test_vae_from_scratch_fits_its_latent_scale_and_loads(pairs, tmp_path):
    from napari_crafts.model.engine import Engine

    out = tmp_path / "vae"
    settings = TrainSettings(stage="vae", steps=3, vae_crop=16, checkpoint_every=3, batch_size=4, validation_tiles=2,
                             save_dtype="fp16")
    train(pairs, out, config="test", settings=settings, progress=False)
    engine = Engine(out)
    assert engine.size_multiple == 16 and engine.vae_scale_factor == 8
    sf = engine.vae.config.scaling_factor
    assert sf != pytest.approx(0.18215) and 0 < sf < 1e3
    rows = json.loads((out / "training" / "checkpoints" / "step-000003" / "validation" / "metrics.json").read_text())
    assert rows[0]["mode"] == "reconstruction" and np.isfinite(rows[0]["metrics"]["PSNR"])
    from safetensors import safe_open

    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype.itemsize == 2  # written as fp16


def test_bad_inputs_get_one_clear_message(pairs, tiny_model, tmp_path, cmu1_crop, monkeypatch):
    s = TrainSettings(stage="controlnet", steps=4, checkpoint_every=2, **FAST)
    with pytest.raises(TrainingError, match="not found"):
        train(pairs, tmp_path / "a", base=tmp_path / "nowhere", settings=s, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(TrainingError, match="has no unet, vae"):
        train(pairs, tmp_path / "b", base=broken, settings=s, progress=False)
    with pytest.raises(TrainingError, match="--base FOLDER"):
        train(pairs, tmp_path / "c", settings=s, progress=False)

    empty = write_pairs(tmp_path / "empty", cmu1_crop[:64, :64], test_rows=(1,), gap_rows=(0,))
    with pytest.raises(DatasetError, match="train split is empty"):
        train(empty, tmp_path / "d", base=tiny_model, settings=s, progress=False)
    odd = write_pairs(tmp_path / "odd", cmu1_crop[:90, :90], tile=30, test_rows=(2,), gap_rows=())
    with pytest.raises(TrainingError, match="multiples of 4 px"):
        train(odd, tmp_path / "e", base=tiny_model, settings=s, progress=False)

    # a NaN loss stops training, keeps the last good checkpoint and says which step
    real = stage_mod.losses.diffusion_loss
    calls = {"n": 0}

    def nan_at_third(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(stage_mod.losses, "diffusion_loss", nan_at_third)
    with pytest.raises(TrainingError, match=r"NaN/inf at step 3.*step-000002 \(step 2\)"):
        train(pairs, tmp_path / "f", base=tiny_model, settings=s, progress=False)
    monkeypatch.setattr(stage_mod.losses, "diffusion_loss", real)

    def oom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(stage_mod.Stage, "loss", oom)
    with pytest.raises(TrainingError, match="Out of memory at batch size 4: lower --batch-size"):
        train(pairs, tmp_path / "g", base=tiny_model, settings=s, progress=False)


def test_outputs_are_never_overwritten_unless_ours_and_asked(pairs, tiny_model, tmp_path):
    s = TrainSettings(stage="controlnet", steps=1, checkpoint_every=1, **FAST)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for overwrite, resume in ((False, False), (True, False), (False, True)):
        with pytest.raises(OutputError, match=str(foreign)):
            train(pairs, foreign, base=tiny_model, settings=s, progress=False, overwrite=overwrite, resume=resume)
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]
    for inside in (Path(pairs) / "model", Path(tiny_model) / "model"):  # never inside an input
        with pytest.raises(OutputError, match="inside the input"):
            train(pairs, inside, base=tiny_model, settings=s, progress=False)
        assert not inside.exists()
    ours = tmp_path / "ours"
    train(pairs, ours, base=tiny_model, settings=s, progress=False)
    train(pairs, ours, base=tiny_model, settings=s, progress=False, overwrite=True)
    assert (ours / "model_index.json").is_file()
    (ours / "notes.txt").write_text("mine")  # a file we did not write: the folder is no longer ours alone
    with pytest.raises(OutputError, match="notes.txt"):
        train(pairs, ours, base=tiny_model, settings=s, progress=False, overwrite=True)
    assert (ours / "notes.txt").read_text() == "mine" and (ours / "model_index.json").is_file()


def parse(argv: list[str]) -> argparse.Namespace:
    from napari_crafts.training.train_cli import configure_parser

    return configure_parser(argparse.ArgumentParser()).parse_args(argv)


def test_cli(pairs, tiny_model, tmp_path, capsys):
    from napari_crafts.cli import main

    out = tmp_path / "cli"
    assert main(["train", str(pairs), "--base", str(tiny_model), "--out", str(out), "--steps", "2", "--batch-size",
                 "2", "--modes", "labels", "--validation-tiles", "0", "--quiet", "--checkpoint-every", "2"]) == 0
    assert f"model: {out}" in capsys.readouterr().out
    assert json.loads((out / "napari_crafts.json").read_text())["controlnets"] == {"labels": "controlnet"}
    assert main(["train", str(pairs), "--base", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-crafts train: error: Base model:") and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing left behind by a run that could not start


def test_base_fine_tuning_with_crafts_losses_and_a_caption_manifest(pairs, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from napari_crafts.model.engine import Engine
    from napari_crafts.training.data import open_pairs

    ids = [r.id for r in open_pairs(pairs).records]
    manifest = tmp_path / "captions.csv"
    lines = ["id,caption,category"] + [
        f"{tid},{'epidermis with many nuclei' if i % 2 else 'pink dermis with collagen'},"
        f"{'epidermis' if i % 2 else 'dermis'}" for i, tid in enumerate(ids)]
    manifest.write_text("\n".join(lines) + "\n")
    settings = TrainSettings(stage="base", steps=3, batch_size=6, corr_weight=0.5, cate_weight=0.5,
                             train_text_encoder=True, checkpoint_every=3, validation_tiles=0, learning_rate=1e-3)
    out = tmp_path / "ft"
    train(pairs, out, base=tiny_model, settings=settings, manifest=manifest, progress=False)
    rows = log(out)
    assert all(float(r["corr"]) > 0 and float(r["cate"]) > 0 for r in rows)
    for row in rows:  # the logged total is the weighted sum
        total = float(row["mse"]) + 0.5 * float(row["corr"]) + 0.5 * float(row["cate"])
        assert float(row["loss"]) == pytest.approx(total, rel=1e-5)

    def weights(folder: Path, part: str) -> dict:
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        return load_file(folder / part / name)

    for part, changed in (("unet", True), ("text_encoder", True), ("vae", False)):
        a, b = weights(tiny_model, part), weights(out, part)
        assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a) == changed, part
    card = json.loads((out / "napari_crafts.json").read_text())
    assert card["controlnets"] == {} and not (out / "controlnet").exists()
    assert card["training"]["settings"]["corr_weight"] == 0.5
    assert Engine(out).card.prompt in ("pink dermis with collagen", "epidermis with many nuclei")  # most common
    with pytest.raises(TrainingError, match="needs categories"):
        train(pairs, tmp_path / "nocat", base=tiny_model, settings=settings, progress=False)


def test_controlnet_stage_continues_the_base_own_by_default(pairs, tiny_model, tmp_path):
    """Issue 20: few-shot ``train --base MODEL`` started from a fresh copy of the UNet and ignored the labels
    afterwards; by default it now continues the base's own ControlNet, and a fresh copy stays a choice."""
    from safetensors.torch import load_file

    s = TrainSettings(stage="controlnet", steps=1, checkpoint_every=1, modes=("labels",), learning_rate=1e-4, **FAST)
    assert s.controlnet_init == "auto"
    out = tmp_path / "cont"
    train(pairs, out, base=tiny_model, settings=s, progress=False)
    base = load_file(tiny_model / "controlnet" / "diffusion_pytorch_model.safetensors")
    new = load_file(out / "controlnet" / "diffusion_pytorch_model.safetensors")
    key = "controlnet_down_blocks.0.weight"  # zero in a fresh ControlNet, random in the tiny model's own
    assert base[key].abs().max() > 0.1 and (new[key] - base[key]).abs().max() < 0.01
    assert json.loads((out / "napari_crafts.json").read_text())["training"]["controlnet_init"] == {"labels": "base"}
    only_labels = tmp_path / "only_labels"
    train(pairs, only_labels, base=tiny_model, settings=TrainSettings(**{**s.record(), "controlnet_init": "unet"}),
          progress=False)
    fresh = load_file(only_labels / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert fresh[key].abs().max() < 0.01  # the explicit choice: a fresh copy of the UNet
    assert json.loads((only_labels / "napari_crafts.json").read_text())["training"]["controlnet_init"] == {
        "labels": "unet"}
    with pytest.raises(TrainingError, match="no ControlNet for fluorescence"):
        train(pairs, tmp_path / "x", base=only_labels, progress=False,
              settings=TrainSettings(**{**s.record(), "controlnet_init": "base", "modes": ("fluorescence",)}))


@pytest.mark.parametrize(("init", "stage", "from_base", "has", "expected"), [
    ("auto", "controlnet", True, ("labels", "fluorescence"), {"labels": "base", "fluorescence": "base"}),
    ("auto", "controlnet", True, ("labels",), {"labels": "base", "fluorescence": "unet"}),  # only where it has one
    ("auto", "controlnet", True, (), {"labels": "unet", "fluorescence": "unet"}),  # the old default
    ("auto", "controlnet", False, ("labels", "fluorescence"), {"labels": "unet", "fluorescence": "unet"}),  # --config
    ("auto", "joint", True, ("labels", "fluorescence"), {"labels": "unet", "fluorescence": "unet"}),  # from scratch
    ("unet", "controlnet", True, ("labels", "fluorescence"), {"labels": "unet", "fluorescence": "unet"}),
    ("base", "joint", True, ("labels", "fluorescence"), {"labels": "base", "fluorescence": "base"}),
])
def test_where_each_controlnet_starts(tiny_model, init, stage, from_base, has, expected):
    parts = stage_mod.load_parts(tiny_model)
    own = {m: parts.controlnets[m] for m in has}
    parts.controlnets = dict(own)
    settings = TrainSettings(stage=stage, controlnet_init=init)
    assert stage_mod.start_controlnets(parts, ["labels", "fluorescence"], settings, from_base=from_base) == expected
    assert sorted(parts.controlnets) == ["fluorescence", "labels"]
    assert all((parts.controlnets[m] is own.get(m)) == (how == "base") for m, how in expected.items())


def test_bf16_and_gradient_checkpointing_train_and_fp16_on_cpu_is_refused(pairs, tiny_model, tmp_path):
    import torch

    s = TrainSettings(stage="joint", steps=2, checkpoint_every=2, **FAST)
    train(pairs, tmp_path / "fp32", base=tiny_model, settings=s, progress=False)
    fast = TrainSettings(**{**s.record(), "mixed_precision": "bf16", "gradient_checkpointing": True})
    train(pairs, tmp_path / "bf16", base=tiny_model, settings=fast, progress=False)
    a, b = log(tmp_path / "fp32"), log(tmp_path / "bf16")
    assert all(np.isfinite(float(r["loss"])) for r in b)
    assert a[0]["loss"] != b[0]["loss"] and float(a[0]["loss"]) == pytest.approx(float(b[0]["loss"]), rel=0.05)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="fp16 needs a GPU"):
            train(pairs, tmp_path / "fp16", base=tiny_model, progress=False,
                  settings=TrainSettings(**{**s.record(), "mixed_precision": "fp16"}))
