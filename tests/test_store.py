"""Dataset store: content-addressed ids, immutability, atomic chunks, resume, verify, names, gc, cards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from conftest import damage_shard, new_writer

from pipelines.errors import DistilleryError, VersionExistsError, VersionNotFoundError
from pipelines.store import diff_manifests

ROWS = [{"text": f"sentence number {i}", "label": "a" if i % 3 else "b", "row_id": i} for i in range(7)]


def test_manifest_describes_shards(store, make_version):
    manifest = make_version(store, ROWS, name="toy")
    assert manifest["num_rows"] == 7
    assert [s["rows"] for s in manifest["shards"]] == [2, 2, 2, 1]
    assert manifest["accounting"] == {"input_rows": 7, "kept": 7}
    assert manifest["stats"]["label_counts"] == {"a": 4, "b": 3}
    assert [f["name"] for f in manifest["schema"]] == ["text", "label", "row_id"]
    assert store.resolve("toy") == store.resolve("toy@latest") == manifest["version_id"]
    assert store.read_table("toy").column("text").to_pylist() == [r["text"] for r in ROWS]


def test_same_step_same_input_same_id_and_bytes(tmp_path, make_version):
    from pipelines.store import Store

    a = make_version(Store(tmp_path / "a"), ROWS)
    b = make_version(Store(tmp_path / "b"), ROWS)
    assert a["version_id"] == b["version_id"]
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    c = make_version(Store(tmp_path / "c"), ROWS, config={"chunk_rows": 2, "lowercase": True})
    assert c["version_id"] != a["version_id"]


def test_version_id_depends_on_parents_config_and_code():
    from pipelines.fingerprint import version_id

    parents = [{"kind": "raw", "sha256": "1"}]
    base = version_id("s", {"a": 1}, parents, "code")
    assert base == version_id("s", {"a": 1}, parents, "code")
    assert base != version_id("s", {"a": 2}, parents, "code")
    assert base != version_id("s", {"a": 1}, [{"version_id": "x"}], "code")
    assert base != version_id("s", {"a": 1}, parents, "other code")
    assert base != version_id("t", {"a": 1}, parents, "code")


def test_complete_versions_are_immutable(store, make_version):
    make_version(store, ROWS)
    with pytest.raises(VersionExistsError, match="immutable"):
        make_version(store, ROWS)


def test_partial_version_is_invisible_and_resumable(store):
    parents = [{"kind": "raw", "path": "m", "sha256": "2"}]
    writer = new_writer(store, "preprocess", {"x": 1}, parents, name="half")
    writer.write_chunk(0, pa.Table.from_pylist(ROWS[:2]), accounting={"input_rows": 2})
    assert store.version_ids() == []
    with pytest.raises(VersionNotFoundError):
        store.resolve("half")
    with pytest.raises(DistilleryError, match=f"being written by process {os.getpid()} on "):
        new_writer(store, "preprocess", {"x": 1}, parents, resume=True)     # one writer at a time
    writer.close()                                                          # as a crash would
    with pytest.raises(DistilleryError, match="--resume"):
        new_writer(store, "preprocess", {"x": 1}, parents)
    resumed = new_writer(store, "preprocess", {"x": 1}, parents, name="half", resume=True)
    assert resumed.is_committed(0) and not resumed.is_committed(1)
    resumed.write_chunk(1, pa.Table.from_pylist(ROWS[2:]), accounting={"input_rows": 5})
    manifest = resumed.finalize()
    assert manifest["num_rows"] == 7 and manifest["accounting"]["input_rows"] == 7
    assert store.resolve("half") == manifest["version_id"]


def test_leftover_tmp_files_do_not_count_as_chunks(store):
    parents = [{"kind": "raw", "path": "m", "sha256": "3"}]
    writer = new_writer(store, "preprocess", {}, parents)
    (writer.path / "data" / "shard-00000.parquet.tmp").write_bytes(b"half written")
    assert not writer.is_committed(0)
    writer.write_chunk(0, pa.Table.from_pylist(ROWS))
    assert writer.finalize()["num_rows"] == 7


def test_finalize_refuses_gaps_and_schema_drift(store):
    writer = new_writer(store, "preprocess", {}, [{"kind": "raw", "sha256": "4"}])
    writer.write_chunk(1, pa.Table.from_pylist(ROWS[:1]))
    with pytest.raises(DistilleryError, match="contiguous"):
        writer.finalize()
    writer.write_chunk(0, pa.Table.from_pylist([{"text": "x", "label": 1, "row_id": 0}]))
    with pytest.raises(DistilleryError, match="schema"):
        writer.finalize()


def test_verify_detects_a_flipped_byte(store, make_version):
    manifest = make_version(store, ROWS)
    assert store.verify(manifest["version_id"]) == []
    shard = store.shard_paths(manifest["version_id"])[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = store.verify(manifest["version_id"])
    assert len(problems) == 1 and "shard-00001" in problems[0] and "sha256" in problems[0]


def test_tags_prefixes_lineage_and_diff(store, make_version):
    base = make_version(store, ROWS, name="base")
    child = make_version(store, ROWS[:3], step="augment", config={"n": 2},
                         parents=[{"version_id": base["version_id"]}], name="child")
    store.tag("child", "v1", child["version_id"])
    assert store.resolve("child@v1") == child["version_id"]
    assert store.resolve(child["version_id"][:10]) == child["version_id"]
    chain = store.lineage("child@v1")
    assert [e.get("step") for e in chain] == ["augment", "preprocess", None]
    assert chain[-1]["raw"] == "memory"
    diff = diff_manifests(base, child)
    assert diff["num_rows"] == [7, 3] and diff["step"] == ["preprocess", "augment"] and not diff["same_data"]


def test_gc_removes_partial_and_unreferenced(store, make_version):
    keep = make_version(store, ROWS, name="keep")
    orphan = make_version(store, ROWS[:2], config={"other": 1})
    writer = new_writer(store, "preprocess", {"p": 1}, [{"kind": "raw", "sha256": "5"}])
    writer.write_chunk(0, pa.Table.from_pylist(ROWS))
    assert store.gc(dry_run=True).deleted == []                                  # being written: not garbage
    writer.close()
    assert len(store.gc(dry_run=True).deleted) == 1
    removed = store.gc(unreferenced=True).deleted
    assert orphan["version_id"] in removed and keep["version_id"] not in removed
    assert store.version_ids(include_partial=True) == [keep["version_id"]]


def test_data_card_front_matter_and_content(store, make_version):
    manifest = make_version(store, ROWS, name="carded")
    text = (store.version_path(manifest["version_id"]) / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["distillery"]["version_id"] == manifest["version_id"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 7
    assert meta["task_categories"] == ["text-classification"]
    assert "| a | 4 |" in body and "## Lineage" in body and "raw input `memory`" in body


def test_rows_without_a_label_are_not_a_label(store, make_version):
    """Text without labels mixed with labelled rows (a masked LM's text): the missing labels are no class."""
    rows = [{**r, "label": None if r["row_id"] < 3 else r["label"]} for r in ROWS]
    stats = make_version(store, rows, name="mixed", chunk_rows=7)["stats"]
    assert stats["num_labels"] == 2 and stats["label_counts"] == {"a": 2, "b": 2}


def test_length_statistics_are_exact(store, make_version):
    rows = [{"text": "x" * n} for n in (1, 2, 3, 10, 100)]
    stats = make_version(store, rows)["stats"]["text_chars"]
    assert (stats["min"], stats["median"], stats["max"], stats["mean"]) == (1, 3, 100, 23.2)
    assert stats["histogram"]["0-15"] == 4 and stats["histogram"]["64-127"] == 1


def test_other_tools_load_the_shards(store, make_version):
    import datasets
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = make_version(store, ROWS)
    files = [str(p) for p in store.shard_paths(manifest["version_id"])]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds["text"] == [r["text"] for r in ROWS]
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert frame["row_id"].tolist() == list(range(7))
    assert pq.read_table(files).num_rows == 7
    glob = str(store.version_path(manifest["version_id"]) / "data" / "*.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE label = 'b'").fetchall() == [(3,)]


def test_export_formats(store, make_version, tmp_path):
    import csv

    import datasets

    from pipelines.export import export_version

    manifest = make_version(store, ROWS)
    vid = manifest["version_id"]
    lines = export_version(store, vid, tmp_path / "out.jsonl", "jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS
    with open(export_version(store, vid, tmp_path / "out.csv", "csv"), newline="") as fh:
        assert [r["text"] for r in csv.DictReader(fh)] == [r["text"] for r in ROWS]
    hf = datasets.load_from_disk(str(export_version(store, vid, tmp_path / "hf", "hf")))
    assert hf["label"] == [r["label"] for r in ROWS]
    with pytest.raises(DistilleryError, match="exists"):
        export_version(store, vid, tmp_path / "hf", "hf")


def test_a_failed_export_leaves_the_earlier_file_and_empty_versions_export(store, make_version, tmp_path):
    import csv

    import datasets

    from pipelines.export import export_version

    vid = make_version(store, ROWS, name="a")["version_id"]
    out = tmp_path / "t2.jsonl"
    export_version(store, "a", out, "jsonl")
    before = out.read_bytes()
    with pytest.raises(VersionNotFoundError):
        export_version(store, "aa", out, "jsonl")              # a typo in the ref: the earlier export stays
    assert out.read_bytes() == before and len(before.splitlines()) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    writer = new_writer(store, "preprocess", {"empty": 1}, [{"kind": "raw", "sha256": "9"}], name="empty")
    writer.write_chunk(0, pa.Table.from_pylist(ROWS).slice(0, 0), accounting={"input_rows": 0})
    writer.finalize({"licence": {"license": "cc-by-4.0"}})
    with open(export_version(store, "empty", tmp_path / "e.csv", "csv"), newline="") as fh:
        assert next(csv.reader(fh)) == ["text", "label", "row_id"]      # the header of a 0-row version
    hf = datasets.load_from_disk(str(export_version(store, "empty", tmp_path / "ehf", "hf")))
    assert hf.num_rows == 0 and hf.column_names == ["text", "label", "row_id"] and hf.info.license == "cc-by-4.0"
    assert export_version(store, vid, tmp_path / "e.jsonl", "jsonl").read_text().count("\n") == 7


def test_the_data_card_is_a_valid_hub_card_that_datasets_loads_quietly(store, make_version, caplog):
    import logging

    import datasets

    rows = [{**r, "scores": [0.5, 1.5]} for r in ROWS]
    writer = new_writer(store, "preprocess", {"card": 1}, [{"kind": "raw", "sha256": "8"}], name="carded")
    writer.write_chunk(0, pa.Table.from_pylist(rows), accounting={
        "rejected": {"malformed_json": 2}, "kept": 7, "dropped": {"exact_dup": 1}, "input_rows": 10})
    manifest = writer.finalize({"licence": {"license": "wordnet", "notice": "WordNet 3.0"},
                                "warnings": ["mlm: none - vectors for every word"]})
    card = (store.version_path(manifest["version_id"]) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and front["license_name"] == "wordnet"
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_bytes": manifest["shards"][0]["bytes"],
                                                 "num_examples": 7}]
    assert {"name": "scores", "sequence": "float64"} in front["dataset_info"]["features"]
    body = card.split("---", 2)[2]
    assert body.index("**Warning**: mlm: none") < body.index("## Lineage")
    section = body.split("## Row accounting")[1].split("##")[0]
    rows_order = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows_order == ["input_rows", "kept", "dropped: exact_dup", "rejected: malformed_json"]
    with caplog.at_level(logging.WARNING):
        loaded = datasets.load_dataset(str(store.version_path(manifest["version_id"])), split="train")
    assert loaded.num_rows == 7 and not [r for r in caplog.records if "dataset_info" in r.getMessage()]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "hf"])
