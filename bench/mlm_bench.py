"""The augmentation's masked LM: learning curve and cost of `distillery distill mlm` on the bundled glosses.

    python bench/mlm_bench.py [--steps 1200] [--lr 3e-4] [--train-layers 0] [--mask-prob 0.15] [--whole-word]
                              [--batch-size 64] [--eval-every 200] [--output runs/mlm-bench/NAME]

Trains all-MiniLM-L6-v2 (+ a tied head) on the 20,000 unlabelled glosses and the 4,000 training glosses (never
on dev or test), evaluates on 1,000 dev glosses (recall@1 / recall@15 of the masked original with the single
input, as the augmentation builds its candidates, and perplexity), and prints the curve with the wall clock.
Finished runs are reused (same settings, same output folder).
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

from distill.config import MLMConfig  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from distillery.compose import train_augmentation_mlm  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402

quiet_libraries()


@click.command()
@click.option("--steps", default=1200, show_default=True)
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--warmup", default=0.06, show_default=True)
@click.option("--train-layers", default=0, show_default=True)
@click.option("--mask-prob", default=0.15, show_default=True)
@click.option("--whole-word", is_flag=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--max-seq-length", default=64, show_default=True)
@click.option("--eval-every", default=200, show_default=True)
@click.option("--eval-rows", default=1000, show_default=True)
@click.option("--store", "store_root", default="distillery_store", show_default=True)
@click.option("--output", default=None, help="Run folder (default runs/mlm-bench/<settings>).")
def main(steps: int, lr: float, warmup: float, train_layers: int, mask_prob: float, whole_word: bool,
         batch_size: int, max_seq_length: int, eval_every: int, eval_rows: int, store_root: str,
         output: str | None) -> None:
    """Train one masked LM and print its learning curve."""
    store = Store(store_root)
    text_files = [SAMPLE_DIR / "unlabelled.txt", SAMPLE_DIR / "train.jsonl"]
    text = run_step(store, plan_preprocess(text_files, PreprocessConfig()), "mlm-bench-text").manifest
    labelled = PreprocessConfig(input=InputConfig(label_column="label"))
    dev = run_step(store, plan_preprocess([SAMPLE_DIR / "dev.jsonl"], labelled), "mlm-bench-dev").manifest
    cfg = MLMConfig(max_steps=steps, lr=lr, warmup=warmup, train_layers=train_layers, mask_prob=mask_prob,
                    whole_word=whole_word, batch_size=batch_size, max_seq_length=max_seq_length,
                    eval_ref=dev["version_id"], eval_every=eval_every, eval_rows=eval_rows, log_every=50)
    name = (f"s{steps}-lr{lr:g}-w{warmup:g}-L{train_layers}-p{mask_prob:g}{'-wwm' if whole_word else ''}"
            f"-b{batch_size}")
    out = Path(output or f"runs/mlm-bench/{name}")
    start = time.perf_counter()
    model = train_augmentation_mlm(store, text["version_id"], cfg, out, resume=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], **{k: round(v, 4) for k, v in r["eval"].items() if isinstance(v, float)}}
             for r in records if "eval" in r]
    for point in curve:
        click.echo(json.dumps(point))
    click.echo(f"{name}: {'reused' if model.up_to_date else f'{wall:.0f} s'}; final {json.dumps(model.scores)}")


if __name__ == "__main__":
    main()
