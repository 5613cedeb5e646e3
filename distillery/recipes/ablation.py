"""The TinyBERT ablation recipe on real data: teacher, then students with and without augmentation.

Students (same shape for every row, several seeds each):

1. ``direct``: fine-tuned on the labels, no teacher;
2. ``task``: task-distilled (stage 1 intermediate layers, stage 2 prediction layer) on the original split;
3. ``task-aug``: task-distilled on the augmented split;
4. ``general+task-aug``: general distillation on the unlabelled text first, then as 3;
5. ``task-aug-mlm`` (only when ``mlm`` names a masked LM): as 3 with the full MLM + GloVe augmentation.

Everything goes through the same runner and training API the CLI uses, so the run folders hold the usual
metrics, plots and model cards. Finished steps are reused, so an interrupted experiment continues where it
stopped. The experiment is a list of named stages (``STAGES``), each a function of the ``Experiment`` state.
"""
from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from augment import AugmentConfig, plan_augment
from distill import DistillConfig, FinetuneConfig, TaskDistillConfig
from distill.api import evaluate, finetune, general_distill, task_distill
from distill.matches import layer_mapping
from distill.models import load_config as load_model_config
from distill.models import load_student, load_teacher, num_layers, resolve_model
from distillery.demo import SAMPLE_DIR, WORDNET_LICENCE
from distillery.recipes.ablation_report import write_report
from pipelines.config import Options, load_config, option, to_dict
from pipelines.preprocess import PreprocessConfig, plan_preprocess
from pipelines.runner import run_step
from pipelines.store import Store

VARIANTS = ("direct", "task", "task-aug", "general+task-aug")
MLM_VARIANT = "task-aug-mlm"
SECTIONS = ("preprocess", "augment", "teacher", "direct", "general", "task")
SPLITS = ("train", "dev", "test", "unlabelled")
T = TypeVar("T")


@dataclass
class ExperimentConfig(Options):
    """What the experiment compares and how often."""

    seeds: tuple[int, ...] = option((1, 2, 3), help="Seeds: one student per variant and seed.")
    student_layers: int = option(4, ge=1, help="Student layers.")
    student_hidden: int = option(256, ge=1, help="Student hidden size.")
    student_heads: int = option(4, ge=1, help="Student attention heads.")
    student_intermediate: int = option(1024, ge=1, help="Student feed-forward size.")
    student_init: str = option("random", choices=("random", "teacher"),
                               help="teacher: every student starts from the pre-trained encoder's embeddings and "
                                    "layers g(m) (one initial student per seed, shared).")
    mlm: str = option("none", help="A masked LM (hub id / path) adds variant 5; none skips it.")
    name_prefix: str = option("ablation", help="Dataset names: <prefix>-train, <prefix>-train-aug, ...")
    latency_sentences: int = option(256, ge=1, help="Test sentences timed at batch 1 and batch 32.")
    eval_every: int = option(0, ge=0, help="Dev evaluation every N steps (0 = at the end of each run).")
    stage1_steps: int = option(0, ge=0, help="> 0: every task distillation runs this many stage-1 steps ...")
    stage2_steps: int = option(0, ge=0, help="... and stage-2 steps whatever its data's size (equal compute per "
                                             "student); with both set, the direct student runs their sum.")


@dataclass
class StepConfigs:
    """The step configs of one experiment, read from the sections of one TOML file."""

    experiment: ExperimentConfig
    preprocess: PreprocessConfig
    augment: AugmentConfig
    teacher: FinetuneConfig
    direct: FinetuneConfig
    general: DistillConfig
    task: TaskDistillConfig


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> StepConfigs:
    """Read ``[experiment]`` and one section per step from a TOML file."""
    return StepConfigs(
        experiment=load_config(ExperimentConfig, path, overrides, section="experiment"),
        preprocess=load_config(PreprocessConfig, path, {"licence": WORDNET_LICENCE}, section="preprocess"),
        augment=load_config(AugmentConfig, path, section="augment"),
        teacher=load_config(FinetuneConfig, path, section="teacher"),
        direct=load_config(FinetuneConfig, path, section="direct"),
        general=load_config(DistillConfig, path, section="general"),
        task=load_config(TaskDistillConfig, path, section="task"),
    )


