"""The ablation's report: a Markdown results card with YAML front matter, and PNG plots of its runs. Sentence
classification is reported by accuracy, token classification by entity F1 (``results["metric"]``: ``f1``) with
precision, recall and token accuracy beside it, the teacher-direct gap and the size / F1 target."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipelines.atomic import write_bytes_atomic

INIT = {"random": "randomly", "teacher": "from the pre-trained encoder's embeddings and mapped layers"}
METRIC_NAMES = {"accuracy": "accuracy", "f1": "entity F1"}


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


def plot_runs(table: dict[str, Any], out: Path, schedule: str, metric: str = "accuracy") -> list[Path]:
    """``stage_losses-<schedule>.png`` (loss per stage, first seed of each row) and ``dev_<metric>-<schedule>.png``
    (the dev evaluations of the main metric)."""
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
            ax.plot([r["step"] for r in evals], [r["eval"][metric] for r in evals], marker="o", label=name)
    ax.set_xlabel("step (stage 2 continues stage 1's count)")
    ax.set_ylabel(f"dev {METRIC_NAMES[metric]}")
    ax.set_title(schedule)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dev = out / f"dev_{metric}-{schedule}.png"
    fig.savefig(dev, dpi=90)
    plt.close(fig)
    return [losses, dev]


def _pm(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# The score columns of the results table per main metric: (row key, heading).
SCORE_COLUMNS = {"accuracy": (("dev_accuracy", "dev accuracy (%)"), ("accuracy", "test accuracy (%)"),
                              ("macro_f1", "macro-F1 (%)")),
                 "f1": (("dev_f1", "dev entity F1 (%)"), ("f1", "test entity F1 (%)"),
                        ("precision", "precision (%)"), ("recall", "recall (%)"),
                        ("token_accuracy", "token accuracy (%)"))}
SHORT = {"accuracy": "acc.", "f1": "F1"}


def results_table(table: dict[str, Any], metric: str | None = None) -> str:
    """The Markdown table of teacher and students (one schedule): the scores of the main metric's columns, mean ±
    std over seeds, then the ratio to the teacher, size and latency. ``metric`` None: entity F1 when the rows
    hold token classification's scores, else accuracy."""
    metric = metric or ("f1" if "token_accuracy" in next(iter(table.values())) else "accuracy")
    columns = SCORE_COLUMNS[metric]
    lines = ["| model | " + " | ".join(heading for _, heading in columns) + f" | {SHORT[metric]} / teacher | "
             "non-emb. params | / teacher | ms/sentence b=1 | ms/sentence b=32 | seeds |",
             "|---|" + "---:|" * (len(columns) + 6)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_pm(row[key]) for key, _ in columns) + " | "
                     f"{_ratio(row[f'{metric}_vs_teacher'])} "
                     f"| {row['non_embedding_parameters'] / 1e6:.2f} M | {row['non_embedding_vs_teacher']:.2f} | "
                     f"{row['latency_ms_batch1']:.2f} | {row['latency_ms_batch32']:.2f} | {row[metric]['n']} |")
    return "\n".join(lines)


def best_line(best: dict[str, Any] | None, metric: str = "accuracy") -> str:
    """The schedule's best student: picked by the main metric on dev, reported on test."""
    if best is None:
        return "No student in this run: no best student."
    return (f"Best student, picked by {best['picked_by']} and reported on test: **{best['student']}**, dev "
            f"{100 * best[f'dev_{metric}']:.1f}%, test {100 * best[f'test_{metric}']:.1f}% "
            f"({_ratio(best[f'test_{metric}_vs_teacher'])} of the teacher).")


def gap_line(gap: dict[str, Any] | None, metric: str) -> str:
    """The teacher-direct gap of the main metric and the share of it each distilled student closes."""
    if gap is None:
        return "No direct student in this run: no teacher-direct gap."
    closed = ", ".join(f"{name} {'-' if share is None else f'{100 * share:.0f}%'}"
                       for name, share in gap["closed"].items()) or "no distilled student"
    return (f"Teacher-direct gap: teacher {METRIC_NAMES[metric]} {100 * gap['teacher']:.1f}%, direct student "
            f"{100 * gap['direct']:.1f}%, gap {100 * gap['gap']:+.1f} points; share of the gap each distilled student "
            f"closes: {closed}.")


