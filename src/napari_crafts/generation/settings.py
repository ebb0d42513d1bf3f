"""Generation settings, each declared once: default, valid range, CLI flag, widget label and help text.

``GenerationSettings`` is a frozen dataclass whose every field carries its ``Setting`` (``setting(...)``): the
dataclass checks its values against it, the CLI makes its arguments from it (``cli.settings``) and the docks their
spin boxes (``_widgets._controls.setting_box``), so the three can no longer disagree on a range or a name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ..model.card import CRAFTS_MASK_PROMPT


class SettingsError(ValueError):
    """A generation setting out of range: names the field (``field``), the value and what is valid."""

    def __init__(self, field: str, value: Any, valid: str) -> None:
        self.field, self.value, self.valid = field, value, valid
        super().__init__(f"{field} must be {valid}, got {value!r}.")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (dask) with its three fields
        return SettingsError, (self.field, self.value, self.valid)


@dataclass(frozen=True)
class Setting:
    """One generation setting as every surface shows it.

    ``flag``: its CLI flag (None: not on the command line); ``label``: the dock's label ("": not in the docks);
    ``help``: the CLI help and the dock's tooltip; ``lo``/``hi``: the valid range of a number (inclusive; ``lo``
    excluded when ``low_open``); ``step``: a spin box's increment; ``metavar``: the CLI's name for the value.
    """

    flag: str | None
    label: str
    help: str
    lo: float | None = None
    hi: float | None = None
    low_open: bool = False
    step: float = 1
    metavar: str | None = None

    def valid(self, integer: bool) -> str:
        """What is valid, in words ("an integer from 1 to 1000")."""
        if integer:  # lo and hi are ints here (2**63 - 1 as a float would be off by one)
            return f"an integer from {self.lo} to {self.hi}"
        return f"a number {'>' if self.low_open else '≥'} {self.lo:g} and ≤ {self.hi:g}"

    def check(self, name: str, value: Any, integer: bool) -> None:
        """Raise SettingsError when ``value`` is outside the range (NaN and infinities never are valid)."""
        if self.lo is None or self.hi is None:
            return
        if integer:
            whole = not isinstance(value, bool) and isinstance(value, numbers.Integral)
            ok = whole and self.lo <= int(value) <= self.hi
        else:
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            x = float(value) if real else math.nan
            ok = math.isfinite(x) and (self.lo < x if self.low_open else self.lo <= x) and x <= self.hi
        if not ok:
            raise SettingsError(name, value, self.valid(integer))


def setting(default: Any, flag: str | None, label: str, help: str, **kw: Any) -> Any:
    """A dataclass field with ``default`` that carries its ``Setting`` (``SETTINGS``)."""
    return field(default=default, metadata={"setting": Setting(flag, label, help, **kw)})


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str = setting(CRAFTS_MASK_PROMPT, "--prompt", "prompt",
                          "Text prompt (CLIP reads at most 77 tokens; a longer prompt is cut, and you are told).")
    negative_prompt: str = setting("", "--negative-prompt", "negative prompt",
                                   "What to steer away from (used with guidance > 1).")
    seed: int = setting(0, "--seed", "seed", "Same inputs + same seed = same pixels; each tile's noise derives "
                        "from the seed and its slide position.", lo=0, hi=2**63 - 1)
    steps: int = setting(50, "--steps", "steps", "Denoising steps (the paper uses 50; the lcm scheduler: 2-8, at "
                         "most 50).", lo=1, hi=1000)
    guidance_scale: float = setting(7.5, "--guidance", "guidance (CFG)", "Classifier-free guidance scale (the paper "
                                    "uses 7.5; 1 = none).", lo=0.0, hi=100.0, step=0.5)
    controlnet_scale: float = setting(1.0, None, "", "How strongly the ControlNet steers (1 = as trained).",
                                      lo=0.0, hi=10.0, step=0.1)
    scheduler: str = setting("default", "--scheduler", "scheduler", "'default' is the model's own scheduler "
                             "(exact); ddim, unipc and dpm++ take fewer steps (fast mode: approximate, recorded in the "
                             "provenance); lcm runs the model's few-step student (train --stage distill): 2-8 steps, "
                             "no CFG.")
    tile_size: int = setting(512, "--tile-size", "tile size", "Tile side in the model's pixels (the paper's models "
                             "use 512).", lo=32, hi=4096, step=64)
    overlap: int = setting(64, "--overlap", "overlap", "Overlap of neighbouring tiles in the model's pixels, "
                           "blended to hide seams (at most half the tile).", lo=0, hi=2048, step=8)
    batch_size: int = setting(0, "--batch", "batch (0 = auto)", "Tiles per model call. 0 = auto: as many as fit "
                              "in free GPU memory (measured once per tile size; 1 on CPU, where batching does not "
                              "pay). Halved automatically when the GPU runs out of memory.", lo=0, hi=256)
    skip_empty: bool = setting(True, None, "", "Tiles without tissue are glass, never sent to the model.")
    controlnet: str | None = setting(None, "--controlnet", "ControlNet", "ControlNet folder or hub id (empty: the "
                                     "model folder's own controlnet/).")
    cfg_cutoff: float = setting(1.0, "--cfg-cutoff", "CFG cut-off", "1 = guidance on every step "
                                "(exact). Below 1: guidance stops after that fraction of the steps, which skips half "
                                "the work for the rest (fast mode: approximate, recorded in the provenance).",
                                lo=0.0, hi=1.0, low_open=True, step=0.05, metavar="FRACTION")
    cache_interval: int = setting(1, "--cache-interval", "cache interval", "1 = the full network on every "
                                  "step (exact). N > 1: the full UNet every N steps and only its shallow layers in "
                                  "between, reusing the deep features (DeepCache; fast mode: approximate, recorded "
                                  "in the provenance).", lo=1, hi=1000, metavar="N")

    def __post_init__(self) -> None:
        """Refuse values no run can use (SettingsError names the field, the value and the valid range)."""
        from ..model.engine import FEW_STEP_SCHEDULER, LCM_MAX_STEPS, SCHEDULERS

        for name, declared in SETTINGS.items():
            declared.check(name, getattr(self, name), integer=INTEGER[name])
        if self.overlap > self.tile_size // 2:
            half = self.tile_size // 2
            raise SettingsError("overlap", self.overlap, f"an integer from 0 to half the tile size ({half})")
        if self.scheduler not in SCHEDULERS:
            raise SettingsError("scheduler", self.scheduler, "one of " + ", ".join(SCHEDULERS))
        if self.scheduler == FEW_STEP_SCHEDULER and self.steps > LCM_MAX_STEPS:
            raise SettingsError("steps", self.steps, f"an integer from 1 to {LCM_MAX_STEPS} with the lcm scheduler "
                                "(the student's schedule has 50 steps; 2-8 is its range)")
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise SettingsError(name, getattr(self, name), "text")

    @property
    def exact(self) -> bool:
        """True when this is the model's own 50-step-style math; False for the fast, approximate modes."""
        return self.scheduler == "default" and self.cfg_cutoff >= 1.0 and self.cache_interval <= 1

    def record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exact": self.exact, "approximation": self.approximation}

    @property
    def approximation(self) -> str | None:
        """What makes these settings approximate, in words (None when exact)."""
        if self.exact:
            return None
        if self.scheduler == "lcm":  # the model's few-step student: its guidance is folded in, no CFG at run time
            return (f"approximate (fast mode): the model's few-step student (LCM), {self.steps} steps, no "
                    "classifier-free guidance at run time (the student's is folded in)")
        reuse = f", full UNet every {self.cache_interval} steps (feature reuse)" if self.cache_interval > 1 else ""
        return (f"approximate (fast mode): scheduler '{self.scheduler}', CFG for the first {self.cfg_cutoff:.0%} "
                f"of the steps{reuse}")


#: Every setting's declaration, by field name (the order of the dataclass).
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(GenerationSettings)}
#: Whether a setting is a whole number (from its default's type).
INTEGER: dict[str, bool] = {name: type(getattr(GenerationSettings, name)) is int for name in SETTINGS}