class Clock:
    """Wall-clock seconds of each stage run, kept in ``wall_clock.json``; a stage found up to date (reused)
    keeps the time it took when it ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.used: list[str] = []           # the stage runs of this experiment, timed now or earlier

    def run(self, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a StepResult or a TrainedModel) and keep its time unless it was up to
        date."""
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if not getattr(result, "up_to_date", False) or key not in self.seconds:
            self.seconds[key] = round(time.perf_counter() - start, 1)
        self.used.append(key)
        self.path.write_text(json.dumps(self.seconds, indent=2, sort_keys=True) + "\n")
        return result

    def report(self) -> dict[str, Any]:
        """This experiment's stage runs, and the total seconds and number of runs of each stage."""
        keys = [k for k in dict.fromkeys(self.used) if k in self.seconds]
        stages: dict[str, dict[str, float]] = {}
        for key in keys:
            stage = re.sub(r"-seed\d+$", "", key.split("/")[0])
            entry = stages.setdefault(stage, {"seconds": 0.0, "runs": 0})
            entry["seconds"] = round(entry["seconds"] + self.seconds[key], 1)
            entry["runs"] += 1
        return {"steps": {k: self.seconds[k] for k in keys}, "stages": stages}


@dataclass
class Experiment:
    """The state the stages share: where things go, and what earlier stages made."""

    store: Store
    cfgs: StepConfigs
    out: Path
    clock: Clock
    names: dict[str, str] = field(default_factory=dict)            # split -> version name
    data: dict[str, str] = field(default_factory=dict)             # distilled variant -> training version
    augmented: dict[str, Any] = field(default_factory=dict)        # the augmented version's manifest
    teacher: Path | None = None
    runs: dict[str, dict[int, Path]] = field(default_factory=dict)   # variant -> seed -> model
    general_student: Path | None = None
    table: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exp(self) -> ExperimentConfig:
        return self.cfgs.experiment

    def rows(self, ref: str) -> int:
        return self.store.manifest(ref)["num_rows"]

    def dev(self) -> dict[str, Any]:
        """The dev-evaluation settings every run shares."""
        return {"eval_ref": self.names["dev"], "eval_every": self.exp.eval_every}


def equal_steps(cfg: Any, exp: ExperimentConfig, rows: int) -> Any:
    """The step config with epochs set so that it runs the experiment's step counts: each stage of a task
    distillation, or (fine-tuning) both stages' steps in all."""
    per_epoch = rows / (cfg.batch_size * cfg.grad_accum)
    changes = {}
    if hasattr(cfg, "stage1_epochs"):
        if exp.stage1_steps:
            changes["stage1_epochs"] = exp.stage1_steps / per_epoch
        if exp.stage2_steps:
            changes["stage2_epochs"] = exp.stage2_steps / per_epoch
    elif exp.stage1_steps and exp.stage2_steps:
        changes["epochs"] = (exp.stage1_steps + exp.stage2_steps) / per_epoch
    return dataclasses.replace(cfg, **changes)


