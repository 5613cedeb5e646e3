"""Token-classification data in `preprocess`: CoNLL and tokens/tags readers, every reject reason, the tag schemes
(IOB1 repaired to IOB2, strict, as-is), de-duplication on the token sequence, exact resume, the data card."""
from __future__ import annotations

import errno
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillery.cli.main import cli
from pipelines.errors import DistilleryError, InputChangedError
from pipelines.runner import run_step
from pipelines.store import ParquetSink, Store
from preprocess import CleanConfig, DedupConfig, FilterConfig, InputConfig, PreprocessConfig, plan_preprocess
from preprocess import step as preprocess_step
from preprocess.readers import BAD, ROW, detect_format, iter_records, open_source
from preprocess.tagging import TaggedRows
from preprocess.text_clean import Cleaner

CONLL = (b"-DOCSTART- -X- -X- O\r\n\r\n"
         b"EU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\nGerman   JJ B-NP B-MISC \r\n\r\n\r\n"
         b"Peter\tNNP\tB-NP\tB-PER\nBlackburn\tNNP\tI-NP\tI-PER\n\n"
         b"-DOCSTART- -X- -X- O\n"
         b"lonely\n"
         b"\n\nBRUSSELS NNP B-NP B-LOC\n1996-08-22 CD I-NP O")          # no blank line at the end


def run(store: Store, paths: list, name: str | None = None, **sections) -> dict:
    return run_step(store, plan_preprocess(paths, PreprocessConfig(**sections)), name).manifest


def rejects(store: Store, manifest: dict) -> list[dict]:
    return [row for entry in manifest["rejects"]
            for row in pq.read_table(store.version_path(manifest["version_id"]) / entry["path"]).to_pylist()]


def write_jsonl(path, rows: list) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def check_accounting(acc: dict) -> None:
    assert acc["input_rows"] == acc["kept"] + sum(acc["dropped"].values()) + sum(acc["rejected"].values()), acc


# ---- readers -------------------------------------------------------------------------------------------------
def test_conll_sentences_docstart_blank_lines_tabs_spaces_crlf_and_last_line(tmp_path):
    path = tmp_path / "eng.conll"
    path.write_bytes(CONLL)
    records = list(iter_records(open_source(path), max_row_bytes=1000))
    assert [(origin, kind) for origin, kind, _ in records] == [(3, ROW), (8, ROW), (12, BAD), (15, ROW)]
    assert records[0][2] == {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]}
    assert records[1][2] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}
    assert records[2][2] == ("tag_count_mismatch", "lonely")          # a line without its tag column
    assert records[3][2] == {"tokens": ["BRUSSELS", "1996-08-22"], "tags": ["B-LOC", "O"]}
    pos = [payload["tags"] for _, kind, payload in iter_records(open_source(path), max_row_bytes=1000, tag_column=1)
           if kind == ROW]
    assert pos[0] == ["NNP", "VBZ", "JJ"]
    chunks = [payload["tags"] for _, kind, payload in iter_records(open_source(path), max_row_bytes=1000,
                                                                     token_column=-4, tag_column=-2) if kind == ROW]
    assert chunks[1] == ["B-NP", "I-NP"]


def test_conll_extensions_and_compression(store, tmp_path):
    assert {detect_format(f"x{ext}") for ext in (".conll", ".bio", ".iob", ".conll.gz", ".iob.zst")} == {"conll"}
    plain, packed = tmp_path / "a.conll", tmp_path / "a.bio.zst"
    plain.write_bytes(CONLL)
    packed.write_bytes(zstandard.ZstdCompressor().compress(CONLL))
    (tmp_path / "a.iob.gz").write_bytes(gzip.compress(CONLL))
    tables = [store.read_table(run(store, [path])["version_id"]).to_pylist()
              for path in (plain, packed, tmp_path / "a.iob.gz")]
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) == 3
    assert tables[0][0] == {"text": "EU rejects German", "tokens": ["EU", "rejects", "German"],
                            "tags": ["B-ORG", "O", "B-MISC"], "row_id": 0}
    cut = tmp_path / "cut.conll.gz"
    cut.write_bytes(gzip.compress(CONLL * 200)[:300])
    with pytest.raises(DistilleryError, match="cut.conll.gz: cannot read"):
        run(store, [cut])


def test_a_conll_file_that_changes_while_read_is_refused(store, tmp_path, monkeypatch):
    path = tmp_path / "a.conll"
    path.write_bytes(CONLL)
    plan = plan_preprocess([path], PreprocessConfig())
    real = preprocess_step.ChunkProcessor._process_tagged

    def process(self, index, items):
        with open(path, "ab") as fh:
            fh.write(b"\n\nmore O\n")
        return real(self, index, items)
    monkeypatch.setattr(preprocess_step.ChunkProcessor, "_process_tagged", process)
    with pytest.raises(InputChangedError, match="changed while it was read"):
        run_step(store, plan)
    assert store.version_ids(include_partial=True) == []


