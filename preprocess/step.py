"""``preprocess``: raw inputs -> one cleaned, filtered, de-duplicated, versioned dataset.

Input rows are cut into chunks of ``chunk_rows`` (chunk *i* = input rows ``[i*R, (i+1)*R)`` over all inputs in
order). Workers (``multiprocess``) parse, clean and filter a chunk and hash its rows; the parent decides
duplicates in row order and writes the chunk, so the output bytes do not depend on the worker count.
Bad rows are repaired by a documented rule (counted in ``accounting.repaired``) or written to the chunk's
rejects shard with their origin and reason; every chunk records
``input_rows = kept + sum(dropped.values()) + sum(rejected.values())``.

A run is token classification when an input is a CoNLL file or ``tokens_column`` / ``tags_column`` is set: its
rows are lists of tokens and tags, read, cleaned and checked by the rules of ``preprocess.tagging``.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.config import identity_dict, to_dict
from pipelines.errors import DistilleryError
from pipelines.parallel import WorkerPool, worker_state
from pipelines.progress import progress_bar
from pipelines.runner import Step, StepPlan
from pipelines.store import VersionWriter
from preprocess.config import LENGTH_FILTERS, DedupConfig, InputConfig, PreprocessConfig
from preprocess.dedup import DedupState, MinHasher, text_hash
from preprocess.readers import (
    BAD,
    CONLL_COLUMNS,
    LINE,
    ROW,
    InputSource,
    arrow_schema,
    check_unchanged,
    class_label_names,
    expand_folders,
    iter_record_batches,
    open_source,
    raw_text,
    sample_rows,
)
from preprocess.row_schema import (
    REJECTS_SCHEMA,
    STRING_LIST,
    InputColumns,
    OutputSchema,
    build_column,
    coerce_extra,
    coerce_label,
    derive_schema,
    describe_input,
    is_blank,
)
from preprocess.tagging import SCHEME_RULES, RowReject, TaggedRows, tokens_key
from preprocess.text_clean import Cleaner, count_tokens, split_sentences

if TYPE_CHECKING:
    from tqdm import tqdm

STEP = Step("preprocess", module=__name__, package="preprocess")
PART_BYTES = 32 << 20          # a chunk is read, processed and written in parts of about this much text
Chunk = tuple[list[int], list[int], list[int], list[Any]]     # columns: input index, origin row, kind, payload


@dataclass
class ChunkResult:
    """What a worker returns for one part of a chunk (a chunk is processed in parts of bounded size; ``last``
    marks its final part): candidate rows (before de-duplication) and their hashes."""

    index: int
    table: pa.Table | None                # None for an already committed chunk (resume)
    rejects: pa.Table | None = None
    hashes: np.ndarray | None = None
    keys: np.ndarray | None = None
    accounting: dict[str, Any] = field(default_factory=dict)
    last: bool = True


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


class ChunkProcessor:
    """Turns the records of one chunk into candidate rows, rejects, hashes and accounting."""

    def __init__(self, config: PreprocessConfig, schema: OutputSchema, sources: list[InputSource]):
        self.config = config
        self.schema = schema
        self.sources = sources
        c = config.clean
        self.cleaner = Cleaner(c.normalize, c.control_chars, c.whitespace, c.lowercase)
        self.hasher = MinHasher.for_threshold(config.dedup.near_threshold, config.dedup.num_perm,
                                              config.dedup.ngram, config.dedup.seed) if config.dedup.near else None
        self.filters = [(name, getattr(config.filter, name)) for name in LENGTH_FILTERS if getattr(config.filter, name)]
        cols = config.input
        mapped = cols.tag_columns() if schema.tagging else (cols.text_column, cols.text_pair_column, cols.label_column)
        self.known_keys = {*mapped, *(s for s, _, _ in schema.extras)}
        self.tagged = TaggedRows(self.cleaner, cols.tag_scheme, cols.max_row_bytes) if schema.tagging else None

    def run(self, task: tuple[str, int, bool, Any]) -> ChunkResult:
        kind, index, last, payload = task
        if kind == "shard":
            return self._rehash(index, payload)
        result = self._process_tagged(index, payload) if self.tagged else self._process(index, payload)
        result.last = last
        return result

    # ---- de-duplication inputs ------------------------------------------------------------
    def _hashes(self, texts: list[str], pairs: list[str | None],
                tokens: list[list[str]] | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Exact hashes (of the token sequences when ``tokens`` are given) and near-duplicate band keys."""
        hashes = keys = None
        if self.config.dedup.exact and tokens is not None:
            hashes = np.fromiter((text_hash(tokens_key(t)) for t in tokens), dtype=np.uint64, count=len(tokens))
        elif self.config.dedup.exact:
            hashes = np.fromiter((text_hash(t, p) for t, p in zip(texts, pairs)), dtype=np.uint64, count=len(texts))
        if self.hasher is not None:
            keys = self.hasher.band_keys([t if p is None else f"{t}\x00{p}" for t, p in zip(texts, pairs)])
        return hashes, keys

    def _rehash(self, index: int, shard: str | None) -> ChunkResult:
        """Hashes of a committed chunk's rows, to rebuild the de-duplication state when resuming."""
        if shard is None:
            return ChunkResult(index, None)
        columns = ["text", "text_pair"] if self.schema.has_pair else ["text", "tokens"] if self.schema.tagging \
            else ["text"]
        table = pq.read_table(shard, columns=columns)
        texts = table.column("text").to_pylist()
        pairs = table.column("text_pair").to_pylist() if self.schema.has_pair else [None] * len(texts)
        tokens = table.column("tokens").to_pylist() if self.schema.tagging else None
        return ChunkResult(index, None, None, *self._hashes(texts, pairs, tokens))

    # ---- row processing ---------------------------------------------------------------------
    def _parse(self, source: InputSource, kind: int, payload: Any, repaired: dict[str, int]) -> dict[str, Any]:
        reject_bad_bytes = self.config.input.decode_errors == "reject"
        if kind == ROW:
            if reject_bad_bytes and source.format in ("csv", "tsv", "conll") and any(
                    isinstance(v, str) and not v.isascii() and _has_surrogates(v)
                    for v in _strings(payload)):
                raise RowReject("invalid_utf8")
            return payload
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError:
            if reject_bad_bytes:
                raise RowReject("invalid_utf8") from None
            line = payload.decode("utf-8", "replace")
            _bump(repaired, "invalid_utf8")
        if source.format == "txt":
            return {self.config.input.text_column: line}
        if not line.strip():
            raise RowReject("blank_line")
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            raise RowReject("malformed_json") from None
        if not isinstance(value, dict):
            raise RowReject("not_an_object")
        return value

    def _field(self, row: dict[str, Any], column: str, slot: str) -> str:
        value = row.get(column)
        if value is None:
            raise RowReject(f"missing_{slot}")
        if not isinstance(value, str):
            raise RowReject(f"wrong_type_{slot}")
        return value

    def _clean(self, value: str, slot: str, repaired: dict[str, int]) -> str:
        text = self.cleaner.clean(value, repaired)
        if not text or text.isspace():
            raise RowReject(f"empty_{slot}")
        return text

    def _drop_reason(self, text: str) -> str | None:
        for name, limit in self.filters:
            if name.endswith("chars"):
                size = len(text)
            else:
                size = count_tokens(text)
            if (size < limit) if name.startswith("min") else (size > limit):
                return name
        return None

    def _read_row(self, source: InputSource, kind: int, payload: Any,
                  repaired: dict[str, int]) -> tuple[dict[str, Any], str, str | None, Any]:
        """Parse one record and return (row, clean text, clean pair, label); raises RowReject."""
        cfg = self.config.input
        if kind == BAD:
            raise RowReject(payload[0])
        row = self._parse(source, kind, payload, repaired)
        text = self._field(row, cfg.text_column, "text")
        pair = self._field(row, cfg.text_pair_column, "text_pair") if cfg.text_pair_column else None
        if kind == ROW and len(text) + len(pair or "") > cfg.max_row_bytes:
            raise RowReject("row_too_long")
        label = None
        if self.schema.label_kind:
            value = row.get(cfg.label_column)
            if is_blank(value):
                raise RowReject("missing_label")
            try:
                label = coerce_label(value, self.schema.label_kind)
            except (ValueError, OverflowError):
                raise RowReject("wrong_type_label") from None
        text = self._clean(text, "text", repaired)
        pair = self._clean(pair, "text_pair", repaired) if pair is not None else None
        return row, text, pair, label

    def _process(self, index: int, items: Chunk) -> ChunkResult:
        texts: list[str] = []
        pairs: list[str | None] = []
        labels: list[Any] = []
        extras: list[list[Any]] = [[] for _ in self.schema.extras]
        rejects: list[tuple[str, int, str, str]] = []
        dropped = {name: 0 for name, _ in self.filters}
        rejected: dict[str, int] = {}
        repaired: dict[str, int] = {}
        split = {"documents": 0, "rows_added": 0}
        for src, origin, kind, payload in zip(*items):
            source = self.sources[src]
            try:
                row, text, pair, label = self._read_row(source, kind, payload, repaired)
            except RowReject as exc:
                _bump(rejected, str(exc))
                rejects.append((source.path, origin, str(exc), self._raw(kind, payload)))
                continue
            extra_values = self._extra_values(row, repaired)
            parts, pair = self._kept_parts(text, pair, dropped, split)
            for part in parts:
                texts.append(part)
                pairs.append(pair)
                labels.append(label)
                for column, value in zip(extras, extra_values):
                    column.append(value)
        table = self._candidate_table(texts, pairs, labels, extras, repaired)
        accounting: dict[str, Any] = {"input_rows": len(items[0]) + split["rows_added"], "dropped": dropped,
                                      "rejected": rejected, "repaired": repaired}
        if self.config.clean.split_sentences_over:
            accounting["split"] = split
        return ChunkResult(index, table, _rejects_table(rejects), *self._hashes(texts, pairs), accounting=accounting)

    def _read_tagged_row(self, source: InputSource, kind: int, payload: Any,
                         repaired: dict[str, int]) -> tuple[dict[str, Any], list[str], list[str]]:
        """Parse one token-classification record: (row for its extra columns, clean tokens, checked tags)."""
        if kind == BAD:
            raise RowReject(payload[0])
        row = self._parse(source, kind, payload, repaired)
        if source.format == "conll":            # a CoNLL sentence: tokens and tags, no other column
            return {}, *self.tagged.read(row, *CONLL_COLUMNS, repaired)
        names = self.schema.tag_names.get(source.path)
        return row, *self.tagged.read(row, *self.config.input.tag_columns(), repaired, names)

    def _process_tagged(self, index: int, items: Chunk) -> ChunkResult:
        """A chunk of token-classification rows (rules: ``preprocess.tagging``); length filters read the text."""
        columns: list[list[Any]] = [[] for _ in range(3 + len(self.schema.extras))]   # text, tokens, tags, extras
        rejects: list[tuple[str, int, str, str]] = []
        dropped = {name: 0 for name, _ in self.filters}
        rejected: dict[str, int] = {}
        repaired: dict[str, int] = {}
        for src, origin, kind, payload in zip(*items):
            source = self.sources[src]
            try:
                row, tokens, tags = self._read_tagged_row(source, kind, payload, repaired)
            except RowReject as exc:
                _bump(rejected, str(exc))
                rejects.append((source.path, origin, str(exc), self._raw(kind, payload)))
                continue
            values = [" ".join(tokens), tokens, tags, *self._extra_values(row, repaired)]
            reason = self._drop_reason(values[0]) if self.filters else None
            if reason:
                dropped[reason] += 1
                continue
            for column, value in zip(columns, values):
                column.append(value)
        schema = self.schema.candidate_schema()
        arrays = [pa.array(values, schema.field(i).type) for i, values in enumerate(columns[:3])]
        arrays += [build_column(values, typ, repaired) for values, (_, _, typ) in zip(columns[3:], self.schema.extras)]
        accounting = {"input_rows": len(items[0]), "dropped": dropped, "rejected": rejected, "repaired": repaired}
        hashes = self._hashes(columns[0], [None] * len(columns[0]), columns[1])
        return ChunkResult(index, pa.Table.from_arrays(arrays, schema=schema), _rejects_table(rejects), *hashes,
                           accounting=accounting)

    @staticmethod
    def _raw(kind: int, payload: Any) -> str:
        """A rejected record as text, for the rejects shard."""
        if kind == BAD:
            return payload[1]
        return raw_text(payload if kind == LINE else json.dumps(payload, ensure_ascii=False, default=str))

    def _extra_values(self, row: dict[str, Any], repaired: dict[str, int]) -> list[Any]:
        """The row's extra columns; keys that are no column are counted when the extra columns are not listed."""
        if self.config.input.extra_columns is None and not row.keys() <= self.known_keys:
            _bump(repaired, "extra_key_dropped", len(row.keys() - self.known_keys))
        return [coerce_extra(row.get(src_name), typ) for src_name, _, typ in self.schema.extras]

    def _kept_parts(self, text: str, pair: str | None, dropped: dict[str, int],
                    split: dict[str, int]) -> tuple[list[str], str | None]:
        """The row's texts (its sentences when a long single text is split) that pass the length filters, and
        its pair, finished; the texts filtered out are counted in ``dropped``."""
        split_over = self.config.clean.split_sentences_over
        parts = [text]
        if split_over and pair is None and len(text) > split_over:
            parts = split_sentences(text)
            if len(parts) > 1:
                split["documents"] += 1
                split["rows_added"] += len(parts) - 1
        finish = self.cleaner.finish
        pair = finish(pair) if pair is not None else None
        pair_drop = self._drop_reason(pair) if pair is not None and self.filters else None
        kept = []
        for part in parts:
            part = finish(part)
            reason = (self._drop_reason(part) if self.filters else None) or pair_drop
            if reason:
                dropped[reason] += 1
            else:
                kept.append(part)
        return kept, pair

    def _candidate_table(self, texts: list[str], pairs: list[str | None], labels: list[Any],
                         extras: list[list[Any]], repaired: dict[str, int]) -> pa.Table:
        """The candidate rows (before de-duplication) as a table of the candidate schema."""
        schema = self.schema.candidate_schema()
        arrays = [pa.array(texts, pa.string())]
        if self.schema.has_pair:
            arrays.append(pa.array(pairs, pa.string()))
        if self.schema.label_kind:
            arrays.append(pa.array(labels, schema.field("label").type))
        arrays += [build_column(values, typ, repaired) for values, (_, _, typ) in zip(extras, self.schema.extras)]
        return pa.Table.from_arrays(arrays, schema=schema)


