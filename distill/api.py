"""Python API: fine-tune a teacher, general and task distillation, evaluation of a saved model.

Sequence classification (and regression) and token classification (a version with ``tokens`` and ``tags``: a
token head, labels per piece, entity-level scores) share every mode; the label kwargs of a run say which
(``tagging.token_classifier``).

Each training mode is a ``RunSpec`` (``distill.train_run``): fine-tuning and TinyBERT-objective distillation
here, masked-LM training and DistilBERT's general distillation in ``distill.mlm``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import models, students
from distill.card import model_seq_length
from distill.config import (
    DistillConfig,
    EvaluateConfig,
    FinetuneConfig,
    TaskDistillConfig,
    TrainConfig,
    check_batch_tokens,
    stage_config,
)
from distill.data import LOGITS, TAGS, TOKENS, WORD_IDS, Collator, MixedStream, ShardStream, make_loader, to_tensors
from distill.matches import Match, MatchSet, default_matches
from distill.metrics import classification_metrics, regression_metrics
from distill.mlm import distil_masked_lm
from distill.objective import Objective
from distill.runs import TrainedModel, record_evaluation
from distill.tagging import OUTSIDE_TAG, TOKEN_HEAD, entity_scores, token_classifier, word_predictions
from distill.train_run import Built, RunSpec, train_run
from distill.trainer import EvalFn, Runtime, setup_runtime, to_device
from pipelines.errors import DistilleryError
from pipelines.store import Store


# ---- labels ------------------------------------------------------------------------------------------
def label_kwargs(store: Store, ref: str, cfg: TrainConfig) -> dict[str, Any]:
    """num_labels / id2label / label2id / problem_type for a model trained on ``ref`` (empty: no labels); for token
    classification (``task``, or ``auto`` and a ``tags`` column) those of a token classifier (``tag_kwargs``)."""
    manifest = store.manifest(ref)
    if cfg.task == "token-classification" or (cfg.task == "auto" and _has_tags(manifest)):
        return tag_kwargs(ref, manifest, cfg)
    stats = manifest["stats"]
    regression = cfg.task == "regression" or (cfg.task == "auto" and "label_values" in stats)
    if regression:
        return {"num_labels": 1, "problem_type": "regression"}
    labels = [str(x) for x in cfg.labels] or sorted(stats.get("label_counts", {}))
    if not labels:
        if cfg.task == "classification":
            raise DistilleryError(f"version {ref} has no labels; give the label vocabulary with `labels`")
        return {}
    if not cfg.labels and stats.get("num_labels", len(labels)) > len(labels):
        raise DistilleryError(f"version {ref} has {stats['num_labels']} labels but its manifest lists only "
                              f"{len(labels)}; give the vocabulary explicitly with `labels`")
    return {**_vocabulary(labels), "problem_type": "single_label_classification"}


def _vocabulary(labels: list[str]) -> dict[str, Any]:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def _has_tags(manifest: dict[str, Any]) -> bool:
    return TAGS in {f["name"] for f in manifest["schema"]}


def tag_kwargs(ref: str, manifest: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The label kwargs of a token classifier trained on the tagging version ``ref``: its tag vocabulary (the
    sorted ``tag_counts`` of its manifest, or ``cfg.labels``) and the token-classifier marker (``architectures``,
    which saving replaces with the model's own class)."""
    if not _has_tags(manifest):
        raise DistilleryError(f"version {ref} has no '{TAGS}' column to train a token classifier on")
    tags = [str(x) for x in cfg.labels] or sorted(manifest["stats"].get("tag_counts", {}))
    if not tags:
        raise DistilleryError(f"version {ref} records no tags (stats.tag_counts); give the tag vocabulary with "
                              f"`labels`")
    return {**_vocabulary(tags), "architectures": [TOKEN_HEAD]}


def model_labels(config: Any) -> dict[str, Any]:
    """The label kwargs a saved model carries (a token classifier's with its ``architectures``)."""
    if token_classifier(config):
        tags = [str(v) for _, v in sorted((int(k), v) for k, v in config.id2label.items())]
        return {**_vocabulary(tags), "architectures": list(config.architectures)}
    if getattr(config, "problem_type", None) == "regression" or config.num_labels == 1:
        return {"num_labels": 1, "problem_type": "regression"}
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
            "problem_type": "single_label_classification"}


