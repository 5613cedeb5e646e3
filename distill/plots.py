"""PNG plot of a run's loss curves and evaluation metrics (from metrics.jsonl)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.atomic import replace_atomic
from pipelines.confine import read_own_text


def plot_metrics(metrics_path: Path, out_path: Path, title: str = "") -> Path | None:
    """Loss (and its parts) against step on the left, eval metrics against step on the right; the log is read
    without following a symlink and the PNG written through a new temporary file."""
    if not os.path.lexists(metrics_path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in read_own_text(metrics_path).splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["loss"] for r in train], label="loss", linewidth=2)
    parts = sorted({k for r in train for k in r.get("parts", {})})
    for part in parts if len(parts) > 1 else []:
        ax.plot(steps, [r["parts"].get(part, float("nan")) for r in train], label=part, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if train and min(r["loss"] for r in train) > 0 else "linear")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "training loss")
    if evals:
        ax = axes[0][1]
        names = sorted({k for r in evals for k, v in r["eval"].items() if isinstance(v, float)})
        for name in names:
            ax.plot([r["step"] for r in evals], [r["eval"].get(name, float("nan")) for r in evals], marker="o",
                    label=name)
        ax.set_xlabel("step")
        ax.set_title("evaluation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        replace_atomic(out_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out_path
