"""Configuration as data: dataclasses loaded from TOML files, overridden by CLI flags."""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from pipelines.errors import DistilleryError

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a (nested) config dataclass to plain JSON-able data."""
    return dataclasses.asdict(cfg)


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DistilleryError(f"{where}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _build(hint, value, f"{where}.{name}")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                section: str | None = None) -> T:
    """Build ``cls`` from an optional TOML file (optionally one ``[section]`` of it) and overrides.

    Overrides whose value is ``None`` are ignored, so unset CLI flags keep the file's or the default value.
    Nested dataclasses may be overridden with dotted keys (``"mlm.batch_size"``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                loaded = tomllib.load(fh)
        except FileNotFoundError:
            raise DistilleryError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise DistilleryError(f"{path}: invalid TOML: {exc}") from None
        if section is not None:
            loaded = loaded.get(section, {})
        data.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _build(cls, data, str(path) if path else cls.__name__)
