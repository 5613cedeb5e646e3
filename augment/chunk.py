"""One chunk's augmentation, shared by the engines: words are split and routed (``prepare``; a tagged row's words
are its tokens, only those tagged O eligible: ``augment.tagging``), the models give candidates for the whole chunk
at once, each row's copies are sampled with its own seed, and the output table is assembled. The local engine
pipelines these stages over worker processes; a Ray actor runs them in turn."""
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
from augment.tagging import OUTSIDE, Mention, MentionDraws, MentionPool, TaggedCopy, augment_tagged, find_mentions
from augment.vectors import NeighbourIndex, VectorSource, WordVectors
from augment.words import SentenceWords, WordSplitter
from pipelines.chunks import ChunkOutput, WrittenChunks
from pipelines.parallel import WorkerPool, worker_state
from pipelines.store import sum_counts

TIMING_KEYS = ("prepare_s", "mlm_s", "neighbours_s", "sampling_s", "io_s", "wall_s")   # what a run records
TOKENS, TAGS = "tokens", "tags"     # the word and tag lists of a token-classification version


# ---- work units ------------------------------------------------------------------------------------------
@dataclass
class Unit:
    """One text of one row to augment, with the eligible words routed to the masked LM or the vectors (a tagged
    row: its tags, and its entity mentions)."""

    row: int
    field: str
    sentence: SentenceWords
    mlm_words: list[int]
    tags: list[str] | None = None
    mentions: list[Mention] = field(default_factory=list)


