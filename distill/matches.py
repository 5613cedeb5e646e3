"""Intermediate matches as data (in the spirit of TextBrewer) and the layer mapping between student and teacher.

A match says: compare the student's ``feature`` at ``student_layer`` with the teacher's at ``teacher_layer``
using ``loss`` with ``weight``, optionally through the learned linear ``projection`` of that name (student
width -> teacher width; matches naming the same projection share it, as TinyBERT's single ``fit_dense`` does).

features: ``embedding`` (hidden state 0), ``hidden`` (output of layer L, 1-based), ``attention`` (raw scores of
layer L), ``logits`` (prediction layer), ``labels`` (gold labels, hard loss; no teacher).
losses: ``mse``, ``cosine`` (hidden/embedding), ``attention_mse``, ``soft_ce``, ``kl``, ``logits_mse``, ``hard``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from distill import losses
from distill.models import Features
from pipelines.errors import DistilleryError

FEATURE_LOSSES = {"embedding": {"mse", "cosine"}, "hidden": {"mse", "cosine"}, "attention": {"attention_mse"},
                  "logits": {"soft_ce", "kl", "logits_mse"}, "labels": {"hard"}}


@dataclass(frozen=True)
class Match:
    feature: str
    loss: str
    weight: float = 1.0
    teacher_layer: int = 0
    student_layer: int = 0
    projection: str = ""
    temperature: float = 1.0

    @property
    def name(self) -> str:
        """A short key for logs: emb, hid2, att3, logits_kl, labels."""
        short = {"embedding": "emb", "hidden": "hid", "attention": "att"}
        if self.feature in short:
            name = short[self.feature] + ("" if self.feature == "embedding" else str(self.student_layer))
            return name if self.loss in ("mse", "attention_mse") else f"{name}_{self.loss}"
        return f"{self.feature}_{self.loss}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Match:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DistilleryError(f"match {data}: unknown key(s) {unknown}; valid: {sorted(known)}")
        match = cls(**data)
        if match.feature not in FEATURE_LOSSES:
            raise DistilleryError(f"match {data}: feature must be one of {sorted(FEATURE_LOSSES)}")
        if match.loss not in FEATURE_LOSSES[match.feature]:
            raise DistilleryError(f"match {data}: loss for {match.feature} must be one of "
                                  f"{sorted(FEATURE_LOSSES[match.feature])}")
        return match

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_matches(mapping: list[int], *, embedding: float = 0.0, hidden: float = 0.0, attention: float = 0.0,
                    prediction: float = 0.0, kl: float = 0.0, cosine: float = 0.0, hard: float = 0.0,
                    temperature: float = 1.0, regression: bool = False, prediction_loss: str = "soft_ce"
                    ) -> list[Match]:
    """The TinyBERT / DistilBERT recipe as matches; zero weights leave a loss out; ``prediction_loss`` soft_ce or
    mse (MSE between the logits, as Tang et al.; always for regression)."""
    matches: list[Match] = []
    if embedding:
        matches.append(Match("embedding", "mse", embedding, 0, 0, "fit_dense"))
    for student_layer, teacher_layer in enumerate(mapping, start=1):
        if attention:
            matches.append(Match("attention", "attention_mse", attention, teacher_layer, student_layer))
        if hidden:
            matches.append(Match("hidden", "mse", hidden, teacher_layer, student_layer, "fit_dense"))
    if cosine:
        matches.append(Match("hidden", "cosine", cosine, mapping[-1], len(mapping), "fit_dense"))
    if prediction:
        mse = regression or prediction_loss == "mse"
        matches.append(Match("logits", "logits_mse" if mse else "soft_ce", prediction,
                             temperature=temperature))
    if kl:
        matches.append(Match("logits", "logits_mse" if regression else "kl", kl, temperature=temperature))
    if hard:
        matches.append(Match("labels", "hard", hard))
    return matches


class MatchSet(nn.Module):
    """The matches plus their learned projections; computes the weighted total loss."""

    def __init__(self, matches: list[Match], student_width: int, teacher_width: int, regression: bool = False,
                 tagging: bool = False):
        super().__init__()
        if not matches:
            raise DistilleryError("nothing to distil: every loss weight is 0 and no matches are given")
        names = [m.name for m in matches]
        if len(set(names)) != len(names):
            raise DistilleryError(f"two matches compare the same student feature with the same loss: {names}")
        self.matches = matches
        self.regression = regression
        self.tagging = tagging              # token classification: logits per piece, compared at labelled pieces
        unprojected = [m.name for m in matches if m.feature in ("embedding", "hidden") and not m.projection]
        if unprojected and student_width != teacher_width:
            raise DistilleryError(f"matches {unprojected} compare student width {student_width} with teacher width "
                                  f"{teacher_width}: give them a projection")
        names = sorted({m.projection for m in matches if m.projection})
        self.projections = nn.ModuleDict({n: nn.Linear(student_width, teacher_width) for n in names})

    @property
    def needs_hidden(self) -> bool:
        return any(m.feature in ("embedding", "hidden") for m in self.matches)

    @property
    def needs_attentions(self) -> bool:
        return any(m.feature == "attention" for m in self.matches)

    @property
    def needs_teacher_logits(self) -> bool:
        return any(m.feature == "logits" for m in self.matches)

    @property
    def needs_teacher(self) -> bool:
        return any(m.feature != "labels" for m in self.matches)

    @property
    def needs_labels(self) -> bool:
        return any(m.feature == "labels" for m in self.matches)

    def check_layers(self, student_layers: int, teacher_layers: int) -> None:
        for m in self.matches:
            if m.feature in ("hidden", "attention") and not (1 <= m.student_layer <= student_layers
                                                             and 1 <= m.teacher_layer <= teacher_layers):
                raise DistilleryError(f"match {m.to_dict()}: layers outside student 1..{student_layers} / "
                                      f"teacher 1..{teacher_layers}")

    def _one(self, m: Match, s: Features, t: Features | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if m.feature == "labels":
            labels = batch["labels"]
            valid = ~torch.isnan(labels) if self.regression else labels != -100
            if not bool(valid.any()):
                return s.logits.sum() * 0.0
            return losses.hard_loss(s.logits, labels, self.regression)
        if m.feature == "logits":
            teacher_logits = batch["teacher_logits"] if t is None or t.logits is None else t.logits
            if self.tagging:
                return self._per_token(m, s.logits, teacher_logits, batch["labels"])
            if m.loss == "logits_mse":
                return losses.logits_mse(s.logits, teacher_logits)
            fn = losses.soft_cross_entropy if m.loss == "soft_ce" else losses.kl_divergence
            return fn(s.logits, teacher_logits, m.temperature)
        if m.feature == "attention":
            return losses.attention_mse(s.attentions[m.student_layer - 1], t.attentions[m.teacher_layer - 1])
        student = s.hidden[m.student_layer if m.feature == "hidden" else 0]
        teacher = t.hidden[m.teacher_layer if m.feature == "hidden" else 0]
        if m.projection:
            student = self.projections[m.projection](student)
        if m.loss == "cosine":
            return losses.hidden_cosine(student, teacher, batch["attention_mask"])
        return losses.hidden_mse(student, teacher)

    @staticmethod
    def _per_token(m: Match, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A logits match of token classification, over the labelled pieces (a word's first piece) only."""
        if m.loss == "soft_ce":
            return losses.token_soft_cross_entropy(student, teacher, labels, m.temperature)
        keep = labels != losses.IGNORE_INDEX
        if not bool(keep.any()):
            return student.sum() * 0.0
        if m.loss == "logits_mse":
            return losses.logits_mse(student[keep], teacher[keep])
        return losses.kl_divergence(student[keep], teacher[keep], m.temperature)

    def forward(self, s: Features, t: Features | None,
                batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and the unweighted value of each match (by name)."""
        parts = {m.name: self._one(m, s, t, batch) for m in self.matches}
        total = sum(m.weight * parts[m.name] for m in self.matches)
        return total, parts