def _rejects_table(rejects: list[tuple[str, int, str, str]]) -> pa.Table | None:
    """The rejected rows (origin file and row, reason, raw content) as a rejects shard's table; None if none."""
    if not rejects:
        return None
    return pa.Table.from_pylist([dict(zip(REJECTS_SCHEMA.names, r)) for r in rejects], schema=REJECTS_SCHEMA)


def _strings(row: dict[str, Any]) -> Iterator[Any]:
    """A row's values, the items of its list values in their place (a CoNLL sentence's tokens and tags)."""
    for value in row.values():
        yield from value if isinstance(value, list) else (value,)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# ---- running chunks in order over the worker pool ------------------------------------------------
def _processed(tasks: Iterator[tuple[str, int, bool, Any]], config: PreprocessConfig, schema: OutputSchema,
               sources: list[InputSource]) -> Iterator[ChunkResult]:
    """The tasks' results in task order: in this process for ``workers = 1``, else over ``workers`` processes,
    each with its own ChunkProcessor (at most 2 tasks per process in flight, so memory stays bounded)."""
    processes = config.workers if config.workers > 1 else 0
    with WorkerPool(processes, init=ChunkProcessor, init_args=(config, schema, sources)) as pool:
        yield from pool.imap(_run_task, tasks)


def _run_task(task: tuple[str, int, bool, Any]) -> ChunkResult:
    """One task, on this process's ChunkProcessor."""
    processor: ChunkProcessor = worker_state()
    return processor.run(task)