@dataclass
class Prepared:
    units: list[Unit] = field(default_factory=list)
    requests: list[tuple[int, Request]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Copies:
    """The augmented texts of one unit and, per text, how many words it changed with masked-LM candidates and
    how many with word-vector candidates."""

    texts: list[str]
    changed_words: list[tuple[int, int]]


@dataclass
class Sampled:
    """One part of a chunk's sampling: each unit's copies (a tagged unit's: a list of ``TaggedCopy``), the part's
    counts and the seconds it took."""

    copies: list[Copies | list[TaggedCopy]]
    counts: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class SampleSpec:
    seed: int
    rounds: int
    p: float
    output_form: str
    tagging: bool = False
    mention_prob: float = 0.0

    @classmethod
    def of(cls, config: AugmentConfig, tagging: bool) -> SampleSpec:
        return cls(config.seed, config.rounds(), config.replace_prob, config.output_form, tagging,
                   config.mention_replace_prob)


def _worker_tools(tokenizer: Any, spec: InputSpec | None,
                  mentions: MentionPool | None) -> tuple[WordSplitter, InputSpec | None, MentionPool | None]:
    """What each worker holds (the pool's per-worker state): the word splitter, the masked-LM input spec and the
    version's mentions (tagging with mention replacement, else None)."""
    return WordSplitter(tokenizer), spec, mentions


def _add_unit(out: Prepared, unit: Unit, spec: InputSpec | None) -> None:
    """Add ``unit`` to ``out``, its single-piece eligible words routed to the masked LM, their inputs built."""
    sentence = unit.sentence
    unit.mlm_words = [i for i in sentence.eligible if spec is not None and len(sentence.pieces[i]) == 1]
    out.units.append(unit)
    if spec is not None:
        for request in build_requests(sentence, unit.mlm_words, spec):
            out.requests.append((len(out.units) - 1, request))
            out.counts["truncated_contexts"] += request.truncated


def _prepare_part(rows: list[tuple[int, str, str | None]]) -> Prepared:
    """Split texts into words, route eligible words, and build the masked-LM inputs (worker side)."""
    start = time.perf_counter()
    splitter, spec, _ = worker_state()
    out = Prepared(counts={"empty_texts": 0, "truncated_contexts": 0})
    valid = [(r, f, t) for r, f, t in rows if t is not None and t.strip()]
    out.counts["empty_texts"] = len(rows) - len(valid)
    sentences = splitter.split([t for _, _, t in valid]) if valid else []
    for (row, name, _), sentence in zip(valid, sentences):
        _add_unit(out, Unit(row, name, sentence, []), spec)
    out.seconds = time.perf_counter() - start
    return out


def _prepare_tagged_part(rows: list[tuple[int, list[str] | None, list[str] | None]]) -> Prepared:
    """Tagged rows: the tokens are the words (never re-split), only words tagged O are eligible, the masked LM's
    context is built from the tokens' pieces (worker side). A row without tokens, or whose tags do not match
    them one to one, is left as it is and counted."""
    start = time.perf_counter()
    splitter, spec, _ = worker_state()
    out = Prepared(counts=dict.fromkeys(("empty_texts", "misaligned_rows", "truncated_contexts", "entity_words",
                                         "mentions"), 0))
    valid = [(r, tokens, tags) for r, tokens, tags in rows if tokens and tags is not None and len(tags) == len(tokens)]
    out.counts["empty_texts"] = sum(not tokens for _, tokens, _ in rows)
    out.counts["misaligned_rows"] = len(rows) - len(valid) - out.counts["empty_texts"]
    sentences = splitter.split_tokens([tokens for _, tokens, _ in valid]) if valid else []
    for (row, _, tags), sentence in zip(valid, sentences):
        sentence.eligible = [i for i in sentence.eligible if tags[i] == OUTSIDE]
        mentions = find_mentions(tags)
        out.counts["entity_words"] += sum(tag != OUTSIDE for tag in tags)
        out.counts["mentions"] += len(mentions)
        _add_unit(out, Unit(row, TOKENS, sentence, [], tags, mentions), spec)
    out.seconds = time.perf_counter() - start
    return out


def _sample_part(units: list[Unit], candidates: list[list[list[str]]], row_ids: list[int],
                 spec: SampleSpec) -> Sampled:
    """The augmented texts of each unit with the words each changed per candidate source (worker side)."""
    if spec.tagging:
        return _sample_tagged_part(units, candidates, row_ids, spec)
    start = time.perf_counter()
    copies: list[Copies | list[TaggedCopy]] = []
    counts = {"replacements": 0, "mlm_replacements": 0, "duplicates_dropped": 0}
    for unit, cands in zip(units, candidates):
        rng = row_rng(spec.seed, row_ids[unit.row], unit.field)
        mlm_words = set(unit.mlm_words)
        texts, c = augment_sentence(unit.sentence, cands, spec.rounds, spec.p, rng, spec.output_form,
                                    [i in mlm_words for i in unit.sentence.eligible])
        copies.append(Copies(texts, c.sources))
        counts["replacements"] += c.replacements
        counts["mlm_replacements"] += sum(mlm for mlm, _ in c.sources)
        counts["duplicates_dropped"] += c.duplicates_dropped
    return Sampled(copies, counts, time.perf_counter() - start)


def _sample_tagged_part(units: list[Unit], candidates: list[list[list[str]]], row_ids: list[int],
                        spec: SampleSpec) -> Sampled:
    """The copies of each tagged unit (O words replaced, mentions swapped: ``augment.tagging``) (worker side)."""
    start = time.perf_counter()
    pool = worker_state()[2]
    copies: list[Copies | list[TaggedCopy]] = []
    counts = dict.fromkeys(("replacements", "mlm_replacements", "mentions_replaced", "duplicates_dropped"), 0)
    for unit, cands in zip(units, candidates):
        row_id = row_ids[unit.row]
        mention = MentionDraws(unit.mentions, pool, spec.mention_prob,
                               row_rng(spec.seed, row_id, f"{unit.field}/mentions") if spec.mention_prob else None)
        mlm_words = set(unit.mlm_words)
        made, c = augment_tagged(unit.sentence, unit.tags or [], cands, spec.rounds, spec.p,
                                 row_rng(spec.seed, row_id, unit.field),
                                 [i in mlm_words for i in unit.sentence.eligible], mention)
        copies.append(made)
        for key in counts:
            counts[key] += getattr(c, key)
    return Sampled(copies, counts, time.perf_counter() - start)


class Executor(WorkerPool):
    """Augment's worker pool: ``workers`` helper processes for preparation and sampling (0: none, the parts run in
    this process), each holding the word splitter and the masked-LM input spec; results in submission order."""

    def __init__(self, workers: int, tokenizer: Any, spec: InputSpec | None, mentions: MentionPool | None = None):
        if workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        super().__init__(workers, init=_worker_tools, init_args=(tokenizer, spec, mentions))

    @property
    def parts(self) -> int:
        """How many parts to cut each chunk's work into."""
        return max(1, self.processes)


def _slices(n: int, parts: int) -> list[slice]:
    """``n`` items as at most ``parts`` slices of one size (the last may be shorter; one empty slice for none)."""
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
    tagging: bool = False                       # a token-classification version: words = its tokens
    mentions: MentionPool | None = None         # its mentions, when mention replacement is on (read by _write)


@dataclass
class Models:
    """The models of one process: masked LM (or none), its tokenizer and input spec, neighbours and filter."""

    mlm: MaskedLM | None
    tokenizer: Any
    spec: InputSpec | None
    vectors: WordVectors
    index: NeighbourIndex
    filter: CandidateFilter


def loaded_identity(models: Models) -> dict[str, Any]:
    """What the manifest records of the loaded models: the vectors' identity and the masked LM's context cap."""
    return {"vectors": models.vectors.identity, "max_pieces": models.spec.max_length if models.spec else None}


def run_timing(written: WrittenChunks, wall_s: float) -> dict[str, float]:
    """A run's seconds (``TIMING_KEYS``): its chunks' stages summed, writing added to ``io_s``, and ``wall_s``."""
    timing = sum_counts(dict.fromkeys(TIMING_KEYS, 0.0), written.timing)
    timing["io_s"] += written.write_s
    timing["wall_s"] = wall_s
    return timing


def load_models(setup: Setup) -> Models:
    """Load the masked LM, tokenizer and word vectors ``setup`` names."""
    config = setup.config
    mlm = None if setup.mlm_identity is None else load_mlm(config.mlm, setup.device, setup.precision,
                                                            setup.mlm_identity)
    if mlm is not None and config.mlm_backend != "torch":
        from augment.mlm_onnx import to_onnx

        mlm = to_onnx(mlm, config.mlm_backend)
    tokenizer = mlm.tokenizer if mlm else load_tokenizer(setup.tokenizer_spec)
    vectors = setup.vectors.load()
    spec = mlm.input_spec(config.input_mode, config.masks_per_pass, config.max_length) if mlm else None
    return Models(mlm, tokenizer, spec, vectors,
                  NeighbourIndex(vectors, config.glove_vocab_limit, config.top_k, setup.device),
                  CandidateFilter(config.drop_punctuation, config.drop_unk, config.drop_self, config.match_case,
                                  frozenset(tokenizer.all_special_tokens)))


# ---- the stages of one chunk -----------------------------------------------------------------------------
def submit_prepare(table: pa.Table, fields: list[str], executor: Executor,
                   tagging: bool) -> Callable[[], list[Prepared]]:
    """Start splitting and routing the chunk's texts (``tagging``: its token lists); returns the collector of the
    parts."""
    if tagging:
        tagged = list(zip(range(table.num_rows), table.column(TOKENS).to_pylist(), table.column(TAGS).to_pylist()))
        return executor.submit(_prepare_tagged_part, [(tagged[s],) for s in _slices(len(tagged), executor.parts)])
    texts = {f: table.column(f).to_pylist() for f in fields}
    rows = [(r, f, texts[f][r] if isinstance(texts[f][r], str) else None)
            for r in range(table.num_rows) for f in fields]
    return executor.submit(_prepare_part, [(rows[s],) for s in _slices(len(rows), executor.parts)])


def merge_prepared(parts: list[Prepared], output: ChunkOutput) -> Prepared:
    """The prepared parts of one chunk as one; their counts and seconds are added to the chunk's ``output``."""
    prepared = Prepared()
    for part in parts:
        base = len(prepared.units)
        prepared.units += part.units
        prepared.requests += [(base + u, r) for u, r in part.requests]
        output.add(accounting=part.counts, timing={"prepare_s": part.seconds})
    return prepared


def candidates(prepared: Prepared, models: Models, config: AugmentConfig,
               output: ChunkOutput) -> list[list[list[str]]]:
    """Candidate lists for every eligible word of every unit (masked LM for single pieces, else vectors); their
    counts and the models' seconds are added to the chunk's ``output``."""
    from_mlm: dict[tuple[int, int], list[str]] = {}
    start = time.perf_counter()
    if prepared.requests and models.mlm is not None:
        tops = models.mlm.top_k([r for _, r in prepared.requests], config.top_k, config.mlm_batch_size)
        for (unit, request), top in zip(prepared.requests, tops):
            for word, ids in zip(request.words, top):
                from_mlm[(unit, word)] = models.mlm.tokens(ids)
    mlm_done = time.perf_counter()
    vector_words = [u.sentence.words[i] for u in prepared.units
                    for i in sorted(set(u.sentence.eligible) - set(u.mlm_words))]
    neighbours = models.index.neighbours(vector_words)
    output.add(timing={"mlm_s": mlm_done - start, "neighbours_s": time.perf_counter() - mlm_done})
    counts = dict.fromkeys(("eligible_words", "mlm_words", "vector_words", "self_only_words"), 0)
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
    output.add(accounting=counts)
    return result


def submit_sample(prepared: Prepared, cands: list[list[list[str]]], row_ids: list[int], spec: SampleSpec,
                  executor: Executor) -> Callable[[], list[Sampled]]:
    """Start sampling the copies of every unit; returns the collector of the parts."""
    slices = _slices(len(prepared.units), executor.parts)
    return executor.submit(_sample_part, [(prepared.units[s], cands[s], row_ids, spec) for s in slices])


def assemble(table: pa.Table, fields: list[str], prepared: Prepared, parts: list[Sampled], row_ids: list[int],
             output: ChunkOutput, tagging: bool) -> ChunkOutput:
    """The chunk's ``output`` completed: its table (rows not yet numbered), the sampling counts and seconds, and
    ``output_rows``."""
    for part in parts:
        output.add(accounting=part.counts, timing={"sampling_s": part.seconds})
    copies = [c for part in parts for c in part.copies]
    output.table = tagged_output_table(table, prepared.units, copies, row_ids) if tagging else \
        output_table(table, fields, prepared.units, copies, row_ids)
    output.accounting["output_rows"] = output.table.num_rows
    return output


def augment_chunk(index: int, table: pa.Table, row_ids: list[int], fields: list[str], models: Models,
                  config: AugmentConfig, executor: Executor, tagging: bool) -> ChunkOutput:
    """Chunk ``index``'s output (rows not yet numbered), its stages run one after the other."""
    output = ChunkOutput(index, accounting={"input_rows": table.num_rows})
    prepared = merge_prepared(submit_prepare(table, fields, executor, tagging)(), output)
    cands = candidates(prepared, models, config, output)
    parts = submit_sample(prepared, cands, row_ids, SampleSpec.of(config, tagging), executor)()
    return assemble(table, fields, prepared, parts, row_ids, output, tagging)


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
    take, aug_field, aug_copy, changed = [], [], [], []
    values: dict[str, list[str | None]] = {f: [] for f in fields}
    for r in range(table.num_rows):
        take.append(r)
        aug_field.append(None)
        aug_copy.append(0)
        changed.append((0, 0))
        for f in fields:
            values[f].append(originals[f][r])
        for name, made in by_row.get(r, []):
            for c, (text, words) in enumerate(zip(made.texts, made.changed_words), 1):
                take.append(r)
                aug_field.append(name)
                aug_copy.append(c)
                changed.append(words)
                for f in fields:
                    values[f].append(text if f == name else originals[f][r])
    out = table.take(pa.array(take, pa.int64()))
    for f in fields:
        column_type = table.schema.field(f).type
        column_type = column_type if pa.types.is_string(column_type) or pa.types.is_large_string(column_type) \
            else pa.string()
        out = out.set_column(out.schema.get_field_index(f), f, pa.array(values[f], column_type))
    return _with_record(out, [ids[r] for r in take], aug_field, aug_copy, changed)


def _with_record(out: pa.Table, source_ids: list[int], aug_field: list[str | None], aug_copy: list[int],
                 changed: list[tuple[int, int]]) -> pa.Table:
    """``out`` without ``row_id`` and with each row's record: its source row, the field changed, the copy number
    and the words it changed with each candidate source."""
    if "row_id" in out.column_names:
        out = out.drop_columns(["row_id"])
    return (out.append_column("source_row_id", pa.array(source_ids, pa.int64()))
            .append_column("aug_field", pa.array(aug_field, pa.string()))
            .append_column("aug_copy", pa.array(aug_copy, pa.int32()))
            .append_column("aug_mlm_words", pa.array([mlm for mlm, _ in changed], pa.int32()))
            .append_column("aug_vector_words", pa.array([vectors for _, vectors in changed], pa.int32())))


def tagged_output_table(table: pa.Table, units: list[Unit], copies: list[Any], ids: list[int]) -> pa.Table:
    """A tagged chunk's rows: each original (aug_copy 0) followed by its copies, whose ``tokens`` and ``tags``
    are the copy's and ``text`` its tokens joined by spaces (other columns carried); the record columns of
    ``output_table`` (``aug_field`` "tokens") plus ``aug_mentions`` (mentions swapped) and ``aug_word_source``
    (per word, the index of the original word it stands for, -1 inside a swapped-in mention; originals:
    0 .. n-1)."""
    made: dict[int, list[TaggedCopy]] = {unit.row: c for unit, c in zip(units, copies)}
    columns = {name: table.column(name).to_pylist() for name in (TOKENS, TAGS)}
    columns["text"] = table.column("text").to_pylist() if "text" in table.column_names else \
        [None if t is None else " ".join(t) for t in columns[TOKENS]]
    take, aug_copy, changed, mentions, sources = [], [], [], [], []
    values: dict[str, list[Any]] = {name: [] for name in columns}
    for r in range(table.num_rows):
        identity = list(range(len(columns[TOKENS][r] or [])))
        for c, copy in enumerate([TaggedCopy(columns[TOKENS][r], None, None, (0, 0), 0), *made.get(r, [])]):
            take.append(r)
            aug_copy.append(c)
            changed.append(copy.changed)
            mentions.append(copy.mentions)
            sources.append(identity if copy.word_source is None else copy.word_source)
            values[TOKENS].append(copy.words)
            values[TAGS].append(columns[TAGS][r] if copy.tags is None else copy.tags)
            values["text"].append(columns["text"][r] if c == 0 else " ".join(copy.words))
    out = table.take(pa.array(take, pa.int64()))
    for name, column in values.items():
        column_type = table.schema.field(name).type if name in table.column_names else pa.string()
        array = pa.array(column, column_type)
        out = out.set_column(out.schema.get_field_index(name), name, array) if name in out.column_names else \
            out.append_column(name, array)
    out = _with_record(out, [ids[r] for r in take], [TOKENS if c else None for c in aug_copy], aug_copy, changed)
    return (out.append_column("aug_mentions", pa.array(mentions, pa.int32()))
            .append_column("aug_word_source", pa.array(sources, pa.list_(pa.int32()))))
