"""``engine = "ray"``: the chunks of an augmentation run go through a Ray Data pipeline whose ``map_batches``
stage is a pool of actors; each actor loads the masked LM and the neighbour index once and runs the same chunk
stages as the local engine (``augment.chunk``) on whole chunks, reading them from the input version's shards.
This process numbers the rows and writes every chunk through the store's writer, so accounting, resume and the
bytes are the local engine's. Ray is an optional dependency: nothing here imports it before a run needs it."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from augment.chunk import CHUNK_TIMING_KEYS, Executor, Setup, augment_chunk, load_models, numbered, row_ids
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar
from pipelines.store import Store, VersionWriter

FAULT_FILE_ENV = "DISTILLERY_RAY_FAULT_FILE"  # tests: the actor that augments the chunk this file names dies


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DistilleryError("the ray engine needs Ray: pip install -e '.[ray]' (or pip install 'ray[data]')") \
            from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, joined at ``address`` or started locally (kept if this process already joined one), with its
    logs and progress bars off the terminal."""
    ray = import_ray()
    quiet = os.environ.get("DISTILLERY_DEBUG") != "1"
    started = not ray.is_initialized()
    if started:
        if quiet:       # Ray's C++ core logs an error-level note for every actor Ray Data starts
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        with _stderr_closed() if quiet else nullcontext():     # (and notes on stderr while it starts)
            ray.init(address=address, log_to_driver=not quiet, include_dashboard=False,
                     logging_level=logging.ERROR if quiet else logging.INFO)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False        # ours shows rows/s
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    if quiet:
        for name in ("ray", "ray.data"):        # (Ray Data logs to its own handlers, not through "ray")
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _stderr_closed() -> Iterator[None]:
    """File descriptor 2 on /dev/null (what C++ code and started processes write there is dropped)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---- actors ----------------------------------------------------------------------------------------------
def read_rows(shards: list[tuple[str, int]], start: int, count: int) -> pa.Table:
    """Rows ``start`` .. ``start + count`` of the Parquet ``shards`` ((path, rows) in row order), reading only
    the row groups that hold them."""
    parts, first = [], 0
    for path, rows in shards:
        lo, hi = max(start, first), min(start + count, first + rows)
        if lo < hi:
            file = pq.ParquetFile(path, memory_map=True)
            groups, group_first, skip = [], 0, None
            for g in range(file.num_row_groups):
                group_rows = file.metadata.row_group(g).num_rows
                if group_first < hi - first and group_first + group_rows > lo - first:
                    groups.append(g)
                    skip = group_first if skip is None else skip
                group_first += group_rows
            parts.append(file.read_row_groups(groups).slice(lo - first - skip, hi - lo))
        first += rows
    return pa.concat_tables(parts)


class ChunkAugmenter:
    """A Ray actor: loads the models once, then turns chunk indices into their output tables (Arrow IPC, rows
    not yet numbered), accounting and run figures."""

    def __init__(self, setup: Setup, shards: list[tuple[str, int]], total_rows: int):
        if setup.device.startswith("cuda"):          # Ray shows the actor only its own GPU
            setup = dataclasses.replace(setup, device="cuda")
        self.setup, self.shards, self.total_rows = setup, shards, total_rows
        self.models = load_models(setup)
        self.executor = Executor(0, self.models.tokenizer, self.models.spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        config = self.setup.config
        out: dict[str, list[Any]] = {"index": [], "table": [], "counts": [], "info": []}
        for index in batch.column("index").to_pylist():
            start = index * config.chunk_rows
            table = read_rows(self.shards, start, _input_rows(index, config.chunk_rows, self.total_rows))
            timing = dict.fromkeys(CHUNK_TIMING_KEYS, 0.0)
            before = self._stats()
            result, counts = augment_chunk(table, row_ids(table, start), self.setup.fields, self.models, config,
                                           self.executor, timing)
            after = self._stats()
            stats = {name: {k: v - before[name][k] for k, v in values.items()} for name, values in after.items()}
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, result.schema) as writer:
                writer.write_table(result)
            out["index"].append(index)
            out["table"].append(sink.getvalue().to_pybytes())
            out["counts"].append(json.dumps(counts))
            out["info"].append(json.dumps({"timing": timing, **stats, "vectors": self.models.vectors.identity,
                                           "max_pieces": self.models.spec.max_length if self.models.spec else None}))
        _fault_point(out["index"])
        return pa.table({"index": pa.array(out["index"], pa.int64()), "table": pa.array(out["table"], pa.binary()),
                         "counts": pa.array(out["counts"], pa.string()), "info": pa.array(out["info"], pa.string())})

    def _stats(self) -> dict[str, dict[str, float]]:
        stats = {"neighbours": dict(self.models.index.stats)}
        if self.models.mlm is not None:
            stats["mlm"] = dict(self.models.mlm.stats)
        return stats


def _fault_point(chunks: list[int]) -> None:
    """Tests: die here, once, before returning the chunk index written in the ``FAULT_FILE_ENV`` file, like an
    actor process killed mid-run; the file is removed first, so the retried chunk goes through."""
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return
    try:
        with open(path) as fh:
            if int(fh.read()) not in chunks:
                return
        os.remove(path)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


# ---- the driver ------------------------------------------------------------------------------------------
def run_ray(store: Store, vid: str, total_rows: int, setup: Setup, writer: VersionWriter,
            timing: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Augment every chunk not yet committed in Ray actors and write it here, in chunk order; returns what the
    manifest records of the loaded models and of the run (``wall_s``: actors started and loading included)."""
    config = setup.config
    start = time.perf_counter()
    chunks = -(-total_rows // config.chunk_rows)
    todo = [i for i in range(chunks) if not writer.is_committed(i)]
    loaded: dict[str, Any] = {"vectors": setup.vectors.identity, "max_pieces": None}
    run: dict[str, Any] = {"actors": 0, "ray_address": config.ray_address, "mlm": None, "neighbours": {}}
    bar = progress_bar(total=total_rows, desc="augment", unit="sent")
    offset = 0                                   # output row id of the next chunk's first row
    done: dict[int, dict[str, Any]] = {}         # chunks back from the actors, not yet written
    with ray_session(config.ray_address) if todo else nullcontext() as ray:
        results = _augmented(ray, store, vid, total_rows, setup, todo, run) if todo else iter(())
        for index in range(chunks):
            if writer.is_committed(index):
                offset += writer.chunk_record(index)["shard"]["rows"]
            else:
                while index not in done:
                    row = next(results, None)
                    if row is None:
                        raise DistilleryError(f"augment: the Ray run ended without chunk {index}")
                    done[row["index"]] = row
                io_start = time.perf_counter()
                item = done.pop(index)
                table = numbered(pa.ipc.open_stream(item["table"]).read_all(), offset)
                writer.write_chunk(index, table, accounting=json.loads(item["counts"]))
                offset += table.num_rows
                timing["io_s"] += time.perf_counter() - io_start
                info = json.loads(item["info"])
                _add(timing, info.pop("timing"))
                loaded = {"vectors": info.pop("vectors"), "max_pieces": info.pop("max_pieces")}
                for name, stats in info.items():
                    run[name] = _add(run[name] or {}, stats)
            bar.update(_input_rows(index, config.chunk_rows, total_rows))
    bar.close()
    timing["wall_s"] = time.perf_counter() - start
    return loaded, run


def _augmented(ray: Any, store: Store, vid: str, total_rows: int, setup: Setup, todo: list[int],
               run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The chunks ``todo`` as they come back from a pool of ``ChunkAugmenter`` actors (in any order)."""
    config = setup.config
    gpu = setup.device.startswith("cuda")
    resources = ray.cluster_resources()
    actors = config.ray_actors or (max(1, int(resources.get("GPU", 0))) if gpu
                                   else max(1, int(resources.get("CPU", 1)) // 2))
    run["actors"] = actors
    shards = [(str(p), s["rows"]) for p, s in zip(store.shard_paths(vid), store.manifest(vid)["shards"])]
    dataset = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo)).map_batches(
        ChunkAugmenter, fn_constructor_args=(setup, shards, total_rows), batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=1, num_gpus=1 if gpu else 0)
    return iter(dataset.iter_rows())


def _input_rows(index: int, chunk_rows: int, total_rows: int) -> int:
    """Input rows of chunk ``index``."""
    return min(chunk_rows, total_rows - index * chunk_rows)


def _add(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value
    return total
