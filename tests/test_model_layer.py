"""The model layer: a torch-free description, engines built from it (bounded cache, shared safely between jobs,
out-of-memory remembered), provenance of where tiles were made, and single-file checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from napari_crafts.generation.region import GenerationError, GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import FluorescenceSource, LabelsSource
from napari_crafts.generation.tiling import noise_field
from napari_crafts.model import engine as engine_module
from napari_crafts.model.description import ModelDescription, ModelLoadError, PickleRefused, Runtime
from napari_crafts.model.engine import Engine, get_engine
from napari_crafts.wsi.job import SlideOptions, common_runtime

SETTINGS = GenerationSettings(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=3, batch_size=1)


# ------------------------------------------------------------------------------------------- description


def test_a_description_plans_and_describes_without_torch(tiny_model: Path) -> None:
    code = (f"import sys; from napari_crafts.model.description import ModelDescription as D; "
            f"d = D.open({str(tiny_model)!r}); r = d.describe(None, 'labels'); "
            f"print(d.size_multiple, d.vae_scale_factor, d.mpp, r['controlnet'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["4", "2", "0.25", "controlnet", "False"]


def test_the_engine_records_its_own_runtime_on_top_of_the_description(tiny_model: Path, engine: Engine) -> None:
    description = ModelDescription.open(tiny_model)
    assert engine.runtime == Runtime("cpu", "float32")
    assert engine.describe(None, "labels") == {**description.describe(None, "labels"), "device": "cpu",
                                               "dtype": "float32", "channels_last": False, "compile": False}
    assert "device" not in description.describe(None, "labels")  # a description alone ran nowhere
    bf16 = Runtime("cuda", "bfloat16")
    assert description.at(bf16).describe(None, None)["dtype"] == "bfloat16"


def test_workers_that_compute_differently_are_refused_and_gpu_indices_merge() -> None:
    a, b = Runtime("cuda:0", "float16"), Runtime("cuda:1", "float16")
    assert common_runtime([a, a]) == a
    assert common_runtime([a, b]) == Runtime("cuda", "float16")  # two GPUs of one machine: one record
    with pytest.raises(GenerationError, match=r"workers run the model differently \(.*cpu/float32.*cuda/float16"):
        common_runtime([a, Runtime("cpu", "float32")])
    with pytest.raises(GenerationError, match="No dask worker answered"):
        common_runtime([])


@pytest.mark.slow
def test_whole_slide_provenance_holds_the_workers_device_and_dtype(tiny_model: Path, nuclei: tuple[np.ndarray, ...],
                                                                   tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The workers run bfloat16 where the client would pick float32: the record says what the workers did."""
    import tifffile
    import torch
    from distributed import LocalCluster

    from napari_crafts.export import read_provenance
    from napari_crafts.wsi.job import generate_slide

    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, nuclei[1][:64, :64], resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    assert engine_module.pick_dtype("cpu") == torch.float32  # what this (client) process would record
    monkeypatch.setattr(engine_module, "_ENGINES", OrderedDict())  # the workers load their own engine …
    monkeypatch.setattr(engine_module, "pick_dtype", lambda device, dtype=None: torch.bfloat16)  # … in bfloat16
    settings = dataclasses.replace(SETTINGS, steps=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        out = generate_slide(src, tmp_path / "he.ome.zarr", model=tiny_model, settings=settings, options=SlideOptions(chunk=64, scheduler_address=cluster.scheduler_address), progress=False)
    record = read_provenance(out)["model"]
    assert (record["device"], record["dtype"]) == ("cpu", "bfloat16")
    assert "torch_threads_per_worker" in read_provenance(out)  # CPU: the thread count is part of the record


# ------------------------------------------------------------------------------------------- engine cache


def test_switching_models_keeps_one_per_device_and_frees_the_last(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    other = shutil.copytree(tiny_model, tmp_path / "other")
    freed: list[str] = []
    monkeypatch.setattr(engine_module, "_ENGINES", OrderedDict())
    monkeypatch.setattr(engine_module, "free_memory", freed.append)
    first = get_engine(tiny_model)
    gone = weakref.ref(first.unet)
    assert get_engine(tiny_model) is first
    del first
    second = get_engine(other)
    assert engine_module.cached_engines() == [second] and freed == ["cpu"]
    import gc

    gc.collect()
    assert gone() is None  # nobody holds the first model any more: its networks are gone
    two = get_engine(tiny_model, per_device=2)  # a larger budget keeps both
    assert engine_module.cached_engines() == [second, two]


def test_the_prompt_cache_keeps_the_most_recent_prompts(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine, "_prompt_cache", OrderedDict())
    monkeypatch.setattr(engine_module, "PROMPT_CACHE_SIZE", 2)
    a = engine.encode_prompt("a")
    engine.encode_prompt("b")
    assert engine.encode_prompt("a") is a  # reused, and now the most recent
    engine.encode_prompt("c")
    assert list(engine._prompt_cache) == [("a", ""), ("c", "")]


# ------------------------------------------------------------------------------------------- two jobs, one engine


def _jobs(nuclei: tuple[np.ndarray, np.ndarray]) -> list:  # type: ignore[type-arg]
    labels = LabelsSource(nuclei[1][:112, :112], name="labels", mpp=0.25)
    fluo = FluorescenceSource(nuclei[0][:112, :112], name="dapi", mpp=0.25)
    reuse = dataclasses.replace(SETTINGS, steps=4, cache_interval=2, scheduler="ddim")  # a hook-using job
    return [(labels, reuse), (fluo, SETTINGS)]


def test_two_jobs_interleaved_step_by_step_give_their_own_pixels(engine: Engine, nuclei) -> None:  # type: ignore[no-untyped-def]
    jobs = _jobs(nuclei)
    alone = [run(generate_region(engine, src, Region(0, 0, 112, 112), s)).rgb for src, s in jobs]
    gens = [generate_region(engine, src, Region(0, 0, 112, 112), s) for src, s in jobs]
    results: list = [None, None]  # type: ignore[type-arg]
    while any(r is None for r in results):  # one event of each in turn: every step of one between two of the other
        for i, gen in enumerate(gens):
            if results[i] is None:
                try:
                    next(gen)
                except StopIteration as stop:
                    results[i] = stop.value.rgb
    for got, want in zip(results, alone, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_two_jobs_in_threads_on_one_engine_give_the_pixels_of_each_alone(engine: Engine, nuclei) -> None:  # type: ignore[no-untyped-def]
    jobs = _jobs(nuclei)
    alone = [run(generate_region(engine, src, Region(0, 0, 112, 112), s)).rgb for src, s in jobs]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(2)

    def job(i: int) -> None:
        src, s = jobs[i]
        start.wait()
        results[i] = run(generate_region(engine, src, Region(0, 0, 112, 112), s)).rgb

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_array_equal(results[i], alone[i])


# ------------------------------------------------------------------------------------------- out of memory


def test_a_batch_halved_after_out_of_memory_is_kept_for_later_chunks(engine: Engine, nuclei, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    monkeypatch.setattr(engine, "_batch_caps", {})
    real, calls = Engine.generate, []

    def at_most_two(self, noise, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(len(noise))
        if len(noise) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return (yield from real(self, noise, *a, **k))

    monkeypatch.setattr(Engine, "generate", at_most_two)
    src = LabelsSource(nuclei[1][:160, :160], name="n", mpp=0.25)
    settings = dataclasses.replace(SETTINGS, batch_size=4, skip_empty=False, steps=1)
    result = run(generate_region(engine, src, Region(0, 0, 160, 160), settings))
    assert result.tiles_generated == 9 and calls[:2] == [4, 2]
    assert max(calls[2:]) == 2 and 4 not in calls[2:]  # the second chunk of 4 started at 2, not at 4 again
    assert engine.batch_cap(64, guidance=True, control=True) == 2
    calls.clear()
    run(generate_region(engine, src, Region(0, 0, 160, 160), settings))  # a later run on this engine too
    assert calls and max(calls) == 2


# ------------------------------------------------------------------------------------------- single files


@pytest.fixture(scope="module")
def single_files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The tiny model as original-layout files: an SD checkpoint, a ControlNet 1.1 file, and its configs only."""
    from original_layout import save_original_layout

    root = tmp_path_factory.mktemp("single")
    save_original_layout(tiny_model, root / "tiny.safetensors", root / "tiny_controlnet.safetensors")
    configs = shutil.copytree(tiny_model, root / "configs", ignore=shutil.ignore_patterns("*.safetensors"))
    return root / "tiny.safetensors", root / "tiny_controlnet.safetensors", configs


def test_single_file_checkpoints_give_the_pixels_of_the_folder(engine: Engine, single_files) -> None:  # type: ignore[no-untyped-def]
    checkpoint, controlnet, configs = single_files
    assert not list(configs.rglob("*.safetensors"))  # the weights come from the single files only
    one = Engine(ModelDescription.open(checkpoint, config=configs))
    noise = noise_field(4, 0, 0, 32, 32)[None]
    control = np.zeros((1, 64, 64, 3), np.uint8)
    control[:, 10:30, 12:40] = 255
    want = run(engine.generate(noise, control, prompt="nuclei", steps=2))
    got = run(one.generate(noise, control, prompt="nuclei", steps=2, controlnet=controlnet))
    np.testing.assert_array_equal(got, want)
    record = one.describe(controlnet)
    assert record["single_file"] is True and record["controlnet"] == str(controlnet)
    assert record["weights_sha256"] != engine.describe()["weights_sha256"]  # the hash of the file itself
    with pytest.raises(ModelLoadError, match="single checkpoint with no ControlNet beside it.*--controlnet"):
        one.controlnet_path(None, "labels")


def test_single_files_follow_the_pickle_rule(engine: Engine, single_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import load_file

    checkpoint, _, configs = single_files
    ckpt = tmp_path / "model.ckpt"  # the same weights as a pickle checkpoint, wrapped as .ckpt files are
    torch.save({"state_dict": load_file(checkpoint)}, ckpt)
    with pytest.raises(PickleRefused, match="single file in pickle format.*--allow-pickle"):
        ModelDescription.open(ckpt)
    opted_in = Engine(ModelDescription.open(ckpt, config=configs, allow_pickle=True))
    noise = noise_field(5, 0, 0, 32, 32)[None]
    np.testing.assert_array_equal(run(opted_in.generate(noise, None, prompt="nuclei", steps=2)),
                                  run(engine.generate(noise, None, prompt="nuclei", steps=2)))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file but not a checkpoint"):
        ModelDescription.open(tmp_path / "notes.txt")


def test_packaged_sd15_configs_have_the_published_shapes() -> None:
    """The configs single files load with: SD1.5's parameter counts (meta device: no memory) and CLIP's tokenizer."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from napari_crafts.model.description import SD15_CONFIG, read_config, single_file_config

    def millions(module: torch.nn.Module) -> float:
        return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(read_config(SD15_CONFIG, "unet"))
        assert millions(unet) == 859.5
        assert millions(ControlNetModel.from_config(read_config(SD15_CONFIG, "controlnet"))) == 361.3
        assert millions(AutoencoderKL.from_config(read_config(SD15_CONFIG, "vae"))) == 83.7
        text = CLIPTextModel(CLIPTextConfig(**read_config(SD15_CONFIG, "text_encoder")))
        assert millions(text) == 123.1
    description = ModelDescription(ref="x", path=Path("x.safetensors"), config=single_file_config(), card=None,  # type: ignore[arg-type]
                                   allow_pickle=False, vae_scale_factor=8, unet_levels=4)
    tok = description.tokenizer
    assert len(tok) == 49408 and tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert json.loads((single_file_config() / "scheduler" / "scheduler_config.json").read_text())["_class_name"] \
        == "PNDMScheduler"
