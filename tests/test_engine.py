import json
import shutil

import numpy as np
import pytest

from napari_crafts.generation.region import run
from napari_crafts.generation.tiling import noise_field
from napari_crafts.model.engine import Engine, ModelLoadError, PickleRefused, get_engine, weights_sha256


def _batch(seed=0, size=64, n=1):
    return np.stack([noise_field(seed, 0, 32 * i, size // 2, size // 2) for i in range(n)])


def _control(size=64, n=1):
    c = np.zeros((n, size, size, 3), np.uint8)
    c[:, 10:30, 12:40] = 255
    return c


def test_tiny_model_is_a_normal_diffusers_folder(tiny_model):
    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionControlNetPipeline"
    for part in ("unet", "vae", "text_encoder", "controlnet"):
        assert list((tiny_model / part).glob("*.safetensors")), part
    assert not list(tiny_model.rglob("*.bin"))


def test_engine_matches_the_diffusers_pipeline_pixel_for_pixel(engine, tiny_model):
    import PIL.Image
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    noise, ctl = _batch(), _control()
    ours = run(engine.generate(noise, ctl, prompt="eosin stroma", steps=3))
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("eosin stroma", image=PIL.Image.fromarray(ctl[0]), num_inference_steps=3, height=64, width=64,
               latents=torch.from_numpy(noise), output_type="np").images
    np.testing.assert_array_equal(ours, (ref * 255).round().astype(np.uint8))  # same math, same kernels


def test_same_seed_same_pixels_other_seed_other_pixels(engine):
    a = run(engine.generate(_batch(1), _control(), prompt="x", steps=2))
    b = run(engine.generate(_batch(1), _control(), prompt="x", steps=2))
    c = run(engine.generate(_batch(2), _control(), prompt="x", steps=2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_batching_tiles_does_not_change_them(engine):
    noise, ctl = _batch(n=2), _control(n=2)
    together = run(engine.generate(noise, ctl, prompt="x", steps=2))
    alone = run(engine.generate(noise[1:], ctl[1:], prompt="x", steps=2))
    np.testing.assert_allclose(together[1].astype(int), alone[0].astype(int), atol=1)


def test_the_control_image_reaches_the_model(engine):
    a = run(engine.generate(_batch(), _control(), prompt="x", steps=2))
    b = run(engine.generate(_batch(), np.zeros_like(_control()), prompt="x", steps=2))
    assert not np.array_equal(a, b)


def test_prompt_only_generation_runs_without_a_controlnet(engine):
    """No ControlNet call at all, and the pixels of diffusers' text-to-image pipeline (which has none)."""
    import torch
    from diffusers import StableDiffusionPipeline

    calls = []
    hooks = [net.register_forward_hook(lambda *_: calls.append(1)) for net in (engine.controlnet(),
                                                                           engine.controlnet(mode="fluorescence"))]
    try:
        out = run(engine.generate(_batch(), None, prompt="lung adenocarcinoma", steps=2))
        assert calls == []
        run(engine.generate(_batch(), _control(), prompt="lung adenocarcinoma", steps=2, scheduler="ddim"))
        assert len(calls) == 2  # the hooks do see a ControlNet when there is a control image: once per step
    finally:
        for hook in hooks:
            hook.remove()
    pipe = StableDiffusionPipeline(vae=engine.vae, text_encoder=engine.text_encoder, tokenizer=engine.tokenizer,
                                   unet=engine.unet, scheduler=engine.make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("lung adenocarcinoma", num_inference_steps=2, height=64, width=64,
               latents=torch.from_numpy(_batch()), output_type="np").images
    np.testing.assert_array_equal(out, (ref * 255).round().astype(np.uint8))


def test_generation_yields_every_step_and_stops_when_closed(engine):
    gen = engine.generate(_batch(), _control(), prompt="x", steps=4, scheduler="ddim")
    steps = [next(gen), next(gen)]
    assert [s.step for s in steps] == [1, 2] and steps[0].steps == 4
    gen.close()  # what napari's worker.quit() does at the next yield
    with pytest.raises(StopIteration):
        next(gen)


def test_schedulers_and_their_errors(engine, tiny_model):
    """Each name is its diffusers class on the model's noise schedule, and generate runs that very scheduler:
    the ControlNet pipeline given the same class gives the same pixels."""
    import PIL.Image
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    from napari_crafts.model.engine import SCHEDULERS

    made = {name: engine.make_scheduler(name) for name in SCHEDULERS}
    assert {name: type(s).__name__ for name, s in made.items()} == {
        "default": "PNDMScheduler", "ddim": "DDIMScheduler", "unipc": "UniPCMultistepScheduler",
        "dpm++": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler"}
    for s in made.values():  # the model's betas, whatever the solver
        assert (s.config.beta_schedule, s.config.beta_start, s.config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    for name in ("ddim", "unipc", "dpm++"):
        ours = run(engine.generate(_batch(), _control(), prompt="x", steps=3, scheduler=name))
        pipe.scheduler = type(made[name]).from_config(pipe.scheduler.config)
        ref = pipe("x", image=PIL.Image.fromarray(_control()[0]), num_inference_steps=3, height=64, width=64,
                   latents=torch.from_numpy(_batch()), output_type="np").images
        np.testing.assert_array_equal(ours, (ref * 255).round().astype(np.uint8))
        outputs.append(ours)
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])
    with pytest.raises(ValueError, match="Unknown scheduler 'fast'"):
        engine.make_scheduler("fast")


def test_weights_hash_is_the_hash_of_the_files(engine, tiny_model, tmp_path):
    assert engine.describe()["weights_sha256"] == weights_sha256(tiny_model)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    f = next((copy / "unet").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-1] + b"\0")
    assert weights_sha256(copy) != weights_sha256(tiny_model)


def test_pickle_only_weights_are_refused_unless_opted_in(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    copy = shutil.copytree(tiny_model, tmp_path / "pickled")
    st = next((copy / "unet").glob("*.safetensors"))
    torch.save(load_file(st), copy / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(PickleRefused, match=r"unet holds only pickle weights.*--allow-pickle"):
        Engine(copy)
    assert Engine(copy, allow_pickle=True).unet is not None


def test_bad_model_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers folder"):
        Engine(tmp_path / "empty")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="single file"):
        Engine(tmp_path / "model.ckpt")


def test_models_are_loaded_once_and_reused(tiny_model):
    assert get_engine(tiny_model) is get_engine(str(tiny_model))


def test_the_tiny_demo_model_builds_on_first_use():
    e = get_engine("tiny-demo")
    assert e.card.tiny and e.mpp == 0.25 and e.describe()["tiny_random_model"] is True


def test_long_prompts_report_what_clip_cuts(engine):
    assert engine.truncated_tokens("short") == []
    prompt = "a" * 60 + " tail end of the prompt"
    cut = engine.truncated_tokens(prompt)
    assert cut and prompt.endswith(" ".join(cut))  # the cut words are the prompt's tail


def test_cfg_cutoff_is_a_fast_approximation_of_the_exact_result(engine):
    def gen(seed=0, **kw):
        return run(engine.generate(_batch(seed), _control(), prompt="x", steps=6, scheduler="ddim", **kw)).astype(int)

    exact, unguided = gen(), gen(guidance_scale=1.0)
    np.testing.assert_array_equal(gen(cfg_cutoff=1.0), exact)  # every step guided: the exact result
    np.testing.assert_array_equal(gen(cfg_cutoff=0.01), unguided)  # no step guided: no guidance at all
    # half the steps guided lies between (measured: ~1.8 grey levels from exact, unguided ~6.5, another seed ~44)
    half = np.abs(exact - gen(cfg_cutoff=0.5)).mean()
    none = np.abs(exact - unguided).mean()
    other = np.abs(exact - gen(seed=10)).mean()
    assert 0 < half < none / 2 and none < other / 4


def test_fast_mode_is_labelled_approximate_in_the_provenance():
    from napari_crafts.generation.region import GenerationSettings

    assert GenerationSettings().record()["exact"] is True
    rec = GenerationSettings(scheduler="unipc", steps=20, cfg_cutoff=0.6).record()
    assert rec["exact"] is False and rec["approximation"].startswith("approximate") and "60%" in rec["approximation"]