def initial_student(teacher: Path, pretrained: str, exp: ExperimentConfig, seed: int) -> Any:
    """The untrained student every variant of one seed starts from: the experiment's shape and the fine-tuned
    teacher's labels, randomly initialised or (``student_init = "teacher"``) from the *pre-trained* encoder's
    layers; never from the fine-tuned teacher, whose task weights the no-teacher baseline must not see."""
    teacher_config = load_model_config(teacher)
    labels = {"num_labels": teacher_config.num_labels, "id2label": teacher_config.id2label,
              "label2id": teacher_config.label2id}
    shape = {"num_hidden_layers": exp.student_layers, "hidden_size": exp.student_hidden,
             "num_attention_heads": exp.student_heads, "intermediate_size": exp.student_intermediate}
    init_from = None
    if exp.student_init == "teacher":
        encoder = load_teacher(pretrained, False, torch.device("cpu"))
        init_from = (encoder, layer_mapping(exp.student_layers, num_layers(encoder)))
    return load_student("custom", teacher_config, shape, labels, True, seed, init_from)


# ---- the stages ------------------------------------------------------------------------------------------
def prepare_data(x: Experiment) -> None:
    """Preprocess the four splits of the sample, augment the training split (and, with a masked LM, again)."""
    cfgs, prefix = x.cfgs, x.exp.name_prefix
    for split in SPLITS:
        name = x.names[split] = f"{prefix}-{split}"
        source = SAMPLE_DIR / ("unlabelled.txt" if split == "unlabelled" else f"{split}.jsonl")
        cfg = cfgs.preprocess if split != "unlabelled" else dataclasses.replace(
            cfgs.preprocess, input=dataclasses.replace(cfgs.preprocess.input, label_column=None))
        x.clock.run(f"preprocess/{name}", _preprocess, x.store, source, cfg, name)
    x.data = {"task": x.names["train"], "task-aug": f"{prefix}-train-aug"}
    augmentations = [("augment", "task-aug", cfgs.augment)]
    if x.exp.mlm != "none":
        x.data[MLM_VARIANT] = f"{prefix}-train-aug-mlm"
        augmentations.append(("augment-mlm", MLM_VARIANT, dataclasses.replace(cfgs.augment, mlm=x.exp.mlm)))
    for stage, variant, cfg in augmentations:
        result = x.clock.run(f"{stage}/{x.data[variant]}", _augment, x.store, x.names["train"], cfg,
                             x.data[variant])
        x.augmented = x.augmented or result.manifest


def train_teacher(x: Experiment) -> None:
    """Fine-tune the teacher on the training split."""
    cfg = dataclasses.replace(x.cfgs.teacher, **x.dev())
    x.teacher = _train(x, "teacher", finetune, x.names["train"], cfg)


def train_students(x: Experiment) -> None:
    """Per seed: the initial student, then every variant from it (general distillation once, first seed)."""
    x.runs = {v: {} for v in (*VARIANTS, *x.data)}
    for seed in x.exp.seeds:
        init = x.out / f"student-init-seed{seed}"
        if not (init / "config.json").exists():
            initial_student(x.teacher, resolve_model(x.cfgs.teacher.model), x.exp, seed).save_pretrained(init)
            AutoTokenizer.from_pretrained(x.teacher).save_pretrained(init)
        direct_cfg = dataclasses.replace(x.cfgs.direct, model=str(init), seed=seed, **x.dev())
        direct_cfg = equal_steps(direct_cfg, x.exp, x.rows(x.names["train"]))
        x.runs["direct"][seed] = _train(x, f"direct-seed{seed}", finetune, x.names["train"], direct_cfg)
        task_cfg = dataclasses.replace(x.cfgs.task, teacher=str(x.teacher), student=str(init), seed=seed, **x.dev())
        for variant, ref in x.data.items():
            cfg = equal_steps(task_cfg, x.exp, x.rows(ref))
            x.runs[variant][seed] = _train(x, f"{variant}-seed{seed}", task_distill, ref, cfg)
        if x.general_student is None:
            general_cfg = dataclasses.replace(x.cfgs.general, teacher=resolve_model(x.cfgs.general.teacher),
                                              student=str(init), seed=seed)
            x.general_student = _train(x, "general", general_distill, x.names["unlabelled"], general_cfg)
        cfg = equal_steps(dataclasses.replace(task_cfg, student=str(x.general_student)), x.exp,
                          x.rows(x.data["task-aug"]))
        x.runs["general+task-aug"][seed] = _train(x, f"general+task-aug-seed{seed}", task_distill,
                                                  x.data["task-aug"], cfg)


