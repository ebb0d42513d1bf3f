"""How every command reports a failure: one line on stderr, the traceback in a log file or with ``--verbose``.

- A user error (:func:`is_user_error`: our own exception types, a ValueError our code raised with a message
  for the user, or a file-system refusal such as a missing file or a full disk) is one line,
  ``napari-crafts <command>: error: <message>``, exit code 2.
- Anything else is a bug or a failure of the machine (torch, CUDA, …): one line naming the error and the log
  file that holds its traceback (``<temp dir>/napari-crafts-logs/``), exit code 1; ``--verbose`` prints the
  traceback too.
- Ctrl-C: one line, exit code 130.

While a command runs, the libraries' advice and noise stay quiet (``quiet_libraries``): transformers' and
diffusers' warnings (e.g. "install accelerate", in this process and in the dask workers it starts), dask's
"Compute Failed" blocks and asyncio's "Task exception was never retrieved"; ``--verbose`` lets them through.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import logging
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Where tracebacks of failed commands are written.
LOG_DIR = Path(tempfile.gettempdir()) / "napari-crafts-logs"
#: File-system errors that are the user's or the machine's situation, not a bug: reported in one line.
USER_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                         errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG})
#: Loggers silenced while a command runs (unless --verbose): dask's task failure blocks, asyncio's leftovers.
NOISY_LOGGERS = ("distributed", "asyncio", "tornado")
#: Environment read by transformers/diffusers when imported (here and in the worker processes we start).
QUIET_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                     "DASK_LOGGING__DISTRIBUTED": "critical", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                     # after Ctrl-C the workers' semaphores are cleaned up by multiprocessing, which says so
                     "PYTHONWARNINGS": "ignore::UserWarning:multiprocessing.resource_tracker"}
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class UsageError(ValueError):
    """A command-line value that cannot be used; the message names the flag, the value and what is valid."""


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``lo`` to ``hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer from {lo} to {hi}")
        return value

    return parse


def bounded_float(lo: float, hi: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``lo`` (excluded when ``low_open``) to ``hi``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (lo < value if low_open else lo <= value) or value > hi:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a number {'>' if low_open else '≥'} {lo:g} "
                                             f"and ≤ {hi:g}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (pixel sizes in µm/px and the like)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching (``--cfg`` is not ``--cfg-cutoff``) and with one-line errors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Our exception types whose message is meant for the user."""
    from ..evaluation.inputs import EvaluationError
    from ..export.ome_zarr import StoreError
    from ..export.safety import OutputError
    from ..generation.conditioning import ConditioningError
    from ..generation.region import GenerationError, SettingsError
    from ..io.geojson import GeoJSONError
    from ..io.slide import SlideError
    from ..model.engine import ModelLoadError

    return (SlideError, GeoJSONError, ModelLoadError, ConditioningError, GenerationError, SettingsError,
            OutputError, StoreError, EvaluationError, UsageError)


def _raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame that raised ``exc`` is napari-crafts code (not torch, numpy, …)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE_DIR)


def is_user_error(exc: BaseException) -> bool:
    """Errors reported in one line: our types, ValueErrors our own code raised, file-system refusals."""
    if isinstance(exc, user_error_types()):
        return True
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        return True
    return isinstance(exc, ValueError) and _raised_by_us(exc)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def write_log(command: str, exc: BaseException) -> Path | None:
    """The traceback of ``exc`` in a new log file (None when it cannot be written)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = LOG_DIR / f"{command}-{stamp}-{os.getpid()}.log"
        path.write_text(f"napari-crafts {command} ({' '.join(sys.argv)})\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return path


def report(command: str, exc: BaseException, *, verbose: bool = False) -> int:
    """Tell the user about ``exc`` (see the module docstring); returns the exit code."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if is_user_error(exc):
        print(f"napari-crafts {command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    log = write_log(command, exc)
    where = "above" if verbose else (f"in {log} (or rerun with --verbose)" if log else "shown with --verbose")
    print(f"napari-crafts {command}: internal error: {type(exc).__name__}: {one_line(exc)}; the traceback is "
          f"{where}; please report it.", file=sys.stderr)
    return 1


@contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Silence the libraries' advice and noise for the duration of a command (see the module docstring)."""
    if verbose:
        yield
        return
    env = {k: v for k, v in QUIET_ENVIRONMENT.items() if k not in os.environ}
    os.environ.update(env)
    # transformers/diffusers read the environment when imported; if they already are, set their loggers
    quiet = {**dict.fromkeys(NOISY_LOGGERS, logging.CRITICAL), "transformers": logging.ERROR,
             "diffusers": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in quiet.items()}
    before = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, level in before.items():
            lg.setLevel(level)
        for key in env:
            os.environ.pop(key, None)


def run_command(command: str, args: argparse.Namespace, body: Callable[[], int | None], *,
                interrupted: str = "") -> int:
    """Run ``body`` as command ``command``: quiet libraries, one-line errors, exit codes 0/1/2/130."""
    verbose = bool(getattr(args, "verbose", False))
    with quiet_libraries(verbose):
        try:
            return int(body() or 0)
        except KeyboardInterrupt:
            print(f"napari-crafts {command}: interrupted{interrupted}", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line (+ a log for unexpected ones)
            return report(command, exc, verbose=verbose)
