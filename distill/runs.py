"""Run folders: a finished run is recorded last (``finished.json``) and reused, never trained twice; saving a
run's model with its card and scores.

A run folder holds ``config.json``, ``metrics.jsonl``, ``loss.png``, ``checkpoints/`` and the saved model, whose
``scores.json`` (beside its model card) holds the last evaluation. ``finished.json`` names the model and the
settings that made it; the same settings find it again, other settings are refused (another ``--output``).

Only a run folder of ours is trained into (``trainer.claim_run_folder``: a new, empty or marked folder, never one
holding other files), and only files a run wrote are deleted from it. The model ``finished.json`` names is
believed only when it is a folder of ours (with its ``card.json``) reached without a symlink inside the run folder
(or where the run was told to save it: a task's final model, beside its stages).
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from distill import checkpoint
from distill.card import CARD_INPUTS, EVALUATIONS, SCORES, write_model_card
from distill.config import TrainConfig
from distill.plots import plot_metrics
from distill.trainer import Trainer, claim_run_folder, is_main_process, process_count
from pipelines.atomic import WriterLock, fill_folder, write_json_atomic
from pipelines.config import identity_dict, to_dict
from pipelines.confine import is_regular, read_own_json
from pipelines.errors import DistilleryError
from pipelines.fingerprint import canonical_json
from pipelines.store import Store

FINISHED = "finished.json"
CHECKPOINTS = "checkpoints"


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
    return read_own_json(model_dir / SCORES, {})


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def reuse_or_train(run_dir: Path, identity: dict[str, Any], train: Callable[[], Path],
                   prune_checkpoints: bool = True, model_dir: Path | None = None) -> TrainedModel:
    """The model of the finished run in ``run_dir`` when ``identity`` (the run's settings) matches its record;
    otherwise ``train()`` (which returns the saved model folder), record the run as finished and (unless asked
    not to) delete its checkpoints, which a finished run no longer needs. ``model_dir``: where the run saves its
    model when that is not inside ``run_dir`` (a task's final model, beside its stages' folders)."""
    identity = json.loads(canonical_json(identity))
    marker = run_dir / FINISHED
    done = read_own_json(marker, None)
    if done is not None:
        if not isinstance(done, dict) or not isinstance(done.get("run"), dict):
            raise DistilleryError(f"{marker} is not a record of a finished run; remove it or choose another --output")
        changed = _differences(done["run"], identity)
        if changed:
            raise DistilleryError(f"{run_dir} holds a finished run with other settings ({', '.join(changed[:6])}); "
                                  f"rerun with its settings to reuse it, or choose another --output")
        model = recorded_model(run_dir, done.get("model"), model_dir)
        return TrainedModel(model, read_scores(model), up_to_date=True)
    main = is_main_process()                             # one process trains into a folder (all ranks of one run)
    if main:
        claim_run_folder(run_dir)
        if model_dir is not None:
            check_model_folder(model_dir)
    with WriterLock(run_dir / ".lock", f"run folder {run_dir}") if main else contextlib.nullcontext():
        model = train()
    if main:
        write_json_atomic(marker, {"run": identity, "model": Path(os.path.relpath(model, run_dir)).as_posix()})
        if prune_checkpoints:
            checkpoint.remove_saved(run_dir / CHECKPOINTS)
    return TrainedModel(model, read_scores(model))


def recorded_model(run_dir: Path, recorded: Any, model_dir: Path | None = None) -> Path:
    """The model folder a finished run's record names: a relative path inside the run folder (or ``model_dir``,
    where the run was told to save it), every folder on the way a real folder (no symlink), ending in a model
    distillery saved (its ``card.json`` a regular file); anything else is refused in one line."""
    parts = recorded.split("/") if isinstance(recorded, str) else []
    base = run_dir
    if model_dir is not None and recorded == Path(os.path.relpath(model_dir, run_dir)).as_posix():
        base, parts = model_dir.parent, [model_dir.name]
    path = base
    if parts and not any(part in ("", ".", "..") for part in parts):
        for part in parts:
            path = path / part
            if not path.is_dir() or path.is_symlink():
                break
        else:
            if is_regular(path / CARD_INPUTS):
                return path
    raise DistilleryError(f"{run_dir / FINISHED} names {recorded!r} as its model, which is not a model saved in "
                          f"{run_dir}; remove {FINISHED} to train again, or choose another --output")


def data_records(store: Store, train_ref: str, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The training (and evaluation) versions of a run, for its model card."""
    records = []
    mix = [("mix", m.ref) for m in getattr(cfg, "mix", ())]
    for role, ref in (("train", train_ref), *mix, ("eval", cfg.eval_ref)):
        if ref:
            m = store.manifest(ref)
            records.append({"role": role, "version_id": m["version_id"], "name": m["name"],
                            "num_rows": m["num_rows"], "licence": m["extra"].get("licence")})
    return records


