"""--lora: a LoRA made here on the tiny model changes the pixels, the same way every time, and its hash is in the
provenance; a LoRA for another model, a pickle one without opt-in, lcm without a student (or with another base's),
and lcm steps out of range are one line each, before any tile runs, with nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from _cli import one_line, run_cli  # noqa: E402
from napari_crafts._generators import run  # noqa: E402
from napari_crafts.model.description import LoraError, PickleRefused  # noqa: E402


def make_lora(
    engine: object,
    path: Path,
    *,
    seed: int = 0,
    scale: float = 0.5,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "conv1"),
) -> Path:
    """A rank-4 LoRA for the tiny UNet in diffusers' layout (``unet.<layer>.lora_A.weight``), both halves random."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = copy.deepcopy(engine.unet)  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    state = {
        f"unet.{k}": v + scale * torch.randn(v.shape, generator=gen) for k, v in get_peft_model_state_dict(unet).items()
    }
    save_file(state, str(path))
    return path


def tile(engine: object, seed: int = 3) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((1, 4, 32, 32)).astype(np.float32)
    return run(engine.generate(noise, None, prompt="nuclei", steps=2, mode="prompt"))  # type: ignore[attr-defined]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(engine, tmp_path_factory.mktemp("lora") / "nuclei_style.safetensors")


def test_a_lora_changes_the_pixels_deterministically_and_is_recorded(engine, tiny_model, lora, nuclei):
    from napari_crafts.generation.region import GenerationSettings, Region, generate_region
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.model.engine import Engine

    styled = Engine(tiny_model, lora=lora)
    plain, a, b = tile(engine), tile(styled), tile(styled)
    assert np.array_equal(a, b)  # the same seed, the same pixels
    assert np.abs(a.astype(int) - plain).mean() > 5  # the LoRA is heard
    assert np.array_equal(tile(engine), plain)  # and the engine without it is untouched
    settings = GenerationSettings(steps=1, tile_size=64, overlap=0, prompt="nuclei", seed=1)
    result = run(
        generate_region(styled, LabelsSource(nuclei[1][:64, :64], name="n", mpp=0.25), Region(0, 0, 64, 64), settings)
    )
    record = result.provenance["model"]["lora"]
    assert record == {"file": lora.name, "sha256": hashlib.sha256(lora.read_bytes()).hexdigest()}
    assert "lora" not in engine.describe()


def test_get_engine_keys_its_cache_by_the_lora(tiny_model, lora):
    from napari_crafts.model.engine import get_engine

    styled = get_engine(tiny_model, device="cpu", lora=lora, per_device=2)
    assert get_engine(tiny_model, device="cpu", lora=lora, per_device=2) is styled
    assert get_engine(tiny_model, device="cpu", per_device=2) is not styled


def test_a_lora_for_another_model_is_one_line_naming_the_layer(engine, tiny_model, tmp_path):
    import torch
    from safetensors.torch import save_file

    from napari_crafts.model.engine import Engine

    wide = tmp_path / "sd15_like.safetensors"  # SD1.5's 320 channels on a layer the tiny UNet has narrower
    layer = next(n for n, _ in engine.unet.named_modules() if n.endswith("attn1.to_q"))
    save_file(
        {f"unet.{layer}.lora_A.weight": torch.zeros(4, 320), f"unet.{layer}.lora_B.weight": torch.zeros(320, 4)},
        str(wide),
    )
    with pytest.raises(LoraError, match=f"layer '{layer}' has .* inputs, the LoRA's weights 320; it was made for"):
        Engine(tiny_model, lora=wide)
    alien = tmp_path / "alien.safetensors"
    save_file(
        {
            "unet.mid_block.attentions.9.proj_in.lora_A.weight": torch.zeros(4, 32),
            "unet.mid_block.attentions.9.proj_in.lora_B.weight": torch.zeros(32, 4),
        },
        str(alien),
    )
    with pytest.raises(LoraError, match="adapts layer 'mid_block.attentions.9.proj_in', which this model's UNet"):
        Engine(tiny_model, lora=alien)


def test_a_pickle_lora_needs_the_opt_in(engine, tiny_model, lora, tmp_path):
    import torch
    from safetensors.torch import load_file

    from napari_crafts.model.engine import Engine

    pickled = tmp_path / "pytorch_lora_weights.bin"
    torch.save(load_file(str(lora)), pickled)
    with pytest.raises(PickleRefused, match="pickle format, which can run code.*--allow-pickle"):
        Engine(tiny_model, lora=tmp_path)  # a folder holding it
    assert np.array_equal(
        tile(Engine(tiny_model, lora=pickled, allow_pickle=True)), tile(Engine(tiny_model, lora=lora))
    )


