"""The augmentation step end to end: determinism, resume after a kill, pairs, output forms, models, bad rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import damage_shard

from augment import AugmentConfig, plan_augment
from distillery.bundled import SAMPLE_DIR
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import Store

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample_rows(n: int) -> list[dict]:
    with open(SAMPLE_DIR / "train.jsonl") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh)]
    return [{"text": r["text"], "label": r["label"], "synset": r["synset"], "row_id": i} for i, r in enumerate(rows)]


def config(mlm_dir, vectors, **kwargs) -> AugmentConfig:
    base = dict(mlm=str(mlm_dir), vectors=str(vectors), num_aug=6, chunk_rows=16, workers=0, glove_vocab_limit=20_000)
    return AugmentConfig(**{**base, **kwargs})


def shard_hashes(manifest: dict) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


def test_output_layout_and_record(store, make_version, tiny_mlm_dir, glove_txt):
    make_version(store, sample_rows(40), name="src", chunk_rows=7)
    manifest = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt)), "aug").manifest
    table = store.read_table("aug").to_pylist()
    assert [r["row_id"] for r in table] == list(range(len(table))) and len(manifest["shards"]) == 3
    originals = [r for r in table if r["aug_copy"] == 0]
    assert [r["source_row_id"] for r in originals] == list(range(40))
    source = sample_rows(40)
    for row in table:       # labels and extra columns carried; copies follow their original
        assert row["label"] == source[row["source_row_id"]]["label"]
        assert row["synset"] == source[row["source_row_id"]]["synset"]
        assert (row["aug_field"] is None) == (row["aug_copy"] == 0)
    for src in range(40):
        copies = [r for r in table if r["source_row_id"] == src]
        assert [r["aug_copy"] for r in copies] == list(range(len(copies)))
        assert copies[0]["text"] == source[src]["text"] and len({r["text"] for r in copies}) == len(copies)
    counts = manifest["extra"]["counts"]
    assert counts["eligible_words"] == counts["mlm_words"] + counts["vector_words"] > 0
    assert counts["mlm_words"] > 0 and counts["vector_words"] > 0 and counts["replacements"] > 0
    assert counts["output_rows"] == len(table) and manifest["accounting"]["input_rows"] == 40
    # per copy, the words changed with each candidate source; originals changed none
    assert all(r["aug_mlm_words"] == r["aug_vector_words"] == 0 for r in originals)
    copies = [r for r in table if r["aug_copy"] > 0]
    assert all(r["aug_mlm_words"] + r["aug_vector_words"] >= 1 for r in copies)
    assert sum(r["aug_mlm_words"] for r in copies) == counts["mlm_replacements"] > 0
    assert sum(r["aug_mlm_words"] + r["aug_vector_words"] for r in copies) == counts["replacements"]
    assert manifest["config"]["num_aug"] == 6 and manifest["config"]["mlm_sha256"]
    assert manifest["extra"]["models"]["mlm"]["weights"] and manifest["extra"]["models"]["vectors"]["sha256"]
    assert "mlm_batch_size" not in json.dumps(manifest["extra"]["options"])
    card = (store.version_path(manifest["version_id"]) / "README.md").read_text()
    assert "eligible_words" in card and "truncated_contexts" in card


def test_byte_identical_for_any_workers_and_batch_size(tmp_path, make_version, tiny_mlm_dir, glove_txt):
    results = []
    for i, (workers, batch) in enumerate([(0, 128), (1, 1), (2, 7)]):
        store = Store(tmp_path / f"s{i}")
        make_version(store, sample_rows(48), name="src", chunk_rows=48)
        results.append(run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, workers=workers,
                                                             mlm_batch_size=batch))).manifest)
    assert len({m["version_id"] for m in results}) == 1
    assert shard_hashes(results[0]) == shard_hashes(results[1]) == shard_hashes(results[2])
    assert results[0]["extra"]["counts"] == results[2]["extra"]["counts"]


def test_resume_after_kill_is_byte_identical(tmp_path, make_version, tiny_mlm_dir, glove_txt):
    clean = Store(tmp_path / "clean")
    killed = Store(tmp_path / "killed")
    for s in (clean, killed):
        make_version(s, sample_rows(64), name="src", chunk_rows=64)
    cfg = config(tiny_mlm_dir, glove_txt, workers=1)
    expected = run_step(clean, plan_augment(clean, "src", cfg)).manifest
    script = textwrap.dedent(f"""
        import time
        from pipelines.store import Store, VersionWriter
        from augment import AugmentConfig, plan_augment
        from pipelines.runner import run_step
        original = VersionWriter.write_chunk
        def slow(self, index, *args, **kwargs):
            record = original(self, index, *args, **kwargs)
            time.sleep(30)          # the parent kills us here, after chunk 0 committed
            return record
        VersionWriter.write_chunk = slow
        store = Store({str(killed.root)!r})
        run_step(store, plan_augment(store, "src", AugmentConfig(**{cfg.__dict__!r})))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISTILLERY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    partial = killed.version_path(expected["version_id"])
    deadline = time.time() + 120
    while not (partial / "chunks" / "00000.json").exists():
        assert child.poll() is None and time.time() < deadline, "the child ended before committing chunk 0"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not killed.is_complete(expected["version_id"])
    with pytest.raises(DistilleryError, match="--resume"):
        run_step(killed, plan_augment(killed, "src", cfg))
    resumed = run_step(killed, plan_augment(killed, "src", cfg), resume=True).manifest
    assert resumed["version_id"] == expected["version_id"]
    assert shard_hashes(resumed) == shard_hashes(expected)
    assert resumed["extra"]["counts"] == expected["extra"]["counts"]


