"""Benchmark: the distiller's streaming data pipeline vs in-memory tensors vs a plain Hugging Face loop.

Same teacher (the real all-MiniLM-L6-v2 encoder, 6 x 384, 12 heads), same student (TinyBERT-4: 4 x 312,
12 heads, 1200 intermediate, random init), same TinyBERT intermediate losses (embedding + hidden MSE through
a projection, raw attention-score MSE, uniform layer map), same rows (the bundled WordNet train split, 4000
glosses, written as a version of 4 shards). Modes:

- stream:    ShardStream (shuffle buffer, length grouping, tokenisation in DataLoader workers), as the trainer does
- memory:    the same batches tokenised beforehand and kept as tensors (no data cost at all)
- hf:        a plain Hugging Face loop: datasets.map tokenisation, random batches, DataCollatorWithPadding

For each it prints student optimizer steps/s, real (non-pad) tokens/s, padded tokens/s and the share of step
time spent waiting for data (best of ``--rounds`` round-robin repetitions, since the machine may be shared).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_bench.py --steps 40
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill.data import ShardStream, make_loader  # noqa: E402
from distill.matches import MatchSet, default_matches, layer_mapping  # noqa: E402
from distill.models import load_student, load_teacher  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.trainer import to_device  # noqa: E402
from pipelines.resources import SAMPLE_DIR, minilm_path  # noqa: E402
from pipelines.store import Store  # noqa: E402


def sample_version(store: Store, shard_rows: int = 1000) -> str:
    """The bundled train split as a version (text, label, row_id), written directly with the store API."""
    rows = [json.loads(line) for line in (SAMPLE_DIR / "train.jsonl").read_text().splitlines()]
    rows = [{"text": r["text"], "label": r["label"], "row_id": i} for i, r in enumerate(rows)]
    writer = store.create_version("bench", {"shard_rows": shard_rows}, [{"kind": "raw", "path": "train.jsonl",
                                                                         "sha256": "0" * 64}], name="bench-train")
    for i, start in enumerate(range(0, len(rows), shard_rows)):
        writer.write_chunk(i, pa.Table.from_pylist(rows[start:start + shard_rows]))
    writer.finalize()
    return "bench-train"


def build_objective(device: torch.device, seed: int = 0) -> Objective:
    teacher = load_teacher(minilm_path(), with_head=False, device=device)
    student = load_student("tinybert-4", teacher.config, {}, {}, with_head=False, seed=seed)
    mapping = layer_mapping(4, teacher.config.num_hidden_layers)
    matches = MatchSet(default_matches(mapping, embedding=1, hidden=1, attention=1), 312, teacher.config.hidden_size)
    return Objective(student, matches, teacher).to(device)


def run(objective: Objective, batches: Iterable[dict[str, torch.Tensor]], steps: int, warmup: int,
        device: torch.device) -> dict[str, Any]:
    """Train ``steps`` steps after ``warmup``; time the wait for each batch separately from the step."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=True)
    objective.train()
    iterator = iter(batches)
    wait = total = 0.0
    tokens = padded = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        loss, _ = objective(to_device(batch, device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            wait += t1 - t0
            total += t2 - t0
            tokens += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
    return {"steps_per_s": steps / total, "tokens_per_s": tokens / total, "padded_tokens_per_s": padded / total,
            "padding_share": 1 - tokens / padded, "data_wait_share": wait / total, "seconds": total}


def hf_batches(store: Store, ref: str, tokenizer_path: Path, batch_size: int, max_len: int, seed: int):
    """The usual Hugging Face recipe: datasets + map(tokenize) + shuffled DataLoader + DataCollatorWithPadding."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    files = [str(p) for p in store.shard_paths(ref)]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_len), batched=True,
                remove_columns=ds.column_names)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         collate_fn=DataCollatorWithPadding(tokenizer),
                                         generator=torch.Generator().manual_seed(seed))
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every mode; report the best round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        ref = sample_version(store)
        objective = build_objective(device)
        tokenizer = minilm_path()
        need = args.steps + args.warmup

        def stream() -> ShardStream:
            return ShardStream(store.shard_paths(ref), tokenizer, batch_size=args.batch_size,
                               max_seq_length=args.max_seq_length, seed=0)

        in_memory = []
        for batch in make_loader(stream(), num_workers=0):
            in_memory.append(batch)
            if len(in_memory) == need:
                break
        modes = {
            f"stream (workers={args.workers})": lambda: make_loader(stream(), num_workers=args.workers),
            "stream (workers=0)": lambda: make_loader(stream(), num_workers=0),
            "memory (pre-tokenised)": lambda: in_memory,
            "hf (random batches)": lambda: hf_batches(store, ref, tokenizer, args.batch_size, args.max_seq_length, 0),
        }
        results: dict[str, Any] = {}
        for _ in range(args.rounds):      # round-robin, best of the rounds: the machine may be shared
            for name, batches in modes.items():
                r = run(objective, batches(), args.steps, args.warmup, device)
                if name not in results or r["steps_per_s"] > results[name]["steps_per_s"]:
                    results[name] = r
    memory = results["memory (pre-tokenised)"]["steps_per_s"]
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} "
          f"load={os.getloadavg()[0]:.2f}")
    print(f"{'mode':<26}{'steps/s':>9}{'tokens/s':>10}{'padded/s':>10}{'padding':>9}{'data wait':>11}"
          f"{'vs memory':>11}")
    for name, r in results.items():
        print(f"{name:<26}{r['steps_per_s']:>9.2f}{r['tokens_per_s']:>10.0f}{r['padded_tokens_per_s']:>10.0f}"
              f"{r['padding_share']:>9.1%}{r['data_wait_share']:>11.2%}{r['steps_per_s'] / memory:>10.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "args": vars(args), "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
