"""Configuration as data: every option is declared once, on its dataclass field.

``option(default, help=..., choices=..., ge=..., runtime=True, ...)`` puts the option's help, allowed values,
range and runtime-only mark on the field; the field's type hint is its type. Validation (type, choices, range:
one-line errors naming the key), TOML loading, the recorded and the hashed config, and the CLI flags
(``distillery.cli.options``) all derive from these fields. A config class derives from ``Options`` and may add
cross-field rules in ``check``.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipelines.confine import open_regular
from pipelines.errors import DistilleryError

T = TypeVar("T")
_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


class ConfigError(DistilleryError):
    """An invalid config value; ``key`` is its dotted path (``filter.min_tokens``)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config key '{key}': {problem}")
        self.key, self.problem = key, problem

    def under(self, parent: str) -> ConfigError:
        """The same error seen from the field ``parent`` that holds this value."""
        if not parent:
            return self
        key = parent if not self.key else parent + self.key if self.key.startswith("[") else f"{parent}.{self.key}"
        return ConfigError(key, self.problem)


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           choices: Sequence[Any] | None = None, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, runtime: bool = False, cli: bool = True,
           implies: Mapping[str, Any] | None = None, omit_default: bool = False) -> Any:
    """A config field with its documentation and rules; its CLI flag is its name (``--near-threshold``).

    ``runtime``: changes how a step runs, never what it writes (left out of version ids and resume checks).
    ``cli=False``: TOML only; ``implies``: other fields (same dataclass) that giving the flag sets unless they
    are given too. ``omit_default``: in identities only when not the default (an option added after versions
    were written leaves their ids as they were).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
                "runtime": runtime, "cli": cli, "implies": dict(implies or {}), "omit_default": omit_default}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint`` (and lists turned into tuples, ints into floats where declared);
    a ``ConfigError`` names the part of the value that is wrong, relative to it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for alternative in (a for a in args if a is not type(None)):
            try:
                return _convert(value, alternative)
            except ConfigError as exc:
                problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        raise ConfigError("", f"expected {' or '.join(_type_name(a) for a in args)}, got {type(value).__name__} "
                              f"{value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return build(hint, value)
        raise ConfigError("", f"expected a table of {hint.__name__} keys, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            items = []
            for i, v in enumerate(value):
                try:
                    items.append(_convert(v, item))
                except ConfigError as exc:
                    raise exc.under(f"[{i}]") from None
            return tuple(items) if origin is tuple else items
    elif origin is dict or hint is dict:
        if isinstance(value, Mapping):
            value_hint = args[1] if len(args) == 2 else Any
            out = {}
            for k, v in value.items():
                try:
                    out[str(k)] = _convert(v, value_hint)
                except ConfigError as exc:
                    raise exc.under(str(k)) from None
            return out
    else:
        raise ConfigError("", f"unsupported type {hint}")
    raise ConfigError("", f"expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _check_rules(value: Any, meta: Mapping[str, Any], key: str) -> None:
    choices = meta.get("choices")
    if choices and value is not None and value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}")
    for bound, limit in (meta.get("bounds") or {}).items():
        symbol, ok = _BOUNDS[bound]
        if value is not None and not ok(value, limit):
            raise ConfigError(key, f"must be {symbol} {limit} (got {value!r})")


class Options:
    """Base of config dataclasses: validates every field on construction, then ``check`` (cross-field rules)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            try:
                value = _convert(getattr(self, f.name), hints[f.name])
            except ConfigError as exc:
                raise exc.under(f.name) from None
            _check_rules(value, f.metadata, f.name)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise ``ConfigError`` naming the key."""


def build(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)`` with unknown keys refused and nested tables built; errors name the dotted key."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key; valid keys here: {', '.join(names)}")
    return cls(**data)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; a missing file, one that is not a regular file, text that is not UTF-8 or invalid
    TOML is a one-line error naming the file."""
    try:
        with os.fdopen(open_regular(path), "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DistilleryError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DistilleryError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise DistilleryError(f"{path}: invalid TOML: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                section: str | tuple[str, ...] | None = None) -> T:
    """Build ``cls`` from an optional TOML file (optionally one ``[section]`` of it, or several, each later one's
    keys replacing the earlier ones') and overrides.

    Overrides whose value is ``None`` are ignored, so unset CLI flags keep the file's or the default value.
    Nested dataclasses may be overridden with dotted keys (``"filter.min_tokens"``).
    """
    data: dict[str, Any] = {}
    sections = (section,) if isinstance(section, str) else tuple(section or ())
    if path is not None:
        loaded = read_toml(path)
        for table in [loaded.get(name, {}) for name in sections] if sections else [loaded]:
            data.update(table)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return build(cls, data)
    except ConfigError as exc:
        place = f"{path}{''.join(f' [{name}]' for name in sections)}: " if path else ""
        raise DistilleryError(f"{place}{exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The recorded form of a config: plain JSON-able data, every field."""
    return dataclasses.asdict(cfg)


def runtime_fields(cls: Any) -> frozenset[str]:
    """Names of the fields marked ``runtime`` (top level of ``cls``)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))


def identity_dict(cfg: Any) -> dict[str, Any]:
    """The config without its runtime-only fields and its ``omit_default`` fields at their defaults (at any
    depth): what a version id or a run's identity hashes."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("runtime") or (f.metadata.get("omit_default") and value == f.default):
            continue
        out[f.name] = identity_dict(value) if dataclasses.is_dataclass(value) else to_plain(value)
    return out


def to_plain(value: Any) -> Any:
    """Tuples as lists, dataclasses as dicts: the JSON form of a value."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
