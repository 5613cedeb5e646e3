"""The BiLSTM tagger (token classification): per-position logits and loss, one piece per given word with the word
vocabulary, save / load, and learning a tiny tagging batch."""
import ast
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from distill import losses, models, students, tagging
from distill.data import Collator
from distill.tagging import IGNORE_INDEX
from pipelines.errors import DistilleryError

TAGS = ["B-LOC", "B-PER", "I-PER", "O"]
TAGGING = {"num_labels": len(TAGS), "id2label": dict(enumerate(TAGS)),
           "label2id": {t: i for i, t in enumerate(TAGS)}, "architectures": [tagging.TOKEN_HEAD]}
SENTENCES = [["O'Neill", "visited", "the", "U.S.", "in", "May", "."],
             ["Ada", "Lovelace", "was", "born", "in", "London"]]
SENTENCE_TAGS = [["B-PER", "O", "O", "B-LOC", "O", "O", "O"], ["B-PER", "I-PER", "O", "O", "O", "B-LOC"]]


def tagger(vocab_size: int = 20, hidden: int = 6, layers: int = 2) -> students.SequenceStudent:
    vectors = torch.randn(vocab_size, 5, generator=torch.Generator().manual_seed(3))
    return students.build_student_model("bilstm", vocab_size, vectors, {"hidden_size": hidden,
                                                                        "num_hidden_layers": layers}, TAGGING, seed=0)


@pytest.fixture
def words_folder(tmp_path):
    return students.words_tokenizer([" ".join(words) for words in SENTENCES], tmp_path / "words", tagging=True)


def test_tagger_gives_logits_per_position_and_a_loss_over_labelled_positions(one_torch_thread):
    model = tagger().eval()
    assert isinstance(model, students.BiLSTMForTokenClassification) and tagging.token_classifier(model.config)
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    labels = torch.tensor([[1, IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX], [0, 2, IGNORE_INDEX, 3, 3]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        alone = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
    assert out.logits.shape == (2, 5, len(TAGS)) and model(input_ids=ids).loss is None
    torch.testing.assert_close(out.logits[:1, :3], alone)          # padding never reaches a word's logits
    log_probs = F.log_softmax(out.logits, dim=-1)
    kept = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 3), (1, 4)]
    expected = -sum(log_probs[b, p, labels[b, p]] for b, p in kept) / len(kept)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(losses.hard_loss(out.logits, labels, False), expected)   # the trainer's hard loss
    changed = out.logits.clone()
    changed[labels == IGNORE_INDEX] = 100.0                          # what unlabelled positions say is not scored
    torch.testing.assert_close(losses.hard_loss(changed, labels, False), expected)


def test_textcnn_refuses_to_tag():
    with pytest.raises(DistilleryError, match="textcnn student classifies sentences only"):
        students.build_student_model("textcnn", 10, torch.randn(10, 5), {}, TAGGING, seed=0)


def test_words_tokenizer_keeps_each_given_word_one_piece(words_folder, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(words_folder)
    words = [*SENTENCES[0], "Zanzibar", "LONDON"]
    encoded = tokenizer([words], is_split_into_words=True)
    ids, vocab = encoded["input_ids"][0], tokenizer.get_vocab()
    assert encoded.word_ids(0) == list(range(len(words)))
    assert ids == [vocab[w.lower()] for w in SENTENCES[0]] + [vocab[students.UNK], vocab["london"]]
    assert {"o'neill", "u.s."} <= set(vocab)
    sentence = students.words_tokenizer([" ".join(SENTENCES[0])], tmp_path / "sentence")   # unchanged: BERT's split
    assert len(AutoTokenizer.from_pretrained(sentence)(["O'Neill"])["input_ids"][0]) == 3   # o ' neill

    collator = Collator(words_folder, 16, TAGGING["label2id"], tagging=True)
    rows = [{"tokens": w, "tags": t} for w, t in zip(SENTENCES, SENTENCE_TAGS)]
    collator.encode(rows)
    batch = collator(rows)
    assert batch["labels"][0].tolist() == [TAGS.index(t) for t in SENTENCE_TAGS[0]]
    assert batch["labels"][1].tolist() == [TAGS.index(t) for t in SENTENCE_TAGS[1]] + [IGNORE_INDEX]


def test_tagger_saves_loads_and_says_it_tags(words_folder, tmp_path, one_torch_thread):
    model = tagger(vocab_size=len(AutoTokenizer.from_pretrained(words_folder))).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(words_folder).save_pretrained(folder)
    loaded = models.load_saved_classifier(folder)
    assert type(loaded) is students.BiLSTMForTokenClassification and tagging.token_classifier(loaded.config)
    assert loaded.config.id2label == dict(enumerate(TAGS)) and not loaded.training
    ids = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=(ids != 0).long()).logits,
                                   model(input_ids=ids, attention_mask=(ids != 0).long()).logits, rtol=0, atol=0)
    assert students.describe(loaded.config)[0] == "BiLSTM tagger"
    assert students.usage(loaded.config) == students.TAGGER_USAGE
    sentence = students.build_student_model("bilstm", 10, torch.randn(10, 5), {}, {"num_labels": 2}, seed=0)
    assert students.describe(sentence.config)[0] == "BiLSTM" and students.usage(sentence.config) == students.USAGE
    printed = io.StringIO()
    code = students.TAGGER_USAGE.strip("`").removeprefix("python").replace("path/to/this/folder", str(folder))
    with contextlib.redirect_stdout(printed):
        exec(code, {})                                               # the card's example runs as written
    pairs = ast.literal_eval(printed.getvalue())
    assert [w for w, _ in pairs] == ["Ada", "Lovelace", "was", "born", "in", "London", "."]
    assert {t for _, t in pairs} <= set(TAGS)


def test_tagger_learns_a_tiny_tagging_batch(words_folder, one_torch_thread):
    torch.manual_seed(0)
    collator = Collator(words_folder, 16, TAGGING["label2id"], tagging=True)
    rows = [{"tokens": w, "tags": t} for w, t in zip(SENTENCES, SENTENCE_TAGS)]
    collator.encode(rows)
    batch = {k: torch.as_tensor(v) for k, v in collator(rows).items()}
    model = tagger(vocab_size=len(collator.tokenizer), hidden=16, layers=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    seen = []
    for _ in range(15):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        seen.append(loss.item())
    assert seen[-1] < 0.5 * seen[0]
    model.eval()
    with torch.no_grad():
        predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    keep = batch["labels"] != IGNORE_INDEX
    assert torch.equal(predicted[keep], batch["labels"][keep])