def test_sentence_pairs_each_field_in_turn(store, make_version, tiny_mlm_dir, glove_txt):
    rows = [{"text": "The quick brown fox jumps over the lazy dog.", "text_pair": "A slow green turtle sleeps.",
             "label": 1, "row_id": 0},
            {"text": "Bright stars shine tonight", "text_pair": None, "label": 0, "row_id": 1}]
    make_version(store, rows, name="pairs")
    run_step(store, plan_augment(store, "pairs", config(tiny_mlm_dir, glove_txt, num_aug=10)), "pairs-aug")
    table = store.read_table("pairs-aug").to_pylist()
    first = [r for r in table if r["source_row_id"] == 0]
    assert first[0]["aug_copy"] == 0 and first[0]["text"] == rows[0]["text"]
    fields = [r["aug_field"] for r in first[1:]]
    assert fields == sorted(fields, key=["text", "text_pair"].index) and set(fields) == {"text", "text_pair"}
    for r in first[1:]:
        other = "text_pair" if r["aug_field"] == "text" else "text"
        assert r[other] == rows[0][other] and r[r["aug_field"]] != rows[0][r["aug_field"]] and r["label"] == 1
    for field in ("text", "text_pair"):
        assert [r["aug_copy"] for r in first if r["aug_field"] == field] == list(
            range(1, 1 + fields.count(field)))
    second = [r for r in table if r["source_row_id"] == 1]
    assert {r["aug_field"] for r in second[1:]} == {"text"} and all(r["text_pair"] is None for r in second)


def test_surface_and_reference_output_forms(store, make_version, tiny_mlm_dir, glove_txt):
    text = "Gold, Silver and Copper: useful metals."
    make_version(store, [{"text": text, "label": "x", "row_id": 0}], name="one")
    surface_config = config(tiny_mlm_dir, glove_txt, num_aug=20, drop_punctuation=True, drop_unk=True)
    surface = run_step(store, plan_augment(store, "one", surface_config), "surf").manifest
    copies = [r["text"] for r in store.read_table("surf").to_pylist()[1:]]
    assert copies and surface["extra"]["counts"]["replacements"] > 0
    for copy in copies:     # only word spans change: punctuation, spacing and capitalisation stay
        assert copy.endswith(".") and ", " in copy and ": " in copy and not copy[0].islower()
    run_step(store, plan_augment(store, "one", config(tiny_mlm_dir, glove_txt, num_aug=20, output_form="reference")),
             "ref")
    copies = [r["text"] for r in store.read_table("ref").to_pylist()[1:]]
    assert copies and all(c == c.lower() and " , " in c and c.endswith(" .") for c in copies)


