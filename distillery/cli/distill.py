"""`distillery distill ...`: finetune, general, task, evaluate, cache-logits.

Every command takes ``--config FILE.toml`` (keys = fields of its config dataclass, or its table in a pipeline
file) and one flag per field that overrides the file.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

from distill import CacheLogitsConfig, DistillConfig, EvaluateConfig, FinetuneConfig, MLMConfig, TaskDistillConfig
from distillery.cli.options import build_config, config_options
from distillery.cli.shared import (
    current_store,
    data_store,
    name_option,
    push_option,
    push_version,
    remote_options,
    resume_option,
)
from distillery.present import echo_json, report_agreement, report_step, report_trained
from pipelines.errors import DistilleryError
from pipelines.runner import StepResult, run_step
from pipelines.store import Store

output_option = click.option("--output", "output", required=True, type=click.Path(file_okay=False),
                             help="Run folder (checkpoints/, metrics.jsonl, config.json, loss.png, model/).")


@click.group("distill")
def distill_group() -> None:
    """Fine-tune teachers and distil them into small students, streaming dataset versions."""


def _training_command(name: str, cls: type, train: str, doc: str) -> click.Command:
    """A training command: TRAIN_REF, --output, --resume and the flags of ``cls``; calls ``train``
    ("module:function", imported when the command runs so that --help stays fast)."""
    @click.argument("train_ref")
    @output_option
    @resume_option
    @remote_options
    @config_options(cls)
    def command(train_ref: str, output: str, resume: bool, remote: str | None, cache_dir: str | None,
                cache_limit_gb: float | None, config_path: str | None, **flags: Any) -> None:
        module, function = train.split(":")
        cfg = build_config(cls, name, config_path, flags)
        store = data_store(remote, cache_dir, cache_limit_gb)
        run = getattr(importlib.import_module(module), function)
        report_trained(run(store, train_ref, cfg, output, resume=resume), name)

    return distill_group.command(name, help=doc)(command)


_training_command("finetune", FinetuneConfig, "distill.api:finetune",
                  "Fine-tune a pre-trained encoder (--model) on the labelled version TRAIN_REF (gives a task teacher).")
_training_command("general", DistillConfig, "distill.api:general_distill",
                  "General distillation (embedding, hidden, attention losses) on the text version TRAIN_REF.")
_training_command("task", TaskDistillConfig, "distill.api:task_distill",
                  "Task distillation on TRAIN_REF (usually augmented): stage 1 intermediate layers, stage 2 prediction "
                  "layer.")
_training_command("mlm", MLMConfig, "distillery.compose:train_augmentation_mlm",
                  "Masked-LM training of an encoder (--model) on the text version TRAIN_REF, for `augment --mlm`: "
                  "evaluations on --eval-ref report perplexity and the augmentation's candidate recall.")


@distill_group.command("evaluate")
@click.argument("ref")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@remote_options
@config_options(EvaluateConfig)
def evaluate_command(ref: str, model_dir: str, remote: str | None, cache_dir: str | None,
                     cache_limit_gb: float | None, config_path: str | None, **flags: Any) -> None:
    """Score the saved classifier MODEL_DIR on version REF (labels mapped by name); prints JSON."""
    from distill.api import evaluate

    cfg = build_config(EvaluateConfig, "evaluate", config_path, flags)
    echo_json(evaluate(data_store(remote, cache_dir, cache_limit_gb), ref, model_dir, cfg))


def teacher_logits_command(name: str, check: Callable[[Store, str], None] | None = None
                           ) -> Callable[[Callable[[StepResult], None]], click.Command]:
    """A command ``NAME REF TEACHER_DIR`` that runs the teacher-logits step on REF (``check`` first), reports the
    version and hands the result to the decorated function (its docstring is the command's help)."""
    def decorate(after: Callable[[StepResult], None]) -> click.Command:
        @distill_group.command(name, help=after.__doc__)
        @click.argument("ref")
        @click.argument("teacher_dir", type=click.Path(exists=True, file_okay=False))
        @name_option
        @resume_option
        @push_option
        @config_options(CacheLogitsConfig)
        def command(ref: str, teacher_dir: str, name: str | None, resume: bool, push_url: str | None,
                    config_path: str | None, **flags: Any) -> None:
            from distill.logits import plan_teacher_logits

            cfg = build_config(CacheLogitsConfig, "cache_logits", config_path, flags)
            store = current_store()
            if check is not None:
                check(store, ref)
            result = run_step(store, plan_teacher_logits(store, ref, teacher_dir, cfg), name, resume)
            report_step(result, store)
            after(result)
            push_version(store, result.manifest["version_id"], push_url)
        return command
    return decorate


@teacher_logits_command("cache-logits")
def cache_logits_command(result: StepResult) -> None:
    """Write a new version: REF plus the teacher's logits (for `task --stage 2 --logits-ref`)."""


def _augmented(store: Store, ref: str) -> None:
    if "aug_copy" not in {f["name"] for f in store.manifest(ref)["schema"]}:
        raise DistilleryError(f"{ref} is not an augmented version (no aug_copy column)")


@teacher_logits_command("agreement", check=_augmented)
def agreement_command(result: StepResult) -> None:
    """How often the teacher TEACHER_DIR predicts, on the augmented copies of REF, the label it predicts on their
    originals, per candidate source. Writes (or reuses) REF's teacher-logits version, whose card records it."""
    report_agreement(result.manifest["extra"]["agreement"])
