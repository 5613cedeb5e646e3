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

import datetime as _dt
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import fingerprint
from pipelines.atomic import WriterLock, replace_atomic, write_bytes_atomic, write_json_atomic
from pipelines.cards import compute_stats, write_card
from pipelines.errors import DistilleryError, VersionExistsError, VersionNotFoundError

FORMAT = "distillery.version/1"
MANIFEST = "manifest.json"
CARD = "README.md"
ROW_GROUP_ROWS = 10_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def write_parquet_atomic(path: Path, table: pa.Table) -> dict[str, Any]:
    """Write a zstd Parquet file atomically; return its {rows, bytes, sha256}."""
    table = table.replace_schema_metadata(None)
    replace_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                                                    write_statistics=True))
    return {"rows": table.num_rows, "bytes": path.stat().st_size, "sha256": fingerprint.file_sha256(path)}


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    """A readable description of an Arrow schema."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def _sum_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add nested numeric dictionaries key by key."""
    for key, value in part.items():
        if isinstance(value, dict):
            total[key] = _sum_counts(dict(total.get(key, {})), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:
            total[key] = value
    return total


class VersionWriter:
    """Writes one version chunk by chunk, holding its writer lock; ``finalize`` makes it visible as complete and
    releases the lock (``close`` releases it when the write stops early)."""

    def __init__(self, store: Store, version_id: str, step: str, config: dict[str, Any],
                 parents: list[dict[str, Any]], name: str | None, code_version: str, lock: WriterLock):
        self.lock = lock
        self.store = store
        self.version_id = version_id
        self.step = step
        self.config = config
        self.parents = parents
        self.name = name
        self.code_version = code_version
        self.path = store.version_path(version_id)
        for sub in ("data", "rejects", "chunks"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def _record_path(self, index: int) -> Path:
        return self.path / "chunks" / f"{index:05d}.json"

    def is_committed(self, index: int) -> bool:
        """True when chunk ``index`` was fully written (its record exists)."""
        return self._record_path(index).exists()

    def chunk_record(self, index: int) -> dict[str, Any]:
        """The commit record of a written chunk."""
        return json.loads(self._record_path(index).read_text())

    def committed_chunks(self) -> list[int]:
        """Indices of the chunks written so far, sorted."""
        return sorted(int(p.stem) for p in (self.path / "chunks").glob("*.json"))

    def write_chunk(self, index: int, table: pa.Table, rejects: pa.Table | None = None,
                    accounting: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically write chunk ``index``: data shard, optional rejects shard, then its record."""
        if self.is_committed(index):
            raise DistilleryError(f"chunk {index} of version {self.version_id[:12]} is already committed")
        record: dict[str, Any] = {"index": index, "accounting": accounting or {}}
        shard = f"data/shard-{index:05d}.parquet"
        record["shard"] = {"path": shard, **write_parquet_atomic(self.path / shard, table)}
        record["schema"] = schema_to_json(table.schema)
        if rejects is not None and rejects.num_rows:
            rpath = f"rejects/rejects-{index:05d}.parquet"
            record["rejects"] = {"path": rpath, **write_parquet_atomic(self.path / rpath, rejects)}
        write_json_atomic(self._record_path(index), record)
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
        records = [self.chunk_record(i) for i in indices]
        shards = [r["shard"] for r in records]
        accounting: dict[str, Any] = {}
        for record in records:
            accounting = _sum_counts(accounting, record["accounting"])
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
            "num_rows": sum(s["rows"] for s in shards),
            "shards": shards,
            "rejects": [r["rejects"] for r in records if "rejects" in r],
            "accounting": accounting,
            "stats": compute_stats([self.path / s["path"] for s in shards]),
            "extra": self._with_inherited_licence(extra or {}),
        }
        write_card(self.path / CARD, manifest, self.store.ancestry(self.parents))
        write_json_atomic(self.path / MANIFEST, manifest)
        if self.name:
            self.store.tag(self.name, "latest", self.version_id)
        self.close()
        return manifest

    def close(self) -> None:
        """Release the writer lock (the version stays as written: complete after ``finalize``, else resumable)."""
        self.lock.release()


class Store:
    """A folder of dataset versions and the names that point at them."""

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
        """Folder of a version (complete or not)."""
        return self.versions_dir / version_id

    def lock_path(self, version_id: str) -> Path:
        """The writer lock of a version (``WriterLock``)."""
        return self.root / "locks" / f"{version_id}.lock"

    def is_complete(self, version_id: str) -> bool:
        """True when the version's manifest exists."""
        return (self.version_path(version_id) / MANIFEST).exists()

    def version_ids(self, include_partial: bool = False) -> list[str]:
        """Ids of the versions in the store (complete ones unless asked)."""
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir()
                      if p.is_dir() and (include_partial or (p / MANIFEST).exists()))

    def check_exists(self) -> None:
        """Refuse a store folder that does not exist (a mistyped --store)."""
        if not self.root.is_dir():
            raise DistilleryError(f"no dataset store at {self.root} (no such folder; pass --store or set "
                                  f"DISTILLERY_STORE)")

    def resolve(self, ref: str) -> str:
        """Resolve ``name@tag``, ``name`` (= ``name@latest``), a full id or a unique id prefix (4+ hex digits)."""
        self.check_exists()
        name, _, tag = ref.partition("@")
        ref_file = self.refs_dir / name / (tag or "latest")
        if _NAME_RE.match(name) and (not tag or _NAME_RE.match(tag)) and ref_file.is_file():
            return ref_file.read_text().strip()
        if not tag and re.fullmatch(r"[0-9a-f]{4,64}", ref):
            matches = [v for v in self.version_ids() if v.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise VersionNotFoundError(f"version prefix '{ref}' is ambiguous ({len(matches)} versions match)")
        raise VersionNotFoundError(f"no complete version '{ref}' in store {self.root} "
                                   f"(see `distillery versions list`)")

    def manifest(self, ref: str) -> dict[str, Any]:
        """The manifest of a complete version."""
        return json.loads((self.version_path(self.resolve(ref)) / MANIFEST).read_text())

    def shard_paths(self, ref: str) -> list[Path]:
        """Absolute paths of the data shards, in row order, each checked against the manifest's size and sha256
        (once per process while the file is unchanged): every read of a version goes through here, so a damaged
        shard stops the read before any of its rows reaches the user."""
        vid = self.resolve(ref)
        paths = []
        for entry in self.manifest(vid)["shards"]:
            path = self.version_path(vid) / entry["path"]
            _check_shard(vid, path, entry)
            paths.append(path)
        return paths

    def reject_paths(self, ref: str) -> list[Path]:
        """Absolute paths of the rejects shards."""
        vid = self.resolve(ref)
        return [self.version_path(vid) / s["path"] for s in self.manifest(vid)["rejects"]]

    def iter_batches(self, ref: str, columns: list[str] | None = None,
                     batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream the version's rows as Arrow record batches (memory-mapped, shard by shard)."""
        return iter_parquet_batches(self.shard_paths(ref), columns, batch_size)

    def read_table(self, ref: str, columns: list[str] | None = None) -> pa.Table:
        """Load a whole version into memory (small versions only)."""
        return pa.concat_tables([pq.read_table(p, columns=columns, memory_map=True) for p in self.shard_paths(ref)])

    # ---- writing --------------------------------------------------------------------------
    def create_version(self, vid: str, step: str, config: dict[str, Any], parents: list[dict[str, Any]],
                       name: str | None = None, resume: bool = False, code_version: str = "") -> VersionWriter:
        """Start (or, with ``resume``, continue) writing version ``vid`` (``fingerprint.version_id``), which
        ``step`` makes from ``parents`` with ``config`` (recorded as given).

        Raises VersionExistsError when that version is already complete (versions are immutable).
        """
        check_name(name)
        path = self.version_path(vid)
        lock = WriterLock(self.lock_path(vid), f"version {vid[:12]}")   # one writer per version
        try:
            if self.is_complete(vid):
                raise VersionExistsError(f"version {vid[:12]} ({step}) already exists and is complete; versions "
                                         f"are immutable (same input, config and code give the same version)",
                                         version_id=vid)
            if path.exists() and any((path / "chunks").glob("*.json")) and not resume:
                raise DistilleryError(f"an interrupted write of version {vid[:12]} exists at {path}; rerun with "
                                      f"--resume to continue it, or `distillery versions gc` to discard it")
            if path.exists() and not resume:
                shutil.rmtree(path)
            return VersionWriter(self, vid, step, config, parents, name, code_version, lock)
        except BaseException:
            lock.release()
            raise

    # ---- names ----------------------------------------------------------------------------
    def tag(self, name: str, tag: str, ref: str) -> str:
        """Point ``name@tag`` at a complete version; returns its id."""
        for part in (name, tag):
            if not _NAME_RE.match(part):
                raise DistilleryError(f"invalid name or tag '{part}': use letters, digits, '.', '_' and '-'")
        vid = ref if self.is_complete(ref) else self.resolve(ref)
        folder = self.refs_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / tag, (vid + "\n").encode())
        return vid

    def refs(self) -> dict[str, str]:
        """All ``name@tag`` -> version id."""
        if not self.refs_dir.exists():
            return {}
        return {f"{f.parent.name}@{f.name}": f.read_text().strip()
                for f in sorted(self.refs_dir.glob("*/*")) if f.is_file() and not f.name.endswith(".tmp")}

    # ---- checks and housekeeping -------------------------------------------------------------
    def verify(self, ref: str) -> list[str]:
        """Re-hash every shard; return a list of problems (empty when the version is intact)."""
        vid = self.resolve(ref)
        manifest = self.manifest(vid)
        problems = []
        for entry in manifest["shards"] + manifest["rejects"]:
            path = self.version_path(vid) / entry["path"]
            if not path.exists():
                problems.append(f"{entry['path']}: missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{entry['path']}: size {size} != {entry['bytes']} in manifest")
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
        """The lineage entries of ``parents`` and their ancestors (versions missing here have step 'missing')."""
        chain: list[dict[str, Any]] = []
        for parent in parents:
            if "version_id" not in parent:
                chain.append({"depth": depth, "raw": parent.get("path"), "sha256": parent.get("sha256")})
            elif self.is_complete(parent["version_id"]):
                chain += [{**entry, "depth": entry["depth"] + depth} for entry in self.lineage(parent["version_id"])]
            else:
                chain.append({"depth": depth, "version_id": parent["version_id"], "step": "missing"})
        return chain

    def gc(self, unreferenced: bool = False, dry_run: bool = False) -> list[str]:
        """Remove interrupted (partial) versions, never one a live process is writing, and, if asked, complete
        versions no name reaches."""
        doomed = [v for v in self.version_ids(include_partial=True)
                  if not self.is_complete(v) and not WriterLock.held(self.lock_path(v))]
        if unreferenced:
            keep: set[str] = set()
            for vid in set(self.refs().values()):
                if self.is_complete(vid):
                    keep.update(e["version_id"] for e in self.lineage(vid) if "version_id" in e)
            doomed += [v for v in self.version_ids() if v not in keep]
        if not dry_run:
            for vid in doomed:
                shutil.rmtree(self.version_path(vid))
        return doomed


def check_name(name: str | None) -> None:
    """Refuse a version name that is not letters, digits, '.', '_' and '-'."""
    if name is not None and not _NAME_RE.match(name):
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
        stat = path.stat()
    except OSError as exc:
        raise DistilleryError(f"version {vid[:12]}: shard {entry['path']} cannot be read ({exc.strerror}); run "
                              f"`distillery versions verify {vid[:12]}`") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    if stat.st_size != entry["bytes"] or fingerprint.file_sha256(path) != entry["sha256"]:
        raise DistilleryError(f"version {vid[:12]}: shard {entry['path']} is damaged (its bytes differ from the "
                              f"manifest's sha256); nothing was read from it; run `distillery versions verify "
                              f"{vid[:12]}`")
    _VERIFIED.add(key)


def iter_parquet_batches(paths: Iterable[Path], columns: list[str] | None = None,
                         batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Stream record batches from Parquet files in order."""
    for path in paths:
        yield from pq.ParquetFile(path, memory_map=True).iter_batches(batch_size=batch_size, columns=columns)
