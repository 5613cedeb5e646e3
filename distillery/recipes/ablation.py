"""The TinyBERT ablation recipe on any labelled data: teacher, then students with and without augmentation.

Students (same shape for every row, several seeds each, one initial student per seed):

1. ``direct``: fine-tuned on the labels, no teacher;
2. ``task``: task-distilled (stage 1 intermediate layers, stage 2 prediction layer) on the original split;
3. ``task-aug``: task-distilled on the split augmented with word-vector candidates only;
4. ``general+task-aug``: general distillation on the unlabelled text first, then as 3;
5. ``task-aug-mlm``: as 3 on the split augmented TinyBERT's way: masked-LM candidates for one-piece words (from
   the domain masked LM the recipe trains on the unlabelled text and the training split, never dev or test, or
   ``mlm`` given as a model), word-vector candidates for the rest; its options are ``[augment]``'s with the keys
   of ``[augment_mlm]`` replaced;
6. ``task-aug-mention`` (token classification only): as 3 with mention replacement on top (an entity mention
   swapped for another of its type, tags rebuilt); its options are ``[augment]``'s with the keys of
   ``[augment_mention]`` replaced (``mention_replace_prob`` > 0 there).

The data's task is ``[experiment] task``: ``auto`` (the default) makes it token classification when the
preprocessed training split has a ``tags`` column (a CoNLL file, or ``tokens_column`` / ``tags_column`` in
``[preprocess.input]``), else sentence classification. Token classification changes the task of the teacher and
of every student, the augmentation (only words tagged ``O`` replaced, tags carried) and the scores: entity-level F1
(seqeval, as conlleval) is the main metric, with precision, recall and token accuracy beside it; the card adds the
teacher-direct gap and the size / F1 target. Sentence classification is scored by accuracy, as before.

Each runs under the compute schedules asked for: ``equal-steps`` (every student the same optimizer steps) and
``equal-epochs`` (TinyBERT's setting: every student as many epochs per stage as ``task`` has on the original
split, so augmented students take more steps). The data (train, dev, test, unlabelled) are files of any format
``preprocess`` reads or version refs; the bundled WordNet sample is the default. Everything goes through the
same runner and training API as the CLI; finished work is reused, so an interrupted experiment continues where
it stopped. The experiment is a list of named stages (``STAGES``), each a function of the ``Experiment`` state.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoTokenizer

from augment import AugmentConfig, plan_augment
from distill import CacheLogitsConfig, DistillConfig, EvaluateConfig, FinetuneConfig, MLMConfig, TaskDistillConfig
from distill.api import evaluate, finetune, general_distill, task_distill, training_stream
from distill.card import model_seq_length
from distill.data import TAGS
from distill.logits import plan_teacher_logits
from distill.metrics import SCORING_RULES, gap_check
from distill.models import (
    classifier_class,
    layer_mapping,
    load_student,
    load_teacher,
    num_layers,
    resolve_model,
)
from distill.models import load_config as load_model_config
from distill.runs import TrainedModel, read_scores
from distill.tagging import token_classifier
from distill.trainer import Runtime
from distillery.bundled import SAMPLE_DIR
from distillery.compose import train_augmentation_mlm
from distillery.recipes.ablation_report import METRIC_NAMES, gap_check_line, write_report
from pipelines.atomic import write_json_atomic
from pipelines.config import ConfigError, Options, identity_dict, load_config, option, read_toml, to_dict
from pipelines.confine import read_own_json
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import Store
from preprocess import PreprocessConfig, input_formats, plan_preprocess

VARIANTS = ("direct", "task", "task-aug", "general+task-aug")
MLM_VARIANT = "task-aug-mlm"
MENTION_VARIANT = "task-aug-mention"
LONG_VARIANT = "task-long"             # task on the originals for as many steps as the copies' student has
MIX_VARIANTS = ("task-mix", "task-unlabelled", "task-aug-unlabelled")   # mixed transfer sets (``mix_share``)
SECTIONS = ("preprocess", "augment", "augment_mlm", "augment_mention", "mlm", "teacher", "direct", "general", "task",
            "evaluate")
TOKEN_TASK = "token-classification"
TASKS = ("auto", "classification", TOKEN_TASK)
SPLITS = ("train", "dev", "test", "unlabelled")
SCHEDULES = ("equal-steps", "equal-epochs")
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
    train: str = option(str(SAMPLE_DIR / "train.jsonl"), help="Labelled training data: a file or folder preprocess "
                                                                "reads, or a version ref.")
    dev: str = option(str(SAMPLE_DIR / "dev.jsonl"), help="Labelled dev data (evaluation during training).")
    test: str = option(str(SAMPLE_DIR / "test.jsonl"), help="Labelled test data (the reported scores).")
    unlabelled: str = option(str(SAMPLE_DIR / "unlabelled.txt"), help="Unlabelled text (general distillation and "
                                                                       "the domain masked LM); empty: none (no "
                                                                       "general+task-aug student).")
    task: str = option("auto", choices=TASKS, help="The data's task: auto = token classification when the "
                                                   "training split has a tags column, else classification.")
    mlm: str = option("domain", help="Variant 5's masked LM: domain (trained here, [mlm] section), a model folder / "
                                     "hub id, or none (no variant 5).")
    compute: tuple[str, ...] = option(("equal-steps",), help="Schedules: equal-steps and / or equal-epochs.")
    variants: tuple[str, ...] = option((), help="Only these students (direct, task, task-aug, general+task-aug, "
                                                "task-aug-mlm, task-aug-mention, task-long, task-mix, "
                                                "task-unlabelled, task-aug-unlabelled); empty = all that the data "
                                                "and options allow.")
    name_prefix: str = option("ablation", help="Dataset names: <prefix>-train, <prefix>-train-aug, ...")
    latency_sentences: int = option(256, ge=1, help="Test sentences timed at batch 1 and batch 32.")
    eval_every: int = option(0, ge=0, help="Dev evaluation every N steps (0 = at the end of each run).")
    stage1_steps: int = option(0, ge=0, help="> 0: every task distillation runs this many stage-1 steps ...")
    stage2_steps: int = option(0, ge=0, help="... and stage-2 steps whatever its data's size (equal compute per "
                                             "student); with both set, the direct student runs their sum.")
    mix_share: float = option(0.5, gt=0, lt=1, help="The mixed transfer sets' share of added rows: task-mix = "
                                                    "originals + the copies (those of task-aug-mlm, else task-aug) "
                                                    "at this share, task-unlabelled = originals + the unlabelled "
                                                    "text, task-aug-unlabelled = originals + half of it each.")

    def check(self) -> None:
        unknown = [c for c in self.compute if c not in SCHEDULES]
        if unknown or not self.compute:
            raise ConfigError("compute", f"{unknown or 'nothing'}: choose from {', '.join(SCHEDULES)}")
        if "equal-epochs" in self.compute and not (self.stage1_steps and self.stage2_steps):
            raise ConfigError("compute", "equal-epochs derives its epochs from stage1_steps and stage2_steps")
        known = (*VARIANTS, MLM_VARIANT, MENTION_VARIANT, LONG_VARIANT, *MIX_VARIANTS)
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ConfigError("variants", f"{unknown[0]}: choose from {', '.join(known)}")
        needs_text = ("general+task-aug", "task-unlabelled", "task-aug-unlabelled")
        if not self.unlabelled and (self.mlm == "domain" or any(v in self.variants for v in needs_text)):
            raise ConfigError("unlabelled", "empty, but the domain masked LM (mlm = domain) or a student of "
                                            "general+task-aug, task-unlabelled, task-aug-unlabelled needs "
                                            "unlabelled text")


@dataclass
class StepConfigs:
    """The step configs of one experiment, read from the sections of one TOML file."""

    experiment: ExperimentConfig
    preprocess: PreprocessConfig
    augment: AugmentConfig
    augment_mlm: AugmentConfig          # variant 5's: [augment] with the keys of [augment_mlm] replaced
    augment_mention: AugmentConfig      # variant 6's: [augment] with the keys of [augment_mention] replaced
    mlm: MLMConfig
    teacher: FinetuneConfig
    direct: FinetuneConfig
    general: DistillConfig
    task: TaskDistillConfig
    evaluate: EvaluateConfig            # how every model is scored on dev and test


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> StepConfigs:
    """Read ``[experiment]`` and one section per step from a TOML file. Data paths are taken relative to the
    file's folder when a file is there; a section the recipe does not know is an error, not ignored."""
    unknown = sorted(set(read_toml(path)) - {"experiment", *SECTIONS})
    if unknown:
        raise DistilleryError(f"{path}: unknown section [{unknown[0]}]; the recipe reads "
                              f"{', '.join(f'[{name}]' for name in ('experiment', *SECTIONS))}")
    exp = load_config(ExperimentConfig, path, overrides, section="experiment")
    local = {split: str(Path(path).parent / getattr(exp, split)) for split in SPLITS
             if getattr(exp, split) and (Path(path).parent / getattr(exp, split)).exists()}
    return StepConfigs(
        experiment=dataclasses.replace(exp, **local),
        preprocess=load_config(PreprocessConfig, path, section="preprocess"),
        augment=load_config(AugmentConfig, path, section="augment"),
        augment_mlm=load_config(AugmentConfig, path, section=("augment", "augment_mlm")),
        augment_mention=load_config(AugmentConfig, path, section=("augment", "augment_mention")),
        mlm=load_config(MLMConfig, path, section="mlm"),
        teacher=load_config(FinetuneConfig, path, section="teacher"),
        direct=load_config(FinetuneConfig, path, section="direct"),
        general=load_config(DistillConfig, path, section="general"),
        task=load_config(TaskDistillConfig, path, section="task"),
        evaluate=load_config(EvaluateConfig, path, section="evaluate"),
    )