def _is_regression(labels: dict[str, Any]) -> bool:
    return labels.get("problem_type") == "regression"


def _is_tagging(labels: dict[str, Any]) -> bool:
    return token_classifier(labels)


def _label_order(id2label: Any) -> list[str] | None:
    """The labels of an id2label mapping in id order (None: not a mapping of the ids 0..n-1)."""
    try:
        order = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        return None
    return [order[i] for i in range(len(order))] if set(order) == set(range(len(order))) else None


def check_logits_labels(store: Store, ref: str, teacher: str) -> None:
    """Refuse a version of cached teacher logits whose label order (``cache-logits`` records the teacher's id2label
    in the version's extra) is not the order of ``teacher``'s outputs, in one line naming both orders."""
    cached = _label_order(store.manifest(ref)["extra"].get("id2label"))
    expected = _label_order(models.load_config(teacher, "teacher").id2label)
    if cached != expected:
        raise DistilleryError(f"the teacher logits in {ref} are in label order {cached or '(not recorded)'} but "
                              f"teacher {teacher} predicts in order {expected}; cache its logits with `distillery "
                              f"distill cache-logits`")


# ---- streams and scores ------------------------------------------------------------------------------------
def make_stream(store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig, labels: dict[str, Any],
                runtime: Runtime | None = None, shuffle: bool = True, batch_size: int | None = None,
                copies_only: bool = False) -> ShardStream:
    """The streaming dataset of a version for a run's config and this process's rank."""
    runtime = runtime or Runtime(torch.device("cpu"))
    return ShardStream.from_store(store, ref, tokenizer, batch_size=batch_size or cfg.batch_size,
                                  max_seq_length=cfg.max_seq_length, seed=cfg.seed, shuffle=shuffle,
                                  shuffle_buffer=cfg.shuffle_buffer, group_batches=cfg.group_batches,
                                  label2id=labels.get("label2id"), regression=_is_regression(labels),
                                  tagging=_is_tagging(labels), label_all_pieces=cfg.label_all_pieces,
                                  rank=runtime.rank, world_size=runtime.world_size, copies_only=copies_only)


def training_stream(store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig, labels: dict[str, Any],
                    runtime: Runtime) -> ShardStream:
    """A run's training stream: the version ``ref``, or with ``cfg.mix`` a ``MixedStream`` of it (the share the
    mix leaves) and the mix's sources."""
    main = make_stream(store, ref, tokenizer, cfg, labels, runtime)
    mix = getattr(cfg, "mix", ())
    if not mix:
        return main
    sources = [make_stream(store, m.ref, tokenizer, cfg, labels, runtime, copies_only=m.copies_only) for m in mix]
    if LOGITS in main._columns and not all(LOGITS in s._columns for s in sources):
        missing = next(m.ref for m, s in zip(mix, sources) if LOGITS not in s._columns)
        raise DistilleryError(f"the training data has the teacher's cached logits but mix source {missing} has not: "
                              f"cache them for it too (`distill cache-logits`), or let the teacher run")
    return MixedStream([main, *sources], [1 - sum(m.share for m in mix), *(m.share for m in mix)], seed=cfg.seed)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def classifier_scores(model: nn.Module, stream: ShardStream, device: torch.device, num_workers: int = 0
                      ) -> dict[str, Any]:
    """Metrics of a sequence classifier / regressor over a stream whose labels are mapped by name, with ``rows``
    (every row of the stream), ``unknown_labels`` and the ``max_seq_length`` the rows were truncated to.

    Classification: a row whose gold label the model does not know (or that has none) is an error, counted in
    every denominator (``classification_metrics``). Regression: a row without a gold value (NaN) has nothing to
    correlate with; it is left out of Pearson, Spearman and MSE, which are over ``rows - unknown_labels``."""
    was_training = model.training
    model.eval()
    regression = _is_regression(model_labels(model.config))
    predictions, gold, rows = [], [], 0
    stream.set_state(0, 0)
    for batch in make_loader(stream, num_workers):
        if "labels" not in batch:
            raise DistilleryError("the evaluation version has no 'label' column")
        inputs = to_device({k: batch[k] for k in MODEL_INPUTS}, device)
        logits = model(**inputs).logits.float().cpu()
        labels = batch["labels"]
        rows += len(labels)
        if regression:
            known = ~torch.isnan(labels)
            predictions.append(logits.view(-1)[known])
            gold.append(labels[known])
        else:
            predictions.append(logits.argmax(-1))
            gold.append(labels)
    model.train(was_training)
    preds, gold_all = torch.cat(predictions).numpy(), torch.cat(gold).numpy()
    if regression:
        scores, unknown = regression_metrics(preds, gold_all), rows - len(gold_all)
    else:
        num_labels = model.config.num_labels
        scores = classification_metrics(preds, gold_all, num_labels)
        unknown = int(((gold_all < 0) | (gold_all >= num_labels)).sum())
    return {**scores, "rows": rows, "unknown_labels": unknown, "max_seq_length": stream.collate.max_seq_length}


