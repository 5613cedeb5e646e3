"""The output schema of a preprocess run, derived once from the inputs, and value coercion into it.

* ``text`` (string), ``text_pair`` (string, when mapped), ``label`` (when mapped), extra columns, ``row_id``;
  a token-classification run: ``text`` (the tokens joined by spaces), ``tokens`` and ``tags`` (list<string>),
  extra columns, ``row_id``.
* The label keeps its type: string / int64 / float64. Parquet and saved Hugging Face datasets give it by
  their Arrow type; JSON by its values in the first rows (any string -> string, else int64 or float64);
  CSV/TSV labels (always text) become int64 or float64 when all the sampled values parse as such. A later
  value that does not fit is rejected (``wrong_type_label``). An empty or blank label is no label: the row is
  rejected (``missing_label``) and the label type is decided by the other values.
* Extra columns keep their Arrow type (Parquet / Hugging Face) or the type of their JSON values in the first
  rows (nested values and mixed types -> string holding JSON). Inputs that disagree on a type fall back to
  string. A later value that does not fit is stored as null and counted (``repaired.extra_value_nulled``);
  keys that were not in the sampled rows are dropped and counted (``repaired.extra_key_dropped``).
* An extra column whose name collides with an output column in use (``text``, ``row_id``, a mapped
  ``text_pair`` / ``label``, ``tokens`` / ``tags`` when tagging) is renamed ``src_<name>``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.errors import DistilleryError
from preprocess.text_clean import fix_surrogates

LABEL_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
STRING_LIST = pa.list_(pa.string())
REJECTS_SCHEMA = pa.schema([("origin_file", pa.string()), ("origin_row", pa.int64()),
                            ("reason", pa.string()), ("raw", pa.string())])
_INT64 = (-(2**63), 2**63 - 1)
_MAPPING_FLAGS = {False: "--text-column, --text-pair-column, --label-column", True: "--tokens-column, --tags-column"}


@dataclass
class OutputSchema:
    """Which columns a run writes and their types."""

    has_pair: bool = False
    label_kind: str | None = None                                       # string / int / float
    extras: list[tuple[str, str, pa.DataType]] = field(default_factory=list)   # (source, output name, type)
    tagging: bool = False                                               # tokens and tags (token classification)
    tag_names: dict[str, list[str]] = field(default_factory=dict)      # input -> names of its integer tags

    def candidate_schema(self) -> pa.Schema:
        """Columns written by the workers (everything but ``row_id``)."""
        fields = [pa.field("text", pa.string())]
        if self.tagging:
            fields += [pa.field("tokens", STRING_LIST), pa.field("tags", STRING_LIST)]
        if self.has_pair:
            fields.append(pa.field("text_pair", pa.string()))
        if self.label_kind:
            fields.append(pa.field("label", LABEL_TYPES[self.label_kind]))
        fields += [pa.field(out, typ) for _, out, typ in self.extras]
        return pa.schema(fields)


def _value_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


def _kinds_to_type(kinds: set[str]) -> pa.DataType:
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()


def _normalise_arrow_type(typ: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_integer(typ):
        return pa.int64()
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return pa.float64()
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pa.string()
    return typ


def _unify(a: pa.DataType | None, b: pa.DataType) -> pa.DataType:
    if a is None or a == b:
        return b
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def _parses(values: list[str], kind: type) -> bool:
    try:
        for value in values:
            kind(value)
    except ValueError:
        return False
    return bool(values)


def is_blank(value: Any) -> bool:
    """A label that is no label: missing, or an empty / whitespace-only string (an empty CSV field)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _label_kind_from_values(values: list[Any], from_text: bool) -> str | None:
    values = [v for v in values if not is_blank(v)]        # rows without a label are rejected (missing_label)
    kinds = {_value_kind(v) for v in values} - {None}
    if not kinds:
        return None
    if kinds <= {"int", "bool"}:
        return "int"
    if kinds <= {"int", "bool", "float"}:
        return "float"
    if kinds == {"string"} and from_text:
        stripped = [v.strip() for v in values]
        if _parses(stripped, int):
            return "int"
        if _parses(stripped, float):
            return "float"
    if "string" in kinds:
        return "string"                       # values of other types will be rejected (wrong_type_label)
    raise DistilleryError(f"label values are {', '.join(sorted(kinds))}: need strings or numbers")


def _label_kind_from_arrow(typ: pa.DataType, where: str) -> str:
    typ = _normalise_arrow_type(typ)
    if typ == pa.int64() or pa.types.is_boolean(typ):
        return "int"
    if typ == pa.float64():
        return "float"
    if typ == pa.string():
        return "string"
    raise DistilleryError(f"{where}: label column has unsupported type {typ} (need string, integer or float)")


