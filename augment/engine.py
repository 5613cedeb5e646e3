"""Augment a dataset version: chunks of rows are prepared in worker processes, the models run in this process
(batched over the whole chunk), the rounds are sampled in the workers, and each chunk is written atomically."""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from augment.config import AugmentConfig
from augment.mlm import (
    InputSpec,
    MaskedLM,
    Request,
    build_requests,
    load_mlm,
    load_tokenizer,
    locate_model,
    resolve_device,
    resolve_precision,
)
from augment.sampling import CandidateFilter, augment_sentence, row_rng
from augment.vectors import NeighbourIndex, VectorSource, resolve_vectors
from augment.words import SentenceWords, WordSplitter
from pipelines.config import identity_dict, to_dict
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar
from pipelines.resources import minilm_path
from pipelines.runner import Step, StepPlan, run_step
from pipelines.store import Store, VersionWriter

STEP = Step("augment", module=__name__, package="augment", format=2)   # 2: aug_mlm_words / aug_vector_words
TEXT_FIELDS = ("text", "text_pair")
MLM_NONE_WARNING = ("mlm: none - no masked LM: EVERY eligible word takes its candidates from the word vectors "
                    "(this is not TinyBERT's augmentation; recorded in the data card)")


# ---- work units ------------------------------------------------------------------------------------------
@dataclass
class Unit:
    """One text of one row to augment, with the eligible words routed to the masked LM or the vectors."""

    row: int
    field: str
    sentence: SentenceWords
    mlm_words: list[int]


@dataclass
class Prepared:
    units: list[Unit] = field(default_factory=list)
    requests: list[tuple[int, Request]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Copies:
    """The augmented texts of one unit and, per text, the words it changed with MLM and with vector candidates."""

    texts: list[str]
    sources: list[tuple[int, int]]


@dataclass(frozen=True)
class SampleSpec:
    seed: int
    rounds: int
    p: float
    output_form: str


_STATE: dict[str, Any] = {}


def _init_worker(tokenizer: Any, spec: InputSpec | None) -> None:
    _STATE["splitter"] = WordSplitter(tokenizer)
    _STATE["spec"] = spec


def _prepare_part(rows: list[tuple[int, str, str | None]]) -> Prepared:
    """Split texts into words, route eligible words, and build the masked-LM inputs (worker side)."""
    start = time.perf_counter()
    spec: InputSpec | None = _STATE["spec"]
    out = Prepared(counts={"empty_texts": 0, "truncated_contexts": 0})
    valid = [(r, f, t) for r, f, t in rows if t is not None and t.strip()]
    out.counts["empty_texts"] = len(rows) - len(valid)
    sentences = _STATE["splitter"].split([t for _, _, t in valid]) if valid else []
    for (row, name, _), sentence in zip(valid, sentences):
        mlm_words = [i for i in sentence.eligible if spec is not None and len(sentence.pieces[i]) == 1]
        out.units.append(Unit(row, name, sentence, mlm_words))
        if spec is not None:
            for request in build_requests(sentence, mlm_words, spec):
                out.requests.append((len(out.units) - 1, request))
                out.counts["truncated_contexts"] += request.truncated
    out.seconds = time.perf_counter() - start
    return out


def _sample_part(units: list[Unit], candidates: list[list[list[str]]], row_ids: list[int],
                 spec: SampleSpec) -> tuple[list[Copies], dict[str, int], float]:
    """The augmented texts of each unit with the words each changed per candidate source (worker side)."""
    start = time.perf_counter()
    copies, counts = [], {"replacements": 0, "mlm_replacements": 0, "duplicates_dropped": 0}
    for unit, cands in zip(units, candidates):
        rng = row_rng(spec.seed, row_ids[unit.row], unit.field)
        mlm_words = set(unit.mlm_words)
        texts, c = augment_sentence(unit.sentence, cands, spec.rounds, spec.p, rng, spec.output_form,
                                    [i in mlm_words for i in unit.sentence.eligible])
        copies.append(Copies(texts, c.sources))
        counts["replacements"] += c.replacements
        counts["mlm_replacements"] += sum(mlm for mlm, _ in c.sources)
        counts["duplicates_dropped"] += c.duplicates_dropped
    return copies, counts, time.perf_counter() - start


class _Executor:
    """Runs parts inline (workers=0) or in a `multiprocess` pool; results come back in submission order."""

    def __init__(self, workers: int, tokenizer: Any, spec: InputSpec | None):
        self.workers = workers
        self.pool = None
        if workers > 0:
            import multiprocess

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self.pool = multiprocess.get_context("fork").Pool(workers, _init_worker, (tokenizer, spec))
        else:
            _init_worker(tokenizer, spec)

    def submit(self, fn: Callable[..., Any], arg_lists: list[tuple[Any, ...]]) -> Callable[[], list[Any]]:
        if self.pool is None:
            results = [fn(*args) for args in arg_lists]
            return lambda: results
        handles = [self.pool.apply_async(fn, args) for args in arg_lists]
        return lambda: [h.get() for h in handles]

    @property
    def parts(self) -> int:
        """How many parts to cut each chunk's work into."""
        return max(1, self.workers)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _slices(n: int, parts: int) -> list[slice]:
    size = -(-n // parts) if n else 1
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)] or [slice(0, 0)]


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
@dataclass
class _Models:
    """The models one run uses (owned by this process)."""

    mlm: MaskedLM | None
    index: NeighbourIndex
    filter: CandidateFilter


