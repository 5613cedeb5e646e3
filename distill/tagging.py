"""Token classification helpers that need no model: word <-> piece alignment, entity-level scores, tag agreement.

Alignment follows HF's ``run_ner``: a word's label goes on its first piece and ``-100`` (ignored by the loss) on the
other pieces, special tokens and padding. Scores follow ``seqeval`` (conlleval by default, strict IOB2 on request).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Collection, Sequence
from functools import partial
from typing import Any

IGNORE_INDEX = -100  # what torch's cross-entropy and HF's DataCollatorForTokenClassification ignore
OUTSIDE_TAG = "O"
TOKEN_HEAD = "ForTokenClassification"   # what a token classifier's architectures end with (its marker)


def token_classifier(config: Any) -> bool:
    """Whether a model config, or the label kwargs of a model (``architectures`` among them), is a token
    classifier's: its architectures say so."""
    architectures = config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)
    return any(str(a).endswith(TOKEN_HEAD) for a in architectures or [])
# Tag prefixes seqeval reads: its default mode accepts IOB1, IOB2 and IOBES tags; strict mode is IOB2 only.
DEFAULT_PREFIXES = ("B", "I", "E", "S")
STRICT_PREFIXES = ("B", "I")


def piece_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], label_all_pieces: bool = False,
                 ignore: int = IGNORE_INDEX) -> list[int]:
    """Per-piece training labels of one row from a fast tokenizer's ``word_ids()``.

    A word's label goes on its first piece in the row; special tokens and padding (word id ``None``) get ``ignore``;
    the word's other pieces get ``ignore``, or the same label id as the first piece when ``label_all_pieces`` (no
    B- to I- rewrite: a ``B-X`` word carries ``B-X`` on every piece). A word cut off by truncation gets no piece; in
    a stride window that starts inside a word, that word's first piece in the window carries its label (as HF)."""
    labels: list[int] = []
    previous: int | None = None
    for word in word_ids:
        if word is None:
            labels.append(ignore)
        else:
            label = int(word_labels[_checked_word(word, len(word_labels))])
            labels.append(label if word != previous or label_all_pieces else ignore)
        previous = word
    return labels


def first_pieces(word_ids: Sequence[int | None]) -> list[int]:
    """Position of the first piece of each word present in the row, in word order (one per word that fits)."""
    return [position for position, word in enumerate(word_ids)
            if word is not None and (position == 0 or word_ids[position - 1] != word)]


def word_predictions(piece_predictions: Sequence[int], word_ids: Sequence[int | None], num_words: int,
                     outside: int) -> tuple[list[int], int]:
    """One predicted label id per word of a sentence of ``num_words`` words: its first piece's prediction, or
    ``outside`` (the ``O`` id) for a word with no piece in the row (cut off by truncation), so no word is dropped.

    ``piece_predictions`` holds one id per position of the row; trailing extra positions (padding of a longer batch)
    are ignored. Returns (predictions, number of words predicted ``outside`` because they were cut off)."""
    if len(piece_predictions) < len(word_ids):
        raise ValueError(f"{len(piece_predictions)} piece predictions for a row of {len(word_ids)} pieces")
    predictions: list[int | None] = [None] * num_words
    for position in first_pieces(word_ids):
        word = _checked_word(word_ids[position], num_words)
        if predictions[word] is None:
            predictions[word] = int(piece_predictions[position])
    truncated = sum(prediction is None for prediction in predictions)
    return [outside if prediction is None else prediction for prediction in predictions], truncated


def _checked_word(word: int, num_words: int) -> int:
    """``word`` when it indexes a sentence of ``num_words`` words; a ValueError otherwise."""
    if not 0 <= word < num_words:
        raise ValueError(f"word id {word} outside a sentence of {num_words} words")
    return word


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], strict: bool = False, *,
                  known_tags: Collection[str] | None = None) -> dict:
    """Entity-level scores of tagged sentences (tag strings per word; gold and predicted of the same lengths).

    Entities are read by ``seqeval``: by default as conlleval does (an ``I-X`` after ``O`` or after another type
    starts an entity; IOB1, IOB2 and IOBES tags accepted); ``strict`` uses seqeval's strict IOB2 mode (an entity
    starts only at ``B-X``; such an ``I-X`` is no entity). An entity is right when its type, start and end all match.
    Returns (plain floats and ints):

    - ``precision``, ``recall``, ``f1``: micro over all entities (0.0 where undefined, as seqeval);
    - ``token_accuracy``: share of words whose predicted tag equals the gold tag (NaN when there are no words);
    - ``sentences``, ``words``, ``entities`` (gold), ``predicted_entities``, ``mode`` (``"default"``/``"strict"``);
    - ``per_type``: {type: {precision, recall, f1, support (gold entities), predicted}} for every type in gold or
      predictions, sorted by type;
    - ``unknown_tag_words``: gold words whose tag is not in ``known_tags`` (the model's tags; 0 when not given).

    A gold tag the model does not know is never dropped: seqeval sees it, so its entity counts in recall's
    denominator (and a predicted entity over it is a false positive), and since no prediction can equal it, its word
    counts as wrong in token accuracy. Raises ValueError naming the sentence for a length mismatch or a tag seqeval
    cannot read (neither ``O`` nor ``<prefix>-<TYPE>``)."""
    prefixes = STRICT_PREFIXES if strict else DEFAULT_PREFIXES
    gold_rows = [list(row) for row in gold]
    predicted_rows = [list(row) for row in predicted]
    _check_tag_rows(gold_rows, predicted_rows, prefixes)
    words = sum(len(row) for row in gold_rows)
    correct_words = sum(g == p for gold_row, predicted_row in zip(gold_rows, predicted_rows)
                        for g, p in zip(gold_row, predicted_row))
    scores = {"mode": "strict" if strict else "default", "sentences": len(gold_rows), "words": words,
              "token_accuracy": correct_words / words if words else math.nan,
              "unknown_tag_words": sum(tag not in known_tags for row in gold_rows for tag in row)
              if known_tags is not None else 0}
    scores.update(_seqeval_scores(gold_rows, predicted_rows, strict))
    return scores