def test_jsonl_and_parquet_rows_with_token_and_tag_lists(store, tmp_path):
    rows = [{"words": ["Ada", "Lovelace", "wrote"], "labels": ["B-PER", "I-PER", "O"], "text": "raw", "n": 1},
            {"words": ["in", "London"], "labels": ["O", "B-LOC"], "text": "raw 2", "n": 2}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for path in (tmp_path / "a.jsonl", tmp_path / "a.parquet"):
        manifest = run(store, [path], input=InputConfig(tokens_column="words", tags_column="labels"))
        table = store.read_table(manifest["version_id"])
        assert table.column_names == ["text", "tokens", "tags", "src_text", "n", "row_id"]
        assert table.column("text").to_pylist() == ["Ada Lovelace wrote", "in London"]
        assert table.column("tags").to_pylist() == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
        assert {f["name"]: f["type"] for f in manifest["schema"]}["tokens"] == "list<item: string>"
        assert "label" not in table.column_names


def test_integer_tags_of_a_hugging_face_class_label_column_are_read_as_their_names(store, tmp_path):
    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    rows = {"tokens": [["Ada", "Lovelace", "wrote"], ["x"]], "ner_tags": [[1, 2, 0], [-1]]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "a.parquet"))
    for path in (tmp_path / "saved", tmp_path / "a.parquet"):
        manifest = run(store, [path], input=InputConfig(tags_column="ner_tags"))
        assert store.read_table(manifest["version_id"]).column("tags").to_pylist() == [["B-PER", "I-PER", "O"]]
        assert manifest["accounting"]["rejected"] == {"wrong_type_tags": 1}        # -1: no class


# ---- rejects and tag schemes ---------------------------------------------------------------------------------
def test_every_reject_reason_is_counted_and_kept_with_its_raw_row(store, tmp_path):
    cases = [({"tokens": ["good", "row"], "tags": ["O", "O"]}, "kept"),
             ({"tags": ["O"]}, "missing_tokens"),
             ({"tokens": ["a"], "tags": "O"}, "wrong_type_tags"),
             ({"tokens": [], "tags": []}, "empty_sentence"),
             ({"tokens": ["a", "b"], "tags": ["O"]}, "tag_count_mismatch"),
             ({"tokens": ["a", "\u200b\u0007", "b"], "tags": ["O", "B-X", "O"]}, "empty_token"),
             ({"tokens": ["a", " "], "tags": ["O", "O"]}, "empty_token"),
             ({"tokens": ["a"], "tags": ["PER"]}, "tag_outside_scheme"),
             ({"tokens": ["a"], "tags": ["B-"]}, "tag_outside_scheme"),
             ({"tokens": ["a"], "tags": [" "]}, "tag_outside_scheme"),
             ({"tokens": ["x" * 300], "tags": ["O"]}, "row_too_long"),
             ("not json", "malformed_json"),
             ({"tokens": ["good", "row"], "tags": ["O", "B-X"]}, "exact_dup")]
    write_jsonl(tmp_path / "a.jsonl", [row for row, _ in cases])
    manifest = run(store, [tmp_path / "a.jsonl"], input=InputConfig(tags_column="tags", max_row_bytes=200))
    acc = manifest["accounting"]
    expected: dict[str, int] = {}
    for _, outcome in cases[1:-1]:
        expected[outcome] = expected.get(outcome, 0) + 1
    assert acc["rejected"] == expected and acc["dropped"] == {"exact_dup": 1} and acc["kept"] == 1
    check_accounting(acc)
    kept = rejects(store, manifest)
    assert [r["reason"] for r in kept] == [outcome for _, outcome in cases[1:-1]]
    assert [r["origin_row"] for r in kept] == list(range(2, 2 + len(cases) - 2))
    assert json.loads(kept[3]["raw"]) == cases[4][0]


def test_conll_rejects_and_reject_mode_for_undecodable_bytes(store, tmp_path):
    path = tmp_path / "a.conll"
    path.write_bytes(b"ok O\n\nCaf\xe9 B-LOC\n\nalone\n\ngood I-ORG\n")
    manifest = run(store, [path], input=InputConfig(decode_errors="reject"))
    assert manifest["accounting"]["rejected"] == {"invalid_utf8": 1, "tag_count_mismatch": 1}
    assert [(r["origin_row"], r["reason"]) for r in rejects(store, manifest)] == [(3, "invalid_utf8"),
                                                                                   (5, "tag_count_mismatch")]
    repaired = run(store, [path])
    assert repaired["accounting"]["repaired"] == {"invalid_utf8": 1, "tag_iob2_repairs": 1}
    assert store.read_table(repaired["version_id"]).column("tokens").to_pylist()[1] == ["Caf\ufffd"]


