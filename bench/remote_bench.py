"""Versions on object storage: push / pull MB/s and the training stream's rows/s and data-wait share from a remote.

    .venv/bin/python bench/remote_bench.py [--rows 100000] [--chunk-rows 10000] [--step-ms 10] [--batches N]

Preprocesses a synthetic JSONL corpus (``preprocess_bench.make_corpus``) into a fresh store, starts a local S3
endpoint (moto's threaded server on 127.0.0.1, in this process), and measures:

- ``versions push`` and ``versions pull`` of that version to / from the endpoint (MB of shards per second, every
  shard checked on arrival) and to / from a ``file://`` remote;
- the training stream (``ShardStream``: Parquet reads, tokenisation, batching; one DataLoader worker, as a trainer
  with ``--num-workers 1`` reads) from local disk, from the S3 endpoint with a cold shard cache, and again with the
  cache warm, over one epoch (or ``--batches``): rows/s, and the share of the time a trainer whose step takes
  ``--step-ms`` (simulated: a sleep, which leaves the cores to the data path) waits for data.

These are figures for a localhost endpoint on this machine, not for real S3: they measure what distillery adds
(hashing, cache, prefetch), not a network.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from preprocess_bench import make_corpus  # noqa: E402

from distill.data import ShardStream, make_loader  # noqa: E402
from pipelines import transfer  # noqa: E402
from pipelines.remote import Remote  # noqa: E402
from pipelines.remote_store import RemoteStore, ShardCache  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store  # noqa: E402
from preprocess import InputConfig, PreprocessConfig, plan_preprocess  # noqa: E402


def start_s3() -> tuple[object, str]:
    """moto's S3 server on a free localhost port, a bucket, and fsspec's s3 pointed at it."""
    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)          # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint})
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    fsspec.filesystem("s3").mkdir("bench")
    return server, endpoint


def stream_run(store, vid: str, batches: int, step_s: float) -> dict[str, float]:
    """Rows/s of the stream (no step) and the data-wait share with a ``step_s`` training step."""
    stream = ShardStream.from_store(store, vid, minilm_path(), batch_size=32, max_seq_length=64, seed=0)
    batches = batches or stream.num_batches
    loader = make_loader(stream, num_workers=1)
    start, rows, wait, got = time.perf_counter(), 0, 0.0, 0
    iterator = iter(loader)
    while got < batches:
        before = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            stream.set_epoch(stream.state.epoch + 1)
            iterator = iter(loader)
            continue
        wait += time.perf_counter() - before
        rows += len(batch["input_ids"])
        got += 1
        time.sleep(step_s)
    total = time.perf_counter() - start
    return {"rows_per_s_with_step": round(rows / total), "data_wait_share": round(wait / total, 3),
            "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--batches", type=int, default=0, help="Batches per stream run (0: one epoch).")
    args = parser.parse_args()
    os.environ.setdefault("DISTILLERY_PROGRESS", "0")
    server, endpoint = start_s3()
    report: dict[str, object] = {"endpoint": f"moto S3 server on {endpoint} (localhost, not real S3)"}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        make_corpus(corpus, args.rows)
        store = Store(Path(tmp) / "store")
        cfg = PreprocessConfig(input=InputConfig(label_column="label"), chunk_rows=args.chunk_rows)
        vid = run_step(store, plan_preprocess([corpus], cfg), "bench").manifest["version_id"]
        manifest = store.manifest(vid)
        megabytes = sum(s["bytes"] for s in manifest["shards"] + manifest["rejects"]) / 1e6
        report["version"] = {"rows": manifest["num_rows"], "shards": len(manifest["shards"]),
                             "mb": round(megabytes, 1)}
        for label, url in (("s3", "s3://bench/store"), ("file", f"file://{tmp}/remote")):
            remote = Remote(url)
            start = time.perf_counter()
            transfer.push(store, vid, remote)
            pushed = time.perf_counter() - start
            other = Store(Path(tmp) / f"pulled-{label}")
            start = time.perf_counter()
            transfer.pull(remote, vid, other)
            pulled = time.perf_counter() - start
            report[f"{label}_push_mb_per_s"] = round(megabytes / pushed, 1)
            report[f"{label}_pull_mb_per_s"] = round(megabytes / pulled, 1)
        step_s = args.step_ms / 1000
        report["stream_local_disk"] = stream_run(store, vid, args.batches, step_s)
        cache = Path(tmp) / "cache"
        remote_store = RemoteStore(Remote("s3://bench/store"), ShardCache(cache))
        report["stream_s3_cold_cache"] = stream_run(remote_store, vid, args.batches, step_s)
        report["stream_s3_warm_cache"] = stream_run(remote_store, vid, args.batches, step_s)
        shutil.rmtree(cache)
    report["settings"] = {"batch_size": 32, "max_seq_length": 64, "num_workers": 1, "step_ms": args.step_ms,
                          "batches": args.batches, "cpus": os.cpu_count()}
    print(json.dumps(report, indent=2))
    server.stop()


if __name__ == "__main__":
    main()