def test_mlm_none_uses_vectors_and_is_recorded(store, make_version, glove_txt):
    make_version(store, sample_rows(12), name="src")
    result = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "src", "--name", "none-aug",
                                      "--mlm", "none", "--vectors", str(glove_txt), "--num-aug", "3",
                                      "--glove-vocab-limit", "20000", "--workers", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "WARNING mlm: none" in result.output and "augment: written" in result.stdout
    manifest = store.manifest("none-aug")
    again = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "src", "--name", "none-aug2",
                                     "--mlm", "none", "--vectors", str(glove_txt), "--num-aug", "3",
                                     "--glove-vocab-limit", "20000", "--workers", "2"], catch_exceptions=False)
    assert again.exit_code == 0 and again.stdout.startswith("augment: up to date"), again.output
    assert store.resolve("none-aug2") == manifest["version_id"]
    counts = manifest["extra"]["counts"]
    assert manifest["extra"]["models"]["mlm"] == "none" and manifest["extra"]["warnings"]
    assert counts["mlm_words"] == 0 and counts["vector_words"] == counts["eligible_words"] > 0
    assert counts["mlm_replacements"] == 0
    assert sum(store.read_table("none-aug").column("aug_mlm_words").to_pylist()) == 0
    assert manifest["config"]["tokenizer_sha256"]


def test_offline_missing_model_gives_one_line_error(store, make_version, monkeypatch, glove_txt):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_version(store, sample_rows(4), name="src")
    with pytest.raises(DistilleryError) as info:
        run_step(store, plan_augment(store, "src", AugmentConfig(mlm="bert-base-uncased", vectors=str(glove_txt))))
    message = str(info.value)
    assert "\n" not in message and "--mlm none" in message and "--mlm PATH" in message and "offline" in message
    result = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "src", "--name", "x",
                                      "--mlm", "no-such-org/no-such-model", "--vectors", str(glove_txt)])
    assert result.exit_code != 0
    with pytest.raises(DistilleryError, match="masked LM '/nonexistent': no such folder"):
        run_step(store, plan_augment(store, "src", AugmentConfig(mlm="/nonexistent", vectors=str(glove_txt))))


def test_bad_rows_never_stop_the_run(store, make_version, tiny_mlm_dir, glove_txt):
    long_text = " ".join(f"river{i % 7} flows north" for i in range(60))
    rows = [{"text": t, "label": "x", "row_id": i} for i, t in enumerate(
        ["", None, "   ", "!!! ??? ...", "the of and", long_text, "A perfectly normal sentence about rivers."])]
    make_version(store, rows, name="bad", chunk_rows=3)
    manifest = run_step(store, plan_augment(store, "bad", config(tiny_mlm_dir, glove_txt, max_length=40, num_aug=5)),
                        "bad-aug").manifest
    table = store.read_table("bad-aug").to_pylist()
    assert [r["source_row_id"] for r in table if r["aug_copy"] == 0] == list(range(len(rows)))
    assert [r["text"] for r in table if r["aug_copy"] == 0] == [r["text"] for r in rows]
    counts = manifest["extra"]["counts"]
    assert counts["empty_texts"] == 3 and counts["truncated_contexts"] > 0
    assert any(r["source_row_id"] == 5 and r["aug_copy"] > 0 for r in table)
    assert manifest["extra"]["mlm_context"]["max_pieces"] == 40


def test_masks_per_pass_changes_the_version(store, make_version, tiny_mlm_dir, glove_txt):
    make_version(store, sample_rows(10), name="src")
    exact = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt))).manifest
    fast = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, masks_per_pass=4))).manifest
    assert exact["version_id"] != fast["version_id"]
    assert fast["extra"]["run"]["mlm"]["sequences"] < exact["extra"]["run"]["mlm"]["sequences"]


def test_cli_reads_the_augment_table_of_a_config_file(store, make_version, tiny_mlm_dir, glove_txt, tmp_path):
    make_version(store, sample_rows(6), name="src")
    toml = tmp_path / "pipeline.toml"
    toml.write_text(f'[preprocess]\nchunk_rows = 3\n\n[augment]\nmlm = "{tiny_mlm_dir}"\nnum_aug = 2\n'
                    f'vectors = "{glove_txt}"\nglove_vocab_limit = 20000\ninput_mode = "single"\n')
    result = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "src", "--name", "cli-aug",
                                      "--config", str(toml), "--num-aug", "4", "--workers", "0",
                                      "--output-form", "reference"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recorded = store.manifest("cli-aug")["config"]
    assert recorded["num_aug"] == 4 and recorded["input_mode"] == "single" and recorded["output_form"] == "reference"
    assert "cli-aug" in result.output or store.resolve("cli-aug") in result.output


