"""Augment a dataset version. The local engine: chunks of rows are prepared in worker processes, the models run
in this process (batched over the whole chunk), the rounds are sampled in the workers, and each chunk is written
atomically. ``engine = "ray"`` runs the same chunk stages in Ray actors (``augment.ray_engine``)."""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from augment.chunk import (
    TAGS,
    TOKENS,
    Executor,
    Models,
    Prepared,
    SampleSpec,
    Setup,
    assemble,
    candidates,
    load_models,
    loaded_identity,
    merge_prepared,
    row_ids,
    run_timing,
    submit_prepare,
    submit_sample,
)
from augment.config import AugmentConfig
from augment.mlm import check_model_options, locate_model, resolve_device, resolve_precision
from augment.tagging import MentionPool
from augment.vectors import resolve_vectors
from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.config import identity_dict, to_dict
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar
from pipelines.resources import minilm_path
from pipelines.runner import Step, StepPlan
from pipelines.store import Store, VersionWriter

if TYPE_CHECKING:
    from tqdm import tqdm

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


def _tagging_fields(config: AugmentConfig, columns: list[str]) -> list[str]:
    """The one field of a token-classification version (its tokens); options that make no sense there are
    refused in one line."""
    refused = {"fields": config.fields is not None, "output_form = reference": config.output_form == "reference",
               "a text_pair column": "text_pair" in columns}
    for what, present in refused.items():
        if present:
            raise DistilleryError(f"augment: {what} does not apply to a token-classification version (its words "
                                  f"are its tokens; only O words are replaced, entity words kept as they are)")
    if TOKENS not in columns:
        raise DistilleryError(f"augment: the version has a {TAGS} column but no {TOKENS} column (columns: "
                              f"{', '.join(columns)})")
    return [TOKENS]


def _mention_pool(store: Store, vid: str) -> MentionPool:
    """The distinct mentions of the version, per type (read once, before the chunks)."""
    return MentionPool.collect((tokens, tags) for batch in store.iter_batches(vid, columns=[TOKENS, TAGS])
                               for tokens, tags in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))


# ---- the step --------------------------------------------------------------------------------------------
def plan_augment(store: Store, ref: str, config: AugmentConfig) -> StepPlan:
    """What augmenting ``ref`` would write: models and vectors located and fingerprinted, none loaded yet (the
    masked LM's config is read to check the options that depend on it)."""
    vid = store.resolve(ref)
    source = store.manifest(vid)
    columns = [f["name"] for f in source["schema"]]
    tagging = TAGS in columns
    if config.mention_replace_prob > 0 and not tagging:
        raise DistilleryError(f"augment: mention_replace_prob needs a token-classification version ({TAGS} "
                              f"column); {ref} has none")
    fields = _tagging_fields(config, columns) if tagging else _fields(config, columns)
    device = resolve_device(config.device) if config.mlm_backend == "torch" else "cpu"   # ORT: the CPU
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
    if tagging:
        resolved["tagging"] = True
    recorded = {**to_dict(config), **resolved}
    identity = {**identity_dict(config), **resolved}
    for key, digest in (("mlm", resolved["mlm_sha256"]), ("vectors", resolved["vectors_sha256"]),
                        ("tokenizer", resolved.get("tokenizer_sha256") or use_mlm)):   # (the MLM's own tokenizer)
        if digest:
            identity.pop(key, None)        # identified by content, wherever the files are
    setup = Setup(config, fields, device, precision, tokenizer_spec, model if use_mlm else None, vectors, recorded,
                  tagging)
    return StepPlan(STEP, recorded, identity, [{"version_id": vid}],
                    lambda writer: _write(store, vid, source["num_rows"], setup, writer))


def _write(store: Store, vid: str, total_rows: int, setup: Setup, writer: VersionWriter) -> dict[str, Any]:
    """Augment every chunk not yet committed with the configured engine; returns the manifest's extra."""
    config = setup.config
    if setup.mlm_identity is None:
        print(f"WARNING {MLM_NONE_WARNING}", file=sys.stderr, flush=True)
    if setup.tagging and config.mention_replace_prob > 0:
        setup = dataclasses.replace(setup, mentions=_mention_pool(store, vid))
    if config.engine == "ray":
        from augment.ray_engine import run_ray

        loaded, run, timing = run_ray(store, vid, total_rows, setup, writer)
    else:
        loaded, run, timing = _run_local(store, vid, total_rows, setup, writer)
    options = ("num_aug", "top_k", "replace_prob", "glove_vocab_limit", "input_mode", "output_form",
               "masks_per_pass", "fields", "precision") + (("mention_replace_prob",) if setup.tagging else ()) + \
        (("mlm_backend",) if config.mlm_backend != "torch" else ())
    return {
        **({"tagging": _tagging_record(setup)} if setup.tagging else {}),
        "models": {"mlm": setup.mlm_identity or "none", "tokenizer": setup.tokenizer_spec,
                   "vectors": loaded["vectors"]},
        "options": {k: setup.recorded[k] for k in options},
        "seed": config.seed,
        "counts": writer.accounting(),
        "mlm_context": {"max_pieces": loaded["max_pieces"],
                        "long_texts": "masked-LM context cut to a window of pieces around the masked word"},
        "warnings": [] if setup.mlm_identity else [MLM_NONE_WARNING],
        "run": {"engine": config.engine, **run, "device": setup.device, "batch_size": config.mlm_batch_size,
                "timing_s": {k: round(v, 3) for k, v in timing.items()}},
    }


