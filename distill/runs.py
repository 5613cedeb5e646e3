"""Run folders: a finished run is recorded last (``finished.json``) and reused, never trained twice.

A run folder holds ``config.json``, ``metrics.jsonl``, ``loss.png``, ``checkpoints/`` and the saved model, whose
``scores.json`` (beside its model card) holds the last evaluation. ``finished.json`` names the model and the
settings that made it; the same settings find it again, other settings are refused (another ``--output``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.atomic import write_json_atomic
from pipelines.errors import DistilleryError
from pipelines.fingerprint import canonical_json

FINISHED = "finished.json"
SCORES = "scores.json"


@dataclass
class TrainedModel:
    """A training run's saved model, its scores, and whether the run folder already held it."""

    path: Path
    scores: dict[str, Any] = field(default_factory=dict)
    up_to_date: bool = False

    def __fspath__(self) -> str:
        return str(self.path)


def write_scores(model_dir: Path, scores: dict[str, Any]) -> None:
    """The model's scores as JSON beside its model card."""
    write_json_atomic(model_dir / SCORES, scores)


def read_scores(model_dir: Path) -> dict[str, Any]:
    """The scores saved with a model ({} when none were)."""
    path = model_dir / SCORES
    return json.loads(path.read_text()) if path.exists() else {}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def reuse_or_train(run_dir: Path, identity: dict[str, Any], train: Callable[[], Path]) -> TrainedModel:
    """The model of the finished run in ``run_dir`` when ``identity`` (the run's settings) matches its record;
    otherwise ``train()`` (which returns the saved model folder) and record the run as finished."""
    identity = json.loads(canonical_json(identity))
    marker = run_dir / FINISHED
    if marker.exists():
        done = json.loads(marker.read_text())
        changed = _differences(done["run"], identity)
        if changed:
            raise DistilleryError(f"{run_dir} holds a finished run with other settings ({', '.join(changed[:6])}); "
                                  f"rerun with its settings to reuse it, or choose another --output")
        model = Path(os.path.normpath(run_dir / done["model"]))
        return TrainedModel(model, read_scores(model), up_to_date=True)
    model = train()
    write_json_atomic(marker, {"run": identity, "model": Path(os.path.relpath(model, run_dir)).as_posix()})
    return TrainedModel(model, read_scores(model))
