"""Remotes: a second home for a store's versions on any fsspec filesystem (``s3://``, ``gs://``, ``file://``,
``memory://``, ...), with the local store's layout::

    <url>/versions/<id>/manifest.json      written last: a version is on the remote iff it exists
    <url>/versions/<id>/README.md          data card
    <url>/versions/<id>/data/shard-NNNNN.parquet, rejects/rejects-NNNNN.parquet
    <url>/refs/<name>/<tag>                a version id

A remote is as untrusted as a file a user downloaded: its manifests pass ``store.check_manifest`` (file paths of
the fixed forms distillery writes, so none leads out of its version), refs must hold version ids, reads are size
limited, and every shard is checked against its manifest's sha256 when it arrives (``pipelines.transfer`` and
``pipelines.shard_cache``) or where it lies (``verify``). Credentials come the standard way of each back end
(environment, config files); ``FSSPEC_S3_ENDPOINT_URL`` and the like set fsspec options from the environment.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from pipelines.errors import DistilleryError, VersionNotFoundError
from pipelines.store import ANY_FILE_RE, CARD, ID_RE, MANIFEST, NAME_RE, check_manifest, resolve_ref

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
BLOCK = 4 << 20                       # bytes per read of a remote file
MANIFEST_LIMIT = 64 << 20
CARD_LIMIT = 8 << 20


def is_remote_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL with a protocol (``s3://...``, ``file:///...``), not a local path."""
    return bool(_URL_RE.match(str(text)))


