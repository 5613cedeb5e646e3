"""Is a DistilBERT-distilled student a faster masked LM for the augmentation?

    python bench/distilbert_mlm_bench.py --teacher runs/ablation/mlm/model [--steps 600] [--student-layers 3]

Distils the domain masked LM (``--teacher``, e.g. the one the ablation or the demo trained) into a student with
half its layers (DistilBERT's triple loss, initialised from every other teacher layer) on the unlabelled and
training glosses, then compares student and teacher on 1,000 dev glosses: candidate recall (single input),
agreement of the student's top-15 candidates with the teacher's (the augmentation's pair input, ``##`` pieces
dropped), and the augmentation's speed with each as ``--mlm`` (sentences/s on 1,000 training glosses).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from augment import (
    AugmentConfig,  # noqa: E402
    plan_augment,
)
from augment.mlm import MaskedLM, build_requests, load_mlm  # noqa: E402
from augment.quality import candidate_recall  # noqa: E402
from augment.words import WordSplitter  # noqa: E402
from distill import DistillConfig, general_distill  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402

quiet_libraries()


def top_candidates(mlm: MaskedLM, texts: list[str], k: int) -> list[list[str]]:
    """The augmentation's candidate list (pair input, top-k, ## pieces dropped) of every eligible one-piece word."""
    spec = mlm.input_spec("pair", 1, None)
    requests = [r for s in WordSplitter(mlm.tokenizer).split(texts)
                for r in build_requests(s, [i for i in s.eligible if len(s.pieces[i]) == 1], spec)]
    return [mlm.tokens(ids) for top in mlm.top_k(requests, k, 256) for ids in top]


def augmentation_speed(model: Path, rows: list[dict], root: Path) -> float:
    """Sentences/s of `augment` with ``model`` as the masked LM on ``rows`` (a fresh store)."""
    store = Store(root / f"speed-{model.parent.name}-{time.time_ns()}")
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = run_step(store, plan_preprocess([path], PreprocessConfig(input=InputConfig(label_column="label"))))
    source = source.manifest
    aug_config = AugmentConfig(mlm=str(model), num_aug=4, workers=1)
    manifest = run_step(store, plan_augment(store, source["version_id"], aug_config)).manifest
    return len(rows) / manifest["extra"]["run"]["timing_s"]["wall_s"]


@click.command()
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False),
              help="The domain masked LM (a `distillery distill mlm` model folder).")
@click.option("--steps", default=600, show_default=True)
@click.option("--student-layers", default=3, show_default=True)
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--store", "store_root", default="distillery_store", show_default=True)
@click.option("--output", default="runs/distilbert-mlm", show_default=True)
def main(teacher: str, steps: int, student_layers: int, lr: float, store_root: str, output: str) -> None:
    """Distil the masked LM and compare the student with its teacher as the augmentation's candidate source."""
    store = Store(store_root)
    text_files = [SAMPLE_DIR / "unlabelled.txt", SAMPLE_DIR / "train.jsonl"]
    text = run_step(store, plan_preprocess(text_files, PreprocessConfig()), "distilbert-text").manifest
    labelled = PreprocessConfig(input=InputConfig(label_column="label"))
    dev = run_step(store, plan_preprocess([SAMPLE_DIR / "dev.jsonl"], labelled), "distilbert-dev").manifest
    cfg = DistillConfig(teacher=teacher, student="custom", student_layers=student_layers, student_init="teacher",
                        objective="distilbert", kl_weight=5.0, hard_weight=2.0, cosine_weight=1.0, temperature=2.0,
                        max_steps=steps, batch_size=64, lr=lr, max_seq_length=64, eval_ref=dev["version_id"],
                        log_every=50)
    start = time.perf_counter()
    student = general_distill(store, text["version_id"], cfg, Path(output))
    seconds = time.perf_counter() - start
    texts = [r["text"] for r in store.read_table(dev["version_id"], columns=["text"]).to_pylist()]
    models = {"teacher": Path(teacher), "student": student.path}
    loaded = {role: load_mlm(str(path), "cpu", "fp32") for role, path in models.items()}
    report = {"distillation_s": None if student.up_to_date else round(seconds), "steps": steps,
              "layers": {role: m.model.config.num_hidden_layers for role, m in loaded.items()}}
    for role, mlm in loaded.items():
        report[f"{role}_recall"] = candidate_recall(mlm.model, mlm.tokenizer, texts)
    lists = {role: top_candidates(m, texts, 15) for role, m in loaded.items()}
    pairs = list(zip(lists["teacher"], lists["student"]))
    report["agreement_with_teacher"] = {
        "words": len(pairs),
        "top1_same": sum(bool(t) and bool(s) and t[0] == s[0] for t, s in pairs) / len(pairs),
        "overlap_at_15": sum(len(set(t) & set(s)) / max(1, len(t)) for t, s in pairs) / len(pairs)}
    rows = [json.loads(line) for line in (SAMPLE_DIR / "train.jsonl").read_text().splitlines()[:1000]]
    with tempfile.TemporaryDirectory() as root:
        report["augment_sentences_per_s"] = {role: round(augmentation_speed(path, rows, Path(root)), 1)
                                             for role, path in models.items()}
    click.echo(json.dumps(report, indent=2))
    (Path(output) / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