@dataclass
class InputColumns:
    """What one input offers: its column names with types, and label values seen in its first rows."""

    where: str
    columns: dict[str, pa.DataType]
    label_kind: str | None
    tag_names: list[str] | None = None             # a ClassLabel tags column: the names of its integers


def describe_input(where: str, *, arrow: pa.Schema | None, rows: list[dict[str, Any]], label_column: str | None,
                   from_text: bool) -> InputColumns:
    """Columns and types of one input, from its Arrow schema or its first rows."""
    if arrow is not None:
        columns = {f.name: _normalise_arrow_type(f.type) for f in arrow}
        kind = _label_kind_from_arrow(arrow.field(label_column).type, where) \
            if label_column and label_column in columns else None
        return InputColumns(where, columns, kind)
    kinds: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            kinds.setdefault(key, set()).add(_value_kind(value) or "")
    columns = {key: _kinds_to_type(found - {""}) for key, found in kinds.items()}
    try:
        kind = _label_kind_from_values([r.get(label_column) for r in rows], from_text) if label_column else None
    except DistilleryError as exc:
        raise DistilleryError(f"{where}: {exc}") from None
    return InputColumns(where, columns, kind)


def derive_schema(inputs: Iterable[InputColumns], text_column: str, text_pair_column: str | None,
                  label_column: str | None, extra_columns: list[str] | None,
                  tag_columns: tuple[str, str] | None = None) -> OutputSchema:
    """The one output schema for all inputs (mapped columns checked, extras unified in first-seen order);
    ``tag_columns`` (the tokens and tags columns) make it a token-classification schema."""
    mapped = {c for c in (text_column, text_pair_column, label_column) if c}
    used = {"text", "row_id"} | ({"text_pair"} if text_pair_column else set()) | ({"label"} if label_column else set())
    if tag_columns:
        mapped, used = set(tag_columns), {"text", "tokens", "tags", "row_id"}
    extra_types: dict[str, pa.DataType] = {}
    label_kind: str | None = None
    tag_names: dict[str, list[str]] = {}
    for info in inputs:
        if info.tag_names:
            tag_names[info.where] = info.tag_names
        for column in mapped:
            if info.columns and column not in info.columns:
                raise DistilleryError(f"{info.where}: no column '{column}' in its first rows "
                                      f"(columns: {', '.join(json.dumps(c) for c in info.columns)}); map columns with "
                                      f"{_MAPPING_FLAGS[bool(tag_columns)]}")
        if info.label_kind:
            if label_kind and info.label_kind != label_kind and {label_kind, info.label_kind} != {"int", "float"}:
                raise DistilleryError(f"{info.where}: label type {info.label_kind} differs from {label_kind} "
                                      f"in an earlier input")
            label_kind = "float" if {label_kind, info.label_kind} == {"int", "float"} else info.label_kind
        for name, typ in info.columns.items():
            if name not in mapped and (extra_columns is None or name in extra_columns):
                extra_types[name] = _unify(extra_types.get(name), typ)
    missing = [name for name in extra_columns or [] if name not in extra_types]
    if missing:
        raise DistilleryError(f"extra column(s) {', '.join(missing)} not found in the first rows of any input")
    if label_column and label_kind is None:
        label_kind = "string"
    extras = [(name, f"src_{name}" if name in used else name, typ) for name, typ in extra_types.items()]
    return OutputSchema(bool(text_pair_column), label_kind, extras, tagging=bool(tag_columns), tag_names=tag_names)


def coerce_label(value: Any, kind: str) -> Any:
    """The label as ``kind`` (string / int / float); raises ValueError when it does not fit."""
    if isinstance(value, str):
        if kind == "string":
            return fix_surrogates(value)[0]
        value = value.strip()
        if kind == "int":
            number = int(value)
            if not _INT64[0] <= number <= _INT64[1]:
                raise ValueError("out of int64 range")
            return number
        return float(value)
    if kind == "string" or not isinstance(value, (int, float)):
        raise ValueError(f"{type(value).__name__} label")
    if kind == "float":
        return float(value)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError("non-integral label")
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError("out of int64 range")
    return number


def coerce_extra(value: Any, typ: pa.DataType) -> Any:
    """A value prepared for an extra column of type ``typ`` (may still not fit: see build_column)."""
    if value is None:
        return None
    if typ == pa.string():
        if isinstance(value, str):
            return fix_surrogates(value)[0]
        return fix_surrogates(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))[0]
    if typ == pa.int64() and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if typ == pa.float64() and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build_column(values: list[Any], typ: pa.DataType, repaired: dict[str, int]) -> pa.Array:
    """An Arrow array of ``values``; values that do not fit ``typ`` become null and are counted."""
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        fixed = []
        for value in values:
            try:
                pa.array([value], type=typ)
                fixed.append(value)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                fixed.append(None)
                repaired["extra_value_nulled"] = repaired.get("extra_value_nulled", 0) + 1
        return pa.array(fixed, type=typ)
