"""Follow-up to the ablation (bench/quality_bench.py): is augmentation's deficit there a matter of compute?

The ablation gives every student the same steps, so the augmented split (4.6x the rows) is seen for fewer epochs.
From the ablation's teacher, initial students and data versions, this runs

- ``task-aug-epochs``: task distillation on the augmented split for as many epochs per stage as the ablation's
  ``task`` student had on the original split (TinyBERT's setting; about 4.6x the steps);
- ``task-long``: task distillation on the original split for as many steps as ``task-aug-epochs`` (the compute
  control: more epochs of the same rows),

and prints, and writes to ``<output>/results.json``, the test accuracy per seed with its mean and spread.

    python bench/equal_epochs_probe.py --store distillery_store --ablation runs/ablation --seeds 1,2,3
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.demo import REPO_ROOT  # noqa: E402
from distillery.recipes.ablation import equal_steps, load_experiment, summarise  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.store import Store  # noqa: E402

quiet_libraries()

VARIANTS = ("task-aug-epochs", "task-long")


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=str(REPO_ROOT / "configs" / "ablation.toml"), show_default=True)
@click.option("--store", "store_root", default="distillery_store", show_default=True)
@click.option("--ablation", default="runs/ablation", show_default=True, help="The finished ablation's folder.")
@click.option("--output", default="runs/ablation-probe", show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True)
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
def main(config_path: str, store_root: str, ablation: str, output: str, seeds: str, variants: str) -> None:
    """Run the probe's students (finished ones are reused) and report their test accuracy."""
    from distill import evaluate, task_distill

    cfgs, store, out = load_experiment(Path(config_path)), Store(store_root), Path(output)
    exp, prefix = cfgs.experiment, cfgs.experiment.name_prefix
    train, aug, test = f"{prefix}-train", f"{prefix}-train-aug", f"{prefix}-test"
    rows = {name: store.manifest(name)["num_rows"] for name in (train, aug)}
    task = equal_steps(cfgs.task, exp, rows[train])        # the ablation's task student, in epochs
    epochs = {"stage1_epochs": task.stage1_epochs, "stage2_epochs": task.stage2_epochs}
    plans = {"task-aug-epochs": (aug, epochs),
             "task-long": (train, {k: v * rows[aug] / rows[train] for k, v in epochs.items()})}
    results = {}
    for variant in variants.split(","):
        data, stage_epochs = plans[variant]
        scores = []
        for seed in (int(s) for s in seeds.split(",")):
            folder = out / f"{variant}-seed{seed}"
            cfg = dataclasses.replace(cfgs.task, teacher=str(Path(ablation) / "teacher" / "model"),
                                      student=str(Path(ablation) / f"student-init-seed{seed}"), seed=seed,
                                      eval_ref=f"{prefix}-dev", eval_every=250, **stage_epochs)
            model = task_distill(store, data, cfg, folder, resume=True).path
            scores.append(evaluate(store, test, model)["accuracy"])
        results[variant] = {"data": data, **stage_epochs, "test_accuracy": scores, "summary": summarise(scores)}
        click.echo(f"{variant}: {[round(100 * s, 1) for s in scores]} -> "
                   f"{100 * results[variant]['summary']['mean']:.1f} ± {100 * results[variant]['summary']['std']:.1f}")
        (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
