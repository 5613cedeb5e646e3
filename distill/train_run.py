"""One training skeleton for every mode: a mode is its objective and a ``RunSpec``; ``train_run`` does the rest.

What every run does, in this order (the same order of random draws in every mode): reuse the finished run its
folder holds when the settings match (``runs.reuse_or_train``); otherwise set up the runtime, seed torch, let the
spec build its objective (so every random initialisation is the seed's), stream its rows, train with ``Trainer``
(checkpoints, exact resume, evaluations), and save the model with its card and scores (``runs.finish_run``).

A new mode subclasses ``RunSpec`` with the fields its objective needs and writes ``build``; its rows are one of
the ``Rows`` kinds (``api.ClassifierRows``, ``mlm.MaskedRows``) or a new one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from distill.config import TrainConfig
from distill.data import ShardStream
from distill.runs import TrainedModel, data_records, finish_run, reuse_or_train, run_identity
from distill.trainer import EvalFn, Runtime, Trainer, setup_runtime
from pipelines.store import Store


class Rows(Protocol):
    """How a mode's rows become batches, and how its model is scored on held-out rows."""

    def train_stream(self, store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig,
                     runtime: Runtime) -> ShardStream:
        """This process's share of the training version's batches."""
        ...

    def eval_fn(self, store: Store, cfg: TrainConfig, tokenizer: str | Path, runtime: Runtime) -> EvalFn | None:
        """The scores of the objective on ``cfg.eval_ref`` (every row of it, on any rank), or None: nothing to
        score."""
        ...


@dataclass
class Built:
    """What a mode builds once the runtime is set and the seed drawn."""

    objective: nn.Module                 # what the trainer optimises: forward(batch) -> (loss, {part: loss})
    model: nn.Module                     # what is saved at the end (the model trained, or the student)
    tokenizer: str | Path                # of the rows and of the saved model
    record: dict[str, Any] = field(default_factory=dict)   # more facts for config.json (the matches, the objective)


@dataclass(kw_only=True)
class RunSpec:
    """One run of one training mode: what differs between modes. A mode subclasses it with the fields its
    objective needs and ``build``; ``train_run`` does the rest, the same for every mode."""

    mode: str                            # config.json's and the model card's: finetune, mlm, general, task-stage1/2
    title: str                           # the loss plot's
    store: Store
    train_ref: str
    config: TrainConfig
    output_dir: Path
    base: str                            # the model the run starts from (the student, when it has a teacher)
    teacher: str | None = None           # the model it learns from
    rows: Rows
    identity_mode: str = ""              # the mode its identity names, when not ``mode``
    card_config: TrainConfig | None = None   # the training config the model card shows, when not ``config``
    model_dir: Path | None = None        # where the model is saved, when not ``output_dir / "model"``

    def build(self, runtime: Runtime) -> Built:
        """The objective, the model to save and its tokenizer (``runtime``: the device, the process)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What else, beyond the config, the data and the models, makes the run what it is (in its identity: a
        finished run is reused only with the same)."""
        return {}

    def models(self) -> dict[str, str]:
        """The models the run reads, by role (its identity and config.json record them)."""
        return {"model": self.base} if self.teacher is None else {"teacher": self.teacher, "student": self.base}


def train_run(spec: RunSpec, resume: bool = False) -> TrainedModel:
    """The model of ``spec``'s run: the finished run its folder holds when the settings are the same, else trained
    (continuing the newest checkpoint with ``resume``) and saved with its card and scores."""
    identity = run_identity(spec.store, spec.identity_mode or spec.mode, spec.config, spec.train_ref,
                            **spec.models(), **spec.settings())
    return reuse_or_train(spec.output_dir, identity, lambda: _train(spec, resume), spec.config.prune_checkpoints,
                          spec.model_dir)


def _train(spec: RunSpec, resume: bool) -> Path:
    """Train ``spec``'s run into its folder; returns the saved model's folder."""
    cfg = spec.config
    runtime = setup_runtime(cfg)
    torch.manual_seed(cfg.seed)
    built = spec.build(runtime)
    stream = spec.rows.train_stream(spec.store, spec.train_ref, built.tokenizer, cfg, runtime)
    eval_fn = spec.rows.eval_fn(spec.store, cfg, built.tokenizer, runtime)
    record = {"train_version": spec.store.resolve(spec.train_ref), **spec.models(), **built.record}
    trainer = Trainer(built.objective, stream, cfg, spec.output_dir, runtime, eval_fn, spec.mode, record)
    scores = trainer.run(resume)
    return finish_run(trainer, spec.title, built.model, built.tokenizer, spec.model_dir or spec.output_dir / "model",
                      mode=spec.mode, base=spec.base, teacher=spec.teacher,
                      data=data_records(spec.store, spec.train_ref, cfg), scores=scores,
                      cfg=spec.card_config or cfg)
