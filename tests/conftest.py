"""Shared fixtures: a fresh store and a helper that writes a small version into it."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipelines.store import Store

os.environ.setdefault("DISTILLERY_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def write_version(store: Store, rows: list[dict], step: str = "preprocess", config: dict | None = None,
                  name: str | None = None, chunk_rows: int = 2, parents: list[dict] | None = None) -> dict:
    """Write ``rows`` as a version (``chunk_rows`` rows per shard) and return its manifest."""
    writer = store.create_version(step, config or {"chunk_rows": chunk_rows},
                                  parents or [{"kind": "raw", "path": "memory", "sha256": "0" * 64}], name=name)
    for index, start in enumerate(range(0, len(rows), chunk_rows)):
        part = rows[start:start + chunk_rows]
        writer.write_chunk(index, pa.Table.from_pylist(part), accounting={"input_rows": len(part), "kept": len(part)})
    return writer.finalize()


@pytest.fixture
def make_version():
    return write_version