class Clock:
    """Wall-clock seconds of each stage run, kept in ``wall_clock.json``; a stage found up to date (reused)
    keeps the time it took when it ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = read_own_json(path, {})
        self.used: list[str] = []           # the stage runs of this experiment, timed now or earlier

    def run(self, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a StepResult or a TrainedModel) and keep its time unless it was up to
        date."""
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if not getattr(result, "up_to_date", False) or key not in self.seconds:
            self.seconds[key] = round(time.perf_counter() - start, 1)
        self.used.append(key)
        write_json_atomic(self.path, self.seconds)
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
    names: dict[str, str] = field(default_factory=dict)            # split -> version ref
    data: dict[str, str] = field(default_factory=dict)             # distilled variant -> training version
    augmented: dict[str, dict[str, Any]] = field(default_factory=dict)   # variant -> its augmented version
    mlm: TrainedModel | None = None
    teacher: Path | None = None
    runs: dict[str, dict[str, dict[int, Path]]] = field(default_factory=dict)  # schedule -> variant -> seed -> model
    general_student: Path | None = None
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)   # schedule -> row -> scores
    tagging: bool = False                                          # token classification (set with the data)
    mixes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # mixed variant -> its added sources
    gap: dict[str, Any] | None = None                              # the teacher-direct gap check on dev

    @property
    def exp(self) -> ExperimentConfig:
        return self.cfgs.experiment

    @property
    def metric(self) -> str:
        """The main score: entity F1 (token classification) or accuracy."""
        return "f1" if self.tagging else "accuracy"

    def rows(self, ref: str) -> int:
        return self.store.manifest(ref)["num_rows"]

    def wanted(self, variant: str) -> bool:
        """Whether the experiment trains ``variant`` (``variants`` empty: every one the data and options allow)."""
        if variant in ("general+task-aug", "task-unlabelled", "task-aug-unlabelled") and not self.exp.unlabelled:
            return False
        return not self.exp.variants or variant in self.exp.variants

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