@contextlib.contextmanager
def remote_errors(url: str, what: str) -> Iterator[None]:
    """Turn a back end's exception (network, permissions, a missing bucket) into one line naming the remote."""
    try:
        yield
    except (DistilleryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - every back end raises its own kinds
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise DistilleryError(f"remote {url}: {what} failed ({type(exc).__name__}: {first[:200]})") from None


class Remote:
    """The versions and refs at a remote URL, read and written through fsspec."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        if not is_remote_url(url):
            raise DistilleryError(f"'{url}' is not a remote URL (s3://bucket/prefix, gs://bucket/prefix, "
                                  f"file:///path, ...)")
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        try:
            self._fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except ImportError as exc:
            raise DistilleryError(f"remote {self.url}: {exc} (the cloud back ends come with "
                                  f"`pip install 'distillery[remote]'`)") from None
        except ValueError as exc:
            raise DistilleryError(f"remote {self.url}: {exc}") from None
        self._pid = os.getpid()
        self.root = root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.renames = "file" in protocols     # a local filesystem: write under a new name, then rename

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem, made again in a forked process (some back ends, s3fs among them, are not fork-safe)."""
        if self._pid != os.getpid():
            self._fs = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **self.storage_options)[0]
            self._pid = os.getpid()
        return self._fs

    # ---- keys ------------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def file_key(self, vid: str, relative: str) -> str:
        """The key of a file of version ``vid``: ``relative`` must be a name distillery writes (so it stays in
        the version's folder, whatever a manifest says)."""
        if not ID_RE.fullmatch(vid):
            raise DistilleryError(f"'{vid[:80]}' is not a version id (64 hex digits)")
        if relative not in (MANIFEST, CARD) and not ANY_FILE_RE.fullmatch(relative):
            raise DistilleryError(f"remote {self.url}: path {relative!r} of version {vid[:12]} is not one "
                                  f"distillery writes (it must stay inside the version)")
        return self.key("versions", vid, relative)

    # ---- small reads -----------------------------------------------------------------------------
    def size(self, key: str) -> int | None:
        """The size of the object at ``key`` (None when there is none)."""
        with remote_errors(self.url, f"reading {key}"):
            self.fs.invalidate_cache(key.rsplit("/", 1)[0])      # another process may have written it since
            try:
                info = self.fs.info(key)
            except FileNotFoundError:
                return None
        return None if info.get("type") == "directory" else int(info["size"])

    def read_bytes(self, key: str, limit: int) -> bytes:
        """The bytes at ``key``, at most ``limit`` of them (a larger object is refused: not a file we wrote)."""
        with remote_errors(self.url, f"reading {key}"), self.fs.open(key, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise DistilleryError(f"remote {self.url}: {key} is larger than {limit} bytes; not a file distillery "
                                  f"wrote")
        return data

    def read_ref(self, name: str, tag: str) -> str | None:
        key = self.key("refs", name, tag)
        if self.size(key) is None:
            return None
        content = self.read_bytes(key, 200).decode("utf-8", "replace").strip()
        if not ID_RE.fullmatch(content):
            raise DistilleryError(f"remote {self.url}: ref {name}@{tag} is malformed (not a version id)")
        return content

    def refs(self) -> dict[str, str]:
        """Every well-formed ``name@tag`` -> version id on the remote (malformed refs are left out)."""
        out = {}
        base = self.key("refs")
        with remote_errors(self.url, "listing refs"):
            try:
                keys = self.fs.find(base, maxdepth=2)
            except FileNotFoundError:
                keys = []
        for key in sorted(keys):
            parts = key[len(base):].strip("/").split("/")
            if len(parts) == 2 and all(NAME_RE.fullmatch(p) for p in parts):
                with contextlib.suppress(DistilleryError):
                    vid = self.read_ref(*parts)
                    if vid:
                        out[f"{parts[0]}@{parts[1]}"] = vid
        return out

    def version_ids(self) -> list[str]:
        """Ids of the complete versions on the remote (those with a manifest)."""
        with remote_errors(self.url, "listing versions"):
            found = self.fs.glob(self.key("versions", "*", MANIFEST))
        ids = {str(k).rstrip("/").split("/")[-2] for k in found}
        return sorted(v for v in ids if ID_RE.fullmatch(v))

    def is_complete(self, vid: str) -> bool:
        return bool(ID_RE.fullmatch(vid)) and self.size(self.file_key(vid, MANIFEST)) is not None

    def resolve(self, ref: str) -> str:
        """``name@tag``, ``name`` (= ``name@latest``), a full id or a unique id prefix, on the remote."""
        if ID_RE.fullmatch(ref) and self.is_complete(ref):
            return ref
        return resolve_ref(ref, self.read_ref, self.version_ids, f"on remote {self.url}",
                           f"distillery --store {self.url} versions list")

    def manifest_bytes(self, vid: str) -> tuple[bytes, dict[str, Any]]:
        """The manifest file of version ``vid`` as stored, and its checked content."""
        if not self.is_complete(vid):
            raise VersionNotFoundError(f"version {vid[:12]} is not complete on remote {self.url}")
        raw = self.read_bytes(self.file_key(vid, MANIFEST), MANIFEST_LIMIT)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise DistilleryError(f"remote {self.url}: manifest of version {vid[:12]} is damaged (not JSON)") from None
        return raw, check_manifest(data, vid)

    def manifest(self, ref: str) -> dict[str, Any]:
        return self.manifest_bytes(self.resolve(ref))[1]

    def card(self, vid: str) -> bytes | None:
        key = self.file_key(vid, CARD)
        return self.read_bytes(key, CARD_LIMIT) if self.size(key) is not None else None

    def lineage(self, ref: str, depth: int = 0, seen: set[str] | None = None) -> list[dict[str, Any]]:
        """The version and its ancestors on the remote, depth first (ancestors not there have step 'missing')."""
        vid = self.resolve(ref)
        seen = seen if seen is not None else set()
        manifest = self.manifest_bytes(vid)[1]
        chain = [{"depth": depth, "version_id": vid, "step": manifest["step"], "name": manifest["name"],
                  "num_rows": manifest["num_rows"]}]
        seen.add(vid)
        for parent in manifest["parents"]:
            if "version_id" not in parent:
                chain.append({"depth": depth + 1, "raw": parent.get("path"), "sha256": parent.get("sha256")})
            elif parent["version_id"] in seen:
                continue
            elif self.is_complete(parent["version_id"]):
                chain += self.lineage(parent["version_id"], depth + 1, seen)
            else:
                chain.append({"depth": depth + 1, "version_id": parent["version_id"], "step": "missing"})
        return chain

    # ---- whole files -----------------------------------------------------------------------------
    def open_file(self, vid: str, entry: dict[str, Any]) -> BinaryIO:
        with remote_errors(self.url, f"opening {entry['path']} of version {vid[:12]}"):
            return self.fs.open(self.file_key(vid, entry["path"]), "rb", block_size=BLOCK)

    def download(self, vid: str, entry: dict[str, Any], target: Path) -> None:
        """Copy a file of ``vid`` (a manifest entry) into the new file ``target``, checking its size and sha256
        on the way: a file that differs (or grows past its size) is refused, naming it, and ``target`` is left
        for the caller to remove."""
        digest = hashlib.sha256()
        size = 0
        with remote_errors(self.url, f"downloading {entry['path']} of version {vid[:12]}"), \
                self.open_file(vid, entry) as src, open(target, "wb") as dst:
            while chunk := src.read(BLOCK):
                size += len(chunk)
                if size > entry["bytes"]:
                    break
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
            raise DistilleryError(f"remote {self.url}: {entry['path']} of version {vid[:12]} is damaged (its bytes "
                                  f"differ from the manifest's sha256); nothing was read from it")

    def sha256(self, vid: str, entry: dict[str, Any]) -> str:
        """The sha256 of a file of ``vid`` where it lies (read through)."""
        digest = hashlib.sha256()
        with remote_errors(self.url, f"reading {entry['path']} of version {vid[:12]}"), \
                self.open_file(vid, entry) as src:
            while chunk := src.read(BLOCK):
                digest.update(chunk)
        return digest.hexdigest()

    def verify(self, ref: str) -> list[str]:
        """Re-hash every file of a version where it lies; the problems found (empty when intact)."""
        vid = self.resolve(ref)
        manifest = self.manifest_bytes(vid)[1]
        problems = []
        for entry in manifest["shards"] + manifest["rejects"]:
            size = self.size(self.file_key(vid, entry["path"]))
            if size is None:
                problems.append(f"{entry['path']}: missing")
            elif size != entry["bytes"]:
                problems.append(f"{entry['path']}: size {size} != {entry['bytes']} in manifest")
            elif (digest := self.sha256(vid, entry)) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 {digest[:12]} != {entry['sha256'][:12]} in manifest")
        return problems

    # ---- writes ----------------------------------------------------------------------------------
    def _write(self, key: str, put: Any) -> None:
        """``put(key)`` writes an object; on a local filesystem under a new name renamed over ``key`` (an object
        store's single put is already all or nothing)."""
        with remote_errors(self.url, f"writing {key}"):
            self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
            if not self.renames:
                put(key)
                return
            tmp = f"{key}.{uuid.uuid4().hex}.tmp"
            try:
                put(tmp)
                self.fs.mv(tmp, key)
            finally:
                with contextlib.suppress(FileNotFoundError, OSError):
                    if self.fs.exists(tmp):
                        self.fs.rm(tmp)

    def put_file(self, local: Path, key: str) -> None:
        self._write(key, lambda target: self.fs.put_file(str(local), target))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda target: self.fs.pipe_file(target, data))

    def write_ref(self, name: str, tag: str, vid: str) -> None:
        for part in (name, tag):
            if not NAME_RE.fullmatch(part):
                raise DistilleryError(f"invalid name or tag {part!r}")
        self.put_bytes(self.key("refs", name, tag), (vid + "\n").encode())

    def etag_md5(self, key: str) -> str | None:
        """The MD5 an object store reports for a single-part upload (its ETag), when it reports one."""
        with remote_errors(self.url, f"reading {key}"):
            info = self.fs.info(key)
        etag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or "").strip('"')
        return etag.lower() if re.fullmatch(r"[0-9a-fA-F]{32}", etag) else None