def _tagging_record(setup: Setup) -> dict[str, Any]:
    """What the manifest says of a tagging run: which words were eligible and the mentions drawn from."""
    pool = setup.mentions.summary() if setup.mentions else {}
    return {"words": f"the {TOKENS} column (never re-split); only words tagged O replaced, {TAGS} carried",
            "mention_replace_prob": setup.config.mention_replace_prob,
            "mention_pool": {"mentions": sum(pool.values()), "by_type": pool} if setup.mentions else None}


def _run_local(store: Store, vid: str, total_rows: int, setup: Setup,
               writer: VersionWriter) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Load the models here and augment every chunk not yet committed with ``workers`` helper processes; returns
    what the manifest records of the loaded models, of the run and its seconds (``wall_s``: from the models
    loaded to the last chunk written)."""
    models = load_models(setup)
    start = time.perf_counter()
    executor = Executor(setup.config.workers, models.tokenizer, models.spec, setup.mentions)
    try:
        with progress_bar(total=total_rows, desc="augment", unit="sent") as bar:
            chunks = _submitted(store, vid, setup, writer, executor)
            written = write_chunks(writer, _outputs(chunks, setup, models, executor, bar), bar=bar)
    finally:
        executor.close()
    run = {"workers": setup.config.workers, "mlm": dict(models.mlm.stats) if models.mlm else None,
           "neighbours": dict(models.index.stats)}
    return loaded_identity(models), run, run_timing(written, time.perf_counter() - start)


@dataclass
class _Chunk:
    """A chunk in the local engine's stages: its rows, their ids, its output so far, and the collector of the
    parts of the stage it is in (its preparation, then, once the models ran, its sampling)."""

    table: pa.Table
    row_ids: list[int]
    output: ChunkOutput
    collect: Callable[[], list[Any]]
    prepared: Prepared = field(default_factory=Prepared)


def _submitted(store: Store, vid: str, setup: Setup, writer: VersionWriter, executor: Executor) -> Iterator[_Chunk]:
    """The chunks not yet committed, each read and handed to the workers to prepare (the seconds that takes in
    its ``io_s``)."""
    row_base = 0                    # input row index of the next chunk's first row
    start = time.perf_counter()
    for index, table in enumerate(_row_chunks(store, vid, setup.config.chunk_rows)):
        ids = row_ids(table, row_base)
        row_base += table.num_rows
        if not writer.is_committed(index):
            collect = submit_prepare(table, setup.fields, executor, setup.tagging)
            output = ChunkOutput(index, accounting={"input_rows": table.num_rows},
                                 timing={"io_s": time.perf_counter() - start})
            yield _Chunk(table, ids, output, collect)
            start = time.perf_counter()


def _outputs(chunks: Iterator[_Chunk], setup: Setup, models: Models, executor: Executor,
             bar: tqdm) -> Iterator[ChunkOutput]:
    """Each chunk's output, in order: the models run on a chunk while the workers prepare the next one and
    sample the one before."""
    spec = SampleSpec.of(setup.config, setup.tagging)
    sampling: _Chunk | None = None
    for chunk in _one_ahead(chunks):
        chunk.prepared = merge_prepared(chunk.collect(), chunk.output)
        cands = candidates(chunk.prepared, models, setup.config, chunk.output)
        chunk.collect = submit_sample(chunk.prepared, cands, chunk.row_ids, spec, executor)
        if sampling is not None:
            yield _assembled(sampling, setup, bar)
        sampling = chunk
    if sampling is not None:
        yield _assembled(sampling, setup, bar)


def _assembled(chunk: _Chunk, setup: Setup, bar: tqdm) -> ChunkOutput:
    """The chunk's output, once its copies are sampled."""
    bar.update(chunk.table.num_rows)
    return assemble(chunk.table, setup.fields, chunk.prepared, chunk.collect(), chunk.row_ids, chunk.output,
                    setup.tagging)


def _one_ahead(items: Iterator[_Chunk]) -> Iterator[_Chunk]:
    """``items``, each given once the next one was taken (so that the next chunk is prepared meanwhile)."""
    previous = None
    for item in items:
        if previous is not None:
            yield previous
        previous = item
    if previous is not None:
        yield previous
