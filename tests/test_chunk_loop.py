"""The one chunk loop (``pipelines.chunks.write_chunks``), tested once for every step: rows numbered across chunks
and resumes, committed chunks skipped, a chunk written in parts, the accounting summed by the store alone."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.chunks import ChunkOutput, write_chunks
from pipelines.errors import DistilleryError
from pipelines.fingerprint import version_id
from pipelines.store import Store, VersionWriter

SIZES = [3, 2, 0, 4, 1]          # kept rows of each toy chunk (one more input row each: dropped as too short)


def toy_writer(store: Store, resume: bool = False) -> VersionWriter:
    """A writer whose rows rule is the preprocess one: ``accounting.kept`` = the rows of each chunk."""
    parents = [{"kind": "raw", "path": "memory", "sha256": "0" * 64}]
    vid = version_id("toy", {}, parents, "test")
    return store.create_version(vid, "toy", {}, parents, resume=resume, code_version="test", rows_key="kept")


def uninterrupted(root: Path) -> dict:
    """The manifest of the toy version written in one go (what a resumed write must equal)."""
    writer = toy_writer(Store(root))
    write_chunks(writer, toy_outputs(writer))
    return writer.finalize()


def toy_output(index: int, rows: int, first: int = 0, last: bool = True) -> ChunkOutput:
    """Chunk ``index``'s rows ``first .. first + rows`` (``last``: its final part), with its figures."""
    table = pa.table({"text": pa.array([f"chunk {index} row {first + r}" for r in range(rows)], pa.string())})
    accounting = {"input_rows": rows + 1, "kept": rows, "dropped": {"too_short": 1}}
    return ChunkOutput(index, table, accounting=accounting, timing={"work_s": 0.5}, stats={"model": {"calls": 1}},
                       last=last)


def toy_outputs(writer: VersionWriter, sizes: list[int] = SIZES) -> Iterator[ChunkOutput]:
    """What a toy step hands the loop: the outputs of the chunks ``writer`` has not committed."""
    return (toy_output(i, n) for i, n in enumerate(sizes) if not writer.is_committed(i))


def row_ids(store: Store, manifest: dict) -> list[int]:
    return store.read_table(manifest["version_id"], columns=["row_id"]).column("row_id").to_pylist()


def shards(manifest: dict) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


class Bar:
    """A progress bar that counts."""

    n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_rows_are_numbered_across_chunks_and_the_figures_summed(store):
    writer = toy_writer(store)
    written = write_chunks(writer, toy_outputs(writer))
    total = writer.accounting()
    manifest = writer.finalize()
    assert row_ids(store, manifest) == list(range(sum(SIZES)))
    assert [s["rows"] for s in manifest["shards"]] == SIZES
    assert total == manifest["accounting"] == {"input_rows": 15, "kept": 10, "dropped": {"too_short": 5}}
    assert written.timing == {"work_s": 2.5} and written.stats == {"model": {"calls": 5}}
    assert [f["name"] for f in manifest["schema"]] == ["text", "row_id"]