@torch.no_grad()
def tagger_scores(model: nn.Module, store: Store, ref: str, tokenizer: str | Path, max_seq_length: int,
                  device: torch.device, strict: bool = False, batch_size: int = 64) -> dict[str, Any]:
    """Entity-level precision / recall / F1 (seqeval, micro and ``per_type``; ``strict``: its strict IOB2 mode) and
    token accuracy of a token classifier on every word of the tagging version ``ref``, with ``rows``,
    ``words_beyond_window`` (words the ``max_seq_length`` window cut off: each is predicted O) and
    ``max_seq_length``. A word is predicted by its first piece; a gold tag the model does not know is an error
    (``unknown_tag_words``; ``tagging.entity_scores``). The main metric, ``f1``, comes first."""
    if not _has_tags(store.manifest(ref)):
        raise DistilleryError(f"the evaluation version {ref} has no '{TAGS}' column")
    was_training = model.training
    model.eval()
    id2label = model_labels(model.config)["id2label"]
    collate = Collator(tokenizer, max_seq_length, tagging=True)
    gold, predicted, beyond = [], [], 0
    for table in store.iter_batches(ref, columns=[TOKENS, TAGS], batch_size=batch_size):
        rows = table.to_pylist()
        collate.encode(rows)
        inputs = to_device({k: v for k, v in to_tensors(collate(rows)).items() if k in MODEL_INPUTS}, device)
        for row, pieces in zip(rows, model(**inputs).logits.argmax(-1).cpu().tolist()):
            words, cut = word_predictions(pieces, row[WORD_IDS], len(row[TOKENS] or []), -1)
            gold.append([str(tag) for tag in row[TAGS] or []])
            predicted.append([id2label.get(i, OUTSIDE_TAG) for i in words])
            beyond += cut
    model.train(was_training)
    try:
        scores = entity_scores(gold, predicted, strict, known_tags=set(id2label.values()))
    except ValueError as exc:
        raise DistilleryError(f"cannot score the tags of {ref}: {exc}") from None
    return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"], **scores,
            "rows": len(gold), "words_beyond_window": beyond, "max_seq_length": max_seq_length}


def evaluate(store: Store, ref: str, model_dir: str | Path, config: EvaluateConfig | None = None) -> dict[str, Any]:
    """accuracy / macro-F1 / Matthews (classification), Pearson / Spearman (regression) or entity F1 (token
    classification) of a saved model on a version (``classifier_scores``, ``tagger_scores``), added to its card's
    evaluations; at the sequence length it was trained at unless ``config.max_seq_length`` says otherwise."""
    config = config or EvaluateConfig()
    model_dir = models.saved_model_dir(model_dir)
    length = model_seq_length(model_dir, config.max_seq_length)
    check_batch_tokens(config.batch_size, length)
    models.check_against_model(model_dir, "model", length)
    runtime = setup_runtime(TrainConfig(device=config.device, num_workers=0))
    model = models.load_saved_classifier(model_dir).to(runtime.device)
    labels = model_labels(model.config)
    if _is_tagging(labels):
        found = tagger_scores(model, store, ref, model_dir, length, runtime.device, config.strict, config.batch_size)
    else:
        cfg = TrainConfig(batch_size=config.batch_size, max_seq_length=length)
        found = classifier_scores(model, make_stream(store, ref, model_dir, cfg, labels, shuffle=False),
                                  runtime.device)
    scores = {"version_id": store.resolve(ref), **found}
    record_evaluation(Path(model_dir), store.manifest(ref), scores)
    return scores


