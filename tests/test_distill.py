"""train --stage distill on the tiny model: a student the card declares and --scheduler lcm uses (recorded in the
provenance, deterministic by seed, its weights heard in the pixels); a killed run resumes to the same student."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from _data import CMU1_SVS  # noqa: E402
from napari_crafts._generators import run  # noqa: E402
from napari_crafts.training.train import TrainingError, TrainSettings, train  # noqa: E402
from test_train import log, write_pairs  # noqa: E402

DISTILL = dict(stage="distill", batch_size=4, lora_rank=4, learning_rate=1e-3, validation_tiles=0, seed=2)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_train's pairs: real CMU-1 tiles (a 256² crop of dense tissue), 32 px."""
    tiffslide = pytest.importorskip("tiffslide")
    with tiffslide.TiffSlide(CMU1_SVS) as slide:
        crop = np.asarray(slide.read_region((1024, 1024), 0, (256, 256)).convert("RGB"))
    return write_pairs(tmp_path_factory.mktemp("pairs") / "cmu1", crop)


@pytest.fixture(scope="module")
def student(pairs: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "fast"
    train(pairs, out, base=tiny_model, settings=TrainSettings(steps=2, checkpoint_every=2, **DISTILL), progress=False)
    return out


def lcm_region(model: object, labels: np.ndarray, seed: int = 1, steps: int = 2) -> object:
    from napari_crafts.generation.region import GenerationSettings, Region, generate_region
    from napari_crafts.generation.sources import LabelsSource

    settings = GenerationSettings(scheduler="lcm", steps=steps, tile_size=64, overlap=16, prompt="nuclei", seed=seed)
    return run(generate_region(model, LabelsSource(labels, name="n", mpp=0.25), Region(0, 0, *labels.shape), settings))


def test_a_distilled_student_is_declared_and_used_by_lcm(student, tiny_model, nuclei):
    from safetensors.torch import load_file, save_file

    from napari_crafts.model.description import ModelDescription
    from napari_crafts.model.engine import Engine

    card = json.loads((student / "napari_crafts.json").read_text())["student"]
    lora = student / card["lora"]
    assert card["lora"] == "student/pytorch_lora_weights.safetensors" and card["steps"] == 4
    assert card["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert card["base_sha256"] == ModelDescription.open(student).weights_sha256  # the weights beside it
    assert card["base_sha256"] == ModelDescription.open(tiny_model).weights_sha256  # = the teacher's, unchanged
    weights = load_file(str(lora))
    assert weights and all(k.startswith("unet.") for k in weights)
    assert any(k.endswith("lora_B.weight") and float(v.abs().max()) > 0 for k, v in weights.items())  # it learnt

    engine = Engine(student)
    labels = nuclei[1][:96, :96]
    a, b = lcm_region(engine, labels), lcm_region(engine, labels)
    assert np.array_equal(a.rgb, b.rgb)  # type: ignore[attr-defined]
    assert not np.array_equal(a.rgb, lcm_region(engine, labels, seed=2).rgb)  # type: ignore[attr-defined]
    prov = a.provenance  # type: ignore[attr-defined]
    assert prov["scheduler"] == "lcm" and prov["steps"] == 2
    assert prov["exact"] is False and "few-step student" in prov["approximation"]
    assert prov["model"]["student"]["sha256"] == card["sha256"]

    # the student's weights are what lcm runs: with its LoRA halved (card updated) the pixels change
    halved = {k: v * 0.5 for k, v in weights.items()}
    other = student.parent / "halved"
    import shutil

    shutil.copytree(student, other, ignore=shutil.ignore_patterns("training"))
    save_file(halved, str(other / card["lora"]))
    full = json.loads((other / "napari_crafts.json").read_text())
    full["student"]["sha256"] = hashlib.sha256((other / card["lora"]).read_bytes()).hexdigest()
    (other / "napari_crafts.json").write_text(json.dumps(full))
    assert not np.array_equal(a.rgb, lcm_region(Engine(other), labels).rgb)  # type: ignore[attr-defined]


def test_a_killed_distill_resumes_to_the_same_student(pairs, tiny_model, student, tmp_path):
    settings = TrainSettings(steps=2, checkpoint_every=1, **DISTILL)
    killed = tmp_path / "killed"
    r = train(pairs, killed, base=tiny_model, settings=settings, progress=False, stop_after=1)
    assert r.steps == 1 and not (killed / "student").exists()  # only the checkpoint's model holds one
    train(pairs, killed, base=tiny_model, settings=settings, progress=False, resume=True)
    assert [row["loss"] for row in log(killed)] == [row["loss"] for row in log(student)]
    from safetensors.torch import load_file

    # the same student: to the last bits where the torch thread count is the same (an earlier test's generation may
    # have pinned another; CPU sums then differ in the last bit), hence the float tolerance
    a, b = (load_file(str(m / "student" / "pytorch_lora_weights.safetensors")) for m in (killed, student))
    assert a.keys() == b.keys() and all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-7) for k in a)
    assert (
        json.loads((killed / "napari_crafts.json").read_text())["student"]["base_sha256"]
        == json.loads((student / "napari_crafts.json").read_text())["student"]["base_sha256"]
    )


def test_distill_needs_a_base_and_keeps_its_own_target(pairs, tmp_path):
    with pytest.raises(TrainingError, match="--stage distill distils an existing model: give it with --base"):
        train(pairs, tmp_path / "x", config="small", settings=TrainSettings(steps=1, **DISTILL), progress=False)
    with pytest.raises(TrainingError, match="--ema does not apply to --stage distill"):
        train(
            pairs,
            tmp_path / "x",
            base="tiny-demo",
            settings=TrainSettings(steps=1, ema=True, **DISTILL),
            progress=False,
        )
    assert not (tmp_path / "x").exists()
