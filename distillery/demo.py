"""`distillery demo`: the whole pipeline on the bundled WordNet sample, from raw JSONL to a distilled student.

read -> preprocess -> train the domain masked LM -> augment (its candidates for one-piece words, GloVe for the
rest) -> fine-tune a teacher -> task-distil a student -> evaluate. Every step goes
through the same runner as the commands: a version that already exists (same input, config and code) is
reused, and a finished training run is not repeated, so running the demo twice costs seconds the second time.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import click

from augment import AugmentConfig, plan_augment
from distill import FinetuneConfig, MLMConfig, TaskDistillConfig
from distill.api import evaluate, finetune, task_distill
from distillery.cli.shared import current_store
from distillery.compose import train_augmentation_mlm
from distillery.present import report_step, report_trained
from pipelines.config import load_config
from pipelines.fingerprint import canonical_json
from pipelines.runner import run_step
from pipelines.store import Store
from preprocess import PreprocessConfig, plan_preprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "wordnet_supersense"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.toml"



def run_demo(store: Store, runs: Path, config_path: Path = DEFAULT_CONFIG, workers: int = 1) -> dict[str, Any]:
    """Run every step of the demo; return the versions written and the test scores."""
    pre_cfg = load_config(PreprocessConfig, config_path, {"workers": workers}, section="preprocess")
    splits = {"train": ["train.jsonl"], "dev": ["dev.jsonl"], "test": ["test.jsonl"],
              "mlm-text": ["unlabelled.txt", "train.jsonl"]}       # the masked LM's text: never dev or test
    versions = {}
    for split, files in splits.items():
        name = f"wordnet-{split}"
        cfg = pre_cfg if split != "mlm-text" else dataclasses.replace(
            pre_cfg, input=dataclasses.replace(pre_cfg.input, label_column=None))
        result = run_step(store, plan_preprocess([SAMPLE_DIR / f for f in files], cfg), name)
        report_step(result, store)
        versions[name] = result.manifest["version_id"]
    runs = runs / _runs_key(versions, config_path)     # new data or settings train anew, beside the old runs
    mlm_cfg = load_config(MLMConfig, config_path, {"eval_ref": "wordnet-dev"}, section="mlm")
    mlm = train_augmentation_mlm(store, "wordnet-mlm-text", mlm_cfg, runs / "mlm", resume=True)
    report_trained(mlm, "masked LM (mlm)")
    aug_cfg = load_config(AugmentConfig, config_path, {"workers": workers, "mlm": str(mlm.path)}, section="augment")
    result = run_step(store, plan_augment(store, "wordnet-train", aug_cfg), "wordnet-train-aug")
    report_step(result, store)
    versions["wordnet-train-aug"] = result.manifest["version_id"]

    ft_cfg = load_config(FinetuneConfig, config_path, {"eval_ref": "wordnet-dev"}, section="finetune")
    teacher = finetune(store, "wordnet-train", ft_cfg, runs / "teacher", resume=True)
    report_trained(teacher, "teacher (finetune)")
    td_cfg = load_config(TaskDistillConfig, config_path, {"teacher": str(teacher.path), "eval_ref": "wordnet-dev"},
                         section="task")
    student = task_distill(store, "wordnet-train-aug", td_cfg, runs / "student", resume=True)
    report_trained(student, "student (task)")
    scores = {role: evaluate(store, "wordnet-test", model.path) for role, model in (("teacher", teacher),
                                                                                     ("student", student))}
    click.echo("test split (wordnet-test):")
    for role, s in scores.items():
        click.echo(f"  {role:<8} accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  ({s['rows']} rows)")
    return {"versions": versions, "mlm": mlm.scores, "scores": scores}


def _runs_key(versions: dict[str, str], config_path: Path) -> str:
    """A short hash of the versions and the config file the demo's training runs depend on."""
    return hashlib.sha256(canonical_json({"versions": versions, "config": Path(config_path).read_text()})
                          .encode()).hexdigest()[:12]


@click.command("demo")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_CONFIG),
              show_default=True, help="TOML file with one section per step.")
@click.option("--runs", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the training runs (teacher, student) of each data and settings (a subfolder).")
@click.option("--workers", default=1, show_default=True, help="Worker processes for preprocess and augment.")
def demo_command(config_path: str, runs: str, workers: int) -> None:
    """Run the whole pipeline on the bundled WordNet sample (offline)."""
    run_demo(current_store(), Path(runs), Path(config_path), workers)
