"""Copies of a version in other formats: JSONL, CSV and Hugging Face `save_to_disk` folders.

The version is resolved and every check made before anything is written; the copy is written under a new,
unique temporary name next to the destination (``pipelines.atomic``) and renamed into place at the end, so a
failed export leaves an earlier file of the same name as it was. ``-`` writes JSONL or CSV to stdout.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.atomic import temporary_sibling
from pipelines.errors import DistilleryError
from pipelines.store import Store

FORMATS = ("jsonl", "csv", "hf")


def export_version(store: Store, ref: str, destination: str | Path, fmt: str) -> Path | None:
    """Write version ``ref`` to ``destination`` as ``jsonl``, ``csv`` or ``hf`` (``-``: stdout, jsonl and csv);
    return the path written (None for stdout).

    The destination must be a new name or a regular file (a folder for ``hf`` must not exist), outside the store:
    a symlink, a device, a FIFO or a file of the store is refused before anything is read or written."""
    if fmt not in FORMATS:
        raise DistilleryError(f"unknown export format '{fmt}' ({', '.join(FORMATS)})")
    vid = store.resolve(ref)
    manifest = store.manifest(vid)
    write = {"jsonl": _jsonl, "csv": _csv, "hf": _hf}[fmt]
    if str(destination) == "-":
        if fmt == "hf":
            raise DistilleryError("an hf export is a folder: give its path, not '-'")
        write(store, vid, manifest, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return None
    dest = Path(destination)
    _check_destination(store, dest, fmt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temporary_sibling(dest, directory=fmt == "hf") as tmp:
        write(store, vid, manifest, tmp)
        os.replace(tmp, dest)
    return dest


def _check_destination(store: Store, dest: Path, fmt: str) -> None:
    """Refuse an export target inside the store, or one that is not a new name or a regular file."""
    where = Path(os.path.abspath(dest.parent)).resolve() / dest.name
    root = store.root.resolve()
    if where == root or where.is_relative_to(root):
        raise DistilleryError(f"export destination {dest} is inside the store {store.root}; export outside it")
    try:
        mode = os.lstat(dest).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode) or (fmt == "hf" and stat.S_ISREG(mode)):
        raise DistilleryError(f"export destination {dest} already exists")
    if not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file (a device, FIFO or socket)"
        raise DistilleryError(f"export destination {dest} is {kind}; refusing to replace it (give a new file name, "
                              f"or - for stdout)")


def _schema(store: Store, vid: str) -> pa.Schema:
    paths = store.shard_paths(vid)
    if not paths:
        raise DistilleryError(f"version {vid[:12]} has no shards to export")
    return pq.read_schema(paths[0])


def _jsonl(store: Store, vid: str, manifest: dict, sink: Path | BinaryIO) -> None:
    with open(sink, "wb") if isinstance(sink, Path) else contextlib.nullcontext(sink) as fh:
        for batch in store.iter_batches(vid):
            fh.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist()).encode())


def _csv(store: Store, vid: str, manifest: dict, sink: Path | BinaryIO) -> None:
    with pacsv.CSVWriter(str(sink) if isinstance(sink, Path) else sink, _schema(store, vid)) as writer:  # header
        for batch in store.iter_batches(vid):
            writer.write_batch(batch)


def _hf(store: Store, vid: str, manifest: dict, path: Path) -> None:
    import datasets

    licence = manifest["extra"].get("licence") or {}
    info = datasets.DatasetInfo(description=f"distillery version {vid} ({manifest['step']})",
                                license=licence.get("license_name") or licence.get("license", ""))
    with tempfile.TemporaryDirectory() as cache:
        if manifest["num_rows"] == 0:
            dataset = datasets.Dataset(_schema(store, vid).empty_table(), info=info)
        else:
            dataset = datasets.load_dataset("parquet", data_files=[str(p) for p in store.shard_paths(vid)],
                                            split="train", cache_dir=cache)
            dataset.info.license, dataset.info.description = info.license, info.description
        dataset.save_to_disk(str(path), num_shards=1 if manifest["num_rows"] == 0 else None)