def _fields(config: AugmentConfig, columns: list[str]) -> list[str]:
    fields = list(config.fields) if config.fields else [f for f in TEXT_FIELDS if f in columns]
    missing = [f for f in fields if f not in columns]
    if missing or not fields:
        raise DistilleryError(f"augment: text column(s) {missing or list(TEXT_FIELDS)} not in the input version "
                              f"(columns: {', '.join(columns)})")
    return fields


# ---- the step --------------------------------------------------------------------------------------------
def plan_augment(store: Store, ref: str, config: AugmentConfig) -> StepPlan:
    """What augmenting ``ref`` would write: models and vectors located and fingerprinted, none loaded yet."""
    vid = store.resolve(ref)
    source = store.manifest(vid)
    fields = _fields(config, [f["name"] for f in source["schema"]])
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    use_mlm = config.mlm.strip().lower() != "none"
    tokenizer_spec = config.mlm if use_mlm else (config.tokenizer or str(minilm_path()))
    model = locate_model(tokenizer_spec)
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
    setup = _Setup(config, fields, device, precision, tokenizer_spec, model if use_mlm else None, vectors, recorded)
    return StepPlan(STEP, recorded, identity, [{"version_id": vid}],
                    lambda writer: _write(store, vid, source["num_rows"], setup, writer))


@dataclass
class _Setup:
    """The resolved settings of one augmentation run."""

    config: AugmentConfig
    fields: list[str]
    device: str
    precision: str
    tokenizer_spec: str
    mlm_identity: dict[str, Any] | None
    vectors: VectorSource
    recorded: dict[str, Any]


def _write(store: Store, vid: str, total_rows: int, setup: _Setup, writer: VersionWriter) -> dict[str, Any]:
    """Load the models, augment every chunk not yet committed; returns the manifest's extra."""
    config = setup.config
    if setup.mlm_identity is None:
        print(f"WARNING {MLM_NONE_WARNING}", file=sys.stderr, flush=True)
        mlm = None
    else:
        mlm = load_mlm(config.mlm, setup.device, setup.precision, setup.mlm_identity)
    tokenizer = mlm.tokenizer if mlm else load_tokenizer(setup.tokenizer_spec)
    vectors = setup.vectors.load()
    spec = mlm.input_spec(config.input_mode, config.masks_per_pass, config.max_length) if mlm else None
    specials = frozenset(tokenizer.all_special_tokens)
    models = _Models(mlm, NeighbourIndex(vectors, config.glove_vocab_limit, config.top_k, setup.device),
                     CandidateFilter(config.drop_punctuation, config.drop_unk, config.drop_self, config.match_case,
                                     specials))
    timing = {"prepare_s": 0.0, "mlm_s": 0.0, "neighbours_s": 0.0, "sampling_s": 0.0, "io_s": 0.0, "wall_s": 0.0}
    start = time.perf_counter()
    executor = _Executor(config.workers, tokenizer, spec)
    try:
        _run(store, vid, config, setup.fields, models, writer, executor, total_rows, timing)
    finally:
        executor.close()
    timing["wall_s"] = time.perf_counter() - start
    counts: dict[str, int] = {}
    for index in writer.committed_chunks():
        for key, value in writer.chunk_record(index)["accounting"].items():
            counts[key] = counts.get(key, 0) + value
    return {
        "models": {"mlm": mlm.identity if mlm else "none", "tokenizer": setup.tokenizer_spec,
                   "vectors": vectors.identity},
        "options": {k: setup.recorded[k] for k in ("num_aug", "top_k", "replace_prob", "glove_vocab_limit",
                                                   "input_mode", "output_form", "masks_per_pass", "fields",
                                                   "precision")},
        "seed": config.seed,
        "counts": counts,
        "mlm_context": {"max_pieces": spec.max_length if spec else None,
                        "long_texts": "masked-LM context cut to a window of pieces around the masked word"},
        "warnings": [] if mlm else [MLM_NONE_WARNING],
        "run": {"workers": config.workers, "device": setup.device, "batch_size": config.mlm_batch_size,
                "timing_s": {k: round(v, 3) for k, v in timing.items()},
                "mlm": dict(mlm.stats) if mlm else None, "neighbours": dict(models.index.stats)},
    }


