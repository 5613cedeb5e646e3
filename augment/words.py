"""Words of a sentence as the reference sees them: BERT basic tokens, their character spans and WordPieces."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# The reference's stop-word list: NLTK English stop words plus "'s" and "'re".
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his himself
she she's her hers herself it it's its itself they them their theirs themselves this that that'll these those am is are
was were be been being have has had having do does did doing a an the and but if or because as until while of at by for
with about against between into through during before after above below to from up down in out on off over under again
further then once here there all any both each few more most other some such no nor not only own same so than too very
s t can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn
doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't
shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't 's 're
""".split())

_NON_ALPHA = re.compile("[^a-z]")


def is_eligible(word: str) -> bool:
    """The reference's test: letters a-z only (case-insensitive) and not a stop word."""
    lowered = word.lower()
    return bool(lowered) and not _NON_ALPHA.search(lowered) and lowered not in STOP_WORDS


@dataclass
class SentenceWords:
    """One text split into basic tokens (``words``), their spans in the original text and their WordPiece ids."""

    text: str
    words: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    pieces: list[list[int]] = field(default_factory=list)
    eligible: list[int] = field(default_factory=list)

    @property
    def piece_ids(self) -> list[int]:
        """All WordPiece ids of the sentence, in order."""
        return [p for word in self.pieces for p in word]


class WordSplitter:
    """Splits texts with a fast BERT tokenizer: normalizer + pre-tokenizer words, WordPieces, original offsets."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.normalizer = tokenizer.backend_tokenizer.normalizer
        self.unk_id = tokenizer.unk_token_id

    def split(self, texts: Sequence[str]) -> list[SentenceWords]:
        """Split a batch of texts (one Rust call for all of them)."""
        encodings = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True).encodings
        return [self._words(text, enc) for text, enc in zip(texts, encodings)]

    def _words(self, text: str, enc: Any) -> SentenceWords:
        sentence = SentenceWords(text)
        last = None
        for token_id, token, word_id, (start, end) in zip(enc.ids, enc.tokens, enc.word_ids, enc.offsets):
            if word_id != last:
                sentence.pieces.append([token_id])
                sentence.spans.append((start, end))
                sentence.words.append(token)
                last = word_id
            else:
                sentence.pieces[-1].append(token_id)
                sentence.spans[-1] = (sentence.spans[-1][0], end)
                sentence.words[-1] += token[2:] if token.startswith("##") else token
        for index, pieces in enumerate(sentence.pieces):
            if self.unk_id in pieces:   # [UNK] hides the word: normalise its original characters instead
                start, end = sentence.spans[index]
                sentence.words[index] = self.normalizer.normalize_str(text[start:end]) if self.normalizer else \
                    text[start:end]
        sentence.eligible = [i for i, word in enumerate(sentence.words) if is_eligible(word)]
        return sentence

    def split_tokens(self, token_lists: Sequence[Sequence[str]]) -> list[SentenceWords]:
        """Tagging data: each given token is one word, never re-split (its WordPieces may be several); ``text``
        is the tokens joined by single spaces, each word's span its token's there, and ``eligible`` every word
        the reference's test admits (the caller narrows it by tag). A token that normalises to nothing is a word
        without pieces, never eligible. One Rust call for the batch."""
        encodings = self.tokenizer([list(t) for t in token_lists], is_split_into_words=True,
                                   add_special_tokens=False).encodings
        return [self._token_words(list(tokens), enc) for tokens, enc in zip(token_lists, encodings)]

    def _token_words(self, tokens: list[str], enc: Any) -> SentenceWords:
        sentence = SentenceWords(" ".join(tokens), words=[""] * len(tokens), pieces=[[] for _ in tokens])
        for token_id, token, word_id in zip(enc.ids, enc.tokens, enc.word_ids):
            sentence.pieces[word_id].append(token_id)
            sentence.words[word_id] += token[2:] if token.startswith("##") else token
        start = 0
        for index, token in enumerate(tokens):
            sentence.spans.append((start, start + len(token)))
            start += len(token) + 1
            if self.unk_id in sentence.pieces[index]:     # [UNK] hides the word: normalise the token instead
                sentence.words[index] = self.normalizer.normalize_str(token) if self.normalizer else token
        sentence.eligible = [i for i, word in enumerate(sentence.words) if is_eligible(word)]
        return sentence


def apply_case(candidate: str, surface: str) -> str:
    """Give ``candidate`` the casing pattern of the original ``surface`` word (upper, capitalised or as is)."""
    if len(surface) > 1 and surface.isupper():
        return candidate.upper()
    if surface[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate
