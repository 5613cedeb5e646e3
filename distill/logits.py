"""The teacher-logits step: a version plus its teacher's logits, so that stage 2 can train without the teacher.

A sequence classifier's logits are one row per row (``list<float32>``). A token classifier's, on a
token-classification version (``tokens`` / ``tags``), are one row of logits per word, its first piece's, in word order
(``list<list<float32>>``): row k belongs to word k; words beyond the teacher's window get no row (the list is shorter
than ``tokens``; their number is ``words_beyond_window`` in the accounting), and a word the tokenizer reduces to no
piece gets a row of NaN. On an augmented version the step also measures the teacher's agreement between copies and
their originals (per row for sentences, per unchanged word for tagging)."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distill import models
from distill.card import model_seq_length
from distill.config import CacheLogitsConfig, TrainConfig, check_batch_tokens
from distill.data import LABEL, LOGITS, TAGS, TOKENS, WORD_IDS, Collator, to_tensors
from distill.tagging import OUTSIDE_TAG, first_pieces, token_agreement, token_classifier
from distill.trainer import setup_runtime, to_device
from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.config import identity_dict, to_dict
from pipelines.errors import DistilleryError
from pipelines.fingerprint import model_sha256
from pipelines.progress import progress_bar
from pipelines.runner import Step, StepPlan
from pipelines.store import Store, VersionWriter

if TYPE_CHECKING:
    from tqdm import tqdm

STEP = Step("teacher-logits", module=__name__, package="distill")
AUG_COPY, SOURCE_ROW, AUG_MLM, AUG_VECTORS = "aug_copy", "source_row_id", "aug_mlm_words", "aug_vector_words"
AUG_MENTIONS, WORD_SOURCE = "aug_mentions", "aug_word_source"   # a tagged copy: mentions swapped, source of each word
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def plan_teacher_logits(store: Store, ref: str, teacher_dir: str | Path, config: CacheLogitsConfig) -> StepPlan:
    """What caching the logits of ``teacher_dir`` on ``ref`` would write (the teacher identified by content, the
    sequence length resolved: by default the one the teacher was trained at)."""
    teacher_src = models.resolve_model(teacher_dir)
    config = dataclasses.replace(config, max_seq_length=model_seq_length(teacher_src, config.max_seq_length))
    check_batch_tokens(config.batch_size, config.max_seq_length)
    models.check_against_model(teacher_src, "teacher", config.max_seq_length)
    parent = store.manifest(ref)
    if token_classifier(models.load_config(teacher_src, "teacher")) and \
            TOKENS not in {f["name"] for f in parent["schema"]}:
        raise DistilleryError(f"teacher {teacher_src} is a token classifier but {ref} has no '{TOKENS}' column (a "
                              f"token-classification version)")
    resolved = {"teacher_sha256": model_sha256(teacher_src)}
    return StepPlan(STEP, {**to_dict(config), "teacher": teacher_src, **resolved},
                    {**identity_dict(config), **resolved}, [{"version_id": parent["version_id"]}],
                    lambda writer: _write(store, parent, teacher_src, config, writer))


def _write(store: Store, parent: dict[str, Any], teacher_src: str, config: CacheLogitsConfig,
           writer: VersionWriter) -> dict[str, Any]:
    """One chunk per input shard: the shard's rows plus a ``teacher_logits`` column (per word for a token
    classifier)."""
    runtime = setup_runtime(TrainConfig(device=config.device, num_workers=0))
    teacher = models.load_teacher(teacher_src, True, runtime.device)
    tagging = token_classifier(teacher.config)
    collate = Collator(teacher_src, config.max_seq_length, tagging=tagging)
    shards = store.shard_paths(parent["version_id"])

    def outputs(bar: tqdm) -> Iterator[ChunkOutput]:
        for index, path in enumerate(shards):
            if not writer.is_committed(index):
                table = pq.read_table(path, memory_map=True)
                if tagging:
                    words = _word_logits(table, teacher, collate, config.batch_size, runtime.device, bar)
                    yield _tagged_output(index, table, words, teacher.config.id2label)
                else:
                    logits = _logits(table, teacher, collate, config.batch_size, runtime.device, bar)
                    yield _output(index, table, logits, teacher.config.label2id)

    with progress_bar(total=parent["num_rows"], desc="teacher logits") as bar:
        write_chunks(writer, outputs(bar), number_rows=False, bar=bar)
    extra: dict[str, Any] = {"teacher": teacher_src,
                             "id2label": {str(k): v for k, v in teacher.config.id2label.items()}}
    if tagging:
        extra["logits_per"] = "word"    # row k of a row's teacher_logits: word k's first piece
    agreement = writer.accounting().get("agreement")
    if agreement:
        extra["agreement"] = agreement_summary(agreement)
    return extra


@torch.no_grad()
def _teacher_batches(rows: list[dict[str, Any]], teacher: Any, collate: Collator, batch_size: int, device: Any,
                     bar: tqdm) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
    """Each part of ``batch_size`` rows (encoded in place) with the teacher's float32 logits on it."""
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        collate.encode(part)
        batch = to_device(to_tensors(collate(part)), device)
        out = teacher(**{k: batch[k] for k in INPUTS}).logits
        yield part, out.float().cpu().numpy()
        bar.update(len(part))


