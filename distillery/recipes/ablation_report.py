"""The ablation's report: a Markdown results card with YAML front matter, and PNG plots of its runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

INIT = {"random": "randomly", "teacher": "from the pre-trained encoder's embeddings and mapped layers"}


def _metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records of a run folder (task distillation: stage 1 then stage 2, steps made global)."""
    stages = [folder / "stage1", folder / "stage2"] if (folder / "stage1").exists() else [folder]
    records, offset = [], 0
    for stage in stages:
        path = stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            records.append({**row, "step": row["step"] + offset, "stage": stage.name})
        offset += max((r["step"] for r in rows), default=0)
    return records


def plot_runs(results: dict[str, Any], out: Path) -> list[Path]:
    """``stage_losses.png`` (loss per stage, first seed of each row) and ``dev_accuracy.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = {name: Path(row["runs"][0]).parent for name, row in results["table"].items()}
    fig, axes = plt.subplots(1, len(folders), figsize=(4 * len(folders), 3.6), squeeze=False)
    for ax, (name, folder) in zip(axes[0], folders.items()):
        records = [r for r in _metrics(folder) if "loss" in r]
        for stage in sorted({r["stage"] for r in records}):
            part = [r for r in records if r["stage"] == stage]
            ax.plot([r["step"] for r in part], [r["loss"] for r in part], label=stage)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    losses = out / "stage_losses.png"
    fig.savefig(losses, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, folder in folders.items():
        evals = [r for r in _metrics(folder) if "eval" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval"]["accuracy"] for r in evals], marker="o", label=name)
    ax.set_xlabel("step (stage 2 continues stage 1's count)")
    ax.set_ylabel("dev accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    accuracy = out / "dev_accuracy.png"
    fig.savefig(accuracy, dpi=90)
    plt.close(fig)
    return [losses, accuracy]


def _pm(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """The Markdown table of teacher and students."""
    lines = ["| model | test accuracy (%) | macro-F1 (%) | acc. / teacher | non-emb. params | / teacher | "
             "ms/sentence b=1 | ms/sentence b=32 | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["table"].items():
        lines.append(f"| {name} | {_pm(row['accuracy'])} | {_pm(row['macro_f1'])} | {row['accuracy_vs_teacher']:.3f} "
                     f"| {row['non_embedding_parameters'] / 1e6:.2f} M | {row['non_embedding_vs_teacher']:.2f} | "
                     f"{row['latency_ms_batch1']:.2f} | {row['latency_ms_batch32']:.2f} | {row['accuracy']['n']} |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Plots plus ``README.md`` (results card) in the experiment folder."""
    plots = plot_runs(results, out)
    front = {"tags": ["distillery", "tinybert", "ablation"], "datasets": ["wordnet_supersense"],
             "model-index": [{"name": name, "results": [{"metrics": [
                 {"type": "accuracy", "value": round(row["accuracy"]["mean"], 4)},
                 {"type": "f1", "name": "macro-F1", "value": round(row["macro_f1"]["mean"], 4)}]}]}
                 for name, row in results["table"].items()]}
    comparisons = "\n".join(
        f"- {c['b']} vs {c['a']}: {100 * c['b_minus_a']:+.1f} points, seed spread (sum of std) "
        f"{100 * c['spread']:.1f}: {'larger' if c['larger_than_spread'] else 'not larger'} than the spread"
        for c in results["comparisons"])
    labels = results["data"]["train"]["labels"] or {}
    exp = results["config"]["experiment"]
    steps = (f"task distillation {exp['stage1_steps']} stage-1 + {exp['stage2_steps']} stage-2 steps of every "
             "student whatever its data" if exp["stage1_steps"] and exp["stage2_steps"] else "epochs as configured")
    stages = results["wall_clock_seconds"]["stages"]
    body = [
        "# TinyBERT ablation on WordNet supersense glosses", "",
        "Teacher: all-MiniLM-L6-v2 fine-tuned on the training split. Students share one shape "
        f"({exp['student_layers']} layers x {exp['student_hidden']}, {exp['student_heads']} heads, "
        f"{exp['student_intermediate']} feed-forward; initialised {INIT[exp['student_init']]}) and one compute budget "
        f"({steps}), and are reported on the test split (mean ± sample std over seeds {exp['seeds']}).", "",
        results_table(results), "",
        "## Which differences are larger than the seed spread", "", comparisons, "",
        "## Data", "",
        "| split | rows | version |", "|---|---:|---|",
        *[f"| {k} | {v['rows']} | `{v['version_id'][:12]}` |" for k, v in results["data"].items()],
        "", f"Training class balance: {json.dumps(labels, sort_keys=True)}", "",
        "## Augmentation", "", "```json", json.dumps(results["augmentation"], indent=2, sort_keys=True), "```", "",
        "## Wall-clock time per stage", "",
        "| stage | runs | seconds in all | seconds per run |", "|---|---:|---:|---:|",
        *[f"| {k} | {v['runs']} | {v['seconds']:.0f} | {v['seconds'] / v['runs']:.0f} |"
          for k, v in stages.items()],
        f"| all | {sum(v['runs'] for v in stages.values())} | {sum(v['seconds'] for v in stages.values()):.0f} | |",
        "",
        "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## Configuration", "", "```json", json.dumps(results["config"], indent=2, sort_keys=True, default=str), "```",
    ]
    card = out / "README.md"
    card.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n")
    return card
