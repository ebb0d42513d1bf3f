"""The output rule: what a napari-crafts command may write, and what ``--overwrite`` may delete.

Every command that writes (generate, demo, evaluate --csv/--json, tiny-model, pairs, train, check) calls
:func:`check_output` for each output path before it starts any work:

- an output may never be one of the command's inputs, lie inside one, or hold one (paths are compared after
  resolving ``~``, relative parts and symbolic links); nor may it lie inside the installed package (its bundled
  demo model and data are inputs of every command);
- an existing output is refused unless ``overwrite`` is set, and even then only replaced when it is an output
  this tool made, of the same kind, recognised by its own metadata (:func:`output_kind`), and holding nothing
  else (:func:`foreign_files`: a folder or store of ours into which someone put a file is left alone):

  =========  ==============================================================================================
  ome-zarr   zarr attributes hold our provenance record (an object under the key ``napari_crafts``)
  ome-tiff   an OME MapAnnotation in the namespace ``napari-crafts/provenance``
  png        a PNG text chunk ``napari_crafts`` holding a JSON object
  json       a provenance record (``"generator": "napari-crafts"``), or an object whose values each carry
             ``"generator": "napari-crafts …"`` (a results file, one entry per row)
  csv        a header with a ``generator`` column whose first row reads ``napari-crafts …``
  folder     a folder holding the marker file ``.napari-crafts-output.json`` (:func:`mark_folder`),
             e.g. a model, a training set; the marker lists what the command writes there (``contents``)
  =========  ==============================================================================================

What a folder or store of ours may hold is exact: an OME-Zarr store the names of :data:`OME_ZARR_CONTENTS`
(zarr v2 metadata, numbered levels and chunks, our resume markers and private tile store), a marked folder
the patterns its marker lists. Anything else at an output path is refused with a message that names it.
:func:`remove_output` is the only place that deletes an earlier output, and checks the same rule again just
before it does (the output may have changed since :func:`check_output`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..provenance import UNREADABLE, package_version, read_json_file, read_record

GENERATOR = "napari-crafts"
#: The file that marks a folder as written by napari-crafts (models, training sets, demo output, …).
FOLDER_MARKER = ".napari-crafts-output.json"
#: The ``generator`` column/field of CSV and JSON results we write.
GENERATOR_FIELD = "generator"
#: Private parts of our OME-Zarr stores: the resume markers (``export.ome_zarr``), and the whole-slide run's tile
#: store (``wsi.job``: itself such a store, plus the empty-tile scan's cache).
PROGRESS_GROUP = "_napari_crafts_progress"
TILE_STORE = "_napari_crafts_tiles"
EMPTY_MASK = "empty_tiles.npy"
#: A path segment that is a decimal number (a level, a chunk index) in :data:`OME_ZARR_CONTENTS`.
NUMBER = "<n>"


def _store_contents(prefix: str = "") -> tuple[str, ...]:
    """A zarr v2 store of 3-D (c, y, x) levels with "/" chunk keys, and its 2-D marker arrays."""
    node = (".zgroup", ".zattrs", "<n>/.zarray", "<n>/.zattrs")
    return tuple(prefix + p for p in (*node, "<n>/<n>/<n>/<n>", *(f"{PROGRESS_GROUP}/{n}" for n in node),
                                      f"{PROGRESS_GROUP}/<n>/<n>/<n>"))


#: Everything an OME-Zarr store of ours may hold (patterns as :func:`mark_folder`'s, ``<n>`` a number); zarr's
#: temporary files (``<name>.<32 hex>.partial``) of a write cut short count as the file they stand for.
OME_ZARR_CONTENTS = (*_store_contents(), *_store_contents(TILE_STORE + "/"), f"{TILE_STORE}/{EMPTY_MASK}",
                     f"{TILE_STORE}/{EMPTY_MASK}.tmp.npy")
KINDS = ("ome-zarr", "ome-tiff", "png", "json", "csv", "folder")
_NAMES = {"ome-zarr": "OME-Zarr image", "ome-tiff": "OME-TIFF", "png": "PNG", "json": "JSON file",
          "csv": "CSV file", "folder": "output folder"}


class OutputError(ValueError):
    """An output path that may not be written; the message names it and says what to do."""


class OutputExists(OutputError, FileExistsError):
    """The output already exists and ``--overwrite`` was not given."""


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it came from) is a full disk or quota: free space, then resume."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err):  # libraries that wrap the OSError in their own (safetensors)
            return True
        err = err.__cause__ or err.__context__
    return False


def generator_tag() -> str:
    """What our CSV/JSON results carry in their ``generator`` field: ``napari-crafts <version>``."""
    return f"{GENERATOR} {package_version()}"


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, ``~`` expanded, symbolic links and ``..`` resolved (where they exist)."""
    return Path(path).expanduser().resolve()


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def package_folder() -> Path:
    """The installed ``napari_crafts`` package (its bundled demo model and data): never an output."""
    return Path(__file__).resolve().parents[1]


