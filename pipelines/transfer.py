"""``versions push`` and ``versions pull``: copy complete versions between the local store and a remote.

Both copy only the files the other side lacks, check every file that arrives against the manifest's sha256, and
write the manifest last, so a version is visible on the other side only when complete: a copy killed midway
leaves nothing visible and is continued by running it again (files already there are kept; on a remote, a file
of the right size is kept, since an object store's put is all or nothing and a local remote is written by
rename; pulls, streams and ``verify`` re-check its sha256). Two copies of one version at once are safe: every
write is of the same bytes to the same content-addressed key, the manifest last. Names come along as refs; a ref
that already points at another version on the receiving side is not moved without ``force``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import fingerprint
from pipelines.atomic import WriterLock, temporary_sibling, write_bytes_atomic
from pipelines.cards import write_card
from pipelines.confine import is_regular, member, open_regular, real_dir, regular_member
from pipelines.errors import DistilleryError
from pipelines.remote import Remote
from pipelines.store import ANY_FILE_RE, CARD, MANIFEST, Store, check_manifest


@dataclass
class TransferReport:
    """What a push or pull did: versions copied or already there, files copied or kept, bytes moved, refs set."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    files_copied: int = 0
    files_kept: int = 0
    bytes_copied: int = 0
    refs: list[str] = field(default_factory=list)


def _files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return manifest["shards"] + manifest["rejects"]


def _chain(vid: str, lineage: list[dict[str, Any]], with_parents: bool) -> list[str]:
    """``vid`` and (if asked) its ancestors found on the sending side, ancestors first, each once."""
    if not with_parents:
        return [vid]
    found = [e["version_id"] for e in lineage if "version_id" in e and e.get("step") not in ("missing", "unreadable")]
    return list(dict.fromkeys(reversed(found)))


def _refs_to_move(sending: dict[str, str], receiving: Callable[[str, str], str | None], chain: list[str],
                  force: bool, where: str) -> list[tuple[str, str, str]]:
    """The refs of the sending side that point at ``chain``: (name, tag, id); refused, naming the first, when one
    already points at another version on the receiving side (unless ``force``)."""
    moves = []
    for ref, vid in sending.items():
        if vid not in chain:
            continue
        name, _, tag = ref.partition("@")
        current = receiving(name, tag)
        if current not in (None, vid) and not force:
            raise DistilleryError(f"{ref} on {where} points at version {current[:12]}, not {vid[:12]}; not moved "
                                  f"(use --force to move it)")
        moves.append((name, tag, vid))
    return moves


