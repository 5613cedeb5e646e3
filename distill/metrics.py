"""Evaluation metrics: accuracy, macro-F1 and Matthews correlation; Pearson and Spearman for regression; the
teacher-direct gap check."""
from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
from scipy import stats

# What a score means, numbered for the records that keep scores (the ablation's score cache and results): 1 = rows
# whose gold label the model does not know were left out; 2 = they count as errors (``classification_metrics``).
SCORING_RULES = 2


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, macro-F1 (over the model's labels that occur in gold or predictions) and multi-class Matthews,
    over every row.

    A gold label outside ``0 .. num_labels - 1`` (a label the model does not know, or none) is a row no prediction
    gets right: it counts in every denominator, and the prediction made on it is a false positive of the predicted
    class (the confusion matrix has one more gold row, "unknown", which no prediction matches)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "matthews": float("nan")}
    unknown = (labels < 0) | (labels >= num_labels)
    confusion = np.zeros((num_labels + 1, num_labels + 1), dtype=np.float64)
    np.add.at(confusion, (np.where(unknown, num_labels, labels), predictions), 1)
    tp = np.diag(confusion)
    gold, pred = confusion.sum(axis=1), confusion.sum(axis=0)
    present = ((gold + pred) > 0)[:num_labels]
    f1 = np.divide(2 * tp, gold + pred, out=np.zeros_like(tp), where=(gold + pred) > 0)[:num_labels]
    n = confusion.sum()
    correct = tp.sum()
    denominator = math.sqrt((n * n - (pred * pred).sum()) * (n * n - (gold * gold).sum()))
    matthews = (correct * n - (pred * gold).sum()) / denominator if denominator else 0.0
    return {"accuracy": float(correct / n), "macro_f1": float(f1[present].mean()), "matthews": float(matthews)}


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation and the mean squared error."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size < 2 or np.std(predictions) == 0 or np.std(labels) == 0:
        pearson = spearman = float("nan")
    else:
        pearson = float(stats.pearsonr(predictions, labels)[0])
        spearman = float(stats.spearmanr(predictions, labels)[0])
    return {"pearson": pearson, "spearman": spearman, "mse": float(np.mean((predictions - labels) ** 2))}


def gap_check(teacher: float, direct: list[float], metric: str) -> dict[str, Any]:
    """The teacher's dev score against the direct students' (the same student trained on the labels alone): the gap,
    and a warning when it is under twice the direct students' sample std over seeds (under 1 point with one seed):
    distillation then has little to transfer."""
    mean = statistics.fmean(direct)
    std = statistics.stdev(direct) if len(direct) > 1 else None
    threshold = 2 * std if std is not None else 0.01
    gap = teacher - mean
    return {"metric": metric, "teacher_dev": teacher, "direct_dev_mean": mean, "direct_dev_std": std,
            "seeds": len(direct), "gap": gap, "threshold": threshold, "warning": gap < threshold}
