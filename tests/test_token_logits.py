"""A token classifier's cached teacher logits (one row per word, its first piece's) and the teacher's per-word
agreement between augmented copies of a tagging version and their originals (`distill agreement`)."""
import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

from distill.config import CacheLogitsConfig
from distill.logits import agreement_summary, plan_teacher_logits, tag_agreement_counts, word_rows, word_tags
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.resources import minilm_path
from pipelines.runner import run_step

TAGS = ["B-LOC", "B-PER", "I-PER", "O"]
LONG = "John visited Rome and Oslo and Lima and Paris and Xylophonistically".split()


def build_token_teacher(folder, seed: int = 0, labels: list[str] = TAGS):
    """A tiny random BERT token classifier (real bert-base-uncased vocabulary) saved with its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, id2label=dict(enumerate(labels)),
                        label2id={tag: i for i, tag in enumerate(labels)})
    torch.manual_seed(seed)
    BertForTokenClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return build_token_teacher(tmp_path_factory.mktemp("token_teacher"))


def tagged(tokens, tags, row_id):
    return {"text": " ".join(tokens), "tokens": tokens, "tags": tags, "row_id": row_id}


def ner_rows():
    """Short rows, a word of six pieces, and a row longer than a 12-piece window."""
    return [tagged(["John", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"], 0),
            tagged(["Mary", "Smith", "likes", "Xylophonistically"], ["B-PER", "I-PER", "O", "O"], 1),
            tagged(LONG, ["B-PER", "O", "B-LOC", "O", "B-LOC", "O", "B-LOC", "O", "B-LOC", "O", "O"], 2)]


def first_piece_logits(teacher, tokens, length):
    """The teacher's logits of each word in the window (its first piece's), computed directly."""
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = BertForTokenClassification.from_pretrained(teacher).eval()
    enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=length, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    first: dict[int, int] = {}
    for position, word in enumerate(enc.word_ids(0)):
        if word is not None:
            first.setdefault(word, position)
    return [logits[first[word]].tolist() for word in sorted(first)]


def test_cached_logits_of_a_tagger_are_one_row_per_word(store, make_version, teacher):
    make_version(store, ner_rows(), name="ner", chunk_rows=2)
    run_step(store, plan_teacher_logits(store, "ner", teacher, CacheLogitsConfig(max_seq_length=12)), "ner-logits")
    table = store.read_table("ner-logits")
    assert table.schema.field("teacher_logits").type == pa.list_(pa.list_(pa.float32()))
    lengths = []
    for row in table.to_pylist():
        expected = first_piece_logits(teacher, row["tokens"], 12)
        np.testing.assert_allclose(np.array(row["teacher_logits"]), np.array(expected), rtol=1e-5, atol=1e-5)
        lengths.append(len(row["teacher_logits"]))
    assert lengths == [4, 4, 10]       # the long row: 10 words' first pieces fit in 12 pieces with [CLS], [SEP]
    manifest = store.manifest("ner-logits")
    assert manifest["accounting"]["words_beyond_window"] == 1
    assert manifest["extra"]["id2label"] == {str(i): tag for i, tag in enumerate(TAGS)}
    assert manifest["extra"]["logits_per"] == "word"
    whole = run_step(store, plan_teacher_logits(store, "ner", teacher, CacheLogitsConfig(max_seq_length=32)))
    vid = whole.manifest["version_id"]
    assert [len(r) for r in store.read_table(vid).column("teacher_logits").to_pylist()] == [4, 4, 11]
    assert whole.manifest["accounting"]["words_beyond_window"] == 0


def test_a_word_without_pieces_gets_a_nan_row_and_a_token_teacher_needs_tokens(store, make_version, teacher):
    pieces = np.arange(15, dtype=np.float32).reshape(5, 3)
    rows = word_rows(pieces, [None, 0, 0, 2, None])          # word 1 has no piece (e.g. a zero-width character)
    np.testing.assert_array_equal(rows[[0, 2]], pieces[[1, 3]])
    assert rows.shape == (3, 3) and np.isnan(rows[1]).all()
    assert word_tags([rows], {0: "O", 1: "B-X", 2: "I-X"}) == [["I-X", None, "I-X"]]
    make_version(store, [{"text": "a b", "label": "x", "row_id": 0}], name="plain")
    with pytest.raises(DistilleryError, match="token classifier but plain has no 'tokens' column"):
        plan_teacher_logits(store, "plain", teacher, CacheLogitsConfig(max_seq_length=32))


def augmented_rows():
    """An original, a copy with one O word replaced (masked LM), a copy with a swapped mention and a replaced word
    (vectors), a one-word original, and a copy whose original is elsewhere."""
    record = ("source_row_id", "aug_copy", "aug_mlm_words", "aug_vector_words", "aug_mentions", "aug_word_source")

    def row(tokens, tags, *values):
        return {**tagged(tokens, tags, 0), "aug_field": "tokens" if values[1] else None, **dict(zip(record, values))}
    return [row(["John", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"], 5, 0, 0, 0, 0, [0, 1, 2, 3]),
            row(["John", "stays", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"], 5, 1, 1, 0, 0, [0, 1, 2, 3]),
            row(["Mary", "Smith", "lives", "at", "Paris"], ["B-PER", "I-PER", "O", "O", "B-LOC"], 5, 2, 0, 1, 1,
                [-1, -1, 1, 2, 3]),
            row(["Rome"], ["B-LOC"], 6, 0, 0, 0, 0, [0]),
            row(["a", "b"], ["O", "O"], 9, 1, 0, 1, 0, [0, 1])]


def test_tag_agreement_on_hand_made_copies():
    table = pa.Table.from_pylist(augmented_rows())
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O", "B-LOC", "B-LOC"], ["B-PER", "I-PER", "O", "O"],
                 ["O"], ["O", "O"]]             # the mention copy's last word is beyond the window: no tag
    counts = tag_agreement_counts(table, predicted)
    # copy 1: words 0, 2, 3 unchanged, the teacher changes its tag of "in"; copy 2: "lives" (from word 1) only
    # ("at" replaced "in", "Paris" has no tag); the last copy's original is not in the chunk: nothing compared
    assert counts["all"] == {"copies": 3, "words": 4, "same_tag": 3}
    assert counts["mlm_only"] == {"copies": 1, "words": 3, "same_tag": 2}
    assert counts["vectors_only"] == {"copies": 2, "words": 1, "same_tag": 1}
    assert counts["mixed"] == {"copies": 0, "words": 0, "same_tag": 0}
    assert counts["mentions"] == {"copies": 1, "words": 1, "same_tag": 1}
    assert counts["gold"] == {"original_words": 5, "original_words_right": 4, "original_entities": 3,
                              "original_predicted_entities": 2, "original_correct_entities": 2,
                              "copy_words": 11, "copy_words_right": 9, "copy_entities": 4,
                              "copy_predicted_entities": 4, "copy_correct_entities": 3}
    summary = agreement_summary(counts)
    assert summary["all"]["share"] == 0.75 and summary["mixed"]["share"] is None
    assert summary["teacher_accuracy"] == {"originals": 0.8, "copies": 9 / 11}
    assert summary["teacher_entity_f1"] == {"originals": pytest.approx(0.8), "copies": pytest.approx(0.75)}
    # without a record of each word's source, a copy is compared word for word only when as long as its original
    positional = tag_agreement_counts(table.drop_columns(["aug_word_source"]), predicted)
    assert positional["all"] == {"copies": 3, "words": 3, "same_tag": 2}


def test_distill_agreement_on_a_tagging_version(store, make_version, teacher):
    make_version(store, augmented_rows(), name="aug", chunk_rows=5)
    result = CliRunner().invoke(cli, ["--store", str(store.root), "distill", "agreement", "aug", str(teacher),
                                      "--name", "aug-logits", "--max-seq-length", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "mlm_only" in result.stdout and "teacher accuracy on the gold labels" in result.stdout
    table = store.read_table("aug-logits")
    words = [np.array(rows, dtype=np.float32).reshape(len(rows), len(TAGS)) for rows in
             table.column("teacher_logits").to_pylist()]
    assert [len(w) for w in words] == [4, 4, 5, 1, 2]
    expected = agreement_summary(tag_agreement_counts(table, word_tags(words, dict(enumerate(TAGS)))))
    assert store.manifest("aug-logits")["extra"]["agreement"] == expected
    assert expected["all"]["copies"] == 3 and expected["all"]["words"] == 5      # 3 + "lives" and "Paris"
