"""Atomic, confined file writes: a new temporary file, fsync, then a rename, so a reader never sees half a file.

Every file distillery writes (store, export, run folders, caches) goes through ``temporary_sibling``: a unique
name (process id and 128 random bits) created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a write never lands in an
existing file or follows a planted symlink, and a failed write removes its temporary file. ``WriterLock`` keeps a
second writer away from what one is writing; its lock file is opened without following symlinks and must be a
regular file with one link, so a planted link cannot make a lock truncate another file.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.confine import real_dir
from pipelines.errors import DistilleryError

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: Path, mode: int = 0o644) -> int:
    """Create ``path`` as a new, empty regular file and return its descriptor; an existing file or symlink of that
    name is an error (``FileExistsError``), never opened."""
    return os.open(path, _NEW_FILE, mode)


@contextlib.contextmanager
def temporary_sibling(path: Path, directory: bool = False) -> Iterator[Path]:
    """A new, empty temporary file (or folder) with a unique name beside ``path``, removed unless the caller renamed
    it over ``path``. It is created by this call (``O_EXCL | O_NOFOLLOW``, or ``mkdir``), so it is never a file
    or a link someone planted."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    if directory:
        tmp.mkdir(mode=0o755)
    else:
        os.close(create_new(tmp))
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            if directory and not tmp.is_symlink() and tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def replace_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, fsync it and rename it over ``path``."""
    with temporary_sibling(path) as tmp:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a new temporary file, fsync and rename."""
    with temporary_sibling(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Atomically write pretty, key-sorted JSON."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
                       .encode())


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file of ours (created if missing); a symlink, a special file or a file with
    other hard links in its place is refused, never written through."""
    fd = _open_own_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "log file")
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")


def _open_own_file(path: Path, flags: int, what: str) -> int:
    """Open a file distillery keeps (a lock, a log) without following a symlink; it must be a regular file with
    a single link, so that writing to it cannot reach any other file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DistilleryError(f"{what} {path} is a symlink; refusing to follow it (remove it)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = "has other hard links" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise DistilleryError(f"{what} {path} {kind}; refusing to write to it (remove it)")
    return fd


def fill_folder(folder: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a new, empty temporary folder beside ``folder``, then move what it wrote into
    ``folder``: the whole temporary folder when ``folder`` does not exist, else file by file, each replacing only a
    regular file (or filling a real folder) of the same name; what else ``folder`` holds is left as it is."""
    with temporary_sibling(folder, directory=True) as tmp:
        write(tmp)
        if not os.path.lexists(folder):
            os.replace(tmp, folder)
        else:
            _move_into(tmp, real_dir(folder, "folder"))
    return folder


def _move_into(source: Path, target: Path) -> None:
    for item in sorted(source.iterdir()):
        destination = target / item.name
        if item.is_dir() and os.path.lexists(destination):
            _move_into(item, real_dir(destination, "folder"))
            continue
        if os.path.lexists(destination) and (item.is_dir() or not stat.S_ISREG(os.lstat(destination).st_mode)):
            raise DistilleryError(f"{destination} is not a regular file as distillery writes it (a symlink, a "
                                  f"folder or a special file); refusing to replace it (remove it)")
        os.replace(item, destination)


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

    def __init__(self, path: Path, what: str, wait: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = os.fdopen(_open_own_file(path, os.O_RDWR | os.O_CREAT, "lock file"), "r+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read(500).strip() or "another process"
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
        """Whether a live process holds the lock at ``path`` (writing, or reading with ``shared_lock``)."""
        try:
            fd = _open_own_file(path, os.O_RDONLY, "lock file")
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
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


_SHARED: dict[str, int] = {}


def shared_lock(path: Path) -> None:
    """Hold a shared ``flock`` on ``path`` for the rest of this process: the mark of a reader, which a deleting
    process (``versions gc``) respects. Waits while an exclusive holder deletes. Where the lock cannot be taken (a
    read-only store, no lock folder) the reader goes on without it: nothing can delete there either."""
    key = str(path)
    if key in _SHARED:
        return
    try:
        fd = _open_own_file(path, os.O_RDONLY | os.O_CREAT, "lock file")
    except OSError:
        try:
            fd = _open_own_file(path, os.O_RDONLY, "lock file")
        except OSError:
            return
    fcntl.flock(fd, fcntl.LOCK_SH)
    _SHARED[key] = fd
