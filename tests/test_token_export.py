"""int8 and ONNX copies of a token classifier: per-piece logits, checked against fp32 per word and by entity F1."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_token_logits import build_token_teacher, ner_rows
from transformers import AutoTokenizer, BertForTokenClassification

import distill
from distill.config import ExportConfig
from distill.export import load_int8
from distill.tagging import entity_scores, first_pieces, word_predictions
from distillery.cli.main import cli

LENGTH = 12


@pytest.fixture
def tagger(tmp_path):
    return build_token_teacher(tmp_path / "tagger", seed=4)


def predictions(model, rows, tokenizer):
    """Per row: the first-piece predictions, and the predicted tag of every word (O beyond the window), of
    ``model`` on all rows in one padded batch (as the export check batches them)."""
    enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=LENGTH,
                    padding=True, return_tensors="pt")
    with torch.no_grad():
        pieces = model(**enc).logits.argmax(-1)
    first, tags = [], []
    for i, row in enumerate(rows):
        word_ids = enc.word_ids(i)
        first.append(pieces[i, first_pieces(word_ids)].tolist())
        ids, _ = word_predictions(pieces[i].tolist(), word_ids, len(row["tokens"]), -1)
        tags.append([model.config.id2label.get(k, "O") for k in ids])
    return first, tags


def test_int8_and_onnx_copies_of_a_token_classifier(store, make_version, tagger, one_torch_thread):
    onnxruntime = pytest.importorskip("onnxruntime")
    rows = ner_rows()
    make_version(store, rows, name="dev", chunk_rows=2)
    result = distill.export_model(store, tagger, ExportConfig(check_ref="dev", max_seq_length=LENGTH))
    tokenizer = AutoTokenizer.from_pretrained(tagger)
    fp32 = BertForTokenClassification.from_pretrained(tagger).eval()
    first, tags = predictions(fp32, rows, tokenizer)
    int8_first, int8_tags = predictions(load_int8(tagger), rows, tokenizer)
    gold = [r["tags"] for r in rows]
    words = sum(len(f) for f in first)
    assert words == 4 + 4 + 10                               # the long row: 10 words in the window
    same = sum(a == b for row_a, row_b in zip(int8_first, first) for a, b in zip(row_a, row_b))
    assert result["int8"]["words"] == words and result["int8"]["agreement"] == pytest.approx(same / words)
    assert result["int8"]["entity_f1_vs_fp32"] == pytest.approx(entity_scores(tags, int8_tags)["f1"])
    assert result["int8"]["entity_f1"] == pytest.approx(entity_scores(gold, int8_tags)["f1"])
    assert result["onnx"]["fp32_entity_f1"] == pytest.approx(entity_scores(gold, tags)["f1"])
    assert result["onnx"]["agreement"] == 1.0 and result["onnx"]["max_abs_diff"] < 1e-4
    assert result["onnx"]["entity_f1_vs_fp32"] == (1.0 if any(t != "O" for row in tags for t in row) else 0.0)
    assert result["int8"]["rows"] == 3 and result["int8"]["max_abs_diff"] < 0.1
    assert json.loads((tagger / "exports.json").read_text())["onnx"]["words"] == words
    # the ONNX graph gives logits per piece for another batch size and length than it was traced at
    session = onnxruntime.InferenceSession(str(tagger / "onnx" / "model.onnx"))
    batch = tokenizer([["Paris"], ["Mary", "Smith", "went", "to", "Rome", "and", "Lima"], ["Oslo", "x"]],
                      is_split_into_words=True, padding=True, return_tensors="pt")
    feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    with torch.no_grad():
        expected = fp32(**batch).logits.numpy()
    logits = session.run(["logits"], feed)[0]
    assert logits.shape == (3, batch["input_ids"].shape[1], 4)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_export_model_cli_reports_a_tagger_per_word(store, make_version, tagger):
    make_version(store, ner_rows(), name="dev", chunk_rows=2)
    result = CliRunner().invoke(cli, ["--store", str(store.root), "export-model", str(tagger), "--int8",
                                      "--check-ref", "dev", "--max-seq-length", str(LENGTH)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "per-word agreement" in result.output and "entity F1 vs fp32" in result.output
    assert "(3 rows, 18 words)" in result.output and not (tagger / "onnx").exists()


def test_compare_tags_counts_words_in_the_window_and_entities_by_hand():
    from distill.export import compare_tags

    # row 0: [CLS] Ann Lee-(2 pieces) [SEP]; row 1: [CLS] Rome [SEP] + padding, its second word beyond the window
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    rows = [({"attention_mask": mask}, [{"word_ids": [None, 0, 1, 1, None], "tokens": ["Ann", "Lee"],
                                         "tags": ["B-PER", "I-PER"]},
                                        {"word_ids": [None, 0, None], "tokens": ["Rome", "Oslo"],
                                         "tags": ["B-LOC", "B-LOC"]}])]
    reference = torch.zeros(2, 5, 4)                  # tags: B-LOC B-PER I-PER O
    reference[0, 1, 1] = reference[0, 2, 2] = reference[0, 3, 2] = reference[1, 1, 0] = 2.0
    copy = reference.clone()
    copy[0, 2, 3] = 5.0                               # "Lee": O instead of I-PER
    copy[1, 4] = 100.0                                # padding: not compared
    figures = compare_tags(lambda batch: reference, {"int8": lambda batch: copy}, rows,
                           {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"})["int8"]
    assert figures["words"] == 3 and figures["agreement"] == pytest.approx(2 / 3) and figures["max_abs_diff"] == 5.0
    # fp32: PER(Ann Lee), LOC(Rome), O for Oslo; the copy: PER(Ann), LOC(Rome); gold adds LOC(Oslo)
    assert figures["entity_f1_vs_fp32"] == pytest.approx(0.5)
    assert figures["fp32_entity_f1"] == pytest.approx(0.8) and figures["entity_f1"] == pytest.approx(0.4)
    assert figures["rows"] == 2
