"""Benchmark: the distiller's streaming data pipeline vs in-memory tensors vs a plain Hugging Face loop.

Same teacher (the real all-MiniLM-L6-v2 encoder, 6 x 384, 12 heads), same student (TinyBERT-4: 4 x 312,
12 heads, 1200 intermediate, random init), same TinyBERT intermediate losses (embedding + hidden MSE through
a projection, raw attention-score MSE, uniform layer map), same rows (the bundled WordNet train split, 4000
glosses, written as a version of 4 shards). Modes:

- stream:    ShardStream (shuffle buffer, length grouping, tokenisation in DataLoader workers), as the trainer does
- mix:       a MixedStream of three sources (train 1/2, the unlabelled text 1/4, dev 1/4), as ``--mix`` makes
- memory:    the same batches tokenised beforehand and kept as tensors (no data cost at all)
- hf:        a plain Hugging Face loop: every row tokenised up front, random batches, DataCollatorWithPadding
- trainer:   the real trainer (`general_distill`, checkpoint at the end, metrics, progress); the per-step time
             is (time of 2N steps - time of N steps) / N, so loading and saving cancel out

For each it prints student optimizer steps/s, real (non-pad) tokens/s, padded tokens/s and the share of step
time spent waiting for data in the steady state, and the wait for an epoch's first batch (the shuffle buffer
fills first; paid once per epoch), best of ``--rounds`` round-robin repetitions, since the machine may be shared).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_bench.py --steps 40
    python3 bench/distill_bench.py --device cuda --amp bf16 --teacher CONFIG_AND_TOKENIZER_DIR --random-teacher
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roofline import matmul_peak, training_flops  # noqa: E402

from distill.data import EpochLoaders, MixedStream, ShardStream  # noqa: E402
from distill.matches import MatchSet, default_matches  # noqa: E402
from distill.models import layer_mapping, load_student, load_teacher  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.trainer import PREFETCH_BATCHES, to_device  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.fingerprint import version_id  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.store import Store  # noqa: E402


def sample_version(store: Store, shard_rows: int = 1000, source: str = "train.jsonl", name: str = "bench-train") -> str:
    """A bundled split as a version (text, label when it has one, row_id), written directly with the store API."""
    lines = (SAMPLE_DIR / source).read_text().splitlines()
    rows = [json.loads(line) if source.endswith(".jsonl") else {"text": line} for line in lines]
    rows = [{"text": r["text"], **({"label": r["label"]} if "label" in r else {}), "row_id": i}
            for i, r in enumerate(rows)]
    config, parents = {"shard_rows": shard_rows, "source": source}, [{"kind": "raw", "path": source,
                                                                      "sha256": "0" * 64}]
    writer = store.create_version(version_id("bench", config, parents, "bench"), "bench", config, parents,
                                  name=name)
    for i, start in enumerate(range(0, len(rows), shard_rows)):
        writer.write_chunk(i, pa.Table.from_pylist(rows[start:start + shard_rows]))
    writer.finalize()
    return name


def build_objective(teacher_path: Path, device: torch.device, seed: int = 0) -> Objective:
    teacher = load_teacher(teacher_path, with_head=False, device=device)
    student = load_student("tinybert-4", teacher.config, {}, {}, head="none", seed=seed)
    mapping = layer_mapping(4, teacher.config.num_hidden_layers)
    matches = MatchSet(default_matches(mapping, embedding=1, hidden=1, attention=1), 312, teacher.config.hidden_size)
    return Objective(student, matches, teacher).to(device)


def run(objective: Objective, batches: Iterable[dict[str, torch.Tensor]], steps: int, warmup: int,
        device: torch.device, amp: str = "none") -> dict[str, Any]:
    """Train ``steps`` steps after ``warmup``; time the wait for each batch separately from the step."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=True)
    objective.train()
    iterator = iter(batches)
    start = time.perf_counter()
    next(iterator)                      # the first batch of an epoch waits for the shuffle buffer to fill
    first_batch = time.perf_counter() - start
    wait = total = 0.0
    tokens = padded = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
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
            "padding_share": 1 - tokens / padded, "data_wait_share": wait / total, "seconds": total,
            "first_batch_s": first_batch}


