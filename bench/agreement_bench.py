"""How far augmented copies drift from their original's label, per augmentation setting.

    python bench/agreement_bench.py --mlm runs/ablation/mlm/model --teacher runs/ablation/teacher/model [--rows 1000]

Augments the first ``--rows`` training glosses of the bundled sample with each setting below (N=4 rounds, as the
ablation) and reports, from the teacher's logits on every copy (`distillery distill agreement`), the share of
copies on which the teacher predicts the label it predicts on the original, overall and per candidate source, and
the teacher's accuracy on the copies. Versions are reused, so a rerun only prints.
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

from augment import (
    AugmentConfig,  # noqa: E402
    plan_augment,
)
from distill import CacheLogitsConfig, plan_teacher_logits
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402

quiet_libraries()


def settings(mlm: str) -> dict[str, AugmentConfig]:
    base = AugmentConfig(mlm=mlm, num_aug=4, seed=42)
    return {
        "vectors only (--mlm none)": dataclasses.replace(base, mlm="none"),
        "MLM + GloVe (TinyBERT)": base,
        "MLM + GloVe, single input": dataclasses.replace(base, input_mode="single"),
        "MLM + GloVe, p = 0.2": dataclasses.replace(base, replace_prob=0.2),
        "MLM + GloVe, MLM candidates with cosine >= 0.3": dataclasses.replace(base, mlm_min_similarity=0.3),
        "MLM + GloVe, MLM candidates with cosine >= 0.5": dataclasses.replace(base, mlm_min_similarity=0.5),
        "MLM + GloVe, p = 0.2, cosine >= 0.5": dataclasses.replace(base, replace_prob=0.2, mlm_min_similarity=0.5),
    }


def share(agreement: dict, group: str) -> str:
    counts = agreement.get(group) or {}
    return f"{100 * counts['share']:.1f}%" if counts.get("copies") else "-"


@click.command()
@click.option("--mlm", required=True, type=click.Path(exists=True, file_okay=False), help="The domain masked LM.")
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False), help="The teacher.")
@click.option("--rows", default=1000, show_default=True, help="Training glosses augmented per setting.")
@click.option("--store", "store_root", default="distillery_store", show_default=True)
@click.option("--only", multiple=True, help="Run only the settings whose name contains this text (repeatable).")
def main(mlm: str, teacher: str, rows: int, store_root: str, only: tuple[str, ...]) -> None:
    """Print, per augmentation setting, the teacher's label agreement between copies and originals."""
    store = Store(store_root)
    labelled = PreprocessConfig(input=InputConfig(label_column="label", max_rows=rows))
    source = run_step(store, plan_preprocess([SAMPLE_DIR / "train.jsonl"], labelled)).manifest
    results = {}
    click.echo("| setting | copies | agreement all | MLM only | vectors only | mixed | teacher acc. on copies |")
    click.echo("|---|---:|---:|---:|---:|---:|---:|")
    for name, cfg in settings(mlm).items():
        if only and not any(part in name for part in only):
            continue
        augmented = run_step(store, plan_augment(store, source["version_id"], cfg)).manifest
        plan = plan_teacher_logits(store, augmented["version_id"], teacher, CacheLogitsConfig())
        agreement = run_step(store, plan).manifest["extra"]["agreement"]
        results[name] = {"version_id": augmented["version_id"], "agreement": agreement}
        shares = " | ".join(share(agreement, group) for group in ("all", "mlm_only", "vectors_only", "mixed"))
        click.echo(f"| {name} | {agreement['all']['copies']} | {shares} | "
                   f"{100 * agreement['teacher_accuracy']['copies']:.1f}% |")
    click.echo(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
