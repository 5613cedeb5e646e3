"""Content-keyed caches of derived files (converted word vectors, exported masked LMs).

Every cache lives under one root (env ``DISTILLERY_CACHE``, default ``~/.cache/distillery``), one folder per kind.
An entry is built in a new temporary folder and renamed into place, with a record (``CACHE_RECORD``) of the
source's sha256 and each file's size and sha256; it is checked against that record on every use, so a damaged
entry, one made from another source or one whose files were swapped is built again, and a symlink or a file in an
entry's place is refused, never followed.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines import fingerprint
from pipelines.atomic import temporary_sibling, write_json_atomic
from pipelines.confine import is_regular, open_regular
from pipelines.errors import DistilleryError

CACHE_RECORD = "source.json"      # in an entry: the source's sha256, each file's size and sha256


def cache_root(kind: str) -> Path:
    """Folder of one kind of cache entries (env DISTILLERY_CACHE, default ~/.cache/distillery)."""
    return Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery")) / kind


def entry_problem(entry: Path, source_sha256: str, names: Sequence[str], what: str) -> str | None:
    """What is wrong with a cache entry (None: nothing): missing, damaged, or not made from the source with this
    sha256. A symlink, a file or a special file in the entry's place is refused (``what`` names the cache)."""
    if not os.path.lexists(entry):
        return "not built yet"
    if not stat.S_ISDIR(os.lstat(entry).st_mode):
        raise DistilleryError(f"{what} entry {entry} is not a folder (a symlink or a file); refusing to use it "
                              f"(remove it)")
    if not is_regular(entry / CACHE_RECORD):
        return f"no {CACHE_RECORD}"
    try:
        with os.fdopen(open_regular(entry / CACHE_RECORD, follow=False), encoding="utf-8") as fh:
            record = json.load(fh)
    except (ValueError, OSError, DistilleryError):
        return f"{CACHE_RECORD} is damaged"
    if not isinstance(record, dict) or record.get("source_sha256") != source_sha256:
        return "made from another source"
    files = record.get("files")
    for name in names:
        expected = files.get(name) if isinstance(files, dict) else None
        path = entry / name
        if (not isinstance(expected, dict) or not is_regular(path) or os.lstat(path).st_size != expected.get("bytes")
                or fingerprint.file_sha256(path) != expected.get("sha256")):
            return f"{name} is not the file built"
    return None


def write_entry(target: Path, source: str, source_sha256: str, names: Sequence[str], what: str,
                build: Callable[[Path], Any], extra: dict[str, Any] | None = None) -> None:
    """Build an entry with ``build(folder)`` (which writes ``names`` there) in a new temporary folder, record it
    and rename it into place; a damaged entry there is set aside and deleted; if another process put a good one
    there first, theirs stays."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    if root.is_symlink() or not root.is_dir():
        raise DistilleryError(f"{what} folder {root} is not a real folder; refusing to write through it")
    with temporary_sibling(target, directory=True) as tmp:
        build(tmp)
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": fingerprint.file_sha256(tmp / name)}
                 for name in names}
        write_json_atomic(tmp / CACHE_RECORD, {"source": source, "source_sha256": source_sha256, "files": files,
                                               **(extra or {})})
        if os.path.lexists(target):            # a damaged entry (a real folder: entry_problem refused the rest)
            with temporary_sibling(target, directory=True) as aside:
                os.replace(target, aside)          # set aside, then deleted
        with contextlib.suppress(OSError):         # another process built it first
            os.replace(tmp, target)