def epochs(stream: ShardStream, workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """Epoch after epoch, opening the next epoch's loader ahead of time as the trainer does."""
    loaders = EpochLoaders(stream, workers)
    for epoch in itertools.count():
        for i, batch in enumerate(loaders.open(epoch)):
            if stream.local_batches() - i <= PREFETCH_BATCHES:
                loaders.prefetch(epoch + 1)
            yield batch


def hf_batches(store: Store, ref: str, tokenizer_path: Path, batch_size: int, max_len: int, seed: int):
    """The usual Hugging Face recipe: tokenise every row up front, shuffled DataLoader, DataCollatorWithPadding."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    texts = store.read_table(ref, columns=["text"]).column("text").to_pylist()
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    features = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    loader = torch.utils.data.DataLoader(features, batch_size=batch_size, shuffle=True,
                                         collate_fn=DataCollatorWithPadding(tokenizer),
                                         generator=torch.Generator().manual_seed(seed))
    while True:
        yield from loader


def random_teacher(source: Path, folder: Path) -> Path:
    """A randomly initialised copy of a teacher's architecture (same compute), with its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def trainer_seconds_per_step(store: Store, ref: str, teacher: Path, args: argparse.Namespace, tmp: Path) -> float:
    """The real trainer (general distillation, TinyBERT-4): time of 2N steps minus N steps, per step
    (after a 1-step run that pays the one-off costs: imports, kernels, compilation caches)."""
    from distill import DistillConfig, general_distill

    times = []
    for steps in (1, args.steps, 2 * args.steps):
        cfg = DistillConfig(teacher=str(teacher), student="tinybert-4", max_steps=steps, batch_size=args.batch_size,
                            max_seq_length=args.max_seq_length, num_workers=args.workers, device=args.device,
                            amp=args.amp, compile=args.compile, log_every=10)
        start = time.perf_counter()
        general_distill(store, ref, cfg, tmp / f"trainer-{steps}")
        times.append(time.perf_counter() - start)
    return (times[2] - times[1]) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every mode; report the best round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (trainer mode)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher folder (default: the bundled MiniLM)")
    parser.add_argument("--random-teacher", action="store_true",
                        help="use a random-weight copy of the teacher's architecture (same cost; for machines "
                             "that only have its config and tokenizer)")
    parser.add_argument("--modes", default="stream,mix,memory,hf,trainer")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    wanted = set(args.modes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        ref = sample_version(store)
        teacher = args.teacher or minilm_path()
        if args.random_teacher:
            teacher = random_teacher(teacher, Path(tmp) / "teacher")
        objective = build_objective(teacher, device)
        need = args.steps + args.warmup

        def stream() -> ShardStream:
            return ShardStream(store.shard_paths(ref), teacher, batch_size=args.batch_size,
                               max_seq_length=args.max_seq_length, seed=0)

        def mixed() -> MixedStream:
            """Three sources at 1/2, 1/4, 1/4 (train, the unlabelled text, dev), as ``--mix`` makes them."""
            refs = [ref, sample_version(store, source="unlabelled.txt", name="bench-text"),
                    sample_version(store, source="dev.jsonl", name="bench-dev")] if not mix_refs else mix_refs
            mix_refs[:] = refs
            return MixedStream([ShardStream(store.shard_paths(r), teacher, batch_size=args.batch_size,
                                            max_seq_length=args.max_seq_length, seed=0) for r in refs],
                               [0.5, 0.25, 0.25], seed=0)

        mix_refs: list[str] = []
        in_memory = []
        for batch in epochs(stream(), 0):
            in_memory.append(batch)
            if len(in_memory) == need + 1:
                break
        modes = {
            f"stream (workers={args.workers})": lambda: epochs(stream(), args.workers),
            "stream (workers=0)": lambda: epochs(stream(), 0),
            f"mix (3 sources, workers={args.workers})": lambda: epochs(mixed(), args.workers),
            "memory (pre-tokenised)": lambda: in_memory,
            "hf (random batches)": lambda: hf_batches(store, ref, teacher, args.batch_size, args.max_seq_length, 0),
        }
        modes = {k: v for k, v in modes.items() if k.split(" ")[0] in wanted}
        results: dict[str, Any] = {}
        for _ in range(args.rounds):      # round-robin, best of the rounds: the machine may be shared
            for name, batches in modes.items():
                r = run(objective, batches(), args.steps, args.warmup, device, args.amp)
                if name not in results or r["steps_per_s"] > results[name]["steps_per_s"]:
                    results[name] = r
        if "trainer" in wanted:
            seconds = trainer_seconds_per_step(store, ref, teacher, args, Path(tmp))
            results["trainer (general_distill)"] = {"steps_per_s": 1 / seconds}
        student_params, teacher_params = (sum(p.numel() for name, p in model.named_parameters()
                                              if "embeddings" not in name)       # lookups, not products
                                          for model in (objective.student, objective.teacher))
    peak = matmul_peak(device=device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float32)
    for r in results.values():
        if "tokens_per_s" in r:
            r["gflops"] = training_flops(student_params, 1, teacher_params) * r["tokens_per_s"] / 1e9
            r["of_peak"] = r["gflops"] / peak
    memory = results.get("memory (pre-tokenised)", {}).get("steps_per_s", float("nan"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} cpu cores"
    print(f"device={device} ({name}) threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} "
          f"amp={args.amp} compile={args.compile} load={os.getloadavg()[0]:.2f} torch={torch.__version__}")
    print(f"{'mode':<30}{'steps/s':>9}{'tokens/s':>10}{'padded/s':>10}{'padding':>9}{'data wait':>11}"
          f"{'vs memory':>11}{'1st batch':>11}{'of peak':>9}")
    for name, r in results.items():
        if "tokens_per_s" not in r:
            print(f"{name:<30}{r['steps_per_s']:>9.2f}{'':>49}{r['steps_per_s'] / memory:>10.2f}x")
            continue
        print(f"{name:<30}{r['steps_per_s']:>9.2f}{r['tokens_per_s']:>10.0f}{r['padded_tokens_per_s']:>10.0f}"
              f"{r['padding_share']:>9.1%}{r['data_wait_share']:>11.2%}{r['steps_per_s'] / memory:>10.2f}x"
              f"{r['first_batch_s']:>10.3f}s{r['of_peak']:>9.1%}")
    print(f"of peak: useful training FLOPs (6 x student + 2 x teacher non-embedding parameters per real token) over "
          f"the measured {'bf16' if args.amp == 'bf16' else 'fp32'} matmul peak, {peak:.0f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "args": vars(args), "results": results},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
