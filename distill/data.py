"""Streaming training data: a PyTorch IterableDataset over a version's Parquet shards.

Usable on its own by any PyTorch trainer::

    from distill.data import ShardStream, make_loader
    stream = ShardStream(store.shard_paths("wordnet-train"), tokenizer="path/or/hub-id", batch_size=32,
                         seed=0, label2id={"noun.act": 0, ...}, rank=rank, world_size=world_size)
    for epoch in range(3):
        stream.set_state(epoch, position=0)        # position = global batches already consumed this epoch
        for batch in make_loader(stream, num_workers=2):
            ...                                     # dict of tensors: input_ids, attention_mask, token_type_ids,
                                                    # labels, row_id (and teacher_logits when the version has them)

A token-classification version (``tokens`` and ``tags`` columns) streamed with ``tagging=True`` (``from_store``'s
default for such a version, with its tag vocabulary) is tokenised from its words (``is_split_into_words``) and its
``labels`` are per piece: the word's tag id on its first piece, -100 on the other pieces (unless
``label_all_pieces``), on special tokens, on padding and for tags outside ``label2id``, exactly where Hugging Face's
``DataCollatorForTokenClassification`` puts them.

(``EpochLoaders`` does the same while opening the next epoch's loader early, so its workers fill their shuffle
buffer in the background; the trainer uses it.)

How rows are ordered (deterministic from ``seed`` and the epoch, independent of worker and rank counts):
shards are visited in a seeded random order, rows pass through a bounded shuffle buffer, windows of
``group_batches * batch_size`` rows are sorted by token length (DistilBERT-style length grouping, so batches pad
little) and cut into batches whose order inside the window is shuffled. That gives the *global* batch sequence
of the epoch: ``ceil(rows / batch_size)`` batches, only the very last one short. Global batch ``k`` belongs to
rank ``k % world_size``; a rank's ``j``-th batch from the resume point goes to DataLoader worker
``j % num_workers``, so the DataLoader's round-robin yields a rank's batches in order. Tokenisation happens in
the workers: each tokenises the rows as it streams them (the token lengths drive the grouping; that costs tens
of microseconds a row, far below a training step) and pads only its own batches, which cross to the main
process as NumPy arrays (much cheaper than tensors, which need a shared-memory file each). Resuming at
``position`` skips the first ``position`` global batches.

Checkpoints: the stream speaks the protocol of torchdata's ``StatefulDataLoader`` (and so of accelerate):
``state_dict()`` says where the next batch comes from (version, epoch, position in global batches, seed, world
size, batch size) and ``load_state_dict()`` (before ``iter()``) continues there. A copy iterated in a DataLoader
worker reports its own next batch and, restored into the same worker, keeps taking every ``num_workers``-th batch
from it, so a loader resumed from its state dict yields exactly the batches an uninterrupted one would. A state
saved in the main process (no workers, or by a trainer) holds a position in global batches, valid for any world
size: resuming with another process count deals the remaining global batches to the new ranks.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distill.tagging import piece_labels
from pipelines.errors import DistilleryError
from pipelines.remote import Remote
from pipelines.remote_store import CachedShards, RemoteStore

if TYPE_CHECKING:
    from pipelines.store import Store

IGNORE_LABEL = -100
TEXT, PAIR, LABEL, ROW_ID, LOGITS = "text", "text_pair", "label", "row_id", "teacher_logits"
TOKENS, TAGS = "tokens", "tags"         # the columns of a token-classification version
WORD_IDS = "word_ids"                   # an encoded tagging row's word of each piece (None: a special token)
AUG_COPY = "aug_copy"                   # an augmented version's copy number (0: the original row)


@dataclass
class StreamState:
    """Where a stream is: ``position`` global batches of ``epoch`` have been consumed (by all ranks)."""

    epoch: int = 0
    position: int = 0
    seed: int = 0


class Collator:
    """Tokenises rows and pads them into batch tensors; the tokenizer is loaded lazily (once per worker).
    ``tagging``: rows are words with tags (token classification), labelled per piece (``label_all_pieces``: every
    piece of a word, not only its first)."""

    def __init__(self, tokenizer: str | Path, max_seq_length: int = 128, label2id: dict[str, int] | None = None,
                 regression: bool = False, tagging: bool = False, label_all_pieces: bool = False):
        self.tokenizer_path = str(tokenizer)
        self.max_seq_length = max_seq_length
        self.label2id = label2id
        self.regression = regression
        self.tagging = tagging
        self.label_all_pieces = label_all_pieces
        self._tokenizer = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def label_id(self, value: Any) -> float | int:
        """The training target for a raw label (IGNORE_LABEL when missing or unknown)."""
        if value is None:
            return float("nan") if self.regression else IGNORE_LABEL
        if self.regression:
            return float(value)
        return self.label2id.get(str(value), IGNORE_LABEL)

    def encode(self, rows: list[dict[str, Any]]) -> None:
        """Tokenise rows in place (adds ``input_ids`` and ``token_type_ids``, truncated, unpadded; tagging: their
        words, and ``word_ids``)."""
        if self.tagging:
            self._encode_words(rows)
            return
        texts = [r.get(TEXT) or "" for r in rows]
        pairs = [r.get(PAIR) or "" for r in rows] if rows and PAIR in rows[0] else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_seq_length,
                             return_attention_mask=False, return_token_type_ids=True)
        for row, ids, types in zip(rows, enc["input_ids"], enc["token_type_ids"]):
            row["input_ids"], row["token_type_ids"] = ids, types

    def _encode_words(self, rows: list[dict[str, Any]]) -> None:
        enc = self.tokenizer([r.get(TOKENS) or [] for r in rows], is_split_into_words=True, truncation=True,
                             max_length=self.max_seq_length, return_attention_mask=False, return_token_type_ids=True)
        for i, row in enumerate(rows):
            row["input_ids"], row["token_type_ids"] = enc["input_ids"][i], enc["token_type_ids"][i]
            row[WORD_IDS] = enc.word_ids(i)

    def piece_labels(self, row: dict[str, Any], width: int) -> np.ndarray:
        """A tagging row's labels per piece, padded with IGNORE_LABEL to ``width``; a tag outside ``label2id`` is
        IGNORE_LABEL, and so is every piece of a row without as many tags as words."""
        tags = row.get(TAGS) or []
        word_labels = [self.label2id.get(str(tag), IGNORE_LABEL) for tag in tags]
        word_ids = row[WORD_IDS] if len(tags) == len(row.get(TOKENS) or []) else [None] * len(row[WORD_IDS])
        labels = np.full(width, IGNORE_LABEL, dtype=np.int64)
        labels[:len(word_ids)] = piece_labels(word_ids, word_labels, self.label_all_pieces, IGNORE_LABEL)
        return labels

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int = 0) -> dict[str, np.ndarray]:
        """Pad encoded rows to the longest one: a dict of NumPy arrays (see ``to_tensors``). ``epoch`` is for
        collators whose output changes with it (masking)."""
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = row["input_ids"]
            token_type_ids[i, :n] = row["token_type_ids"]
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if self.tagging and self.label2id is not None and TAGS in rows[0]:
            batch["labels"] = np.stack([self.piece_labels(row, width) for row in rows])
        elif LABEL in rows[0] and (self.regression or self.label2id is not None):
            dtype = np.float32 if self.regression else np.int64
            batch["labels"] = np.array([self.label_id(r[LABEL]) for r in rows], dtype=dtype)
        if ROW_ID in rows[0]:
            batch["row_id"] = np.array([r[ROW_ID] for r in rows], dtype=np.int64)
        if LOGITS in rows[0] and self.tagging:
            batch["teacher_logits"] = self.word_logits(rows, width, batch.get("labels"))
        elif LOGITS in rows[0]:
            batch["teacher_logits"] = np.array([r[LOGITS] for r in rows], dtype=np.float32)
        return batch

    def word_logits(self, rows: Sequence[dict[str, Any]], width: int, labels: np.ndarray | None) -> np.ndarray:
        """Cached teacher logits of tagging rows (one row of logits per word, ``distill cache-logits``) placed on
        the pieces that carry each word's label (its first piece, or all of them with ``label_all_pieces``), so
        they follow this run's tokenizer whatever the teacher's was. A word the cache has no logits for (beyond
        the teacher's window, or a NaN row: no piece of it in the teacher's) gets IGNORE_LABEL in ``labels``: it
        is left out of the losses, never matched to zeros."""
        classes = next((len(r[LOGITS][0]) for r in rows if r[LOGITS]), 1)
        out = np.zeros((len(rows), width, classes), dtype=np.float32)
        for i, row in enumerate(rows):
            cached = np.asarray(row[LOGITS] or np.zeros((0, classes)), dtype=np.float32).reshape(-1, classes)
            for piece, word in enumerate(row[WORD_IDS]):
                if word is None:
                    continue
                if word < len(cached) and not np.isnan(cached[word]).any():
                    out[i, piece] = cached[word]
                elif labels is not None:
                    labels[i, piece] = IGNORE_LABEL
        return out


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """NumPy batch -> torch tensors (zero-copy)."""
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def _length(row: dict[str, Any]) -> int:
    return len(row["input_ids"])


class ShardStream(IterableDataset):
    """Batches of tokenised rows streamed from Parquet shards; see the module docstring for the order."""

    def __init__(self, shards: Sequence[str | Path], tokenizer: str | Path, *, batch_size: int,
                 max_seq_length: int = 128, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 10_000,
                 group_batches: int = 50, label2id: dict[str, int] | None = None, regression: bool = False,
                 rank: int = 0, world_size: int = 1, num_rows: int | None = None, collator: Collator | None = None,
                 version: str | None = None, tagging: bool = False, label_all_pieces: bool = False,
                 source: CachedShards | None = None, copies_only: bool = False):
        super().__init__()
        if batch_size < 1:
            raise DistilleryError(f"batch_size must be >= 1 (got {batch_size})")
        if not 0 <= rank < world_size:
            raise DistilleryError(f"rank {rank} outside world size {world_size}")
        self.shards = [str(s) for s in shards]
        self.source = source                 # shards on a remote: fetched through the node's cache as reached
        if source is not None and len(source) != len(self.shards):
            raise DistilleryError(f"{len(self.shards)} shard names for {len(source)} remote shards")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.group_batches = max(1, group_batches)
        self.rank, self.world_size = rank, world_size
        self.collate = collator or Collator(tokenizer, max_seq_length, label2id, regression, tagging, label_all_pieces)
        self.copies_only = copies_only       # an augmented version's copies (aug_copy > 0) only
        if copies_only and self.shards and AUG_COPY not in pq.ParquetFile(self._local(0)).schema_arrow.names:
            raise DistilleryError(f"{version or self.shards[0]}: copies_only, but the version has no '{AUG_COPY}' "
                                  f"column (it is not an augmented version)")
        if copies_only:
            self.num_rows = sum(pc.sum(pc.not_equal(pq.read_table(self._local(i), columns=[AUG_COPY])[AUG_COPY], 0))
                                .as_py() or 0 for i in range(len(self.shards)))
        else:
            self.num_rows = num_rows if num_rows is not None else sum(
                pq.ParquetFile(self._local(i)).metadata.num_rows for i in range(len(self.shards)))
        if not self.num_rows:
            raise DistilleryError(f"{version or 'the stream'}: no rows to train on"
                                  + (" (no copies: aug_copy > 0)" if copies_only else ""))
        self.version = version or _shards_fingerprint(self.shards)
        self.state = StreamState(seed=seed)
        self._stride: int | None = None      # set in a worker's copy once it has yielded: its worker count
        self._columns = self._read_columns()

    @classmethod
    def from_store(cls, store: Store | RemoteStore | str, ref: str, tokenizer: str | Path,
                   **options: Any) -> ShardStream:
        """The stream of ``store``'s version ``ref`` (its shards, row count and id); ``options`` as for the
        constructor. ``store`` may be a remote (a ``RemoteStore``, or its URL: ``"s3://bucket/prefix"``), whose
        shards come through the node's shard cache as the stream reaches them (the next one prefetched). A
        token-classification version (a ``tags`` column) is streamed with ``tagging`` unless told otherwise,
        labelled with its tag vocabulary (the sorted tags of its manifest) unless ``label2id`` is given."""
        if isinstance(store, str):
            store = RemoteStore(Remote(store))
        vid = store.resolve(ref)
        manifest = store.manifest(vid)
        if options.get("tagging", TAGS in {f["name"] for f in manifest["schema"]}):
            tags = sorted(manifest["stats"].get("tag_counts", {}))
            if not tags and not options.get("label2id"):
                raise DistilleryError(f"version {ref} records no tags (stats.tag_counts): give label2id")
            options = {**options, "tagging": True,
                       "label2id": options.get("label2id") or {tag: i for i, tag in enumerate(tags)}}
        if isinstance(store, RemoteStore):
            source = store.cached_shards(vid)
            return cls(source.names(), tokenizer, num_rows=manifest["num_rows"], version=vid, source=source,
                       **options)
        return cls(store.shard_paths(vid), tokenizer, num_rows=manifest["num_rows"], version=vid, **options)

    def _local(self, index: int) -> str:
        """Shard ``index`` as a local file (a remote one through the cache)."""
        return str(self.source.local(index)) if self.source is not None else self.shards[index]

    def _read_columns(self) -> list[str]:
        if not self.shards:
            raise DistilleryError("the version has no shards (no rows to train on)")
        names = pq.ParquetFile(self._local(0)).schema_arrow.names
        if TEXT not in names:
            raise DistilleryError(f"{self.shards[0]}: no '{TEXT}' column (columns: {', '.join(names)})")
        wanted = (TEXT, PAIR, LABEL, ROW_ID, LOGITS) + ((TOKENS, TAGS) if self.collate.tagging else ())
        return [c for c in wanted if c in names] + ([AUG_COPY] if self.copies_only else [])

    # ---- the global order and the checkpoint protocol ------------------------------------------------
    def set_state(self, epoch: int, position: int = 0) -> None:
        """Start the next iteration at global batch ``position`` of ``epoch``."""
        self.state = StreamState(epoch=epoch, position=position, seed=self.state.seed)
        self._stride = None

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (what Hugging Face ``Trainer`` and accelerate call
        each epoch); a no-op in the epoch the stream stands in, so a position restored by ``load_state_dict`` holds."""
        if epoch != self.state.epoch:
            self.set_state(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from; plain data for ``load_state_dict`` and checkpoints."""
        return {"version": self.version, "epoch": self.state.epoch, "position": self.state.position,
                "seed": self.state.seed, "world_size": self.world_size, "batch_size": self.batch_size,
                "workers": self._stride or 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from ``state_dict``) stood; refused, naming the keys, when it belongs to another
        version or order (seed, batch size), or is a worker's state for another world size."""
        mine = self.state_dict()
        keys = ["version", "seed", "batch_size"] + (["world_size"] if state.get("workers", 1) > 1 else [])
        changed = [f"{k} {state.get(k)!r} != {mine[k]!r}" for k in keys if state.get(k) != mine[k]]
        if changed:
            raise DistilleryError(f"cannot load the stream state: it belongs to another stream ({', '.join(changed)})")
        self.set_state(state["epoch"], state["position"])
        self._stride = state["workers"] if state.get("workers", 1) > 1 else None

    @property
    def num_batches(self) -> int:
        """Global batches per epoch (all ranks together)."""
        return math.ceil(self.num_rows / self.batch_size)

    def local_batches(self, rank: int | None = None) -> int:
        """Batches of one epoch that ``rank`` gets."""
        rank = self.rank if rank is None else rank
        return len(range(rank, self.num_batches, self.world_size))

    def _rows(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            rng.shuffle(order)
        for position, index in enumerate(order):
            parquet = pq.ParquetFile(self._local(index), memory_map=True)
            if self.source is not None and position + 1 < len(order):
                self.source.prefetch(order[position + 1])    # after the open: it may evict older shards
            for batch in parquet.iter_batches(batch_size=4096, columns=self._columns):
                rows = batch.to_pylist()
                if self.copies_only:
                    rows = [r for r in rows if r.pop(AUG_COPY)]
                self.collate.encode(rows)
                yield from rows

    def _shuffled(self, rows: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        size = self.shuffle_buffer
        for row in rows:
            if len(buffer) < size:
                buffer.append(row)
                continue
            i = rng.randrange(size)
            yield buffer[i]
            buffer[i] = row
        rng.shuffle(buffer)
        yield from buffer

    def global_batches(self, epoch: int) -> Iterator[list[dict[str, Any]]]:
        """The epoch's global batch sequence (lists of rows), identical in every worker and rank."""
        rng = random.Random(self.state.seed * 1_000_003 + epoch)
        rows = self._rows(rng)
        if not self.shuffle:
            window: list[dict[str, Any]] = []
            for row in rows:
                window.append(row)
                if len(window) == self.batch_size:
                    yield window
                    window = []
            if window:
                yield window
            return
        window_rows = self.group_batches * self.batch_size
        window = []
        for row in self._shuffled(rows, rng):
            window.append(row)
            if len(window) == window_rows:
                yield from self._grouped(window, rng)
                window = []
        if window:
            yield from self._grouped(window, rng)

    def _grouped(self, window: list[dict[str, Any]], rng: random.Random) -> list[list[dict[str, Any]]]:
        window.sort(key=_length)
        batches = [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        short = batches.pop() if len(batches[-1]) < self.batch_size else None
        rng.shuffle(batches)
        return batches + [short] if short else batches

    # ---- this process's share -------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self._stride not in (None, workers):
            raise DistilleryError(f"the stream state was saved by one of {self._stride} DataLoader workers; "
                                  f"resume with num_workers={self._stride}")
        epoch, position, world = self.state.epoch, self.state.position, self.world_size
        # this copy yields the rank's local batches first, first + workers, ...; a restored worker state starts
        # at the worker's own next batch
        first = max(0, math.ceil((position - self.rank) / world)) + (0 if self._stride else worker)
        for k, rows in enumerate(self.global_batches(epoch)):
            local = k // world
            if k < position or k % world != self.rank or local < first or (local - first) % workers:
                continue
            batch = self.collate(rows, epoch)
            # the state a checkpoint taken now records: this copy's next batch
            self.state = StreamState(epoch, (local + workers) * world, self.state.seed)
            self._stride = workers if workers > 1 else None
            # inside a worker, NumPy arrays travel to the main process far cheaper than tensors (which
            # go through one shared-memory file each); make_loader turns them into tensors there
            yield batch if info else to_tensors(batch)


class MixedStream(ShardStream):
    """Several streams as one: every global batch holds rows of each source at its share.

    Row ``r`` of an epoch comes from the source whose share is most behind (smooth weighted round robin: after any
    number of rows each source has its share of them to within one row, and a batch of ``batch_size`` rows holds
    ``share x batch_size`` of each, rounded). Each source streams its own rows in its own seeded order (shards,
    shuffle buffer; seeded by the mixture's seed, the source and the epoch) and starts a new pass, in a new order,
    when it runs out within an epoch. An epoch is one pass over the source with the most rows (its rows / its share
    rows in all). Length grouping does not apply (it would sort a batch's rows away from their shares). Ranks,
    workers, ``state_dict`` and resume work as for one stream (positions count global batches). Rows are given the
    columns of every source: a label a source lacks is missing (ignored by the losses), and cached teacher logits
    are kept only when every source has them."""

    def __init__(self, sources: Sequence[ShardStream], shares: Sequence[float], *, seed: int = 0):
        IterableDataset.__init__(self)
        if len(sources) != len(shares) or not sources or abs(sum(shares) - 1) > 1e-9 or min(shares) <= 0:
            raise DistilleryError(f"a mixture needs one positive share per source, adding up to 1 (got {shares})")
        if len({bool(s.collate.tagging) for s in sources}) > 1:
            raise DistilleryError("a mixture cannot mix token-classification and sentence versions")
        pairs = {PAIR in s._columns for s in sources}
        if len(pairs) > 1:
            raise DistilleryError("a mixture cannot mix sentence-pair versions (text_pair) and single sentences")
        first = sources[0]
        self.sources, self.shares = list(sources), [float(x) for x in shares]
        self.shards, self.source, self.copies_only = [], None, False
        self.batch_size, self.shuffle = first.batch_size, True
        self.rank, self.world_size = first.rank, first.world_size
        self.collate = first.collate
        largest = max(range(len(sources)), key=lambda i: sources[i].num_rows)
        self.num_rows = math.ceil(sources[largest].num_rows / self.shares[largest])
        self.version = hashlib.sha256(repr([(s.version, s.copies_only, x) for s, x in zip(sources, self.shares)])
                                      .encode()).hexdigest()[:16]
        self.state = StreamState(seed=seed)
        self._stride = None
        columns = [set(s._columns) for s in sources]
        keep_logits = all(LOGITS in c for c in columns)
        self._fill = [c for c in (LABEL, TAGS, ROW_ID) if any(c in cols for cols in columns)]
        self._drop = [] if keep_logits else [LOGITS]

    def _source_rows(self, index: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Source ``index``'s rows for ``epoch``, pass after pass, each pass in its own seeded order."""
        source = self.sources[index]
        for turn in itertools.count():
            rng = random.Random(f"{self.state.seed}/{index}/{epoch}/{turn}")
            for row in source._shuffled(source._rows(rng), rng):
                for column in self._drop:
                    row.pop(column, None)
                for column in self._fill:
                    row.setdefault(column, None)
                yield row

    def global_batches(self, epoch: int) -> Iterator[list[dict[str, Any]]]:
        """The epoch's global batches: rows drawn from the sources by smooth weighted round robin."""
        streams = [self._source_rows(i, epoch) for i in range(len(self.sources))]
        taken = [0] * len(streams)
        batch: list[dict[str, Any]] = []
        for row in range(self.num_rows):
            pick = max(range(len(streams)), key=lambda i: (self.shares[i] * (row + 1) - taken[i], -i))
            taken[pick] += 1
            batch.append(next(streams[pick]))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _shards_fingerprint(shards: Sequence[str]) -> str:
    """Names a stream without a version id: its shards' folders and file names."""
    names = "\n".join("/".join(Path(s).parts[-2:]) for s in shards)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def _identity(batch: Any) -> Any:
    return batch


class StreamLoader:
    """Iterates a stream through a DataLoader; batches arrive as NumPy from workers and leave as tensors."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches; the DataLoader's iterator (and its workers, each with a copy of the stream) is made now,
        so a later ``set_state`` of the stream (``EpochLoaders.prefetch``) cannot change what this one yields."""
        return self._tensors(iter(self.loader))

    @staticmethod
    def _tensors(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, torch.Tensor]]:
        for batch in batches:
            yield {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in batch.items()}


def make_loader(stream: ShardStream, num_workers: int = 0, prefetch: int = 4) -> StreamLoader:
    """Iterate ``stream`` with ``num_workers`` DataLoader workers (0 = in this process).

    Batches come ready-made (``batch_size=None``); a fixed generator keeps the global RNG untouched.
    """
    generator = torch.Generator().manual_seed(stream.state.seed * 7919 + stream.state.epoch)
    return StreamLoader(DataLoader(stream, batch_size=None, num_workers=num_workers, generator=generator,
                                   collate_fn=_identity, prefetch_factor=prefetch if num_workers else None,
                                   persistent_workers=False))


class EpochLoaders:
    """Opens each epoch's loader; with workers, ``prefetch(epoch)`` opens the next epoch's loader early so its
    workers fill the shuffle buffer and queue batches while the current epoch finishes (no stall at epoch
    boundaries). Usage: call ``prefetch(e + 1)`` when a few batches of epoch ``e`` are left, then ``open(e + 1)``."""

    def __init__(self, stream: ShardStream, num_workers: int = 0):
        self.stream = stream
        self.num_workers = num_workers
        self._ahead: tuple[int, Iterator[dict[str, torch.Tensor]]] | None = None

    def open(self, epoch: int, position: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """An iterator over this rank's batches of ``epoch`` from global batch ``position``."""
        if self._ahead is not None and self._ahead[0] == epoch and position == 0:
            iterator, self._ahead = self._ahead[1], None
            return iterator
        self.stream.set_state(epoch, position)
        return iter(make_loader(self.stream, self.num_workers))

    def prefetch(self, epoch: int) -> None:
        """Start ``epoch``'s workers now (no effect without workers: nothing would run in the background)."""
        if self.num_workers and (self._ahead is None or self._ahead[0] != epoch):
            self.stream.set_state(epoch, 0)
            self._ahead = (epoch, iter(make_loader(self.stream, self.num_workers)))