def scheduled(cfg: Any, exp: ExperimentConfig, schedule: str, rows: int, train_rows: int) -> Any:
    """A student's config under a schedule: ``equal-steps`` gives every student the experiment's step counts;
    ``equal-epochs`` gives it the epochs those steps make on the original training split, on its own data."""
    return equal_steps(cfg, exp, rows if schedule == "equal-steps" else train_rows)


def initial_student(teacher: Path, pretrained: str, exp: ExperimentConfig, seed: int) -> Any:
    """The untrained student every variant of one seed starts from: the experiment's shape and the fine-tuned
    teacher's labels, randomly initialised or (``student_init = "teacher"``) from the *pre-trained* encoder's
    layers; never from the fine-tuned teacher, whose task weights the no-teacher baseline must not see."""
    teacher_config = load_model_config(teacher)
    labels = {"num_labels": teacher_config.num_labels, "id2label": teacher_config.id2label,
              "label2id": teacher_config.label2id}
    if token_classifier(teacher_config):            # a token head like the teacher's
        labels["architectures"] = list(teacher_config.architectures)
    shape = {"num_hidden_layers": exp.student_layers, "hidden_size": exp.student_hidden,
             "num_attention_heads": exp.student_heads, "intermediate_size": exp.student_intermediate}
    init_from = None
    if exp.student_init == "teacher":
        encoder = load_teacher(pretrained, False, torch.device("cpu"))
        init_from = (encoder, layer_mapping(exp.student_layers, num_layers(encoder)))
    return load_student("custom", teacher_config, shape, labels, "classifier", seed, init_from)


