"""This machine's measured limits, for the roofline column of the benches: a figure over its limit says how far
from the machine a path is, not only how far from another implementation."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def matmul_peak(seconds: float = 3.0, size: int = 4096, device: str = "cpu", dtype: torch.dtype = torch.float32
                ) -> float:
    """Best GFLOP/s of a torch.matmul loop (fp32 by default) on all this process's threads or on a GPU: the
    compute roof."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.matmul(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def jsonl_parse_peak(path: Path, rows: int = 200_000) -> float:
    """Rows/s of the least work any JSONL preprocessor does, per core times the cores: read the lines and
    ``json.loads`` each (best of 3 passes over the first ``rows`` lines)."""
    with open(path, "rb") as fh:
        lines = [line for _, line in zip(range(rows), fh)]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for line in lines:
            json.loads(line)
        best = max(best, len(lines) / (time.perf_counter() - start))
    return best * (os.cpu_count() or 1)


def training_flops(params: int, tokens: int, teacher_params: int = 0) -> float:
    """Useful FLOPs of one training step: 6 x parameters x tokens for the student (forward and backward) and
    2 x parameters x tokens for a teacher's forward (the usual dense-transformer estimate, attention left out)."""
    return 6 * params * tokens + 2 * teacher_params * tokens


def _python_work(n: int) -> float:
    """Seconds of a fixed pure-Python workload (JSON parsing and string work, as a preprocessing worker does)."""
    line = json.dumps({"text": "a gloss of twelve words or so, with some punctuation; and more", "label": "x"})
    start = time.perf_counter()
    for _ in range(n):
        row = json.loads(line)
        " ".join(row["text"].split()).lower()
    return time.perf_counter() - start


def process_scaling(n: int = 400_000) -> float:
    """How many times one process's pure-Python throughput two processes get together on this machine (2.0 on
    two real cores; less where the cores are shared): the ceiling of a speed-up from a second worker."""
    from multiprocessing import get_context

    alone = _python_work(n)
    with get_context("fork").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_python_work, [n, n])
        both = time.perf_counter() - start
    return 2 * alone / both
