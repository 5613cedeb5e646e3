"""Masked-LM training (domain-adaptive pre-training) on a text version, and DistilBERT's general distillation of a
masked-LM teacher into a masked-LM student.

BERT's recipe: a share ``mask_prob`` of the pieces (or, with ``whole_word``, of the words) of each sentence is
chosen, 80% of those become [MASK], 10% a random piece, 10% stay; the loss is the cross-entropy at the chosen
positions only, and the vocabulary projection runs only there (never a full-vocabulary head at every position).
A checkpoint without an MLM head (the bundled all-MiniLM-L6-v2) gets one whose decoder is tied to the input
embeddings. Every row is one input: its text (with its ``text_pair`` as a second segment when the version has
one: two *different* sentences). TinyBERT's ``[masked ; original]`` pair, where the masked word is visible in the
other segment, is never built. Masks come from a generator seeded by (seed, epoch, row), so a resumed run and any
worker count see the same masks.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill import losses, models
from distill.config import DistillConfig, MLMConfig, TrainConfig
from distill.data import ROW_ID, TEXT, Collator, ShardStream
from distill.objective import FrozenTeacher
from distill.runs import TrainedModel
from distill.train_run import Built, RunSpec, train_run
from distill.trainer import EvalFn, Runtime, to_device
from pipelines.errors import DistilleryError
from pipelines.store import Store

IGNORE = -100
MLM_LABELS = "mlm_labels"
CandidateScorer = Callable[[nn.Module, Any, list[str]], dict[str, Any]]   # (model, tokenizer, texts) -> scores


class MaskingCollator(Collator):
    """Pads rows like ``Collator`` and masks them for the MLM objective (``mlm_labels``: -100 where unmasked)."""

    def __init__(self, tokenizer: str | Path, max_seq_length: int, mask_prob: float, whole_word: bool, seed: int):
        super().__init__(tokenizer, max_seq_length)
        self.mask_prob, self.whole_word, self.seed = mask_prob, whole_word, seed
        self._vocab: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_vocab": None}

    def _vocabulary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(special-id mask, continuation-piece mask, ids a random replacement is drawn from)."""
        if self._vocab is None:
            tokenizer = self.tokenizer
            size = len(tokenizer)
            special = np.zeros(size, dtype=bool)
            special[[i for i in tokenizer.all_special_ids if i < size]] = True
            tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
            continuation = np.array([t.startswith("##") for t in tokens], dtype=bool)
            self._vocab = (special, continuation, np.flatnonzero(~special))
        return self._vocab

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int = 0) -> dict[str, np.ndarray]:
        batch = super().__call__(rows)
        batch.pop("labels", None)
        batch[MLM_LABELS] = self.mask(batch["input_ids"], batch["attention_mask"], rows, epoch)
        return batch

    def mask(self, input_ids: np.ndarray, attention_mask: np.ndarray, rows: Sequence[dict[str, Any]],
             epoch: int) -> np.ndarray:
        """Choose and corrupt positions in place; return the labels (-100 where nothing was chosen)."""
        special, continuation, replacements = self._vocabulary()
        labels = np.full_like(input_ids, IGNORE)
        for i, row in enumerate(rows):
            ids = input_ids[i]
            n = int(attention_mask[i].sum())
            positions = np.flatnonzero(~special[ids[:n]])
            if positions.size == 0:
                continue
            rng = np.random.default_rng([self.seed, epoch, _row_key(row)])
            starts = positions[~continuation[ids[positions]]] if self.whole_word else positions
            if starts.size == 0:
                starts = positions[:1]
            chosen = starts[rng.random(starts.size) < self.mask_prob]
            if chosen.size == 0:
                chosen = starts[rng.integers(starts.size)][None]
            if self.whole_word:     # a chosen word takes its continuation pieces with it
                word_of = np.searchsorted(starts, positions, side="right") - 1
                chosen = positions[np.isin(starts[np.maximum(word_of, 0)], chosen) & (word_of >= 0)]
            labels[i, chosen] = ids[chosen]
            draw = rng.random(chosen.size)
            ids[chosen[draw < 0.8]] = self.tokenizer.mask_token_id
            random_at = chosen[(draw >= 0.8) & (draw < 0.9)]
            ids[random_at] = replacements[rng.integers(replacements.size, size=random_at.size)]
        return labels


def _row_key(row: dict[str, Any]) -> int:
    if row.get(ROW_ID) is not None:
        return int(row[ROW_ID])
    return zlib.crc32((row.get(TEXT) or "").encode())


