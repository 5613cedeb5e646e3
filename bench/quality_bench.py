"""The TinyBERT ablation (distillery/recipes/ablation.py) as one command: on the bundled WordNet task by default,
on any labelled data with a config whose [experiment] names train / dev / test / unlabelled files or versions.

    python bench/quality_bench.py [--quick] [--config configs/ablation.toml] [--compute equal-steps,equal-epochs]
                                  [--seeds 1,2,3] [--variants task,task-aug-mlm] [--mlm domain|PATH|none]
                                  [--store DIR] [--output DIR]

Writes ``results.json``, a results card ``README.md`` and PNG plots into the output folder. Finished stages are
reused, so rerunning after an interruption continues the experiment.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.demo import REPO_ROOT  # noqa: E402
from distillery.recipes.ablation import load_experiment, run_experiment  # noqa: E402
from distillery.recipes.ablation_report import augmentation_lines, comparison_lines, results_table  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.store import Store  # noqa: E402

quiet_libraries()


@click.command()
@click.option("--quick", is_flag=True, help="The few-minute smoke version (configs/ablation_quick.toml).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Experiment TOML (default configs/ablation.toml, or ablation_quick.toml with --quick).")
@click.option("--mlm", default=None, help="Variant 5's masked LM: domain (trained by the recipe), a model, or none.")
@click.option("--seeds", default=None, help="Comma-separated seeds (overrides the config's), e.g. 1,2.")
@click.option("--compute", default=None, help="Comma-separated schedules: equal-steps, equal-epochs.")
@click.option("--variants", default=None, help="Comma-separated students to train (default: all), e.g. "
                                                "task,task-aug-mlm.")
@click.option("--store", "store_root", default="distillery_store", show_default=True)
@click.option("--output", default=None, help="Experiment folder (default runs/ablation[-quick]).")
def main(quick: bool, config_path: str | None, mlm: str | None, seeds: str | None, compute: str | None,
         variants: str | None, store_root: str, output: str | None) -> None:
    """Run the ablation and print its results table."""
    config = Path(config_path or REPO_ROOT / "configs" / ("ablation_quick.toml" if quick else "ablation.toml"))
    out = Path(output or ("runs/ablation-quick" if quick else "runs/ablation"))
    start = time.perf_counter()
    results = run_experiment(Store(store_root), load_experiment(config, {
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


if __name__ == "__main__":
    main()
