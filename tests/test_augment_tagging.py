"""Augmentation of token-classification versions: only O words replaced (tags and entity words never change),
mention replacement with rebuilt tags, refusals, determinism at any worker count, exact resume after an
interrupted write."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from augment import AugmentConfig, plan_augment
from augment.tagging import MentionPool, find_mentions
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import Store, VersionWriter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = [   # IOB2; entity words that the reference's test would admit (Nantucket, Norway, ...), multi-piece
    # O words (moored, fjords, windswept, shipwrecked, cobblestone) and a token that is never re-split (U.S.)
    ("Captain Ahab moored the battered ship near Nantucket harbour .", "B-PER I-PER O O O O O B-LOC O O"),
    ("Sailors from Norway explored volcanic fjords and windswept islands .", "O O B-LOC O O O O O O O"),
    ("The Royal Navy sent shipwrecked sailors home to Portsmouth", "O B-ORG I-ORG O O O O O B-LOC"),
    ("Jean Claude Van painted cobblestone streets in Paris every spring", "B-PER I-PER I-PER O O O O B-LOC O O"),
    ("Alice watched glaciers calve beside the lighthouse", "B-PER O O O O O O"),
    ("U.S. officials praised the spectacular archipelago of Hawaii", "B-LOC O O O O O O B-LOC"),
    ("Bob Stone left the Acme Corporation offices early", "B-PER I-PER O O B-ORG I-ORG O O"),
]


def tagged_rows(extra_bad: bool = False) -> list[dict]:
    rows = [{"tokens": text.split(), "tags": tags.split()} for text, tags in SENTENCES]
    if extra_bad:       # no tokens, and tags that do not match the tokens: carried, never augmented
        rows += [{"tokens": [], "tags": []}, {"tokens": ["lonely", "words"], "tags": ["O"]}]
    return [{**r, "text": " ".join(r["tokens"]), "source": "test", "row_id": i} for i, r in enumerate(rows)]


def config(mlm_dir, vectors, **kwargs) -> AugmentConfig:
    base = dict(mlm=str(mlm_dir), vectors=str(vectors), num_aug=8, chunk_rows=4, workers=0, glove_vocab_limit=20_000)
    return AugmentConfig(**{**base, **kwargs})


def by_source(table: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {}
    for row in table:
        groups.setdefault(row["source_row_id"], []).append(row)
    return groups


def test_mentions_are_read_as_conlleval_does_and_drawn_among_others():
    spans = [(m.start, m.end, m.kind) for m in find_mentions("O I-PER I-PER B-PER I-LOC B-LOC O E-X B-ORG".split())]
    assert spans == [(1, 3, "PER"), (3, 4, "PER"), (4, 5, "LOC"), (5, 6, "LOC"), (8, 9, "ORG")]
    pool = MentionPool.collect([(["Bob", "met", "Ann", "Lee"], ["B-PER", "O", "B-PER", "I-PER"]),
                                (["Bob", "in", "Rome"], ["B-PER", "O", "B-LOC"]), (None, ["O"]), (["x"], [])])
    assert pool.by_kind == {"LOC": [("Rome",)], "PER": [("Ann", "Lee"), ("Bob",)]} and pool.summary()["PER"] == 2
    assert {pool.other("PER", ("Bob",), u) for u in (0.0, 0.5, 0.99)} == {("Ann", "Lee")}
    assert pool.other("LOC", ("Rome",), 0.3) is None and pool.other("MISC", ("x",), 0.3) is None


def test_o_only_never_changes_a_tag_or_an_entity_word(store, make_version, tiny_mlm_dir, glove_txt):
    rows = tagged_rows(extra_bad=True)
    make_version(store, rows, name="ner", chunk_rows=4)
    manifest = run_step(store, plan_augment(store, "ner", config(tiny_mlm_dir, glove_txt)), "ner-aug").manifest
    table = store.read_table("ner-aug").to_pylist()
    groups = by_source(table)
    assert sorted(groups) == list(range(len(rows))) and [r["row_id"] for r in table] == list(range(len(table)))
    changed_o_words = 0
    for src, copies in groups.items():
        original = rows[src]
        assert copies[0]["aug_copy"] == 0 and copies[0]["aug_field"] is None
        assert (copies[0]["tokens"], copies[0]["tags"], copies[0]["text"]) == (original["tokens"], original["tags"],
                                                                              original["text"])
        for copy in copies[1:]:
            assert copy["tags"] == original["tags"] and len(copy["tokens"]) == len(copy["tags"])
            assert copy["text"] == " ".join(copy["tokens"]) and copy["source"] == "test"
            assert copy["aug_field"] == "tokens" and copy["aug_mentions"] == 0
            assert copy["aug_word_source"] == list(range(len(copy["tokens"])))
            for word, new, tag in zip(original["tokens"], copy["tokens"], original["tags"]):
                assert new == word or tag == "O"
            changed = sum(new != word for word, new in zip(original["tokens"], copy["tokens"]))
            assert changed == copy["aug_mlm_words"] + copy["aug_vector_words"] >= 1
            changed_o_words += changed
    counts = manifest["extra"]["counts"]
    assert changed_o_words == counts["replacements"] > 0 and counts["mentions"] == 12
    assert counts["mlm_words"] > 0 and counts["vector_words"] > 0    # one-piece and multi-piece O words
    assert counts["entity_words"] == sum(t != "O" for r in rows[:len(SENTENCES)] for t in r["tags"])
    assert counts["empty_texts"] == 1 and counts["misaligned_rows"] == 1 and len(groups[8]) == 1
    assert counts["output_rows"] == len(table) and counts["mentions_replaced"] == 0
    assert manifest["config"]["tagging"] is True and manifest["config"]["fields"] == ["tokens"]
    assert manifest["extra"]["tagging"]["mention_pool"] is None


def test_mention_replacement_rebuilds_the_tags(store, make_version, tiny_mlm_dir, glove_txt):
    rows = tagged_rows()
    make_version(store, rows, name="ner", chunk_rows=4)
    cfg = config(tiny_mlm_dir, glove_txt, num_aug=12, mention_replace_prob=0.7)
    manifest = run_step(store, plan_augment(store, "ner", cfg), "ner-mr").manifest
    pool = MentionPool.collect((r["tokens"], r["tags"]) for r in rows)
    assert manifest["extra"]["tagging"]["mention_pool"] == {"mentions": 12, "by_type": pool.summary()}
    groups = by_source(store.read_table("ner-mr").to_pylist())
    swapped = mixed = 0
    for src, copies in groups.items():
        original = rows[src]
        kinds = sorted(m.kind for m in find_mentions(original["tags"]))
        for copy in copies[1:]:
            mentions = find_mentions(copy["tags"])
            assert len(copy["tokens"]) == len(copy["tags"]) == len(copy["aug_word_source"])
            assert sorted(m.kind for m in mentions) == kinds              # types never mixed, none lost
            for m in mentions:                                           # IOB2, and each a mention of its type
                assert copy["tags"][m.start:m.end] == [f"B-{m.kind}"] + [f"I-{m.kind}"] * (m.end - m.start - 1)
                assert tuple(copy["tokens"][m.start:m.end]) in pool.by_kind[m.kind]
            for word, tag, source in zip(copy["tokens"], copy["tags"], copy["aug_word_source"]):
                if source >= 0:                    # a word of the original: its tag, and its word unless O
                    assert tag == original["tags"][source]
                    assert word == original["tokens"][source] or tag == "O"
            assert copy["aug_mentions"] == sum(1 for m in mentions if copy["aug_word_source"][m.start] < 0)
            swapped += copy["aug_mentions"]
            mixed += copy["aug_mentions"] > 0 and copy["aug_mlm_words"] + copy["aug_vector_words"] > 0
    assert swapped == manifest["extra"]["counts"]["mentions_replaced"] > 0 and mixed > 0
    alice = [c for c in groups[4] if c["tokens"][:3] == ["Jean", "Claude", "Van"]]   # 1 word -> 3 words
    assert alice and all(c["tags"][:3] == ["B-PER", "I-PER", "I-PER"] and c["tags"][3:] == rows[4]["tags"][1:]
                         for c in alice)


def test_options_that_make_no_sense_for_tagging_are_refused(store, make_version, tiny_mlm_dir, glove_txt):
    make_version(store, tagged_rows(), name="ner")
    make_version(store, [{"text": "plain words here", "label": "x", "row_id": 0}], name="plain", chunk_rows=1)
    make_version(store, [{**tagged_rows()[0], "text_pair": "a second text"}], name="pairs", chunk_rows=3)
    for ref, kwargs, message in (("ner", {"fields": ("text",)}, "fields does not apply"),
                                 ("ner", {"output_form": "reference"}, "output_form = reference does not apply"),
                                 ("pairs", {}, "a text_pair column does not apply")):
        with pytest.raises(DistilleryError, match=message) as info:
            plan_augment(store, ref, config(tiny_mlm_dir, glove_txt, **kwargs))
        assert "\n" not in str(info.value)
    result = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "plain", "--mlm", "none", "--vectors",
                                      str(glove_txt), "--mention-replace-prob", "0.5"])
    assert result.exit_code == 1 and "mention_replace_prob needs a token-classification version" in str(
        result.exception)
    bad = CliRunner().invoke(cli, ["--store", str(store.root), "augment", "ner", "--mention-replace-prob", "1.5"])
    assert bad.exit_code != 0 and "mention_replace_prob" in str(bad.exception)


def test_tagging_bytes_do_not_depend_on_workers(tmp_path, make_version, tiny_mlm_dir, glove_txt):
    manifests = []
    for workers, batch in ((1, 64), (2, 5)):
        store = Store(tmp_path / f"w{workers}")
        make_version(store, tagged_rows(), name="ner", chunk_rows=7)
        cfg = config(tiny_mlm_dir, glove_txt, workers=workers, mlm_batch_size=batch, mention_replace_prob=0.5)
        manifests.append(run_step(store, plan_augment(store, "ner", cfg)).manifest)
    assert manifests[0]["version_id"] == manifests[1]["version_id"]
    assert [s["sha256"] for s in manifests[0]["shards"]] == [s["sha256"] for s in manifests[1]["shards"]]
    assert manifests[0]["extra"]["counts"] == manifests[1]["extra"]["counts"]


def test_tagging_resume_after_an_interrupted_write_is_byte_identical(tmp_path, make_version, tiny_mlm_dir,
                                                                     glove_txt, monkeypatch):
    clean, interrupted = Store(tmp_path / "clean"), Store(tmp_path / "interrupted")
    for s in (clean, interrupted):
        make_version(s, tagged_rows(), name="ner", chunk_rows=7)
    cfg = config(tiny_mlm_dir, glove_txt, chunk_rows=3, mention_replace_prob=0.5)
    expected = run_step(clean, plan_augment(clean, "ner", cfg)).manifest
    original = VersionWriter.write_chunk

    def stop_after_chunk_0(self, index, *args, **kwargs):
        record = original(self, index, *args, **kwargs)
        if index == 0:
            raise KeyboardInterrupt          # as Ctrl-C right after chunk 0 committed
        return record

    monkeypatch.setattr(VersionWriter, "write_chunk", stop_after_chunk_0)
    with pytest.raises(KeyboardInterrupt):
        run_step(interrupted, plan_augment(interrupted, "ner", cfg))
    monkeypatch.setattr(VersionWriter, "write_chunk", original)
    partial = interrupted.version_path(expected["version_id"])
    assert (partial / "chunks" / "00000.json").exists() and not interrupted.is_complete(expected["version_id"])
    with pytest.raises(DistilleryError, match="--resume"):
        run_step(interrupted, plan_augment(interrupted, "ner", cfg))
    resumed = run_step(interrupted, plan_augment(interrupted, "ner", cfg), resume=True)
    assert resumed.resumed and resumed.manifest["version_id"] == expected["version_id"]
    assert len(resumed.manifest["shards"]) == 3
    assert [s["sha256"] for s in resumed.manifest["shards"]] == [s["sha256"] for s in expected["shards"]]
    assert resumed.manifest["extra"]["counts"] == expected["extra"]["counts"]