IOB1 = b"Peter I-PER\nBlackburn I-PER\nmet O\nMary I-PER\nand O\nIBM I-ORG\nBank B-ORG\nstaff O\n\nplain O\n"


def test_iob1_is_repaired_to_iob2_or_rejected_in_strict_mode_or_kept_as_is(store, tmp_path):
    path = tmp_path / "iob1.conll"
    path.write_bytes(IOB1)
    repaired = run(store, [path])
    assert store.read_table(repaired["version_id"]).column("tags").to_pylist()[0] == \
        ["B-PER", "I-PER", "O", "B-PER", "O", "B-ORG", "B-ORG", "O"]
    assert repaired["accounting"]["repaired"] == {"tag_iob2_repairs": 3}
    assert repaired["stats"]["entity_counts"] == {"ORG": 2, "PER": 2}
    strict = run(store, [path], input=InputConfig(tag_scheme="strict-iob2"))
    assert strict["accounting"]["rejected"] == {"tag_invalid_sequence": 1} and strict["num_rows"] == 1
    as_is = run(store, [path], input=InputConfig(tag_scheme="as-is"))
    assert store.read_table(as_is["version_id"]).column("tags").to_pylist()[0][:2] == ["I-PER", "I-PER"]
    assert as_is["stats"]["entity_counts"] == {"ORG": 2, "PER": 2}     # read as seqeval reads IOB1
    pos = tmp_path / "pos.conll"
    pos.write_bytes(b"The DT\ncat NN\nsat VBD\n")
    assert run(store, [pos], input=InputConfig(tag_scheme="as-is"))["stats"]["tag_counts"] == \
        {"DT": 1, "NN": 1, "VBD": 1}
    assert run(store, [pos])["accounting"]["rejected"] == {"tag_outside_scheme": 1}    # POS tags are not IOB2


def test_what_does_not_apply_to_tagging_data_is_refused_in_one_line(store, tmp_path):
    path = tmp_path / "a.conll"
    path.write_bytes(CONLL)
    (tmp_path / "b.txt").write_text("plain text\n")
    refusals = [(PreprocessConfig(clean=CleanConfig(split_sentences_over=10)), [path], "split_sentences_over"),
                (PreprocessConfig(input=InputConfig(label_column="label")), [path], "label_column"),
                (PreprocessConfig(input=InputConfig(text_column="sentence")), [path], "text_column"),
                (PreprocessConfig(input=InputConfig(tags_column="tags")), [tmp_path / "b.txt"], "b.txt is txt")]
    for config, paths, words in refusals:
        with pytest.raises(DistilleryError, match=words) as info:
            plan_preprocess(paths, config)
        assert "\n" not in str(info.value)
    with pytest.raises(DistilleryError, match="tag_column"):
        InputConfig(token_column=1, tag_column=1)


