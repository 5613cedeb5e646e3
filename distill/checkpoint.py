"""Atomic training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds tensors and plain data only (the NumPy generator state as a tensor) and is read with
``torch.load(weights_only=True)``, so a crafted file cannot run code. Its whole structure is checked before it is
used (``check_structure``); a damaged or foreign one (a symlink, a special file, unreadable, or loadable but not
shaped like this run's state) is skipped for the previous good checkpoint, with a one-line warning naming it.
Only regular files named ``step-NNNNNNNN.pt`` are ever deleted from a checkpoint folder.
The checkpoint folder must be a real folder (``pipelines.confine.real_dir``), never a symlink.
"""
from __future__ import annotations

import os
import random
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.atomic import replace_atomic
from pipelines.confine import open_regular, real_dir
from pipelines.errors import DistilleryError

STEP_FILE = re.compile(r"step-\d{8}\.pt")
TEMPORARY = re.compile(r"\..+\.\d+-[0-9a-f]{32}\.tmp")        # pipelines.atomic's temporary names
PLAIN_STATE = {"step": int, "epoch": int, "position": int, "nonfinite": int, "objective": dict, "optimizer": dict,
               "scheduler": dict, "scaler": dict, "rng": dict, "data": dict, "config": dict}


class Unusable(DistilleryError):
    """A checkpoint this run cannot continue from (damaged or foreign): skipped for the previous one."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors and plain data."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-NNNNNNNN.pt`` through a temporary file; prune old ones (regular checkpoint files only)."""
    real_dir(folder, "checkpoint folder", create=True, parents=True)
    path = folder / f"step-{step:08d}.pt"
    replace_atomic(path, lambda tmp: torch.save(state, tmp))
    for old in _regular(folder)[max(1, keep):]:
        old.unlink()
    return path


def saved(folder: Path) -> list[Path]:
    """The checkpoint files of a run (everything named ``step-NNNNNNNN.pt``), newest first; a checkpoint folder
    that is a symlink is refused."""
    if not os.path.lexists(folder):
        return []
    real_dir(folder, "checkpoint folder")
    return sorted((p for p in folder.iterdir() if STEP_FILE.fullmatch(p.name)), reverse=True)


def _regular(folder: Path) -> list[Path]:
    """The checkpoints distillery wrote (regular files), newest first."""
    return [p for p in saved(folder) if stat.S_ISREG(os.lstat(p).st_mode)]


def remove_saved(folder: Path) -> None:
    """Delete a finished run's checkpoint files (regular files named ``step-NNNNNNNN.pt`` only) and the folder when
    nothing else is left in it; a folder that is a symlink, or anything else in it, is left as it is."""
    if not os.path.lexists(folder) or not stat.S_ISDIR(os.lstat(folder).st_mode):
        return
    for path in _regular(folder):
        path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def latest(folder: Path) -> Path | None:
    """The newest checkpoint, or None."""
    return next(iter(saved(folder)), None)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, tensors and plain data only (nothing in the file can run), laid out as ``save``
    writes it (``Unusable`` otherwise); the file must be a regular file (a symlink or a FIFO is not read)."""
    try:
        with os.fdopen(open_regular(path, follow=False), "rb") as fh:
            state = torch.load(fh, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing problem
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise Unusable(f"cannot read checkpoint {path}: damaged, or not a distillery checkpoint "
                       f"({reason[:160]})") from None
    problem = _layout_problem(state)
    if problem:
        raise Unusable(f"cannot read checkpoint {path}: not a distillery checkpoint ({problem})")
    return state


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain data (what JSON holds): no tensors or other objects to compare or call."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float))


def _layout_problem(state: Any) -> str | None:
    """What is wrong with the plain layout of a loaded checkpoint (None: nothing)."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    for key, kind in PLAIN_STATE.items():
        if not isinstance(state.get(key), kind) or (kind is int and not _count(state[key])):
            return f"'{key}' is missing or not a {'count' if kind is int else kind.__name__}"
    for key in ("last_eval", "record", "config"):
        if not isinstance(state.get(key, {}), dict) or not _plain(state.get(key, {})):
            return f"'{key}' is not a dict of plain data"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["objective"].items()):
        return "'objective' is not a state dict of tensors"
    data, config = state["data"], state["config"]
    if not all(_count(data.get(k)) for k in ("epoch", "position", "seed")) or not _count(data.get("world_size", 1)) \
            or data.get("world_size", 1) < 1:
        return "'data' does not hold the data position"
    if not _count(config.get("grad_accum")) or config["grad_accum"] < 1:
        return "'config' is not a training config"
    return _rng_problem(state["rng"])


