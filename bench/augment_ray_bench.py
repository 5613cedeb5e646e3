"""Benchmark: the local augmentation engine against `--engine ray` (the overhead Ray adds), same rows, same config.

Rows/s of the local engine with 1 and 2 helper processes and of Ray with 1 and 2 actors (CPU actors, or one GPU
each with --device cuda), on the first --rows rows of the bundled sample. Two figures per run: end to end (the
augment call: models loaded, Ray actors started; Ray itself is started once, before, and timed apart) and
processing (the manifest's wall_s: after the model load for the local engine, actors' start-up included for
Ray). --reference adds TinyBERT's plain re-implementation (bench/augment_bench.py) on the same rows and device.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/augment_ray_bench.py --rows 300 --mlm path/to/masked-lm
    HF_HUB_OFFLINE=1 .venv/bin/python bench/augment_ray_bench.py --device cuda --runs ray:1 --reference

Without --mlm a small random BERT (4 layers, hidden 256, the bundled bert-base-uncased vocabulary) is built.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from augment_bench import ReferenceAugmentor  # noqa: E402

from augment import (
    AugmentConfig,  # noqa: E402
    plan_augment,
)
from augment.mlm import load_mlm  # noqa: E402
from augment.ray_engine import ray_session  # noqa: E402
from augment.vectors import load_vectors  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.fingerprint import version_id  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402


def build_small_model(folder: Path) -> None:
    """A small random BERT masked LM with the real vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024)
    BertForMaskedLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def source_store(root: Path, rows: list[str]) -> Store:
    """A fresh store holding the rows as version ``src``."""
    store = Store(root / f"store-{time.time_ns()}")
    config, parents = {"bench": True}, [{"kind": "raw", "path": "bench", "sha256": "0" * 64}]
    writer = store.create_version(version_id("bench", config, parents, "bench"), "bench", config, parents, name="src")
    writer.write_chunk(0, pa.table({"text": rows, "row_id": pa.array(range(len(rows)), pa.int64())}))
    writer.finalize()
    return store


def measure(args: argparse.Namespace, rows: list[str], root: Path, mlm: str, report: dict) -> None:
    """Time each run of --runs on a fresh store; records whether all wrote the same bytes."""
    hashes = set()
    print(f"{'run':10} {'end to end':>16} {'processing':>16} {'output rows':>12}", flush=True)
    for run in args.runs.split(","):
        engine, count = run.split(":")
        n = int(count)
        parallel = {"workers": n} if engine == "local" else {"ray_actors": n, "workers": 0}
        config = AugmentConfig(mlm=mlm, num_aug=args.num_aug, chunk_rows=args.chunk_rows, device=args.device,
                               engine=engine, **parallel)
        store = source_store(root, rows)
        start = time.perf_counter()
        manifest = run_step(store, plan_augment(store, "src", config)).manifest
        total_s = time.perf_counter() - start
        wall_s = manifest["extra"]["run"]["timing_s"]["wall_s"]
        hashes.add(tuple(s["sha256"] for s in manifest["shards"]))
        report["runs"][run] = {"end_to_end_s": total_s, "end_to_end_rows_s": len(rows) / total_s,
                               "processing_s": wall_s, "processing_rows_s": len(rows) / wall_s,
                               "output_rows": manifest["num_rows"]}
        print(f"{run:10} {len(rows) / total_s:9.1f} rows/s {len(rows) / wall_s:9.1f} rows/s "
              f"{manifest['num_rows']:12}", flush=True)
    report["same_bytes"] = len(hashes) == 1
    print(f"every run wrote the same bytes: {report['same_bytes']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="sample rows (train split, in order)")
    parser.add_argument("--mlm", help="masked LM folder (default: a small random BERT)")
    parser.add_argument("--num-aug", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU actors for Ray)")
    parser.add_argument("--runs", default="local:1,local:2,ray:1,ray:2", help="engine:workers-or-actors, ...")
    parser.add_argument("--reference", action="store_true", help="also time the reference re-implementation")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DISTILLERY_PROGRESS", "0")
    quiet_libraries()
    with open(SAMPLE_DIR / "train.jsonl") as fh:
        rows = [json.loads(line)["text"] for _, line in zip(range(args.rows), fh)]
    root = Path(tempfile.mkdtemp(prefix="augment-ray-bench-"))
    os.environ.setdefault("DISTILLERY_CACHE", str(root / "cache"))
    mlm = args.mlm
    if mlm is None:
        mlm = str(root / "small-bert")
        build_small_model(Path(mlm))
    report: dict = {"rows": len(rows), "mlm": args.mlm or "small random BERT", "num_aug": args.num_aug,
                    "chunk_rows": args.chunk_rows, "device": args.device, "cpus": os.cpu_count(),
                    "load_before": os.getloadavg()[0], "runs": {}}
    print(f"rows={len(rows)} N={args.num_aug} chunk_rows={args.chunk_rows} device={args.device} "
          f"cpus={os.cpu_count()} load={report['load_before']:.2f}", flush=True)
    with ExitStack() as stack:
        if any(run.startswith("ray") for run in args.runs.split(",")):
            start = time.perf_counter()
            stack.enter_context(ray_session(None))
            report["ray_init_s"] = time.perf_counter() - start
            print(f"ray.init: {report['ray_init_s']:.1f}s (not in the figures below)", flush=True)
        measure(args, rows, root, mlm, report)
    if args.reference:
        model = load_mlm(mlm, args.device, "fp32")
        vectors = load_vectors(None)
        random.seed(0)
        reference = ReferenceAugmentor(model.model, model.tokenizer, vectors.words[:100_000],
                                       vectors.matrix[:100_000], 15, args.num_aug, 0.4, "pair")
        start = time.perf_counter()
        for text in rows:
            reference.augment(text)
        seconds = time.perf_counter() - start
        report["reference_rows_s"] = len(rows) / seconds
        print(f"reference re-implementation: {len(rows) / seconds:.1f} rows/s", flush=True)
    report["load_after"] = os.getloadavg()[0]
    print(f"load average after: {report['load_after']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
