"""Atomic training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds tensors and plain data only (the NumPy generator state as a tensor) and is read with
``torch.load(weights_only=True)``, so a crafted file cannot run code; a damaged or foreign one is skipped for the
previous good checkpoint, with a one-line warning naming it.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.atomic import replace_atomic
from pipelines.errors import DistilleryError


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
    """Write ``step-NNNNNNNN.pt`` through a temporary file; prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    replace_atomic(path, lambda tmp: torch.save(state, tmp))
    for old in sorted(folder.glob("step-*.pt"))[:-max(1, keep)]:
        old.unlink()
    return path


def saved(folder: Path) -> list[Path]:
    """The checkpoint files of a run, newest first."""
    return sorted(folder.glob("step-*.pt"), reverse=True)


def latest(folder: Path) -> Path | None:
    """The newest checkpoint, or None."""
    return next(iter(saved(folder)), None)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state; tensors and plain data only (nothing in the file can run)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing problem
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise DistilleryError(f"cannot read checkpoint {path}: damaged, or not a distillery checkpoint "
                              f"({reason[:160]})") from None
    if not isinstance(state, dict) or not {"step", "config", "objective"} <= set(state):
        raise DistilleryError(f"cannot read checkpoint {path}: not a distillery checkpoint")
    return state


def load_newest_good(folder: Path, warn: Callable[[str], None],
                     map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, skipping (with ``warn``) damaged or foreign ones; None when the run has
    none; an error when none of them loads."""
    tried = 0
    for path in saved(folder):
        try:
            return path, load(path, map_location)
        except DistilleryError as exc:
            tried += 1
            warn(f"{exc}; trying the previous checkpoint")
    if tried:
        raise DistilleryError(f"no checkpoint in {folder} can be read ({tried} tried); move the folder away to "
                              f"start over")
    return None
