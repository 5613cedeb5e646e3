"""The TinyBERT ablation recipe on real data: teacher, then students with and without augmentation.

Students (same shape for every row, several seeds each):

1. ``direct``: fine-tuned on the labels, no teacher;
2. ``task``: task-distilled (stage 1 intermediate layers, stage 2 prediction layer) on the original split;
3. ``task-aug``: task-distilled on the augmented split;
4. ``general+task-aug``: general distillation on the unlabelled text first, then as 3;
5. ``task-aug-mlm`` (only when ``mlm`` names a masked LM): as 3 with the full MLM + GloVe augmentation.

Everything goes through the same Python API the CLI uses, so the run folders hold the usual metrics, plots
and model cards. Finished steps are reused, so an interrupted experiment continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.config import load_config
from pipelines.demo import WORDNET_LICENCE, reuse_existing
from pipelines.resources import SAMPLE_DIR
from pipelines.store import Store

VARIANTS = ("direct", "task", "task-aug", "general+task-aug")
MLM_VARIANT = "task-aug-mlm"
SECTIONS = ("preprocess", "augment", "teacher", "direct", "general", "task")


@dataclass
class ExperimentConfig:
    """What the experiment compares and how often."""

    seeds: tuple[int, ...] = (1, 2, 3)
    student_layers: int = 4
    student_hidden: int = 256
    student_heads: int = 4
    student_intermediate: int = 1024
    mlm: str = "none"                      # a masked LM (hub id / path) adds variant 5; "none" skips it
    name_prefix: str = "ablation"          # dataset names: <prefix>-train, <prefix>-train-aug, ...
    latency_sentences: int = 256           # test sentences timed at batch 1 and batch 32
    eval_every: int = 0                    # dev evaluation every N steps (0 = at the end of each run)
    stage1_steps: int = 0                  # > 0: every task distillation runs this many stage-1 steps and
    stage2_steps: int = 0                  # stage-2 steps, whatever its data's size (equal compute per student)


@dataclass
class StepConfigs:
    """The step configs of one experiment, read from the sections of one TOML file."""

    experiment: ExperimentConfig
    preprocess: Any
    augment: Any
    teacher: Any
    direct: Any
    general: Any
    task: Any


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> StepConfigs:
    """Read ``[experiment]`` and one section per step from a TOML file."""
    from augment import AugmentConfig
    from distill import DistillConfig, FinetuneConfig, TaskDistillConfig
    from pipelines.preprocess import PreprocessConfig

    exp = load_config(ExperimentConfig, path, overrides, section="experiment")
    shape = {"student_layers": exp.student_layers, "student_hidden": exp.student_hidden,
             "student_heads": exp.student_heads, "student_intermediate": exp.student_intermediate}
    return StepConfigs(
        experiment=exp,
        preprocess=load_config(PreprocessConfig, path, {"licence": WORDNET_LICENCE}, section="preprocess"),
        augment=load_config(AugmentConfig, path, section="augment"),
        teacher=load_config(FinetuneConfig, path, section="teacher"),
        direct=load_config(FinetuneConfig, path, section="direct"),
        general=load_config(DistillConfig, path, {"student": "custom", **shape}, section="general"),
        task=load_config(TaskDistillConfig, path, {"student": "custom", **shape}, section="task"),
    )


class Clock:
    """Wall-clock seconds of each named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
        return result


def _trained(folder: Path) -> Path | None:
    model = folder / "model"
    return model if (model / "config.json").exists() else None


def equal_steps(cfg: Any, exp: ExperimentConfig, rows: int) -> Any:
    """The task-distillation config with stage epochs set so that each stage runs the experiment's step count."""
    per_epoch = rows / (cfg.batch_size * cfg.grad_accum)
    changes = {}
    if exp.stage1_steps:
        changes["stage1_epochs"] = exp.stage1_steps / per_epoch
    if exp.stage2_steps:
        changes["stage2_epochs"] = exp.stage2_steps / per_epoch
    return dataclasses.replace(cfg, **changes)


