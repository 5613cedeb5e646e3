"""Inputs at the edges (issue 20): an id means these bytes read this way, an input that changes while it is read
is refused and nothing written from it is kept, truncated compressed files fail, special files are refused unread,
memory inside a chunk is bounded by bytes."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipelines.errors import DistilleryError, InputChangedError
from pipelines.runner import run_step
from pipelines.store import Store
from preprocess import InputConfig, PreprocessConfig, plan_preprocess
from preprocess import step as preprocess_step


def run_cli(store_root, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILLERY_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "distillery", "--store", str(store_root), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def jsonl(rows: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"text": f"row number {i}", "label": f"l{i % 2}"}).encode() + b"\n"
                    for i in range(start, start + rows))


# ---- 1: the id includes how the bytes are read --------------------------------------------------------------
def test_the_same_bytes_read_as_another_format_are_another_version(store, tmp_path):
    data = b'{"text": "hello world", "label": "a"}\n{"text": "second row", "label": "b"}\n'
    (tmp_path / "same.txt").write_bytes(data)
    (tmp_path / "same.jsonl").write_bytes(data)
    as_text = run_step(store, plan_preprocess([tmp_path / "same.txt"], PreprocessConfig())).manifest
    as_json = run_step(store, plan_preprocess([tmp_path / "same.jsonl"], PreprocessConfig())).manifest
    assert as_text["version_id"] != as_json["version_id"]
    assert store.read_table(as_json["version_id"]).column("text").to_pylist() == ["hello world", "second row"]
    tsv, csv = tmp_path / "same.tsv", tmp_path / "same.csv"
    tsv.write_text("a,b\tc\n")
    csv.write_bytes(tsv.read_bytes())
    config = PreprocessConfig(input=InputConfig(csv_header=False, text_column="0", label_column="1"))
    as_tsv = run_step(store, plan_preprocess([tsv], config)).manifest
    as_csv = run_step(store, plan_preprocess([csv], config)).manifest
    assert as_tsv["version_id"] != as_csv["version_id"]
    assert store.read_table(as_tsv["version_id"]).to_pylist()[0] == {"text": "a,b", "label": "c", "row_id": 0}
    assert store.read_table(as_csv["version_id"]).to_pylist()[0] == {"text": "a", "label": "b\tc", "row_id": 0}


# ---- 2: an input that changes while it is read -------------------------------------------------------------
@pytest.mark.parametrize("restore", [False, True])
def test_an_input_that_changes_while_read_is_refused_and_nothing_is_kept(store, tmp_path, monkeypatch, restore):
    corpus = tmp_path / "corpus.jsonl"
    original = jsonl(300)
    corpus.write_bytes(original)
    real = preprocess_step.ChunkProcessor._process

    def process(self, index, items):
        if index == 0:                       # the first chunk is read: someone appends to the file
            with open(corpus, "ab") as fh:
                fh.write(jsonl(30, start=1000))
            if restore:
                corpus.write_bytes(original)
        return real(self, index, items)
    monkeypatch.setattr(preprocess_step.ChunkProcessor, "_process", process)
    with pytest.raises(InputChangedError, match="changed while it was read"):
        run_step(store, plan_preprocess([corpus], PreprocessConfig(chunk_rows=100)))
    assert store.version_ids(include_partial=True) == []      # chunks written from it were discarded
    monkeypatch.setattr(preprocess_step.ChunkProcessor, "_process", real)
    corpus.write_bytes(original)
    manifest = run_step(store, plan_preprocess([corpus], PreprocessConfig(chunk_rows=100))).manifest
    assert manifest["num_rows"] == manifest["accounting"]["input_rows"] == 300


def test_an_input_that_changes_while_fingerprinted_is_refused(tmp_path, monkeypatch):
    from pipelines import fingerprint
    from preprocess import readers

    corpus = tmp_path / "c.txt"
    corpus.write_text("a\nb\n")
    real = fingerprint.path_sha256

    def hash_then_touch(path):
        digest = real(path)
        with open(corpus, "a") as fh:
            fh.write("c\n")
        return digest
    monkeypatch.setattr(fingerprint, "path_sha256", hash_then_touch)
    with pytest.raises(InputChangedError):
        readers.open_source(corpus)


# ---- 3: truncated compressed inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 3])
def test_a_truncated_zst_fails_instead_of_losing_rows(store, tmp_path, frames):
    data = jsonl(20_000)
    step = len(data) // frames
    blob = b"".join(zstandard.ZstdCompressor().compress(data[i * step:(i + 1) * step if i < frames - 1 else None])
                    for i in range(frames))
    whole, cut = tmp_path / "whole.jsonl.zst", tmp_path / "cut.jsonl.zst"
    whole.write_bytes(blob)
    cut.write_bytes(blob[: len(blob) // 2])
    assert run_step(store, plan_preprocess([whole], PreprocessConfig())).manifest["num_rows"] == 20_000
    with pytest.raises(DistilleryError, match="cut.jsonl.zst: cannot read .*truncated"):
        run_step(store, plan_preprocess([cut], PreprocessConfig()))


def test_a_truncated_gz_fails(store, tmp_path):
    blob = gzip.compress(jsonl(5000))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DistilleryError, match="cut.jsonl.gz: cannot read"):
        run_step(store, plan_preprocess([cut], PreprocessConfig()))


# ---- 11: special files are refused before any read ---------------------------------------------------------------
def test_special_file_inputs_are_refused_at_once(tmp_path):
    fifo = tmp_path / "input.txt"
    os.mkfifo(fifo)
    for args in ([str(fifo)], ["/dev/zero", "--format", "hf"], ["/dev/zero", "--format", "txt"], [str(fifo),
                                                                                                   "--format", "hf"]):
        result = run_cli(tmp_path / "store", "preprocess", *args, timeout=30)
        assert result.returncode == 1 and "not a file or folder" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    config = tmp_path / "config.toml"
    os.mkfifo(config)
    (tmp_path / "ok.txt").write_text("a line\n")
    result = run_cli(tmp_path / "store", "preprocess", str(tmp_path / "ok.txt"), "--config", str(config), timeout=30)
    assert result.returncode == 1 and "not a regular file" in result.stderr


def test_an_invalid_utf8_config_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_bytes(b'[input]\ntext_column = "\xff"\n')
    (tmp_path / "ok.txt").write_text("a line\n")
    result = run_cli(tmp_path / "store", "preprocess", str(tmp_path / "ok.txt"), "--config", str(config))
    assert result.returncode == 1 and str(config) in result.stderr and "UTF-8" in result.stderr


# ---- 12: memory of a chunk is bounded by bytes -------------------------------------------------------------------
def test_parts_of_a_chunk_give_the_bytes_of_a_whole_chunk(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(jsonl(2500) + b"not json\n" + jsonl(500))
    config = PreprocessConfig(input=InputConfig(label_column="label"), chunk_rows=1000)
    whole = run_step(Store(tmp_path / "a"), plan_preprocess([corpus], config)).manifest
    monkeypatch.setattr(preprocess_step, "PART_BYTES", 3000)      # ~60 rows a part: 17 parts a chunk
    parts = run_step(Store(tmp_path / "b"), plan_preprocess([corpus], config)).manifest
    assert whole["version_id"] == parts["version_id"] and whole["accounting"] == parts["accounting"]
    assert [s["sha256"] for s in whole["shards"] + whole["rejects"]] == \
           [s["sha256"] for s in parts["shards"] + parts["rejects"]]


def test_a_huge_arrow_cell_is_rejected_before_it_becomes_python(store, tmp_path):
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"text": ["short", "x" * 3000, "also short"]}), path)
    config = PreprocessConfig(input=InputConfig(max_row_bytes=1000))
    manifest = run_step(store, plan_preprocess([path], config)).manifest
    assert manifest["num_rows"] == 2 and manifest["accounting"]["rejected"] == {"row_too_long": 1}
    [reject] = pq.read_table(store.reject_paths(manifest["version_id"])[0]).to_pylist()
    assert reject["raw"] == "[row of 3000 bytes]"             # its size, never its text: it was not read as Python


# ---- also ----------------------------------------------------------------------------------------------------------
def test_a_text_file_with_only_cr_line_endings_has_one_row_per_line(store, tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes(b"first line\rsecond line\rthird line\r")
    manifest = run_step(store, plan_preprocess([path], PreprocessConfig())).manifest
    assert store.read_table(manifest["version_id"]).column("text").to_pylist() == ["first line", "second line",
                                                                                   "third line"]


def test_an_empty_csv_label_is_a_missing_label_not_a_string_class(store, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nfirst,1\nsecond,\nthird,0\nfourth, \n")
    labelled = PreprocessConfig(input=InputConfig(label_column="label"))
    manifest = run_step(store, plan_preprocess([path], labelled)).manifest
    assert manifest["accounting"]["rejected"] == {"missing_label": 2}
    assert store.read_table(manifest["version_id"]).column("label").to_pylist() == [1, 0]


def test_a_special_file_inside_a_folder_input_or_a_model_folder_is_refused(tmp_path):
    from pipelines.resources import model_reference
    from preprocess.readers import expand_folders

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("a line\n")
    os.mkfifo(folder / "b.txt")
    with pytest.raises(DistilleryError, match="b.txt is a FIFO"):
        expand_folders([folder])
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    with pytest.raises(DistilleryError, match="config.json is a FIFO"):
        model_reference(str(model))
    with pytest.raises(DistilleryError, match="is a device"):
        model_reference("/dev/zero")


def test_a_column_name_with_a_line_break_stays_on_the_errors_one_line(store, tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"\n": "x", "a\rb": 1}) + "\n")
    with pytest.raises(DistilleryError) as caught:
        run_step(store, plan_preprocess([path], PreprocessConfig()), "odd")
    message = str(caught.value)
    assert "odd.jsonl" in message and "\n" not in message and "\r" not in message and '"\\n"' in message