# ---- the step ------------------------------------------------------------------------------
def _describe(source: InputSource, config: PreprocessConfig, tagging: bool) -> InputColumns:
    cfg = config.input
    if source.format == "txt":
        return InputColumns(source.path, {cfg.text_column: pa.string()}, None)
    if source.format == "conll":                 # read as the tokens and tags columns, and nothing else
        return InputColumns(source.path, dict.fromkeys(cfg.tag_columns(), STRING_LIST), None)
    schema = arrow_schema(source, cfg.hf_split)
    rows = [] if schema is not None else sample_rows(source, cfg.schema_sample_rows, **_reader_args(config))
    info = describe_input(source.path, arrow=schema, rows=rows, label_column=cfg.label_column,
                          from_text=source.format in ("csv", "tsv"))
    if tagging and source.format in ("parquet", "hf"):
        info.tag_names = class_label_names(source, cfg.tag_columns()[1], cfg.hf_split)
    return info


def _reader_args(config: PreprocessConfig) -> dict[str, Any]:
    cfg = config.input
    return {"max_row_bytes": cfg.max_row_bytes, "csv_header": cfg.csv_header, "csv_quoting": cfg.csv_quoting,
            "hf_split": cfg.hf_split, "token_column": cfg.token_column, "tag_column": cfg.tag_column}


