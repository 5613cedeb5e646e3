"""`distillery recipe tinybert`: the TinyBERT ablation (distillery/recipes/ablation.py) as an installed command, on
the bundled WordNet task by default, or on any labelled data with a config whose [experiment] names train / dev /
test / unlabelled files or versions. Writes ``results.json``, a results card ``README.md`` and PNG plots into the
output folder; finished stages are reused, so rerunning after an interruption continues the experiment."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from distillery.bundled import CONFIGS_DIR
from distillery.cli.shared import current_store


@click.group("recipe")
def recipe_group() -> None:
    """Experiments that chain many steps and compare their results (installed with the package)."""


@recipe_group.command("tinybert")
@click.option("--quick", is_flag=True, help="The few-minute smoke version (the package's ablation_quick.toml).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Experiment TOML ([experiment] plus one section per step).  [default: the package's "
                   "ablation.toml, or ablation_quick.toml with --quick]")
@click.option("--mlm", default=None, help="Variant 5's masked LM: domain (trained by the recipe), a model, or none.")
@click.option("--seeds", default=None, help="Comma-separated seeds (overrides the config's), e.g. 1,2.")
@click.option("--compute", default=None, help="Comma-separated schedules: equal-steps, equal-epochs.")
@click.option("--variants", default=None, help="Comma-separated students to train (default: all), e.g. "
                                                "task,task-aug-mlm.")
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="Experiment folder.  [default: runs/ablation, or runs/ablation-quick with --quick]")
def tinybert_command(quick: bool, config_path: str | None, mlm: str | None, seeds: str | None, compute: str | None,
                     variants: str | None, output: str | None) -> None:
    """TinyBERT's ablation: teacher, direct student, general and task distillation with and without augmentation
    (word vectors, the domain masked LM), at equal steps and equal epochs, over seeds; prints the results table."""
    from distillery.recipes.ablation import load_experiment, run_experiment
    from distillery.recipes.ablation_report import augmentation_lines, comparison_lines, results_table

    config = Path(config_path or CONFIGS_DIR / ("ablation_quick.toml" if quick else "ablation.toml"))
    out = Path(output or ("runs/ablation-quick" if quick else "runs/ablation"))
    start = time.perf_counter()
    results = run_experiment(current_store(), load_experiment(config, {
        "mlm": mlm, "seeds": tuple(int(s) for s in seeds.split(",")) if seeds else None,
        "compute": tuple(compute.split(",")) if compute else None,
        "variants": tuple(variants.split(",")) if variants else None}), out)
    for line in augmentation_lines(results["augmentation"]):
        click.echo(line)
    for schedule, part in results["schedules"].items():
        click.echo(f"\n{schedule}\n{results_table(part['table'])}")
        for line in comparison_lines(part["comparisons"]):
            click.echo(line)
    click.echo(json.dumps(results["wall_clock_seconds"]["stages"]))
    click.echo(f"total {time.perf_counter() - start:.0f} s; results in {out}/README.md")
