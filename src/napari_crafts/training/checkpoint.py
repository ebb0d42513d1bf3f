"""Training checkpoints in safetensors: trainable weights, EMA weights and optimizer state, written atomically.

A checkpoint is a folder ``checkpoints/step-000500/`` holding ``state.safetensors`` (tensors) and
``state.json`` (step, settings, the optimizer's hyperparameters, the EMA's counters), plus, beside them, a
full model folder ``model/`` that the engine loads for validation. It is written into a temporary folder and
renamed, so a checkpoint folder either is complete or does not exist: a run killed at any moment resumes
from the last complete one. Randomness is a function of (seed, step) and batches of the step number
(``data.batch_indices``), so nothing else is needed to resume exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder`` as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE_JSON).is_file() and (p / STATE_TENSORS).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, JSON-able rest) of a torch optimizer's state_dict, keyed by parameter index."""
    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if hasattr(value, "shape"):
                tensors[f"optimizer.{index}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: Any, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, step: int, *, params: dict[str, Any], optimizer: Any, ema: Any | None,
                    info: dict[str, Any], write_model: Any | None = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``folder`` (atomically) and keep only the newest ``keep`` ones.

    ``params``: name → tensor of the trainable weights; ``write_model(path)`` writes the model folder.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=folder))
    try:
        tensors = {f"param.{k}": v.detach().clone().contiguous() for k, v in params.items()}
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        ema_meta = None
        if ema is not None:
            for i, shadow in enumerate(ema.shadow_params):
                tensors[f"ema.{i}"] = shadow.detach().clone().contiguous()
            ema_meta = {"optimization_step": ema.optimization_step, "decay": ema.decay}
        save_file(tensors, tmp / STATE_TENSORS)
        if write_model is not None:
            write_model(tmp / "model")
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "optimizer": opt_meta, "ema": ema_meta, **info},
                                                 indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, *, params: dict[str, Any], optimizer: Any, ema: Any | None) -> dict[str, Any]:
    """Load a checkpoint into ``params`` (in place), the optimizer and the EMA; return its state.json."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(path / STATE_TENSORS)
    meta = json.loads((path / STATE_JSON).read_text())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
    load_optimizer(optimizer, tensors, meta["optimizer"])
    if ema is not None:
        if meta.get("ema") is None:
            raise ValueError(f"{path} was written without EMA weights: resume without --ema, or start again.")
        with torch.no_grad():
            for i, shadow in enumerate(ema.shadow_params):
                shadow.copy_(tensors[f"ema.{i}"])
        ema.optimization_step = meta["ema"]["optimization_step"]
    return meta
