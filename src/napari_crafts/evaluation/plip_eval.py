"""The PLIP part of an evaluation: load the CLIP scorer, embed tiles, fill PLIP-I, PLIP-FID and PLIP-T.

torch and transformers load only when a CLIP model is asked for (:func:`load_scorer`). :class:`EvalProgress`,
yielded per embedded batch here and per scored tile by :mod:`.scoring`, is defined here, the lower
of the two layers.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plip as P
from .inputs import EvaluationError
from .metrics import EvaluationResult, TileResult

#: At most this many tiles of an image pair are embedded for the PLIP metrics (chosen evenly, deterministic).
MAX_EMBED_TILES = 256
#: ``--clip-model`` values that mean "no PLIP metrics".
NO_MODEL = ("", "none")
CLI_ADVICE = "pass a local folder with --clip-model PATH, or --clip-model none to skip the PLIP metrics"


@dataclass(frozen=True)
class EvalProgress:
    """One step of an evaluation: a tile scored (``stage`` "tiles") or a batch embedded ("embeddings")."""

    stage: str
    done: int
    total: int
    tile: TileResult | None = None


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def load_scorer(model: str | Path | None, *, device: str | None = None,
                advice: str = CLI_ADVICE) -> P.ClipScorer | None:
    """The :class:`plip.ClipScorer` for ``model`` (local folder or hub id), or None for ""/"none".

    A hub id is looked up in the local cache first (no network); then fetched unless the hub is offline
    (``HF_HUB_OFFLINE``). Anything that fails is an :class:`EvaluationError` of one line ending in ``advice``.
    """
    ref = "" if model is None else str(model).strip()
    if ref.lower() in NO_MODEL:
        return None
    path = Path(ref).expanduser()
    if path.exists():
        try:
            return P.ClipScorer(path, device=device)
        except (OSError, ValueError) as err:
            cause = (str(err.__cause__ or err).strip().splitlines() or [""])[0]
            raise EvaluationError(f"Could not load the CLIP model from {path} ({cause}): {advice}.") from None
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise EvaluationError(f"CLIP model '{ref}' not found: it is neither a folder nor a hub id like "
                              f"'{P.PLIP_MODEL_ID}'; {advice}.")
    try:
        return P.ClipScorer(ref, device=device, local_files_only=True)  # cached: no network
    except OSError:
        pass
    if _hub_offline():
        raise EvaluationError(f"CLIP model '{ref}' is not in the local cache and the Hugging Face Hub is offline "
                              f"(HF_HUB_OFFLINE): {advice}.") from None
    try:
        return P.ClipScorer(ref, device=device)
    except OSError:
        raise EvaluationError(f"Could not fetch the CLIP model '{ref}' from the Hugging Face Hub (no connection, "
                              f"or no such model): {advice}.") from None


def _embed(scorer: P.ClipScorer, images: Sequence[np.ndarray], done: int,
           total: int) -> Generator[EvalProgress, None, np.ndarray]:
    parts = [np.empty((0, scorer.dim))]
    for start in range(0, len(images), scorer.batch_size):
        batch = images[start:start + scorer.batch_size]
        parts.append(scorer.image_embeddings(batch))
        yield EvalProgress("embeddings", done + start + len(batch), total)
    return np.concatenate(parts)


def iter_plip(result: EvaluationResult, scorer: P.ClipScorer, generated: Sequence[np.ndarray],
              real: Sequence[np.ndarray], *, prompt: str | None = None,
              allow_rank_deficient: bool = False) -> Generator[EvalProgress, None, EvaluationResult]:
    """Fill ``result``'s PLIP-I, PLIP-FID (enough samples, or ``allow_rank_deficient``) and PLIP-T (a prompt).

    Yields once per embedded batch; what could not be computed stays nan with a note saying why.
    """
    n = len(generated)
    gen_emb = yield from _embed(scorer, generated, 0, 2 * n)
    real_emb = yield from _embed(scorer, real, n, 2 * n)
    result.model = scorer.name
    result.plip_i = P.plip_i(gen_emb, real_emb)
    try:
        result.plip_fid = P.plip_fid(gen_emb, real_emb, allow_rank_deficient=allow_rank_deficient)
    except ValueError as err:
        result.notes.append(f"PLIP-FID not computed: {err} (CLI: more tiles, or --allow-small-fid).")
    if prompt:
        result.plip_t = P.plip_t(gen_emb, scorer.text_embeddings([prompt]))
    else:
        result.notes.append("PLIP-T not computed: it needs the prompt (--prompt).")
    return result


def pick_tiles(tiles: Sequence[TileResult], tile: int, max_tiles: int | None) -> list[TileResult]:
    """At most ``max_tiles`` tiles spread evenly over ``tiles`` (row-major), full-size ones when there are any."""
    full = [t for t in tiles if t.height == tile and t.width == tile]
    pool = full or list(tiles)
    if max_tiles is None or len(pool) <= max_tiles:
        return pool
    return [pool[i] for i in np.linspace(0, len(pool) - 1, max_tiles).round().astype(int)]
