"""CLI flags derived from config dataclasses: one flag per field (nested sections flattened), with the field's
help, type, choices and default, plus ``--config FILE.toml``; flags override the file, which overrides defaults."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from pipelines.config import load_config, read_toml
from pipelines.errors import DistilleryError

_SCALARS = {int: click.INT, float: click.FLOAT, str: click.STRING}


@dataclass(frozen=True)
class Flag:
    """One CLI flag: the dotted config key it sets, and the field declaring it."""

    key: str
    field: dataclasses.Field
    hint: Any

    @property
    def name(self) -> str:
        return self.field.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")

    def default_text(self) -> str:
        f = self.field
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(value, bool):
            return "on" if value else "off"
        if value is None or value == [] or value == ():
            return "none"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) and len(args) == 1 else hint


def config_flags(cls: type, prefix: str = "") -> list[Flag]:
    """The flags of a config class: its CLI fields, nested dataclasses flattened (dotted keys)."""
    hints = typing.get_type_hints(cls)
    flags: list[Flag] = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        hint = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(hint):
            flags += config_flags(hint, f"{prefix}{f.name}.")
        else:
            flags.append(Flag(f"{prefix}{f.name}", f, hint))
    names = [flag.name for flag in flags]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{cls.__name__}: several fields want the flag(s) {', '.join(clashes)}")
    return flags


def range_text(bounds: dict[str, float]) -> str:
    """A field's bounds as ``1 <= x <= 1024`` ('' when it has none)."""
    symbols = {"ge": "<=", "gt": "<", "le": "<=", "lt": "<"}
    low = [f"{value:,} {symbols[key]} " for key, value in bounds.items() if key in ("ge", "gt")]
    high = [f" {symbols[key]} {value:,}" for key, value in bounds.items() if key in ("le", "lt")]
    return f"{''.join(low)}x{''.join(high)}" if bounds else ""


def _click_option(flag: Flag) -> Callable:
    meta = flag.field.metadata
    text = meta.get("help", "")
    if meta.get("bounds"):
        text += f" ({range_text(meta['bounds'])})"
    if typing.get_origin(flag.hint) in (list, tuple):
        text += " Repeatable; commas separate values too."
    kwargs: dict[str, Any] = {"default": None, "help": f"{text}  [default: {flag.default_text()}]"}
    if flag.hint is bool:
        return click.option(f"--{flag.name}/--no-{flag.name}", flag.dest, **kwargs)
    if typing.get_origin(flag.hint) in (list, tuple):
        kwargs["multiple"] = True
    elif meta.get("choices"):
        kwargs["type"] = click.Choice([str(c) for c in meta["choices"]])
    else:
        kwargs["type"] = _SCALARS.get(flag.hint, click.STRING)
    return click.option(f"--{flag.name}", flag.dest, **kwargs)


def config_options(cls: type) -> Callable:
    """Decorate a command with ``--config`` and one option per field of ``cls``."""
    flags = config_flags(cls)

    def decorate(fn: Callable) -> Callable:
        for flag in reversed(flags):
            fn = _click_option(flag)(fn)
        return click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                            help=f"TOML file whose keys are the {cls.__name__} fields (its [section] table when it "
                                 f"has one); flags override it.")(fn)
    return decorate


def _list_value(values: tuple[str, ...], hint: Any) -> list[Any] | None:
    if not values:
        return None
    items = [part.strip() for value in values for part in value.split(",") if part.strip()]
    item_hint = (typing.get_args(hint) or (str,))[0]
    if hasattr(item_hint, "from_flag"):          # a table per item, written as one flag value (--mix REF=SHARE)
        return [item_hint.from_flag(x) for x in items]
    return [int(x) if item_hint is int and x.lstrip("-").isdigit() else x for x in items]


def _file_section(config_path: str | None, section: str) -> str | None:
    """``section`` when the file has that table (a pipeline file), else None (the file is this config alone)."""
    if config_path is None:
        return None
    try:
        return section if isinstance(read_toml(config_path).get(section), dict) else None
    except (OSError, DistilleryError):
        return None     # load_config reports the problem


def build_config(cls: type, section: str, config_path: str | None, params: dict[str, Any]) -> Any:
    """The config from defaults, the TOML file (its ``[section]`` table when it has one) and the given flags."""
    overrides: dict[str, Any] = {}
    for flag in config_flags(cls):
        value = params.pop(flag.dest, None)
        if typing.get_origin(flag.hint) in (list, tuple):
            value = _list_value(value or (), flag.hint)
        if value is None:
            continue
        overrides[flag.key] = value
        parent = flag.key.rpartition(".")[0]
        for key, implied in flag.field.metadata.get("implies", {}).items():
            overrides.setdefault(f"{parent}.{key}" if parent else key, implied)
    return load_config(cls, config_path, overrides, section=_file_section(config_path, section))
