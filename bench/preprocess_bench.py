"""Preprocessing throughput and peak memory: the bundled sample corpus and synthetic 100k / 1M-row corpora.

    .venv/bin/python bench/preprocess_bench.py [--rows 100000 1000000] [--workers 1 2] [--near-dup]

Every measurement runs in a fresh subprocess (so peak memory is its own): rows/s over the whole call
(fingerprinting, schema sampling, processing, writing, finalising), CPU seconds of all its processes, the
peak resident memory of the parent
while processing chunks and including ``finalize`` (statistics for the data card), and the largest worker's;
the speed-up over one worker (in-process) and the roofline column: rows/s over the parse peak (reading the lines
and ``json.loads`` each, per core times the cores: the least work any JSONL preprocessor does).
Corpora are generated in a temporary folder and deleted.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roofline import jsonl_parse_peak, process_scaling  # noqa: E402

from pipelines.runner import run_step  # noqa: E402
from preprocess import plan_preprocess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "distillery" / "samples" / "wordnet_supersense"
SAMPLE_INPUTS = [SAMPLE / f for f in ("train.jsonl", "dev.jsonl", "test.jsonl", "unlabelled.txt")]


def make_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """JSONL rows of 6-30 words drawn (with their corpus frequencies) from the sample's text, a label, an id,
    and ~5% exact repeats of recent rows."""
    rng = random.Random(seed)
    words = (SAMPLE / "unlabelled.txt").read_text().split()
    recent: list[str] = []
    with open(path, "w") as fh:
        for i in range(rows):
            if recent and rng.random() < 0.05:
                text = rng.choice(recent)
            else:
                text = " ".join(rng.choices(words, k=rng.randint(6, 30)))
                recent = (recent + [text])[-1000:]
            fh.write(json.dumps({"text": text, "label": f"class{i % 10}", "id": i}) + "\n")


def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class WorkerPeak(threading.Thread):
    """Samples the resident memory of this process's children (the workers) every 20 ms; keeps the maximum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for child in _children(os.getpid()):
                self.peak_kib = max(self.peak_kib, _status_kib(child, "VmRSS"))


def measure(inputs: list[str], workers: int, near_dup: bool) -> dict:
    """Run preprocess once in this process and report rows/s and peak memory.

    Peaks are VmHWM (this process since it started) and VmRSS samples (workers), from /proc: ru_maxrss is not
    used because Linux carries it over from the parent across fork + exec.
    """
    from pipelines.store import Store, VersionWriter
    from preprocess import DedupConfig, InputConfig, PreprocessConfig

    peaks: dict[str, int] = {}
    finalize = VersionWriter.finalize

    def finalize_and_record(self: VersionWriter, *args: object, **kwargs: object) -> dict:
        peaks["before_finalize"] = _status_kib("self", "VmHWM")
        return finalize(self, *args, **kwargs)

    VersionWriter.finalize = finalize_and_record          # type: ignore[method-assign]
    config = PreprocessConfig(input=InputConfig(), dedup=DedupConfig(near=near_dup), workers=workers)
    sampler = WorkerPeak()
    sampler.start()
    cpu_before = _cpu(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as store_dir:
        start = time.perf_counter()
        manifest = run_step(Store(store_dir), plan_preprocess(inputs, config)).manifest
        seconds = time.perf_counter() - start
    sampler.done.set()
    rows = manifest["accounting"]["input_rows"]
    mib = 1024
    parent_cpu = _cpu(resource.RUSAGE_SELF) - cpu_before
    return {"input_rows": rows, "kept": manifest["num_rows"], "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds), "parent_cpu_s": round(parent_cpu, 2),
            "worker_cpu_s": round(_cpu(resource.RUSAGE_CHILDREN), 2), "workers": workers, "near_dup": near_dup,
            "parent_peak_processing_mib": round(peaks["before_finalize"] / mib, 1),
            "parent_peak_mib": round(_status_kib("self", "VmHWM") / mib, 1),
            "worker_peak_mib": round(sampler.peak_kib / mib, 1)}


def run_one(label: str, inputs: list[Path], workers: int, near_dup: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps({"inputs": [str(p) for p in inputs], "workers": workers,
                                                         "near_dup": near_dup})]
    env = {**os.environ, "DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=REPO).stdout
    return {"corpus": label, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--near-dup", action="store_true", help="also measure with near-duplicate removal on")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["inputs"], spec["workers"], spec["near_dup"])))
        return
    results = []
    near_options = [False, True] if args.near_dup else [False]
    with tempfile.TemporaryDirectory() as tmp:
        corpora = [("sample (4 files)", SAMPLE_INPUTS)]
        for rows in args.rows:
            path = Path(tmp) / f"synthetic_{rows}.jsonl"
            make_corpus(path, rows)
            corpora.append((f"synthetic {rows:,}", [path]))
        peaks = {label: jsonl_parse_peak(inputs[0]) for label, inputs in corpora if label.startswith("synthetic")}
        for label, inputs in corpora:
            for workers in args.workers:
                for near in near_options:
                    result = run_one(label, inputs, workers, near)
                    if label in peaks:
                        result["parse_peak_rows_per_s"] = round(peaks[label])
                        result["of_parse_peak"] = round(result["rows_per_s"] / peaks[label], 3)
                    results.append(result)
                    print(json.dumps(result), file=sys.stderr, flush=True)
    ceiling = process_scaling()
    print(f"\nmachine: {os.cpu_count()} CPUs; two processes of pure-Python work run {ceiling:.2f}x one (the ceiling "
          f"of a second worker's speed-up); load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| corpus | workers | near-dup | input rows | kept | wall s | CPU s parent + workers | rows/s | "
          "speed-up over 1 | of parse peak | parent peak MiB (processing / with finalize) | worker peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    single = {(r["corpus"], r["near_dup"]): r["rows_per_s"] for r in results if r["workers"] == 1}
    for r in results:
        base = single.get((r["corpus"], r["near_dup"]))
        speedup = f"{r['rows_per_s'] / base:.2f}x" if base else "-"
        roof = f"{r['of_parse_peak']:.0%}" if "of_parse_peak" in r else "-"
        print(f"| {r['corpus']} | {r['workers']} | {'on' if r['near_dup'] else 'off'} | {r['input_rows']:,} | "
              f"{r['kept']:,} | {r['seconds']} | {r['parent_cpu_s']} + {r['worker_cpu_s']} | {r['rows_per_s']:,} | "
              f"{speedup} | {roof} | "
              f"{r['parent_peak_processing_mib']} / {r['parent_peak_mib']} | {r['worker_peak_mib'] or '-'} |")


if __name__ == "__main__":
    main()