# ---- de-duplication, filters, resume -------------------------------------------------------------------------
def test_dedup_reads_the_token_sequence_not_the_joined_text(store, tmp_path):
    rows = [{"tokens": ["New York", "rocks"], "tags": ["B-LOC", "O"]},
            {"tokens": ["New", "York", "rocks"], "tags": ["B-LOC", "I-LOC", "O"]},     # same text, other tokens
            {"tokens": ["New", " York ", "rocks"], "tags": ["B-LOC", "I-LOC", "O"]},   # same tokens once cleaned
            {"tokens": ["New", "York", "rocks"], "tags": ["B-ORG", "I-ORG", "O"]},     # same tokens, other tags
            {"tokens": ["one", "two", "three", "four"], "tags": ["O"] * 4},
            {"tokens": ["x"], "tags": ["O"]}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(store, [tmp_path / "a.jsonl"], input=InputConfig(tags_column="tags"),
                   filter=FilterConfig(min_chars=2, max_tokens=3))
    table = store.read_table(manifest["version_id"])
    assert table.column("tokens").to_pylist() == [["New York", "rocks"], ["New", "York", "rocks"]]
    assert table.column("text").to_pylist() == ["New York rocks"] * 2
    assert manifest["accounting"]["dropped"] == {"exact_dup": 2, "min_chars": 1, "max_tokens": 1}
    near = run(store, [tmp_path / "a.jsonl"], input=InputConfig(tags_column="tags"), dedup=DedupConfig(near=True))
    assert near["accounting"]["dropped"] == {"exact_dup": 2, "near_dup": 1}    # MinHash reads the joined text


def tagged_corpus(path, rows: int) -> None:
    write_jsonl(path, [{"tokens": [f"w{i % 7}", "in", f"City{i % 11}"], "tags": ["O", "O", "I-LOC"]}
                       for i in range(rows)])


def test_a_rerun_is_up_to_date_and_a_changed_tag_scheme_is_a_new_version(store, tmp_path):
    path = tmp_path / "a.jsonl"
    tagged_corpus(path, 40)
    config = {"input": InputConfig(tags_column="tags"), "chunk_rows": 16}
    first = run(store, [path], **config)
    again = run_step(store, plan_preprocess([path], PreprocessConfig(**config, workers=2)))
    assert again.up_to_date and again.manifest == first
    strict = run(store, [path], input=InputConfig(tags_column="tags", tag_scheme="strict-iob2"), chunk_rows=16)
    assert strict["version_id"] != first["version_id"] and strict["num_rows"] == 0
    assert first["num_rows"] == 40 - first["accounting"]["dropped"]["exact_dup"] > 0
    conll = tmp_path / "a.conll"
    conll.write_bytes(CONLL)
    args = ["--store", str(store.root), "preprocess", str(conll), "--token-column", "0", "--tag-column", "-2",
            "--tag-scheme", "as-is", "--name", "chunks"]
    outputs = [CliRunner().invoke(cli, args, catch_exceptions=False).output for _ in range(2)]
    assert "up to date" not in outputs[0] and outputs[1].startswith("preprocess: up to date")
    assert store.read_table("chunks").column("tags").to_pylist()[1] == ["B-NP", "I-NP"]
    other_column = run(store, [conll], input=InputConfig(tag_column=-2, tag_scheme="as-is"))
    assert other_column["version_id"] == store.resolve("chunks")


def test_a_failed_write_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    tagged_corpus(path, 200)
    config = PreprocessConfig(input=InputConfig(tags_column="tags"), chunk_rows=30)
    real_commit, calls = ParquetSink.commit, []

    def failing_commit(sink):
        calls.append(sink.path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(sink.path))
        return real_commit(sink)
    monkeypatch.setattr(ParquetSink, "commit", failing_commit)
    store = Store(tmp_path / "store")
    with pytest.raises(OSError):
        run_step(store, plan_preprocess([path], config))
    monkeypatch.setattr(ParquetSink, "commit", real_commit)
    resumed = run_step(store, plan_preprocess([path], config), resume=True).manifest
    clean_store = Store(tmp_path / "clean")
    clean = run_step(clean_store, plan_preprocess([path], config)).manifest
    assert resumed["shards"] == clean["shards"] and resumed["accounting"] == clean["accounting"]
    assert resumed["accounting"]["dropped"]["exact_dup"] > 100 and resumed["stats"] == clean["stats"]


# ---- statistics and the data card ----------------------------------------------------------------------------
def test_the_card_shows_tag_counts_entities_per_type_sentence_lengths_and_the_rule(store, tmp_path):
    path = tmp_path / "a.conll"
    path.write_bytes(CONLL + b"\n\nthen O\nParis I-LOC\nand O\nRome I-LOC\n")
    manifest = run(store, [path])
    stats = manifest["stats"]
    assert stats["tag_counts"] == {"O": 4, "B-LOC": 3, "B-MISC": 1, "B-ORG": 1, "B-PER": 1, "I-PER": 1}
    assert stats["entity_counts"] == {"LOC": 3, "MISC": 1, "ORG": 1, "PER": 1}
    assert {k: stats["sentence_length"][k] for k in ("min", "median", "max", "mean")} == \
        {"min": 2, "median": 2, "max": 4, "mean": 2.75}
    card = (store.version_path(manifest["version_id"]) / "README.md").read_text()
    assert "token-classification" in card and "| B-LOC | 3 |" in card and "| LOC | 3 |" in card
    assert "**sentence_length** (tokens per sentence): min 2, median 2, mean 2.75" in card
    assert "**tag scheme** `iob2`" in card and "| repaired: tag_iob2_repairs | 2 |" in card


# ---- property: tags never shift against tokens ---------------------------------------------------------------
TOKEN = st.text(st.sampled_from("ab \u200b\u00a0\tX\u0007é"), max_size=4)
TAG = st.sampled_from(["O", "B-PER", "I-PER", "I-LOC", "B-", "X", " O "])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(TOKEN, max_size=5), st.lists(TAG, max_size=5)), max_size=6),
       st.sampled_from(["iob2", "strict-iob2", "as-is"]))
def test_tags_never_shift_against_tokens(rows, scheme):
    reader = TaggedRows(Cleaner(), scheme, max_row_bytes=1000)
    for tokens, tags in rows:
        try:
            clean_tokens, clean_tags = reader.read({"tokens": tokens, "tags": tags}, "tokens", "tags", {})
        except preprocess_step.RowReject:
            continue
        assert len(clean_tokens) == len(clean_tags) == len(tokens) == len(tags)
        assert clean_tokens == [" ".join(t.replace("\u200b", "").replace("\u0007", "").split()) for t in tokens]
        assert all(new == old.strip() or new == "B-" + old.strip()[2:] for new, old in zip(clean_tags, tags))
