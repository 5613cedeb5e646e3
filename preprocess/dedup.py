"""Order-deterministic de-duplication.

Workers compute, per chunk, a 64-bit hash of each row's final text (exact duplicates) and MinHash-LSH band
keys (near duplicates, vectorised with numpy over character n-grams). The parent then decides in row order,
keeping the first occurrence: a row is an exact duplicate when its hash was kept before, a near duplicate when
one of its band keys was kept before (standard LSH banding; ``bands`` and ``rows per band`` are chosen by
datasketch's optimiser for the threshold). State is the hashes and band keys of the kept rows, stored as
sorted ``uint64`` arrays: 8 bytes per kept row for exact de-duplication plus 8 bytes per band for near
de-duplication -- the only memory that grows with the corpus. It can be rebuilt from committed shards alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xBF58476D1CE4E5B9)
_P3 = np.uint64(0x94D049BB133111EB)
_BLOCK_CHARS = 1 << 16        # characters (short texts padded to the n-gram size) hashed at once
_BLOCK_SIGNATURES = 1 << 22   # signature values (rows x permutations, 8 bytes each) of one block


def text_hash(text: str, pair: str | None = None) -> int:
    """64-bit content hash of a row's final text (and pair) as an unsigned int."""
    data = text.encode("utf-8") if pair is None else text.encode("utf-8") + b"\x00" + pair.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _P2
        x = x ^ (x >> np.uint64(27))
        x = x * _P3
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class MinHasher:
    """MinHash signatures over character n-grams and LSH band keys, vectorised across rows."""

    num_perm: int = 64
    ngram: int = 5
    bands: int = 8
    rows_per_band: int = 8
    seed: int = 0

    @classmethod
    def for_threshold(cls, threshold: float, num_perm: int, ngram: int, seed: int = 0) -> MinHasher:
        """Bands / rows per band minimising false positives + negatives at ``threshold`` (datasketch)."""
        from datasketch.lsh import _optimal_param

        bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        return cls(num_perm, ngram, bands, rows, seed)

    def _perms(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(self.seed))
        a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        return a, b

    def band_keys(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), bands)`` uint64 LSH keys; each text needs at least one character."""
        out = np.empty((len(texts), self.bands), dtype=np.uint64)
        a, b = self._perms()
        max_rows = max(1, _BLOCK_SIGNATURES // self.num_perm)
        start = 0
        while start < len(texts):
            stop, size = start, 0
            while stop < len(texts) and (stop == start or (size + max(len(texts[stop]), self.ngram) <= _BLOCK_CHARS
                                                           and stop - start < max_rows)):
                size += max(len(texts[stop]), self.ngram)
                stop += 1
            out[start:stop] = self._bands(self._signatures(texts[start:stop], a, b))
            start = stop
        return out

    def _signatures(self, texts: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n = self.ngram
        padded = [t if len(t) >= n else t + "\x00" * (n - len(t)) for t in texts]
        lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
        codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        windows = codes.size - n + 1
        with np.errstate(over="ignore"):
            h = np.zeros(windows, dtype=np.uint64)
            for k in range(n):
                h = h * _P1 + codes[k:k + windows]
        counts = lengths - n + 1                       # windows lying inside each row (>= 1)
        ends = np.cumsum(counts)
        row_starts = np.cumsum(lengths) - lengths
        h = _mix(h[np.repeat(row_starts - (ends - counts), counts) + np.arange(ends[-1])])
        offsets = ends - counts
        signatures = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        permuted = np.empty_like(h)
        for i in range(self.num_perm):          # h -> (h ^ b) * a (mod 2^64): a bijection per permutation
            np.bitwise_xor(h, b[i], out=permuted)
            np.multiply(permuted, a[i], out=permuted)
            signatures[:, i] = np.minimum.reduceat(permuted, offsets)
        return signatures

    def _bands(self, signatures: np.ndarray) -> np.ndarray:
        keys = np.empty((signatures.shape[0], self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                h = np.full(signatures.shape[0], np.uint64(band + 1) * _P1, dtype=np.uint64)
                for col in range(band * self.rows_per_band, (band + 1) * self.rows_per_band):
                    h = _mix(h ^ signatures[:, col])
                keys[:, band] = h
        return keys


def _contains(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    if sorted_keys.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, values)
    return sorted_keys[np.minimum(pos, sorted_keys.size - 1)] == values


def _insert(sorted_keys: np.ndarray, new: np.ndarray) -> np.ndarray:
    new = np.sort(new)
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new), new)


class DedupState:
    """Hashes and band keys of the rows kept so far; decides duplicates of the next chunk in row order."""

    def __init__(self, bands: int = 0):
        self.exact = np.empty(0, dtype=np.uint64)
        self.near = [np.empty(0, dtype=np.uint64) for _ in range(bands)]

    def decide(self, n: int, hashes: np.ndarray | None, keys: np.ndarray | None) -> tuple[np.ndarray, int, int]:
        """Keep mask for a chunk's ``n`` candidate rows, the number of exact and of near duplicates; updates
        the state with the kept rows.

        In row order: an exact duplicate has the hash of an earlier row of the chunk or of a kept row of an
        earlier chunk; a near duplicate shares an LSH band key with a kept row.
        """
        keep = np.ones(n, dtype=bool)
        exact_dups = near_dups = 0
        if hashes is not None and n:
            first = np.zeros(n, dtype=bool)
            first[np.unique(hashes, return_index=True)[1]] = True
            keep = first & ~_contains(self.exact, hashes)
            exact_dups = int(n - keep.sum())
        if keys is not None and n:
            seen_before = np.zeros(n, dtype=bool)
            for band, kept_keys in enumerate(self.near):
                seen_before |= _contains(kept_keys, keys[:, band])
            near_dups = int((keep & seen_before).sum())
            keep &= ~seen_before
            self._drop_within_chunk(keys, keep)
            near_dups += int(n - exact_dups - near_dups - keep.sum())
        self.absorb(hashes[keep] if hashes is not None else None, keys[keep] if keys is not None else None)
        return keep, exact_dups, near_dups

    @staticmethod
    def _drop_within_chunk(keys: np.ndarray, keep: np.ndarray) -> None:
        """Clear ``keep`` for rows sharing a band key with an earlier kept row of the same chunk.

        Only rows that share some key with another candidate need the sequential pass; the rest are kept.
        """
        rows = np.flatnonzero(keep)
        shared = np.zeros(rows.size, dtype=bool)
        for band in range(keys.shape[1]):
            _, inverse, counts = np.unique(keys[rows, band], return_inverse=True, return_counts=True)
            shared |= counts[inverse] > 1
        local: list[set[int]] = [set() for _ in range(keys.shape[1])]
        for row in rows[shared]:
            row_keys = keys[row].tolist()
            if any(k in seen for k, seen in zip(row_keys, local)):
                keep[row] = False
            else:
                for k, seen in zip(row_keys, local):
                    seen.add(k)

    def absorb(self, hashes: np.ndarray | None, keys: np.ndarray | None) -> None:
        """Add kept rows (e.g. those of a committed chunk when resuming)."""
        if hashes is not None and hashes.size:
            self.exact = _insert(self.exact, hashes)
        if keys is not None and keys.size:
            self.near = [_insert(kept, keys[:, band]) for band, kept in enumerate(self.near)]
