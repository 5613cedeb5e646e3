"""The one chunk loop of every step that writes a version.

A step processes the chunks its writer has not committed (``VersionWriter.is_committed``) and hands their
``ChunkOutput``s, in chunk order, to ``write_chunks``. The loop numbers the rows (a chunk's first row id is where
the chunks before it end, those written by an interrupted run included), writes each chunk (whole, or part by part
when the step cuts a chunk into parts), and adds up what the chunks report. Resume offsets and sums live here and
in the store (``VersionWriter.committed_rows``, ``VersionWriter.accounting``), never in a step."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.store import ChunkSink, VersionWriter, sum_counts

if TYPE_CHECKING:
    from tqdm import tqdm

ROW_ID = "row_id"


@dataclass
class ChunkOutput:
    """What a step made of one chunk, or of one part of it (``last``: the chunk's final part).

    ``table``: the rows to write (without ``row_id``: the loop numbers them); ``rejects``: rejected rows;
    ``accounting``: recorded with the chunk (a chunk's parts are summed), it must set the step's ``rows_key`` to
    the rows written; ``timing`` (seconds per stage) and ``stats`` (run figures): summed over the run, never
    recorded per chunk."""

    index: int
    table: pa.Table | None = None
    rejects: pa.Table | None = None
    accounting: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    last: bool = True

    def add(self, accounting: dict[str, Any] | None = None, timing: dict[str, float] | None = None,
            stats: dict[str, Any] | None = None) -> ChunkOutput:
        """Add figures to this output's (numbers key by key, nested dictionaries too); returns the output."""
        sum_counts(self.accounting, accounting or {})
        sum_counts(self.timing, timing or {})
        sum_counts(self.stats, stats or {})
        return self


@dataclass
class WrittenChunks:
    """What ``write_chunks`` wrote: the timing and stats of its outputs summed, and the seconds spent writing
    them. (The accounting of every committed chunk, summed: ``VersionWriter.accounting``.)"""

    timing: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    write_s: float = 0.0


class _ChunkLoop:
    """Writes outputs in chunk order, numbering rows from the end of the chunks before each."""

    def __init__(self, writer: VersionWriter, number_rows: bool):
        self.writer = writer
        self.number_rows = number_rows
        self.next_index = 0                  # the first chunk not yet passed
        self.offset = 0                      # the row id of chunk ``next_index``'s first row
        self.sink: ChunkSink | None = None   # the chunk being written part by part
        self.accounting: dict[str, Any] = {}
        self.done = WrittenChunks()

    def write(self, output: ChunkOutput) -> None:
        start = time.perf_counter()
        if self.sink is None:
            self._skip_to(output.index)
        elif self.sink.index != output.index:
            raise ValueError(f"chunk {output.index} began before the last part of chunk {self.sink.index}")
        assert output.table is not None, f"chunk {output.index}: an output without rows"
        table = self._numbered(output.table)
        self.accounting = sum_counts(self.accounting, output.accounting)
        sum_counts(self.done.timing, output.timing)
        sum_counts(self.done.stats, output.stats)
        if self.sink is None and output.last:
            self.writer.write_chunk(output.index, table, output.rejects, self.accounting)
            rows = table.num_rows
        else:
            self.sink = self.sink or self.writer.open_chunk(output.index)
            self.sink.write(table, output.rejects)
            rows = self.sink.rows
            if output.last:
                self.sink.commit(self.accounting)
        if output.last:
            self.sink, self.accounting = None, {}
            self.next_index, self.offset = output.index + 1, self.offset + rows
        self.done.write_s += time.perf_counter() - start

    def _skip_to(self, index: int) -> None:
        """Move past the chunks an earlier run committed before ``index`` (each must be committed)."""
        if index < self.next_index:
            raise ValueError(f"chunk {index} came after chunk {self.next_index - 1}: chunks are written in order")
        for skipped in range(self.next_index, index):
            self.offset += self.writer.committed_rows(skipped)
        self.next_index = index

    def _numbered(self, table: pa.Table) -> pa.Table:
        if not self.number_rows:
            return table
        first = self.offset + (self.sink.rows if self.sink is not None else 0)
        return table.append_column(ROW_ID, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))

    def abort(self) -> None:
        """Drop a chunk left half written (nothing of it was committed)."""
        if self.sink is not None:
            self.sink.abort()
            self.sink = None


def write_chunks(writer: VersionWriter, outputs: Iterable[ChunkOutput], number_rows: bool = True,
                 bar: tqdm | None = None) -> WrittenChunks:
    """Write ``outputs`` (chunks the writer has not committed, in chunk order, each whole or in parts); returns
    their timing and stats summed. ``number_rows``: append ``row_id``, the output version's row ids, continuing
    from the rows of the chunks before (committed by an earlier run or written here). ``bar`` (a progress bar) is
    advanced by the input rows of the chunks committed earlier; the step advances it for the rows it processes."""
    if bar is not None:
        bar.update(writer.accounting().get("input_rows", 0))
    loop = _ChunkLoop(writer, number_rows)
    try:
        for output in outputs:
            loop.write(output)
        if loop.sink is not None:
            raise ValueError(f"chunk {loop.sink.index}: its last part never came")
    finally:
        loop.abort()
    return loop.done
