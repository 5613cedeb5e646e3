"""Copies of a version in other formats: JSONL, CSV and Hugging Face `save_to_disk` folders.

The version is resolved and every check made before anything is written; the copy is written under a temporary
name next to the destination and renamed into place at the end, so a failed export leaves an earlier file of
the same name as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.errors import DistilleryError
from pipelines.store import Store

FORMATS = ("jsonl", "csv", "hf")


def export_version(store: Store, ref: str, destination: str | Path, fmt: str) -> Path:
    """Write version ``ref`` to ``destination`` as ``jsonl``, ``csv`` or ``hf``; return the path written."""
    if fmt not in FORMATS:
        raise DistilleryError(f"unknown export format '{fmt}' ({', '.join(FORMATS)})")
    vid = store.resolve(ref)
    manifest = store.manifest(vid)
    dest = Path(destination)
    if dest.is_dir() or (fmt == "hf" and dest.exists()):
        raise DistilleryError(f"export destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        {"jsonl": _jsonl, "csv": _csv, "hf": _hf}[fmt](store, vid, manifest, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return dest


def _schema(store: Store, vid: str) -> pa.Schema:
    paths = store.shard_paths(vid)
    if not paths:
        raise DistilleryError(f"version {vid[:12]} has no shards to export")
    return pq.read_schema(paths[0])


def _jsonl(store: Store, vid: str, manifest: dict, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for batch in store.iter_batches(vid):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _csv(store: Store, vid: str, manifest: dict, path: Path) -> None:
    with pacsv.CSVWriter(str(path), _schema(store, vid)) as writer:     # the header even for 0 rows
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