@dataclass
class ClassifierRows:
    """Rows for a sequence classifier or regressor, or a token classifier, their gold labels mapped by name to its
    outputs; ``labels``: the model's label kwargs ({}: plain text for a model without a prediction layer, nothing to
    score)."""

    labels: dict[str, Any]

    def train_stream(self, store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig,
                     runtime: Runtime) -> ShardStream:
        return training_stream(store, ref, tokenizer, cfg, self.labels, runtime)

    def eval_fn(self, store: Store, cfg: TrainConfig, tokenizer: str | Path, runtime: Runtime) -> EvalFn | None:
        """The student's ``classifier_scores`` (``tagger_scores``) on ``cfg.eval_ref`` at the run's length, over the
        whole version (no runtime given to the stream: rank 0 evaluates alone, never only its share of the rows)."""
        if not cfg.eval_ref or not self.labels:
            return None
        if _is_tagging(self.labels):
            return lambda objective: tagger_scores(objective.student, store, cfg.eval_ref, tokenizer,
                                                   cfg.max_seq_length, runtime.device)
        stream = make_stream(store, cfg.eval_ref, tokenizer, cfg, self.labels, shuffle=False, batch_size=64)
        return lambda objective: classifier_scores(objective.student, stream, runtime.device)


# ---- fine-tuning -------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class FinetuneRun(RunSpec):
    """Fine-tuning ``base`` as a sequence classifier or regressor on the gold labels (hard-label loss)."""

    rows: ClassifierRows

    def build(self, runtime: Runtime) -> Built:
        model = models.load_classifier(self.base, self.rows.labels)
        hidden = model.config.hidden_size
        labels = self.rows.labels
        matches = MatchSet([Match("labels", "hard")], hidden, hidden, _is_regression(labels), _is_tagging(labels))
        return Built(Objective(model, matches), model, self.base)


def finetune(store: Store, train_ref: str, config: FinetuneConfig, output_dir: str | Path,
             resume: bool = False) -> TrainedModel:
    """Fine-tune ``config.model`` on a labelled version (hard-label loss); a finished run in ``output_dir`` with
    the same settings is reused."""
    source = models.resolve_model(config.model)
    models.check_against_model(source, "model", config.max_seq_length)
    labels = label_kwargs(store, train_ref, config)
    if not labels:
        raise DistilleryError(f"version {train_ref} has no 'label' column to fine-tune on")
    return train_run(FinetuneRun(mode="finetune", title="fine-tuning", store=store, train_ref=train_ref,
                                 config=config, output_dir=Path(output_dir), base=source,
                                 rows=ClassifierRows(labels)), resume)


# ---- distillation ------------------------------------------------------------------------------------------
def build_matches(cfg: DistillConfig, student_layers: int, teacher_layers: int, regression: bool) -> list[Match]:
    """Explicit matches from the config, or the recipe its weights describe."""
    if cfg.matches:
        return [Match.from_dict(dict(m)) for m in cfg.matches]
    mapping = models.layer_mapping(student_layers, teacher_layers, cfg.mapping, cfg.layer_map)
    return default_matches(mapping, embedding=cfg.embedding_weight, hidden=cfg.hidden_weight,
                           attention=cfg.attention_weight, prediction=cfg.prediction_weight, kl=cfg.kl_weight,
                           cosine=cfg.cosine_weight, hard=cfg.hard_weight, temperature=cfg.temperature,
                           regression=regression, prediction_loss=cfg.prediction_loss)


def teacher_labels(teacher: str) -> dict[str, Any]:
    """The label kwargs of a fine-tuned sequence- or token-classifier teacher; any other teacher is refused in one
    line."""
    config = models.load_config(teacher)
    heads = ("ForSequenceClassification", TOKEN_HEAD)
    if not any(head in a for a in config.architectures or [] for head in heads):
        raise DistilleryError(f"teacher {teacher} is not a fine-tuned sequence classifier or token classifier "
                              f"(architectures: {config.architectures}); make one with `distillery distill finetune`")
    return model_labels(config)