# ---- the stages ------------------------------------------------------------------------------------------
def prepare_data(x: Experiment) -> None:
    """The splits as versions (files preprocessed, refs used as they are; no unlabelled text when it is empty),
    then the data's task (``choose_task``)."""
    cfgs, exp = x.cfgs, x.exp
    for split in filter(lambda split: getattr(exp, split), SPLITS):
        source = getattr(exp, split)
        if not Path(source).exists():
            x.names[split] = x.store.resolve(source)
            continue
        name = x.names[split] = f"{exp.name_prefix}-{split}"
        cfg = cfgs.preprocess if split != "unlabelled" else _text_only(cfgs.preprocess, [Path(source)])
        x.clock.run(f"preprocess/{name}", _preprocess, x.store, [Path(source)], cfg, name)
    choose_task(x)


def choose_task(x: Experiment) -> None:
    """Token classification when ``task`` says so or (``auto``) the training split has a tags column; its teacher
    and students are then trained as token classifiers (the step configs' ``task``)."""
    has_tags = TAGS in {f["name"] for f in x.store.manifest(x.names["train"])["schema"]}
    if x.exp.task == TOKEN_TASK and not has_tags:
        raise DistilleryError(f"task = {TOKEN_TASK}, but the training split {x.exp.train} has no '{TAGS}' column "
                              f"(read a CoNLL file, or name tokens_column / tags_column in [preprocess.input])")
    if x.exp.task == "classification" and has_tags:
        raise DistilleryError(f"task = classification, but the training split {x.exp.train} is token-classification "
                              f"data (a '{TAGS}' column): set task = {TOKEN_TASK} or auto")
    x.tagging = x.exp.task == TOKEN_TASK or (x.exp.task == "auto" and has_tags)
    if x.tagging:
        x.cfgs = dataclasses.replace(x.cfgs, **{section: dataclasses.replace(getattr(x.cfgs, section), task=TOKEN_TASK)
                                                for section in ("teacher", "direct", "task")})


def train_mlm(x: Experiment) -> None:
    """The domain masked LM of variant 5, on the unlabelled text and the training split (both files), else on
    the unlabelled version alone; scored on dev."""
    if x.exp.mlm != "domain":
        return
    exp, name = x.exp, f"{x.exp.name_prefix}-mlm-text"
    text = x.names["unlabelled"]
    if Path(exp.unlabelled).exists() and Path(exp.train).exists():
        sources = [Path(exp.unlabelled), Path(exp.train)]
        x.clock.run(f"preprocess/{name}", _preprocess, x.store, sources, _text_only(x.cfgs.preprocess, sources),
                    name)
        text = name
    cfg = dataclasses.replace(x.cfgs.mlm, eval_ref=x.names["dev"])
    x.mlm = x.clock.run("mlm", train_augmentation_mlm, x.store, text, cfg, x.out / "mlm", resume=True)


def augment_data(x: Experiment) -> None:
    """The training split augmented with word-vector candidates only, (variant 5) with the masked LM's and
    (variant 6, token classification) with word vectors and mention replacement."""
    prefix = x.exp.name_prefix
    x.data = {"task": x.names["train"], "task-aug": f"{prefix}-train-aug"}
    augmentations = [("augment", "task-aug", dataclasses.replace(x.cfgs.augment, mlm="none",
                                                                 mention_replace_prob=0.0))]
    if x.exp.mlm != "none":
        x.data[MLM_VARIANT] = f"{prefix}-train-aug-mlm"
        mlm = str(x.mlm.path) if x.mlm else x.exp.mlm
        augmentations.append(("augment-mlm", MLM_VARIANT, dataclasses.replace(x.cfgs.augment_mlm, mlm=mlm)))
    if _mention_variant(x):
        x.data[MENTION_VARIANT] = f"{prefix}-train-aug-mention"
        augmentations.append(("augment-mention", MENTION_VARIANT,
                              dataclasses.replace(x.cfgs.augment_mention, mlm="none")))
    for stage, variant, cfg in augmentations:
        result = x.clock.run(f"{stage}/{x.data[variant]}", _augment, x.store, x.names["train"], cfg,
                             x.data[variant])
        x.augmented[variant] = result.manifest
    copies, share = x.data.get(MLM_VARIANT, x.data["task-aug"]), x.exp.mix_share
    x.mixes = {"task-mix": [{"ref": copies, "share": share, "copies_only": True}]}
    if x.exp.unlabelled:
        text = x.names["unlabelled"]
        x.mixes["task-unlabelled"] = [{"ref": text, "share": share}]
        x.mixes["task-aug-unlabelled"] = [{"ref": copies, "share": share / 2, "copies_only": True},
                                          {"ref": text, "share": share / 2}]


