"""`distillery demo`: the whole pipeline on a bundled sample, from raw files to a distilled student.

The demo is a pipeline file shipped in the package (``distillery/configs/pipeline_demo.toml``; the NER sample:
``pipeline_demo_ner.toml``), run by the same code as ``distillery run``: read -> preprocess -> train the domain
masked LM -> augment (its candidates for one-piece words, GloVe for the rest) -> fine-tune a teacher -> task-distil
a student -> evaluate. A version that already exists (same input, config and code) is reused and a finished
training run is not repeated, so running the demo twice costs seconds the second time. Its training runs and lock
file go under ``--runs`` (never into the installed package).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from distill.runs import read_scores
from distillery.bundled import CONFIGS_DIR
from distillery.pipeline import PipelineRun, load_pipeline, stages_to_run, summary_lines
from distillery.present import report_scores
from pipelines.store import Store

SAMPLES = {"supersense": CONFIGS_DIR / "pipeline_demo.toml", "ner": CONFIGS_DIR / "pipeline_demo_ner.toml"}


def run_demo(store: Store, runs: Path, pipeline_path: Path = SAMPLES["supersense"], workers: int | None = None,
             until: str | None = None) -> dict[str, Any]:
    """Run the demo's pipeline (all of it, or ``until`` a stage); return the versions written by name, the masked
    LM's scores (None without one) and the test scores by model."""
    pipeline = load_pipeline(pipeline_path, lock_path=runs / f"{Path(pipeline_path).stem}.lock.json")
    runner = PipelineRun(pipeline, store, runs / Path(pipeline_path).stem, echo=click.echo, workers=workers)
    rows = runner.run(stages_to_run(pipeline, until, None))
    for line in summary_lines(rows):
        click.echo(line)
    versions = {pipeline.stages[r["stage"]].version_name: r["output"] for r in rows
                if pipeline.stages[r["stage"]].version_name}
    mlm = next((r for r in rows if r["step"] == "mlm"), None)
    scores = {r["stage"].removesuffix("-test"): json.loads(Path(r["output"]).read_text()) for r in rows
              if r["step"] == "evaluate"}
    if scores:
        click.echo("test split:")
        for role, found in scores.items():
            report_scores(role, found)
    return {"versions": versions, "scores": scores, "mlm": read_scores(Path(mlm["output"])) if mlm else None}


@click.command("demo")
@click.option("--sample", type=click.Choice(sorted(SAMPLES)), default="supersense", show_default=True,
              help="The bundled sample: WordNet supersenses (sentence classification, with the domain masked LM) "
                   "or the WordNet NER sample (token classification, word vectors only).")
@click.option("--pipeline", "pipeline_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Another pipeline file to run as the demo (a copy of the sample's, edited).")
@click.option("--runs", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the training runs and the lock file (one subfolder per pipeline).")
@click.option("--workers", default=1, show_default=True, help="Worker processes for preprocess and augment.")
@click.option("--until", default=None, metavar="STAGE", help="Stop after STAGE (and the stages it needs).")
def demo_command(sample: str, pipeline_path: str | None, runs: str, workers: int, until: str | None) -> None:
    """Run the whole pipeline on a bundled sample (offline): preprocess, the domain masked LM, augmentation, a
    teacher, a task-distilled student, test scores. The stages are a pipeline file shipped in the package
    (`distillery run` runs the same files)."""
    from distillery.cli.shared import current_store

    run_demo(current_store(), Path(runs), Path(pipeline_path) if pipeline_path else SAMPLES[sample], workers, until)
