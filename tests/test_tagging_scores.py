"""Token classification without a model: first-piece alignment on a real tokenizer, entity F1 against hand-made
cases (values worked out by hand in the comments), tag agreement."""
from __future__ import annotations

import json
import math
import warnings

import pytest

from distill.tagging import entity_report, entity_scores, first_pieces, piece_labels, token_agreement, word_predictions

SENTENCE = ["Zbigniew", "lives", "in", "Paris"]
LABELS = [1, 0, 0, 2]  # B-PER, O, O, B-LOC as ids
X = -100


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from pipelines.resources import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def word_ids(tokenizer, words, **kwargs):
    return tokenizer([words], is_split_into_words=True, **kwargs).word_ids(0)


def test_first_piece_alignment_with_a_word_split_into_many_pieces(tokenizer):
    ids = word_ids(tokenizer, SENTENCE)
    # [CLS] z ##bi ##gni ##ew lives in paris [SEP]: "Zbigniew" is four pieces
    assert ids == [None, 0, 0, 0, 0, 1, 2, 3, None]
    assert piece_labels(ids, LABELS) == [X, 1, X, X, X, 0, 0, 2, X]
    assert piece_labels(ids, LABELS, label_all_pieces=True) == [X, 1, 1, 1, 1, 0, 0, 2, X]
    assert piece_labels(ids, LABELS, ignore=-1) == [-1, 1, -1, -1, -1, 0, 0, 2, -1]
    assert first_pieces(ids) == [1, 5, 6, 7]


def test_padding_is_ignored_and_every_word_keeps_its_first_piece(tokenizer):
    encoding = tokenizer([SENTENCE, ["Brzęczyszczykiewicz", "sang"]], is_split_into_words=True, padding=True)
    short, long = encoding.word_ids(0), encoding.word_ids(1)
    assert short[-2:] == [None, None]  # two [PAD] after [SEP]: the second row has 8 pieces for its first word
    assert piece_labels(short, LABELS) == [X, 1, X, X, X, 0, 0, 2, X, X, X]
    assert piece_labels(long, [3, 0]) == [X, 3, X, X, X, X, X, X, X, 0, X]
    assert first_pieces(long) == [1, 9]


def test_truncated_rows_label_only_the_words_that_fit(tokenizer):
    ids = word_ids(tokenizer, SENTENCE, truncation=True, max_length=6)  # [CLS] z ##bi ##gni ##ew [SEP]
    assert ids == [None, 0, 0, 0, 0, None]
    assert piece_labels(ids, LABELS) == [X, 1, X, X, X, X]
    assert first_pieces(ids) == [1]
    cut = word_ids(tokenizer, SENTENCE, truncation=True, max_length=4)  # [CLS] z ##bi [SEP]: the word is cut inside
    assert piece_labels(cut, LABELS) == [X, 1, X, X]


def test_word_predictions_fill_truncated_words_with_outside(tokenizer):
    ids = word_ids(tokenizer, SENTENCE, truncation=True, max_length=7)  # [CLS] z ##bi ##gni ##ew lives [SEP]
    pieces = [5, 1, 4, 4, 4, 3, 5]  # the first piece of word 0 says 1, word 1 says 3; others are not first pieces
    assert word_predictions(pieces, ids, num_words=4, outside=0) == ([1, 3, 0, 0], 2)
    # trailing positions beyond the row (padding of a longer batch) are ignored
    assert word_predictions([*pieces, 9, 9], ids, num_words=4, outside=0) == ([1, 3, 0, 0], 2)
    full = word_ids(tokenizer, SENTENCE)
    assert word_predictions([0, 1, 2, 2, 2, 0, 0, 2, 0], full, num_words=4, outside=0) == ([1, 0, 0, 2], 0)


def test_alignment_refuses_what_cannot_be_aligned():
    with pytest.raises(ValueError, match="word id 2 outside a sentence of 2 words"):
        piece_labels([None, 0, 1, 2, None], [0, 1])
    with pytest.raises(ValueError, match="3 piece predictions for a row of 4 pieces"):
        word_predictions([0, 0, 0], [None, 0, 1, None], num_words=2, outside=0)
    with pytest.raises(ValueError, match="word id 1 outside"):
        word_predictions([0, 0, 0, 0], [None, 0, 1, None], num_words=1, outside=0)


