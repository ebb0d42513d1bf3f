"""Command-line arguments of the generation settings, made from their declarations (``generation.settings``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..generation.settings import INTEGER, SETTINGS, GenerationSettings, SettingsError
from ._errors import UsageError

#: The flag of each setting that has one, for messages about out-of-range values.
SETTINGS_FLAGS = {name: s.flag for name, s in SETTINGS.items() if s.flag}


def dest(name: str) -> str:
    """The argparse attribute a setting's flag fills (``--guidance`` → ``guidance``)."""
    flag = SETTINGS[name].flag
    if flag is None:
        raise ValueError(f"{name} has no command-line flag.")
    return flag.lstrip("-").replace("-", "_")


def add_settings(parser: argparse.ArgumentParser, *names: str, notes: dict[str, str] | None = None,
                 **defaults: Any) -> None:
    """Add ``names``' flags to ``parser`` with their declared help; ``defaults`` replace the declared defaults for
    this command (e.g. the demo's 128-px tiles), ``notes`` add to a help text. A number is parsed as its type and
    checked (with the flag's name) when the settings are made (``settings_from_args``)."""
    from ..model.engine import SCHEDULERS

    fallback = GenerationSettings()
    for name in names:
        s = SETTINGS[name]
        default = defaults.get(name, getattr(fallback, name))
        kind = int if INTEGER[name] else float if isinstance(getattr(fallback, name), float) else str
        shown = "" if default in (None, "") or name == "prompt" else f" (default: {default})"
        note = f" {notes[name]}" if notes and name in notes else ""
        kw: dict[str, Any] = {"default": default, "help": s.help + shown + note, "type": kind}
        if name == "scheduler":
            kw["choices"] = SCHEDULERS
        if s.metavar:
            kw["metavar"] = s.metavar
        parser.add_argument(str(s.flag), **kw)


def settings_from_args(**fields: Any) -> GenerationSettings:
    """GenerationSettings from command-line values; an invalid one is a UsageError naming its flag. ``steps``
    None: the scheduler's default (lcm: ``LCM_DEFAULT_STEPS``; others: ``default_steps``, else the settings')."""
    from ..model.engine import FEW_STEP_SCHEDULER, LCM_DEFAULT_STEPS

    default_steps = fields.pop("default_steps", GenerationSettings().steps)
    if fields.get("steps") is None:
        fields["steps"] = LCM_DEFAULT_STEPS if fields.get("scheduler") == FEW_STEP_SCHEDULER else default_steps
    try:
        return GenerationSettings(**fields)
    except SettingsError as err:
        flag = SETTINGS_FLAGS.get(err.field, err.field)
        raise UsageError(f"{flag} {err.value}: must be {err.valid}.") from None


def settings_of(args: argparse.Namespace, *names: str, **fields: Any) -> GenerationSettings:
    """``settings_from_args`` with ``names`` read from ``args`` (their flags' attributes) and ``fields`` added."""
    return settings_from_args(**{name: getattr(args, dest(name)) for name in names}, **fields)