def check_output(path: str | os.PathLike[str], *, kind: str, inputs: Iterable[str | os.PathLike[str] | None] = (),
                 overwrite: bool = False, resume: bool = False, flag: str = "output", advice: str = "") -> Path:
    """Check that ``path`` may be written as an output of ``kind``; return it resolved (write there).

    ``inputs`` are the paths the command reads (None entries are skipped); ``flag`` names the output in
    messages ("output", "--tiff", "--csv"); ``advice`` is added to the "already exists" message (e.g. "pass
    --resume to continue it"). Raises :class:`OutputExists` when it exists and neither ``overwrite`` nor
    ``resume`` is set, and :class:`OutputError` when it is (in, or holds) an input or the package, or exists but
    is not our output of this kind, or (``overwrite``) is ours but holds files we did not write. ``resume``
    continues an output of ours in place: files of others in it are not deleted, so they do not stop it.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown output kind {kind!r}; one of {KINDS}.")
    target = resolved(path)
    for source in (resolved(i) for i in inputs if i is not None):
        if target == source:
            raise OutputError(f"{flag} {target} is also an input of this command: writing it would destroy the "
                              "input; choose another output path.")
        if _contains(source, target):
            raise OutputError(f"{flag} {target} lies inside the input {source}: choose an output path outside it.")
        if _contains(target, source):
            raise OutputError(f"{flag} {target} holds the input {source}: choose an output path that does not "
                              "contain it.")
    package = package_folder()
    if _contains(package, target) or _contains(target, package):
        where = "lies inside" if _contains(package, target) else "holds"
        raise OutputError(f"{flag} {target} {where} the installed napari-crafts package ({package}): choose an "
                          "output path outside it.")
    if not os.path.lexists(target):
        return target
    if not (overwrite or resume):
        extra = f"{advice}, or " if advice else ""
        raise OutputExists(f"{flag} {target} already exists: {extra}use --overwrite to replace it.")
    found = output_kind(target)
    if found is None:
        what = "folder" if target.is_dir() else "file"
        raise OutputError(f"{flag} {target} is a {what} that napari-crafts did not write (it carries no "
                          "napari-crafts marker): not replacing it; choose another path, or move it away yourself.")
    if found != kind:
        raise OutputError(f"{flag} {target} is a napari-crafts {_NAMES[found]}, not a {_NAMES[kind]}: not replacing "
                          "it; choose another path.")
    if not resume and (foreign := foreign_files(target, kind=kind)):
        raise OutputError(f"{flag} {target} holds files napari-crafts did not write there ({_shown(target, foreign)}): "
                          "not replacing it; move them out, or choose another path.")
    return target


def _shown(root: Path, files: list[Path]) -> str:
    """'a/b.csv' or 'a/b.csv, c.txt, d.txt and 4 more' (paths relative to ``root``)."""
    names = [f.relative_to(root).as_posix() for f in files]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def remove_output(path: str | os.PathLike[str], *, kind: str) -> None:
    """Delete an earlier output of ``kind`` at ``path``, after checking again that napari-crafts wrote it."""
    target = Path(path).expanduser().absolute()
    if not os.path.lexists(target):
        return
    check_removable(target, kind=kind)
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()


def check_removable(path: str | os.PathLike[str], *, kind: str) -> None:
    """Raise :class:`OutputError` unless ``path`` is an output of ``kind`` that napari-crafts wrote, holding
    nothing else (:func:`foreign_files`)."""
    target = Path(path).expanduser().absolute()
    found = output_kind(target)
    if found != kind or target.is_symlink():
        raise OutputError(f"{target} is not a napari-crafts {_NAMES.get(kind, kind)}: not deleting it; choose "
                          "another path, or move it away yourself.")
    if foreign := foreign_files(target, kind=kind):
        raise OutputError(f"{target} holds files napari-crafts did not write there ({_shown(target, foreign)}): not "
                          "deleting it; move them out, or choose another path.")


def claim_folder(path: str | os.PathLike[str], what: str, contents: Iterable[str]) -> Path:
    """Claim the folder a command writes, after ``check_output`` allowed it: an earlier output of ours there is
    replaced (checked again: only ours, holding nothing else), and the new folder is marked first
    (``mark_folder``). Every command that writes a folder (pairs, train, synth, tiny-model) claims it so."""
    remove_output(path, kind="folder")
    mark_folder(path, what, contents)
    return Path(path)


def mark_folder(path: str | os.PathLike[str], what: str, contents: Iterable[str]) -> None:
    """Mark a folder we create as ours (write it first, so a run cut short still leaves a recognisable folder).

    ``contents`` are the paths the command writes inside it, as patterns relative to the folder ("unet/*",
    "*/he/*.png"; ``*`` stays within one level, ``**`` spans any number); :func:`remove_output` deletes the
    folder only while everything in it matches one of them.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    record = {GENERATOR_FIELD: GENERATOR, "version": package_version(), "what": what, "contents": list(contents)}
    (folder / FOLDER_MARKER).write_text(json.dumps(record, indent=2) + "\n")