def test_agreement_of_the_teacher_on_copies_per_candidate_source(store, make_version, tiny_mlm_dir, glove_txt,
                                                                  tiny_bert_factory):
    import numpy as np

    rows = sample_rows(30)
    labels = sorted({r["label"] for r in rows})
    teacher = tiny_bert_factory(layers=1, hidden=16, heads=2, num_labels=len(labels))
    from transformers import AutoConfig

    config_ = AutoConfig.from_pretrained(teacher)
    config_.id2label, config_.label2id = dict(enumerate(labels)), {v: i for i, v in enumerate(labels)}
    config_.save_pretrained(teacher)
    make_version(store, rows, name="src", chunk_rows=10)
    run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, num_aug=4)), "aug")
    result = CliRunner().invoke(cli, ["--store", str(store.root), "distill", "agreement", "aug", str(teacher),
                                      "--name", "aug-logits"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "teacher-logits: written" in result.stdout and "mlm_only" in result.stdout
    table = store.read_table("aug-logits").to_pylist()
    predicted = {i: int(np.argmax(r["teacher_logits"])) for i, r in enumerate(table)}
    original = {r["source_row_id"]: predicted[i] for i, r in enumerate(table) if r["aug_copy"] == 0}
    copies = [(r, predicted[i]) for i, r in enumerate(table) if r["aug_copy"] > 0]
    agreement = store.manifest("aug-logits")["extra"]["agreement"]
    for group, keep in (("all", lambda r: True), ("mlm_only", lambda r: r["aug_vector_words"] == 0),
                        ("vectors_only", lambda r: r["aug_mlm_words"] == 0),
                        ("mixed", lambda r: r["aug_mlm_words"] and r["aug_vector_words"])):
        chosen = [(r, p) for r, p in copies if keep(r)]
        same = sum(p == original[r["source_row_id"]] for r, p in chosen)
        assert agreement[group]["copies"] == len(chosen) and agreement[group]["same_label"] == same
    assert agreement["mlm_only"]["copies"] > 0
    assert sum(agreement[g]["copies"] for g in ("mlm_only", "vectors_only", "mixed")) == agreement["all"]["copies"]
    right = [predicted[i] == labels.index(r["label"]) for i, r in enumerate(table) if r["aug_copy"] == 0]
    assert agreement["teacher_accuracy"]["originals"] == pytest.approx(sum(right) / len(right))
    not_augmented = CliRunner().invoke(cli, ["--store", str(store.root), "distill", "agreement", "src", str(teacher)])
    assert not_augmented.exit_code == 1 and "not an augmented version" in str(not_augmented.exception)


def test_version_ids_do_not_depend_on_where_models_and_vectors_are(store, make_version, tiny_mlm_dir, glove_txt,
                                                                    tmp_path):
    """The same step on the same data gets the same id wherever the model, tokenizer and vectors are installed
    (they are identified by content, never by path)."""
    import shutil

    from augment import plan_augment

    make_version(store, sample_rows(4), name="src")
    moved_mlm, moved_vectors = tmp_path / "elsewhere" / "mlm", tmp_path / "elsewhere" / "vectors.txt"
    shutil.copytree(tiny_mlm_dir, moved_mlm)
    moved_vectors.write_bytes(glove_txt.read_bytes())
    for mlm in ("model", "none"):
        here = config(tiny_mlm_dir if mlm == "model" else "none", glove_txt, tokenizer=str(tiny_mlm_dir))
        there = config(moved_mlm if mlm == "model" else "none", moved_vectors, tokenizer=str(moved_mlm))
        assert plan_augment(store, "src", here).version_id() == plan_augment(store, "src", there).version_id()
    other = config(tiny_mlm_dir, glove_txt, num_aug=7)
    assert plan_augment(store, "src", other).version_id() != plan_augment(store, "src", config(
        tiny_mlm_dir, glove_txt)).version_id()


def test_a_damaged_shard_stops_the_augmentation(store, make_version, tiny_mlm_dir, glove_txt):
    make_version(store, sample_rows(6), name="src", chunk_rows=3)
    shard = damage_shard(store, "src", 1)
    with pytest.raises(DistilleryError, match=f"shard {shard} is damaged"):
        run_step(store, plan_augment(store, "src", AugmentConfig(mlm=str(tiny_mlm_dir), vectors=str(glove_txt))))