def target_lines(target: dict[str, Any], metric: str) -> list[str]:
    """The size / score target and, per student, its numbers and whether it meets it."""
    head = (f"Target: student {METRIC_NAMES[metric]} >= {100 * target['score_vs_teacher']:.0f}% of the teacher's at "
            f"<= 1/3 ({target['non_embedding_vs_teacher']:.3f}) of its non-embedding parameters.")
    rows = [f"- {name}: {_ratio(row['score_vs_teacher'])} of the teacher's {METRIC_NAMES[metric]} at "
            f"{row['non_embedding_vs_teacher']:.3f} of its non-embedding parameters: "
            f"{'met' if row['met'] else 'not met'}" for name, row in target["students"].items()]
    return [head, "", *rows]


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """One line per pair of students: the difference and whether it exceeds the seed spread."""
    return [f"- {c['b']} vs {c['a']}: {100 * c['b_minus_a']:+.1f} points, " + (
            "one seed: no seed spread to compare with" if c["larger_than_spread"] is None else
            f"seed spread (sum of std) {100 * c['spread']:.1f}: "
            f"{'larger' if c['larger_than_spread'] else 'not larger'} than the spread")
            for c in comparisons] or ["- one student in this run (`--variants`): nothing to compare it with"]


def tagging_augmentation_lines(augmentation: dict[str, Any]) -> list[str]:
    """Token classification's augmented splits: rows, word replacements, mentions swapped, and the teacher's
    agreement on the unchanged words of the copies (its tags there as on the original)."""
    lines = ["| split | rows | word replacements (MLM) | mentions swapped | unchanged words tagged as on the "
             "original | in copies with a swapped mention | teacher token acc. originals / copies | "
             "teacher entity F1 originals / copies |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, aug in augmentation.items():
        agreement = aug.get("agreement") or {}
        shares = [_word_share(agreement.get(group) or {}) for group in ("all", "mentions")]
        accuracy, f1 = agreement.get("teacher_accuracy") or {}, agreement.get("teacher_entity_f1") or {}
        counts = aug["counts"]
        lines.append(f"| {variant} | {aug['rows']} | {counts.get('replacements', 0)} "
                     f"({counts.get('mlm_replacements', 0)}) | {counts.get('mentions_replaced', 0)} | "
                     f"{' | '.join(shares)} | {100 * accuracy.get('originals', 0):.1f}% / "
                     f"{100 * accuracy.get('copies', 0):.1f}% | {100 * f1.get('originals', 0):.1f}% / "
                     f"{100 * f1.get('copies', 0):.1f}% |")
    return lines


def _word_share(counts: dict[str, Any]) -> str:
    return f"{100 * counts['share']:.1f}% of {counts['words']} words" if counts.get("share") is not None else "-"


def augmentation_lines(augmentation: dict[str, Any]) -> list[str]:
    """The augmented splits: rows, replacements and the teacher's label agreement per candidate source (splits of
    token classification, whose counts have ``entity_words``: ``tagging_augmentation_lines``)."""
    if any("entity_words" in aug["counts"] for aug in augmentation.values()):
        return tagging_augmentation_lines(augmentation)
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


def gap_check_line(gap: dict[str, Any]) -> str:
    """The gap check as one line (a warning when the gap is small)."""
    name = METRIC_NAMES[gap["metric"]]
    spread = (f"twice the direct students' std over {gap['seeds']} seeds, {100 * gap['threshold']:.1f}"
              if gap["direct_dev_std"] is not None else "1 point (one seed: no spread)")
    line = (f"gap check: teacher dev {name} {100 * gap['teacher_dev']:.1f}, direct student "
            f"{100 * gap['direct_dev_mean']:.1f}: gap {100 * gap['gap']:+.1f} points")
    if gap["warning"]:
        return f"{line}; WARNING: under {spread}: distillation has little to transfer on this task"
    return f"{line} (over {spread})"


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Plots plus ``README.md`` (results card) in the experiment folder."""
    metric = results.get("metric", "accuracy")
    body = _intro(results, metric)
    if results.get("gap_check"):
        body[2:2] = [f"**{gap_check_line(results['gap_check'])}**", ""]
    if results.get("mlm"):
        body += ["## The masked LM", "", f"`{results['mlm']['model']}`, held-out (dev) scores: "
                 + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in results["mlm"]["scores"].items()), ""]
    body += ["## Augmentation", "", *augmentation_lines(results["augmentation"]), ""]
    plots = []
    for schedule, part in results["schedules"].items():
        plots += plot_runs(part["table"], out, schedule, metric)
        body += [f"## Results: {schedule}", "", results_table(part["table"], metric), "",
                 best_line(part["best"], metric), ""]
        if "gap" in part:
            body += [gap_line(part["gap"], metric), "", *target_lines(part["target"], metric), ""]
        body += ["Which differences are larger than the seed spread:", "", *comparison_lines(part["comparisons"]), ""]
    body += [*_data_lines(results["data"], metric), *_clock_lines(results["wall_clock_seconds"]["stages"]),
             "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
             "## Configuration", "", "```json", json.dumps(results["config"], indent=2, sort_keys=True, default=str),
             "```"]
    card = out / "README.md"
    front = yaml.safe_dump(_front_matter(results, metric), sort_keys=False)
    write_bytes_atomic(card, ("---\n" + front + "---\n\n" + "\n".join(body) + "\n").encode())
    return card


def _front_matter(results: dict[str, Any], metric: str) -> dict[str, Any]:
    """The card's YAML: tags, the training version and each row's main scores."""
    def metrics(row: dict[str, Any]) -> list[dict[str, Any]]:
        if metric == "f1":
            return [{"type": "f1", "name": "entity F1", "value": round(row["f1"]["mean"], 4)},
                    {"type": "accuracy", "name": "token accuracy", "value": round(row["token_accuracy"]["mean"], 4)}]
        return [{"type": "accuracy", "value": round(row["accuracy"]["mean"], 4)},
                {"type": "f1", "name": "macro-F1", "value": round(row["macro_f1"]["mean"], 4)}]

    tags = ["distillery", "tinybert", "ablation"] + (["token-classification"] if metric == "f1" else [])
    return {"tags": tags, "datasets": [results["data"]["train"]["version_id"]],
            "model-index": [{"name": f"{name} ({schedule})", "results": [{"metrics": metrics(row)}]}
                            for schedule, part in results["schedules"].items()
                            for name, row in part["table"].items()]}


def _intro(results: dict[str, Any], metric: str) -> list[str]:
    """The title, the teacher and students, the schedules and how rows are scored."""
    exp, scoring = results["config"]["experiment"], results["scoring"]
    length = scoring["max_seq_length"]
    length = f"{length} tokens" if isinstance(length, int) else length
    if metric == "f1":
        rules = (f"Scoring (rules {scoring['rules']}): entity-level precision / recall / F1 (micro, seqeval, entities "
                 "read as conlleval does) and token accuracy over every word of every dev and test sentence, a gold "
                 f"tag the model does not know as an error; a word is predicted by its first piece, words beyond "
                 f"{length} count as O predictions. The best student of a schedule is picked by dev entity F1 and "
                 "reported on test.")
    else:
        rules = (f"Scoring (rules {scoring['rules']}): every dev and test row counts, a gold label the model does not "
                 f"know as an error; rows truncated to {length}. The best student of a schedule is picked by dev "
                 "accuracy and reported on test.")
    return [
        "# TinyBERT ablation" + (" (token classification)" if metric == "f1" else ""), "",
        f"Teacher: {results['config']['teacher']['model']} fine-tuned on the training split. Students share one "
        f"shape ({exp['student_layers']} layers x {exp['student_hidden']}, {exp['student_heads']} heads, "
        f"{exp['student_intermediate']} feed-forward; initialised {INIT[exp['student_init']]}) and are reported on "
        f"the test split (mean ± sample std over seeds {exp['seeds']}). Schedules: equal-steps = task distillation "
        f"{exp['stage1_steps']} stage-1 + {exp['stage2_steps']} stage-2 steps for every student whatever its data; "
        "equal-epochs = as many epochs per stage as those steps make on the original split (TinyBERT's setting).", "",
        rules, "",
    ]


def _data_lines(data: dict[str, Any], metric: str) -> list[str]:
    """The splits' rows and versions, and the training split's class balance (token classification: its entities
    per type and tag counts)."""
    train = data["train"]
    balance = [f"Training class balance: {json.dumps(train['labels'] or {}, sort_keys=True)}"] if metric != "f1" else [
        f"Training entities per type: {json.dumps(train.get('entities') or {}, sort_keys=True)}", "",
        f"Training tag counts: {json.dumps(train.get('tags') or {}, sort_keys=True)}"]
    return ["## Data", "", "| split | rows | version |", "|---|---:|---|",
            *[f"| {k} | {v['rows']} | `{v['version_id'][:12]}` |" for k, v in data.items()], "", *balance, ""]


def _clock_lines(stages: dict[str, Any]) -> list[str]:
    """The wall-clock table: seconds per stage, in all and per run."""
    return ["## Wall-clock time per stage", "",
            "| stage | runs | seconds in all | seconds per run |", "|---|---:|---:|---:|",
            *[f"| {k} | {v['runs']} | {v['seconds']:.0f} | {v['seconds'] / v['runs']:.0f} |"
              for k, v in stages.items()],
            f"| all | {sum(v['runs'] for v in stages.values())} | {sum(v['seconds'] for v in stages.values()):.0f} | |",
            ""]
