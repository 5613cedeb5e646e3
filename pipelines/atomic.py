"""Atomic file writes: a temporary file, fsync, then a rename, so a reader never sees half a file.

Temporary names are unique per writer (process id and a random part), so two writers never share one, and a
failed write removes its temporary file. ``WriterLock`` keeps a second writer away from what one is writing.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import DistilleryError


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


_HELD: set[WriterLock] = set()


def _close_inherited_locks() -> None:
    """In a forked child: close (never unlock: the lock is shared with the parent) the copies of the parent's lock
    files, so that a child outliving a killed writer does not keep its version locked."""
    for lock in _HELD:
        lock.fh.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class WriterLock:
    """An exclusive ``flock`` on ``path``, held while one process writes something (a version, a run folder).
    The kernel drops it when its process dies (forked helpers do not inherit it), so the lock of a crashed writer
    is simply taken over; the file says who holds it. ``what`` names the thing in the error a second writer gets."""

    def __init__(self, path: Path, what: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise DistilleryError(f"{what} is being written by {holder}; wait for it to finish (then this "
                                  f"command finds it up to date) or stop that process") from None
        self.fh.seek(0)
        self.fh.truncate()
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.fh.write(f"process {os.getpid()} on {socket.gethostname()} (since {started})\n")
        self.fh.flush()
        _HELD.add(self)

    @classmethod
    def held(cls, path: Path) -> bool:
        """Whether a live process holds the lock at ``path``."""
        if not path.exists():
            return False
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        _HELD.discard(self)
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
