"""The teacher-logits step: a version plus its teacher's logits, so that stage 2 can train without the teacher."""
from __future__ import annotations

import dataclasses
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
from distill.data import LABEL, LOGITS, Collator, to_tensors
from distill.trainer import setup_runtime, to_device
from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.config import identity_dict, to_dict
from pipelines.fingerprint import model_sha256
from pipelines.progress import progress_bar
from pipelines.runner import Step, StepPlan
from pipelines.store import Store, VersionWriter

if TYPE_CHECKING:
    from tqdm import tqdm

STEP = Step("teacher-logits", module=__name__, package="distill")
AUG_COPY, SOURCE_ROW, AUG_MLM, AUG_VECTORS = "aug_copy", "source_row_id", "aug_mlm_words", "aug_vector_words"


def plan_teacher_logits(store: Store, ref: str, teacher_dir: str | Path, config: CacheLogitsConfig) -> StepPlan:
    """What caching the logits of ``teacher_dir`` on ``ref`` would write (the teacher identified by content, the
    sequence length resolved: by default the one the teacher was trained at)."""
    teacher_src = models.resolve_model(teacher_dir)
    config = dataclasses.replace(config, max_seq_length=model_seq_length(teacher_src, config.max_seq_length))
    check_batch_tokens(config.batch_size, config.max_seq_length)
    models.check_against_model(teacher_src, "teacher", config.max_seq_length)
    parent = store.manifest(ref)
    resolved = {"teacher_sha256": model_sha256(teacher_src)}
    return StepPlan(STEP, {**to_dict(config), "teacher": teacher_src, **resolved},
                    {**identity_dict(config), **resolved}, [{"version_id": parent["version_id"]}],
                    lambda writer: _write(store, parent, teacher_src, config, writer))


def _write(store: Store, parent: dict[str, Any], teacher_src: str, config: CacheLogitsConfig,
           writer: VersionWriter) -> dict[str, Any]:
    """One chunk per input shard: the shard's rows plus a ``teacher_logits`` column."""
    runtime = setup_runtime(TrainConfig(device=config.device, num_workers=0))
    teacher = models.load_teacher(teacher_src, True, runtime.device)
    collate = Collator(teacher_src, config.max_seq_length)
    shards = store.shard_paths(parent["version_id"])

    def outputs(bar: tqdm) -> Iterator[ChunkOutput]:
        for index, path in enumerate(shards):
            if not writer.is_committed(index):
                table = pq.read_table(path, memory_map=True)
                logits = _logits(table, teacher, collate, config.batch_size, runtime.device, bar)
                yield _output(index, table, logits, teacher.config.label2id)

    with progress_bar(total=parent["num_rows"], desc="teacher logits") as bar:
        write_chunks(writer, outputs(bar), number_rows=False, bar=bar)
    extra: dict[str, Any] = {"teacher": teacher_src,
                             "id2label": {str(k): v for k, v in teacher.config.id2label.items()}}
    agreement = writer.accounting().get("agreement")
    if agreement:
        extra["agreement"] = agreement_summary(agreement)
    return extra


@torch.no_grad()
def _logits(table: pa.Table, teacher: Any, collate: Collator, batch_size: int, device: Any,
            bar: tqdm) -> np.ndarray:
    """The teacher's logits of the rows of ``table`` (float32, one row each), ``batch_size`` rows at a time."""
    rows, logits = table.to_pylist(), []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        collate.encode(part)
        batch = to_device(to_tensors(collate(part)), device)
        out = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
        logits.append(out.float().cpu().numpy())
        bar.update(len(part))
    values = np.concatenate(logits) if logits else np.zeros((0, teacher.config.num_labels), np.float32)
    return values.astype(np.float32)


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
    groups = {"all": copies}
    if {AUG_MLM, AUG_VECTORS} <= set(table.column_names):
        mlm = np.asarray(table.column(AUG_MLM).to_numpy(zero_copy_only=False)) > 0
        vectors = np.asarray(table.column(AUG_VECTORS).to_numpy(zero_copy_only=False)) > 0
        groups.update(mlm_only=copies & mlm & ~vectors, vectors_only=copies & vectors & ~mlm,
                      mixed=copies & mlm & vectors)
    counts: dict[str, Any] = {name: {"copies": int(mask.sum()), "same_label": int((same & mask).sum())}
                              for name, mask in groups.items()}
    if LABEL in table.column_names:
        gold = np.array([label2id.get(str(v), -1) for v in table.column(LABEL).to_pylist()])
        right = gold == predicted
        counts["gold"] = {"originals": int((~copies).sum()), "originals_right": int((right & ~copies).sum()),
                          "copies": int(copies.sum()), "copies_right": int((right & copies).sum())}
    return counts


def agreement_summary(total: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The shares of the chunks' agreement counts (``total``: summed over the chunks)."""
    summary: dict[str, Any] = {}
    for group, counts in total.items():
        if group == "gold":
            summary["teacher_accuracy"] = {
                "originals": counts["originals_right"] / max(1, counts["originals"]),
                "copies": counts["copies_right"] / max(1, counts["copies"])}
        else:
            summary[group] = {**counts, "share": round(counts["same_label"] / counts["copies"], 4)
                              if counts["copies"] else None}
    return summary