@pytest.mark.parametrize("case", ["shapes", "pickle", "missing"])
def test_generate_refuses_a_bad_lora_in_one_line_before_anything_runs(
    victim, tiny_model, engine, tmp_path, case, capsys
):
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    layer = next(n for n, _ in engine.unet.named_modules() if n.endswith("attn1.to_q"))
    if case == "shapes":
        save_file(
            {f"unet.{layer}.lora_A.weight": torch.zeros(4, 320), f"unet.{layer}.lora_B.weight": torch.zeros(320, 4)},
            str(bad),
        )
    elif case == "pickle":
        bad = tmp_path / "bad.ckpt"
        torch.save({}, bad)
    before = snapshot(tmp_path)
    code, out, err = run_cli(
        ["generate", victim, tmp_path / "out.ome.zarr", "--model", tiny_model, "--lora", bad, "--workers", "1"], capsys
    )
    line = one_line(err)
    assert code == 2
    assert {"shapes": "does not fit this model's UNet", "pickle": "pickle format", "missing": "no such file or folder"}[
        case
    ] in line
    assert snapshot(tmp_path) == before


def test_lcm_without_a_student_or_with_bad_steps_is_one_line(tmp_path, tiny_model, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(["demo", "--out", out, "--model", tiny_model, "--scheduler", "lcm"], capsys)
    assert code == 2 and "needs a few-step student, and model" in one_line(err) and "declares none" in err
    for steps, valid in (("0", "from 1 to 1000"), ("51", "from 1 to 50 with the lcm scheduler")):
        code, _, err = run_cli(
            ["demo", "--out", out, "--model", tiny_model, "--scheduler", "lcm", "--steps", steps], capsys
        )
        assert code == 2 and f"--steps {steps}: must be an integer {valid}" in one_line(err)
    assert not out.exists()


def test_a_student_of_another_base_is_one_line(tiny_model, lora, tmp_path, victim, capsys):
    """A model folder whose card declares a student distilled from other weights (or a changed file)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "student").mkdir()
    shutil.copy(lora, model / "student" / "pytorch_lora_weights.safetensors")
    card_path = model / "napari_crafts.json"
    card = json.loads(card_path.read_text())
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    card["student"] = {"lora": "student/pytorch_lora_weights.safetensors", "sha256": digest, "base_sha256": "0" * 64}
    card_path.write_text(json.dumps(card))
    out = tmp_path / "out.ome.zarr"
    code, _, err = run_cli(["generate", victim, out, "--model", model, "--scheduler", "lcm"], capsys)
    assert code == 2 and "its student was distilled from other weights (base 000000000000…" in one_line(err)
    card["student"]["base_sha256"], card["student"]["sha256"] = "x", "f" * 64
    card_path.write_text(json.dumps(card))
    code, _, err = run_cli(["generate", victim, out, "--model", model, "--scheduler", "lcm"], capsys)
    assert code == 2 and "is not the student the card declares" in one_line(err)
    assert not out.exists()


def test_the_fast_settings_run_the_student_when_the_model_has_one():
    from napari_crafts.generation.estimate import fast_settings
    from napari_crafts.generation.region import GenerationSettings

    asked = GenerationSettings(steps=50, tile_size=512, overlap=64)
    fast = fast_settings(asked, 8, student=True)
    assert (fast.scheduler, fast.steps, fast.cfg_cutoff, fast.cache_interval) == ("lcm", 4, 1.0, 1)
    assert not fast.exact and "few-step student" in str(fast.approximation)
    assert fast_settings(asked, 8).scheduler == "unipc"  # no student: as before


def test_lcm_runs_a_users_consistency_lora_when_the_model_declares_no_student(tiny_model, lora, engine):
    """As with the public LCM-LoRA over SD1.5-derived weights: --lora PATH --scheduler lcm."""
    from napari_crafts.model.description import ModelDescription
    from napari_crafts.model.engine import Engine

    ModelDescription.open(tiny_model, lora=lora).check_few_step()  # accepted (the model declares no student)
    with pytest.raises(LoraError, match="declares none"):
        ModelDescription.open(tiny_model).check_few_step()
    styled = Engine(tiny_model, lora=lora)
    noise = np.random.default_rng(4).standard_normal((1, 4, 32, 32)).astype(np.float32)

    def lcm(e: object) -> np.ndarray:
        return run(e.generate(noise, None, prompt="nuclei", steps=2, mode="prompt", scheduler="lcm"))  # type: ignore[attr-defined]

    assert np.array_equal(lcm(styled), lcm(styled))
    with pytest.raises(LoraError, match="declares none"):
        lcm(engine)


def test_the_demo_takes_a_lora_and_records_it(tiny_model, lora, tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(
        ["demo", "--out", out, "--model", tiny_model, "--lora", tmp_path / "none.safetensors"], capsys
    )
    assert code == 2 and "no such file or folder" in one_line(err) and not out.exists()
    code, _, _ = run_cli(
        [
            "demo",
            "--out",
            out,
            "--model",
            tiny_model,
            "--lora",
            lora,
            "--steps",
            "1",
            "--size",
            "64",
            "--tile-size",
            "64",
            "--overlap",
            "0",
        ],
        capsys,
    )
    assert code == 0
    record = json.loads((out / "provenance.json").read_text())["model"]["lora"]
    assert record["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