def test_a_damaged_shard_stops_every_read_of_the_store(store, make_version, tmp_path, fmt):
    from pipelines.export import export_version

    vid = make_version(store, ROWS, name="toy")["version_id"]
    assert store.read_table("toy").num_rows == 7                        # read (and checked) once while intact
    shard = damage_shard(store, "toy", 1)
    assert store.verify("toy")
    damaged = f"version {vid[:12]}: shard {shard} is damaged .*distillery versions verify {vid[:12]}"
    for read in (lambda: list(store.iter_batches("toy")), lambda: store.read_table("toy"),
                 lambda: store.shard_paths("toy")):
        with pytest.raises(DistilleryError, match=damaged):
            read()
    with pytest.raises(DistilleryError, match=damaged):
        export_version(store, "toy", tmp_path / f"out.{fmt}", fmt)
    assert list(tmp_path.glob("out*")) == []                             # nothing half-written either


WRITER = """
import sys, pyarrow as pa
from pipelines.store import Store
writer = Store(sys.argv[1]).create_version(sys.argv[2], "preprocess", {}, [], name="shared", code_version="t")
writer.write_chunk(0, pa.Table.from_pylist([{"text": "first writer", "row_id": 0}]))
print("writing", flush=True)
sys.stdin.readline()
writer.finalize()
"""