def _payload_bytes(kind: int, payload: Any) -> int:
    """About how much memory a record's payload holds (its text bytes)."""
    if kind == ROW:
        return 64 + sum(len(v) for v in _strings(payload) if isinstance(v, (str, bytes)))
    return 64 + len(payload if kind == LINE else payload[1])


def _tasks(sources: list[InputSource], config: PreprocessConfig, writer: VersionWriter,
           rebuild_state: bool) -> Iterator[tuple[str, int, bool, Any]]:
    """Chunks of ``chunk_rows`` records over all inputs in order, each cut into parts of at most ``PART_BYTES``
    of payload (so memory is bounded by bytes, not only rows); committed chunks become one rehash task each.
    Once every input is read, each is checked to be unchanged since it was fingerprinted. Records arrive in
    lists (``iter_record_batches``) and are moved into the chunk a slice at a time."""
    items: Chunk = ([], [], [], [])
    index, rows, size = 0, 0, 0
    committed = writer.is_committed(0)
    left = config.input.max_rows or -1          # records still to read (-1: all)
    for src, source in enumerate(sources):
        for origins, kinds, payloads in iter_record_batches(source, **_reader_args(config)):
            count = len(origins) if left < 0 else min(left, len(origins))
            left -= count
            start = 0
            while start < count:
                end = min(count, start + config.chunk_rows - rows)
                if not committed:
                    piece_size = _records_bytes(kinds[start:end], payloads[start:end])
                    if size + piece_size >= PART_BYTES:
                        end = _part_end(kinds, payloads, start, end, size)
                        piece_size = _records_bytes(kinds[start:end], payloads[start:end])
                    items[0].extend(itertools.repeat(src, end - start))
                    items[1].extend(origins[start:end])
                    items[2].extend(kinds[start:end])
                    items[3].extend(payloads[start:end])
                    size += piece_size
                rows += end - start
                start = end
                if rows == config.chunk_rows:
                    yield _task(writer, index, items, rebuild_state)
                    index, rows, size, items = index + 1, 0, 0, ([], [], [], [])
                    committed = writer.is_committed(index)
                elif size >= PART_BYTES:
                    yield "rows", index, False, items
                    size, items = 0, ([], [], [], [])
            if left == 0:
                break
        if left == 0:
            break
    if rows or index == 0:
        yield _task(writer, index, items, rebuild_state)
    for source in sources:
        check_unchanged(source)


