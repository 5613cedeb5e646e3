"""Atomic file writes: a temporary file, fsync, then a rename, so a reader never sees half a file.

Temporary names are unique per writer (process id and a random part), so two writers never share one, and a
failed write removes its temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def temporary_sibling(path: Path) -> Iterator[Path]:
    """A unique temporary name beside ``path``, removed unless the caller renamed it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def replace_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)``, fsync ``tmp`` and rename it over ``path``."""
    with temporary_sibling(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    replace_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, data: Any) -> None:
    """Atomically write pretty, key-sorted JSON."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
                       .encode())