def test_resume_skips_the_committed_chunks_and_row_ids_continue(tmp_path):
    expected = uninterrupted(tmp_path / "clean")

    store = Store(tmp_path / "store")
    writer = toy_writer(store)

    def stopped_after_two_chunks() -> Iterator[ChunkOutput]:
        yield from list(toy_outputs(writer))[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_chunks(writer, stopped_after_two_chunks())
    writer.close()
    resumed = toy_writer(store, resume=True)
    assert resumed.committed_chunks() == [0, 1]
    bar = Bar()
    written = write_chunks(resumed, toy_outputs(resumed), bar=bar)
    assert bar.n == 4 + 3                              # the input rows of the committed chunks, once
    assert written.stats == {"model": {"calls": 3}}    # the chunks written now
    manifest = resumed.finalize()
    assert shards(manifest) == shards(expected) and manifest["accounting"] == expected["accounting"]
    assert row_ids(store, manifest) == list(range(sum(SIZES)))


def test_a_chunk_written_again_between_committed_ones_gets_its_row_ids(tmp_path):
    expected = uninterrupted(tmp_path / "clean")
    store = Store(tmp_path / "store")
    writer = toy_writer(store)
    write_chunks(writer, toy_outputs(writer))
    writer.close()
    (writer.path / "data" / "shard-00001.parquet").write_bytes(b"damaged")    # chunk 1 fails the re-check
    resumed = toy_writer(store, resume=True)
    assert resumed.committed_chunks() == [0, 2, 3, 4]
    write_chunks(resumed, toy_outputs(resumed))                               # chunk 1 only, after chunk 0
    assert shards(resumed.finalize()) == shards(expected)


def test_a_chunk_in_parts_is_one_shard_with_the_bytes_of_a_whole_write(tmp_path):
    whole = toy_writer(Store(tmp_path / "whole"))
    write_chunks(whole, [toy_output(0, 6), toy_output(1, 2)])
    expected = whole.finalize()
    store = Store(tmp_path / "parts")
    writer = toy_writer(store)
    parts = [toy_output(0, 1, 0, last=False), toy_output(0, 0, 1, last=False), toy_output(0, 5, 1),
             toy_output(1, 2)]
    for part in parts[:3]:
        part.accounting["input_rows"] = part.accounting["kept"]
        part.accounting["dropped"]["too_short"] = 0
    parts[2].accounting.update(input_rows=6, dropped={"too_short": 1})
    write_chunks(writer, parts)
    manifest = writer.finalize()
    assert shards(manifest) == shards(expected) and manifest["accounting"] == expected["accounting"]
    assert row_ids(store, manifest) == list(range(8))


def test_chunks_out_of_order_or_unfinished_are_refused_and_leave_nothing(store):
    writer = toy_writer(store)
    with pytest.raises(DistilleryError, match="chunk 0 of version .* is not committed; chunks are written in order"):
        write_chunks(writer, [toy_output(1, 2)])
    with pytest.raises(ValueError, match="chunk 0 came after chunk 0"):
        write_chunks(writer, [toy_output(0, 2), toy_output(0, 2)])
    writer.discard()
    writer = toy_writer(store)
    with pytest.raises(ValueError, match="chunk 1 began before the last part of chunk 0"):
        write_chunks(writer, [toy_output(0, 2, last=False), toy_output(1, 2)])
    with pytest.raises(ValueError, match="chunk 0: its last part never came"):
        write_chunks(writer, [toy_output(0, 2, last=False)])
    assert writer.committed_chunks() == [] and not list(writer.path.rglob("*.parquet*"))
    assert not list((writer.path / "data").iterdir())


def test_the_rows_rule_is_checked_for_every_chunk(store):
    writer = toy_writer(store)
    wrong = toy_output(0, 3)
    wrong.accounting["kept"] = 2
    with pytest.raises(DistilleryError, match=r"chunk 0: 3 rows written but accounting.kept = 2"):
        write_chunks(writer, [wrong])
    assert writer.committed_chunks() == []


def test_tables_keep_their_own_row_ids_when_asked(store):
    writer = toy_writer(store)
    table = pa.table({"text": ["a", "b"], "row_id": pa.array([7, 9], pa.int64())})
    write_chunks(writer, [ChunkOutput(0, table, accounting={"kept": 2})], number_rows=False)
    assert row_ids(store, writer.finalize()) == [7, 9]


def test_chunk_output_adds_figures_key_by_key():
    output = ChunkOutput(0, accounting={"input_rows": 2})
    output.add(accounting={"input_rows": 1, "dropped": {"x": 1}}, timing={"a_s": 0.25})
    output.add(accounting={"dropped": {"x": 2, "y": 1}}, timing={"a_s": 0.5}, stats={"m": {"n": 1}})
    assert output.accounting == {"input_rows": 3, "dropped": {"x": 3, "y": 1}}
    assert output.timing == {"a_s": 0.75} and output.stats == {"m": {"n": 1}}