def _records_bytes(kinds: Sequence[int], payloads: Sequence[Any]) -> int:
    """``_payload_bytes`` of records summed (lines summed at C speed)."""
    if kinds.count(LINE) == len(kinds):
        return 64 * len(kinds) + sum(map(len, payloads))
    return sum(_payload_bytes(kind, payload) for kind, payload in zip(kinds, payloads))


def _part_end(kinds: Sequence[int], payloads: Sequence[Any], start: int, end: int, size: int) -> int:
    """The end of records ``start:end`` that brings a part of ``size`` bytes to ``PART_BYTES`` (its last record
    included), else ``end``."""
    for i in range(start, end):
        size += _payload_bytes(kinds[i], payloads[i])
        if size >= PART_BYTES:
            return i + 1
    return end


def _task(writer: VersionWriter, index: int, items: Chunk, rebuild_state: bool) -> tuple[str, int, bool, Any]:
    """The last task of chunk ``index``: its last part, or a rehash of its shard when it is committed."""
    if writer.is_committed(index):
        return "shard", index, True, str(writer.committed_shard(index)) if rebuild_state else None
    return "rows", index, True, items


def _outputs(results: Iterator[ChunkResult], state: DedupState | None, dedup: DedupConfig,
             bar: tqdm) -> Iterator[ChunkOutput]:
    """The processed parts without their duplicates (decided in row order, the rows of committed chunks in the
    de-duplication state first); the kept rows and the duplicates are counted in each part's accounting."""
    for result in results:
        if result.table is None:                 # a committed chunk, re-hashed
            if state is not None:
                state.absorb(result.hashes, result.keys)
            continue
        table, accounting = result.table, result.accounting
        if state is not None:
            keep, exact_dups, near_dups = state.decide(table.num_rows, result.hashes, result.keys)
            table = table.filter(pa.array(keep))
            if dedup.exact:
                accounting["dropped"]["exact_dup"] = exact_dups
            if dedup.near:
                accounting["dropped"]["near_dup"] = near_dups
        bar.update(accounting["input_rows"])
        yield ChunkOutput(result.index, table, result.rejects, {**accounting, "kept": table.num_rows},
                          last=result.last)


