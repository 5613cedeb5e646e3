"""Atomic training checkpoints: everything needed to continue a run exactly where it stopped."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.atomic import write_bytes_atomic
from pipelines.errors import DistilleryError

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-NNNNNNNN.pt`` through a temporary file, then point ``latest`` at it; prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    write_bytes_atomic(folder / LATEST, (path.name + "\n").encode())
    for old in sorted(folder.glob("step-*.pt"))[:-max(1, keep)]:
        old.unlink()
    return path


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    path = folder / pointer.read_text().strip()
    if not path.exists():
        raise DistilleryError(f"{pointer} names {path.name}, which is missing; delete {pointer} to start over")
    return path


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing problem
        raise DistilleryError(f"cannot read checkpoint {path}: {exc}") from None