def test_partial_span_is_a_miss_and_a_false_positive():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    predicted = [["B-PER", "O", "O", "B-LOC"]]
    scores = entity_scores(gold, predicted)
    # gold {PER 0-1, LOC 3}, predicted {PER 0, LOC 3}: 1 right of 2 predicted, 1 found of 2 gold
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 1}
    assert scores["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "predicted": 1}
    assert scores["token_accuracy"] == 0.75  # 3 of 4 words
    assert (scores["sentences"], scores["words"], scores["entities"], scores["predicted_entities"]) == (1, 4, 2, 2)


def test_type_mismatch_counts_against_both_types():
    scores = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-ORG", "I-ORG", "O", "B-LOC"]])
    # right span, wrong type: PER missed (recall 0), ORG a false positive (precision 0, support 0); LOC right
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert list(scores["per_type"]) == ["LOC", "ORG", "PER"]
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert scores["per_type"]["PER"]["support"] == 1 and scores["per_type"]["PER"]["recall"] == 0.0


def test_iob1_input_starts_entities_only_in_the_default_mode():
    gold = [["I-PER", "I-PER", "O", "I-LOC"]]  # IOB1: an entity may start with I-
    predicted = [["B-PER", "I-PER", "O", "B-LOC"]]
    default = entity_scores(gold, predicted)
    # conlleval reads gold as {PER 0-1, LOC 3}: the same entities as predicted, though 2 of 4 tags differ
    assert (default["precision"], default["recall"], default["f1"]) == (1.0, 1.0, 1.0)
    assert default["token_accuracy"] == 0.5 and default["mode"] == "default"
    strict = entity_scores(gold, predicted, strict=True)
    # strict IOB2: an I- that follows no B- is no entity, so gold has none and both predictions are false positives
    assert (strict["entities"], strict["predicted_entities"]) == (0, 2)
    assert (strict["precision"], strict["recall"], strict["f1"]) == (0.0, 0.0, 0.0)
    assert strict["mode"] == "strict"


def test_unknown_gold_tag_counts_as_an_error():
    known = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}  # the model never predicts MISC
    gold = [["B-MISC", "O", "B-PER"]]
    scores = entity_scores(gold, [["O", "O", "B-PER"]], known_tags=known)
    # gold {MISC 0, PER 2}, predicted {PER 2}: P 1/1, R 1/2, F1 2*1*0.5/1.5 = 2/3; the MISC word is a wrong token
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["token_accuracy"] == pytest.approx(2 / 3)
    assert scores["per_type"]["MISC"]["support"] == 1 and scores["per_type"]["MISC"]["recall"] == 0.0
    assert scores["unknown_tag_words"] == 1
    guessed = entity_scores(gold, [["B-LOC", "O", "B-PER"]], known_tags=known)
    # a LOC predicted over the MISC word is also a false positive: P 1/2, R 1/2
    assert (guessed["precision"], guessed["recall"], guessed["f1"]) == (0.5, 0.5, 0.5)


def test_perfect_prediction_scores_one_and_support_is_per_type():
    gold = [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "O", "B-PER", "I-PER", "I-PER"], ["O"]]
    scores = entity_scores(gold, gold, strict=True)
    assert (scores["precision"], scores["recall"], scores["f1"], scores["token_accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert {name: row["support"] for name, row in scores["per_type"].items()} == {"LOC": 1, "PER": 3}
    assert (scores["sentences"], scores["words"], scores["entities"]) == (3, 10, 4)


def test_empty_predictions_and_empty_input_print_nothing():
    gold = [["B-PER", "O"], ["B-LOC", "I-LOC"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = entity_scores(gold, [["O", "O"], ["O", "O"]])
        nothing = entity_scores([], [])
    assert caught == []  # seqeval's UndefinedMetricWarning (no predicted entity) stays silent
    # no entity predicted: precision undefined -> 0 as seqeval, recall 0/2, 1 of 4 words right
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert (scores["entities"], scores["predicted_entities"], scores["token_accuracy"]) == (2, 0, 0.25)
    assert (nothing["sentences"], nothing["words"], nothing["f1"], nothing["per_type"]) == (0, 0, 0.0, {})
    assert math.isnan(nothing["token_accuracy"])


def test_scores_are_plain_json_ready_values():
    scores = entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "B-LOC"]])
    assert json.loads(json.dumps(scores)) == scores
    assert all(type(value) in (str, int, float, dict) for value in scores.values())
    assert all(type(value) in (int, float) for row in scores["per_type"].values() for value in row.values())


def test_mismatched_or_unreadable_tags_name_the_sentence():
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted"):
        entity_scores([["O"], ["O", "B-PER"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: tag 'PER'"):
        entity_scores([["PER"]], [["O"]])
    assert entity_scores([["S-PER", "B-LOC", "E-LOC"]], [["S-PER", "O", "O"]])["recall"] == 0.5  # IOBES: default
    with pytest.raises(ValueError, match="sentence 0: tag 'E-LOC' is neither 'O' nor B/I-TYPE"):
        entity_scores([["B-LOC", "E-LOC"]], [["O", "O"]], strict=True)


def test_entity_report_has_every_type_and_the_micro_row():
    scores = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-ORG", "I-ORG", "O", "B-LOC"]])
    lines = entity_report(scores).splitlines()
    assert lines[0] == "| type | precision | recall | F1 | support |"
    assert lines[2:] == ["| LOC | 1.0000 | 1.0000 | 1.0000 | 1 |",
                         "| ORG | 0.0000 | 0.0000 | 0.0000 | 0 |",
                         "| PER | 0.0000 | 0.0000 | 0.0000 | 1 |",
                         "| micro avg | 0.5000 | 0.5000 | 0.5000 | 2 |"]


def test_token_agreement_with_and_without_a_mask():
    a = [["O", "B-PER", "O"], ["B-LOC"]]
    b = [["O", "B-PER", "B-ORG"], ["O"]]
    assert token_agreement(a, b) == {"agreement": 0.5, "words": 4, "agreeing": 2}  # 2 of 4 words
    unchanged = [[True, True, False], [False]]
    assert token_agreement(a, b, unchanged) == {"agreement": 1.0, "words": 2, "agreeing": 2}
    assert math.isnan(token_agreement(a, b, [[False] * 3, [False]])["agreement"])
    with pytest.raises(ValueError, match="sentence 1: 1 and 2 tags"):
        token_agreement(a, [["O"] * 3, ["O", "O"]])
