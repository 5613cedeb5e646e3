"""`distillery demo`: the whole pipeline on the bundled WordNet sample, from raw JSONL to a distilled student.

read -> preprocess -> augment -> fine-tune a teacher -> task-distil a student -> evaluate. Every step is
idempotent: a version that already exists (same input, config and code) is reused, and a finished training run
is not repeated, so running the demo twice costs seconds the second time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from pipelines.config import load_config
from pipelines.errors import VersionExistsError
from pipelines.resources import REPO_ROOT, SAMPLE_DIR
from pipelines.store import Store

DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.toml"
WORDNET_LICENCE = {"license": "wordnet",
                   "notice": "WordNet 3.0 Copyright 2006 by Princeton University; see data/wordnet_supersense/"
                             "LICENSE.wordnet (redistribution allowed with this notice)."}


def reuse_existing(store: Store, name: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a step that writes version ``name``; if that exact version already exists, reuse it."""
    try:
        return step()
    except VersionExistsError as exc:
        store.tag(name, "latest", exc.version_id)
        return store.manifest(exc.version_id)


def _trained(folder: Path) -> bool:
    return (folder / "model" / "config.json").exists()


def run_demo(store: Store, runs: Path, config_path: Path = DEFAULT_CONFIG, workers: int = 1) -> dict[str, Any]:
    """Run every step of the demo; return the versions written and the test scores."""
    from augment import AugmentConfig, augment_version
    from distill import FinetuneConfig, TaskDistillConfig, evaluate, finetune, task_distill
    from pipelines.cli import describe_version
    from pipelines.preprocess import PreprocessConfig, preprocess

    pre_cfg = load_config(PreprocessConfig, config_path, {"licence": WORDNET_LICENCE, "workers": workers},
                          section="preprocess")
    versions = {}
    for split in ("train", "dev", "test"):
        name = f"wordnet-{split}"
        versions[name] = reuse_existing(store, name, lambda: preprocess(store, [SAMPLE_DIR / f"{split}.jsonl"],
                                                                         pre_cfg, name=name))
    aug_cfg = load_config(AugmentConfig, config_path, {"workers": workers}, section="augment")
    versions["wordnet-train-aug"] = reuse_existing(
        store, "wordnet-train-aug", lambda: augment_version(store, "wordnet-train", aug_cfg, name="wordnet-train-aug"))
    for manifest in versions.values():
        click.echo(describe_version(manifest, store))

    ft_cfg = load_config(FinetuneConfig, config_path, {"eval_ref": "wordnet-dev"}, section="finetune")
    teacher_dir = runs / "teacher"
    teacher = teacher_dir / "model" if _trained(teacher_dir) else finetune(store, "wordnet-train", ft_cfg,
                                                                            teacher_dir, resume=True)
    td_cfg = load_config(TaskDistillConfig, config_path, {"teacher": str(teacher), "eval_ref": "wordnet-dev"},
                         section="task_distill")
    student_dir = runs / "student"
    student = student_dir / "model" if _trained(student_dir) else task_distill(store, "wordnet-train-aug", td_cfg,
                                                                               student_dir, resume=True)
    scores = {role: evaluate(store, "wordnet-test", path) for role, path in (("teacher", teacher),
                                                                              ("student", student))}
    click.echo(f"\nmodels: teacher {teacher}\n        student {student}")
    click.echo("test split (wordnet-test):")
    for role, s in scores.items():
        click.echo(f"  {role:<8} accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  ({s['rows']} rows)")
    return {"versions": {k: v["version_id"] for k, v in versions.items()}, "scores": scores}


@click.command("demo")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_CONFIG),
              show_default=True, help="TOML file with one section per step.")
@click.option("--runs", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the training runs (teacher, student).")
@click.option("--workers", default=1, show_default=True, help="Worker processes for preprocess and augment.")
@click.pass_context
def demo_command(ctx: click.Context, config_path: str, runs: str, workers: int) -> None:
    """Run the whole pipeline on the bundled WordNet sample (offline)."""
    run_demo(ctx.obj["store"], Path(runs), Path(config_path), workers)