def _local_md5_sha(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def push(store: Store, ref: str, remote: Remote, with_parents: bool = False, force: bool = False,
         progress: Callable[[str], None] | None = None) -> TransferReport:
    """Copy version ``ref`` (and, if asked, its ancestors) from ``store`` to ``remote``, with the refs that point at
    them; see the module docstring."""
    vid = store.hold(ref)
    chain = _chain(vid, store.lineage(vid), with_parents)
    moves = _refs_to_move(store.refs(), remote.read_ref, chain, force, f"remote {remote.url}")
    report = TransferReport()
    for version in chain:
        _push_version(store, remote, store.hold(version), report, progress)
    for name, tag, version in moves:
        remote.write_ref(name, tag, version)
        report.refs.append(f"{name}@{tag}")
    return report


def _push_version(store: Store, remote: Remote, vid: str, report: TransferReport,
                  progress: Callable[[str], None] | None) -> None:
    if remote.is_complete(vid):
        remote.manifest_bytes(vid)                       # a damaged remote manifest is named, not trusted
        report.present.append(vid)
        return
    manifest = store.manifest(vid)
    folder = store.version_path(vid)
    store.shard_paths(vid)
    store.reject_paths(vid)                              # both checked against the manifest before any upload
    for entry in _files(manifest):
        key = remote.file_key(vid, entry["path"])
        if remote.size(key) == entry["bytes"]:
            report.files_kept += 1
            continue
        path = regular_member(folder, entry["path"], ANY_FILE_RE, f"version {vid[:12]}")
        if progress:
            progress(f"push {vid[:12]} {entry['path']} ({entry['bytes']} bytes)")
        md5, sha = _local_md5_sha(path)
        if sha != entry["sha256"]:
            raise DistilleryError(f"version {vid[:12]}: shard {entry['path']} changed while pushed; run "
                                  f"`distillery versions verify {vid[:12]}`")
        remote.put_file(path, key)
        _check_arrival(remote, vid, entry, key, md5)
        report.files_copied += 1
        report.bytes_copied += entry["bytes"]
    if is_regular(folder / CARD):
        remote.put_bytes(remote.file_key(vid, CARD), _own_bytes(folder / CARD))
    remote.put_bytes(remote.file_key(vid, MANIFEST), _own_bytes(folder / MANIFEST))   # as stored: same bytes
    report.copied.append(vid)


def _own_bytes(path: Path) -> bytes:
    with os.fdopen(open_regular(path, follow=False), "rb") as fh:
        return fh.read()


def _check_arrival(remote: Remote, vid: str, entry: dict[str, Any], key: str, md5: str) -> None:
    """The uploaded file is the shard: its size, and its MD5 where the object store reports one (ETag of a single
    put), else its sha256 read back."""
    if remote.size(key) != entry["bytes"]:
        raise DistilleryError(f"remote {remote.url}: {entry['path']} of version {vid[:12]} arrived with another "
                              f"size; rerun the push")
    etag = remote.etag_md5(key)
    if (etag is not None and etag != md5) or (etag is None and remote.sha256(vid, entry) != entry["sha256"]):
        raise DistilleryError(f"remote {remote.url}: {entry['path']} of version {vid[:12]} arrived damaged; rerun "
                              f"the push")


def pull(remote: Remote, ref: str, store: Store, with_parents: bool = False, force: bool = False,
         progress: Callable[[str], None] | None = None) -> TransferReport:
    """Copy version ``ref`` (and, if asked, its ancestors) from ``remote`` into ``store``, with the remote's refs
    that point at them; see the module docstring."""
    vid = remote.resolve(ref)
    chain = _chain(vid, remote.lineage(vid), with_parents)
    store.root.mkdir(parents=True, exist_ok=True)
    moves = _refs_to_move(remote.refs(), store.read_ref, chain, force, f"store {store.root}")
    report = TransferReport()
    for version in chain:
        _pull_version(remote, store, version, report, progress)
    for name, tag, version in moves:
        store.tag(name, tag, version)
        report.refs.append(f"{name}@{tag}")
    return report


def _pull_version(remote: Remote, store: Store, vid: str, report: TransferReport,
                  progress: Callable[[str], None] | None) -> None:
    if store.is_complete(vid):
        report.present.append(vid)
        return
    raw, manifest = remote.manifest_bytes(vid)
    real_dir(store.versions_dir, "store folder", create=True)
    real_dir(store.root / "locks", "store folder", create=True)
    with WriterLock(store.lock_path(vid), f"version {vid[:12]}"):
        if store.is_complete(vid):
            report.present.append(vid)
            return
        folder = real_dir(store.version_path(vid), "version folder", create=True)
        for entry in _files(manifest):
            target = member(folder, entry["path"], ANY_FILE_RE, f"version {vid[:12]}")
            real_dir(target.parent, "version folder", create=True)
            if is_regular(target) and target.stat().st_size == entry["bytes"] \
                    and fingerprint.file_sha256(target) == entry["sha256"]:
                report.files_kept += 1
                continue
            if progress:
                progress(f"pull {vid[:12]} {entry['path']} ({entry['bytes']} bytes)")
            with temporary_sibling(target) as tmp:
                remote.download(vid, entry, tmp)
                os.replace(tmp, target)
            report.files_copied += 1
            report.bytes_copied += entry["bytes"]
        card = remote.card(vid)
        if card is not None:
            write_bytes_atomic(folder / CARD, card)
        else:
            write_card(folder / CARD, manifest, store.ancestry(manifest["parents"]))
        check_manifest(manifest, vid)
        write_bytes_atomic(folder / MANIFEST, raw)              # last: now the version is complete here
    report.copied.append(vid)
