"""Candidate filters and the N-round random replacement, seeded per (seed, source row, field)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from augment.words import SentenceWords, apply_case


@dataclass(frozen=True)
class CandidateFilter:
    """Optional filters (all off = the reference)."""

    drop_punctuation: bool = False
    drop_unk: bool = False
    drop_self: bool = False
    match_case: bool = False
    special_tokens: frozenset[str] = frozenset()

    def apply(self, word: str, candidates: Iterable[str]) -> list[str]:
        """The kept candidates of ``word``, or ``[word]`` when none is left (a word always has one)."""
        kept = []
        for c in candidates:
            if self.drop_punctuation and not any(ch.isalnum() for ch in c):
                continue
            if self.drop_unk and c in self.special_tokens:
                continue
            if self.drop_self and c.lower() == word.lower():
                continue
            if self.match_case and c[:1].isupper() != word[:1].isupper():
                continue
            kept.append(c)
        return kept or [word]


def row_rng(seed: int, row_id: int, field: str) -> np.random.Generator:
    """The generator of one (seed, source row id, field): independent of workers, batches and resume points."""
    key = hashlib.sha256(f"{seed}\0{row_id}\0{field}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(key[:16], "little")))


@dataclass
class SampleCounts:
    """What the rounds of one sentence did; ``sources``: per kept copy, how many words it changed with masked-LM
    candidates and how many with word-vector candidates."""

    replacements: int = 0
    duplicates_dropped: int = 0
    sources: list[tuple[int, int]] = field(default_factory=list)


def augment_sentence(sentence: SentenceWords, candidates: list[list[str]], rounds: int, p: float,
                     rng: np.random.Generator, output_form: str = "surface",
                     from_mlm: Sequence[bool] = ()) -> tuple[list[str], SampleCounts]:
    """The unique augmented texts (original excluded) of ``rounds`` rounds.

    ``candidates[j]`` belongs to word ``sentence.eligible[j]`` (from the masked LM when ``from_mlm[j]``). Each
    round draws, for each eligible word in order, a candidate uniformly and a replacement coin (probability
    ``p``), as the reference does. ``surface`` splices the (case-matched) candidates into the original text;
    ``reference`` joins the lower-cased basic tokens with spaces.
    """
    counts = SampleCounts()
    mlm_slots = {slot for slot, mlm in zip(sentence.eligible, from_mlm) if mlm}
    slots = sentence.eligible
    if rounds <= 0:
        return [], counts
    seen = {sentence.text}
    copies: list[str] = []
    sizes = np.array([len(c) for c in candidates], dtype=np.int64)
    for _ in range(rounds):               # one round's draws at a time: the same stream as all rounds at once
        draws = rng.random((len(slots), 2))
        picks = np.minimum((draws[:, 0] * sizes).astype(np.int64), sizes - 1)
        chosen = {slots[j]: candidates[j][picks[j]] for j in np.flatnonzero(draws[:, 1] < p)}
        text, changed = _render(sentence, chosen, output_form)
        if text in seen:
            counts.duplicates_dropped += 1
            continue
        seen.add(text)
        copies.append(text)
        counts.replacements += len(changed)
        by_mlm = len(mlm_slots.intersection(changed))
        counts.sources.append((by_mlm, len(changed) - by_mlm))
    return copies, counts


def _render(sentence: SentenceWords, chosen: dict[int, str], output_form: str) -> tuple[str, list[int]]:
    """The text of one round and the words it really changed."""
    changed = []
    if output_form == "reference":
        words = list(sentence.words)
        for index, candidate in chosen.items():
            if candidate != words[index]:
                changed.append(index)
            words[index] = candidate
        return " ".join(words), changed
    parts, cursor, text = [], 0, sentence.text
    for index in sorted(chosen):
        start, end = sentence.spans[index]
        new = apply_case(chosen[index], text[start:end])
        if new != text[start:end]:
            changed.append(index)
        parts += [text[cursor:start], new]
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts), changed