def augment_version(store: Store, ref: str, config: AugmentConfig, name: str | None = None,
                    resume: bool = False) -> dict[str, Any]:
    """Write the augmented version of ``ref``; returns its manifest (the existing one if it is complete)."""
    return run_step(store, plan_augment(store, ref, config), name, resume).manifest


def _run(store: Store, vid: str, config: AugmentConfig, fields: list[str], models: _Models, writer: VersionWriter,
         executor: _Executor, total_rows: int, timing: dict[str, float]) -> None:
    """Process every chunk not yet committed, keeping one chunk of preparation ahead of the models."""
    sample_spec = SampleSpec(config.seed, config.rounds(), config.replace_prob, config.output_form)
    bar = progress_bar(total=total_rows, desc="augment", unit="sent")
    offset = 0                      # output row id of the next chunk's first row
    row_base = 0                    # input row index of the next chunk's first row
    ahead: deque = deque()
    pending: tuple | None = None

    def flush(item: tuple) -> None:
        nonlocal offset
        index, table, row_ids, prepared, counts, collect = item
        results = collect()
        io_start = time.perf_counter()
        copies = [c for part in results for c in part[0]]
        for part in results:
            for key, value in part[1].items():
                counts[key] = counts.get(key, 0) + value
            timing["sampling_s"] += part[2]
        out = _output_table(table, fields, prepared.units, copies, row_ids, offset)
        counts["output_rows"] = out.num_rows
        writer.write_chunk(index, out, accounting=counts)
        offset += out.num_rows
        timing["io_s"] += time.perf_counter() - io_start
        bar.update(table.num_rows)

    io_start = time.perf_counter()
    for index, table in enumerate(_row_chunks(store, vid, config.chunk_rows)):
        row_ids = _row_ids(table, row_base)
        row_base += table.num_rows
        if writer.is_committed(index):
            offset += writer.chunk_record(index)["shard"]["rows"]
            bar.update(table.num_rows)
            continue
        texts = {f: table.column(f).to_pylist() for f in fields}
        rows = [(r, f, texts[f][r] if isinstance(texts[f][r], str) else None)
                for r in range(table.num_rows) for f in fields]
        parts = [(rows[s],) for s in _slices(len(rows), executor.parts)]
        ahead.append((index, table, row_ids, executor.submit(_prepare_part, parts)))
        timing["io_s"] += time.perf_counter() - io_start
        if len(ahead) > 1:
            pending = _advance(ahead.popleft(), models, config, executor, sample_spec, timing, pending, flush)
        io_start = time.perf_counter()
    while ahead:
        pending = _advance(ahead.popleft(), models, config, executor, sample_spec, timing, pending, flush)
    if pending is not None:
        flush(pending)
    bar.close()


def _advance(item: tuple, models: _Models, config: AugmentConfig, executor: _Executor, sample_spec: SampleSpec,
             timing: dict[str, float], pending: tuple | None, flush: Callable[[tuple], None]) -> tuple:
    """Run the models on one prepared chunk, submit its sampling, then write the previous chunk."""
    index, table, row_ids, collect = item
    parts: list[Prepared] = collect()
    prepared = Prepared()
    counts = {"input_rows": table.num_rows, "empty_texts": 0, "truncated_contexts": 0}
    for part in parts:
        base = len(prepared.units)
        prepared.units += part.units
        prepared.requests += [(base + u, r) for u, r in part.requests]
        for key, value in part.counts.items():
            counts[key] += value
        timing["prepare_s"] += part.seconds
    candidates = _candidates(prepared, models, config, counts, timing)
    slices = _slices(len(prepared.units), executor.parts)
    handle = executor.submit(_sample_part, [(prepared.units[s], candidates[s], row_ids, sample_spec) for s in slices])
    if pending is not None:
        flush(pending)
    return index, table, row_ids, prepared, counts, handle


