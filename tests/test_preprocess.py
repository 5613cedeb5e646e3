"""Preprocessing: bad input, accounting, cleaning, filters, de-duplication, determinism, resume, immutability."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from distillery.bundled import SAMPLE_DIR
from distillery.cli.main import cli
from pipelines.config import load_config
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import ParquetSink, Store
from preprocess import CleanConfig, DedupConfig, FilterConfig, InputConfig, PreprocessConfig, plan_preprocess

REPO = Path(__file__).resolve().parent.parent


def jline(obj) -> bytes:
    return json.dumps(obj).encode()


# (line bytes, what must become of it)
NASTY = [
    (jline({"text": "Good row one.", "label": "a", "meta": 1}), "kept"),
    (b'{"text": "Caf\xe9 bad byte", "label": "a"}', "kept"),                 # invalid UTF-8 -> U+FFFD
    (b'{"text": "broken json", "label": ', "malformed_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (jline({"label": "a"}), "missing_text"),
    (jline({"text": 42, "label": "a"}), "wrong_type_text"),
    (jline({"text": "nul\u0000 inside\u0007", "label": "b"}), "kept"),     # control chars deleted
    (b'{"text": "raw\x00nul", "label": "b"}', "malformed_json"),           # raw NUL inside JSON string
    (jline({"text": " \t\u00a0 \n", "label": "a"}), "empty_text"),
    (jline({"text": "", "label": "a"}), "empty_text"),
    (b'{"text": "' + b"x" * 10_000_000 + b'", "label": "a"}', "row_too_long"),
    (b"   ", "blank_line"),
    (jline({"text": "no label here"}), "missing_label"),
    (jline({"text": "bad label", "label": 5}), "wrong_type_label"),
    (jline({"text": "Good   row one.", "label": "a"}), "exact_dup"),         # same after whitespace clean-up
    (b'{"text": "lone \\ud800 surrogate", "label": "c"}', "kept"),          # -> U+FFFD
    (jline({"text": "Good row two.", "label": "b", "unexpected": True}), "kept"),
    (jline({"text": "typed meta", "label": "b", "meta": "not an int"}), "kept"),
    (jline({"text": "x", "label": "a"}), "min_chars"),
    (jline({"text": "one two three four five six seven", "label": "a"}), "max_tokens"),
]


def nasty_config(**kwargs) -> PreprocessConfig:
    return PreprocessConfig(input=InputConfig(label_column="label", schema_sample_rows=3),
                            filter=FilterConfig(min_chars=2, max_tokens=6),
                            chunk_rows=5, **kwargs)


@pytest.fixture
def nasty(tmp_path) -> Path:
    path = tmp_path / "nasty.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in NASTY) + b"\n")
    return path


def check_accounting(acc):
    total = acc["kept"] + sum(acc["dropped"].values()) + sum(acc["rejected"].values())
    assert acc["input_rows"] == total, acc


def test_nasty_input_is_repaired_or_rejected_and_accounted(store, nasty):
    manifest = run_step(store, plan_preprocess([nasty], nasty_config())).manifest
    vid = manifest["version_id"]
    records = [json.loads(p.read_text()) for p in sorted((store.version_path(vid) / "chunks").glob("*.json"))]
    assert len(records) == 4
    for record in records:
        check_accounting(record["accounting"])
    acc = manifest["accounting"]
    check_accounting(acc)
    expected: dict[str, int] = {}
    for _, fate in NASTY:
        expected[fate] = expected.get(fate, 0) + 1
    assert acc["input_rows"] == len(NASTY)
    assert acc["kept"] == expected.pop("kept")
    assert acc["dropped"] == {k: expected.pop(k) for k in ("min_chars", "max_tokens", "exact_dup")}
    assert acc["rejected"] == expected
    assert acc["repaired"] == {"invalid_utf8": 2, "control_chars": 1, "extra_key_dropped": 1,
                               "extra_value_nulled": 1}

    table = store.read_table(vid)
    assert table.column("text").to_pylist() == ["Good row one.", "Caf\ufffd bad byte", "nul inside",
                                                "lone \ufffd surrogate", "Good row two.", "typed meta"]
    assert table.column("meta").to_pylist() == [1, None, None, None, None, None]
    assert table.column("row_id").to_pylist() == list(range(6))
    assert [f["type"] for f in manifest["schema"]] == ["string", "string", "int64", "int64"]

    rejects = pa.concat_tables(pq.read_table(p) for p in store.reject_paths(vid)).to_pylist()
    fates = [(i + 1, fate) for i, (_, fate) in enumerate(NASTY)]
    assert [(r["origin_row"], r["reason"]) for r in rejects] == [
        (row, fate) for row, fate in fates if fate not in ("kept", "min_chars", "max_tokens", "exact_dup")]
    assert all(r["origin_file"] == str(nasty) for r in rejects)
    too_long = next(r for r in rejects if r["reason"] == "row_too_long")
    assert too_long["raw"].startswith('{"text": "xxx') and len(too_long["raw"]) <= 1000
    assert next(r for r in rejects if r["reason"] == "malformed_json")["raw"] == '{"text": "broken json", "label": '


def test_csv_bad_rows_and_reject_mode(store, tmp_path):
    path = tmp_path / "bad.csv"
    runaway = '"' + "z" * 100 + "\n" + ("w" * 1000 + "\n") * 200     # unterminated quote eating 200 kB
    path.write_bytes(b"text,label\nok row,1\ntoo,many,fields\ncaf\xe9,0\n" + runaway.encode() + b"after,1\n")
    config = PreprocessConfig(input=InputConfig(label_column="label", decode_errors="reject", max_row_bytes=50_000))
    manifest = run_step(store, plan_preprocess([path], config)).manifest
    acc = manifest["accounting"]
    check_accounting(acc)
    assert acc["rejected"]["invalid_utf8"] == 1 and acc["rejected"]["malformed_csv"] == 1
    assert acc["rejected"]["wrong_field_count"] >= 2            # after the runaway field, lines resync
    texts = store.read_table(manifest["version_id"]).column("text").to_pylist()
    assert texts[0] == "ok row" and texts[-1] == "after"


def test_labels_keep_their_type(store, tmp_path):
    for name, labels, arrow_type, expected in [("int", [0, 1], "int64", [0, 1]),
                                               ("float", [0.5, 2], "double", [0.5, 2.0]),
                                               ("str", ["pos", "neg"], "string", ["pos", "neg"])]:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"row {i}", "label": v}) + "\n" for i, v in enumerate(labels)))
        labelled = PreprocessConfig(input=InputConfig(label_column="label"))
        manifest = run_step(store, plan_preprocess([path], labelled)).manifest
        assert {f["name"]: f["type"] for f in manifest["schema"]}["label"] == arrow_type
        assert store.read_table(manifest["version_id"]).column("label").to_pylist() == expected


def test_schema_is_stable_across_chunks(store, tmp_path):
    """A chunk whose rows are all rejected, or lack an extra column, still has the same schema."""
    rows = [json.dumps({"text": f"first {i}", "meta": i, "tags": ["a"]}) for i in range(3)]
    rows += ["{broken"] * 3 + [json.dumps({"text": f"late {i}"}) for i in range(3)]
    path = tmp_path / "drift.jsonl"
    path.write_text("\n".join(rows) + "\n")
    manifest = run_step(store, plan_preprocess([path], PreprocessConfig(chunk_rows=3))).manifest
    assert [s["rows"] for s in manifest["shards"]] == [3, 0, 3]
    assert [f["type"] for f in manifest["schema"]] == ["string", "int64", "string", "int64"]
    table = store.read_table(manifest["version_id"])
    assert table.column("tags").to_pylist()[:1] == ['["a"]'] and table.column("meta").to_pylist()[3:] == [None] * 3


def test_cleaning_options_and_sentence_split(store, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("ﬁne  Ｆｕｌｌwidth\nFirst sentence here. Second one! Third?\n")
    config = PreprocessConfig(clean=CleanConfig(normalize="nfkc", lowercase=True, split_sentences_over=20))
    manifest = run_step(store, plan_preprocess([path], config)).manifest
    assert store.read_table(manifest["version_id"]).column("text").to_pylist() == [
        "fine fullwidth", "first sentence here.", "second one!", "third?"]
    acc = manifest["accounting"]
    assert acc["split"] == {"documents": 1, "rows_added": 2}
    assert acc["input_rows"] == 2 + 2 == acc["kept"]
    raw = run_step(store, plan_preprocess([path], PreprocessConfig(clean=CleanConfig(normalize="none")))).manifest
    assert store.read_table(raw["version_id"]).column("text").to_pylist()[0] == "ﬁne Ｆｕｌｌwidth"


def test_exact_and_near_duplicates_keep_first_occurrence(store, tmp_path):
    base = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
    lines = [base, "something entirely different about distillation", base.replace("dawn", "dusk"),
             base, base.upper(), "another unrelated line of text for the corpus"]
    path = tmp_path / "d.txt"
    path.write_text("\n".join(lines) + "\n")
    config = PreprocessConfig(dedup=DedupConfig(near=True, near_threshold=0.7), chunk_rows=2)
    manifest = run_step(store, plan_preprocess([path], config)).manifest
    texts = store.read_table(manifest["version_id"]).column("text").to_pylist()
    assert texts == [lines[0], lines[1], lines[4], lines[5]]
    assert manifest["accounting"]["dropped"] == {"exact_dup": 1, "near_dup": 1}
    assert manifest["extra"]["near_dup_lsh"]["bands"] >= 2
    off = run_step(store, plan_preprocess([path], PreprocessConfig(dedup=DedupConfig(exact=False)))).manifest
    assert off["num_rows"] == len(lines)


def build_mixed_inputs(tmp_path, nasty) -> list[Path]:
    dup = tmp_path / "dups.jsonl"
    lines = (SAMPLE_DIR / "train.jsonl").read_text().splitlines()
    dup.write_text("\n".join(lines[:1500] + lines[100:400]) + "\n")
    return [SAMPLE_DIR / "train.jsonl", nasty, dup]


def test_output_identical_for_1_and_2_workers(tmp_path, nasty):
    inputs = build_mixed_inputs(tmp_path, nasty)
    manifests = []
    for workers in (1, 2):
        config = PreprocessConfig(input=InputConfig(label_column="label"), dedup=DedupConfig(near=True),
                                  chunk_rows=700, workers=workers)
        manifests.append(run_step(Store(tmp_path / f"store{workers}"), plan_preprocess(inputs, config)).manifest)
    one, two = manifests
    assert one["version_id"] == two["version_id"]
    assert len(one["shards"]) == 9 and one["rejects"]
    assert one["shards"] == two["shards"] and one["rejects"] == two["rejects"]
    assert one["accounting"] == two["accounting"]
    check_accounting(one["accounting"])
    dropped = one["accounting"]["dropped"]
    assert dropped["exact_dup"] >= 1700 and dropped["exact_dup"] + dropped["near_dup"] >= 1801


def test_a_rerun_is_up_to_date_and_moves_the_name(store, tmp_path):
    path = SAMPLE_DIR / "dev.jsonl"
    config = PreprocessConfig(input=InputConfig(label_column="label"))
    first = run_step(store, plan_preprocess([path], config), "dev").manifest
    manifest_file = store.version_path(first["version_id"]) / "manifest.json"
    stamp = manifest_file.stat().st_mtime_ns
    two_workers = PreprocessConfig(input=InputConfig(label_column="label"), workers=2)
    again = run_step(store, plan_preprocess([path], two_workers), "dev-again").manifest
    assert again == first and store.resolve("dev-again") == first["version_id"]
    cmd = [sys.executable, "-m", "distillery", "--store", str(store.root), "preprocess", str(path),
           "--label-column", "label", "--name", "dev3"]
    for _ in range(2):
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DISTILLERY_PROGRESS": "0"})
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("preprocess: up to date") and first["version_id"][:12] in result.stdout
    assert store.resolve("dev3") == first["version_id"] and manifest_file.stat().st_mtime_ns == stamp
    assert store.version_ids(include_partial=True) == [first["version_id"]]


def test_cli_config_file_flags_and_summary(store, tmp_path):
    toml = tmp_path / "pre.toml"
    toml.write_text('chunk_rows = 300\n[input]\nlabel_column = "label"\n[clean]\nlowercase = true\n'
                    '[filter]\nmin_tokens = 3\n[licence]\nlicense = "wordnet"\nnotice = "WordNet 3.0"\n')
    args = ["--store", str(store.root), "preprocess", str(SAMPLE_DIR / "dev.jsonl"), "--config", str(toml),
            "--no-lowercase", "--chunk-rows", "400", "--name", "dev", "--near-threshold", "0.9"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "rows:" in result.output and "path:" in result.output
    manifest = store.manifest("dev@latest")
    cfg = manifest["config"]
    assert cfg["chunk_rows"] == 400 and cfg["clean"]["lowercase"] is False and cfg["filter"]["min_tokens"] == 3
    assert cfg["dedup"]["near"] is True and cfg["dedup"]["near_threshold"] == 0.9
    assert manifest["extra"]["licence"] == {"license": "wordnet", "notice": "WordNet 3.0"}
    assert len(manifest["shards"]) == 3
    assert load_config(PreprocessConfig, toml).input.label_column == "label"
    with pytest.raises(DistilleryError, match="normalize"):
        PreprocessConfig(clean=CleanConfig(normalize="nfd"))


def test_loads_with_datasets_and_pandas(store):
    import datasets
    import pandas as pd

    labelled = PreprocessConfig(input=InputConfig(label_column="label"), chunk_rows=300)
    manifest = run_step(store, plan_preprocess([SAMPLE_DIR / "dev.jsonl"], labelled)).manifest
    files = [str(p) for p in store.shard_paths(manifest["version_id"])]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == manifest["num_rows"] == 1000
    assert ds[0]["row_id"] == 0 and ds[999]["row_id"] == 999
    df = pd.concat(pd.read_parquet(f) for f in files)
    assert list(df["row_id"]) == list(range(1000)) and df["label"].nunique() == 10


def make_big_corpus(path: Path, rows: int) -> None:
    words = (SAMPLE_DIR / "unlabelled.txt").read_text().split()
    with open(path, "w") as fh:
        for i in range(rows):
            start = ((i % 60_000) * 7919) % (len(words) - 12)      # rows from 60000 on repeat earlier ones
            fh.write(json.dumps({"text": " ".join(words[start:start + 12]), "label": i % 7}) + "\n")


def shard_bytes(store: Store, manifest: dict) -> list[bytes]:
    root = store.version_path(manifest["version_id"])
    return [(root / s["path"]).read_bytes() for s in manifest["shards"] + manifest["rejects"]]


def test_crash_and_resume_is_byte_identical(tmp_path):
    corpus = tmp_path / "big.jsonl"
    make_big_corpus(corpus, 150_000)
    args = [str(corpus), "--label-column", "label", "--chunk-rows", "3000", "--near"]
    env = {**os.environ, "DISTILLERY_PROGRESS": "0"}
    killed_store = tmp_path / "killed"
    cmd = [sys.executable, "-m", "distillery", "--store", str(killed_store), "preprocess", *args]
    proc = subprocess.Popen([*cmd, "--workers", "2"], env=env, cwd=REPO, start_new_session=True)
    deadline = time.time() + 120
    while not list(killed_store.glob("versions/*/chunks/*.json")) and time.time() < deadline:
        assert proc.poll() is None, "preprocess ended before its first chunk was committed"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Store(killed_store)
    [vid] = partial.version_ids(include_partial=True)
    assert not partial.is_complete(vid)
    committed = len(list((killed_store / "versions" / vid / "chunks").glob("*.json")))
    assert 1 <= committed < 50

    refused = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = subprocess.run([*cmd, "--resume"], env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    clean_store = Store(tmp_path / "clean")
    config = PreprocessConfig(input=InputConfig(label_column="label"), dedup=DedupConfig(near=True), chunk_rows=3000)
    clean = run_step(clean_store, plan_preprocess([corpus], config)).manifest
    again = partial.manifest(vid)
    assert again["version_id"] == clean["version_id"]
    assert again["shards"] == clean["shards"] and again["rejects"] == clean["rejects"]
    assert shard_bytes(partial, again) == shard_bytes(clean_store, clean)
    assert again["accounting"] == clean["accounting"] and clean["accounting"]["dropped"]["exact_dup"] > 0


def test_dedup_state_matches_a_plain_sequential_reference():
    """The vectorised decision equals the obvious loop: a row is an exact duplicate when an earlier row of its
    chunk or a kept row of an earlier chunk has its hash, a near duplicate when it shares a band key with a
    kept row; identical hashes have identical keys (same text)."""
    import numpy as np

    from preprocess.dedup import DedupState

    rng = np.random.default_rng(0)
    key_of = rng.integers(0, 20_000, (5000, 3)).astype(np.uint64)
    state = DedupState(bands=3)
    kept_hashes: set[int] = set()
    kept_keys: list[set[int]] = [set(), set(), set()]
    for _ in range(5):
        n = 400
        hashes = rng.integers(0, 5000, n).astype(np.uint64)
        keys = key_of[hashes.astype(np.int64)]
        keep, exact, near = state.decide(n, hashes, keys)
        expected, ref_exact, ref_near, in_chunk = [], 0, 0, set()
        for h, row in zip(hashes.tolist(), keys.tolist()):
            if h in kept_hashes or h in in_chunk:
                ref_exact += 1
                expected.append(False)
            elif any(k in s for k, s in zip(row, kept_keys)):
                ref_near += 1
                expected.append(False)
            else:
                kept_hashes.add(h)
                for k, s in zip(row, kept_keys):
                    s.add(k)
                expected.append(True)
            in_chunk.add(h)
        assert keep.tolist() == expected and (exact, near) == (ref_exact, ref_near)
        assert 0 < sum(expected) < n and ref_near > 0 and ref_exact > 0


def test_max_rows_reads_only_the_first_rows_over_all_inputs(store, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("".join(f"first file line {i}\n" for i in range(5)))
    second.write_text("".join(f"second file line {i}\n" for i in range(5)))
    capped = PreprocessConfig(input=InputConfig(max_rows=7), chunk_rows=3)
    manifest = run_step(store, plan_preprocess([first, second], capped)).manifest
    texts = store.read_table(manifest["version_id"]).column("text").to_pylist()
    assert texts == [f"first file line {i}" for i in range(5)] + ["second file line 0", "second file line 1"]
    assert manifest["accounting"]["input_rows"] == 7 and len(manifest["shards"]) == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_full_disk_or_a_refused_write_then_resume_gives_identical_bytes(tmp_path, monkeypatch, capsys, code):
    """The third shard write fails (as a full disk or a permission change would): one line, nothing visible,
    no temporary file left; once the cause is gone, --resume finishes with the bytes of an uninterrupted run."""
    from distillery.cli.main import main

    corpus = tmp_path / "corpus.jsonl"
    make_big_corpus(corpus, 5000)
    argv = ["distillery", "--store", str(tmp_path / "store"), "preprocess", str(corpus), "--label-column", "label",
            "--chunk-rows", "1000", "--workers", "1"]
    real_commit, calls = ParquetSink.commit, []

    def failing_commit(sink):
        calls.append(sink.path)
        if len(calls) == 3:
            raise OSError(code, os.strerror(code), str(sink.path))
        return real_commit(sink)
    monkeypatch.setattr(ParquetSink, "commit", failing_commit)
    def exit_code(args: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", args)
        try:
            main()
        except SystemExit as exc:
            return exc.code
        return 0
    assert exit_code(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err
    assert {errno.ENOSPC: "no space left on device", errno.EACCES: "permission denied"}[code] in err
    store = Store(tmp_path / "store")
    [vid] = store.version_ids(include_partial=True)
    assert not store.is_complete(vid) and not list((tmp_path / "store").rglob("*.tmp"))
    monkeypatch.setattr(ParquetSink, "commit", real_commit)
    assert exit_code([*argv, "--resume"]) == 0
    clean_store = Store(tmp_path / "clean")
    clean = run_step(clean_store, plan_preprocess([corpus], PreprocessConfig(input=InputConfig(label_column="label"),
                                                               chunk_rows=1000))).manifest
    assert store.manifest(vid)["shards"] == clean["shards"] and clean["version_id"] == vid
    assert shard_bytes(store, store.manifest(vid)) == shard_bytes(clean_store, clean)