def _mention_variant(x: Experiment) -> bool:
    """Whether variant 6 runs: token classification with ``mention_replace_prob`` set in ``[augment_mention]``
    (asked for by name without them: an error)."""
    runs = x.tagging and x.cfgs.augment_mention.mention_replace_prob > 0 and x.wanted(MENTION_VARIANT)
    if MENTION_VARIANT in x.exp.variants and not runs:
        raise DistilleryError(f"variant {MENTION_VARIANT} needs token-classification data and "
                              "mention_replace_prob > 0 in [augment_mention]")
    return runs


def train_teacher(x: Experiment) -> None:
    """Fine-tune the teacher on the training split."""
    cfg = dataclasses.replace(x.cfgs.teacher, **x.dev())
    x.teacher = _train(x, "teacher", finetune, x.names["train"], cfg)


def measure_agreement(x: Experiment) -> None:
    """How often the teacher keeps its label on the augmented copies, per candidate source (teacher-logits
    versions of the augmented splits, whose cards record it)."""
    for variant in x.augmented:
        cfg = CacheLogitsConfig(max_seq_length=x.cfgs.teacher.max_seq_length)
        plan = plan_teacher_logits(x.store, x.data[variant], x.teacher, cfg)
        result = x.clock.run(f"agreement/{x.data[variant]}", run_step, x.store, plan, f"{x.data[variant]}-logits")
        x.augmented[variant] = {**x.augmented[variant], "agreement": result.manifest["extra"]["agreement"]}


def train_students(x: Experiment) -> None:
    """The initial student of every seed, the direct students of every seed and the gap check (``gap_check``:
    printed as soon as they exist, before hours of distillation), then per seed every other variant from its
    initial student under every schedule (general distillation once, from the first seed's initial student; runs
    identical under two schedules are trained once)."""
    x.runs = {schedule: {v: {} for v in (*VARIANTS, *x.data, LONG_VARIANT, *x.mixes) if x.wanted(v)}
              for schedule in x.exp.compute}
    inits = {}
    for seed in x.exp.seeds:
        inits[seed] = init = x.out / f"student-init-seed{seed}"
        if not (init / "config.json").exists():
            initial_student(x.teacher, resolve_model(x.cfgs.teacher.model), x.exp, seed).save_pretrained(init)
            AutoTokenizer.from_pretrained(x.teacher).save_pretrained(init)
    if x.wanted("direct"):
        train_rows = x.rows(x.names["train"])
        for seed in x.exp.seeds:
            direct_cfg = dataclasses.replace(x.cfgs.direct, model=str(inits[seed]), seed=seed, **x.dev())
            model = _train(x, f"direct-seed{seed}", finetune, x.names["train"],
                           equal_steps(direct_cfg, x.exp, train_rows))
            for schedule in x.exp.compute:
                x.runs[schedule]["direct"][seed] = model
        x.gap = gap_check(read_scores(x.teacher)[x.metric],
                          [read_scores(x.runs[x.exp.compute[0]]["direct"][s])[x.metric] for s in x.exp.seeds],
                          x.metric)
        print(gap_check_line(x.gap), flush=True)
    for seed in x.exp.seeds:
        if x.general_student is None and x.wanted("general+task-aug"):
            general_cfg = dataclasses.replace(x.cfgs.general, teacher=resolve_model(x.cfgs.general.teacher),
                                              student=str(inits[seed]), seed=seed)
            x.general_student = _train(x, "general", general_distill, x.names["unlabelled"], general_cfg)
        for schedule in x.exp.compute:
            _train_seed(x, schedule, seed, inits[seed])


