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
import re
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
    student_init: str = "random"           # random / teacher: every student starts from the pre-trained encoder's
                                           # embeddings and layers g(m) (one initial student per seed, shared)
    mlm: str = "none"                      # a masked LM (hub id / path) adds variant 5; "none" skips it
    name_prefix: str = "ablation"          # dataset names: <prefix>-train, <prefix>-train-aug, ...
    latency_sentences: int = 256           # test sentences timed at batch 1 and batch 32
    eval_every: int = 0                    # dev evaluation every N steps (0 = at the end of each run)
    stage1_steps: int = 0                  # > 0: every task distillation runs this many stage-1 steps and
    stage2_steps: int = 0                  # stage-2 steps, whatever its data's size (equal compute per student);
                                           # with both set, the direct student runs their sum


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
    """Wall-clock seconds of each step, kept in ``wall_clock.json`` so that reused steps keep their times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.used: list[str] = []           # the steps of this experiment, timed now or earlier

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        result = fn()
        return result, round(time.perf_counter() - start, 1)

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.seconds, indent=2, sort_keys=True) + "\n")

    def run(self, key: str, fn: Callable[[], Any]) -> Any:
        """Time a training run (only called when it really trains)."""
        result, self.seconds[key] = self._timed(fn)
        self._save()
        return result

    def version(self, stage: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Time a step that writes a dataset version; a version reused from the store keeps the time it took."""
        manifest, seconds = self._timed(fn)
        key = f"{stage}/{manifest['name']}@{manifest['version_id'][:12]}"
        self.seconds.setdefault(key, seconds)
        self.used.append(key)
        self._save()
        return manifest

    def report(self) -> dict[str, Any]:
        """This experiment's steps, and the total seconds and number of runs of each stage."""
        keys = [k for k in dict.fromkeys(self.used) if k in self.seconds]
        stages: dict[str, dict[str, float]] = {}
        for key in keys:
            stage = re.sub(r"-seed\d+$", "", key.split("/")[0])
            entry = stages.setdefault(stage, {"seconds": 0.0, "runs": 0})
            entry["seconds"] = round(entry["seconds"] + self.seconds[key], 1)
            entry["runs"] += 1
        return {"steps": {k: self.seconds[k] for k in keys}, "stages": stages}


def _trained(folder: Path) -> Path | None:
    model = folder / "model"
    return model if (model / "config.json").exists() else None


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
    import torch
    from distill.matches import layer_mapping
    from distill.models import load_config as load_model_config, load_student, load_teacher, num_layers

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
    from distill.models import resolve_model
    from transformers import AutoTokenizer
    from pipelines.preprocess import preprocess

    exp = cfgs.experiment
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out / "wall_clock.json")
    prefix = exp.name_prefix
    names = {split: f"{prefix}-{split}" for split in ("train", "dev", "test", "unlabelled")}
    for split, name in names.items():
        source = SAMPLE_DIR / ("unlabelled.txt" if split == "unlabelled" else f"{split}.jsonl")
        cfg = cfgs.preprocess if split != "unlabelled" else dataclasses.replace(
            cfgs.preprocess, input=dataclasses.replace(cfgs.preprocess.input, label_column=None))
        clock.version("preprocess", lambda: reuse_existing(store, name, lambda: preprocess(store, [source], cfg,
                                                                                        name=name)))
    aug_name = f"{prefix}-train-aug"
    aug = clock.version("augment", lambda: reuse_existing(store, aug_name, lambda: augment_version(
        store, names["train"], cfgs.augment, name=aug_name)))
    data = {"task": names["train"], "task-aug": aug_name}
    if exp.mlm != "none":
        mlm_cfg = dataclasses.replace(cfgs.augment, mlm=exp.mlm)
        data[MLM_VARIANT] = f"{prefix}-train-aug-mlm"
        clock.version("augment-mlm", lambda: reuse_existing(store, data[MLM_VARIANT], lambda: augment_version(
            store, names["train"], mlm_cfg, name=data[MLM_VARIANT])))

    def train(folder: Path, fn: Callable[[], Path]) -> Path:
        clock.used.append(folder.name)
        return _trained(folder) or clock.run(folder.name, fn)

    dev = {"eval_ref": names["dev"], "eval_every": exp.eval_every}
    teacher_cfg = dataclasses.replace(cfgs.teacher, **dev)
    teacher = train(out / "teacher", lambda: finetune(store, names["train"], teacher_cfg, out / "teacher",
                                                                 resume=True))
    runs: dict[str, dict[int, Path]] = {v: {} for v in (*VARIANTS, *data)}
    general_student = None
    for seed in exp.seeds:
        init = out / f"student-init-seed{seed}"
        if not (init / "config.json").exists():
            initial_student(teacher, resolve_model(cfgs.teacher.model), exp, seed).save_pretrained(init)
            AutoTokenizer.from_pretrained(teacher).save_pretrained(init)
        direct_cfg = dataclasses.replace(cfgs.direct, model=str(init), seed=seed, **dev)
        folder = out / f"direct-seed{seed}"
        runs["direct"][seed] = train(folder, lambda: finetune(
            store, names["train"], equal_steps(direct_cfg, exp, store.manifest(names["train"])["num_rows"]), folder,
            resume=True))
        task_cfg = dataclasses.replace(cfgs.task, teacher=str(teacher), student=str(init), seed=seed, **dev)
        for variant in data:
            folder = out / f"{variant}-seed{seed}"
            runs[variant][seed] = train(folder, lambda: task_distill(
                store, data[variant], equal_steps(task_cfg, exp, store.manifest(data[variant])["num_rows"]), folder,
                resume=True))
        if general_student is None:        # once, from the first seed's initial student
            folder = out / "general"
            general_cfg = dataclasses.replace(cfgs.general, teacher=resolve_model(cfgs.general.teacher),
                                              student=str(init), seed=seed)
            general_student = train(folder, lambda: general_distill(
                store, names["unlabelled"], general_cfg, folder, resume=True))
        folder = out / f"general+task-aug-seed{seed}"
        gen_cfg = dataclasses.replace(task_cfg, student=str(general_student))
        runs["general+task-aug"][seed] = train(folder, lambda: task_distill(
            store, aug_name, equal_steps(gen_cfg, exp, aug["num_rows"]), folder, resume=True))

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
        "wall_clock_seconds": clock.report(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    from pipelines.ablation_report import write_report

    write_report(results, out)
    return results
