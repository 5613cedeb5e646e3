"""The cost of checking every shard against its manifest's sha256 before it is read.

    .venv/bin/python bench/read_verify_bench.py [--rows 500000] [--repeats 3]

Preprocesses a synthetic JSONL corpus (``preprocess_bench.make_corpus``) into a fresh store, then reads the whole
version (``Store.iter_batches``, Arrow record batches) and exports it to JSONL, each three ways, best of
``--repeats``: ``checked, first time`` (the process's record of checked shards cleared, so every shard is hashed),
``checked, again`` (the check remembered while the file is unchanged) and ``unchecked`` (the check switched off).
Prints rows/s and the overhead of each checked read against its unchecked twin.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from preprocess_bench import make_corpus  # noqa: E402

from pipelines import store as store_module  # noqa: E402
from pipelines.export import export_version  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402


def best_seconds(read, repeats: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        make_corpus(corpus, args.rows)
        store = Store(Path(tmp) / "store")
        cfg = PreprocessConfig(input=InputConfig(label_column="label"))
        vid = run_step(store, plan_preprocess([corpus], cfg), "bench").manifest["version_id"]
        manifest = store.manifest(vid)
        paths = [store.version_path(vid) / s["path"] for s in manifest["shards"]]
        rows, size = manifest["num_rows"], sum(s["bytes"] for s in manifest["shards"])

        def count(batches) -> int:
            return sum(b.num_rows for b in batches)

        out = Path(tmp) / "out.jsonl"
        reads = {"read": lambda: count(store.iter_batches(vid)),
                 "export jsonl": lambda: export_version(store, vid, out, "jsonl")}
        fresh = lambda: (store_module._VERIFIED.clear(), out.unlink(missing_ok=True))  # noqa: E731
        timings = {}
        for name, read in reads.items():
            timings[f"{name}, checked, first time"] = best_seconds(read, args.repeats, before=fresh)
            timings[f"{name}, checked, again"] = best_seconds(read, args.repeats,
                                                              before=lambda: out.unlink(missing_ok=True))
            check, store_module._check_shard = store_module._check_shard, lambda *_: None
            timings[f"{name}, unchecked"] = best_seconds(read, args.repeats, before=fresh)
            store_module._check_shard = check
    report = {"rows": rows, "shards": len(paths), "shard_mb": round(size / 2**20, 1)}
    for name, seconds in timings.items():
        baseline = timings[name.split(",")[0] + ", unchecked"]
        report[name] = {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
                        "overhead": f"{100 * (seconds / baseline - 1):+.1f}%"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
