"""``engine = "ray"``: the chunks of an augmentation run go through a Ray Data pipeline whose ``map_batches``
stage is a pool of actors; each actor loads the masked LM and the neighbour index once and runs the same chunk
stages as the local engine (``augment.chunk``) on whole chunks, reading them from the input version's shards.
The actors send back each chunk's ``ChunkOutput``; this process writes them in chunk order through the one chunk
loop (``pipelines.chunks.write_chunks``: it numbers the rows), so accounting, resume and the bytes are the local
engine's. Ray is an optional dependency: nothing here imports it before a run needs it."""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from augment.chunk import Executor, Setup, augment_chunk, load_models, loaded_identity, row_ids, run_timing
from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar
from pipelines.remote import Remote
from pipelines.remote_store import CachedShards, RemoteStore
from pipelines.store import Store, VersionWriter

if TYPE_CHECKING:
    from tqdm import tqdm

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
def read_rows(shards: list[tuple[str, int]], start: int, count: int, source: CachedShards | None = None) -> pa.Table:
    """Rows ``start`` .. ``start + count`` of the Parquet ``shards`` ((path, rows) in row order; with ``source``,
    shard ``i`` is ``source.local(i)``: a remote's shard through this node's cache), reading only the row groups
    that hold them."""
    parts, first = [], 0
    for i, (path, rows) in enumerate(shards):
        lo, hi = max(start, first), min(start + count, first + rows)
        if lo < hi:
            file = pq.ParquetFile(source.local(i) if source is not None else path, memory_map=True)
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
    """A Ray actor: loads the models once, then turns chunk indices into their ``ChunkOutput``s (rows not yet
    numbered; ``stats``: what the models did for the chunk), sent back pickled with what the actor loaded."""

    def __init__(self, setup: Setup, shards: list[tuple[str, int]], total_rows: int,
                 source: CachedShards | None = None):
        if setup.device.startswith("cuda"):          # Ray shows the actor only its own GPU
            setup = dataclasses.replace(setup, device="cuda")
        self.setup, self.shards, self.total_rows, self.source = setup, shards, total_rows, source
        self.models = load_models(setup)
        self.executor = Executor(0, self.models.tokenizer, self.models.spec, setup.mentions)

    def __call__(self, batch: pa.Table) -> pa.Table:
        config = self.setup.config
        indices, outputs = batch.column("index").to_pylist(), []
        for index in indices:
            start = index * config.chunk_rows
            table = read_rows(self.shards, start, _input_rows(index, config.chunk_rows, self.total_rows), self.source)
            before = self._stats()
            output = augment_chunk(index, table, row_ids(table, start), self.setup.fields, self.models, config,
                                   self.executor, self.setup.tagging)
            output.stats = {name: {k: v - before[name][k] for k, v in values.items()}
                            for name, values in self._stats().items()}
            outputs.append(pickle.dumps(output, protocol=5))
        _fault_point(indices)
        loaded = pickle.dumps(loaded_identity(self.models), protocol=5)
        return pa.table({"output": pa.array(outputs, pa.binary()),
                         "loaded": pa.array([loaded] * len(outputs), pa.binary())})

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
def run_ray(store: Store, vid: str, total_rows: int, setup: Setup,
            writer: VersionWriter) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Augment every chunk not yet committed in Ray actors and write it here, in chunk order; returns what the
    manifest records of the loaded models, of the run and its seconds (``wall_s``: actors started and loading
    included)."""
    config = setup.config
    start = time.perf_counter()
    todo = [i for i in range(-(-total_rows // config.chunk_rows)) if not writer.is_committed(i)]
    loaded: dict[str, Any] = {"vectors": setup.vectors.identity, "max_pieces": None}
    run: dict[str, Any] = {"actors": 0, "ray_address": config.ray_address, "mlm": None, "neighbours": {}}
    session = ray_session(config.ray_address) if todo else nullcontext()
    with progress_bar(total=total_rows, desc="augment", unit="sent") as bar, session as ray:
        rows = _augmented(ray, store, vid, total_rows, setup, todo, run) if todo else iter(())
        written = write_chunks(writer, _in_order(rows, todo, loaded, bar), bar=bar)
    run.update(mlm=written.stats.get("mlm"), neighbours=written.stats.get("neighbours", {}))
    return loaded, run, run_timing(written, time.perf_counter() - start)


def _in_order(rows: Iterator[dict[str, Any]], todo: list[int], loaded: dict[str, Any],
              bar: tqdm) -> Iterator[ChunkOutput]:
    """The outputs of the chunks ``todo`` in chunk order (the actors send them back in any order); ``loaded``
    takes what the actors loaded."""
    done: dict[int, ChunkOutput] = {}
    for index in todo:
        while index not in done:
            row = next(rows, None)
            if row is None:
                raise DistilleryError(f"augment: the Ray run ended without chunk {index}")
            output: ChunkOutput = pickle.loads(row["output"])
            done[output.index] = output
            loaded.update(pickle.loads(row["loaded"]))
        output = done.pop(index)
        bar.update(output.accounting["input_rows"])
        yield output


def _augmented(ray: Any, store: Store, vid: str, total_rows: int, setup: Setup, todo: list[int],
               run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows a pool of ``ChunkAugmenter`` actors sends back for the chunks ``todo`` (in any order)."""
    config = setup.config
    gpu = setup.device.startswith("cuda")
    resources = ray.cluster_resources()
    actors = config.ray_actors or (max(1, int(resources.get("GPU", 0))) if gpu
                                   else max(1, int(resources.get("CPU", 1)) // 2))
    run["actors"] = actors
    source = _remote_source(config.ray_remote, store, vid) if config.ray_remote else None
    entries = store.manifest(vid)["shards"]
    paths = source.names() if source is not None else [str(p) for p in store.shard_paths(vid)]
    shards = [(path, entry["rows"]) for path, entry in zip(paths, entries)]
    run["input_remote"] = config.ray_remote
    dataset = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo)).map_batches(
        ChunkAugmenter, fn_constructor_args=(setup, shards, total_rows, source), batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=1, num_gpus=1 if gpu else 0)
    return iter(dataset.iter_rows())


def _remote_source(url: str, store: Store, vid: str) -> CachedShards:
    """The input version's shards on the remote ``url``, which must hold exactly the local version's shards."""
    remote = RemoteStore(Remote(url))
    if not remote.is_complete(vid):
        raise DistilleryError(f"augment: --ray-remote {url} does not hold the input version {vid[:12]}; push it "
                              f"first: `distillery versions push {vid[:12]} {url}`")
    theirs = [e["sha256"] for e in remote.manifest(vid)["shards"]]
    if theirs != [e["sha256"] for e in store.manifest(vid)["shards"]]:
        raise DistilleryError(f"augment: version {vid[:12]} on {url} holds other shards than the local one")
    return remote.cached_shards(vid)


def _input_rows(index: int, chunk_rows: int, total_rows: int) -> int:
    """Input rows of chunk ``index``."""
    return min(chunk_rows, total_rows - index * chunk_rows)
