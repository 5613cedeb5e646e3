"""One chunk's augmentation, shared by the engines: words are split and routed (``prepare``), the models give
candidates for the whole chunk at once, each row's copies are sampled with its own seed, and the output table
is assembled. The local engine pipelines these stages over worker processes; a Ray actor runs them in turn."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from augment.config import AugmentConfig
from augment.mlm import InputSpec, MaskedLM, Request, build_requests, load_mlm, load_tokenizer
from augment.sampling import CandidateFilter, augment_sentence, row_rng
from augment.vectors import NeighbourIndex, VectorSource, WordVectors
from augment.words import SentenceWords, WordSplitter

CHUNK_TIMING_KEYS = ("prepare_s", "mlm_s", "neighbours_s", "sampling_s")       # what one chunk's stages take
TIMING_KEYS = (*CHUNK_TIMING_KEYS, "io_s", "wall_s")


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

    @classmethod
    def of(cls, config: AugmentConfig) -> SampleSpec:
        return cls(config.seed, config.rounds(), config.replace_prob, config.output_form)


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


class Executor:
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


# ---- models ----------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """The resolved settings of one augmentation run (what a process needs to load the models)."""

    config: AugmentConfig
    fields: list[str]
    device: str
    precision: str
    tokenizer_spec: str
    mlm_identity: dict[str, Any] | None
    vectors: VectorSource
    recorded: dict[str, Any]


@dataclass
class Models:
    """The models of one process: masked LM (or none), its tokenizer and input spec, neighbours and filter."""

    mlm: MaskedLM | None
    tokenizer: Any
    spec: InputSpec | None
    vectors: WordVectors
    index: NeighbourIndex
    filter: CandidateFilter


def load_models(setup: Setup) -> Models:
    """Load the masked LM, tokenizer and word vectors ``setup`` names."""
    config = setup.config
    mlm = None if setup.mlm_identity is None else load_mlm(config.mlm, setup.device, setup.precision,
                                                            setup.mlm_identity)
    tokenizer = mlm.tokenizer if mlm else load_tokenizer(setup.tokenizer_spec)
    vectors = setup.vectors.load()
    spec = mlm.input_spec(config.input_mode, config.masks_per_pass, config.max_length) if mlm else None
    return Models(mlm, tokenizer, spec, vectors,
                  NeighbourIndex(vectors, config.glove_vocab_limit, config.top_k, setup.device),
                  CandidateFilter(config.drop_punctuation, config.drop_unk, config.drop_self, config.match_case,
                                  frozenset(tokenizer.all_special_tokens)))


# ---- the stages of one chunk -----------------------------------------------------------------------------
def submit_prepare(table: pa.Table, fields: list[str], executor: Executor) -> Callable[[], list[Prepared]]:
    """Start splitting and routing the chunk's texts; returns the collector of the parts."""
    texts = {f: table.column(f).to_pylist() for f in fields}
    rows = [(r, f, texts[f][r] if isinstance(texts[f][r], str) else None)
            for r in range(table.num_rows) for f in fields]
    return executor.submit(_prepare_part, [(rows[s],) for s in _slices(len(rows), executor.parts)])


def merge_prepared(parts: list[Prepared], input_rows: int,
                   timing: dict[str, float]) -> tuple[Prepared, dict[str, int]]:
    """The prepared parts of one chunk as one, with the chunk's first counts."""
    prepared = Prepared()
    counts = {"input_rows": input_rows, "empty_texts": 0, "truncated_contexts": 0}
    for part in parts:
        base = len(prepared.units)
        prepared.units += part.units
        prepared.requests += [(base + u, r) for u, r in part.requests]
        for key, value in part.counts.items():
            counts[key] += value
        timing["prepare_s"] += part.seconds
    return prepared, counts


def candidates(prepared: Prepared, models: Models, config: AugmentConfig, counts: dict[str, int],
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


def submit_sample(prepared: Prepared, cands: list[list[list[str]]], row_ids: list[int], spec: SampleSpec,
                  executor: Executor) -> Callable[[], list[tuple[list[Copies], dict[str, int], float]]]:
    """Start sampling the copies of every unit; returns the collector of the parts."""
    slices = _slices(len(prepared.units), executor.parts)
    return executor.submit(_sample_part, [(prepared.units[s], cands[s], row_ids, spec) for s in slices])


def assemble(table: pa.Table, fields: list[str], prepared: Prepared,
             results: list[tuple[list[Copies], dict[str, int], float]], row_ids: list[int],
             counts: dict[str, int], timing: dict[str, float]) -> pa.Table:
    """The chunk's output table (without ``row_id``: see ``numbered``), its counts completed."""
    copies = [c for part in results for c in part[0]]
    for part in results:
        for key, value in part[1].items():
            counts[key] = counts.get(key, 0) + value
        timing["sampling_s"] += part[2]
    out = output_table(table, fields, prepared.units, copies, row_ids)
    counts["output_rows"] = out.num_rows
    return out


def augment_chunk(table: pa.Table, row_ids: list[int], fields: list[str], models: Models, config: AugmentConfig,
                  executor: Executor, timing: dict[str, float]) -> tuple[pa.Table, dict[str, int]]:
    """One chunk's output table (without ``row_id``) and accounting, its stages run one after the other."""
    prepared, counts = merge_prepared(submit_prepare(table, fields, executor)(), table.num_rows, timing)
    cands = candidates(prepared, models, config, counts, timing)
    results = submit_sample(prepared, cands, row_ids, SampleSpec.of(config), executor)()
    return assemble(table, fields, prepared, results, row_ids, counts, timing), counts


# ---- tables ----------------------------------------------------------------------------------------------
def row_ids(table: pa.Table, base: int) -> list[int]:
    """The input rows' ids: their ``row_id`` column, else their position in the version from ``base``."""
    if "row_id" in table.column_names:
        return [int(v) for v in table.column("row_id").to_pylist()]
    return list(range(base, base + table.num_rows))


def output_table(table: pa.Table, fields: list[str], units: list[Unit], copies: list[Copies],
                 ids: list[int]) -> pa.Table:
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
    return (out.append_column("source_row_id", pa.array([ids[r] for r in take], pa.int64()))
            .append_column("aug_field", pa.array(aug_field, pa.string()))
            .append_column("aug_copy", pa.array(aug_copy, pa.int32()))
            .append_column("aug_mlm_words", pa.array([s[0] for s in sources], pa.int32()))
            .append_column("aug_vector_words", pa.array([s[1] for s in sources], pa.int32())))


def numbered(table: pa.Table, offset: int) -> pa.Table:
    """``table`` with its ``row_id`` column: the output version's row ids from ``offset``."""
    return table.append_column("row_id", pa.array(range(offset, offset + table.num_rows), pa.int64()))
