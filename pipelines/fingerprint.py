"""Content hashes: files, folders, a step's code, and content-addressed version ids."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.confine import check_input, open_regular

_CHUNK = 1 << 20
_LIBRARIES = ("distillery", "pyarrow", "datasets", "torch", "transformers", "tokenizers", "gensim", "numpy",
              "multiprocess", "click", "datasketch")
SOURCE_ROOT = Path(__file__).resolve().parent.parent      # the folder holding the top-level packages


def file_sha256(path: str | Path) -> str:
    """Streamed sha256 of a regular file's bytes (a FIFO or a device is refused, never read)."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file below a folder (sorted); a device, FIFO or socket
    among them is refused, never skipped nor read."""
    root = Path(path)
    digest = hashlib.sha256()
    entries = list(root.rglob("*"))
    for entry in entries:
        if not entry.is_dir():
            check_input(entry)
    for item in sorted(p for p in entries if p.is_file()):
        digest.update(item.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's tree."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)


# What distillery writes beside a model (its card, scores, evaluations): not part of the model's identity.
MODEL_METADATA = frozenset({"README.md", "scores.json", "evaluations.json", "card.json"})
MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def model_file_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of each weight, config and tokenizer file of a model folder (its metadata left out)."""
    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.suffix in MODEL_SUFFIXES and p.name not in MODEL_METADATA}


def model_sha256(folder: str | Path) -> str:
    """A model folder's identity: its weights, config and tokenizer, whatever card or scores sit beside them."""
    return hashlib.sha256(canonical_json(model_file_hashes(folder)).encode()).hexdigest()


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spacing: the form every hash is taken over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# ---- the code of a step ----------------------------------------------------------------------------------
def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of ``module`` below ``root`` (a module file or a package's ``__init__.py``)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an AST imports, at any depth (inside functions too); ``from X import Y`` also gives
    ``X.Y``, which is a module when Y is one. Relative imports are resolved against ``module``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def normalised_source(path: Path) -> str:
    """A module's code without comments, docstrings or formatting (as ``ast.unparse`` writes it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def step_modules(entry: str, package: str, root: Path = SOURCE_ROOT) -> list[str]:
    """The modules of ``package`` that module ``entry`` runs: itself and what it imports from ``package``,
    transitively (with the ``__init__`` of every package on the way)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen or not (name == package or name.startswith(package + ".")):
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo += sorted(imported_modules(tree, name, path.name == "__init__.py"))
    return sorted(seen)


@functools.cache
def code_fingerprint(entry: str, package: str, root: Path = SOURCE_ROOT) -> str:
    """sha256 over the normalised code of the modules of ``package`` that ``entry`` runs.

    Comments, docstrings and formatting do not count; code outside ``package`` (the foundation, the CLI,
    recipes, other steps) does not either.
    """
    digest = hashlib.sha256()
    for name in step_modules(entry, package, root):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(normalised_source(module_file(name, root)).encode()).digest())
    return digest.hexdigest()


# ---- versions --------------------------------------------------------------------------------------------
def library_version(name: str) -> str:
    """Installed version of a distribution, or 'not-installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not-installed"


def library_versions(names: Iterable[str] = _LIBRARIES) -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the bytes we write."""
    return {name: library_version(name) for name in names}


def parent_key(parent: dict[str, Any]) -> Any:
    """What a version id hashes of a parent: a version's id; for a raw input, its sha256 and everything else that
    decides how its bytes become rows (its resolved format, ...), all but the local path."""
    if parent.get("version_id"):
        return parent["version_id"]
    if not parent.get("sha256"):
        raise ValueError("every parent needs a version_id or a sha256")
    return {k: v for k, v in parent.items() if k != "path"}


def version_id(step: str, config: dict[str, Any], parents: list[dict[str, Any]], code: str) -> str:
    """Content-addressed id: sha256 over the parents' keys (``parent_key``), the step, its config (without
    runtime-only options) and its code fingerprint (with the step's output format number)."""
    parent_keys = [parent_key(p) for p in parents]
    payload = {"parents": parent_keys, "step": step, "config": config, "code": code}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
