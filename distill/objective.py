"""The module a trainer optimises in fine-tuning and TinyBERT-style distillation (student + matches, with
projections), and the one frozen-teacher helper of every objective with a teacher."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.matches import MatchSet
from distill.models import Features, enable_raw_attention, forward_features


class FrozenTeacher:
    """What every objective with a teacher shares (a mixin before ``nn.Module``): the teacher is held in a list,
    out of the objective's parameters, state_dict, ``train()`` / ``eval()`` and DDP, frozen (no gradients) and in
    eval mode; ``to`` moves it with the objective."""

    _teacher: list[nn.Module | None]

    def hold_teacher(self, teacher: nn.Module | None) -> None:
        """Keep ``teacher`` (None: none is loaded) frozen beside the objective (after ``nn.Module.__init__``)."""
        self._teacher = [None if teacher is None else teacher.requires_grad_(False).eval()]

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def to(self, *args: Any, **kwargs: Any) -> Any:
        if self.teacher is not None:
            self._teacher[0] = self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)


class Objective(FrozenTeacher, nn.Module):
    """forward(batch) -> (weighted loss, {match name: loss}). Only the student and projections are parameters;
    the teacher runs under ``no_grad`` and only for the features the matches need (none when the batch
    carries cached ``teacher_logits`` and only logits are matched)."""

    def __init__(self, student: nn.Module, matches: MatchSet, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.matches = matches
        self.hold_teacher(teacher)
        if matches.needs_attentions:
            enable_raw_attention(student)
            if teacher is not None:
                enable_raw_attention(teacher)

    def teacher_features(self, batch: dict[str, torch.Tensor]) -> Features | None:
        m = self.matches
        cached = "teacher_logits" in batch and not (m.needs_hidden or m.needs_attentions)
        if not m.needs_teacher or cached:
            return None
        if self.teacher is None:
            raise RuntimeError("these matches need a teacher (or a version with cached teacher_logits)")
        with torch.no_grad():
            return forward_features(self.teacher, batch, m.needs_hidden, m.needs_attentions)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher = self.teacher_features(batch)
        student = forward_features(self.student, batch, self.matches.needs_hidden, self.matches.needs_attentions)
        return self.matches(student, teacher, batch)
