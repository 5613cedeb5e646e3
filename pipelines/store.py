"""The dataset store: immutable, content-addressed versions of Parquet shards with a manifest.

Layout (see docs/ARCHITECTURE.md)::

    <root>/versions/<id>/manifest.json      written last: a version is complete iff it exists
    <root>/versions/<id>/README.md          data card
    <root>/versions/<id>/data/shard-NNNNN.parquet
    <root>/versions/<id>/rejects/rejects-NNNNN.parquet
    <root>/versions/<id>/chunks/NNNNN.json  per-chunk commit record
    <root>/refs/<name>/<tag>                a version id
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import fingerprint
from pipelines.atomic import WriterLock, shared_lock, temporary_sibling, write_bytes_atomic, write_json_atomic
from pipelines.cards import DataStats, compute_stats, write_card
from pipelines.confine import is_regular, open_regular, read_own_json, real_dir, regular_member
from pipelines.errors import DistilleryError, VersionExistsError, VersionNotFoundError
from pipelines.progress import say

FORMAT = "distillery.version/1"
MANIFEST = "manifest.json"
CARD = "README.md"
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 32 << 20        # a row group holds fewer rows when they reach this size in memory
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")            # names, tags (always fullmatch)
ID_RE = re.compile(r"[0-9a-f]{64}")                             # version ids, sha256s
SHARD_RE = re.compile(r"data/shard-[0-9]{5,}\.parquet")         # the only file names a version holds
REJECTS_RE = re.compile(r"rejects/rejects-[0-9]{5,}\.parquet")
ANY_FILE_RE = re.compile(f"{SHARD_RE.pattern}|{REJECTS_RE.pattern}")
_RECORD_RE = re.compile(r"[0-9]{5,}\.json")


def write_parquet_atomic(path: Path, table: pa.Table) -> dict[str, Any]:
    """Write a zstd Parquet file atomically; return its {rows, bytes, sha256}."""
    sink = ParquetSink(path)
    try:
        sink.write(table)
        return sink.commit()
    finally:
        sink.abort()


class ParquetSink:
    """A zstd Parquet file written table by table under a new temporary name, renamed into place by ``commit``.

    Row groups hold ``ROW_GROUP_ROWS`` rows (fewer when the buffered rows reach ``ROW_GROUP_BYTES``), so memory
    stays bounded however many rows arrive, and the bytes equal one ``pq.write_table`` of the whole table whenever
    no group reaches the byte bound."""

    def __init__(self, path: Path):
        self.path = path
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(temporary_sibling(path))
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        """Add ``table``'s rows (same schema as the first table written)."""
        table = table.replace_schema_metadata(None)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd", write_statistics=True)
            self.schema = table.schema
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        while self._buffered >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)
        if self._buffered and sum(t.nbytes for t in self._buffer) >= ROW_GROUP_BYTES:
            self._flush(self._buffered)

    def _flush(self, rows: int) -> None:
        assert self._writer is not None
        table = pa.concat_tables(self._buffer)
        self._writer.write_table(table.slice(0, rows).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(rows)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def commit(self) -> dict[str, Any]:
        """Finish the file, fsync it and rename it into place; returns its {rows, bytes, sha256}."""
        if self._writer is None:
            raise DistilleryError(f"{self.path.name}: nothing was written (not even a schema)")
        if self._buffered:
            self._flush(self._buffered)
        elif self.rows == 0:
            self._writer.write_table(self.schema.empty_table(), row_group_size=ROW_GROUP_ROWS)
        self._writer.close()
        self._writer = None
        fd = os.open(self._tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        self._stack.close()
        return {"rows": self.rows, "bytes": self.path.stat().st_size, "sha256": fingerprint.file_sha256(self.path)}

    def abort(self) -> None:
        """Drop what was written (no-op after ``commit``)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self._stack.close()


class ChunkSink:
    """One chunk of a version written piece by piece (``VersionWriter.open_chunk``): its data shard, its rejects
    shard when it has rejects, and, on ``commit``, its record; until then nothing of it is visible."""

    def __init__(self, writer: VersionWriter, index: int):
        self.writer = writer
        self.index = index
        self._shard = ParquetSink(writer.path / f"data/shard-{index:05d}.parquet")
        self._rejects: ParquetSink | None = None
        self._stats = DataStats()          # the data card's statistics of these rows, added as they come

    @property
    def rows(self) -> int:
        return self._shard.rows

    def write(self, table: pa.Table, rejects: pa.Table | None = None) -> None:
        """Add rows (and rejected rows) to the chunk, in order."""
        self._shard.write(table)
        self._stats.add(table)
        if rejects is not None and rejects.num_rows:
            if self._rejects is None:
                self._rejects = ParquetSink(self.writer.path / f"rejects/rejects-{self.index:05d}.parquet")
            self._rejects.write(rejects)

    def commit(self, accounting: dict[str, Any]) -> dict[str, Any]:
        """Check the rows against the step's rule, then write the shards and the chunk's record (last)."""
        try:
            return self.writer._commit(self, accounting)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what this chunk wrote (no-op after ``commit``)."""
        self._shard.abort()
        if self._rejects is not None:
            self._rejects.abort()


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    """A readable description of an Arrow schema."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def sum_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add nested numeric dictionaries key by key."""
    for key, value in part.items():
        if isinstance(value, dict):
            total[key] = sum_counts(dict(total.get(key, {})), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:
            total[key] = value
    return total


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _names(folder: Path) -> list[str]:
    """The entry names of a real folder ([] when it is missing or not a real folder)."""
    return os.listdir(folder) if _is_real_dir(folder) else []


class _Untrusted(Exception):
    """A chunk record (or what it names) that resume must not reuse."""


def _check_entry(entry: Any, pattern: re.Pattern[str]) -> None:
    """A manifest's (or chunk record's) file entry: {path, rows, bytes, sha256} of the right forms."""
    if not isinstance(entry, dict):
        raise ValueError(f"file entry {entry!r} is not an object")
    if not isinstance(entry.get("path"), str) or not pattern.fullmatch(entry["path"]):
        raise ValueError(f"file path {entry.get('path')!r} is not one distillery writes")
    for key in ("rows", "bytes"):
        if not _is_count(entry.get(key)):
            raise ValueError(f"{entry['path']}: {key} {entry.get(key)!r} is not a count")
    if not isinstance(entry.get("sha256"), str) or not ID_RE.fullmatch(entry["sha256"]):
        raise ValueError(f"{entry['path']}: sha256 {entry.get('sha256')!r} is not a sha256")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(data: Any, vid: str) -> dict[str, Any]:
    """``data`` if it is a well-formed manifest of version ``vid``; else a one-line error naming the version."""
    try:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT}")
        if data.get("version_id") != vid:
            raise ValueError(f"it names version {str(data.get('version_id'))[:64]!r}, not its folder's")
        for key, kind in (("step", str), ("config", dict), ("parents", list), ("schema", list), ("shards", list),
                          ("rejects", list), ("accounting", dict), ("stats", dict), ("extra", dict)):
            if not isinstance(data.get(key), kind):
                raise ValueError(f"'{key}' is not a {kind.__name__}")
        if data.get("name") is not None and not (isinstance(data["name"], str) and NAME_RE.fullmatch(data["name"])):
            raise ValueError(f"name {data['name']!r} is not a valid name")
        for parent in data["parents"]:
            if not isinstance(parent, dict) or not (
                    (isinstance(parent.get("version_id"), str) and ID_RE.fullmatch(parent["version_id"]))
                    or (isinstance(parent.get("sha256"), str) and "version_id" not in parent)):
                raise ValueError(f"parent {parent!r} has neither a version id nor a sha256")
        for entry in data["shards"]:
            _check_entry(entry, SHARD_RE)
        for entry in data["rejects"]:
            _check_entry(entry, REJECTS_RE)
        if not _is_count(data.get("num_rows")) or data["num_rows"] != sum(e["rows"] for e in data["shards"]):
            raise ValueError(f"num_rows {data.get('num_rows')!r} is not the sum of its shards' rows")
    except ValueError as exc:
        raise DistilleryError(f"version {vid[:12]}: manifest.json is malformed ({exc}); the version cannot be "
                              f"trusted: remove its folder {vid[:12]}... or restore it") from None
    return data


class VersionWriter:
    """Writes one version chunk by chunk, holding its writer lock; ``finalize`` makes it visible as complete and
    releases the lock (``close`` releases it when the write stops early).

    A chunk counts as written only when its record, its shard and the shard's rows agree: a resumed write
    re-checks every chunk it finds (the names distillery writes, regular files, sizes, sha256s, row counts and,
    when the step names one, the accounting key that must equal the rows: ``rows_key``) and writes again any chunk
    that fails, so nothing a record points at outside the version is ever reused."""

    def __init__(self, store: Store, version_id: str, step: str, config: dict[str, Any],
                 parents: list[dict[str, Any]], name: str | None, code_version: str, lock: WriterLock,
                 rows_key: str | None = None):
        self.lock = lock
        self.store = store
        self.version_id = version_id
        self.step = step
        self.config = config
        self.parents = parents
        self.name = name
        self.code_version = code_version
        self.rows_key = rows_key
        self.path = store.version_path(version_id)
        real_dir(self.path, "version folder", create=True)
        for sub in ("data", "rejects", "chunks"):
            real_dir(self.path / sub, "version folder", create=True)
        self._records: dict[int, dict[str, Any]] = {}
        self._stats = DataStats()                   # of the chunks committed by this writer (``_stats_chunks``)
        self._stats_chunks: set[int] = set()
        self._load_committed()

    def _record_path(self, index: int) -> Path:
        return self.path / "chunks" / f"{index:05d}.json"

    def _load_committed(self) -> None:
        """Keep the chunks whose record, files and rows check out; remove (and so rewrite) the others."""
        for entry in sorted(os.scandir(self.path / "chunks"), key=lambda e: e.name):
            if not _RECORD_RE.fullmatch(entry.name):
                continue                                   # not a record of ours (a temporary file, ...)
            index = int(entry.name[:-5])
            try:
                self._records[index] = self._checked_record(index)
            except (_Untrusted, DistilleryError) as exc:
                say(f"version {self.version_id[:12]}: chunk {index} cannot be reused ({exc}); writing it again")
                self._discard_chunk(index)

    def _checked_record(self, index: int) -> dict[str, Any]:
        record = read_own_json(self._record_path(index))
        if not isinstance(record, dict) or record.get("index") != index:
            raise _Untrusted("its record is not a chunk record of this index")
        if not isinstance(record.get("accounting"), dict) or not isinstance(record.get("schema"), list):
            raise _Untrusted("its record lacks accounting or schema")
        files = [("shard", SHARD_RE, f"data/shard-{index:05d}.parquet")]
        if "rejects" in record:
            files.append(("rejects", REJECTS_RE, f"rejects/rejects-{index:05d}.parquet"))
        for key, pattern, expected in files:
            try:
                _check_entry(record.get(key), pattern)
            except ValueError as exc:
                raise _Untrusted(str(exc)) from None
            entry = record[key]
            if entry["path"] != expected:
                raise _Untrusted(f"its {key} is {entry['path']!r}, not {expected}")
            path = regular_member(self.path, entry["path"], pattern, f"chunk {index}")
            if path.stat().st_size != entry["bytes"] or fingerprint.file_sha256(path) != entry["sha256"]:
                raise _Untrusted(f"{entry['path']} differs from its record (size or sha256)")
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowException, OSError):
                raise _Untrusted(f"{entry['path']} is not a readable Parquet file") from None
            if rows != entry["rows"]:
                raise _Untrusted(f"{entry['path']} holds {rows} rows, its record says {entry['rows']}")
        self._check_rows(index, record["shard"]["rows"], record["accounting"], _Untrusted)
        return record

    def _check_rows(self, index: int, rows: int, accounting: dict[str, Any], error: type[Exception]) -> None:
        if self.rows_key is not None and accounting.get(self.rows_key) != rows:
            raise error(f"chunk {index}: {rows} rows written but accounting.{self.rows_key} = "
                        f"{accounting.get(self.rows_key)!r}")

    def _discard_chunk(self, index: int) -> None:
        """Remove a chunk's record and the files of that chunk's names (only names this writer uses)."""
        for path in (self._record_path(index), self.path / f"data/shard-{index:05d}.parquet",
                     self.path / f"rejects/rejects-{index:05d}.parquet"):
            if os.path.lexists(path) and not _is_real_dir(path):
                path.unlink()

    def is_committed(self, index: int) -> bool:
        """True when chunk ``index`` was fully written (its record exists and checks out)."""
        return index in self._records

    def committed_chunks(self) -> list[int]:
        """Indices of the chunks written so far, sorted."""
        return sorted(self._records)

    def committed_rows(self, index: int) -> int:
        """The rows of committed chunk ``index``'s shard."""
        return self._committed(index)["shard"]["rows"]

    def committed_shard(self, index: int) -> Path:
        """The data shard of committed chunk ``index`` (checked when the writer found it)."""
        return self.path / self._committed(index)["shard"]["path"]

    def _committed(self, index: int) -> dict[str, Any]:
        if index not in self._records:
            raise DistilleryError(f"chunk {index} of version {self.version_id[:12]} is not committed; chunks are "
                                  f"written in order")
        return self._records[index]

    def accounting(self) -> dict[str, Any]:
        """The accounting of the chunks committed so far, summed (what the manifest records)."""
        total: dict[str, Any] = {}
        for index in self.committed_chunks():
            total = sum_counts(total, self._records[index]["accounting"])
        return total

    def open_chunk(self, index: int) -> ChunkSink:
        """Start writing chunk ``index`` piece by piece (``ChunkSink.write``, then ``commit``)."""
        if self.is_committed(index):
            raise DistilleryError(f"chunk {index} of version {self.version_id[:12]} is already committed")
        return ChunkSink(self, index)

    def write_chunk(self, index: int, table: pa.Table, rejects: pa.Table | None = None,
                    accounting: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically write chunk ``index``: data shard, optional rejects shard, then its record."""
        sink = self.open_chunk(index)
        sink.write(table, rejects)
        return sink.commit(accounting or {})

    def _commit(self, sink: ChunkSink, accounting: dict[str, Any]) -> dict[str, Any]:
        index = sink.index
        if self.is_committed(index):
            raise DistilleryError(f"chunk {index} of version {self.version_id[:12]} is already committed")
        self._check_rows(index, sink.rows, accounting, DistilleryError)
        record: dict[str, Any] = {"index": index, "accounting": accounting}
        record["shard"] = {"path": f"data/shard-{index:05d}.parquet", **sink._shard.commit()}
        record["schema"] = schema_to_json(sink._shard.schema)
        if sink._rejects is not None:
            record["rejects"] = {"path": f"rejects/rejects-{index:05d}.parquet", **sink._rejects.commit()}
        write_json_atomic(self._record_path(index), record)
        self._records[index] = json.loads(json.dumps(record, default=str))
        self._stats.merge(sink._stats)
        self._stats_chunks.add(index)
        return record

    def _with_inherited_licence(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Derived versions carry their first parent's licence unless the step sets one."""
        if "licence" in extra:
            return extra
        for parent in self.parents:
            if "version_id" in parent and self.store.is_complete(parent["version_id"]):
                licence = self.store.manifest(parent["version_id"])["extra"].get("licence")
                if licence:
                    return {**extra, "licence": licence}
        return extra

    def finalize(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the manifest (last) and the data card, then point ``<name>@latest`` at the version."""
        indices = self.committed_chunks()
        if indices != list(range(len(indices))):
            raise DistilleryError(f"version {self.version_id[:12]}: chunks {indices} are not contiguous from 0")
        records = [self._records[i] for i in indices]
        shards = [r["shard"] for r in records]
        accounting = self.accounting()
        num_rows = sum(s["rows"] for s in shards)
        if self.rows_key is not None and accounting.get(self.rows_key, 0) != num_rows:
            raise DistilleryError(f"version {self.version_id[:12]}: {num_rows} rows written but the step's "
                                  f"accounting.{self.rows_key} = {accounting.get(self.rows_key)}; not finalised")
        schema = records[0]["schema"] if records else []
        for record in records[1:]:
            if record["schema"] != schema:
                raise DistilleryError(f"version {self.version_id[:12]}: chunk {record['index']} has a different "
                                      f"schema ({record['schema']}) than chunk 0 ({schema})")
        manifest = {
            "format": FORMAT,
            "version_id": self.version_id,
            "name": self.name,
            "step": self.step,
            "config": self.config,
            "parents": self.parents,
            "code_version": self.code_version,
            "library_versions": fingerprint.library_versions(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "schema": schema,
            "num_rows": num_rows,
            "shards": shards,
            "rejects": [r["rejects"] for r in records if "rejects" in r],
            "accounting": accounting,
            "stats": self._data_stats(indices, shards),
            "extra": self._with_inherited_licence(extra or {}),
        }
        check_manifest(json.loads(json.dumps(manifest, default=str)), self.version_id)
        write_card(self.path / CARD, manifest, self.store.ancestry(self.parents))
        write_json_atomic(self.path / MANIFEST, manifest)
        if self.name:
            self.store.tag(self.name, "latest", self.version_id)
        self.close()
        return manifest

    def _data_stats(self, indices: list[int], shards: list[dict[str, Any]]) -> dict[str, Any]:
        """The data card's statistics: summed as this writer committed the chunks (while later chunks were still
        being made), or read from the shards when some were committed before (a resumed run) or numeric labels,
        whose sample follows the shard order, were seen."""
        if self._stats_chunks == set(indices) and not self._stats.numeric_labels:
            return self._stats.summary()
        return compute_stats([self.path / s["path"] for s in shards])

    def discard(self) -> None:
        """Delete everything written for this version (its output cannot be trusted) and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the writer lock (the version stays as written: complete after ``finalize``, else resumable)."""
        self.lock.release()


@dataclass
class GcReport:
    """What ``Store.gc`` deleted (or would delete) and what it left, with why."""

    deleted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class Store:
    """A folder of dataset versions and the names that point at them.

    Everything below the root is the store's own: its folders must be real folders (no symlink leading out),
    ids and names have fixed forms, and every path read from a manifest or a ref is checked before use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- paths and lookup -------------------------------------------------------------------
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def refs_dir(self) -> Path:
        return self.root / "refs"

    def version_path(self, version_id: str) -> Path:
        """Folder of a version (complete or not); ``version_id`` must be a version id (64 hex digits)."""
        if not isinstance(version_id, str) or not ID_RE.fullmatch(version_id):
            raise DistilleryError(f"'{str(version_id)[:80]}' is not a version id (64 hex digits)")
        return self.versions_dir / version_id

    def lock_path(self, version_id: str) -> Path:
        """The lock of a version: exclusive while it is written or deleted, shared while it is read."""
        self.version_path(version_id)
        locks = self.root / "locks"
        if os.path.lexists(locks):
            real_dir(locks, "store folder")
        return locks / f"{version_id}.lock"

    def is_complete(self, version_id: str) -> bool:
        """True when the version's manifest exists (as a regular file in a real version folder)."""
        if not isinstance(version_id, str) or not ID_RE.fullmatch(version_id):
            return False
        path = self.version_path(version_id)
        return _is_real_dir(self.versions_dir) and _is_real_dir(path) and is_regular(path / MANIFEST)

    def version_ids(self, include_partial: bool = False) -> list[str]:
        """Ids of the versions in the store (complete ones unless asked); other entries are ignored."""
        if not _is_real_dir(self.versions_dir):
            return []
        return sorted(e.name for e in os.scandir(self.versions_dir)
                      if ID_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                      and (include_partial or self.is_complete(e.name)))

    def check_exists(self) -> None:
        """Refuse a store folder that does not exist (a mistyped --store)."""
        if not self.root.is_dir():
            raise DistilleryError(f"no dataset store at {self.root} (no such folder; pass --store or set "
                                  f"DISTILLERY_STORE)")

    def read_ref(self, name: str, tag: str) -> str | None:
        """The version id ``refs/<name>/<tag>`` holds (None when there is no such ref)."""
        folder = self.refs_dir / name
        if not (_is_real_dir(self.refs_dir) and os.path.lexists(folder)):
            return None
        real_dir(folder, f"ref folder of '{name}'")
        path = folder / tag
        if not os.path.lexists(path):
            return None
        with os.fdopen(open_regular(path, follow=False), "rb") as fh:
            content = fh.read(200)
        vid = content.decode("utf-8", "replace").strip()
        if not ID_RE.fullmatch(vid):
            raise DistilleryError(f"ref {name}@{tag} is malformed (it holds {content[:40]!r}, not a version id); "
                                  f"point it again with `distillery versions tag {name}@{tag} VERSION`")
        return vid

    def resolve(self, ref: str) -> str:
        """Resolve ``name@tag``, ``name`` (= ``name@latest``), a full id or a unique id prefix (4+ hex digits)."""
        self.check_exists()
        return resolve_ref(ref, self.read_ref, self.version_ids, f"in store {self.root}", "distillery versions list")

    def manifest(self, ref: str) -> dict[str, Any]:
        """The manifest of a complete version, checked for form (a malformed one is a one-line error)."""
        vid = self.resolve(ref)
        if not self.is_complete(vid):
            raise VersionNotFoundError(f"'{ref}' points at version {vid[:12]}, which is not complete in store "
                                       f"{self.root}")
        return check_manifest(read_own_json(self.version_path(vid) / MANIFEST), vid)

    def _hold_for_reading(self, vid: str) -> None:
        """Mark this process as a reader of ``vid`` (a shared lock until it exits), so that ``gc`` leaves it."""
        locks = self.root / "locks"
        try:
            real_dir(locks, "store folder", create=True)
        except OSError:
            pass                                   # a read-only store: nothing can delete there either
        if _is_real_dir(locks):
            shared_lock(self.lock_path(vid))

    def hold(self, ref: str) -> str:
        """Resolve ``ref`` and keep it from ``gc`` while this process lives; returns its id."""
        vid = self.resolve(ref)
        self._hold_for_reading(vid)
        if not self.is_complete(vid):
            raise VersionNotFoundError(f"version {vid[:12]} was deleted from store {self.root}")
        return vid

    def _files(self, ref: str, key: str, pattern: re.Pattern[str]) -> tuple[str, list[tuple[Path, dict]]]:
        vid = self.hold(ref)
        entries = self.manifest(vid)[key]
        return vid, [(regular_member(self.version_path(vid), e["path"], pattern, f"version {vid[:12]}"), e)
                     for e in entries]

    def shard_paths(self, ref: str) -> list[Path]:
        """Absolute paths of the data shards, in row order, each checked against the manifest's size and sha256
        (once per process while the file is unchanged): every read of a version goes through here, so a damaged
        shard stops the read before any of its rows reaches the user. The reader holds the version (``hold``)."""
        vid, files = self._files(ref, "shards", SHARD_RE)
        for path, entry in files:
            _check_shard(vid, path, entry)
        return [path for path, _ in files]

    def reject_paths(self, ref: str) -> list[Path]:
        """Absolute paths of the rejects shards, each checked like the data shards."""
        vid, files = self._files(ref, "rejects", REJECTS_RE)
        for path, entry in files:
            _check_shard(vid, path, entry)
        return [path for path, _ in files]

    def iter_batches(self, ref: str, columns: list[str] | None = None,
                     batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream the version's rows as Arrow record batches (memory-mapped, shard by shard)."""
        return iter_parquet_batches(self.shard_paths(ref), columns, batch_size)

    def read_table(self, ref: str, columns: list[str] | None = None) -> pa.Table:
        """Load a whole version into memory (small versions only)."""
        return pa.concat_tables([pq.read_table(p, columns=columns, memory_map=True) for p in self.shard_paths(ref)])

    # ---- writing --------------------------------------------------------------------------
    def create_version(self, vid: str, step: str, config: dict[str, Any], parents: list[dict[str, Any]],
                       name: str | None = None, resume: bool = False, code_version: str = "",
                       rows_key: str | None = None) -> VersionWriter:
        """Start (or, with ``resume``, continue) writing version ``vid`` (``fingerprint.version_id``), which
        ``step`` makes from ``parents`` with ``config`` (recorded as given); ``rows_key`` names the accounting
        key that must equal each chunk's rows (None: no such rule).

        Raises VersionExistsError when that version is already complete (versions are immutable).
        """
        check_name(name)
        path = self.version_path(vid)
        self.root.mkdir(parents=True, exist_ok=True)
        real_dir(self.versions_dir, "store folder", create=True)
        real_dir(self.root / "locks", "store folder", create=True)
        exists = VersionExistsError(f"version {vid[:12]} ({step}) already exists and is complete; versions are "
                                    f"immutable (same input, config and code give the same version)", version_id=vid)
        if self.is_complete(vid):
            raise exists
        lock = WriterLock(self.lock_path(vid), f"version {vid[:12]}")   # one writer per version
        try:
            if self.is_complete(vid):
                raise exists
            if os.path.lexists(path):
                real_dir(path, "version folder")
                if not resume and any(_RECORD_RE.fullmatch(n) for n in _names(path / "chunks")):
                    raise DistilleryError(f"an interrupted write of version {vid[:12]} exists at {path}; rerun "
                                          f"with --resume to continue it, or `distillery versions gc` to discard it")
                if not resume:
                    shutil.rmtree(path)
            return VersionWriter(self, vid, step, config, parents, name, code_version, lock, rows_key)
        except BaseException:
            lock.release()
            raise

    # ---- names ----------------------------------------------------------------------------
    def tag(self, name: str, tag: str, ref: str) -> str:
        """Point ``name@tag`` at a complete version; returns its id."""
        for part in (name, tag):
            if not isinstance(part, str) or not NAME_RE.fullmatch(part):
                raise DistilleryError(f"invalid name or tag {part!r}: use letters, digits, '.', '_' and '-'")
        vid = self.resolve(ref)
        if not self.is_complete(vid):
            raise VersionNotFoundError(f"version {vid[:12]} is not complete in store {self.root}")
        real_dir(self.refs_dir, "store folder", create=True)
        folder = real_dir(self.refs_dir / name, f"ref folder of '{name}'", create=True)
        write_bytes_atomic(folder / tag, (vid + "\n").encode())
        return vid

    def _ref_files(self) -> Iterator[tuple[str, Path]]:
        if not _is_real_dir(self.refs_dir):
            return
        for folder in sorted(os.scandir(self.refs_dir), key=lambda e: e.name):
            if not (NAME_RE.fullmatch(folder.name) and folder.is_dir(follow_symlinks=False)):
                continue
            for entry in sorted(os.scandir(folder.path), key=lambda e: e.name):
                if NAME_RE.fullmatch(entry.name) and not entry.name.endswith(".tmp"):
                    yield f"{folder.name}@{entry.name}", Path(entry.path)

    def refs(self) -> dict[str, str]:
        """All well-formed ``name@tag`` -> version id (see ``bad_refs`` for the others)."""
        out = {}
        for ref, _ in self._ref_files():
            name, _, tag = ref.partition("@")
            with contextlib.suppress(DistilleryError, OSError):
                vid = self.read_ref(name, tag)
                if vid is not None:
                    out[ref] = vid
        return out

    def bad_refs(self) -> dict[str, str]:
        """Refs that cannot be read, each with why."""
        out = {}
        for ref, _ in self._ref_files():
            name, _, tag = ref.partition("@")
            try:
                self.read_ref(name, tag)
            except (DistilleryError, OSError) as exc:
                out[ref] = str(exc)
        return out

    # ---- checks and housekeeping -------------------------------------------------------------
    def verify(self, ref: str) -> list[str]:
        """Re-hash every shard; return a list of problems (empty when the version is intact). A file that is not a
        regular file inside the version (a symlink, a FIFO, a device) is a problem, never read."""
        vid = self.resolve(ref)
        manifest = self.manifest(vid)
        problems = []
        for entry in manifest["shards"] + manifest["rejects"]:
            try:
                path = regular_member(self.version_path(vid), entry["path"], ANY_FILE_RE, "")
            except DistilleryError as exc:
                problems.append(f"{entry['path']}: {str(exc).lstrip(': ')}")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{entry['path']}: size {size} != {entry['bytes']} in manifest")
                continue
            digest = fingerprint.file_sha256(path)
            if digest != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 {digest[:12]} != {entry['sha256'][:12]} in manifest")
        return problems

    def lineage(self, ref: str) -> list[dict[str, Any]]:
        """The version and its ancestors, depth first, down to the raw inputs."""
        vid = self.resolve(ref)
        manifest = self.manifest(vid)
        return [{"depth": 0, "version_id": vid, "step": manifest["step"], "name": manifest["name"],
                 "num_rows": manifest["num_rows"]}, *self.ancestry(manifest["parents"])]

    def ancestry(self, parents: list[dict[str, Any]], depth: int = 1) -> list[dict[str, Any]]:
        """The lineage entries of ``parents`` and their ancestors (versions missing here have step 'missing',
        unreadable ones 'unreadable')."""
        chain: list[dict[str, Any]] = []
        for parent in parents:
            if "version_id" not in parent:
                chain.append({"depth": depth, "raw": parent.get("path"), "sha256": parent.get("sha256")})
            elif self.is_complete(parent["version_id"]):
                try:
                    lineage = self.lineage(parent["version_id"])
                except DistilleryError:
                    chain.append({"depth": depth, "version_id": parent["version_id"], "step": "unreadable"})
                    continue
                chain += [{**entry, "depth": entry["depth"] + depth} for entry in lineage]
            else:
                chain.append({"depth": depth, "version_id": parent["version_id"], "step": "missing"})
        return chain

    def gc(self, unreferenced: bool = False, dry_run: bool = False) -> GcReport:
        """Remove interrupted (partial) versions and, if asked, complete versions no name reaches; never one a live
        process writes or reads (each is deleted holding its lock, so none can start meanwhile), never one whose
        manifest cannot be read (named in ``skipped``)."""
        report = GcReport()
        doomed = [v for v in self.version_ids(include_partial=True) if not self.is_complete(v)]
        if unreferenced:
            keep: set[str] = set()
            unknown = []
            for ref, vid in self.refs().items():
                try:
                    keep.update(e["version_id"] for e in self.lineage(vid) if "version_id" in e)
                    unknown += [e["version_id"] for e in self.lineage(vid) if e.get("step") == "unreadable"]
                except DistilleryError as exc:
                    report.skipped[vid] = f"named by {ref}, but {exc}"
                    unknown.append(vid)
            for vid in self.version_ids():
                if vid in keep:
                    continue
                try:
                    self.manifest(vid)
                except DistilleryError as exc:
                    report.skipped[vid] = str(exc)
                    continue
                if unknown:
                    report.skipped[vid] = (f"unreferenced, but kept: the lineage of {unknown[0][:12]} cannot be read, "
                                           f"so it may need this version")
                    continue
                doomed.append(vid)
        for vid in doomed:
            if dry_run:
                if WriterLock.held(self.lock_path(vid)):
                    report.skipped[vid] = "in use (being written or read)"
                else:
                    report.deleted.append(vid)
                continue
            lock_path = self.lock_path(vid)                     # (a symlinked locks folder: refused here)
            try:
                lock = WriterLock(lock_path, f"version {vid[:12]}")
            except DistilleryError as exc:
                report.skipped[vid] = f"in use or its lock refused: {exc}"
                continue
            with lock:
                shutil.rmtree(self.version_path(vid))
            report.deleted.append(vid)
        return report


def resolve_ref(ref: str, read_ref: Callable[[str, str], str | None], version_ids: Callable[[], list[str]],
                where: str, listing: str) -> str:
    """The version id ``ref`` names where ``read_ref(name, tag)`` reads refs and ``version_ids()`` lists the complete
    versions: ``name@tag``, ``name`` (= ``name@latest``), a full id or a unique id prefix (4+ hex digits); ``where``
    and ``listing`` (the command that lists them) go into the error."""
    name, _, tag = ref.partition("@")
    if NAME_RE.fullmatch(name) and (not tag or NAME_RE.fullmatch(tag)):
        vid = read_ref(name, tag or "latest")
        if vid is not None:
            return vid
    if not tag and re.fullmatch(r"[0-9a-f]{4,64}", ref):
        matches = [v for v in version_ids() if v.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise VersionNotFoundError(f"version prefix '{ref}' is ambiguous ({len(matches)} versions match)")
    raise VersionNotFoundError(f"no complete version '{ref}' {where} (see `{listing}`)")


def check_name(name: str | None) -> None:
    """Refuse a version name that is not letters, digits, '.', '_' and '-'."""
    if name is not None and not (isinstance(name, str) and NAME_RE.fullmatch(name)):
        raise DistilleryError(f"invalid version name '{name}': use letters, digits, '.', '_' and '-'")


def diff_manifests(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What differs between two versions: config keys, schema, rows, accounting and shards."""
    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): data}

    def changed(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        fx, fy = flat(x), flat(y)
        return {k: [fx.get(k), fy.get(k)] for k in sorted(set(fx) | set(fy)) if fx.get(k) != fy.get(k)}

    diff = {
        "versions": [a["version_id"], b["version_id"]],
        "step": [a["step"], b["step"]] if a["step"] != b["step"] else None,
        "config": changed(a["config"], b["config"]),
        "schema": None if a["schema"] == b["schema"] else [a["schema"], b["schema"]],
        "num_rows": [a["num_rows"], b["num_rows"]],
        "accounting": changed(a["accounting"], b["accounting"]),
        "same_data": [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]],
        "code_version": [a["code_version"], b["code_version"]] if a["code_version"] != b["code_version"] else None,
    }
    diff["identical"] = a["version_id"] == b["version_id"] or (
        diff["same_data"] and not (diff["step"] or diff["config"] or diff["schema"] or diff["accounting"]))
    return diff


_VERIFIED: set[tuple[str, int, int]] = set()     # (path, size, mtime) of the shards this process checked


def _check_shard(vid: str, path: Path, entry: dict[str, Any]) -> None:
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise DistilleryError(f"version {vid[:12]}: shard {entry['path']} cannot be read ({exc.strerror}); run "
                              f"`distillery versions verify {vid[:12]}`") from None
    key = (str(path), info.st_size, info.st_mtime_ns)
    if key in _VERIFIED:
        return
    if info.st_size != entry["bytes"] or fingerprint.file_sha256(path) != entry["sha256"]:
        raise DistilleryError(f"version {vid[:12]}: shard {entry['path']} is damaged (its bytes differ from the "
                              f"manifest's sha256); nothing was read from it; run `distillery versions verify "
                              f"{vid[:12]}`")
    _VERIFIED.add(key)


def iter_parquet_batches(paths: Iterable[Path], columns: list[str] | None = None,
                         batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Stream record batches from Parquet files in order."""
    for path in paths:
        yield from pq.ParquetFile(path, memory_map=True).iter_batches(batch_size=batch_size, columns=columns)