def _train_seed(x: Experiment, schedule: str, seed: int, init: Path) -> None:
    train_rows, runs = x.rows(x.names["train"]), x.runs[schedule]
    task_cfg = dataclasses.replace(x.cfgs.task, teacher=str(x.teacher), student=str(init), seed=seed, **x.dev())
    students = [(variant, ref, task_cfg) for variant, ref in x.data.items()]
    if x.general_student is not None:
        students.append(("general+task-aug", x.data["task-aug"],
                         dataclasses.replace(task_cfg, student=str(x.general_student))))
    students += [(variant, x.names["train"], dataclasses.replace(task_cfg, mix=mix))
                 for variant, mix in x.mixes.items()]
    for variant, ref, cfg in filter(lambda student: x.wanted(student[0]), students):
        rows = _epoch_rows(x, ref, cfg)
        epochs = schedule == "equal-epochs" and rows != train_rows         # else the same run as equal-steps
        runs[variant][seed] = _train(x, f"{variant}-{'epochs-' if epochs else ''}seed{seed}", task_distill, ref,
                                     scheduled(cfg, x.exp, schedule, rows, train_rows))
    if x.wanted(LONG_VARIANT):
        # the originals for as many steps as the copies' student takes under equal-epochs (the same run as
        # task under equal-steps): "more data" separated from "more steps"
        long_rows = x.rows(x.data.get(MLM_VARIANT, x.data["task-aug"]))
        folder = f"task-{'long-' if schedule == 'equal-epochs' else ''}seed{seed}"
        runs[LONG_VARIANT][seed] = _train(x, folder, task_distill, x.names["train"],
                                          equal_steps(task_cfg, x.exp, train_rows if schedule == "equal-steps"
                                                      else train_rows * train_rows / long_rows))


def _epoch_rows(x: Experiment, ref: str, cfg: Any) -> int:
    """Rows of one epoch of a student's training data: its version's, or its mixture's (``MixedStream``'s rule)."""
    if not cfg.mix:
        return x.rows(ref)
    return training_stream(x.store, ref, x.teacher, cfg, {}, Runtime(torch.device("cpu"))).num_rows


def _text_only(cfg: PreprocessConfig, sources: list[Path]) -> PreprocessConfig:
    """The labelled splits' preprocessing without labels; plain-text files alone have no columns to name."""
    columns: dict[str, Any] = {"label_column": None}
    if all(fmt == "txt" for fmt in input_formats(sources, cfg.input.format)):
        columns.update(text_column="text", text_pair_column=None)
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, **columns))


def _preprocess(store: Store, sources: list[Path], cfg: PreprocessConfig, name: str) -> Any:
    return run_step(store, plan_preprocess(sources, cfg), name)


def _augment(store: Store, ref: str, cfg: AugmentConfig, name: str) -> Any:
    return run_step(store, plan_augment(store, ref, cfg), name)


def _train(x: Experiment, folder: str, train: Callable[..., Any], ref: str, cfg: Any) -> Path:
    """Train (or reuse) the run ``folder`` of the experiment; its model folder."""
    return x.clock.run(folder, train, x.store, ref, cfg, x.out / folder, resume=True).path


def score_key(model_dir: Path, version_id: str, config: EvaluateConfig) -> str:
    """The score cache's key of a model on a version: the model (folder and its weights' mtime), the version, the
    evaluation config (the sequence length resolved for this model) and the scoring rules."""
    evaluation = {**identity_dict(config), "max_seq_length": model_seq_length(model_dir, config.max_seq_length)}
    return (f"{model_dir}@{(model_dir / 'model.safetensors').stat().st_mtime_ns}|{version_id}|"
            f"{json.dumps(evaluation, sort_keys=True)}|rules {SCORING_RULES}")


SCORES = {"accuracy": ("accuracy", "macro_f1"), "f1": ("f1", "precision", "recall", "token_accuracy")}