def _logits(table: pa.Table, teacher: Any, collate: Collator, batch_size: int, device: Any,
            bar: tqdm) -> np.ndarray:
    """The teacher's logits of the rows of ``table`` (float32, one row each), ``batch_size`` rows at a time."""
    logits = [out for _, out in _teacher_batches(table.to_pylist(), teacher, collate, batch_size, device, bar)]
    values = np.concatenate(logits) if logits else np.zeros((0, teacher.config.num_labels), np.float32)
    return values.astype(np.float32)


def _word_logits(table: pa.Table, teacher: Any, collate: Collator, batch_size: int, device: Any,
                 bar: tqdm) -> list[np.ndarray]:
    """A token classifier's logits of the rows of ``table``: per row, one float32 row per word (``word_rows``)."""
    rows = table.select([TOKENS]).to_pylist()
    return [word_rows(out[i], row[WORD_IDS])
            for part, out in _teacher_batches(rows, teacher, collate, batch_size, device, bar)
            for i, row in enumerate(part)]


def word_rows(piece_logits: np.ndarray, word_ids: list[int | None]) -> np.ndarray:
    """One row of ``piece_logits`` (positions x labels) per word of a row up to the last word in its window: the
    word's first piece's logits (NaN for a word with no piece); ``word_ids`` as ``distill.data.WORD_IDS``."""
    positions = first_pieces(word_ids)
    words = [word for word in (word_ids[p] for p in positions) if word is not None]
    rows = np.full((max(words) + 1 if words else 0, piece_logits.shape[-1]), np.nan, np.float32)
    rows[words] = piece_logits[positions]
    return rows


def _output(index: int, table: pa.Table, logits: np.ndarray, label2id: dict[str, int]) -> ChunkOutput:
    """Chunk ``index``: the rows with their ``teacher_logits``; on an augmented version, the teacher's agreement
    on the copies in its accounting."""
    accounting: dict[str, Any] = {"input_rows": table.num_rows, "kept": table.num_rows}
    if AUG_COPY in table.column_names:
        accounting["agreement"] = agreement_counts(table, logits.argmax(-1), label2id)
    column = pa.array(list(logits), type=pa.list_(pa.float32()))
    return ChunkOutput(index, table.append_column(LOGITS, column), accounting=accounting)


def agreement_counts(table: pa.Table, predicted: np.ndarray, label2id: dict[str, int]) -> dict[str, Any]:
    """How often the teacher predicts, on an augmented copy, the label it predicts on the copy's original: over
    all copies and per candidate source (copies that changed words with masked-LM candidates only, with
    word-vector candidates only, or both); and its accuracy against the gold label on originals and copies."""
    copy = np.asarray(table.column(AUG_COPY).to_numpy(zero_copy_only=False))
    source = np.asarray(table.column(SOURCE_ROW).to_numpy(zero_copy_only=False))
    original_of = {int(s): int(p) for s, p, c in zip(source, predicted, copy) if c == 0}
    same = np.array([original_of.get(int(s), -1) == int(p) for s, p in zip(source, predicted)])
    copies = copy > 0
    counts: dict[str, Any] = {name: {"copies": int(mask.sum()), "same_label": int((same & mask).sum())}
                              for name, mask in _copy_groups(table, copies).items()}
    if LABEL in table.column_names:
        gold = np.array([label2id.get(str(v), -1) for v in table.column(LABEL).to_pylist()])
        right = gold == predicted
        counts["gold"] = {"originals": int((~copies).sum()), "originals_right": int((right & ~copies).sum()),
                          "copies": int(copies.sum()), "copies_right": int((right & copies).sum())}
    return counts


