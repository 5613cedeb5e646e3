"""The store's promises at its edges (issue 20): every path read from a file stays inside its version, no write
follows a planted symlink, resume re-checks what it reuses, gc leaves what is being read, malformed folders are
named and skipped, special files never hang a command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pyarrow as pa
import pytest
from conftest import new_writer

from pipelines import atomic
from pipelines.errors import DistilleryError, VersionNotFoundError
from pipelines.export import export_version
from pipelines.fingerprint import file_sha256
from pipelines.store import Store

ROWS = [{"text": f"sentence {i}", "row_id": i} for i in range(5)]


def cli(store: Store, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILLERY_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "distillery", "--store", str(store.root), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def manifest_path(store: Store, vid: str):
    return store.version_path(vid) / "manifest.json"


def edit_manifest(store: Store, vid: str, change) -> None:
    path = manifest_path(store, vid)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- 5: shard paths are confined --------------------------------------------------------------------------
@pytest.mark.parametrize("bad_path", ["../../../secret.parquet", "/etc/passwd", "/dev/zero", "data/../../x.parquet",
                                      "data/shard-00000.parquet/../../manifest.json", 7])
def test_a_manifest_path_leading_out_is_refused_by_every_reader(store, make_version, tmp_path, bad_path):
    vid = make_version(store, ROWS, name="toy")["version_id"]
    edit_manifest(store, vid, lambda m: m["shards"][0].update(path=bad_path))
    for read in (store.shard_paths, store.read_table, store.verify):
        with pytest.raises(DistilleryError, match=f"version {vid[:12]}: manifest.json is malformed"):
            read("toy")
    with pytest.raises(DistilleryError, match="malformed"):
        export_version(store, "toy", tmp_path / "out.jsonl", "jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "/etc/passwd", "other-version"])
def test_a_shard_replaced_by_a_link_or_special_file_is_a_problem_never_read(store, make_version, target):
    vid = make_version(store, ROWS, name="toy")["version_id"]
    other = make_version(store, ROWS[:2], config={"other": 1})
    shard = store.version_path(vid) / "data" / "shard-00000.parquet"
    shard.unlink()
    if target == "fifo":
        os.mkfifo(shard)
    else:
        source = (store.version_path(other["version_id"]) / other["shards"][0]["path"] if target == "other-version"
                  else target)
        shard.symlink_to(source)
    problems = store.verify("toy")                 # returns at once: no hashing of /dev/zero, no open of the FIFO
    assert problems and "data/shard-00000.parquet" in problems[0] and "not a regular file" in problems[0]
    with pytest.raises(DistilleryError, match="not a regular file"):
        store.read_table("toy")
    result = cli(store, "versions", "verify", timeout=30)
    assert result.returncode == 1 and "CORRUPT" in result.stdout


def test_whole_store_commands_name_a_malformed_version_and_go_on(store, make_version):
    good = make_version(store, ROWS, name="good")["version_id"]
    bad = make_version(store, ROWS[:3], config={"x": 1}, name="bad")["version_id"]
    edit_manifest(store, bad, lambda m: m.update(shards="not a list"))
    listed = cli(store, "versions", "list")
    assert listed.returncode == 0 and good[:12] in listed.stdout and "(unreadable)" in listed.stdout
    assert f"version {bad[:12]}: manifest.json is malformed" in listed.stderr
    verified = cli(store, "versions", "verify")
    assert verified.returncode == 1 and f"ok      {good[:12]}" in verified.stdout and "BROKEN" in verified.stdout
    assert "Traceback" not in verified.stderr
    report = store.gc(unreferenced=True)
    assert report.deleted == [] and bad in report.skipped and store.is_complete(bad)


def test_a_manifest_naming_another_version_or_with_wrong_row_count_is_malformed(store, make_version):
    vid = make_version(store, ROWS, name="toy")["version_id"]
    edit_manifest(store, vid, lambda m: m.update(num_rows=99))
    with pytest.raises(DistilleryError, match="num_rows"):
        store.manifest("toy")
    edit_manifest(store, vid, lambda m: m.update(num_rows=5, version_id="0" * 64))
    with pytest.raises(DistilleryError, match="names version"):
        store.manifest("toy")


# ---- refs and names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["../../etc\n", "/tmp/x", "", "z" * 64])
def test_a_malformed_ref_is_named_not_followed(store, make_version, content):
    make_version(store, ROWS, name="toy")
    (store.refs_dir / "toy" / "latest").write_text(content)
    with pytest.raises(DistilleryError, match="ref toy@latest is malformed"):
        store.resolve("toy")
    assert "toy@latest" in store.bad_refs() and "toy@latest" not in store.refs()


def test_names_with_a_trailing_newline_and_paths_as_refs_are_refused(store, make_version):
    vid = make_version(store, ROWS, name="toy")["version_id"]
    for name in ("toy\n", "a/b", "..", "-x"):
        with pytest.raises(DistilleryError, match="invalid"):
            store.tag(name, "latest", vid)
    with pytest.raises(DistilleryError, match="invalid"):
        store.tag("toy", "v1\n", vid)
    for ref in (str(store.version_path(vid)), f"../versions/{vid}", "/etc"):
        with pytest.raises(VersionNotFoundError):
            store.tag("toy", "v2", ref)
    assert not (store.refs_dir / "toy" / "v2").exists()
    with pytest.raises(DistilleryError, match="not a version id"):
        store.version_path("../" + "a" * 61)


def test_a_symlinked_ref_folder_or_versions_folder_is_refused(store, make_version, tmp_path):
    make_version(store, ROWS, name="toy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.refs_dir / "other").symlink_to(elsewhere)
    vid = store.resolve("toy")
    with pytest.raises(DistilleryError, match="not a folder"):
        store.tag("other", "latest", vid)
    assert list(elsewhere.iterdir()) == []


# ---- 4: resume re-checks the chunks it reuses ----------------------------------------------------------------
def test_resume_rewrites_a_chunk_whose_record_points_outside(store, tmp_path):
    secret = tmp_path / "secret.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "SECRET", "row_id": 0}]), secret)
    writer = new_writer(store, "preprocess", {"c": 1}, [{"kind": "raw", "sha256": "9" * 64}])
    writer.write_chunk(0, pa.Table.from_pylist(ROWS[:2]), accounting={"kept": 2})
    writer.close()
    record_path = writer.path / "chunks" / "00000.json"
    record = json.loads(record_path.read_text())
    record["shard"].update(path="../../../secret.parquet", sha256=file_sha256(secret), bytes=secret.stat().st_size,
                           rows=1)
    record["accounting"]["kept"] = 1
    record_path.write_text(json.dumps(record))
    resumed = new_writer(store, "preprocess", {"c": 1}, [{"kind": "raw", "sha256": "9" * 64}], resume=True)
    assert not resumed.is_committed(0) and not record_path.exists()      # not trusted: written again
    resumed.write_chunk(0, pa.Table.from_pylist(ROWS[:2]), accounting={"kept": 2})
    manifest = resumed.finalize()
    assert store.read_table(manifest["version_id"]).column("text").to_pylist() == ["sentence 0", "sentence 1"]


@pytest.mark.parametrize("damage", ["bytes", "rows", "record", "symlink"])
def test_resume_rewrites_a_chunk_that_does_not_check_out(store, damage, tmp_path):
    parents = [{"kind": "raw", "sha256": "8" * 64}]
    writer = new_writer(store, "preprocess", {"c": 2}, parents)
    writer.rows_key = "kept"
    for index in range(2):
        writer.write_chunk(index, pa.Table.from_pylist(ROWS[2 * index:2 * index + 2]), accounting={"kept": 2})
    writer.close()
    shard = writer.path / "data" / "shard-00001.parquet"
    record_path = writer.path / "chunks" / "00001.json"
    if damage == "bytes":
        shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    elif damage == "rows":
        record = json.loads(record_path.read_text())
        record["accounting"]["kept"] = 7
        record_path.write_text(json.dumps(record))
    elif damage == "record":
        record_path.write_text("{not json")
    else:
        copy = tmp_path / "copy.parquet"
        copy.write_bytes(shard.read_bytes())
        shard.unlink()
        shard.symlink_to(copy)
    resumed = store.create_version(writer.version_id, "preprocess", {"c": 2}, parents, resume=True,
                                   code_version="test", rows_key="kept")
    assert resumed.committed_chunks() == [0]
    resumed.close()


def test_finalize_checks_rows_against_the_steps_accounting(store):
    writer = new_writer(store, "preprocess", {"c": 3}, [{"kind": "raw", "sha256": "7" * 64}])
    writer.rows_key = "kept"
    with pytest.raises(DistilleryError, match="accounting.kept"):
        writer.write_chunk(0, pa.Table.from_pylist(ROWS), accounting={"kept": 4})
    assert not writer.is_committed(0) and not list(writer.path.rglob("*.parquet"))
    writer.close()


# ---- 6 and 7: locks and temporary files never follow a planted link ------------------------------------------
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_planted_lock_file_never_truncates_its_target(store, tmp_path, how):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    vid = "ab" * 32
    lock = store.lock_path(vid)
    lock.parent.mkdir(parents=True)
    (os.symlink if how == "symlink" else os.link)(victim, lock)
    with pytest.raises(DistilleryError, match="lock file"):
        store.create_version(vid, "preprocess", {}, [])
    assert victim.read_text() == "precious\n"


def test_temporary_files_never_reuse_a_planted_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    fixed = uuid.UUID("12345678123456781234567812345678")
    monkeypatch.setattr(atomic.uuid, "uuid4", lambda: fixed)
    target = tmp_path / "out.json"
    (tmp_path / f".out.json.{os.getpid()}-{fixed.hex}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic.write_json_atomic(target, {"a": 1})
    assert victim.read_text() == "precious\n" and not target.exists()


def test_a_symlinked_data_folder_of_an_interrupted_version_is_refused(store, tmp_path):
    writer = new_writer(store, "preprocess", {"c": 4}, [{"kind": "raw", "sha256": "6" * 64}])
    writer.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    (writer.path / "data").rmdir()
    (writer.path / "data").symlink_to(outside)
    with pytest.raises(DistilleryError, match="is a symlink, not a folder"):
        new_writer(store, "preprocess", {"c": 4}, [{"kind": "raw", "sha256": "6" * 64}], resume=True)
    assert list(outside.iterdir()) == []


# ---- 8: export targets ------------------------------------------------------------------------------------------
def test_export_refuses_targets_in_the_store_links_and_special_files(store, make_version, tmp_path):
    vid = make_version(store, ROWS, name="toy")["version_id"]
    manifest = manifest_path(store, vid)
    before = manifest.read_bytes()
    with pytest.raises(DistilleryError, match="inside the store"):
        export_version(store, "toy", manifest, "jsonl")
    with pytest.raises(DistilleryError, match="inside the store"):
        export_version(store, "toy", store.root / "export.csv", "csv")
    assert manifest.read_bytes() == before
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DistilleryError, match="not a regular file"):
        export_version(store, "toy", fifo, "jsonl")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    with pytest.raises(DistilleryError, match="symlink"):
        export_version(store, "toy", link, "jsonl")
    assert victim.read_text() == "precious\n" and link.is_symlink()
    export_version(store, "toy", tmp_path / "ok.jsonl", "jsonl")
    assert len((tmp_path / "ok.jsonl").read_text().splitlines()) == 5


def test_export_to_stdout(store, make_version):
    make_version(store, ROWS, name="toy")
    result = cli(store, "export", "toy", "-", "--format", "jsonl")
    assert result.returncode == 0 and [json.loads(line)["text"] for line in result.stdout.splitlines()] == \
        [r["text"] for r in ROWS]
    assert cli(store, "export", "toy", "-", "--format", "hf").returncode == 1


# ---- 10: gc leaves what a live process reads --------------------------------------------------------------------
READER = textwrap.dedent("""
    import sys
    from pipelines.store import Store
    store = Store(sys.argv[1])
    store.shard_paths(sys.argv[2])
    print("reading", flush=True)
    sys.stdin.readline()