def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Total and non-embedding parameters of a saved model."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    return {"parameters": total, "non_embedding_parameters": total - embedding}


def latency_ms(model_dir: Path, texts: list[str], batch_size: int, max_seq_length: int = 128) -> float:
    """Mean CPU milliseconds per sentence (tokenisation included) at a batch size."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    with torch.inference_mode():
        model(**tokenizer(batches[0], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_seq_length))  # warm-up
        start = time.perf_counter()
        for batch in batches:
            model(**tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_seq_length))
    return round(1000 * (time.perf_counter() - start) / len(texts), 3)


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and range of per-seed scores."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _comparisons(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair of students: is the accuracy difference larger than the two seed spreads added?"""
    out = []
    names = list(table)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = table[a]["accuracy"], table[b]["accuracy"]
            diff = sb["mean"] - sa["mean"]
            spread = sa["std"] + sb["std"]
            out.append({"a": a, "b": b, "b_minus_a": round(diff, 4), "spread": round(spread, 4),
                        "larger_than_spread": abs(diff) > spread})
    return out


def run_experiment(store: Store, cfgs: StepConfigs, out: Path) -> dict[str, Any]:
    """Run every stage (reusing finished ones) and write ``results.json``, ``README.md`` and the plots."""
    from augment import augment_version
    from distill import evaluate, finetune, general_distill, task_distill
    from distill.models import load_student, resolve_model, load_config as load_model_config
    from transformers import AutoTokenizer
    from pipelines.preprocess import preprocess

    exp, clock = cfgs.experiment, Clock()
    out.mkdir(parents=True, exist_ok=True)
    prefix = exp.name_prefix
    names = {split: f"{prefix}-{split}" for split in ("train", "dev", "test", "unlabelled")}
    for split, name in names.items():
        source = SAMPLE_DIR / ("unlabelled.txt" if split == "unlabelled" else f"{split}.jsonl")
        cfg = cfgs.preprocess if split != "unlabelled" else dataclasses.replace(
            cfgs.preprocess, input=dataclasses.replace(cfgs.preprocess.input, label_column=None))
        clock.run("preprocess", lambda: reuse_existing(store, name, lambda: preprocess(store, [source], cfg,
                                                                                        name=name)))
    aug_name = f"{prefix}-train-aug"
    aug = clock.run("augment", lambda: reuse_existing(store, aug_name, lambda: augment_version(
        store, names["train"], cfgs.augment, name=aug_name)))
    augmented = {"aug": aug_name}
    if exp.mlm != "none":
        mlm_name = f"{prefix}-train-aug-mlm"
        mlm_cfg = dataclasses.replace(cfgs.augment, mlm=exp.mlm)
        clock.run("augment-mlm", lambda: reuse_existing(store, mlm_name, lambda: augment_version(
            store, names["train"], mlm_cfg, name=mlm_name)))
        augmented["aug-mlm"] = mlm_name

    def train(kind: str, folder: Path, fn: Callable[[], Path]) -> Path:
        return _trained(folder) or clock.run(kind, fn)

    dev = {"eval_ref": names["dev"], "eval_every": exp.eval_every}
    teacher_cfg = dataclasses.replace(cfgs.teacher, **dev)
    teacher = train("teacher", out / "teacher", lambda: finetune(store, names["train"], teacher_cfg, out / "teacher",
                                                                 resume=True))
    general_cfg = dataclasses.replace(cfgs.general, teacher=resolve_model(cfgs.general.teacher), seed=exp.seeds[0])
    variants = VARIANTS + ((MLM_VARIANT,) if exp.mlm != "none" else ())
    runs: dict[str, dict[int, Path]] = {v: {} for v in variants}
    general_student = None
    for seed in exp.seeds:
        task_cfg = dataclasses.replace(cfgs.task, teacher=str(teacher), seed=seed, **dev)
        init = out / f"direct-init-seed{seed}"
        if not (init / "config.json").exists():
            teacher_config = load_model_config(teacher)
            labels = {"num_labels": teacher_config.num_labels, "id2label": teacher_config.id2label,
                      "label2id": teacher_config.label2id}
            shape = {"num_hidden_layers": exp.student_layers, "hidden_size": exp.student_hidden,
                     "num_attention_heads": exp.student_heads, "intermediate_size": exp.student_intermediate}
            load_student("custom", teacher_config, shape, labels, True, seed).save_pretrained(init)
            AutoTokenizer.from_pretrained(teacher).save_pretrained(init)
        direct_cfg = dataclasses.replace(cfgs.direct, model=str(init), seed=seed, **dev)
        folder = out / f"direct-seed{seed}"
        runs["direct"][seed] = train("direct", folder, lambda: finetune(store, names["train"], direct_cfg, folder,
                                                                        resume=True))
        for variant, data in (("task", names["train"]), ("task-aug", aug_name)):
            folder = out / f"{variant}-seed{seed}"
            runs[variant][seed] = train(variant, folder, lambda: task_distill(
                store, data, equal_steps(task_cfg, exp, store.manifest(data)["num_rows"]), folder, resume=True))
        if general_student is None:
            folder = out / "general"
            general_student = train("general", folder, lambda: general_distill(
                store, names["unlabelled"], general_cfg, folder, resume=True))
        folder = out / f"general+task-aug-seed{seed}"
        gen_cfg = dataclasses.replace(task_cfg, student=str(general_student))
        runs["general+task-aug"][seed] = train("general+task-aug", folder, lambda: task_distill(
            store, aug_name, equal_steps(gen_cfg, exp, aug["num_rows"]), folder, resume=True))
        if exp.mlm != "none":
            folder = out / f"{MLM_VARIANT}-seed{seed}"
            runs[MLM_VARIANT][seed] = train(MLM_VARIANT, folder, lambda: task_distill(
                store, augmented["aug-mlm"], equal_steps(task_cfg, exp, store.manifest(augmented["aug-mlm"])["num_rows"]),
                folder, resume=True))

    test_texts = [row["text"] for row in store.read_table(names["test"], columns=["text"]).to_pylist()]
    timing_texts = test_texts[:exp.latency_sentences]

    def describe(model_dirs: list[Path]) -> dict[str, Any]:
        scores = [evaluate(store, names["test"], d) for d in model_dirs]
        return {"accuracy": summarise([s["accuracy"] for s in scores]),
                "macro_f1": summarise([s["macro_f1"] for s in scores]),
                **parameter_counts(model_dirs[0]),
                "latency_ms_batch1": latency_ms(model_dirs[0], timing_texts, 1),
                "latency_ms_batch32": latency_ms(model_dirs[0], timing_texts, 32),
                "runs": [str(d) for d in model_dirs]}

    table = {"teacher": describe([teacher])}
    table.update({variant: describe([runs[variant][s] for s in exp.seeds]) for variant in runs})
    teacher_acc = table["teacher"]["accuracy"]["mean"]
    teacher_params = table["teacher"]["non_embedding_parameters"]
    for row in table.values():
        row["accuracy_vs_teacher"] = round(row["accuracy"]["mean"] / teacher_acc, 4)
        row["non_embedding_vs_teacher"] = round(row["non_embedding_parameters"] / teacher_params, 4)
    students = {k: v for k, v in table.items() if k != "teacher"}
    results = {
        "config": {"experiment": dataclasses.asdict(exp),
                   **{s: dataclasses.asdict(getattr(cfgs, s)) for s in SECTIONS}},
        "data": {n: {"version_id": store.resolve(v), "rows": store.manifest(v)["num_rows"],
                     "labels": store.manifest(v)["stats"].get("label_counts")} for n, v in names.items()},
        "augmentation": {"version_id": aug["version_id"], "rows": aug["num_rows"], "stats": aug["extra"].get("counts",
                                                                                                           aug["extra"])},
        "table": table,
        "comparisons": _comparisons(students),
        "wall_clock_seconds": clock.seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    from pipelines.ablation_report import write_report

    write_report(results, out)
    return results