def mlm_head(model: nn.Module) -> nn.Module:
    """The prediction head of a masked LM (BERT: ``cls``, RoBERTa-style: ``lm_head``)."""
    for name in ("cls", "lm_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise DistilleryError(f"{type(model).__name__} has no masked-LM head")


class MaskedLMObjective(nn.Module):
    """forward(batch) -> (cross-entropy at the masked positions, {"mlm": same}); the head sees only them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, labels = self.masked_logits(batch)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"mlm": loss.detach()}

    def masked_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocabulary logits at the masked positions only, and the original pieces there."""
        labels = batch[MLM_LABELS]
        chosen = labels != IGNORE
        hidden = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       token_type_ids=batch["token_type_ids"]).last_hidden_state
        return mlm_head(self.model)(hidden[chosen]), labels[chosen]


def freeze_below(model: nn.Module, train_layers: int) -> None:
    """Train only the top ``train_layers`` encoder layers and the head (0: everything trains). The decoder is
    tied to the input embeddings, which then stay as they are."""
    if train_layers == 0:
        return
    layers = model.base_model.encoder.layer
    if train_layers > len(layers):
        raise DistilleryError(f"train_layers={train_layers} but the model has {len(layers)} layers")
    model.base_model.requires_grad_(False)
    for layer in layers[len(layers) - train_layers:]:
        layer.requires_grad_(True)
    mlm_head(model).requires_grad_(True)
    model.get_output_embeddings().weight.requires_grad_(False)


def mlm_stream(store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig, mask_prob: float, whole_word: bool,
               runtime: Runtime | None, shuffle: bool = True, batch_size: int | None = None) -> ShardStream:
    """A version's rows, tokenised and masked: this process's share of them under ``runtime`` (training), all of
    them with ``runtime`` None (evaluation, which rank 0 runs alone)."""
    collate = MaskingCollator(tokenizer, cfg.max_seq_length, mask_prob, whole_word, cfg.seed)
    rank, world_size = (runtime.rank, runtime.world_size) if runtime is not None else (0, 1)
    return ShardStream.from_store(store, ref, tokenizer, batch_size=batch_size or cfg.batch_size,
                                  max_seq_length=cfg.max_seq_length, seed=cfg.seed, shuffle=shuffle,
                                  shuffle_buffer=cfg.shuffle_buffer, group_batches=cfg.group_batches,
                                  rank=rank, world_size=world_size, collator=collate)


@torch.no_grad()
def masked_lm_scores(objective: MaskedLMObjective, stream: ShardStream, device: torch.device) -> dict[str, float]:
    """Perplexity and accuracy at masked positions over a (fixed-mask) stream, with the pieces scored and the
    ``max_seq_length`` the rows were truncated to."""
    total, correct, count = 0.0, 0, 0
    stream.set_state(0, 0)
    for batch in stream:
        logits, labels = objective.masked_logits(to_device(batch, device))
        total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        count += int(labels.numel())
    if count == 0:
        raise DistilleryError("the evaluation version has no maskable pieces")
    return {"perplexity": math.exp(total / count), "masked_accuracy": correct / count, "masked_pieces": count,
            "max_seq_length": stream.collate.max_seq_length}


@dataclass
class MaskedRows:
    """Rows masked for a masked-LM objective (BERT's 80/10/10 at ``mask_prob``, of whole words with
    ``whole_word``), scored by ``masked_lm_scores`` plus ``scorer``'s scores on the first ``eval_rows`` held-out
    texts."""

    mask_prob: float
    whole_word: bool = False
    scorer: CandidateScorer | None = None
    eval_rows: int = 0

    def train_stream(self, store: Store, ref: str, tokenizer: str | Path, cfg: TrainConfig,
                     runtime: Runtime) -> ShardStream:
        return mlm_stream(store, ref, tokenizer, cfg, self.mask_prob, self.whole_word, runtime)

    def eval_fn(self, store: Store, cfg: TrainConfig, tokenizer: str | Path, runtime: Runtime) -> EvalFn | None:
        """Masked-LM scores on ``cfg.eval_ref`` over the whole version (never this rank's share: rank 0 evaluates
        alone), plus the scorer's."""
        if not cfg.eval_ref:
            return None
        stream = mlm_stream(store, cfg.eval_ref, tokenizer, cfg, self.mask_prob, self.whole_word, None,
                            shuffle=False, batch_size=64)
        texts = ([t for t in store.read_table(cfg.eval_ref, columns=[TEXT]).column(TEXT).to_pylist()[:self.eval_rows]
                  if t] if self.scorer is not None else [])

        def scores(objective: nn.Module) -> dict[str, Any]:
            result: dict[str, Any] = masked_lm_scores(objective, stream, runtime.device)
            if self.scorer is not None:
                result.update(self.scorer(objective.model, stream.collate.tokenizer, texts))
            return result
        return scores