""")


def test_gc_leaves_a_version_a_live_process_reads(store, make_version):
    orphan = make_version(store, ROWS, config={"orphan": 1})["version_id"]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store.root), orphan], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "reading\n"
        assert store.gc(unreferenced=True, dry_run=True).deleted == []
        report = store.gc(unreferenced=True)
        assert report.deleted == [] and "in use" in report.skipped[orphan] and store.is_complete(orphan)
    finally:
        reader.communicate("done\n", timeout=60)
    assert store.gc(unreferenced=True).deleted == [orphan] and not store.is_complete(orphan)


def test_a_read_only_store_stays_readable(store, make_version, monkeypatch):
    """Where no lock can be taken (a read-only file system), a reader reads anyway: gc cannot run there either."""
    import errno
    import pathlib
    import shutil

    vid = make_version(store, ROWS, name="toy")["version_id"]
    shutil.rmtree(store.root / "locks")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    monkeypatch.setattr(atomic, "_open_own_file", read_only)
    assert store.read_table("toy").num_rows == 5 and store.verify(vid) == []


def test_a_symlinked_locks_folder_is_refused_by_writers_and_gc(store, make_version, tmp_path):
    make_version(store, ROWS, config={"orphan": 2})
    outside = tmp_path / "outside"
    outside.mkdir()
    for entry in (store.root / "locks").iterdir():
        entry.unlink()
    (store.root / "locks").rmdir()
    (store.root / "locks").symlink_to(outside)
    with pytest.raises(DistilleryError, match="is a symlink, not a folder"):
        store.gc(unreferenced=True)
    with pytest.raises(DistilleryError, match="is a symlink, not a folder"):
        new_writer(store, "preprocess", {"c": 9}, [{"kind": "raw", "sha256": "5" * 64}])
    assert list(outside.iterdir()) == []
