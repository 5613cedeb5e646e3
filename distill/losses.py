"""Distillation losses (TinyBERT and DistilBERT), each a plain function of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.tagging import IGNORE_INDEX  # a label no loss reads (padding, special tokens, a word's later pieces)

MASKED_SCORE = -1e2  # TinyBERT reference: scores at or below this (masked positions) count as 0


def attention_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """MSE between raw attention scores (batch, heads, q, k), masked positions zeroed as in TinyBERT.

    When the head counts differ, both sides are averaged over heads first.
    """
    if student_scores.shape[1] != teacher_scores.shape[1]:
        student_scores = student_scores.mean(dim=1, keepdim=True)
        teacher_scores = teacher_scores.mean(dim=1, keepdim=True)
    student = torch.where(student_scores <= MASKED_SCORE, torch.zeros_like(student_scores), student_scores)
    teacher = torch.where(teacher_scores <= MASKED_SCORE, torch.zeros_like(teacher_scores), teacher_scores)
    return F.mse_loss(student.float(), teacher.float())


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between (projected) student and teacher hidden states or embeddings (TinyBERT: all positions)."""
    return F.mse_loss(student.float(), teacher.float())


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT cosine loss: mean of 1 - cos(student, teacher) over the non-padding positions."""
    keep = attention_mask.bool()
    cos = F.cosine_similarity(student[keep].float(), teacher[keep].float(), dim=-1)
    return (1.0 - cos).mean()


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """TinyBERT prediction loss: cross-entropy of student against teacher softmax at temperature T.

    Summed over classes, averaged over the batch.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(targets * log_probs).sum(dim=-1).mean()


def token_soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                             temperature: float = 1.0) -> torch.Tensor:
    """Token classification's prediction loss: ``soft_cross_entropy`` at each position (batch, pieces) whose label
    is not IGNORE_INDEX (a word's first piece; padding, special tokens and a word's other pieces are left out),
    averaged over those positions; 0 when there are none."""
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return student_logits.sum() * 0.0
    return soft_cross_entropy(student_logits[keep], teacher_logits[keep], temperature)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DistilBERT: KL(teacher_T || student_T) * T^2, averaged over the batch."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature ** 2


def logits_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Regression prediction loss."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Gold-label loss: cross-entropy (unknown labels ignored) or MSE for regression (NaN labels ignored); per
    position for token classification (logits (batch, pieces, labels), labels (batch, pieces))."""
    if regression:
        keep = ~torch.isnan(labels)
        return F.mse_loss(logits.view(-1)[keep].float(), labels[keep].float())
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)


LOSSES = {"attention_mse": attention_mse, "mse": hidden_mse, "cosine": hidden_cosine, "soft_ce": soft_cross_entropy,
          "kl": kl_divergence, "logits_mse": logits_mse}