def _rng_problem(rng: dict[str, Any]) -> str | None:
    python, numpy_state = rng.get("python"), rng.get("numpy")
    if not (isinstance(python, tuple) and len(python) == 3 and isinstance(python[1], tuple)
            and len(python[1]) == 625 and all(_count(x) for x in python[1])):
        return "'rng.python' is not a generator state"
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and isinstance(numpy_state[1], torch.Tensor)
            and numpy_state[1].shape == (624,)):
        return "'rng.numpy' is not a generator state"
    if not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        return "'rng.torch' is not a generator state"
    return None


def check_structure(state: dict[str, Any], template: dict[str, Any], parameter_shapes: list[tuple[int, ...]]) -> None:
    """``Unusable`` unless ``state`` (a loaded checkpoint) has the structure of ``template`` (the state of the run
    about to continue from it): the same weights (names, shapes, dtypes), optimizer groups, scheduler and scaler
    fields, and optimizer state shaped like the parameters it belongs to (``parameter_shapes``, in optimizer
    order)."""
    groups, expected = state["optimizer"].get("param_groups"), template["optimizer"]["param_groups"]
    problem = (_unlike(state["objective"], template["objective"], "objective", exact=True)
               or _unlike(groups, expected, "optimizer.param_groups", exact=True)
               or (None if [g["params"] for g in groups] == [g["params"] for g in expected]
                   else "optimizer.param_groups number other parameters")
               or _optimizer_state_problem(state["optimizer"].get("state"), parameter_shapes)
               or _unlike(state["scheduler"], template["scheduler"], "scheduler", exact=False)
               or _unlike(state["scaler"], template["scaler"], "scaler", exact=False))
    if problem:
        raise Unusable(f"not a checkpoint of this run ({problem})")


def _unlike(value: Any, template: Any, where: str, exact: bool) -> str | None:
    """Where ``value`` differs in structure from ``template`` (dict keys, lengths, tensor shapes and dtypes, kinds
    of plain values); ``exact=False`` lets a dict leave out keys the template has."""
    if isinstance(template, dict):
        if not isinstance(value, dict):
            return f"{where} is not a dict"
        extra, missing = set(value) - set(template), set(template) - set(value)
        if extra or (missing and exact):
            return f"{where} has other keys ({', '.join(sorted(map(str, extra | missing))[:4])})"
        return next((p for k in value if (p := _unlike(value[k], template[k], f"{where}.{k}", exact))), None)
    if isinstance(template, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(template):
            return f"{where} is not a sequence of {len(template)}"
        return next((p for i, (v, t) in enumerate(zip(value, template))
                     if (p := _unlike(v, t, f"{where}[{i}]", exact))), None)
    if isinstance(template, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != template.shape or value.dtype != template.dtype:
            return f"{where} is not a {template.dtype} tensor of shape {tuple(template.shape)}"
        return None
    numbers = (int, float)
    if isinstance(template, bool) or not isinstance(template, numbers):
        return None if type(value) is type(template) else f"{where} is not a {type(template).__name__}"
    return None if isinstance(value, numbers) and not isinstance(value, bool) else f"{where} is not a number"


def _optimizer_state_problem(state: Any, shapes: list[tuple[int, ...]]) -> str | None:
    if not isinstance(state, dict):
        return "optimizer.state is not a dict"
    for index, entry in state.items():
        if not (isinstance(index, int) and 0 <= index < len(shapes)) or not isinstance(entry, dict):
            return f"optimizer.state has an entry {index!r} for no parameter"
        for name, tensor in entry.items():
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in ((), shapes[index]):
                return f"optimizer.state[{index}].{name} is not shaped like its parameter {shapes[index]}"
    return None


def load_newest_good(folder: Path, warn: Callable[[str], None], map_location: str | torch.device = "cpu",
                     use: Callable[[dict[str, Any]], None] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (and that ``use`` accepts: ``use`` raises ``Unusable`` for one it cannot
    continue from; its other errors stop the search), skipping (with ``warn``) damaged or foreign ones; None when
    the run has none; an error when none of them loads."""
    tried = 0
    for path in saved(folder):
        try:
            state = load(path, map_location)
            if use is not None:
                try:
                    use(state)
                except Unusable as exc:
                    raise Unusable(f"cannot use checkpoint {path}: {exc}") from None
            return path, state
        except Unusable as exc:
            tried += 1
            warn(f"{exc}; trying the previous checkpoint")
    if tried:
        raise DistilleryError(f"no checkpoint in {folder} can be read ({tried} tried); move the folder away to "
                              f"start over")
    return None
