"""Text clean-up rules (documented in the README): Unicode normalisation, control characters, whitespace,
lower-casing, sentence splitting and token counting.

Repair rules, applied in this order, each counted in the manifest's ``accounting.repaired`` when it changed
something:

* ``invalid_utf8``: lone surrogates (from undecodable bytes read with ``surrogateescape`` or ``\\ud800``-style
  JSON escapes) become U+FFFD.
* ``control_chars``: C0/C1 control characters other than whitespace (NUL included), U+200B (zero-width space)
  and U+FEFF (byte-order mark) are deleted.
* whitespace: every run of whitespace (tabs, newlines, NBSP, other Unicode spaces) becomes one space and the
  text is stripped (normal clean-up, not counted).
"""
from __future__ import annotations

import re
import unicodedata

NORMALIZATIONS = ("nfc", "nfkc", "none")
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b\ufeff]")
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+(?=\S)")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def fix_surrogates(text: str) -> tuple[str, bool]:
    """Replace lone surrogates (not encodable as UTF-8) by U+FFFD; returns (text, changed)."""
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text), True


class Cleaner:
    """Applies the configured clean-up to one string and counts the repairs it made."""

    def __init__(self, normalize: str = "nfc", control_chars: bool = True, whitespace: bool = True,
                 lowercase: bool = False):
        self.form = None if normalize == "none" else normalize.upper()
        self.control_chars = control_chars
        self.whitespace = whitespace
        self.lowercase = lowercase

    def clean(self, text: str, repaired: dict[str, int]) -> str:
        """The cleaned text (may be empty); increments ``repaired[rule]`` for each repair rule that fired."""
        text, changed = fix_surrogates(text)
        if changed:
            repaired["invalid_utf8"] = repaired.get("invalid_utf8", 0) + 1
        if not (text.isascii() and text.isprintable()):
            if self.control_chars:
                stripped = _CONTROL.sub("", text)
                if stripped != text:
                    repaired["control_chars"] = repaired.get("control_chars", 0) + 1
                    text = stripped
            if self.form and not text.isascii():
                text = unicodedata.normalize(self.form, text)
        if self.whitespace:
            text = " ".join(text.split())
        return text

    def finish(self, text: str) -> str:
        """Steps applied after sentence splitting (lower-casing)."""
        return text.lower() if self.lowercase else text


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence split: after ``.``, ``!``, ``?`` (and their CJK forms) followed by whitespace."""
    return [part for part in _SENTENCE_END.split(text) if part]


def count_tokens(text: str) -> int:
    """Number of word and punctuation tokens (like BERT's basic pre-tokenizer, before word pieces)."""
    return len(_TOKEN.findall(text))
