"""``napari-crafts synth``: dataset layout, manifest, provenance and watermark, determinism, resume, rejection, and
one line per bad input (nothing written, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from _cli import one_line, run_cli
from _data import DSB_MASK
from napari_crafts.generation.region import GenerationSettings
from napari_crafts.synth import (
    ItemDone,
    check_dataset_output,
    dataset_state,
    plan_pairs,
    start_dataset,
    synthesize,
)
from napari_crafts.synth.plan import apply_augment

#: One step without guidance: the tiny model draws a 64-px image in well under a second.
FAST = ["--steps", "1", "--guidance", "1", "--tile-size", "64", "--overlap", "16"]
SETTINGS = GenerationSettings(steps=1, guidance_scale=1.0, tile_size=64, overlap=16, prompt="nuclei")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def label_tiles(tmp_path: Path) -> Path:
    """Two 64-px label tiles of the DSB 2018 mask at 0.25 µm/px (the tiny model's pixel size)."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    mask = tifffile.imread(DSB_MASK)
    for name, (y, x) in {"a": (0, 0), "b": (64, 192)}.items():
        tifffile.imwrite(
            folder / f"{name}.tif",
            mask[y : y + 64, x : x + 64].astype(np.uint16),
            resolution=(1e4 / 0.25, 1e4 / 0.25),
            resolutionunit="CENTIMETER",
        )
    return folder


def make(
    engine: Any,
    plan: Any,
    out: Path,
    *,
    stop_after: int | None = None,
    resume: bool = False,
    reject_below: dict[str, float] | None = None,
) -> Any:
    """Run ``synthesize`` as the CLI does; ``stop_after`` images: close the generator there (a kill)."""
    state = dataset_state(plan, SETTINGS, "tiny", reject_below=reject_below or {}, watermark=True, tissue="all")
    target = check_dataset_output(out, state, inputs=plan.inputs, resume=resume)
    created = start_dataset(target, state, resume=resume)
    gen = synthesize(engine, plan, target, SETTINGS, created=created, reject_below=reject_below, tissue="all")
    done = 0
    try:
        while True:
            event = next(gen)
            done += isinstance(event, ItemDone)
            if stop_after is not None and done == stop_after:
                gen.close()
                return None
    except StopIteration as stop:
        return stop.value


def test_classes_layout_manifest_and_check(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts → classes: the image-folder layout, one metadata line per image, the card; check finds them all."""
    from napari_crafts.export.check import check_paths

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("class,prompt,count\ntumour,dense nuclei,2\nstroma,pink fibres,\n")
    out = tmp_path / "set"
    code, stdout, err = run_cli(
        [
            "synth",
            out,
            "--model",
            tiny_model,
            "--prompts",
            prompts,
            "--count",
            "1",
            "--size",
            "128",
            *FAST[:4],
            "--tile-size",
            "128",
        ],
        capsys,
    )
    assert code == 0, err
    assert "3 of 3 images kept" in stdout
    assert "synth: 3/3 images" in err and "images/s" in err  # progress on stderr
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert pngs == [
        "images/stroma/stroma-00000.png",
        "images/tumour/tumour-00000.png",
        "images/tumour/tumour-00001.png",
    ]
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(line["file_name"] for line in lines) == pngs
    by_name = {line["file_name"]: line for line in lines}
    first = by_name["images/tumour/tumour-00000.png"]
    assert (first["class"], first["prompt"], first["settings"]["steps"]) == ("tumour", "dense nuclei", 1)
    assert len({line["seed"] for line in lines}) == 3
    assert 0 <= first["checks"]["red_gt_green"] <= 1
    card = json.loads((out / "dataset.json").read_text())
    assert card["synthetic"] is True and "SYNTHETIC" in card["what"]
    assert len(card["model"]["weights_sha256"]) == 64
    assert card["counts"] == {"planned": 3, "kept": 3, "rejected": 0, "by_class": {"tumour": 2, "stroma": 1}}
    assert set(card["diversity"]["per_group"]) == {"tumour", "stroma"}
    assert card["diversity"]["per_group"]["stroma"] is None  # one image: nothing to compare
    assert -1 <= card["diversity"]["per_group"]["tumour"] < 0.9
    reports = check_paths([out / "images"])
    assert len(reports) == 3
    assert all(r.synthetic and r.provenance["found"] and r.watermark["found"] for r in reports), reports


def test_pairs_masks_are_the_labels_drawn_from(tmp_path: Path, engine: Any, label_tiles: Path) -> None:
    """Masks → pairs: images/<id>.png + masks/<id>.tif, the mask exactly the (augmented) labels of the image."""
    from PIL import Image

    plan = plan_pairs(label_tiles, count=2, seed=3, augment=True)
    assert [i.id for i in plan.items] == ["a-000", "a-001", "b-000", "b-001"]
    assert plan.items[0].augment == () and plan.items[1].augment  # copy 0 as drawn, copy 1 augmented
    result = make(engine, plan, tmp_path / "pairs")
    out = result.out
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [f"images/{i.id}.png" for i in plan.items]
    source = tifffile.imread(label_tiles / "a.tif")
    for item, line in zip(plan.items, lines, strict=True):
        mask = tifffile.imread(out / line["mask_file_name"])
        expected = apply_augment(tifffile.imread(label_tiles / f"{item.id[0]}.tif"), item.augment)
        np.testing.assert_array_equal(mask, expected)
        assert line["augment"] == list(item.augment) and line["mpp"] == 0.25
        assert np.asarray(Image.open(out / line["file_name"])).shape == (64, 64, 3)
        assert line["checks"]["H_ratio"] is None or line["checks"]["H_ratio"] > 0
    np.testing.assert_array_equal(tifffile.imread(out / "masks/a-000.tif"), source)
    with tifffile.TiffFile(out / "masks/a-000.tif") as tif:
        x_res = tif.pages[0].tags["XResolution"].value
    assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.25)
    assert result.card["counts"]["kept"] == 4 and result.card["kind"] == "pairs"


def test_resume_after_a_kill_is_byte_identical_and_seeds_decide(
    tmp_path: Path, engine: Any, label_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed after its 2 images (one of them with its PNG written but not its record) and resumed writes
    the same bytes as an uninterrupted run; another seed draws other pixels."""
    from PIL import Image

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    plan = plan_pairs(label_tiles, count=1, seed=11)
    whole = make(engine, plan, tmp_path / "whole").out
    killed = tmp_path / "killed"
    assert make(engine, plan, killed, stop_after=2) is None
    assert not (killed / "metadata.jsonl").exists()
    (killed / "_synth/items/b-000.json").unlink()  # killed between its PNG and its record
    (killed / "images/b-000.png.partial").write_bytes(b"half a PNG")  # and a save cut short
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # the resumed run keeps the dataset's own time
    result = make(engine, plan, killed, resume=True)
    assert result.resumed == 1 and result.kept == 2
    assert tree(killed) == tree(whole)  # the save cut short was written again and renamed into place
    other = make(engine, plan_pairs(label_tiles, count=1, seed=12), tmp_path / "other").out
    a, b = (np.asarray(Image.open(root / "images/a-000.png")) for root in (whole, other))
    assert np.abs(a.astype(int) - b).mean() > 1


def test_reject_below_drops_and_counts(tmp_path: Path, engine: Any, label_tiles: Path) -> None:
    """--reject-below drops exactly the images under the threshold (no PNG, no mask) and says how many."""
    plan = plan_pairs(label_tiles, count=1, seed=5)
    kept_all = make(engine, plan, tmp_path / "all").out
    ratios = {
        json.loads(line)["file_name"]: json.loads(line)["checks"]["red_gt_green"]
        for line in (kept_all / "metadata.jsonl").read_text().splitlines()
    }
    threshold = float(np.median(list(ratios.values())))
    below = sorted(name for name, value in ratios.items() if value < threshold)
    assert len(below) == 1
    result = make(engine, plan, tmp_path / "some", reject_below={"red_gt_green": threshold})
    out = result.out
    assert result.rejected == len(below) and result.card["counts"]["rejected"] == len(below)
    kept = sorted(p.relative_to(out).as_posix() for p in (out / "images").glob("*.png"))
    assert kept == sorted(set(ratios) - set(below))
    assert len(list((out / "masks").glob("*.tif"))) == 2 - len(below)
    reasons = [r["reason"] for r in result.card["rejected"]]
    assert all(r.startswith("rejected: red_gt_green") and f"< {threshold:g}" in r for r in reasons)
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2 - len(below)


# --------------------------------------------------------------------------------------------- bad input


def _float_labels(folder: Path) -> Path:
    folder.mkdir()
    tifffile.imwrite(
        folder / "a.tif", np.full((64, 64), 0.5, np.float32), resolution=(4e4, 4e4), resolutionunit="CENTIMETER"
    )
    return folder


def _mixed(folder: Path) -> Path:
    folder.mkdir()
    for name, mpp in (("a", 0.25), ("b", 0.5)):
        tifffile.imwrite(
            folder / f"{name}.tif",
            np.eye(64, dtype=np.uint16),
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
    return folder


def _no_images(folder: Path) -> Path:
    folder.mkdir()
    (folder / "readme.txt").write_text("not a mask")
    return folder


def _png_mask(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    Image.fromarray(np.eye(64, dtype=np.uint8)).save(folder / "a.png")
    return folder


def _csv(text: str) -> Any:
    def write(path: Path) -> Path:
        path = path.with_suffix(".csv")
        path.write_text(text)
        return path

    return write


BAD = {  # name: (how to make the input, extra arguments, what the one line says)
    "empty prompt file": (_csv("class,prompt\n\n"), ["--prompts"], "holds no prompts"),
    "class with no prompt": (_csv("a,nuclei\nb,\n"), ["--prompts"], "class 'b' has no prompt"),
    "labels folder without images": (_no_images, ["--labels"], "no label images in this folder"),
    "mixed pixel sizes": (_mixed, ["--labels"], "mixed pixel sizes (a.tif 0.25 µm/px, b.tif 0.5 µm/px)"),
    "masks not integer labels": (_float_labels, ["--labels"], "masks must be integer instance labels"),
    "PNG mask without --mpp": (_png_mask, ["--labels"], "has no pixel size; pass --mpp"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_the_model(
    case: str, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_crafts.model.engine as engine_module

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine_module, "get_engine", no_model)
    build, flag, said = BAD[case]
    path = build(tmp_path / "input")
    before = tree(tmp_path)
    code, _, err = run_cli(["synth", tmp_path / "out", "--model", tiny_model, *flag, path, *FAST], capsys)
    assert code == 2 and said in one_line(err), err
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--count", "0"], "--count 0: give at least 1"),
        (["--reject-below", "H_ratio=2"], "--reject-below H_ratio needs masks (--labels)"),
        (["--reject-below", "sharpness=2"], "--reject-below sharpness=2: write CHECK=VALUE"),
    ],
)
def test_bad_values_are_one_line(
    args: list[str], said: str, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["synth", tmp_path / "out", "--model", tiny_model, "--prompts", "presets", *args], capsys)
    assert code == 2 and said in one_line(err)
    assert not (tmp_path / "out").exists()


def test_output_inside_an_input_is_refused(
    tmp_path: Path, tiny_model: Path, label_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(tmp_path)
    code, _, err = run_cli(
        ["synth", label_tiles / "out", "--model", tiny_model, "--labels", label_tiles, *FAST], capsys
    )
    assert code == 2 and "lies inside the input" in one_line(err)
    assert tree(tmp_path) == before


def test_existing_output_and_resume_of_other_settings(
    tmp_path: Path, engine: Any, label_tiles: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing dataset is never replaced without --overwrite, and --resume goes on only with the same plan."""
    out = make(engine, plan_pairs(label_tiles, count=1), tmp_path / "set").out
    before = tree(out)
    code, _, err = run_cli(["synth", out, "--model", tiny_model, "--labels", label_tiles, *FAST], capsys)
    assert code == 2 and "already exists: pass --resume to continue it" in one_line(err)
    code, _, err = run_cli(
        ["synth", out, "--model", tiny_model, "--labels", label_tiles, "--count", "3", "--resume", *FAST], capsys
    )
    assert code == 2 and "was started with other" in one_line(err)
    assert tree(out) == before


def test_on_a_dask_cluster_the_dataset_is_the_same(tmp_path: Path, tiny_model: Path, label_tiles: Path) -> None:
    """synthesize_distributed (what --workers runs), here on an in-process cluster: every image made once, the
    manifest in plan order, the card complete; run again on the finished dataset it makes nothing."""
    from distributed import Client

    from napari_crafts._generators import run
    from napari_crafts.synth.run import synthesize_distributed

    plan = plan_pairs(label_tiles, count=1, seed=2)
    state = dataset_state(plan, SETTINGS, "tiny", reject_below={}, watermark=True, tissue="all", threads=1)
    out = check_dataset_output(tmp_path / "set", state, inputs=plan.inputs)
    created = start_dataset(out, state)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:

        def again() -> Any:
            return run(
                synthesize_distributed(
                    client, str(tiny_model), plan, out, SETTINGS, created=created, tissue="all", threads=1
                )
            )

        result = again()
        lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert [line["file_name"] for line in lines] == ["images/a-000.png", "images/b-000.png"]
        assert all((out / line["file_name"]).is_file() and (out / line["mask_file_name"]).is_file() for line in lines)
        assert result.kept == 2 and len(result.card["model"]["weights_sha256"]) == 64
        before = tree(out)
        assert again().resumed == 2
    assert tree(out) == before