def foreign_files(path: str | os.PathLike[str], *, kind: str = "folder") -> list[Path]:
    """Files and links inside an output of ours that it may not hold (all of them for an unmarked folder).

    A marked folder may hold what its marker's ``contents`` list, an OME-Zarr store what
    :data:`OME_ZARR_CONTENTS` lists; a file output holds nothing (an empty list).
    """
    root = Path(path)
    if kind == "ome-zarr":
        patterns: list[str] = list(OME_ZARR_CONTENTS)
    elif kind == "folder":
        marker = read_json_file(root / FOLDER_MARKER)
        patterns = [str(c) for c in marker.get("contents", [])] if isinstance(marker, dict) else []
    else:
        return []
    if root.is_symlink() or not root.is_dir():
        return []
    found = []
    for f in sorted(root.rglob("*")):
        if f.is_dir() and not f.is_symlink():
            continue
        rel = f.relative_to(root).as_posix()
        if kind == "folder" and rel == FOLDER_MARKER and not f.is_symlink():
            continue
        if kind == "ome-zarr":
            rel = ZARR_TEMPORARY.sub("", rel)  # zarr's temporary file of a write cut short
        if f.is_symlink() or not any(_matches(rel.split("/"), c.split("/")) for c in patterns):
            found.append(f)
    return found


#: The end of the name of zarr's temporary file while it writes one (``LocalStore``: ``<name>.<uuid4 hex>.partial``).
ZARR_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_private(store: str | os.PathLike[str], name: str = TILE_STORE) -> None:
    """Delete the private part ``name`` of an OME-Zarr store of ours: the files :data:`OME_ZARR_CONTENTS` lists
    there, then the folders left empty; a file anyone else put there stays (and so do the folders holding it)."""
    root = Path(store)
    part = root / name
    if part.is_symlink() or not part.is_dir():
        return
    foreign = set(foreign_files(root, kind="ome-zarr"))
    for f in sorted(part.rglob("*"), reverse=True):
        if f.is_dir() and not f.is_symlink():
            with contextlib.suppress(OSError):  # not empty: it holds a file of someone else's
                f.rmdir()
        elif f not in foreign:
            f.unlink()
    with contextlib.suppress(OSError):
        part.rmdir()


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Path segments against pattern segments (fnmatch per segment; ``**`` for any number of segments, ``<n>``
    for a decimal number)."""
    from fnmatch import fnmatchcase

    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    if not parts:
        return False
    head = parts[0].isdecimal() and parts[0].isascii() if pattern[0] == NUMBER else fnmatchcase(parts[0], pattern[0])
    return head and _matches(parts[1:], pattern[1:])


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an output napari-crafts wrote (see :func:`output_kind`)."""
    return output_kind(path) is not None


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of napari-crafts output at ``path`` (one of ``KINDS``), or None when it is not ours.

    Read from the content, never from the name; a symbolic link is never ours (we do not write links).
    """
    p = Path(path)
    if p.is_symlink() or not p.exists():
        return None
    if p.is_dir():
        if _zarr_is_ours(p):
            return "ome-zarr"
        return "folder" if _marker_is_ours(p / FOLDER_MARKER) else None
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "ome-tiff" if _tiff_is_ours(p) else None
    if head == b"\x89PNG\r\n\x1a\n":
        return "png" if _png_is_ours(p) else None
    if _json_is_ours(p):
        return "json"
    return "csv" if _csv_is_ours(p) else None


# --------------------------------------------------------------------------------------------- recognisers


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and value.get("generator") == GENERATOR


def _zarr_is_ours(folder: Path) -> bool:
    return read_record(folder) is not None


def _marker_is_ours(marker: Path) -> bool:
    data = read_json_file(marker)
    return isinstance(data, dict) and data.get(GENERATOR_FIELD) == GENERATOR


def _tiff_is_ours(path: Path) -> bool:
    """An OME MapAnnotation in our namespace whose key ``napari_crafts`` holds a JSON object (parsed, not searched
    for as text: a description that merely mentions the namespace is not ours)."""
    return read_record(path) is not None


def _png_is_ours(path: Path) -> bool:
    """A text chunk ``napari_crafts`` that holds a JSON object."""
    record = read_record(path)
    return record is not None and record != UNREADABLE


def _json_is_ours(path: Path) -> bool:
    data = read_json_file(path)
    if _is_record(data) or (isinstance(data, dict) and _marker_is_value(data.get(GENERATOR_FIELD))):
        return True
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and _marker_is_value(v.get(GENERATOR_FIELD)) for v in data.values()))


def _marker_is_value(value: Any) -> bool:
    return isinstance(value, str) and (value == GENERATOR or value.startswith(GENERATOR + " "))


def _csv_is_ours(path: Path) -> bool:
    import csv

    try:
        if path.stat().st_size > 64 * 2**20:  # results are small; a large file is not one of ours
            return False
        with open(path, newline="", encoding="utf-8") as fh:
            rows = csv.DictReader(fh)
            first = next(rows, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return first is not None and _marker_is_value(first.get(GENERATOR_FIELD))