def _check_tag_rows(gold: list[list[str]], predicted: list[list[str]], prefixes: tuple[str, ...]) -> None:
    """ValueError naming the first sentence whose lengths differ or whose tags seqeval cannot read."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    for index, (gold_row, predicted_row) in enumerate(zip(gold, predicted)):
        if len(gold_row) != len(predicted_row):
            raise ValueError(f"sentence {index}: {len(gold_row)} gold tags but {len(predicted_row)} predicted")
        for tag in (*gold_row, *predicted_row):
            prefix, dash, entity_type = str(tag).partition("-")
            if tag != OUTSIDE_TAG and not (prefix in prefixes and dash and entity_type):
                raise ValueError(f"sentence {index}: tag {tag!r} is neither {OUTSIDE_TAG!r} nor "
                                 f"{'/'.join(prefixes)}-TYPE")


def _seqeval_scores(gold: list[list[str]], predicted: list[list[str]], strict: bool) -> dict:
    """Micro and per-type precision / recall / F1 / support from seqeval, and the predicted entities per type."""
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as conlleval_prfs
    from seqeval.metrics.v1 import precision_recall_fscore_support as strict_prfs
    from seqeval.scheme import IOB2, Entities

    if not gold:  # seqeval refuses an empty list of sentences
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "entities": 0, "predicted_entities": 0, "per_type": {}}
    if strict:
        prfs = partial(strict_prfs, gold, predicted, zero_division=0, mode="strict", scheme=IOB2)
        predicted_types = Counter(entity.tag for row in Entities(predicted, IOB2).entities for entity in row)
        gold_types = {entity.tag for row in Entities(gold, IOB2).entities for entity in row}
    else:
        prfs = partial(conlleval_prfs, gold, predicted, zero_division=0)
        predicted_types = Counter(entity[0] for entity in get_entities(predicted))
        gold_types = {entity[0] for entity in get_entities(gold)}
    with warnings.catch_warnings():  # zero_division=0 already; silence any UndefinedMetricWarning all the same
        warnings.simplefilter("ignore")
        micro = prfs(average="micro")
        per_type = prfs(average=None)
    types = sorted(gold_types | set(predicted_types))  # seqeval's own order of its per-type arrays
    return {"precision": float(micro[0]), "recall": float(micro[1]), "f1": float(micro[2]),
            "entities": int(micro[3]), "predicted_entities": sum(predicted_types.values()),
            "per_type": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                                "predicted": predicted_types[name]}
                         for name, p, r, f, s in zip(types, *per_type, strict=True)}}


def entity_report(scores: dict) -> str:
    """A markdown table of ``entity_scores``' result like seqeval's classification_report: one row per entity type
    (precision, recall, F1, support), then the micro average over all entities."""
    lines = ["| type | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    rows = [*scores["per_type"].items(), ("micro avg", {**scores, "support": scores["entities"]})]
    lines += [f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
              for name, row in rows]
    return "\n".join(lines)


def token_agreement(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]],
                    mask: Sequence[Sequence[bool]] | None = None) -> dict:
    """Share of words tagged the same in ``a`` and ``b`` (e.g. the teacher's tags on an augmented copy vs on the
    original, or int8 vs fp32), counting only words where ``mask`` is true when given.

    Returns {``agreement`` (NaN when no word is compared), ``words`` (compared), ``agreeing``}; raises ValueError
    naming the first sentence whose lengths differ."""
    if len(a) != len(b) or (mask is not None and len(mask) != len(a)):
        raise ValueError(f"{len(a)} and {len(b)} sentences" + ("" if mask is None else f", mask of {len(mask)}"))
    words = agreeing = 0
    for index, (row_a, row_b) in enumerate(zip(a, b)):
        keep = [True] * len(row_a) if mask is None else mask[index]
        if not len(row_a) == len(row_b) == len(keep):
            raise ValueError(f"sentence {index}: {len(row_a)} and {len(row_b)} tags, mask of {len(keep)}")
        compared = [tag_a == tag_b for tag_a, tag_b, kept in zip(row_a, row_b, keep) if kept]
        words += len(compared)
        agreeing += sum(compared)
    return {"agreement": agreeing / words if words else math.nan, "words": words, "agreeing": agreeing}
