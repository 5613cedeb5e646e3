"""Augment a dataset version. The local engine: chunks of rows are prepared in worker processes, the models run
in this process (batched over the whole chunk), the rounds are sampled in the workers, and each chunk is written
atomically. ``engine = "ray"`` runs the same chunk stages in Ray actors (``augment.ray_engine``)."""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from augment.chunk import (
    TIMING_KEYS,
    Executor,
    Models,
    SampleSpec,
    Setup,
    assemble,
    candidates,
    load_models,
    merge_prepared,
    numbered,
    row_ids,
    submit_prepare,
    submit_sample,
)
from augment.config import AugmentConfig
from augment.mlm import check_model_options, locate_model, resolve_device, resolve_precision
from augment.vectors import resolve_vectors
from pipelines.config import identity_dict, to_dict
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar
from pipelines.resources import minilm_path
from pipelines.runner import Step, StepPlan, run_step
from pipelines.store import Store, VersionWriter

STEP = Step("augment", module=__name__, package="augment", format=2,   # 2: aug_mlm_words / aug_vector_words
            rows_key="output_rows")
TEXT_FIELDS = ("text", "text_pair")
MLM_NONE_WARNING = ("mlm: none - no masked LM: EVERY eligible word takes its candidates from the word vectors "
                    "(this is not TinyBERT's augmentation; recorded in the data card)")


# ---- reading ---------------------------------------------------------------------------------------------
def _row_chunks(store: Store, vid: str, rows: int) -> Iterator[pa.Table]:
    """The input version in tables of exactly ``rows`` rows (the last may be shorter)."""
    buffer: list[pa.RecordBatch] = []
    held = 0
    for batch in store.iter_batches(vid, batch_size=rows):
        buffer.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(buffer)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            buffer, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buffer)


# ---- models and configuration ----------------------------------------------------------------------------
def _fields(config: AugmentConfig, columns: list[str]) -> list[str]:
    fields = list(config.fields) if config.fields else [f for f in TEXT_FIELDS if f in columns]
    missing = [f for f in fields if f not in columns]
    if missing or not fields:
        raise DistilleryError(f"augment: text column(s) {missing or list(TEXT_FIELDS)} not in the input version "
                              f"(columns: {', '.join(columns)})")
    return fields


# ---- the step --------------------------------------------------------------------------------------------
def plan_augment(store: Store, ref: str, config: AugmentConfig) -> StepPlan:
    """What augmenting ``ref`` would write: models and vectors located and fingerprinted, none loaded yet (the
    masked LM's config is read to check the options that depend on it)."""
    vid = store.resolve(ref)
    source = store.manifest(vid)
    fields = _fields(config, [f["name"] for f in source["schema"]])
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    use_mlm = config.mlm.strip().lower() != "none"
    tokenizer_spec = config.mlm if use_mlm else (config.tokenizer or str(minilm_path()))
    model = locate_model(tokenizer_spec)
    if use_mlm:
        check_model_options(config.mlm, config.top_k, config.max_length)
    vectors = resolve_vectors(config.vectors)
    resolved = {"num_aug": config.rounds(), "fields": list(fields), "compute": device.split(":")[0],
                "precision": precision, "mlm_sha256": model.get("sha256") if use_mlm else None,
                "vectors_sha256": vectors.identity["sha256"]}
    if not use_mlm:
        resolved.update(tokenizer=tokenizer_spec, tokenizer_sha256=model.get("sha256"))
    recorded = {**to_dict(config), **resolved}
    identity = {**identity_dict(config), **resolved}
    for key, digest in (("mlm", resolved["mlm_sha256"]), ("vectors", resolved["vectors_sha256"]),
                        ("tokenizer", resolved.get("tokenizer_sha256") or use_mlm)):   # (the MLM's own tokenizer)
        if digest:
            identity.pop(key, None)        # identified by content, wherever the files are
    setup = Setup(config, fields, device, precision, tokenizer_spec, model if use_mlm else None, vectors, recorded)
    return StepPlan(STEP, recorded, identity, [{"version_id": vid}],
                    lambda writer: _write(store, vid, source["num_rows"], setup, writer))