def score_models(x: Experiment) -> None:
    """Dev and test scores, parameters and latency of the teacher and of every student (all seeds), per schedule;
    the best student of each schedule is picked by the main metric on dev (``best_student``) and reported on test.
    Each row holds the test scores of ``SCORES[x.metric]`` (mean, std, ... over seeds), ``dev_<metric>`` and
    ``<metric>_vs_teacher``."""
    test_texts = [row["text"] for row in x.store.read_table(x.names["test"], columns=["text"]).to_pylist()]
    timing_texts = test_texts[:x.exp.latency_sentences]
    cache_path = x.out / "scores.json"       # a model scored before (same weights, version, config, rules) is not again
    cache: dict[str, Any] = read_own_json(cache_path, {})

    def score(model_dir: Path, split: str) -> dict[str, Any]:
        key = score_key(model_dir, x.store.resolve(x.names[split]), x.cfgs.evaluate)
        if key not in cache:
            cache[key] = evaluate(x.store, x.names[split], model_dir, x.cfgs.evaluate)
            if split == "test":
                cache[key].update(**parameter_counts(model_dir),
                                  latency_ms_batch1=latency_ms(model_dir, timing_texts, 1),
                                  latency_ms_batch32=latency_ms(model_dir, timing_texts, 32))
            write_json_atomic(cache_path, cache)
        return cache[key]

    def describe(model_dirs: list[Path]) -> dict[str, Any]:
        scores, dev = [score(d, "test") for d in model_dirs], [score(d, "dev") for d in model_dirs]
        first = scores[0]
        return {**{name: summarise([s[name] for s in scores]) for name in SCORES[x.metric]},
                f"dev_{x.metric}": summarise([s[x.metric] for s in dev]), "max_seq_length": first["max_seq_length"],
                "parameters": first["parameters"], "non_embedding_parameters": first["non_embedding_parameters"],
                "latency_ms_batch1": first["latency_ms_batch1"], "latency_ms_batch32": first["latency_ms_batch32"],
                "runs": [os.path.relpath(d, x.out) for d in model_dirs]}     # relative: results travel

    teacher = describe([x.teacher])
    for schedule, runs in x.runs.items():
        table = {"teacher": teacher, **{v: describe([seeds[s] for s in x.exp.seeds]) for v, seeds in runs.items()}}
        for row in table.values():
            row[f"{x.metric}_vs_teacher"] = round(row[x.metric]["mean"] / teacher[x.metric]["mean"], 4) \
                if teacher[x.metric]["mean"] else None
            row["non_embedding_vs_teacher"] = round(row["non_embedding_parameters"] /
                                                    teacher["non_embedding_parameters"], 4)
        x.tables[schedule] = table


def best_student(table: dict[str, dict[str, Any]], metric: str = "accuracy") -> dict[str, Any] | None:
    """The student with the highest mean dev ``metric`` (the first in table order on a tie), with its test
    scores: picked on dev, reported on test, so that the pick does not flatter its own test score."""
    students = {name: row for name, row in table.items() if name != "teacher"}
    if not students:
        return None
    name = max(students, key=lambda n: students[n][f"dev_{metric}"]["mean"])
    row = students[name]
    return {"student": name, "picked_by": f"mean dev {METRIC_NAMES[metric]}", f"dev_{metric}":
            row[f"dev_{metric}"]["mean"], f"test_{metric}": row[metric]["mean"],
            f"test_{metric}_vs_teacher": row[f"{metric}_vs_teacher"]}


