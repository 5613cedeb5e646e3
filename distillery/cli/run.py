"""`distillery run PIPELINE.toml`: run a declared pipeline (see distillery.pipeline)."""
from __future__ import annotations

from pathlib import Path

import click

from distillery.cli.shared import current_store
from distillery.pipeline import (
    PipelineRun,
    check_lock,
    default_runs,
    draw_graph,
    load_pipeline,
    matrix_scores,
    mermaid,
    stages_to_run,
    summary_lines,
)
from pipelines.errors import DistilleryError


@click.command("run")
@click.argument("pipeline_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only say, per stage, up to date / will run / will resume, and why.")
@click.option("--until", default=None, metavar="STAGE", help="Run STAGE and the stages it needs.")
@click.option("--only", default=None, metavar="STAGE", help="Run STAGE alone (the stages it needs must be up to date).")
@click.option("--no-resume", is_flag=True, help="Refuse to continue an interrupted stage (default: resume it).")
@click.option("--check", is_flag=True, help="Fail when a stage's version differs from the lock file's (which is "
                                            "then left as it was).")
@click.option("--runs", default=None, type=click.Path(file_okay=False),
              help="Folder of the training runs.  [default: runs/<pipeline name> beside the file]")
@click.option("--mermaid", "mermaid_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the graph as Mermaid text, stages coloured by status.")
@click.option("--workers", default=None, type=click.IntRange(1, 256),
              help="Worker processes of the steps that have them (preprocess, augment, ...; not part of any id).")
@click.option("--graph", "graph_path", default=None, type=click.Path(dir_okay=False),
              help="Also draw the graph as a PNG (matplotlib), stages coloured by status.")
def run_command(pipeline_file: str, dry_run: bool, until: str | None, only: str | None, no_resume: bool,
                check: bool, runs: str | None, mermaid_path: str | None, workers: int | None,
                graph_path: str | None) -> None:
    """Run the stages of PIPELINE_FILE in order: what is up to date is reused, what was interrupted resumes, what
    changed runs; writes PIPELINE.lock.json beside it."""
    pipeline = load_pipeline(pipeline_file)
    names = stages_to_run(pipeline, until, only)
    runner = PipelineRun(pipeline, current_store(), Path(runs) if runs else default_runs(Path(pipeline_file)),
                         resume=not no_resume, echo=click.echo, workers=workers)
    if dry_run:
        statuses = runner.dry_run(names)
        for state in statuses:
            click.echo(f"{state.stage:<16} {state.status:<12} {state.why}")
        found = {s.stage: s.status for s in statuses}
        if mermaid_path:
            Path(mermaid_path).write_text(mermaid(pipeline, found) + "\n")
        if graph_path:
            draw_graph(pipeline, Path(graph_path), found)
        return
    previous = pipeline.read_lock()
    rows = runner.run(names, write_lock=not check)
    for line in summary_lines(rows):
        click.echo(line)
    for group, found in matrix_scores(pipeline, rows).items():
        click.echo(f"{group}: {found['metric']} {100 * found['mean']:.1f} +- {100 * found['std']:.1f} "
                   f"(n = {found['n']})")
    done = {r["stage"]: "up to date" for r in rows}
    if mermaid_path:
        Path(mermaid_path).write_text(mermaid(pipeline, done) + "\n")
    if graph_path:
        draw_graph(pipeline, Path(graph_path), done)
    if check:
        problems = check_lock(pipeline, rows, previous)
        if problems:
            raise DistilleryError(f"the run differs from {pipeline.lock_path.name}: {'; '.join(problems)}")
        click.echo(f"every stage matches {pipeline.lock_path.name}")