def _write(store: Store, vid: str, total_rows: int, setup: Setup, writer: VersionWriter) -> dict[str, Any]:
    """Augment every chunk not yet committed with the configured engine; returns the manifest's extra."""
    config = setup.config
    if setup.mlm_identity is None:
        print(f"WARNING {MLM_NONE_WARNING}", file=sys.stderr, flush=True)
    timing = dict.fromkeys(TIMING_KEYS, 0.0)          # (each engine sets wall_s)
    if config.engine == "ray":
        from augment.ray_engine import run_ray

        loaded, run = run_ray(store, vid, total_rows, setup, writer, timing)
    else:
        loaded, run = _run_local(store, vid, total_rows, setup, writer, timing)
    counts: dict[str, int] = {}
    for index in writer.committed_chunks():
        for key, value in writer.chunk_record(index)["accounting"].items():
            counts[key] = counts.get(key, 0) + value
    return {
        "models": {"mlm": setup.mlm_identity or "none", "tokenizer": setup.tokenizer_spec,
                   "vectors": loaded["vectors"]},
        "options": {k: setup.recorded[k] for k in ("num_aug", "top_k", "replace_prob", "glove_vocab_limit",
                                                   "input_mode", "output_form", "masks_per_pass", "fields",
                                                   "precision")},
        "seed": config.seed,
        "counts": counts,
        "mlm_context": {"max_pieces": loaded["max_pieces"],
                        "long_texts": "masked-LM context cut to a window of pieces around the masked word"},
        "warnings": [] if setup.mlm_identity else [MLM_NONE_WARNING],
        "run": {"engine": config.engine, **run, "device": setup.device, "batch_size": config.mlm_batch_size,
                "timing_s": {k: round(v, 3) for k, v in timing.items()}},
    }


def loaded_identity(models: Models) -> dict[str, Any]:
    """What the manifest records of the loaded models: the vectors' identity and the masked LM's context cap."""
    return {"vectors": models.vectors.identity, "max_pieces": models.spec.max_length if models.spec else None}


def augment_version(store: Store, ref: str, config: AugmentConfig, name: str | None = None,
                    resume: bool = False) -> dict[str, Any]:
    """Write the augmented version of ``ref``; returns its manifest (the existing one if it is complete)."""
    return run_step(store, plan_augment(store, ref, config), name, resume).manifest


def _run_local(store: Store, vid: str, total_rows: int, setup: Setup, writer: VersionWriter,
               timing: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the models here and augment every chunk not yet committed with ``workers`` helper processes
    (``wall_s``: from the models loaded to the last chunk written)."""
    models = load_models(setup)
    start = time.perf_counter()
    executor = Executor(setup.config.workers, models.tokenizer, models.spec)
    try:
        _run(store, vid, setup.config, setup.fields, models, writer, executor, total_rows, timing)
    finally:
        executor.close()
    timing["wall_s"] = time.perf_counter() - start
    return loaded_identity(models), {"workers": setup.config.workers, "mlm": dict(models.mlm.stats)
                                     if models.mlm else None, "neighbours": dict(models.index.stats)}


def _run(store: Store, vid: str, config: AugmentConfig, fields: list[str], models: Models, writer: VersionWriter,
         executor: Executor, total_rows: int, timing: dict[str, float]) -> None:
    """Process every chunk not yet committed, keeping one chunk of preparation ahead of the models."""
    sample_spec = SampleSpec.of(config)
    bar = progress_bar(total=total_rows, desc="augment", unit="sent")
    offset = 0                      # output row id of the next chunk's first row
    row_base = 0                    # input row index of the next chunk's first row
    ahead: deque = deque()
    pending: tuple | None = None

    def flush(item: tuple) -> None:
        nonlocal offset
        index, table, ids, prepared, counts, collect = item
        results = collect()
        io_start = time.perf_counter()
        out = numbered(assemble(table, fields, prepared, results, ids, counts, timing), offset)
        writer.write_chunk(index, out, accounting=counts)
        offset += out.num_rows
        timing["io_s"] += time.perf_counter() - io_start
        bar.update(table.num_rows)

    def advance(item: tuple) -> None:
        """Run the models on one prepared chunk, submit its sampling, then write the previous chunk."""
        nonlocal pending
        index, table, ids, collect = item
        prepared, counts = merge_prepared(collect(), table.num_rows, timing)
        cands = candidates(prepared, models, config, counts, timing)
        handle = submit_sample(prepared, cands, ids, sample_spec, executor)
        if pending is not None:
            flush(pending)
        pending = index, table, ids, prepared, counts, handle

    io_start = time.perf_counter()
    for index, table in enumerate(_row_chunks(store, vid, config.chunk_rows)):
        ids = row_ids(table, row_base)
        row_base += table.num_rows
        if writer.is_committed(index):
            offset += writer.chunk_record(index)["shard"]["rows"]
            bar.update(table.num_rows)
            continue
        ahead.append((index, table, ids, submit_prepare(table, fields, executor)))
        timing["io_s"] += time.perf_counter() - io_start
        if len(ahead) > 1:
            advance(ahead.popleft())
        io_start = time.perf_counter()
    while ahead:
        advance(ahead.popleft())
    if pending is not None:
        flush(pending)
    bar.close()