def teacher_gap(table: dict[str, dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The teacher's mean test ``metric`` minus the direct student's, and the share of that gap each distilled
    student closes (None without a direct student)."""
    if "direct" not in table:
        return None
    teacher, direct = table["teacher"][metric]["mean"], table["direct"][metric]["mean"]
    gap = teacher - direct
    closed = {name: round((row[metric]["mean"] - direct) / gap, 4) if gap else None
              for name, row in table.items() if name not in ("teacher", "direct")}
    return {"teacher": teacher, "direct": direct, "gap": round(gap, 4), "closed": closed}


TARGET = {"score_vs_teacher": 0.95, "non_embedding_vs_teacher": 1 / 3}


def size_target(table: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Which students reach ``TARGET``: mean test ``metric`` >= 95% of the teacher's at <= 1/3 of its
    non-embedding parameters."""
    students = {name: {"score_vs_teacher": row[f"{metric}_vs_teacher"],
                       "non_embedding_vs_teacher": row["non_embedding_vs_teacher"]}
                for name, row in table.items() if name != "teacher"}
    for row in students.values():
        row["met"] = (row["score_vs_teacher"] is not None and row["score_vs_teacher"] >= TARGET["score_vs_teacher"]
                      and row["non_embedding_vs_teacher"] <= TARGET["non_embedding_vs_teacher"])
    return {**TARGET, "students": students}


STAGES: tuple[tuple[str, Callable[[Experiment], None]], ...] = (
    ("data", prepare_data), ("mlm", train_mlm), ("augment", augment_data), ("teacher", train_teacher),
    ("agreement", measure_agreement), ("students", train_students), ("scores", score_models))


def run_experiment(store: Store, cfgs: StepConfigs, out: Path) -> dict[str, Any]:
    """Run every stage (reusing finished work) and write ``results.json``, ``README.md`` and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    x = Experiment(store, cfgs, out, Clock(out / "wall_clock.json"))
    for _, stage in STAGES:
        stage(x)
    results = {
        "task": TOKEN_TASK if x.tagging else "classification", "metric": x.metric,
        "config": {"experiment": to_dict(x.exp), **{s: to_dict(getattr(x.cfgs, s)) for s in SECTIONS
                                                    if x.tagging or s != "augment_mention"}},
        "data": {n: _data_record(x, v) for n, v in x.names.items()},
        "mlm": _mlm_record(x),
        "augmentation": {variant: {"version_id": m["version_id"], "rows": m["num_rows"],
                                   "counts": m["extra"].get("counts", {}), "agreement": m.get("agreement")}
                         for variant, m in x.augmented.items()},
        "gap_check": x.gap,
        "schedules": {schedule: _schedule_record(table, x.metric, x.tagging) for schedule, table in x.tables.items()},
        "scoring": {"rules": SCORING_RULES, "evaluate": to_dict(cfgs.evaluate),
                    "max_seq_length": cfgs.evaluate.max_seq_length or "each model's training length (its card.json)"},
        "wall_clock_seconds": x.clock.report(),
    }
    write_json_atomic(out / "results.json", results)
    write_report(results, out)
    return results


def _data_record(x: Experiment, ref: str) -> dict[str, Any]:
    """A split's version, rows and labels (token classification: tag and entity counts too)."""
    stats = x.store.manifest(ref)["stats"]
    record = {"version_id": x.store.resolve(ref), "rows": x.rows(ref), "labels": stats.get("label_counts")}
    if x.tagging:
        record.update(tags=stats.get("tag_counts"), entities=stats.get("entity_counts"))
    return record


def _schedule_record(table: dict[str, dict[str, Any]], metric: str, tagging: bool) -> dict[str, Any]:
    """One schedule's table, best student and comparisons; token classification adds the teacher-direct gap and
    the size / F1 target."""
    record = {"table": table, "best": best_student(table, metric),
              "comparisons": _comparisons({k: v for k, v in table.items() if k != "teacher"}, metric)}
    if tagging:
        record.update(gap=teacher_gap(table, metric), target=size_target(table, metric))
    return record


def _mlm_record(x: Experiment) -> dict[str, Any] | None:
    """Variant 5's masked LM and its scores: the one trained here, or a given distillery-trained one's."""
    if x.mlm:
        return {"model": str(x.mlm.path), "scores": x.mlm.scores}
    if x.exp.mlm != "none" and Path(x.exp.mlm).is_dir():
        return {"model": x.exp.mlm, "scores": read_scores(Path(x.exp.mlm))}
    return None


# ---- measurements -----------------------------------------------------------------------------------------
def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Total and non-embedding parameters of a saved model (sequence or token classifier)."""
    model = _load_classifier(model_dir)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    return {"parameters": total, "non_embedding_parameters": total - embedding}


def latency_ms(model_dir: Path, texts: list[str], batch_size: int, max_seq_length: int = 128) -> float:
    """Mean CPU milliseconds per sentence (tokenisation included) at a batch size."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _load_classifier(model_dir).eval()
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    with torch.inference_mode():
        model(**tokenizer(batches[0], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_seq_length))  # warm-up
        start = time.perf_counter()
        for batch in batches:
            model(**tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_seq_length))
    return round(1000 * (time.perf_counter() - start) / len(texts), 3)


def _load_classifier(model_dir: Path) -> Any:
    """A saved classifier with the head its config names (sequence or token classification)."""
    return classifier_class(load_model_config(model_dir)).from_pretrained(model_dir)


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and range of per-seed scores."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _comparisons(table: dict[str, dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Each pair of students: is the difference of the main metric larger than the two seed spreads added? (None:
    a student has one seed, so there is no spread to compare with.)"""
    out = []
    names = list(table)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = table[a][metric], table[b][metric]
            diff = sb["mean"] - sa["mean"]
            spread = sa["std"] + sb["std"]
            measured = min(sa.get("n", 2), sb.get("n", 2)) > 1      # one seed has no spread to compare with
            out.append({"a": a, "b": b, "b_minus_a": round(diff, 4), "spread": round(spread, 4),
                        "larger_than_spread": abs(diff) > spread if measured else None})
    return out