@dataclass(kw_only=True)
class TinyBertRun(RunSpec):
    """A TinyBERT-objective distillation of ``base`` from ``teacher`` through matches: general (``rows`` without
    labels: no prediction layer) or one stage of task distillation (the teacher's labels)."""

    config: DistillConfig
    rows: ClassifierRows
    live_teacher: bool = True            # False: the batches carry the teacher's logits (never loaded)

    def settings(self) -> dict[str, Any]:
        return {"teacher_forward": self.live_teacher}

    def build(self, runtime: Runtime) -> Built:
        teacher_config = models.load_config(self.teacher)
        labels = self.rows.labels
        teacher = models.load_teacher(self.teacher, bool(labels), runtime.device) if self.live_teacher else None
        student, tokenizer = self._student(teacher, teacher_config)
        matches = build_matches(self.config, models.num_layers(student), models.num_layers(teacher_config),
                                _is_regression(labels))
        if not labels and any(m.feature in ("logits", "labels") for m in matches):
            raise DistilleryError("general distillation has no prediction layer: use only embedding / hidden / "
                                  "attention matches (prediction, kl and hard weights must be 0)")
        match_set = MatchSet(matches, models.hidden_size(student), models.hidden_size(teacher_config),
                             _is_regression(labels), _is_tagging(labels))
        self._check_student(student, match_set, teacher_config)
        return Built(Objective(student, match_set, teacher), student, tokenizer,
                     {"matches": [m.to_dict() for m in matches]})

    def _student(self, teacher: nn.Module | None, teacher_config: Any) -> tuple[nn.Module, str | Path]:
        """The student and the tokenizer of its rows."""
        labels = self.rows.labels
        if self.base in students.STUDENTS:
            texts = students.version_texts(self.store.shard_paths(self.train_ref))
            return models.build_sequence_student(self.config, self.base, self.teacher, teacher_config, labels, texts,
                                                 self.output_dir / "words")
        student = models.build_student(self.config, self.base, teacher, teacher_config, labels,
                                       "classifier" if labels else "none")
        return student, self.teacher if self.live_teacher else models.resolve_model(self.base)

    def _check_student(self, student: nn.Module, match_set: MatchSet, teacher_config: Any) -> None:
        """Refuse matches the student cannot make (a BiLSTM / TextCNN has no layers to match) or a teacher whose
        tokens it does not read."""
        if isinstance(student, students.SequenceStudent):
            if match_set.needs_hidden or match_set.needs_attentions:
                raise DistilleryError(f"a {student.config.model_type} student is distilled from logits (and labels) "
                                      f"only")
            if self.live_teacher and student.config.vocab_size != teacher_config.vocab_size:
                raise DistilleryError(f"student {self.base} reads other tokens than the teacher: give the teacher's "
                                      f"logits with --logits-ref (`distillery distill cache-logits`)")
        match_set.check_layers(models.num_layers(student), models.num_layers(teacher_config))


def tinybert_run(store: Store, train_ref: str, cfg: DistillConfig, output_dir: Path, mode: str, student: str, *,
                 live_teacher: bool = True, model_dir: Path | None = None,
                 card_config: TrainConfig | None = None) -> TinyBertRun:
    """The spec of a TinyBERT-objective run (``mode`` general, task-stage1 or task-stage2) of ``student``, the
    teacher and the student checked against ``cfg.max_seq_length`` before anything is trained."""
    teacher = models.resolve_model(cfg.teacher)
    models.check_against_model(teacher, "teacher", cfg.max_seq_length)
    models.check_against_model(student, "student", cfg.max_seq_length)
    labels = {} if mode == "general" else teacher_labels(teacher)
    if _is_tagging(labels) and not _has_tags(store.manifest(train_ref)):
        raise DistilleryError(f"teacher {teacher} is a token classifier but version {train_ref} has no '{TAGS}' "
                              f"column (words and tags) to distil it on")
    return TinyBertRun(mode=mode, title=mode, store=store, train_ref=train_ref, config=cfg, output_dir=output_dir,
                       base=student, teacher=teacher, rows=ClassifierRows(labels), live_teacher=live_teacher,
                       model_dir=model_dir, card_config=card_config)


