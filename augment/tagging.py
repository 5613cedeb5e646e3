"""Tag-preserving augmentation of token-classification rows (``tokens`` + IOB ``tags``).

Words are the row's tokens. Only words tagged ``O`` are eligible for replacement (one word -> one word, so the
tags stay aligned); entity words are kept. Optionally (Dai & Adel 2020, "An analysis of simple data augmentation
for named entity recognition"), each entity mention of a copy is, with probability ``mention_prob``, swapped for
another mention of the same type drawn from the version's mentions, and its tags rebuilt in IOB2 for the new
length (``B-X I-X ...``).

How the two combine: every one of the N rounds draws both. The O-word draws are the sentence rounds' draws
(same generator, same order: one candidate pick and one coin per eligible word); the mention draws come from a
second generator of the same row (one pick and one coin per mention), so ``mention_prob = 0`` gives exactly the
O-only copies. A copy equal to the original or to an earlier copy (same tokens and tags) is dropped.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from augment.words import SentenceWords, apply_case

OUTSIDE = "O"
_IOB = re.compile(r"([BI])-(.+)")


class Mention(NamedTuple):
    """An entity mention of a row: words ``start`` .. ``end`` (exclusive) of type ``kind``."""

    start: int
    end: int
    kind: str


def find_mentions(tags: Sequence[str]) -> list[Mention]:
    """The mentions of an IOB tag sequence, as conlleval reads it: ``B-X`` starts one, so does an ``I-X`` that
    follows neither ``B-X`` nor ``I-X``; ``I-X`` continues it. Tags of another form end a mention and start
    none."""
    found: list[Mention] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        if tag == OUTSIDE and start is None:
            continue
        match = _IOB.fullmatch(tag)
        continues = match is not None and match[1] == "I" and match[2] == kind
        if start is not None and not continues:
            found.append(Mention(start, i, kind))
            start, kind = None, None
        if match is not None and not continues:
            start, kind = i, match[2]
    return found


def mention_tags(kind: str, length: int) -> list[str]:
    """IOB2 tags of a mention of ``length`` words."""
    return [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)


@dataclass
class MentionPool:
    """The distinct mentions of a version per type, each type's sorted (so draws never depend on the order the
    rows were read in)."""

    by_kind: dict[str, list[tuple[str, ...]]]
    _index: dict[str, dict[tuple[str, ...], int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {kind: {m: i for i, m in enumerate(ms)} for kind, ms in self.by_kind.items()}

    @classmethod
    def collect(cls, rows: Iterable[tuple[Sequence[str] | None, Sequence[str] | None]]) -> MentionPool:
        """The pool of ``(tokens, tags)`` rows (rows whose lists are missing or of two lengths are skipped)."""
        found: dict[str, set[tuple[str, ...]]] = {}
        for tokens, tags in rows:
            if tokens is None or tags is None or len(tokens) != len(tags):
                continue
            for m in find_mentions(tags):
                found.setdefault(m.kind, set()).add(tuple(tokens[m.start:m.end]))
        return cls({kind: sorted(found[kind]) for kind in sorted(found)})

    def summary(self) -> dict[str, int]:
        """Distinct mentions per type (what the manifest records)."""
        return {kind: len(ms) for kind, ms in self.by_kind.items()}

    def other(self, kind: str, words: tuple[str, ...], pick: float) -> tuple[str, ...] | None:
        """The mention of type ``kind`` that ``pick`` (uniform in [0, 1)) chooses among those other than
        ``words``; None when the type has no other."""
        choices = self.by_kind.get(kind, [])
        own = self._index.get(kind, {}).get(words)
        others = len(choices) - (own is not None)
        if others < 1:
            return None
        k = min(int(pick * others), others - 1)
        return choices[k + 1] if own is not None and k >= own else choices[k]


@dataclass
class TaggedCopy:
    """One augmented copy of a tagged row: its words; its tags and, for each word, the index of the original
    word it stands for (-1: a word of a swapped-in mention), both None when no mention was swapped (the
    original's tags, word i from word i); how many words it changed with masked-LM and with word-vector
    candidates, and how many mentions it swapped."""

    words: list[str]
    tags: list[str] | None
    word_source: list[int] | None
    changed: tuple[int, int]
    mentions: int


@dataclass
class TaggedCounts:
    """What the rounds of one tagged row did."""

    replacements: int = 0
    mlm_replacements: int = 0
    mentions_replaced: int = 0
    duplicates_dropped: int = 0


@dataclass(frozen=True)
class MentionDraws:
    """What mention replacement needs for one row: its mentions, the pool, the probability and the generator."""

    mentions: list[Mention]
    pool: MentionPool | None
    prob: float
    rng: np.random.Generator | None


def augment_tagged(sentence: SentenceWords, tags: list[str], candidates: list[list[str]], rounds: int, p: float,
                   rng: np.random.Generator, from_mlm: Sequence[bool],
                   mention: MentionDraws) -> tuple[list[TaggedCopy], TaggedCounts]:
    """The unique copies (original excluded) of ``rounds`` rounds of a tagged row.

    ``sentence.words`` are the row's tokens as the masked LM sees them, ``sentence.text`` the tokens joined by
    spaces; ``candidates[j]`` belongs to the O word ``sentence.eligible[j]``. The O-word draws are those of
    ``augment.sampling.augment_sentence``; mentions are drawn as the module says."""
    counts = TaggedCounts()
    tokens = [sentence.text[a:b] for a, b in sentence.spans]
    mlm_slots = {slot for slot, mlm in zip(sentence.eligible, from_mlm) if mlm}
    slots = sentence.eligible
    seen: set[tuple[tuple[str, ...], tuple[str, ...] | None]] = {(tuple(tokens), None)}   # (None: the tags)
    copies: list[TaggedCopy] = []
    sizes = np.array([len(c) for c in candidates], dtype=np.int64)
    pool, mention_rng = mention.pool, mention.rng
    swapping = mention.prob > 0 and bool(mention.mentions)
    for _ in range(max(rounds, 0)):
        draws = rng.random((len(slots), 2))
        picks = np.minimum((draws[:, 0] * sizes).astype(np.int64), sizes - 1)
        chosen = {slots[j]: candidates[j][picks[j]] for j in np.flatnonzero(draws[:, 1] < p)}
        swaps = _swaps(tokens, mention.mentions, pool, mention.prob, mention_rng) \
            if swapping and pool is not None and mention_rng is not None else {}
        copy, changed = _render(tokens, tags, chosen, swaps)
        key = (tuple(copy.words), None if copy.tags is None else tuple(copy.tags))
        if key in seen:
            counts.duplicates_dropped += 1
            continue
        seen.add(key)
        by_mlm = len(mlm_slots.intersection(changed))
        copy.changed = (by_mlm, len(changed) - by_mlm)
        copies.append(copy)
        counts.replacements += len(changed)
        counts.mlm_replacements += by_mlm
        counts.mentions_replaced += copy.mentions
    return copies, counts


def _swaps(tokens: list[str], mentions: list[Mention], pool: MentionPool, prob: float,
           rng: np.random.Generator) -> dict[int, tuple[Mention, tuple[str, ...]]]:
    """One round's mention swaps, by first word: one pick and one coin per mention, whatever the outcome."""
    draws = rng.random((len(mentions), 2))
    swaps = {}
    for (pick, coin), m in zip(draws.tolist(), mentions):
        if coin < prob:
            new = pool.other(m.kind, tuple(tokens[m.start:m.end]), pick)
            if new is not None:
                swaps[m.start] = (m, new)
    return swaps


def _render(tokens: list[str], tags: list[str], chosen: dict[int, str],
            swaps: dict[int, tuple[Mention, tuple[str, ...]]]) -> tuple[TaggedCopy, list[int]]:
    """The copy of one round (case-matched O-word candidates, swapped mentions) and the O words it changed."""
    words, changed = list(tokens), []
    for index, candidate in chosen.items():
        new = apply_case(candidate, tokens[index])
        if new != tokens[index]:
            changed.append(index)
            words[index] = new
    if not swaps:
        return TaggedCopy(words, None, None, (0, 0), 0), changed
    out_words: list[str] = []
    out_tags: list[str] = []
    source: list[int] = []
    i = 0
    while i < len(words):
        if i in swaps:
            m, new_words = swaps[i]
            out_words += new_words
            out_tags += mention_tags(m.kind, len(new_words))
            source += [-1] * len(new_words)
            i = m.end
        else:
            out_words.append(words[i])
            out_tags.append(tags[i])
            source.append(i)
            i += 1
    return TaggedCopy(out_words, out_tags, source, (0, 0), len(swaps)), changed