def _candidates(prepared: Prepared, models: _Models, config: AugmentConfig, counts: dict[str, int],
                timing: dict[str, float]) -> list[list[list[str]]]:
    """Candidate lists for every eligible word of every unit (masked LM for single pieces, else vectors)."""
    from_mlm: dict[tuple[int, int], list[str]] = {}
    if prepared.requests and models.mlm is not None:
        start = time.perf_counter()
        tops = models.mlm.top_k([r for _, r in prepared.requests], config.top_k, config.mlm_batch_size)
        for (unit, request), top in zip(prepared.requests, tops):
            for word, ids in zip(request.words, top):
                from_mlm[(unit, word)] = models.mlm.tokens(ids)
        timing["mlm_s"] += time.perf_counter() - start
    start = time.perf_counter()
    vector_words = [u.sentence.words[i] for u in prepared.units
                    for i in sorted(set(u.sentence.eligible) - set(u.mlm_words))]
    neighbours = models.index.neighbours(vector_words)
    timing["neighbours_s"] += time.perf_counter() - start
    counts.update(eligible_words=0, mlm_words=0, vector_words=0, self_only_words=0)
    result = []
    for u, unit in enumerate(prepared.units):
        lists = []
        for i in unit.sentence.eligible:
            word = unit.sentence.words[i]
            raw = from_mlm[(u, i)] if (u, i) in from_mlm else neighbours[word]
            counts["mlm_words" if (u, i) in from_mlm else "vector_words"] += 1
            if (u, i) in from_mlm and config.mlm_min_similarity > 0:
                raw = models.index.similar(word, raw, config.mlm_min_similarity)
            kept = models.filter.apply(word, raw)
            counts["self_only_words"] += kept == [word]
            lists.append(kept)
        counts["eligible_words"] += len(lists)
        result.append(lists)
    return result


def _row_ids(table: pa.Table, base: int) -> list[int]:
    if "row_id" in table.column_names:
        return [int(v) for v in table.column("row_id").to_pylist()]
    return list(range(base, base + table.num_rows))


def _output_table(table: pa.Table, fields: list[str], units: list[Unit], copies: list[Copies],
                  row_ids: list[int], offset: int) -> pa.Table:
    """Originals (aug_copy 0) each followed by its copies, field by field; labels and extra columns carried;
    ``aug_mlm_words`` / ``aug_vector_words``: the words a copy changed with each candidate source."""
    by_row: dict[int, list[tuple[str, Copies]]] = {}
    for unit, made in zip(units, copies):
        by_row.setdefault(unit.row, []).append((unit.field, made))
    originals = {f: table.column(f).to_pylist() for f in fields}
    take, aug_field, aug_copy, sources = [], [], [], []
    values: dict[str, list[str | None]] = {f: [] for f in fields}
    for r in range(table.num_rows):
        take.append(r)
        aug_field.append(None)
        aug_copy.append(0)
        sources.append((0, 0))
        for f in fields:
            values[f].append(originals[f][r])
        for name, made in by_row.get(r, []):
            for c, (text, source) in enumerate(zip(made.texts, made.sources), 1):
                take.append(r)
                aug_field.append(name)
                aug_copy.append(c)
                sources.append(source)
                for f in fields:
                    values[f].append(text if f == name else originals[f][r])
    out = table.take(pa.array(take, pa.int64()))
    for f in fields:
        column_type = table.schema.field(f).type
        column_type = column_type if pa.types.is_string(column_type) or pa.types.is_large_string(column_type) \
            else pa.string()
        out = out.set_column(out.schema.get_field_index(f), f, pa.array(values[f], column_type))
    if "row_id" in out.column_names:
        out = out.drop_columns(["row_id"])
    n = out.num_rows
    return (out.append_column("source_row_id", pa.array([row_ids[r] for r in take], pa.int64()))
            .append_column("aug_field", pa.array(aug_field, pa.string()))
            .append_column("aug_copy", pa.array(aug_copy, pa.int32()))
            .append_column("aug_mlm_words", pa.array([s[0] for s in sources], pa.int32()))
            .append_column("aug_vector_words", pa.array([s[1] for s in sources], pa.int32()))
            .append_column("row_id", pa.array(range(offset, offset + n), pa.int64())))
