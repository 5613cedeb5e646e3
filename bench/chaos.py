"""Chaos: kill every step at random points, resume (twice), and compare with an uninterrupted run.

    .venv/bin/python bench/chaos.py [--trials 3] [--rows 1200] [--seed 0] [--report chaos.json]

The chain preprocess -> augment -> finetune -> cache-logits -> task distillation runs once uninterrupted
(the reference, with tiny random-weight BERTs on the real bert-base vocabulary and the bundled GloVe vectors),
timing each step. Then, per trial and in a fresh store and run folder, each step is started through the CLI and
SIGKILLed at a random moment after it saved new work (a chunk of its version, a checkpoint), resumed with
``--resume`` and killed the same way again, then resumed to the end. Data steps must give the reference's version
id and shard bytes (sha256 per shard); training steps the reference's losses step for step and the same weights.
Prints one line per step (runs, kills, kills that found the step still running, kills that left half-done work,
resumes, mismatches) and writes the details as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import build_tiny_bert  # noqa: E402

from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.store import Store  # noqa: E402

quiet_libraries()

STUDENT = ["--student", "custom", "--student-layers", "2", "--student-hidden", "32", "--student-heads", "2",
           "--student-intermediate", "64"]
TRAINING = ["--batch-size", "8", "--checkpoint-every", "4", "--log-every", "1", "--num-workers", "0",
            "--threads", "1"]


def steps(models: Path, runs: Path, source: Path) -> list[tuple[str, str, list[str]]]:
    """(step, kind, CLI arguments after --store) of the chain; kind: the version name or the run folder."""
    mlm, base = models / "mlm", models / "encoder"
    return [
        ("preprocess", "src", ["preprocess", str(source), "--label-column", "label",
                               "--chunk-rows", "100", "--name", "src"]),
        ("augment", "aug", ["augment", "src", "--name", "aug", "--mlm", str(mlm), "--num-aug", "3",
                            "--chunk-rows", "60"]),
        ("cache-logits", "logits", ["distill", "cache-logits", "aug", str(runs / "finetune" / "model"),
                                    "--name", "logits"]),
        ("finetune", "finetune", ["distill", "finetune", "src", "--model", str(base), "--output",
                                  str(runs / "finetune"), "--epochs", "2", *TRAINING]),
        ("task", "task", ["distill", "task", "src", "--teacher", str(runs / "finetune" / "model"), *STUDENT,
                          "--output", str(runs / "task"), "--stage1-epochs", "1", "--stage2-epochs", "1",
                          *TRAINING]),
    ]


def order(chain: list[tuple[str, str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    """cache-logits needs the fine-tuned teacher: run finetune first."""
    by_name = {s[0]: s for s in chain}
    return [by_name[n] for n in ("preprocess", "augment", "finetune", "cache-logits", "task")]


def command(store: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "distillery", "--store", str(store), *args]


ENV = {**os.environ, "DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:6])} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def progress(store: Path, kind: str, runs: Path) -> int:
    """Work the step has saved so far: checkpoints of a run, or committed chunks of an unfinished version."""
    if kind in ("finetune", "task"):
        return len(list((runs / kind).rglob("step-*.pt")))
    versions = Store(store)
    return sum(len(list((versions.version_path(v) / "chunks").glob("*.json")))
               for v in versions.version_ids(include_partial=True) if not versions.is_complete(v))


def run_killed(cmd: list[str], delay: float, saved: Callable[[], int]) -> bool:
    """Start ``cmd``; once it has saved new work (``saved()`` grows) or ``delay`` seconds passed, wait a random
    part of ``delay`` more and SIGKILL it (and its children); True when it was still running then."""
    before = saved()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.perf_counter() + delay
    while proc.poll() is None and saved() <= before and time.perf_counter() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.25) * delay)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def outcome(store: Path, kind: str, runs: Path) -> dict:
    """What must not change: a version's id and shard hashes, or a run's losses and weights."""
    if (runs / kind).exists():
        lines = []
        for metrics in sorted((runs / kind).rglob("metrics.jsonl")):
            lines += [json.loads(line) for line in metrics.read_text().splitlines()]
        losses = [(r["step"], r["loss"], r.get("parts")) for r in lines if "loss" in r]
        weights = hashlib.sha256((runs / kind / "model" / "model.safetensors").read_bytes()).hexdigest()
        return {"losses": losses, "weights": weights}
    manifest = Store(store).manifest(kind)
    return {"version_id": manifest["version_id"], "shards": [s["sha256"] for s in manifest["shards"]]}


def left_partial(store: Path, kind: str, runs: Path) -> bool:
    """Whether a kill left work half done: an incomplete version, or checkpoints without the final model."""
    if kind in ("finetune", "task"):
        return any((runs / kind).rglob("step-*.pt")) and not (runs / kind / "model" / "model.safetensors").exists()
    versions = Store(store)
    return any(not versions.is_complete(v) for v in versions.version_ids(include_partial=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="chaos.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        lines = (SAMPLE_DIR / "train.jsonl").read_text().splitlines()[: args.rows]
        (work / "input.jsonl").write_text("\n".join(lines) + "\n")
        models = work / "models"
        build_tiny_bert(models / "mlm", layers=2, hidden=32, heads=2, intermediate=64, seed=0)
        build_tiny_bert(models / "encoder", layers=2, hidden=32, heads=2, intermediate=64, seed=1,
                        with_mlm_head=False)
        reference, seconds = {}, {}
        ref_runs = work / "reference" / "runs"
        for name, kind, step_args in order(steps(models, ref_runs, work / "input.jsonl")):
            seconds[name] = run(command(work / "reference" / "store", step_args))
            reference[name] = outcome(work / "reference" / "store", kind, ref_runs)
            print(f"reference {name}: {seconds[name]:.1f} s", flush=True)
        report = {name: {"runs": 0, "kills_mid_run": 0, "left_partial": 0, "resumes": 0, "mismatches": 0}
                  for name in seconds}
        for trial in range(args.trials):
            root = work / f"trial-{trial}"
            runs = root / "runs"
            for name, kind, step_args in order(steps(models, runs, work / "input.jsonl")):
                cmd = command(root / "store", step_args)
                entry = report[name]
                entry["runs"] += 1
                for attempt in range(2):                         # kill, resume and kill again
                    random.seed(rng.random())
                    entry["kills_mid_run"] += run_killed(cmd + (["--resume"] if attempt else []), seconds[name],
                                                         partial(progress, root / "store", kind, runs))
                    entry["left_partial"] += left_partial(root / "store", kind, runs)
                    entry["resumes"] += attempt
                run(cmd + ["--resume"])
                entry["resumes"] += 1
                if outcome(root / "store", kind, runs) != reference[name]:
                    entry["mismatches"] += 1
                print(f"trial {trial} {name}: {'ok' if not entry['mismatches'] else 'MISMATCH'}", flush=True)
            shutil.rmtree(root)
        summary = {"trials": args.trials, "rows": args.rows, "reference_seconds": seconds, "steps": report}
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
        print("| step | runs | kills | still running when killed | left partial work | resumes | mismatches |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, entry in report.items():
            print(f"| {name} | {entry['runs']} | {2 * entry['runs']} | {entry['kills_mid_run']} | "
                  f"{entry['left_partial']} | {entry['resumes']} | {entry['mismatches']} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