# ---- masked-LM training --------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MaskedLMRun(RunSpec):
    """Masked-LM training of ``base`` (its top ``config.train_layers`` layers, or all of it)."""

    config: MLMConfig
    rows: MaskedRows

    def settings(self) -> dict[str, Any]:
        return {"scorer": getattr(self.rows.scorer, "__name__", None)}

    def build(self, runtime: Runtime) -> Built:
        model = models.load_masked_lm(self.base)
        freeze_below(model, self.config.train_layers)
        return Built(MaskedLMObjective(model), model, self.base)


def pretrain_masked_lm(store: Store, train_ref: str, config: MLMConfig, output_dir: str | Path,
                       resume: bool = False, scorer: CandidateScorer | None = None) -> TrainedModel:
    """Train ``config.model`` as a masked LM on a text version (domain-adaptive pre-training); saved as a
    ``*ForMaskedLM`` that ``distillery augment --mlm`` loads. ``scorer(model, tokenizer, held-out texts)`` adds
    candidate scores (the augmentation's recall) to each evaluation on ``config.eval_ref``."""
    source = models.resolve_model(config.model)
    models.check_against_model(source, "model", config.max_seq_length, config.train_layers)
    rows = MaskedRows(config.mask_prob, config.whole_word, scorer, config.eval_rows)
    return train_run(MaskedLMRun(mode="mlm", title="masked-LM training", store=store, train_ref=train_ref,
                                 config=config, output_dir=Path(output_dir), base=source, rows=rows), resume)


# ---- DistilBERT's general distillation ---------------------------------------------------------------------------
class DistilBertObjective(FrozenTeacher, MaskedLMObjective):
    """DistilBERT's triple loss for a masked-LM student (``model``) and a frozen masked-LM teacher: KL between their
    MLM distributions at the masked pieces x T^2 (DistilBERT's ``restrict_ce_to_mask``), the student's own MLM
    loss, and 1 - cosine between their last hidden states at every non-padding position."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kl: float, mlm: float, cosine: float,
                 temperature: float):
        super().__init__(student)
        self.hold_teacher(teacher)
        self.weights = {"mlm_kl": kl, "mlm": mlm, "cosine": cosine}
        self.temperature = temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch[MLM_LABELS]
        chosen = labels != IGNORE
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model.base_model(**inputs).last_hidden_state
        logits = mlm_head(self.model)(hidden[chosen])
        with torch.no_grad():
            teacher_hidden = self.teacher.base_model(**inputs).last_hidden_state
            teacher_logits = mlm_head(self.teacher)(teacher_hidden[chosen])
        parts = {"mlm_kl": lambda: losses.kl_divergence(logits, teacher_logits, self.temperature),
                 "mlm": lambda: F.cross_entropy(logits.float(), labels[chosen]),
                 "cosine": lambda: losses.hidden_cosine(hidden, teacher_hidden, batch["attention_mask"])}
        values = {name: parts[name]() for name, weight in self.weights.items() if weight}
        loss = sum(self.weights[name] * value for name, value in values.items())
        return loss, {name: value.detach() for name, value in values.items()}


@dataclass(kw_only=True)
class DistilBertRun(RunSpec):
    """DistilBERT's general distillation of a masked-LM student (``base``) from a masked-LM ``teacher``."""

    config: DistillConfig

    def build(self, runtime: Runtime) -> Built:
        cfg = self.config
        teacher = models.load_masked_lm(self.teacher)
        student = models.build_student(cfg, self.base, teacher, teacher.config, {}, "mlm")
        objective = DistilBertObjective(student, teacher, cfg.kl_weight, cfg.hard_weight, cfg.cosine_weight,
                                        cfg.temperature)
        return Built(objective, student, self.teacher, {"objective": "distilbert"})


def distil_masked_lm(store: Store, train_ref: str, cfg: DistillConfig, output_dir: str | Path,
                     resume: bool = False) -> TrainedModel:
    """DistilBERT general distillation of a masked-LM teacher into a masked-LM student on a text version."""
    teacher = models.resolve_model(cfg.teacher)
    models.check_against_model(teacher, "teacher", cfg.max_seq_length)
    models.check_against_model(cfg.student, "student", cfg.max_seq_length)
    if not (cfg.kl_weight or cfg.hard_weight or cfg.cosine_weight):
        raise DistilleryError("objective distilbert needs --kl-weight, --hard-weight and/or --cosine-weight "
                              "(DistilBERT: 5, 2, 1 with --temperature 2)")
    if not any(a.endswith("ForMaskedLM") for a in models.load_config(teacher).architectures or []):
        raise DistilleryError(f"teacher {teacher} has no masked-LM head (train one with `distillery distill mlm`)")
    return train_run(DistilBertRun(mode="general", identity_mode="general-distilbert",
                                   title="general distillation (DistilBERT)", store=store, train_ref=train_ref,
                                   config=cfg, output_dir=Path(output_dir), base=cfg.student, teacher=teacher,
                                   rows=MaskedRows(cfg.mask_prob)), resume)
