"""The teacher-logits step: a version plus its teacher's logits, so that stage 2 can train without the teacher."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distill import models
from distill.config import CacheLogitsConfig, TrainConfig
from distill.data import LOGITS, Collator, to_tensors
from distill.trainer import setup_runtime, to_device
from pipelines.config import identity_dict, to_dict
from pipelines.fingerprint import path_sha256
from pipelines.progress import progress_bar
from pipelines.runner import Step, StepPlan, run_step
from pipelines.store import Store, VersionWriter

STEP = Step("teacher-logits", module=__name__, package="distill")


def plan_teacher_logits(store: Store, ref: str, teacher_dir: str | Path, config: CacheLogitsConfig) -> StepPlan:
    """What caching the logits of ``teacher_dir`` on ``ref`` would write (the teacher identified by content)."""
    teacher_src = models.resolve_model(teacher_dir)
    parent = store.manifest(ref)
    resolved = {"teacher_sha256": path_sha256(teacher_src)}
    return StepPlan(STEP, {**to_dict(config), "teacher": teacher_src, **resolved},
                    {**identity_dict(config), **resolved}, [{"version_id": parent["version_id"]}],
                    lambda writer: _write(store, parent, teacher_src, config, writer))


@torch.no_grad()
def _write(store: Store, parent: dict[str, Any], teacher_src: str, config: CacheLogitsConfig,
           writer: VersionWriter) -> dict[str, Any]:
    """One chunk per input shard: the shard's rows plus a ``teacher_logits`` column."""
    runtime = setup_runtime(TrainConfig(device=config.device, num_workers=0))
    teacher = models.load_teacher(teacher_src, True, runtime.device)
    collate = Collator(teacher_src, config.max_seq_length)
    bar = progress_bar(total=parent["num_rows"], desc="teacher logits")
    for index, path in enumerate(store.shard_paths(parent["version_id"])):
        table = pq.read_table(path, memory_map=True)
        if writer.is_committed(index):
            bar.update(table.num_rows)
            continue
        rows, logits = table.to_pylist(), []
        for start in range(0, len(rows), config.batch_size):
            part = rows[start:start + config.batch_size]
            collate.encode(part)
            batch = to_device(to_tensors(collate(part)), runtime.device)
            out = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
            logits.append(out.float().cpu().numpy())
            bar.update(len(part))
        values = np.concatenate(logits) if logits else np.zeros((0, teacher.config.num_labels), np.float32)
        column = pa.array(list(values.astype(np.float32)), type=pa.list_(pa.float32()))
        writer.write_chunk(index, table.append_column(LOGITS, column),
                           accounting={"input_rows": table.num_rows, "kept": table.num_rows})
    bar.close()
    return {"teacher": teacher_src, "id2label": {str(k): v for k, v in teacher.config.id2label.items()}}


def cache_teacher_logits(store: Store, ref: str, teacher_dir: str | Path, config: CacheLogitsConfig | None = None,
                         name: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Write a new version = ``ref`` plus a ``teacher_logits`` column (one chunk per input shard; resumable);
    returns its manifest (the existing one when it is complete)."""
    plan = plan_teacher_logits(store, ref, teacher_dir, config or CacheLogitsConfig())
    return run_step(store, plan, name, resume).manifest
