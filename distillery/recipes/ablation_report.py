"""The ablation's report: a Markdown results card with YAML front matter, and PNG plots of its runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipelines.atomic import write_bytes_atomic

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


def plot_runs(table: dict[str, Any], out: Path, schedule: str) -> list[Path]:
    """``stage_losses-<schedule>.png`` (loss per stage, first seed of each row) and ``dev_accuracy-<schedule>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = {name: (out / row["runs"][0]).parent for name, row in table.items()}   # runs: relative to ``out``
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
    losses = out / f"stage_losses-{schedule}.png"
    fig.savefig(losses, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, folder in folders.items():
        evals = [r for r in _metrics(folder) if "eval" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval"]["accuracy"] for r in evals], marker="o", label=name)
    ax.set_xlabel("step (stage 2 continues stage 1's count)")
    ax.set_ylabel("dev accuracy")
    ax.set_title(schedule)
    ax.legend(fontsize=8)
    fig.tight_layout()
    accuracy = out / f"dev_accuracy-{schedule}.png"
    fig.savefig(accuracy, dpi=90)
    plt.close(fig)
    return [losses, accuracy]


def _pm(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


def results_table(table: dict[str, Any]) -> str:
    """The Markdown table of teacher and students (one schedule)."""
    lines = ["| model | dev accuracy (%) | test accuracy (%) | macro-F1 (%) | acc. / teacher | non-emb. params | "
             "/ teacher | ms/sentence b=1 | ms/sentence b=32 | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        lines.append(f"| {name} | {_pm(row['dev_accuracy'])} | {_pm(row['accuracy'])} | {_pm(row['macro_f1'])} | "
                     f"{row['accuracy_vs_teacher']:.3f} "
                     f"| {row['non_embedding_parameters'] / 1e6:.2f} M | {row['non_embedding_vs_teacher']:.2f} | "
                     f"{row['latency_ms_batch1']:.2f} | {row['latency_ms_batch32']:.2f} | {row['accuracy']['n']} |")
    return "\n".join(lines)


def best_line(best: dict[str, Any] | None) -> str:
    """The schedule's best student: picked by dev accuracy, reported on test."""
    if best is None:
        return "No student in this run: no best student."
    return (f"Best student, picked by {best['picked_by']} and reported on test: **{best['student']}**, dev "
            f"{100 * best['dev_accuracy']:.1f}%, test {100 * best['test_accuracy']:.1f}% "
            f"({best['test_accuracy_vs_teacher']:.3f} of the teacher).")


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """One line per pair of students: the difference and whether it exceeds the seed spread."""
    return [f"- {c['b']} vs {c['a']}: {100 * c['b_minus_a']:+.1f} points, seed spread (sum of std) "
            f"{100 * c['spread']:.1f}: {'larger' if c['larger_than_spread'] else 'not larger'} than the spread"
            for c in comparisons] or ["- one student in this run (`--variants`): nothing to compare it with"]


def augmentation_lines(augmentation: dict[str, Any]) -> list[str]:
    """The augmented splits: rows, replacements and the teacher's label agreement per candidate source."""
    lines = ["| split | rows | replacements (MLM) | agreement all | MLM only | vectors only | mixed | "
             "teacher acc. originals / copies |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, aug in augmentation.items():
        agreement = aug.get("agreement") or {}
        shares = [_share(agreement.get(group) or {}) for group in ("all", "mlm_only", "vectors_only", "mixed")]
        accuracy = agreement.get("teacher_accuracy") or {}
        counts = aug["counts"]
        lines.append(f"| {variant} | {aug['rows']} | {counts.get('replacements', 0)} "
                     f"({counts.get('mlm_replacements', 0)}) | {' | '.join(shares)} | "
                     f"{100 * accuracy.get('originals', 0):.1f}% / {100 * accuracy.get('copies', 0):.1f}% |")
    return lines


def _share(counts: dict[str, Any]) -> str:
    return f"{100 * counts['share']:.1f}% of {counts['copies']}" if counts.get("copies") else "-"


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Plots plus ``README.md`` (results card) in the experiment folder."""
    schedules = results["schedules"]
    front = {"tags": ["distillery", "tinybert", "ablation"], "datasets": [results["data"]["train"]["version_id"]],
             "model-index": [{"name": f"{name} ({schedule})", "results": [{"metrics": [
                 {"type": "accuracy", "value": round(row["accuracy"]["mean"], 4)},
                 {"type": "f1", "name": "macro-F1", "value": round(row["macro_f1"]["mean"], 4)}]}]}
                 for schedule, part in schedules.items() for name, row in part["table"].items()]}
    labels = results["data"]["train"]["labels"] or {}
    exp = results["config"]["experiment"]
    stages = results["wall_clock_seconds"]["stages"]
    scoring = results["scoring"]
    length = scoring["max_seq_length"]
    length = f"{length} tokens" if isinstance(length, int) else length
    body = [
        "# TinyBERT ablation", "",
        f"Teacher: {results['config']['teacher']['model']} fine-tuned on the training split. Students share one "
        f"shape ({exp['student_layers']} layers x {exp['student_hidden']}, {exp['student_heads']} heads, "
        f"{exp['student_intermediate']} feed-forward; initialised {INIT[exp['student_init']]}) and are reported on "
        f"the test split (mean ± sample std over seeds {exp['seeds']}). Schedules: equal-steps = task distillation "
        f"{exp['stage1_steps']} stage-1 + {exp['stage2_steps']} stage-2 steps for every student whatever its data; "
        "equal-epochs = as many epochs per stage as those steps make on the original split (TinyBERT's setting).", "",
        f"Scoring (rules {scoring['rules']}): every dev and test row counts, a gold label the model does not know "
        f"as an error; rows truncated to {length}. The best student of a schedule is picked by dev accuracy and "
        "reported on test.", "",
    ]
    if results.get("mlm"):
        body += ["## The masked LM", "", f"`{results['mlm']['model']}`, held-out (dev) scores: "
                 + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in results["mlm"]["scores"].items()), ""]
    body += ["## Augmentation", "", *augmentation_lines(results["augmentation"]), ""]
    plots = []
    for schedule, part in schedules.items():
        plots += plot_runs(part["table"], out, schedule)
        body += [f"## Results: {schedule}", "", results_table(part["table"]), "", best_line(part["best"]), "",
                 "Which differences are larger than the seed spread:", "", *comparison_lines(part["comparisons"]), ""]
    body += [
        "## Data", "",
        "| split | rows | version |", "|---|---:|---|",
        *[f"| {k} | {v['rows']} | `{v['version_id'][:12]}` |" for k, v in results["data"].items()],
        "", f"Training class balance: {json.dumps(labels, sort_keys=True)}", "",
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
    write_bytes_atomic(card, ("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n")
                       .encode())
    return card