def plan_preprocess(inputs: list[str | Path], config: PreprocessConfig) -> StepPlan:
    """What ``preprocess`` would write for ``inputs``: inputs checked and fingerprinted, the schema derived."""
    if not inputs:
        raise DistilleryError("preprocess needs at least one input")
    cfg = config.input
    sources = [open_source(p, cfg.format, cfg.hf_split) for p in expand_folders(inputs, cfg.format)]
    if cfg.text_column != "text" and all(s.format == "txt" for s in sources):
        raise DistilleryError(f"text_column '{cfg.text_column}' has no effect: a text file has no columns (each "
                              f"line is the text); it applies to jsonl, csv, tsv, parquet and dataset inputs")
    tagging = cfg.tagging() or any(s.format == "conll" for s in sources)
    if tagging:
        _check_tagging(sources, config)
    schema = derive_schema([_describe(s, config, tagging) for s in sources], cfg.text_column, cfg.text_pair_column,
                           cfg.label_column, cfg.extra_columns, cfg.tag_columns() if tagging else None)
    return StepPlan(STEP, to_dict(config), identity_dict(config), [s.parent() for s in sources],
                    lambda writer: _write(writer, sources, schema, config))


def _check_tagging(sources: list[InputSource], config: PreprocessConfig) -> None:
    """Refuse what does not apply to token-classification data (a CoNLL input or tokens/tags columns asked for)."""
    cfg = config.input
    plain = [s for s in sources if s.format in ("txt", "csv", "tsv")]
    if plain:
        raise DistilleryError(f"token classification reads CoNLL files and jsonl, parquet or dataset rows with a list "
                              f"of tokens and a list of tags; {plain[0].path} is {plain[0].format}")
    if config.clean.split_sentences_over:
        raise DistilleryError("split_sentences_over does not apply to token-classification data (its sentences "
                              "are the rows, their tags would be cut); leave it at 0")
    defaults = InputConfig()
    for key in ("text_column", "text_pair_column", "label_column"):
        if getattr(cfg, key) != getattr(defaults, key):
            raise DistilleryError(f"{key} does not apply to token-classification data (its columns are tokens and "
                                  f"tags: --tokens-column, --tags-column)")


def _write(writer: VersionWriter, sources: list[InputSource], schema: OutputSchema,
           config: PreprocessConfig) -> dict[str, Any]:
    """Process and commit every chunk not yet committed (rebuilding the de-duplication state from committed
    chunks); returns the manifest's extra."""
    dedup = config.dedup.exact or config.dedup.near
    processor = ChunkProcessor(config, schema, sources)
    state = DedupState(processor.hasher.bands if processor.hasher else 0)
    with progress_bar(desc="preprocess", unit="rows") as bar:
        results = _processed(_tasks(sources, config, writer, dedup), config, schema, sources)
        write_chunks(writer, _outputs(results, state if dedup else None, config.dedup, bar), bar=bar)
    extra: dict[str, Any] = {}
    if config.licence.recorded():
        extra["licence"] = config.licence.recorded()
    if processor.hasher:
        extra["near_dup_lsh"] = {"bands": processor.hasher.bands, "rows_per_band": processor.hasher.rows_per_band}
    if schema.tagging:
        extra["tag_scheme"] = {"scheme": config.input.tag_scheme, "rule": SCHEME_RULES[config.input.tag_scheme]}
    return extra

