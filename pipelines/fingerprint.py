"""Content hashes: files, code version and content-addressed version ids."""
from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

_CHUNK = 1 << 20
_PACKAGES = ("pipelines", "augment", "distill")
_LIBRARIES = ("distillery", "pyarrow", "datasets", "torch", "transformers", "tokenizers", "gensim", "numpy",
              "multiprocess", "click", "datasketch")


def file_sha256(path: str | Path) -> str:
    """Streamed sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file below a folder (sorted)."""
    root = Path(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(item.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's tree."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spacing: the form every hash is taken over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the source of its three packages.

    Any change of code that could change what a step writes gives new version ids.
    """
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode() + b"\0")
            digest.update(source.read_bytes())
    return f"{library_version('distillery')}+{digest.hexdigest()[:12]}"


def library_version(name: str) -> str:
    """Installed version of a distribution, or 'not-installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not-installed"


def library_versions(names: Iterable[str] = _LIBRARIES) -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the bytes we write."""
    return {name: library_version(name) for name in names}


RUNTIME_KEYS = frozenset({"workers", "num_workers", "device", "progress", "resume", "debug", "mlm_batch_size"})


def without_runtime_keys(config: Any, runtime_keys: frozenset[str] = RUNTIME_KEYS) -> Any:
    """Drop keys (at any depth) that change how a step runs but never what it writes."""
    if isinstance(config, dict):
        return {k: without_runtime_keys(v, runtime_keys) for k, v in config.items() if k not in runtime_keys}
    if isinstance(config, (list, tuple)):
        return [without_runtime_keys(v, runtime_keys) for v in config]
    return config


def version_id(step: str, config: dict[str, Any], parents: list[dict[str, Any]],
               runtime_keys: frozenset[str] = RUNTIME_KEYS) -> str:
    """Content-addressed id: sha256 over the parents' fingerprints, step, config and code version.

    Runtime-only keys (worker count, device, ...) are left out: they never change the bytes written.
    """
    config = without_runtime_keys(config, runtime_keys)
    parent_keys = [p.get("version_id") or p.get("sha256") for p in parents]
    if any(key is None for key in parent_keys):
        raise ValueError("every parent needs a version_id or a sha256")
    payload = {"parents": parent_keys, "step": step, "config": config, "code": code_version()}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
