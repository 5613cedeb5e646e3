"""Copies of a version in other formats: JSONL, CSV and Hugging Face `save_to_disk` folders."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.csv as pacsv

from pipelines.errors import DistilleryError
from pipelines.store import Store


def export_version(store: Store, ref: str, destination: str | Path, fmt: str) -> Path:
    """Write version ``ref`` to ``destination`` as ``jsonl``, ``csv`` or ``hf``; return the path written."""
    dest = Path(destination)
    if dest.exists() and (fmt == "hf" or dest.is_dir()):
        raise DistilleryError(f"export destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with open(dest, "w", encoding="utf-8") as fh:
            for batch in store.iter_batches(ref):
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = None
        try:
            for batch in store.iter_batches(ref):
                if writer is None:
                    writer = pacsv.CSVWriter(str(dest), batch.schema)
                writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()
    elif fmt == "hf":
        import datasets

        files = [str(p) for p in store.shard_paths(ref)]
        with tempfile.TemporaryDirectory() as cache:
            dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
            dataset.save_to_disk(str(dest))
    else:
        raise DistilleryError(f"unknown export format '{fmt}' (jsonl, csv, hf)")
    return dest
