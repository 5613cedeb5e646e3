"""`distillery distill ...`: finetune, general, task, evaluate, cache-logits.

Every training command takes ``--config FILE.toml`` (keys = fields of its config dataclass) and one flag per
field (``--batch-size``, ``--student-layers``, ...) that overrides the file.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any, Callable

import click

from distill.config import DistillConfig, FinetuneConfig, TaskDistillConfig
from pipelines.config import load_config

_TYPES = {int: int, float: float, str: str}


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def field_help(cls: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the config source (the documentation of the field)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for line in inspect.getsource(klass).splitlines():
            match = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)$", line)
            if match:
                helps[match.group(1)] = match.group(2).strip()
    return helps


def config_options(cls: type) -> Callable:
    """Add --config and one overriding option per (scalar or list) field of ``cls``."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            flag = f"--{f.name.replace('_', '-')}"
            hint = hints[f.name]
            text = helps.get(f.name, "")
            if hint is bool:
                fn = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                                  help=f"{text} [default: {f.default}]")(fn)
            elif hint in _TYPES:
                fn = click.option(flag, f.name, type=_TYPES[hint], default=None,
                                  help=f"{text} [default: {f.default}]")(fn)
            elif f.name in ("labels", "layer_map"):
                fn = click.option(flag, f.name, default=None, help=f"{text} (comma-separated)")(fn)
        fn = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                          help="TOML file whose keys are the config fields (flags override it).")(fn)
        return fn
    return decorate


def build_config(cls: type, config_path: str | None, flags: dict[str, Any]) -> Any:
    overrides = dict(flags)
    for name in ("labels", "layer_map"):
        if overrides.get(name) is not None:
            items = [x.strip() for x in overrides[name].split(",") if x.strip()]
            overrides[name] = [int(x) for x in items] if name == "layer_map" else items
    return load_config(cls, config_path, overrides)


def _store():
    return click.get_current_context().obj["store"]


def _report(model_dir: Path) -> None:
    click.echo(f"saved model: {model_dir}")
    readme = model_dir / "README.md"
    if readme.exists():
        scores = readme.read_text().split("## Scores", 1)[-1].split("## Training", 1)[0].strip()
        click.echo(scores)


output_option = click.option("--output", "output", required=True, type=click.Path(file_okay=False),
                             help="Run folder (checkpoints/, metrics.jsonl, config.json, loss.png, model/).")
resume_option = click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")


@click.group("distill")
def distill_group() -> None:
    """Fine-tune teachers and distil them into small students, streaming dataset versions."""


@distill_group.command("finetune")
@click.argument("train_ref")
@output_option
@resume_option
@config_options(FinetuneConfig)
def finetune_command(train_ref: str, output: str, resume: bool, config_path: str | None, **flags: Any) -> None:
    """Fine-tune a pre-trained encoder (--model) on the labelled version TRAIN_REF (gives a task teacher)."""
    from distill.api import finetune

    _quiet_transformers()
    cfg = build_config(FinetuneConfig, config_path, flags)
    _report(finetune(_store(), train_ref, cfg, output, resume=resume))


@distill_group.command("general")
@click.argument("train_ref")
@output_option
@resume_option
@config_options(DistillConfig)
def general_command(train_ref: str, output: str, resume: bool, config_path: str | None, **flags: Any) -> None:
    """General distillation (embedding, hidden, attention losses) on the text version TRAIN_REF."""
    from distill.api import general_distill

    _quiet_transformers()
    cfg = build_config(DistillConfig, config_path, flags)
    _report(general_distill(_store(), train_ref, cfg, output, resume=resume))


@distill_group.command("task")
@click.argument("train_ref")
@output_option
@resume_option
@config_options(TaskDistillConfig)
def task_command(train_ref: str, output: str, resume: bool, config_path: str | None, **flags: Any) -> None:
    """Task distillation on TRAIN_REF (usually augmented): stage 1 intermediate layers, stage 2 prediction layer."""
    from distill.api import task_distill

    _quiet_transformers()
    cfg = build_config(TaskDistillConfig, config_path, flags)
    _report(task_distill(_store(), train_ref, cfg, output, resume=resume))


@distill_group.command("evaluate")
@click.argument("ref")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--batch-size", default=64, show_default=True)
@click.option("--max-seq-length", default=128, show_default=True)
@click.option("--device", default="auto", show_default=True)
def evaluate_command(ref: str, model_dir: str, batch_size: int, max_seq_length: int, device: str) -> None:
    """Score the saved classifier MODEL_DIR on version REF (labels mapped by name); prints JSON."""
    from distill.api import evaluate

    _quiet_transformers()
    scores = evaluate(_store(), ref, model_dir, batch_size=batch_size, max_seq_length=max_seq_length, device=device)
    click.echo(json.dumps(scores, indent=2, sort_keys=True))


@distill_group.command("cache-logits")
@click.argument("ref")
@click.argument("teacher_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="Name the new version (name@latest).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--max-seq-length", default=128, show_default=True)
@click.option("--device", default="auto", show_default=True)
def cache_logits_command(ref: str, teacher_dir: str, name: str | None, batch_size: int, max_seq_length: int,
                         device: str) -> None:
    """Write a new version: REF plus the teacher's logits (for `task --stage 2 --logits-ref`)."""
    from distill.api import cache_teacher_logits
    from pipelines.cli import describe_version

    _quiet_transformers()
    manifest = cache_teacher_logits(_store(), ref, teacher_dir, name=name, batch_size=batch_size,
                                    max_seq_length=max_seq_length, device=device)
    click.echo(describe_version(manifest, _store()))
