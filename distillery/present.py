"""What the commands print: a version in a few lines, a step's outcome, a training run's outcome."""
from __future__ import annotations

import json
from typing import Any

import click

from distill.runs import TrainedModel
from pipelines.runner import StepResult
from pipelines.store import Store


def echo_json(data: Any) -> None:
    """Print data as indented JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def describe_version(manifest: dict[str, Any], store: Store) -> str:
    """A few lines saying where a version is, what it holds and which names point at it."""
    vid = manifest["version_id"]
    acc = manifest["accounting"]
    columns = ", ".join(f["name"] for f in manifest["schema"])
    names = " ".join(ref for ref, target in store.refs().items() if target == vid) or "-"
    lines = [f"version {vid[:12]}  step={manifest['step']}  names={names}",
             f"  path:    {store.version_path(vid)}",
             f"  rows:    {manifest['num_rows']} in {len(manifest['shards'])} shard(s); columns: {columns}"]
    if acc:
        lines.append(f"  account: {json.dumps(acc, sort_keys=True)}")
    if "label_counts" in manifest["stats"]:
        lines.append(f"  labels:  {manifest['stats']['num_labels']} distinct")
    return "\n".join(lines)


def describe_diff(diff: dict[str, Any]) -> list[str]:
    """``versions diff`` for people: what differs, one line each."""
    a, b = (v[:12] for v in diff["versions"])
    if diff["identical"]:
        return [f"{a} and {b}: same step, config, schema, accounting and data"]
    lines = [f"{a} vs {b}:"]
    if diff["step"]:
        lines.append(f"  step: {diff['step'][0]} -> {diff['step'][1]}")
    lines += [f"  config {key}: {old!r} -> {new!r}" for key, (old, new) in diff["config"].items()]
    if diff["schema"]:
        names = [", ".join(f["name"] for f in schema) for schema in diff["schema"]]
        lines.append(f"  schema: {names[0]} -> {names[1]}")
    if diff["num_rows"][0] != diff["num_rows"][1]:
        lines.append(f"  rows: {diff['num_rows'][0]} -> {diff['num_rows'][1]}")
    lines += [f"  accounting {key}: {old} -> {new}" for key, (old, new) in diff["accounting"].items()]
    lines.append("  data: identical shards" if diff["same_data"] else "  data: shards differ")
    return lines


def report_step(result: StepResult, store: Store) -> None:
    """The same summary for every step: status, the version, its rejects and warnings."""
    manifest = result.manifest
    if result.up_to_date:
        status = "up to date (this version was already complete; nothing written)"
    else:
        status = "written" + (" (resumed)" if result.resumed else "")
    click.echo(f"{manifest['step']}: {status}")
    click.echo(describe_version(manifest, store))
    rejected = sum(manifest["accounting"].get("rejected", {}).values())
    if rejected:
        click.echo(f"  rejects: {rejected} row(s) with origin and reason in {len(manifest['rejects'])} rejects "
                   f"shard(s)")
    for warning in manifest["extra"].get("warnings", []):
        click.secho(f"WARNING {warning}", fg="yellow", err=True)


def report_agreement(agreement: dict[str, Any]) -> None:
    """The teacher's label agreement between copies and their originals, per candidate source."""
    click.echo("agreement (teacher's label on a copy = its label on the original):")
    for group in ("all", "mlm_only", "vectors_only", "mixed"):
        if group in agreement and agreement[group]["copies"]:
            counts = agreement[group]
            click.echo(f"  {group:<13} {100 * counts['share']:5.1f}%  of {counts['copies']} copies")
    accuracy = agreement.get("teacher_accuracy")
    if accuracy:
        click.echo(f"  teacher accuracy on the gold labels: originals {100 * accuracy['originals']:.1f}%, "
                   f"copies {100 * accuracy['copies']:.1f}%")


def report_trained(model: TrainedModel, what: str) -> None:
    """The same summary for every training run: status, the model folder, its scores (a token classifier's
    per-type scores are left to its model card)."""
    status = "up to date (the run folder already holds this finished run)" if model.up_to_date else "trained"
    click.echo(f"{what}: {status}")
    click.echo(f"  model:   {model.path}")
    scores = {k: v for k, v in model.scores.items() if k not in ("version_id", "per_type")}
    if scores:
        click.echo("  scores:  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in scores.items()))


def report_scores(role: str, scores: dict[str, Any]) -> None:
    """One line of test scores: entity F1, precision, recall and token accuracy for a token classifier (its scores
    have ``token_accuracy``), else accuracy and macro-F1."""
    if "token_accuracy" in scores:
        click.echo(f"  {role:<8} entity F1 {scores['f1']:.4f}  precision {scores['precision']:.4f}  recall "
                   f"{scores['recall']:.4f}  token accuracy {scores['token_accuracy']:.4f}  ({scores['rows']} "
                   f"sentences)")
    else:
        click.echo(f"  {role:<8} accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}  "
                   f"({scores['rows']} rows)")
