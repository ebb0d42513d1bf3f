"""Running the CLI in-process from tests: its exit code, stdout and stderr, and the one line an error must be."""

from __future__ import annotations

import pytest

from napari_crafts.cli import main


def run_cli(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, *, internal: bool = False) -> str:
    """The error as the user sees it: exactly one line, no traceback, and (unless ``internal``, where a bug is
    what is tested) no internal error."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert internal or "internal error" not in err, err
    return err.strip()
