"""Evaluation metrics: accuracy, macro-F1 and Matthews correlation; Pearson and Spearman for regression."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, macro-F1 (over the labels that occur in gold or predictions) and multi-class Matthews."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "matthews": float("nan")}
    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion)
    gold, pred = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (gold + pred) > 0
    f1 = np.divide(2 * tp, gold + pred, out=np.zeros_like(tp), where=(gold + pred) > 0)
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