def test_a_second_writer_is_told_who_writes_and_the_version_stays_intact(store):
    vid = "ab" * 32
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), vid], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    with pytest.raises(DistilleryError, match=f"version {vid[:12]} is being written by process {child.pid} on "):
        store.create_version(vid, "preprocess", {}, [], resume=True)
    child.communicate("go\n", timeout=60)
    assert child.returncode == 0 and store.verify(vid) == []
    assert store.read_table("shared").to_pylist() == [{"text": "first writer", "row_id": 0}]
    with pytest.raises(VersionExistsError):
        store.create_version(vid, "preprocess", {}, [])                 # the lock is free again: it is complete


def test_a_dead_writers_lock_is_taken_over(store):
    vid = "cd" * 32
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), vid], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.kill()
    child.wait()
    resumed = store.create_version(vid, "preprocess", {}, [], name="shared", resume=True)
    assert resumed.committed_chunks() == [0]
    assert resumed.finalize()["num_rows"] == 1


def test_a_forked_helper_does_not_keep_a_killed_writers_lock(tmp_path):
    """A writer's worker processes (forked) must not hold its lock after the writer is killed."""
    from pipelines.atomic import WriterLock

    lock = tmp_path / "locks" / "v.lock"
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from pipelines.atomic import WriterLock
        lock = WriterLock(Path({str(lock)!r}), "version v")
        ready, started = os.pipe()
        if os.fork() == 0:
            os.write(started, b"x")  # the at-fork hooks have run by now
            time.sleep(20)           # a helper outliving its parent
            os._exit(0)
        os.read(ready, 1)
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert child.stdout.readline().strip() == "locked" and WriterLock.held(lock)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not WriterLock.held(lock)


def test_the_card_shows_agreement_counts_as_shares_a_person_reads():
    from pipelines.cards import accounting_rows

    rows = dict(accounting_rows({"input_rows": 9, "agreement": {
        "all": {"copies": 7450, "same_label": 5210}, "mixed": {"copies": 0, "same_label": 0},
        "gold": {"originals": 1000, "originals_right": 950, "copies": 7450, "copies_right": 6000}}}))
    assert rows["agreement: all"] == "teacher's label unchanged on 5,210 of 7,450 copies (69.9%)"
    assert rows["agreement: mixed"] == "teacher's label unchanged on 0 of 0 copies"
    assert rows["agreement: gold"] == "copies right: 6,000 of 7,450 (80.5%); originals right: 950 of 1,000 (95.0%)"
    assert not any("{" in str(v) for v in rows.values())


def test_the_card_shows_a_tagging_versions_agreement_per_unchanged_word():
    from pipelines.cards import readable_counts

    text = readable_counts({"copies": 41, "words": 258, "same_tag": 196})
    assert text == "copies: 41; teacher's tag unchanged on 196 of 258 unchanged words (76.0%)"
