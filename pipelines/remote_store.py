"""Reading versions straight from a remote: a node's shard cache and the read side of a store over a remote.

``ShardCache`` keeps local copies of remote shards in one folder per node (``DISTILLERY_CACHE``, default
``~/.cache/distillery/shards``), named by their sha256, so every rank and DataLoader worker of the node shares
them: a shard is downloaded once (the first process to need it takes its lock, the others wait for it and then
find it), checked against the manifest's sha256 on arrival, and placed by rename, so no reader sees half a file.
With a size limit, the least recently used shards are evicted to make room (a reader that has a shard open keeps
reading it). ``RemoteStore`` offers what training and the read-only ``versions`` commands use of a ``Store``
(resolve, manifest, shard paths, batches, lineage, verify) with the shards coming through the cache, and
``CachedShards`` is a version's shards fetched one at a time as a stream reaches them, the next in the background.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import WriterLock, temporary_sibling
from pipelines.confine import is_regular, real_dir
from pipelines.errors import DistilleryError
from pipelines.progress import say
from pipelines.remote import Remote
from pipelines.store import iter_parquet_batches


def default_cache_dir() -> Path:
    """``DISTILLERY_CACHE`` or ``~/.cache/distillery/shards``."""
    return Path(os.environ.get("DISTILLERY_CACHE") or Path.home() / ".cache" / "distillery" / "shards")


class ShardCache:
    """A node's shared folder of shards downloaded from remotes (see the module docstring); ``limit_bytes`` None
    means no limit."""

    def __init__(self, root: str | Path | None = None, limit_bytes: int | None = None):
        if limit_bytes is not None and limit_bytes < 1:
            raise DistilleryError(f"the shard cache limit must be positive (got {limit_bytes} bytes)")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.limit_bytes = limit_bytes

    def check_fits(self, entries: list[dict[str, Any]], what: str) -> None:
        """Refuse a limit that cannot hold the two largest shards (one read, one prefetched: every read would
        download again); warn when it holds less than the whole version (each epoch downloads again)."""
        if self.limit_bytes is None or not entries:
            return
        sizes = sorted((e["bytes"] for e in entries), reverse=True)
        if self.limit_bytes < sum(sizes[:2]):
            raise DistilleryError(f"the shard cache limit ({self.limit_bytes} bytes) cannot hold two shards of {what} "
                                  f"({sum(sizes[:2])} bytes): raise --cache-limit")
        if self.limit_bytes < sum(sizes):
            say(f"warning: the shard cache limit ({self.limit_bytes} bytes) holds less than {what} "
                f"({sum(sizes)} bytes): shards are downloaded again every epoch")

    def _folder(self) -> Path:
        real_dir(self.root, "shard cache folder", create=True, parents=True)
        return real_dir(self.root / "locks", "shard cache folder", create=True)

    def local(self, remote: Remote, vid: str, entry: dict[str, Any], keep: frozenset[str] = frozenset()) -> Path:
        """The local path of a file of version ``vid`` (a manifest entry), downloaded and checked if needed; making
        room for it never evicts the cached files named in ``keep`` (those the caller is reading)."""
        path = self.root / f"{entry['sha256']}.parquet"
        if self._usable(path, entry):
            return path
        locks = self._folder()
        with WriterLock(locks / f"{entry['sha256']}.lock", f"cached shard {entry['sha256'][:12]}", wait=True):
            if self._usable(path, entry):
                return path
            self._make_room(entry["bytes"], keep | {path.name})
            with temporary_sibling(path) as tmp:
                remote.download(vid, entry, tmp)
                os.replace(tmp, path)
        return path

    @staticmethod
    def _usable(path: Path, entry: dict[str, Any]) -> bool:
        """A cached copy is trusted when it has the right size: it was placed under its sha256 by rename after
        its bytes were checked."""
        if is_regular(path) and path.stat().st_size == entry["bytes"]:
            os.utime(path)                                   # recently used: evicted last
            return True
        return False

    def _make_room(self, incoming: int, keep: frozenset[str]) -> None:
        if self.limit_bytes is None:
            return
        files = []
        for item in os.scandir(self.root):
            if item.name.endswith(".parquet") and item.is_file(follow_symlinks=False):
                info = item.stat(follow_symlinks=False)
                files.append((info.st_mtime_ns, info.st_size, item.path, item.name in keep))
        total = sum(size for _, size, _, _ in files)
        for _, size, path, kept in sorted(files):
            if kept:
                continue
            if total + incoming <= self.limit_bytes:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass                                         # another process evicted it first
            total -= size


class CachedShards:
    """The shards of one remote version as local paths, fetched through a ``ShardCache`` when first asked for;
    ``prefetch`` starts fetching one in a background thread. Picklable (DataLoader workers, ranks)."""

    def __init__(self, remote: Remote, cache: ShardCache, vid: str, entries: list[dict[str, Any]]):
        self.remote, self.cache, self.vid, self.entries = remote, cache, vid, entries
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pending: dict[int, Future[Path]] = {}
        self._lock = threading.Lock()
        self._reading: frozenset[str] = frozenset()      # the cached file this process read last: never evicted

    def __getstate__(self) -> dict[str, Any]:
        return {"remote": self.remote, "cache": self.cache, "vid": self.vid, "entries": self.entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["remote"], state["cache"], state["vid"], state["entries"])

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        """Where each shard lies on the remote (what a stream shows for it)."""
        return [self.remote.file_key(self.vid, e["path"]) for e in self.entries]

    def local(self, index: int) -> Path:
        """Shard ``index`` as a local file (waiting for its prefetch, if one runs)."""
        with self._lock:
            pending = self._pending.pop(index, None)
        path = None
        if pending is not None:
            try:
                path = pending.result()
            except DistilleryError:
                pass                                         # fetched again below: the error is raised there
        path = path or self.cache.local(self.remote, self.vid, self.entries[index], self._reading)
        self._reading = frozenset({path.name})
        return path

    def _fetch(self, index: int) -> Path:
        return self.cache.local(self.remote, self.vid, self.entries[index], self._reading)

    def prefetch(self, index: int) -> None:
        """Start fetching shard ``index`` in the background (a no-op when it is already asked for)."""
        if not 0 <= index < len(self.entries):
            return
        with self._lock:
            if os.getpid() != self._pool_pid:                 # a forked worker: its own thread
                self._pool, self._pool_pid, self._pending = ThreadPoolExecutor(1), os.getpid(), {}
            if index not in self._pending:
                self._pending[index] = self._pool.submit(self._fetch, index)


class RemoteStore:
    """The read side of a ``Store`` over a remote: what training, evaluation and the read-only ``versions``
    commands use, with shards coming through a ``ShardCache``."""

    def __init__(self, remote: Remote, cache: ShardCache | None = None):
        self.remote = remote
        self.cache = cache or ShardCache()
        self._manifests: dict[str, dict[str, Any]] = {}

    @property
    def root(self) -> str:
        return self.remote.url

    def check_exists(self) -> None:
        """Remotes need no folder of their own: an empty remote simply holds no versions."""

    def version_path(self, vid: str) -> str:
        return self.remote.key("versions", vid)

    def refs(self) -> dict[str, str]:
        return self.remote.refs()

    def bad_refs(self) -> dict[str, str]:
        return {}

    def version_ids(self, include_partial: bool = False) -> list[str]:
        return self.remote.version_ids()

    def is_complete(self, vid: str) -> bool:
        return self.remote.is_complete(vid)

    def resolve(self, ref: str) -> str:
        return self.remote.resolve(ref)

    def hold(self, ref: str) -> str:
        """Resolve ``ref`` (a remote's versions are never deleted by this node's ``gc``)."""
        return self.resolve(ref)

    def manifest(self, ref: str) -> dict[str, Any]:
        vid = self.resolve(ref)
        if vid not in self._manifests:
            self._manifests[vid] = self.remote.manifest_bytes(vid)[1]
        return self._manifests[vid]

    def lineage(self, ref: str) -> list[dict[str, Any]]:
        return self.remote.lineage(ref)

    def verify(self, ref: str) -> list[str]:
        return self.remote.verify(ref)

    def cached_shards(self, ref: str, key: str = "shards") -> CachedShards:
        """The version's data shards (or ``key="rejects"``) as a ``CachedShards``, the cache limit checked."""
        vid = self.resolve(ref)
        entries = self.manifest(vid)[key]
        self.cache.check_fits(entries, f"version {vid[:12]}")
        return CachedShards(self.remote, self.cache, vid, entries)

    def _paths(self, shards: CachedShards) -> list[Path]:
        """All of a version's files at once: the cache must hold them together (streams need only two)."""
        total = sum(e["bytes"] for e in shards.entries)
        if self.cache.limit_bytes is not None and total > self.cache.limit_bytes:
            raise DistilleryError(f"this read needs all of version {shards.vid[:12]} ({total} bytes) in the shard "
                                  f"cache, whose limit is {self.cache.limit_bytes} bytes: raise --cache-limit-gb")
        paths = []
        for index in range(len(shards)):
            paths.append(shards.local(index))
            shards.prefetch(index + 1)
        return paths

    def shard_paths(self, ref: str) -> list[Path]:
        """Local copies of all the version's data shards, in row order (downloaded and checked as needed)."""
        return self._paths(self.cached_shards(ref))

    def reject_paths(self, ref: str) -> list[Path]:
        return self._paths(self.cached_shards(ref, "rejects"))

    def iter_batches(self, ref: str, columns: list[str] | None = None,
                     batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        shards = self.cached_shards(ref)

        def paths() -> Iterator[Path]:
            for index in range(len(shards)):
                path = shards.local(index)
                shards.prefetch(index + 1)                   # after: it must not evict the shard now read
                yield path
        return iter_parquet_batches(paths(), columns, batch_size)

    def read_table(self, ref: str, columns: list[str] | None = None) -> pa.Table:
        return pa.concat_tables([pq.read_table(p, columns=columns, memory_map=True) for p in self.shard_paths(ref)])
