"""`distillery demo`: the whole pipeline on a bundled sample, from raw files to a distilled student.

read -> preprocess -> train the domain masked LM -> augment (its candidates for one-piece words, GloVe for the
rest) -> fine-tune a teacher -> task-distil a student -> evaluate. The config's ``[demo]`` section says which
sample (the WordNet supersense sample by default; ``configs/demo_ner.toml``: the NER sample, token
classification, vectors-only augmentation of the O words) and whether the masked LM is trained. Every step goes
through the same runner as the commands: a version that already exists (same input, config and code) is
reused, and a finished training run is not repeated, so running the demo twice costs seconds the second time.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from augment import AugmentConfig, plan_augment
from distill import FinetuneConfig, MLMConfig, TaskDistillConfig
from distill.api import evaluate, finetune, task_distill
from distillery.cli.shared import current_store
from distillery.compose import train_augmentation_mlm
from distillery.present import report_scores, report_step, report_trained
from pipelines.config import Options, load_config, option
from pipelines.errors import DistilleryError
from pipelines.fingerprint import canonical_json
from pipelines.runner import run_step
from pipelines.store import Store
from preprocess import PreprocessConfig, plan_preprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "wordnet_supersense"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.toml"


@dataclass
class DemoConfig(Options):
    """Which sample the demo runs on and which of its steps run (the ``[demo]`` section of its config)."""

    data: str = option("data/wordnet_supersense", help="The sample's folder (relative: to the repository): one "
                                                       "train.*, dev.* and test.* file each, any format preprocess "
                                                       "reads (CoNLL files: token classification).")
    name: str = option("wordnet", help="Dataset names: <name>-train, <name>-dev, <name>-test, <name>-train-aug.")
    masked_lm: bool = option(True, help="Train the domain masked LM ([mlm]) on the folder's unlabelled.txt and "
                                        "the training file, for the augmentation's candidates; false: word "
                                        "vectors only (no [mlm] section needed).")


def run_demo(store: Store, runs: Path, config_path: Path = DEFAULT_CONFIG, workers: int = 1) -> dict[str, Any]:
    """Run every step of the demo; return the versions written, the masked LM's scores (None without one) and the
    test scores."""
    demo = load_config(DemoConfig, config_path, section="demo")
    versions = _preprocess_splits(store, demo, config_path, workers)
    name = demo.name
    runs = runs / _runs_key(versions, config_path)     # new data or settings train anew, beside the old runs
    mlm_path = "none"
    mlm = None
    if demo.masked_lm:
        mlm_cfg = load_config(MLMConfig, config_path, {"eval_ref": f"{name}-dev"}, section="mlm")
        mlm = train_augmentation_mlm(store, f"{name}-mlm-text", mlm_cfg, runs / "mlm", resume=True)
        report_trained(mlm, "masked LM (mlm)")
        mlm_path = str(mlm.path)
    aug_cfg = load_config(AugmentConfig, config_path, {"workers": workers, "mlm": mlm_path}, section="augment")
    result = run_step(store, plan_augment(store, f"{name}-train", aug_cfg), f"{name}-train-aug")
    report_step(result, store)
    versions[f"{name}-train-aug"] = result.manifest["version_id"]

    ft_cfg = load_config(FinetuneConfig, config_path, {"eval_ref": f"{name}-dev"}, section="finetune")
    teacher = finetune(store, f"{name}-train", ft_cfg, runs / "teacher", resume=True)
    report_trained(teacher, "teacher (finetune)")
    td_cfg = load_config(TaskDistillConfig, config_path, {"teacher": str(teacher.path), "eval_ref": f"{name}-dev"},
                         section="task")
    student = task_distill(store, f"{name}-train-aug", td_cfg, runs / "student", resume=True)
    report_trained(student, "student (task)")
    scores = {role: evaluate(store, f"{name}-test", model.path) for role, model in (("teacher", teacher),
                                                                                     ("student", student))}
    click.echo(f"test split ({name}-test):")
    for role, found in scores.items():
        report_scores(role, found)
    return {"versions": versions, "mlm": mlm.scores if mlm else None, "scores": scores}


def _preprocess_splits(store: Store, demo: DemoConfig, config_path: Path, workers: int) -> dict[str, str]:
    """The sample's train / dev / test files as versions, and (with the masked LM) its text: unlabelled.txt and the
    training file, never dev or test; their version ids by name."""
    pre_cfg = load_config(PreprocessConfig, config_path, {"workers": workers}, section="preprocess")
    folder = REPO_ROOT / demo.data
    splits = {split: [_split_file(folder, split)] for split in ("train", "dev", "test")}
    if demo.masked_lm:
        splits["mlm-text"] = [folder / "unlabelled.txt", *splits["train"]]
    versions = {}
    for split, files in splits.items():
        name = f"{demo.name}-{split}"
        cfg = pre_cfg if split != "mlm-text" else dataclasses.replace(
            pre_cfg, input=dataclasses.replace(pre_cfg.input, label_column=None))
        result = run_step(store, plan_preprocess(files, cfg), name)
        report_step(result, store)
        versions[name] = result.manifest["version_id"]
    return versions


def _split_file(folder: Path, split: str) -> Path:
    """The one ``<split>.*`` file of the sample's folder."""
    found = sorted(folder.glob(f"{split}.*"))
    if len(found) != 1:
        raise DistilleryError(f"demo: {folder} must hold exactly one {split}.* file (found "
                              f"{', '.join(p.name for p in found) or 'none'})")
    return found[0]


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
    """Run the whole pipeline on a bundled sample (offline): the WordNet supersense sample, or the one the config's
    [demo] section names (configs/demo_ner.toml: token classification on the NER sample)."""
    run_demo(current_store(), Path(runs), Path(config_path), workers)
