"""The one atomic write: a file appears whole or not at all (Qt-free, no dependencies)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, unique: bool = False) -> Iterator[Path]:
    """Yield a partial file beside ``path`` to write; when the block ends without an error it replaces ``path`` in
    one step, so a reader, a kill or a full disk never leaves half a file there; on an error it is removed and
    ``path`` is left as it was.

    The partial file is ``<name>.partial`` (what our output folders list as theirs, ``export.safety``);
    ``unique``: ``.<name>.<pid>.partial`` instead, hidden and per process, for files in a folder that is not ours
    (the recent-models list, a results table beside the user's files).
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial" if unique else f"{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
