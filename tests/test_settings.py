"""Each generation setting is declared once (generation.settings): the dataclass's checks, the CLI's flags and the
docks' boxes come from that declaration, so they cannot disagree."""

from __future__ import annotations

from typing import Any

import pytest

from napari_crafts.cli import build_parser
from napari_crafts.cli._errors import UsageError
from napari_crafts.cli._settings import SETTINGS_FLAGS, settings_from_args
from napari_crafts.generation.settings import INTEGER, SETTINGS, GenerationSettings, SettingsError

RANGED = [name for name, s in SETTINGS.items() if s.lo is not None]


@pytest.mark.parametrize("name", RANGED)
def test_a_ranged_setting_takes_its_ends_and_refuses_past_them_naming_its_flag(name: str) -> None:
    s = SETTINGS[name]
    base = {"tile_size": 4096, "overlap": 0}  # so that any overlap and any tile size are possible together
    lo = s.lo + s.step if s.low_open else s.lo  # type: ignore[operator]
    for value in (lo, s.hi):
        value = int(value) if INTEGER[name] else value  # type: ignore[arg-type]
        assert getattr(GenerationSettings(**{**base, name: value}), name) == value
    past = s.hi + 1 if INTEGER[name] else s.hi * 1.5  # type: ignore[operator]
    with pytest.raises(SettingsError) as err:
        GenerationSettings(**{**base, name: past})
    assert (err.value.field, err.value.valid) == (name, s.valid(INTEGER[name]))
    if s.flag is not None:
        with pytest.raises(UsageError, match=f"^{s.flag} {past}: must be {s.valid(INTEGER[name])}"):
            settings_from_args(**{**base, name: past})


def test_the_cli_flags_are_the_declared_ones_with_the_declared_help() -> None:
    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]  # type: ignore[union-attr]
    actions = {a.option_strings[0]: a for a in generate._actions if a.option_strings}
    for name, flag in SETTINGS_FLAGS.items():
        assert flag in actions, flag
        assert actions[flag].help.startswith(SETTINGS[name].help), flag
    assert SETTINGS_FLAGS["guidance_scale"] == "--guidance" and SETTINGS_FLAGS["batch_size"] == "--batch"


def test_the_docks_boxes_are_the_declared_ones(qtbot: Any) -> None:
    from napari_crafts._widgets._controls import GenerationControls

    controls = GenerationControls()
    boxes = {"prompt": controls._prompt, "negative_prompt": controls._negative, "seed": controls._seed,
             "steps": controls._steps, "guidance_scale": controls._cfg, "scheduler": controls._scheduler,
             "tile_size": controls._tile, "overlap": controls._overlap, "batch_size": controls._batch,
             "controlnet": controls._controlnet, "cfg_cutoff": controls._cfg_cutoff,
             "cache_interval": controls._cache_interval}
    for name, box in boxes.items():
        s = SETTINGS[name]
        assert (box.label, box.tooltip) == (s.label, s.help), name
        if s.lo is not None and name != "prompt":
            lo = s.lo + s.step if s.low_open else s.lo  # type: ignore[operator]
            assert (box.min, box.max) == (lo, min(s.hi, 2**31 - 1)), name  # type: ignore[type-var]
    assert controls.settings() == GenerationSettings(prompt=controls.settings().prompt)  # the declared defaults


def test_choosing_the_few_step_student_in_a_dock_sets_its_steps(qtbot: Any) -> None:
    from napari_crafts._widgets._controls import GenerationControls
    from napari_crafts.model.engine import LCM_DEFAULT_STEPS

    controls = GenerationControls()
    assert controls._steps.value == 50
    controls._scheduler.value = "lcm"
    assert controls._steps.value == LCM_DEFAULT_STEPS and controls.settings().scheduler == "lcm"
    assert controls.approximate_text.startswith("Settings are approximate (fast mode): the model's few-step student")