def _preprocess(store: Store, source: Path, cfg: PreprocessConfig, name: str) -> Any:
    return run_step(store, plan_preprocess([source], cfg), name)


def _augment(store: Store, ref: str, cfg: AugmentConfig, name: str) -> Any:
    return run_step(store, plan_augment(store, ref, cfg), name)


def _train(x: Experiment, folder: str, train: Callable[..., Any], ref: str, cfg: Any) -> Path:
    """Train (or reuse) the run ``folder`` of the experiment; its model folder."""
    return x.clock.run(folder, train, x.store, ref, cfg, x.out / folder, resume=True).path


def score_models(x: Experiment) -> None:
    """Test accuracy, parameters and latency of the teacher and of every student (all seeds)."""
    test_texts = [row["text"] for row in x.store.read_table(x.names["test"], columns=["text"]).to_pylist()]
    timing_texts = test_texts[:x.exp.latency_sentences]

    def describe(model_dirs: list[Path]) -> dict[str, Any]:
        scores = [evaluate(x.store, x.names["test"], d) for d in model_dirs]
        return {"accuracy": summarise([s["accuracy"] for s in scores]),
                "macro_f1": summarise([s["macro_f1"] for s in scores]),
                **parameter_counts(model_dirs[0]),
                "latency_ms_batch1": latency_ms(model_dirs[0], timing_texts, 1),
                "latency_ms_batch32": latency_ms(model_dirs[0], timing_texts, 32),
                "runs": [str(d) for d in model_dirs]}

    x.table = {"teacher": describe([x.teacher])}
    x.table.update({variant: describe([x.runs[variant][s] for s in x.exp.seeds]) for variant in x.runs})
    teacher = x.table["teacher"]
    for row in x.table.values():
        row["accuracy_vs_teacher"] = round(row["accuracy"]["mean"] / teacher["accuracy"]["mean"], 4)
        row["non_embedding_vs_teacher"] = round(row["non_embedding_parameters"] /
                                                teacher["non_embedding_parameters"], 4)


STAGES: tuple[tuple[str, Callable[[Experiment], None]], ...] = (
    ("data", prepare_data), ("teacher", train_teacher), ("students", train_students), ("scores", score_models))


def run_experiment(store: Store, cfgs: StepConfigs, out: Path) -> dict[str, Any]:
    """Run every stage (reusing finished work) and write ``results.json``, ``README.md`` and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    x = Experiment(store, cfgs, out, Clock(out / "wall_clock.json"))
    for _, stage in STAGES:
        stage(x)
    results = {
        "config": {"experiment": to_dict(x.exp), **{s: to_dict(getattr(cfgs, s)) for s in SECTIONS}},
        "data": {n: {"version_id": store.resolve(v), "rows": x.rows(v),
                     "labels": store.manifest(v)["stats"].get("label_counts")} for n, v in x.names.items()},
        "augmentation": {"version_id": x.augmented["version_id"], "rows": x.augmented["num_rows"],
                         "stats": x.augmented["extra"].get("counts", x.augmented["extra"])},
        "table": x.table,
        "comparisons": _comparisons({k: v for k, v in x.table.items() if k != "teacher"}),
        "wall_clock_seconds": x.clock.report(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    write_report(results, out)
    return results


# ---- measurements -----------------------------------------------------------------------------------------
def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Total and non-embedding parameters of a saved model."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    return {"parameters": total, "non_embedding_parameters": total - embedding}


def latency_ms(model_dir: Path, texts: list[str], batch_size: int, max_seq_length: int = 128) -> float:
    """Mean CPU milliseconds per sentence (tokenisation included) at a batch size."""
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
