"""Same training: every training mode, briefly, on tiny models on CPU; the sha256 of what each run writes.

    python bench/same_training.py OUT_DIR

Builds a tiny random BERT (masked LM, the real bert-base-uncased vocabulary, as ``tests/conftest.py`` does),
preprocesses a few hundred rows of the bundled WordNet glosses and trains, a few dozen steps each: fine-tuning
(with dev evaluations, and once again interrupted mid-run and resumed from its checkpoint), general distillation
(TinyBERT and DistilBERT objectives), task distillation (both stages with the live teacher; stage 2 from cached
teacher logits; stage 2 of a saved student given directly), BiLSTM and TextCNN students, and masked-LM training.
It writes ``OUT_DIR/hashes.json``, ``{mode: {run file: sha256}}`` for every ``metrics.jsonl`` and
``model.safetensors`` a mode's run folder holds, and prints it. Run it under two trees and compare the files to
show that a change left training alone::

    PYTHONPATH=/tmp/before python bench/same_training.py /tmp/same-before
    PYTHONPATH=. python bench/same_training.py /tmp/same-after
    diff /tmp/same-before/hashes.json /tmp/same-after/hashes.json

(``PYTHONPATH`` picks the tree: this script only appends its own repository to the path.) Under a minute on
one core.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISTILLERY_PROGRESS", "0")

import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM  # noqa: E402

from distill.api import finetune, general_distill, task_distill  # noqa: E402
from distill.config import CacheLogitsConfig, DistillConfig, FinetuneConfig, MLMConfig, TaskDistillConfig  # noqa: E402
from distill.logits import plan_teacher_logits  # noqa: E402
from distill.trainer import Trainer  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from distillery.compose import train_augmentation_mlm  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402

RUN = {"batch_size": 8, "max_seq_length": 32, "num_workers": 0, "threads": 1, "device": "cpu", "log_every": 1,
       "seed": 7}
TINY_STUDENT = {"student": "custom", "student_layers": 1, "student_hidden": 16, "student_heads": 2,
                "student_intermediate": 32}
ROWS = {"train.jsonl": 240, "dev.jsonl": 48, "unlabelled.txt": 240}


class Interrupted(Exception):
    """Raised by the patched trainer to cut a run short, as a crash would."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every metrics.jsonl and model.safetensors under a run folder, by relative path."""
    files = [*folder.rglob("metrics.jsonl"), *folder.rglob("model.safetensors")]
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(files)}


def tiny_masked_lm(folder: Path) -> str:
    """A 2-layer, 32-wide random BERT masked LM with the bert-base-uncased vocabulary (tests/conftest.py's)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForMaskedLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_versions(store: Store, root: Path) -> None:
    """train / dev (labelled) and text (plain) versions of the first rows of the bundled sample."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in ROWS.items():
        (root / name).write_text("".join((SAMPLE_DIR / name).read_text().splitlines(keepends=True)[:rows]))
    labelled = PreprocessConfig(input=InputConfig(label_column="label"))
    for name, config in (("train", labelled), ("dev", labelled), ("text", PreprocessConfig())):
        source = root / ("unlabelled.txt" if name == "text" else f"{name}.jsonl")
        run_step(store, plan_preprocess([source], config), name)


def interrupted_then_resumed(train: Callable[[bool], Any], at_step: int) -> Any:
    """``train(resume)`` stopped after optimizer step ``at_step`` (its checkpoint saved), then resumed."""
    real = Trainer.after_step

    def stop(self: Trainer) -> None:
        if self.step == at_step:
            raise Interrupted
    Trainer.after_step = stop
    try:
        train(False)
    except Interrupted:
        pass
    finally:
        Trainer.after_step = real
    return train(True)


def train_every_mode(store: Store, out: Path, base: str) -> dict[str, Path]:
    """Train each mode into its own folder under ``out``; returns the run folders by mode."""
    runs = {m: out / m for m in ("finetune", "finetune-resumed", "general-tinybert", "general-distilbert",
                                 "task-both", "task-cached-logits", "task-direct-student", "bilstm", "textcnn-glove",
                                 "mlm")}
    teacher_cfg = FinetuneConfig(model=base, lr=1e-3, max_steps=24, eval_ref="dev", eval_every=8,
                                 checkpoint_every=6, **RUN)
    teacher = finetune(store, "train", teacher_cfg, runs["finetune"]).path
    interrupted_then_resumed(lambda resume: finetune(store, "train", teacher_cfg, runs["finetune-resumed"], resume),
                             at_step=14)
    general = general_distill(store, "text", DistillConfig(teacher=base, lr=1e-3, max_steps=16, eval_ref="dev",
                                                           **TINY_STUDENT, **RUN), runs["general-tinybert"])
    general_distill(store, "text", DistillConfig(teacher=base, objective="distilbert", kl_weight=5.0, hard_weight=2.0,
                                                 cosine_weight=1.0, temperature=2.0, student="custom",
                                                 student_layers=1, student_init="teacher", max_steps=16,
                                                 eval_ref="dev", eval_every=8, **RUN), runs["general-distilbert"])
    task = {"teacher": str(teacher), "stage1_lr": 1e-3, "stage2_lr": 1e-3, "max_steps": 12, "eval_ref": "dev", **RUN}
    both = task_distill(store, "train", TaskDistillConfig(**task, **TINY_STUDENT), runs["task-both"])
    plan = plan_teacher_logits(store, "train", teacher, CacheLogitsConfig(max_seq_length=32, device="cpu"))
    logits = run_step(store, plan, "train-logits").manifest["version_id"]
    stage1 = str(runs["task-both"] / "stage1" / "model")
    task_distill(store, "train", TaskDistillConfig(**task, student=stage1, stage="2", logits_ref=logits),
                 runs["task-cached-logits"])
    task_distill(store, "train", TaskDistillConfig(**task, student=str(general.path), stage="2"),
                 runs["task-direct-student"])
    task_distill(store, "train", TaskDistillConfig(**task, student="bilstm", student_hidden=8,
                                                   prediction_loss="mse"), runs["bilstm"])
    task_distill(store, "train", TaskDistillConfig(**task, student="textcnn", student_hidden=4,
                                                   student_embeddings="glove", logits_ref=logits),
                 runs["textcnn-glove"])
    train_augmentation_mlm(store, "text", MLMConfig(model=base, whole_word=True, max_steps=16, eval_ref="dev",
                                                    eval_every=8, eval_rows=16, **RUN), runs["mlm"])
    assert both.path.exists()
    return runs


def main(out: Path) -> None:
    quiet_libraries()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "store")
    make_versions(store, out / "data")
    base = tiny_masked_lm(out / "tiny-bert")
    runs = train_every_mode(store, out / "runs", base)
    hashes = {mode: run_hashes(folder) for mode, folder in runs.items()}
    text = json.dumps(hashes, indent=2, sort_keys=True) + "\n"
    (out / "hashes.json").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
