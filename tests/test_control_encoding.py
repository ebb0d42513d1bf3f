"""The control encoding a model folder declares (issue 22, "the model is told"): nuclei-v1 (the paper's mask) or
nuclei-tissue-v1 (glass 0, tissue 128, nuclei 255), from the card through generation and training pairs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from napari_crafts.cli import main
from napari_crafts.generation.conditioning import NUCLEI_TISSUE_V1, NUCLEI_V1, labels_to_control
from napari_crafts.generation.region import BACKGROUND_RGB, Region, generate_region, plan_region, run
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.model.card import MODEL_CARD_FILE
from napari_crafts.model.description import ModelDescription, ModelLoadError
from napari_crafts.model.engine import Engine
from napari_crafts.wsi.job import SlideOptions


def test_nuclei_tissue_v1_draws_glass_tissue_nuclei_and_borders_at_the_tissue_value() -> None:
    lab = np.zeros((6, 8), np.int32)
    lab[1:4, 1:3], lab[1:4, 3:5] = 1, 2  # two touching nuclei: the border is column 3 (the larger label's side)
    tissue = np.zeros((6, 8), bool)
    tissue[:, :6] = True  # columns 6-7 are glass
    with_tissue = labels_to_control(lab, tissue=tissue)[..., 0]
    expected = np.array(
        [
            [128] * 6 + [0, 0],
            [128, 255, 255, 128, 255, 128, 0, 0],
            [128, 255, 255, 128, 255, 128, 0, 0],
            [128, 255, 255, 128, 255, 128, 0, 0],
            [128] * 6 + [0, 0],
            [128] * 6 + [0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(with_tissue, expected)
    paper = labels_to_control(lab)[..., 0]  # nuclei-v1 is unchanged: nuclei 255, border and the rest 0
    np.testing.assert_array_equal(paper, np.where(expected == 255, 255, 0))


def _model(tiny_model: Path, folder: Path, **card: object) -> Path:
    shutil.copytree(tiny_model, folder)
    data = json.loads((folder / MODEL_CARD_FILE).read_text())
    (folder / MODEL_CARD_FILE).write_text(json.dumps({**data, **card}))
    return folder


def _spy_controls(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    controls: list[np.ndarray] = []
    real = Engine.generate

    def spied(self, noise, control, *a, **k):  # type: ignore[no-untyped-def]
        controls.append(np.array(control))
        return (yield from real(self, noise, control, *a, **k))

    monkeypatch.setattr(Engine, "generate", spied)
    return controls


def _scene() -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((64, 128), np.uint16)
    lab[10:20, 10:20] = 1  # one nucleus in the left tile; the right tile holds none
    tissue = np.zeros((8, 16), bool)  # a thumbnail: 8-px cells
    tissue[:, :12] = True  # columns ≥ 96 are glass
    return lab, tissue


def test_a_model_that_declares_nuclei_tissue_v1_is_told_the_tissue_and_draws_the_glass(
    tiny_model: Path, tmp_path: Path, fast, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    folder = _model(tiny_model, tmp_path / "tissue-model", control_encoding={"labels": NUCLEI_TISSUE_V1})
    engine = Engine(folder)
    assert engine.control_encoding == {"labels": NUCLEI_TISSUE_V1, "fluorescence": "fluorescence-rgb-v1"}
    lab, tissue = _scene()
    settings, region = dataclasses.replace(fast, overlap=0, batch_size=2), Region(0, 0, 64, 128)
    source = LabelsSource(lab, mpp=0.25, tissue=tissue)
    plan = plan_region(source, region, engine, settings)
    assert plan.control_encoding == NUCLEI_TISSUE_V1 and plan.factor == 1 and plan.model_tile == 64
    controls = _spy_controls(monkeypatch)
    result = run(generate_region(engine, source, region, settings, watermark=False))
    (control,) = controls  # both tiles in one call (each touches tissue)
    left, right = control[0, ..., 0], control[1, ..., 0]
    assert left[12, 12] == 255 and left[40, 40] == 128 and set(np.unique(left)) == {128, 255}
    assert (right[:, :28] == 128).all() and (right[:, 36:] == 0).all()  # nucleus-free tissue, then glass
    assert not (result.rgb[:, 100:] == BACKGROUND_RGB).all()  # not composited: the model drew the glass
    prov = result.provenance
    assert prov["model"]["control_encoding"] == NUCLEI_TISSUE_V1
    assert "the model draws the glass" in prov["source"]["tissue"]["glass"]
    assert "tissue without nuclei 128" in prov["source"]["encoding"]


def test_a_model_that_declares_nothing_gets_the_papers_mask_and_is_composited(
    engine, fast, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    assert engine.control_encoding["labels"] == NUCLEI_V1
    lab, tissue = _scene()
    settings, region = dataclasses.replace(fast, overlap=0, batch_size=2), Region(0, 0, 64, 128)
    controls = _spy_controls(monkeypatch)
    result = run(generate_region(engine, LabelsSource(lab, mpp=0.25, tissue=tissue), region, settings, watermark=False))
    (control,) = controls
    assert set(np.unique(control)) == {0, 255} and (control[1] == 0).all()  # the right tile: no nucleus
    assert (result.rgb[:, 104:] == BACKGROUND_RGB).all()  # glass composited around the tissue
    assert result.provenance["model"]["control_encoding"] == NUCLEI_V1


def test_an_unknown_encoding_is_one_line_when_the_model_is_opened(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _model(tiny_model, tmp_path / "future-model", control_encoding={"labels": "nuclei-v9"})
    with pytest.raises(ModelLoadError, match="unknown labels control encoding 'nuclei-v9'"):
        ModelDescription.open(folder)
    src = tmp_path / "labels.tif"
    lab, _ = _scene()
    tifffile.imwrite(src, lab, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    code = main(["generate", str(src), str(tmp_path / "out.ome.zarr"), "--model", str(folder), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nuclei-v9" in err and NUCLEI_TISSUE_V1 in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_pairs_write_nuclei_tissue_v1_controls_and_a_trained_model_declares_it(tmp_path: Path) -> None:
    from napari_crafts.training.data import open_pairs
    from napari_crafts.training.model_folder import model_card
    from napari_crafts.training.settings import TrainSettings

    shape, mpp = (100, 200), 0.4  # at 0.5 µm/px model px a 40-px tile covers 50 source px
    labels = np.zeros(shape, np.int32)
    for i, cx in enumerate(range(15, 180, 30), start=1):
        labels[disk((25, cx), 6, shape=shape)] = i
    rgb = np.empty((*shape, 3), np.uint8)
    rgb[:] = (235, 160, 200)
    rgb[labels > 0] = (80, 30, 120)
    rgb[:, 180:] = 245  # glass on the right
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(tmp_path / "he.tif", rgb, photometric="rgb", **res)
    tifffile.imwrite(tmp_path / "labels.tif", labels, **res)
    out = tmp_path / "pairs"
    code = main(
        [
            "pairs",
            str(tmp_path / "he.tif"),
            str(out),
            "--nuclei",
            str(tmp_path / "labels.tif"),
            "--mpp",
            "0.5",
            "--tile-px",
            "40",
            "--stride-px",
            "40",
            "--test-fraction",
            "0",
            "--min-tissue",
            "0.2",
            "--control-encoding",
            NUCLEI_TISSUE_V1,
            "--quiet",
        ]
    )
    assert code == 0
    card = json.loads((out / "dataset.json").read_text())
    assert card["control_encoding"] == {"labels": NUCLEI_TISSUE_V1} and "closing" in card["control_tissue_rule"]
    assert "tissue without nuclei 128" in card["conditioning"]["labels"]
    rows = {r["id"]: r for r in map(json.loads, (out / "train" / "metadata.jsonl").read_text().splitlines())}
    edge = np.asarray(Image.open(out / "train" / rows["r0000_c0003"]["control_labels"]))[..., 0]  # x 150-200
    assert (edge[:, 26:] == 0).all() and (edge[30:, :20] == 128).all() and (edge == 255).any()
    inner = np.asarray(Image.open(out / "train" / rows["r0000_c0000"]["control_labels"]))[..., 0]
    assert set(np.unique(inner)) == {128, 255}  # all tissue: no glass value
    split = open_pairs(out)
    parts = SimpleNamespace(
        card={"name": "base", "control_encoding": {"labels": NUCLEI_V1}}, controlnets={"labels": object()}
    )
    assert model_card(parts, split, TrainSettings())["control_encoding"] == {"labels": NUCLEI_TISSUE_V1}  # type: ignore[arg-type]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["pairs", str(tmp_path / "he.tif"), str(tmp_path / "p2"), "--control-encoding", "nuclei-v9"])
    assert exit_.value.code == 2 and sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_whole_slide_with_a_tissue_encoding_model_equals_generate_region(tiny_model: Path, tmp_path: Path) -> None:
    import zarr
    from distributed import LocalCluster

    from napari_crafts.export import read_provenance
    from napari_crafts.export.watermark import payload_for, watermark_image
    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.model.engine import get_engine
    from napari_crafts.model.threads import torch_threads
    from napari_crafts.wsi.job import generate_slide

    folder = _model(tiny_model, tmp_path / "tissue-model", control_encoding={"labels": NUCLEI_TISSUE_V1})
    lab, tissue = _scene()
    src, mask = tmp_path / "labels.tif", tmp_path / "tissue.png"
    tifffile.imwrite(src, lab, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    Image.fromarray(tissue.astype(np.uint8) * 255).save(mask)
    settings = GenerationSettings(steps=2, tile_size=64, overlap=16, prompt="nuclei", seed=7, batch_size=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        out = generate_slide(src, tmp_path / "he.ome.zarr", model=folder, settings=settings, options=SlideOptions(chunk=64, tissue=mask, scheduler_address=cluster.scheduler_address), progress=False)
    prov = read_provenance(out)
    assert prov["model"]["control_encoding"] == NUCLEI_TISSUE_V1
    with torch_threads(1):
        ref = run(
            generate_region(
                get_engine(folder),
                LabelsSource(lab, name="labels.tif", mpp=0.25, tissue=mask),
                Region(0, 0, 64, 128),
                settings,
                watermark=False,
            )
        )
    level0 = np.asarray(zarr.open_group(out, mode="r")["0"]).transpose(1, 2, 0)
    np.testing.assert_array_equal(level0, watermark_image(ref.rgb, payload_for(prov), chunk=64))
    assert not (ref.rgb[:, 100:] == BACKGROUND_RGB).all()  # the model drew the glass (not composited)
