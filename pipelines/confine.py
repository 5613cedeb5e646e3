"""Paths that come from files, and files that must be plain files: nothing leads out, nothing blocks.

A path read from a manifest, a chunk record or a ref is data, possibly hostile: ``member`` accepts only the names
distillery itself writes and resolves them inside their folder without following a symlink; ``regular_member``
also demands a regular file. Folders distillery keeps (the store's ``versions/``, ``refs/``, ``locks/``, a
version's ``data/``) must be real folders, never symlinks (``real_dir``). Inputs the user names may be symlinks,
but must lead to a regular file or a folder (``check_input``): a device, a FIFO or a socket is refused before any
read, so nothing hangs on ``/dev/zero`` or a pipe.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from pipelines.errors import DistilleryError


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def is_regular(path: Path) -> bool:
    """Whether ``path`` itself (not what a symlink points at) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def real_dir(path: Path, what: str, create: bool = False, parents: bool = False) -> Path:
    """``path`` as a real folder (created if asked and missing, with its parents if asked); a symlink, a file or a
    special file in its place is refused, never followed."""
    if create:
        try:
            path.mkdir(parents=parents, exist_ok=True)
        except FileExistsError:
            pass                                 # a file or a dangling symlink of that name: named below
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise DistilleryError(f"{what} {path} does not exist") from None
    if not stat.S_ISDIR(mode):
        raise DistilleryError(f"{what} {path} is {_kind(mode)}, not a folder; refusing to write through it "
                              f"(remove it)")
    return path


def member(base: Path, relative: Any, pattern: re.Pattern[str], what: str) -> Path:
    """``base / relative`` for a ``relative`` path read from a file: a string of the form ``pattern`` allows (no
    absolute path, no ``..``), with no symlink on the way from ``base``."""
    if not isinstance(relative, str) or not pattern.fullmatch(relative):
        raise DistilleryError(f"{what}: path {relative!r} is not one distillery writes (it must stay inside "
                              f"{base})")
    path = base
    for part in relative.split("/")[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return base / relative
        if not stat.S_ISDIR(mode):
            raise DistilleryError(f"{what}: {path} is {_kind(mode)}, not a folder of its own")
    return base / relative


def regular_member(base: Path, relative: Any, pattern: re.Pattern[str], what: str) -> Path:
    """``member``, which must exist as a regular file (a symlink, FIFO or device is refused unread)."""
    path = member(base, relative, pattern, what)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise DistilleryError(f"{what}: {relative} is missing") from None
    if not stat.S_ISREG(mode):
        raise DistilleryError(f"{what}: {relative} is {_kind(mode)}, not a regular file; nothing was read from it")
    return path


def check_input(path: str | Path) -> os.stat_result:
    """An input the user named: a regular file or a folder (symlinks followed); anything else is refused."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DistilleryError(f"input not found: {path}") from None
    except OSError as exc:
        raise DistilleryError(f"{path}: cannot read ({exc.strerror})") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise DistilleryError(f"{path} is {_kind(info.st_mode)}, not a file or folder; refusing to read it")
    return info


def open_regular(path: str | Path, follow: bool = True) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (checked on the open file, so it cannot
    be swapped for a FIFO in between); ``follow=False`` also refuses a symlink."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow and exc.errno == 40:       # ELOOP: a symlink
            raise DistilleryError(f"{path} is a symlink; refusing to follow it") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DistilleryError(f"{path} is {_kind(mode)}, not a regular file; refusing to read it")
    os.set_blocking(fd, True)
    return fd


def read_own_text(path: Path) -> str:
    """The text of a file distillery wrote (a log, a record), read without following a symlink; a FIFO or a
    device in its place is refused unread."""
    with os.fdopen(open_regular(path, follow=False), encoding="utf-8", errors="replace") as fh:
        return fh.read()


_MISSING: Any = object()


def read_own_json(path: Path, default: Any = _MISSING, limit: int = 64 << 20) -> Any:
    """JSON a distillery command wrote (``default`` when there is no such file, if given), read without following
    a symlink and at most ``limit`` bytes; a damaged file (not JSON, too large, a FIFO or device) is a one-line
    error naming it, never a hang or a traceback."""
    if default is not _MISSING and not os.path.lexists(path):
        return default
    with os.fdopen(open_regular(path, follow=False), "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DistilleryError(f"{path} is larger than {limit} bytes; not a file distillery wrote")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise DistilleryError(f"{path} is damaged (not valid JSON); remove it or restore it") from None