def _copy_groups(table: pa.Table, copies: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of each group of copies: all, per candidate source (masked-LM only, word vectors only, both) and,
    on a tagged version, those that swapped a mention."""
    groups = {"all": copies}
    if {AUG_MLM, AUG_VECTORS} <= set(table.column_names):
        mlm = np.asarray(table.column(AUG_MLM).to_numpy(zero_copy_only=False)) > 0
        vectors = np.asarray(table.column(AUG_VECTORS).to_numpy(zero_copy_only=False)) > 0
        groups.update(mlm_only=copies & mlm & ~vectors, vectors_only=copies & vectors & ~mlm,
                      mixed=copies & mlm & vectors)
    if AUG_MENTIONS in table.column_names:
        groups["mentions"] = copies & (np.asarray(table.column(AUG_MENTIONS).to_numpy(zero_copy_only=False)) > 0)
    return groups


def agreement_summary(total: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The shares of the chunks' agreement counts (``total``: summed over the chunks): per group of copies, the
    share of copies (tagging: of unchanged words) the teacher labels as on the original; ``teacher_accuracy`` on
    the gold labels (tagging: per word) and, for tagging, ``teacher_entity_f1`` (micro, conlleval's entities)."""
    summary: dict[str, Any] = {}
    for group, counts in total.items():
        if group == "gold" and "copy_words" in counts:
            summary.update(_tag_gold_summary(counts))
        elif group == "gold":
            summary["teacher_accuracy"] = {
                "originals": counts["originals_right"] / max(1, counts["originals"]),
                "copies": counts["copies_right"] / max(1, counts["copies"])}
        else:
            agreeing, compared = (counts["same_tag"], counts["words"]) if "words" in counts else \
                (counts["same_label"], counts["copies"])
            summary[group] = {**counts, "share": round(agreeing / compared, 4) if compared else None}
    return summary


def _tag_gold_summary(counts: dict[str, int]) -> dict[str, Any]:
    """Word accuracy and entity F1 of the teacher on the gold tags of originals and copies."""
    def f1(kind: str) -> float:
        found, gold = counts[f"{kind}_predicted_entities"], counts[f"{kind}_entities"]
        return 2 * counts[f"{kind}_correct_entities"] / (found + gold) if found + gold else 0.0

    return {"teacher_accuracy": {"originals": counts["original_words_right"] / max(1, counts["original_words"]),
                                 "copies": counts["copy_words_right"] / max(1, counts["copy_words"])},
            "teacher_entity_f1": {"originals": f1("original"), "copies": f1("copy")}}


# ---- token classification ----------------------------------------------------------------------------------
def _tagged_output(index: int, table: pa.Table, words: list[np.ndarray], id2label: dict[int, str]) -> ChunkOutput:
    """Chunk ``index`` of a tagging version: the rows with their per-word ``teacher_logits``, the words beyond the
    teacher's window counted; on an augmented version, the teacher's per-word agreement on the copies."""
    tokens = table.column(TOKENS).to_pylist()
    accounting: dict[str, Any] = {"input_rows": table.num_rows, "kept": table.num_rows,
                                  "words_beyond_window": sum(len(t or []) - len(w) for t, w in zip(tokens, words))}
    if AUG_COPY in table.column_names:
        accounting["agreement"] = tag_agreement_counts(table, word_tags(words, id2label))
    column = pa.array([w.tolist() for w in words], type=pa.list_(pa.list_(pa.float32())))
    return ChunkOutput(index, table.append_column(LOGITS, column), accounting=accounting)


def word_tags(words: list[np.ndarray], id2label: dict[int, str]) -> list[list[str | None]]:
    """The tag a token classifier predicts for each word from its per-word logits (``word_rows``); None for a word
    without logits (a NaN row)."""
    return [[None if np.isnan(row).any() else str(id2label[int(row.argmax())]) for row in rows] for rows in words]


def tag_agreement_counts(table: pa.Table, predicted: list[list[str | None]]) -> dict[str, Any]:
    """How often the teacher tags the unchanged words of an augmented copy as it tags them in the copy's original
    (per group of copies: ``copies``, ``words`` compared, ``same_tag``), and its word accuracy and entity counts on
    the gold tags of originals and copies (``gold``). ``predicted``: the teacher's tags per word of each row of
    ``table`` (``word_tags``; shorter than the row, or None: no logits for that word).

    A copy's word is unchanged when it stands for an original word (``aug_word_source``, else word i for word i
    when the copy has as many words) and equals it; only words the teacher tagged in both rows are compared."""
    copy = table.column(AUG_COPY).to_pylist()
    source = table.column(SOURCE_ROW).to_pylist()
    tokens = table.column(TOKENS).to_pylist()
    sources = table.column(WORD_SOURCE).to_pylist() if WORD_SOURCE in table.column_names else [None] * len(copy)
    originals = {s: i for i, (s, c) in enumerate(zip(source, copy)) if c == 0}
    pairs = [_unchanged_words(tokens[i], predicted[i], sources[i], tokens[originals[source[i]]],
                              predicted[originals[source[i]]]) if source[i] in originals else ([], [], [])
             for i in range(len(copy))]
    counts: dict[str, Any] = {}
    for name, rows in _copy_groups(table, np.asarray(copy) > 0).items():
        chosen = [pairs[i] for i in np.flatnonzero(rows)]
        agreement = token_agreement([a for a, _, _ in chosen], [b for _, b, _ in chosen], [m for _, _, m in chosen])
        counts[name] = {"copies": len(chosen), "words": agreement["words"], "same_tag": agreement["agreeing"]}
    if TAGS in table.column_names:
        counts["gold"] = _tag_gold_counts(table.column(TAGS).to_pylist(), predicted, [c > 0 for c in copy])
    return counts


def _unchanged_words(tokens: list[str], tags: list[str | None], sources: list[int] | None, original: list[str],
                     original_tags: list[str | None]) -> tuple[list[str], list[str], list[bool]]:
    """A copy's tags, its original's tags on the same words, and which words to compare (unchanged, tagged in
    both); all three as long as the copy."""
    if sources is None:
        sources = list(range(len(tokens))) if len(tokens) == len(original) else [-1] * len(tokens)
    copy_tags = [tags[j] if j < len(tags) else None for j in range(len(tokens))]
    before = [original_tags[s] if 0 <= s < len(original_tags) else None for s in sources]
    keep = [0 <= s < len(original) and tokens[j] == original[s] and copy_tags[j] is not None and before[j] is not None
            for j, s in enumerate(sources)]
    return [t or OUTSIDE_TAG for t in copy_tags], [t or OUTSIDE_TAG for t in before], keep



def _tag_gold_counts(gold: list[list[str] | None], predicted: list[list[str | None]],
                     is_copy: list[bool]) -> dict[str, int]:
    """Words tagged right and entities (gold, predicted, correct: conlleval's, as ``seqeval`` reads them) of the
    teacher on the gold tags of originals and of copies; a word without logits counts as an ``O`` prediction."""
    from seqeval.metrics.sequence_labeling import get_entities

    names = ("words", "words_right", "entities", "predicted_entities", "correct_entities")
    counts = dict.fromkeys([f"{kind}_{what}" for kind in ("original", "copy") for what in names], 0)
    for tags, guess, copied in zip(gold, predicted, is_copy):
        kind = "copy" if copied else "original"
        tags = [str(t) for t in tags or []]
        guess_tags = [(guess[j] if j < len(guess) else None) or OUTSIDE_TAG for j in range(len(tags))]
        with warnings.catch_warnings():      # seqeval warns of a tag it does not read as IOB
            warnings.simplefilter("ignore")
            true, found = set(get_entities(tags)), set(get_entities(guess_tags))
        counts[f"{kind}_words"] += len(tags)
        counts[f"{kind}_words_right"] += sum(a == b for a, b in zip(tags, guess_tags))
        counts[f"{kind}_entities"] += len(true)
        counts[f"{kind}_predicted_entities"] += len(found)
        counts[f"{kind}_correct_entities"] += len(true & found)
    return counts
