"""Scale check: augment a 200k-sentence version of real text and stream a 2M-row version through the trainer's
data path, with resident memory at 10%, 50% and 100% of the rows and rows/s over each run.

The text is real: WordNet 3.0 glosses and examples (Debian ``wordnet-base``) and GCIDE definitions (Debian
``dict-gcide``), cut into sentences of 4-60 words, de-duplicated, in file order. The augmentation uses word
vectors only (``--mlm none``: the masked LM would take hours here); the stream is ``ShardStream`` tokenising in
a DataLoader worker, as ``distill`` reads its training data (one epoch, batches of 32, 128 pieces). Memory is the
resident set (VmRSS) of this process plus its children, read from /proc when a chunk is committed (augment) or
every 1% of the batches (stream).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale_bench.py [--sentences 200000] [--stream-rows 2000000]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISTILLERY_PROGRESS", "0")

from augment import AugmentConfig, plan_augment  # noqa: E402
from distill.data import ShardStream, make_loader  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store, VersionWriter  # noqa: E402
from preprocess import DedupConfig, PreprocessConfig, plan_preprocess  # noqa: E402

WORDNET = Path("/usr/share/wordnet")
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def rss_mib() -> float:
    """Resident memory of this process and its children (MiB)."""
    total, pids = 0, [os.getpid()]
    while pids:
        pid = pids.pop()
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def real_sentences(limit: int) -> list[str]:
    """Up to ``limit`` distinct sentences of 4-60 words from WordNet glosses and examples, then GCIDE."""
    seen: dict[str, None] = {}

    def add(text: str) -> bool:
        text = " ".join(text.split()).strip(" ;\"'")
        if 4 <= len(text.split()) <= 60:
            seen.setdefault(text)
        return len(seen) >= limit

    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "| " not in line:
                continue
            if any(add(piece) for piece in line.split("| ", 1)[1].split(";")):
                return list(seen)
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            for sentence in SENTENCE.split(re.sub(r"<[^>]*>|\[[^\]]*\]", " ", line)):
                if add(sentence):
                    return list(seen)
    return list(seen)


def checkpoints(rows: list[int], mib: list[float], total: int) -> dict[str, float]:
    """Memory when 10%, 50% and 100% of ``total`` rows were done (the first sample at or past each)."""
    out = {}
    for share in (0.1, 0.5, 1.0):
        at = next((m for r, m in zip(rows, mib) if r >= share * total), mib[-1])
        out[f"{int(share * 100)}%"] = round(at, 1)
    return out


def augment_scale(store: Store, ref: str, rows: int, num_aug: int, workers: int) -> dict[str, Any]:
    done, samples = [0], ([], [])
    write_chunk = VersionWriter.write_chunk

    def recording(self: VersionWriter, index: int, table: Any, *args: Any, **kwargs: Any) -> Any:
        out = write_chunk(self, index, table, *args, **kwargs)
        done[0] += int((table.column("aug_copy").to_numpy() == 0).sum()) if "aug_copy" in table.column_names \
            else table.num_rows
        samples[0].append(done[0])
        samples[1].append(rss_mib())
        return out

    VersionWriter.write_chunk = recording        # type: ignore[method-assign]
    try:
        config = AugmentConfig(mlm="none", num_aug=num_aug, workers=workers, chunk_rows=1024, seed=1)
        start = time.perf_counter()
        manifest = run_step(store, plan_augment(store, ref, config)).manifest
        seconds = time.perf_counter() - start
    finally:
        VersionWriter.write_chunk = write_chunk  # type: ignore[method-assign]
    return {"input_rows": rows, "output_rows": manifest["num_rows"], "seconds": round(seconds, 1),
            "sentences_per_s": round(rows / seconds, 1), "rss_mib": checkpoints(*samples, rows),
            "rss_min_max_mib": [round(min(samples[1]), 1), round(max(samples[1]), 1)], "chunks": len(samples[0])}


def stream_scale(store: Store, ref: str, workers: int) -> dict[str, Any]:
    stream = ShardStream(store.shard_paths(ref), minilm_path(), batch_size=32, max_seq_length=128, seed=0)
    total = stream.local_batches()
    rows_done, samples, rates = 0, ([], []), []
    start = last = time.perf_counter()
    every = max(1, total // 100)
    for i, batch in enumerate(make_loader(stream, workers), 1):
        rows_done += int(batch["input_ids"].shape[0])
        if i % every == 0 or i == total:
            now = time.perf_counter()
            rates.append(every * 32 / (now - last))
            last = now
            samples[0].append(i)
            samples[1].append(rss_mib())
    seconds = time.perf_counter() - start
    tenth = max(1, len(rates) // 10)
    return {"rows": rows_done, "batches": total, "seconds": round(seconds, 1), "rows_per_s": round(rows_done / seconds),
            "rows_per_s_first_tenth": round(sum(rates[:tenth]) / tenth),
            "rows_per_s_last_tenth": round(sum(rates[-tenth:]) / tenth),
            "rss_mib": checkpoints(*samples, total), "rss_min_max_mib": [round(min(samples[1]), 1),
                                                                          round(max(samples[1]), 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--stream-rows", type=int, default=2_000_000)
    parser.add_argument("--num-aug", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="augment helper processes / DataLoader workers")
    parser.add_argument("--skip", default="", help="comma-separated: augment, stream")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_libraries()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    sentences = real_sentences(args.sentences)
    report["sentences"] = len(sentences)
    print(f"{len(sentences):,} real sentences (WordNet, GCIDE); load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        store = Store(Path(tmp) / "store")
        if "augment" not in args.skip:
            text = Path(tmp) / "sentences.txt"
            text.write_text("\n".join(sentences) + "\n")
            ref = run_step(store, plan_preprocess([text], PreprocessConfig(workers=2)), "scale-text").manifest
            report["augment"] = augment_scale(store, ref["version_id"], ref["num_rows"], args.num_aug, args.workers)
            print(f"augment: {json.dumps(report['augment'])}", flush=True)
        if "stream" not in args.skip:
            big = Path(tmp) / "big.txt"
            with open(big, "w") as fh:
                for i in range(args.stream_rows):
                    fh.write(f"{sentences[i % len(sentences)]}\n")
            config = PreprocessConfig(dedup=DedupConfig(exact=False), workers=2, chunk_rows=100_000)
            ref = run_step(store, plan_preprocess([big], config), "scale-big").manifest
            big.unlink()
            report["stream"] = stream_scale(store, ref["version_id"], args.workers)
            print(f"stream: {json.dumps(report['stream'])}", flush=True)
    report["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