def general_distill(store: Store, train_ref: str, config: DistillConfig, output_dir: str | Path,
                    resume: bool = False) -> TrainedModel:
    """General distillation on a plain-text version: TinyBERT's (embedding, hidden and attention losses), or with
    ``objective = "distilbert"`` DistilBERT's triple loss from a masked-LM teacher (``distill.mlm``)."""
    if config.objective == "distilbert":
        return distil_masked_lm(store, train_ref, config, output_dir, resume)
    return train_run(tinybert_run(store, train_ref, config, Path(output_dir), "general", config.student), resume)


def task_distill(store: Store, train_ref: str, config: TaskDistillConfig, output_dir: str | Path,
                 resume: bool = False) -> TrainedModel:
    """TinyBERT task distillation: stage 1 (intermediate layers) then stage 2 (prediction layer); a bilstm or
    textcnn student has only stage 2.

    ``config.stage`` picks 1, 2 or both; each stage is a run folder (``stage1/``, ``stage2/``) that resumes and is
    reused on its own; the final student is ``output_dir/model``. Stage 2 starts from stage 1's student (or from
    ``config.student`` when run alone without a stage 1 folder) and trains from ``config.logits_ref`` without the
    teacher when that is set.
    """
    cfg, output_dir = config, Path(output_dir)
    _check_task_config(cfg)
    runs = []
    if cfg.stage in ("1", "both") and cfg.student not in students.STUDENTS:
        runs.append(train_run(tinybert_run(store, train_ref, stage_config(cfg, 1), output_dir / "stage1",
                                           "task-stage1", cfg.student, card_config=cfg), resume))
    if cfg.stage in ("2", "both"):
        runs.append(train_run(_stage2_run(store, train_ref, cfg, output_dir), resume))
    return TrainedModel(runs[-1].path, runs[-1].scores, up_to_date=all(r.up_to_date for r in runs))


def _check_task_config(cfg: TaskDistillConfig) -> None:
    """Refuse, before any run, a task distillation without a teacher or with stages its student cannot have."""
    sequence = cfg.student in students.STUDENTS
    if not cfg.teacher:
        raise DistilleryError("task distillation needs a fine-tuned teacher (`distill finetune`'s model folder), "
                              "e.g. --teacher runs/teacher/model")
    if sequence and cfg.stage == "1":
        raise DistilleryError(f"a {cfg.student} student has no intermediate layers to distil: run stage 2 (the "
                              f"default 'both' runs only it)")
    if sequence and cfg.student_embeddings == "glove" and not cfg.logits_ref:
        raise DistilleryError("a word-vocabulary student (--student-embeddings glove) reads other tokens than the "
                              "teacher: give the teacher's logits with --logits-ref (`distillery distill "
                              "cache-logits`)")


def _stage2_run(store: Store, train_ref: str, cfg: TaskDistillConfig, output_dir: Path) -> TinyBertRun:
    """Stage 2's spec: stage 1's student when ``output_dir`` holds one (else ``cfg.student``), trained from the
    teacher's cached logits in ``cfg.logits_ref`` when given (the teacher is then never loaded)."""
    stage1_model = output_dir / "stage1" / "model"
    sequence = cfg.student in students.STUDENTS
    student = str(stage1_model) if (stage1_model / "config.json").exists() and not sequence else cfg.student
    if student in models.PRESETS:
        raise DistilleryError("stage 2 needs a student: run stage 1 first (same --output) or give --student PATH")
    data_ref = cfg.logits_ref or train_ref
    cached_logits = LOGITS in {f["name"] for f in store.manifest(data_ref)["schema"]}
    if cfg.logits_ref and not cached_logits:
        raise DistilleryError(f"logits_ref {cfg.logits_ref} has no '{LOGITS}' column (make one with "
                              f"`distillery distill cache-logits`)")
    if cached_logits:                   # stage 2 learns from these instead of the teacher's forward pass
        check_logits_labels(store, data_ref, cfg.teacher)
    return tinybert_run(store, data_ref, stage_config(cfg, 2), output_dir / "stage2", "task-stage2", student,
                        live_teacher=not cfg.logits_ref, model_dir=output_dir / "model", card_config=cfg)