def save_model(model: nn.Module, tokenizer_src: str | Path, out: Path, *, mode: str, base: str,
               teacher: str | None, data: list[dict[str, Any]], scores: dict[str, Any], cfg: TrainConfig) -> Path:
    """save_pretrained (safetensors) + tokenizer + model card + scores.json. ``base``: the model it started
    from (a hub id, a folder or a preset name); ``teacher``: the model it was distilled from. The files are
    written into a new folder and moved into ``out``, which must be new, empty or a model saved here before
    (``check_model_folder``)."""
    check_model_folder(out)
    if isinstance(model, PreTrainedModel):
        model.set_attn_implementation("sdpa")
    scores = {k: v for k, v in scores.items() if k != "step"}

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(str(tokenizer_src)).save_pretrained(folder)
        write_json_atomic(folder / CARD_INPUTS, {"mode": mode, "base": base, "teacher": teacher, "data": data,
                                                 "training": to_dict(cfg),
                                                 "parameters": sum(p.numel() for p in model.parameters())})
        write_scores(folder, scores)
        write_model_card(folder)
    return fill_folder(out, write)


def check_model_folder(out: Path) -> Path:
    """``out`` as a place to save a model: missing, an empty real folder, or a model distillery saved (a real
    folder with a regular ``card.json``); anything else (a symlink, someone's folder) is refused in one line."""
    if os.path.lexists(out):
        if not stat.S_ISDIR(os.lstat(out).st_mode):
            raise DistilleryError(f"{out} is not a folder (or is a symlink); refusing to save a model there")
        if any(out.iterdir()) and not is_regular(out / CARD_INPUTS):
            raise DistilleryError(f"{out} holds files but no model distillery saved ({CARD_INPUTS}); refusing to "
                                  f"save a model over them: choose another --output")
    return out


def record_evaluation(model_dir: Path, manifest: dict[str, Any], scores: dict[str, Any]) -> None:
    """Add an evaluation (on a test version, say) to a distillery model's evaluations.json and card."""
    if not is_regular(model_dir / CARD_INPUTS):
        return                          # not a model distillery saved: its folder is left as it is
    path = model_dir / EVALUATIONS
    evaluations = read_own_json(path, {})
    evaluations[manifest["version_id"]] = {"name": manifest["name"], "rows": manifest["num_rows"],
                                           "scores": {k: v for k, v in scores.items() if k != "version_id"}}
    write_json_atomic(path, evaluations)
    write_model_card(model_dir)


def finish_run(trainer: Trainer, title: str, model: nn.Module, tokenizer_src: str | Path, out: Path,
               **card: Any) -> Path:
    """The run's loss plot and its saved model (``save_model``'s ``card`` arguments), written by the main process
    alone while the other ranks wait; returns the model folder."""
    if trainer.runtime.is_main:
        plot_metrics(trainer.metrics_path, trainer.output_dir / "loss.png", title)
        save_model(model, tokenizer_src, out, **card)
    if trainer.runtime.distributed:
        torch.distributed.barrier()
    return out


# ---- what makes a run reusable --------------------------------------------------------------------
def run_identity(store: Store, mode: str, cfg: TrainConfig, train_ref: str, **models_used: str) -> dict[str, Any]:
    """What makes a finished run reusable: its mode, config (runtime options aside), data and models. Its
    grad_accum counts the micro-batches of a step over all processes, so that the same global batch under another
    process count (a resumed or repeated run) is the same run."""
    config = {**identity_dict(cfg), "grad_accum": cfg.grad_accum * process_count()}
    if config.get("mix"):                    # more sources: by version id (a name may move)
        config["mix"] = [{**m, "ref": store.resolve(m["ref"])} for m in config["mix"]]
    else:
        config.pop("mix", None)              # runs without a mixture keep the identity they had before it existed
    return {"mode": mode, "config": config, "train_version": store.resolve(train_ref),
            "eval_version": store.resolve(cfg.eval_ref) if cfg.eval_ref else None, **models_used}
