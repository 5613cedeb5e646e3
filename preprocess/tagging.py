"""Token-classification rows: tokens cleaned one by one, tags checked against the tag scheme.

A tagging row is a list of tokens and a list of tags of the same length. The rules, applied in this order (the
data card of a tagging version states them):

* no tokens (and no tags): rejected, ``empty_sentence``; tokens and tags of different lengths:
  ``tag_count_mismatch``; a missing or non-list (or non-string item) column: ``missing_tokens`` /
  ``wrong_type_tokens`` (and ``_tags``); more than ``max_row_bytes`` characters: ``row_too_long``. Integer tags
  of a Hugging Face ``ClassLabel`` column (a saved dataset, or Parquet written by ``datasets``) are read as their
  names.
* every token is cleaned like a text (``preprocess.text_clean``: surrogates, control characters, normalisation,
  whitespace, lower-casing); a token that cleans to nothing rejects the whole row (``empty_token``), so a tag
  never shifts onto another token.
* every tag loses its surrounding whitespace; then, by ``tag_scheme``:

  - ``iob2`` (default): a tag is ``O``, ``B-X`` or ``I-X`` with a non-empty type X, else the row is rejected
    (``tag_outside_scheme``). An ``I-X`` that follows neither ``B-X`` nor ``I-X`` (IOB1 input, or a span cut
    short) starts an entity: it becomes ``B-X``, each change counted in ``repaired.tag_iob2_repairs``. This is
    how conlleval and seqeval read such a tag, so entity counts do not change.
  - ``strict-iob2``: the same check, but such an ``I-X`` rejects the row (``tag_invalid_sequence``).
  - ``as-is``: any non-empty tag is kept unchanged (POS tags, BIOES, ...); an empty one is ``tag_outside_scheme``.

The version's ``text`` is the tokens joined by single spaces. Exact de-duplication hashes the token sequence
itself (``tokens_key``: a JSON list), so ``["New York"]`` and ``["New", "York"]``, whose texts are equal, are two
rows, and tags play no part (the same tokens tagged twice are one row: the first). MinHash near de-duplication
(``--near``) reads the joined text: two tokenisations of one string are near duplicates of each other.
"""
from __future__ import annotations

import json
from typing import Any

from preprocess.text_clean import Cleaner, fix_surrogates

TAG_SCHEMES = ("iob2", "strict-iob2", "as-is")
SCHEME_RULES = {
    "iob2": "tags are IOB2 (O, B-X, I-X); an I-X that follows neither B-X nor I-X (IOB1 input) was changed to B-X "
            "and counted in repaired: tag_iob2_repairs; any other tag rejected the row (tag_outside_scheme)",
    "strict-iob2": "tags are IOB2 (O, B-X, I-X); a row with an I-X that follows neither B-X nor I-X was rejected "
                   "(tag_invalid_sequence), any other tag rejected the row (tag_outside_scheme)",
    "as-is": "tags are kept as read (any non-empty string; not checked against a scheme)",
}


class RowReject(Exception):
    """A row goes to the rejects shard with this reason."""


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _string_list(row: dict[str, Any], column: str, slot: str) -> list[str]:
    value = row.get(column)
    if value is None:
        raise RowReject(f"missing_{slot}")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RowReject(f"wrong_type_{slot}")
    return value


def _named(row: dict[str, Any], column: str, names: list[str] | None) -> dict[str, Any]:
    """The row with its integer tags replaced by their names (out of range: left as they are, so rejected)."""
    value = row.get(column)
    if not names or not isinstance(value, list) or not all(type(item) is int for item in value):
        return row
    return {column: [names[i] if 0 <= i < len(names) else i for i in value]}


def to_iob2(tags: list[str], strict: bool, repaired: dict[str, int]) -> list[str]:
    """The tags checked as IOB2; an ``I-X`` that follows neither ``B-X`` nor ``I-X`` becomes ``B-X`` (counted in
    ``repaired``) or, when ``strict``, rejects the row. Raises ``RowReject``."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        prefix, _, kind = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not kind):
            raise RowReject("tag_outside_scheme")
        if prefix == "I" and previous not in (f"B-{kind}", f"I-{kind}"):
            if strict:
                raise RowReject("tag_invalid_sequence")
            tag = f"B-{kind}"
            _bump(repaired, "tag_iob2_repairs")
        out.append(tag)
        previous = tag
    return out


def tokens_key(tokens: list[str]) -> str:
    """The token sequence as one string that tells tokenisations apart (the exact de-duplication key)."""
    return json.dumps(tokens, ensure_ascii=False)


class TaggedRows:
    """Reads the tokens and tags of one row by the rules above."""

    def __init__(self, cleaner: Cleaner, scheme: str, max_row_bytes: int):
        self.cleaner = cleaner
        self.scheme = scheme
        self.max_row_bytes = max_row_bytes

    def read(self, row: dict[str, Any], tokens_column: str, tags_column: str, repaired: dict[str, int],
             tag_names: list[str] | None = None) -> tuple[list[str], list[str]]:
        """The row's clean tokens and checked tags (integer tags read as ``tag_names[i]`` when given: a Hugging
        Face ClassLabel column); raises ``RowReject``."""
        tokens = _string_list(row, tokens_column, "tokens")
        tags = _string_list(_named(row, tags_column, tag_names), tags_column, "tags")
        if not tokens and not tags:
            raise RowReject("empty_sentence")
        if len(tokens) != len(tags):
            raise RowReject("tag_count_mismatch")
        if sum(map(len, tokens)) + sum(map(len, tags)) > self.max_row_bytes:
            raise RowReject("row_too_long")
        return [self._token(token, repaired) for token in tokens], self._tags(tags, repaired)

    def _token(self, token: str, repaired: dict[str, int]) -> str:
        cleaned = self.cleaner.clean(token, repaired)
        if not cleaned or cleaned.isspace():
            raise RowReject("empty_token")
        return self.cleaner.finish(cleaned)

    def _tags(self, tags: list[str], repaired: dict[str, int]) -> list[str]:
        stripped = []
        for tag in tags:
            tag, changed = fix_surrogates(tag)
            if changed:
                _bump(repaired, "invalid_utf8")
            stripped.append(tag.strip())
        if self.scheme == "as-is":
            if not all(stripped):
                raise RowReject("tag_outside_scheme")
            return stripped
        return to_iob2(stripped, self.scheme == "strict-iob2", repaired)
