"""Token classification in training and evaluation: labels on first pieces, the per-token soft cross-entropy,
fine-tuning a tagging teacher, task distillation (both stages), entity scores, exact resume."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, DataCollatorForTokenClassification

import distill
from distill import checkpoint, losses
from distill.config import FinetuneConfig, TaskDistillConfig
from distill.data import Collator, ShardStream
from distill.trainer import Trainer
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.resources import minilm_path

TAGS = ["B-LOC", "B-PER", "I-PER", "O"]                     # sorted: the vocabulary a run derives
PEOPLE = [["John"], ["Mary", "Smith"], ["Anna"], ["Peter", "Brown"]]
PLACES = ["Paris", "Rome", "Oslo", "Lima"]
VERBS = ["lives in", "went to", "likes", "visited"]
STUDENT = dict(student="custom", student_layers=2, student_hidden=16, student_heads=2, student_intermediate=32)


def sentence(i):
    """Row ``i``: a person (B-PER I-PER), a verb phrase (O), a place (B-LOC), sometimes a long closing word."""
    person, place, verb = PEOPLE[i % 4], PLACES[(i // 2) % 4], VERBS[(i // 3) % 4].split()
    tokens = [*person, *verb, place] + (["Xylophonistically"] if i % 5 == 0 else [])
    tags = ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O"] * len(verb) + ["B-LOC"] + ["O"] * (i % 5 == 0)
    return {"text": " ".join(tokens), "tokens": tokens, "tags": tags, "row_id": i}


def write_tagging_version(store, make_version, rows, name, **kw):
    """A tagging version (text, tokens, tags, row_id) whose manifest records its tag counts, as preprocess does."""
    manifest = make_version(store, rows, name=name, config={"tagging": name}, **kw)
    if "tag_counts" not in manifest["stats"]:       # until the store's stats count tags themselves
        path = store.version_path(manifest["version_id"]) / "manifest.json"
        counts: dict[str, int] = {}
        for row in rows:
            for tag in row["tags"]:
                counts[tag] = counts.get(tag, 0) + 1
        manifest["stats"]["tag_counts"] = counts
        path.write_text(json.dumps(manifest))
    return manifest


def dev_rows():
    """Held-out rows: one with a tag no model knows (B-ORG), one of 9 words (3 past an 8-token window)."""
    rows = [sentence(i) for i in range(24, 31)]
    rows[0] = {**rows[0], "tags": ["B-ORG"] + rows[0]["tags"][1:]}
    tokens = "John visited Rome and Oslo and Lima and Paris".split()
    tags = ["B-PER", "O", "B-LOC", "O", "B-LOC", "O", "B-LOC", "O", "B-LOC"]
    return rows + [{"text": " ".join(tokens), "tokens": tokens, "tags": tags, "row_id": 7}]


@pytest.fixture
def data(store, make_version):
    write_tagging_version(store, make_version, [sentence(i) for i in range(24)], "ner-train", chunk_rows=12)
    write_tagging_version(store, make_version, dev_rows(), "ner-dev", chunk_rows=8)
    return store


@pytest.fixture(scope="module")
def base(tiny_bert_factory):
    return str(tiny_bert_factory(layers=2, hidden=32, heads=2, intermediate=64, with_mlm_head=False, seed=3))


def losses_of(run_dir):
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["parts"]) for r in lines if "loss" in r]


def expected_labels(word_ids, tags, label2id):
    """First piece of each word: its tag's id (-100 for an unknown tag); everything else -100 (written out)."""
    out, previous = [], None
    for word in word_ids:
        out.append(-100 if word is None or word == previous else label2id.get(tags[word], -100))
        previous = word
    return out


def test_labels_on_first_pieces_as_hf_token_collator_pads_them(data):
    label2id = {t: i for i, t in enumerate(TAGS)}
    rows = [sentence(0), sentence(1), {**sentence(2), "tags": ["B-PER", "O", "O", "B-MISC"]}]
    collate = Collator(minilm_path(), max_seq_length=8, label2id=label2id, tagging=True)
    encoded = [dict(r) for r in rows]
    collate.encode(encoded)
    batch = collate(encoded)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    for i, row in enumerate(rows):
        enc = tokenizer(row["tokens"], is_split_into_words=True, truncation=True, max_length=8)
        n = len(enc["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert batch["labels"][i, :n].tolist() == expected_labels(enc.word_ids(), row["tags"], label2id)
        assert (batch["labels"][i, n:] == -100).all()
    # row 0 ends in a word of six pieces: labelled once, on its first piece; the 8-token window cuts it
    assert len(tokenizer.tokenize("Xylophonistically")) == 6 and batch["input_ids"].shape[1] == 8
    assert batch["labels"][0].tolist() == [-100, 1, 3, 3, 0, 3, -100, -100]    # [CLS] John lives in Paris x ##yl [SEP]
    whole = Collator(minilm_path(), 16, label2id, tagging=True)
    whole.encode(encoded)
    assert whole(encoded)["labels"][0].tolist() == [-100, 1, 3, 3, 0, 3] + [-100] * 6
    assert batch["labels"][2].tolist()[4] == -100                               # the unknown tag
    # Hugging Face's collator pads the same features to the same arrays
    features = [{k: list(map(int, batch[k][i][:len(r["input_ids"])])) for k in ("input_ids", "token_type_ids",
                                                                                  "labels")}
                for i, r in enumerate(encoded)]
    hf = DataCollatorForTokenClassification(tokenizer, return_tensors="np")(features)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        np.testing.assert_array_equal(hf[key], batch[key])
    every = Collator(minilm_path(), 8, label2id, tagging=True, label_all_pieces=True)
    every.encode(encoded)
    assert every(encoded)["labels"][0].tolist() == [-100, 1, 3, 3, 0, 3, 3, -100]
    # the stream of the version (what an external trainer gets) carries the same labels, by the version's tags
    stream = ShardStream.from_store(data, "ner-train", minilm_path(), batch_size=3, shuffle=False, max_seq_length=8)
    first = next(iter(stream))
    assert first["labels"][0].tolist() == [-100, 1, 3, 3, 0, 3, -100, -100]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels", "row_id"}


def test_token_soft_cross_entropy_against_a_hand_computed_value():
    student = torch.tensor([[[9.0, -9.0], [1.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[-9.0, 9.0], [0.0, 2.0], [3.0, 1.0], [7.0, 0.0]]])
    labels = torch.tensor([[-100, 0, 1, -100]])           # a special token, two first pieces, padding
    t = 2.0

    def cross_entropy(s, q):                              # -sum softmax(q / T) * log_softmax(s / T)
        p = [math.exp(x / t) / sum(math.exp(y / t) for y in q) for x in q]
        log_z = math.log(sum(math.exp(y / t) for y in s))
        return -sum(pi * (x / t - log_z) for pi, x in zip(p, s))
    expected = (cross_entropy([1.0, 0.0], [0.0, 2.0]) + cross_entropy([0.0, 0.0], [3.0, 1.0])) / 2
    assert losses.token_soft_cross_entropy(student, teacher, labels, t).item() == pytest.approx(expected, rel=1e-6)
    # by hand: position 1, p = (1, e) / (1 + e), log q = (0.5, 0) - log(1 + e^0.5): 0.83961; position 2, p = (e, 1) /
    # (e + 1), q = (1/2, 1/2): log 2 = 0.69315; their mean
    assert expected == pytest.approx((0.83961 + 0.69315) / 2, abs=1e-5)
    assert losses.token_soft_cross_entropy(student, teacher, torch.full_like(labels, -100), t).item() == 0.0


def test_finetune_distil_and_evaluate_a_tagger(data, base, tmp_path):
    teacher = distill.finetune(data, "ner-train", FinetuneConfig(model=base, epochs=2, batch_size=8, lr=3e-3,
                                                                 num_workers=0, eval_ref="ner-dev", log_every=1),
                               tmp_path / "teacher")
    config = AutoConfig.from_pretrained(teacher.path)
    assert config.architectures == ["BertForTokenClassification"] and config.id2label == dict(enumerate(TAGS))
    assert set(teacher.scores["per_type"]) >= {"PER", "LOC", "ORG"}
    cfg = TaskDistillConfig(teacher=str(teacher.path), **STUDENT, stage1_epochs=1, stage2_epochs=1, batch_size=8,
                            eval_ref="ner-dev", num_workers=0, log_every=1, temperature=2.0, stage2_lr=3e-3)
    student = distill.task_distill(data, "ner-train", cfg, tmp_path / "run")
    assert set(losses_of(tmp_path / "run" / "stage1")[0][2]) == {"emb", "att1", "hid1", "att2", "hid2"}
    assert set(losses_of(tmp_path / "run" / "stage2")[0][2]) == {"logits_soft_ce"}
    config = AutoConfig.from_pretrained(student.path)
    assert config.architectures == ["BertForTokenClassification"] and config.num_hidden_layers == 2
    scores = json.loads((student.path / "scores.json").read_text())
    assert 0 <= scores["f1"] <= 1 and scores["per_type"]["ORG"]["support"] == 1 and scores["unknown_tag_words"] == 1
    assert scores["words"] == sum(len(row["tokens"]) for row in dev_rows()) and scores["rows"] == 8
    card = (student.path / "README.md").read_text()
    assert "token-classification" in card and "| PER |" in card and "| micro avg |" in card
    evaluated = distill.evaluate(data, "ner-dev", student.path)
    assert evaluated["f1"] == pytest.approx(scores["f1"]) and evaluated["per_type"] == scores["per_type"]
    args = ["--store", str(data.root), "distill", "evaluate", "ner-dev", str(student.path), "--max-seq-length", "8",
            "--strict"]
    printed = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    short = json.loads(printed.stdout)
    assert short["words"] == scores["words"] and short["words_beyond_window"] == 3 and short["mode"] == "strict"


def test_a_tagging_run_resumes_exactly(data, base, tmp_path, monkeypatch):
    cfg = FinetuneConfig(model=base, epochs=2, batch_size=8, lr=1e-3, num_workers=0, log_every=1, checkpoint_every=2,
                         label_all_pieces=True)
    full = distill.finetune(data, "ner-train", cfg, tmp_path / "full")

    def crash_after_5(self):
        if self.step == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "after_step", crash_after_5)
    with pytest.raises(KeyboardInterrupt):
        distill.finetune(data, "ner-train", cfg, tmp_path / "cut")
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path / "cut" / "checkpoints").name == "step-00000004.pt"   # mid second epoch
    resumed = distill.finetune(data, "ner-train", cfg, tmp_path / "cut", resume=True)
    assert losses_of(tmp_path / "cut") == losses_of(tmp_path / "full") and len(losses_of(tmp_path / "full")) == 6
    a, b = load_file(full.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_token_classification_needs_a_tags_column(store, make_version, base, tmp_path):
    make_version(store, [{"text": "a b", "label": "x", "row_id": 0}], name="plain")
    with pytest.raises(DistilleryError, match="no 'tags' column"):
        distill.finetune(store, "plain", FinetuneConfig(model=base, task="token-classification", num_workers=0),
                         tmp_path / "ft")


def test_cached_word_logits_land_on_each_words_first_piece():
    """Cached teacher logits are one row per word; the collator places them on this run's first pieces, and a word
    the cache has no row for (beyond the teacher's window) is left out of the losses (its label -> -100)."""
    collate = Collator(minilm_path(), 32, {"O": 0, "B-PER": 1, "I-PER": 2}, tagging=True)
    rows = [{"tokens": ["Zbigniew", "met", "Ann"], "tags": ["B-PER", "O", "B-PER"],
             "teacher_logits": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}]        # no row for the third word
    nan_rows = [{**rows[0], "teacher_logits": [[0.0, 1.0, 2.0], [float("nan")] * 3, [6.0, 7.0, 8.0]]}]
    collate.encode(rows)
    batch = collate(rows)
    word_ids = rows[0]["word_ids"]
    first = [word_ids.index(w) for w in range(3)]
    logits, labels = batch["teacher_logits"][0], batch["labels"][0]
    assert logits.shape == (len(word_ids), 3)
    assert logits[first[0]].tolist() == [0.0, 1.0, 2.0] and logits[first[1]].tolist() == [3.0, 4.0, 5.0]
    assert labels[first[0]] == 1 and labels[first[1]] == 0
    assert labels[first[2]] == -100                  # Ann: no teacher logits cached, left out
    assert first[1] - first[0] > 1                   # Zbigniew spans several pieces; only its first is labelled
    assert all(labels[p] == -100 for p in range(first[0] + 1, first[1]))
    collate.encode(nan_rows)                         # "met" had no piece in the teacher's window: a NaN row
    batch = collate(nan_rows)
    assert batch["labels"][0][first[1]] == -100 and batch["labels"][0][first[2]] == 1
    assert not np.isnan(batch["teacher_logits"]).any()


def test_a_bilstm_tagger_learns_from_cached_word_logits(data, base, tmp_path):
    """The whole tagging path with a non-BERT student: a teacher's logits cached per word, a BiLSTM over its own
    word vocabulary (a tokenizer unlike the teacher's) distilled from them, scored on every dev word."""
    from distill.config import CacheLogitsConfig
    from pipelines.runner import run_step

    teacher = distill.finetune(data, "ner-train", FinetuneConfig(model=base, epochs=1, batch_size=8, lr=3e-3,
                                                                 num_workers=0), tmp_path / "teacher")
    run_step(data, distill.plan_teacher_logits(data, "ner-train", teacher.path, CacheLogitsConfig()), "ner-logits")
    cfg = TaskDistillConfig(teacher=str(teacher.path), student="bilstm", student_hidden=8, student_embeddings="glove",
                            stage2_epochs=1, stage2_lr=1e-2, batch_size=8, num_workers=0, log_every=1,
                            logits_ref="ner-logits", eval_ref="ner-dev")
    student = distill.task_distill(data, "ner-train", cfg, tmp_path / "bilstm")
    assert set(losses_of(tmp_path / "bilstm" / "stage2")[0][2]) == {"logits_soft_ce"}
    assert all(math.isfinite(total) for _, total, _ in losses_of(tmp_path / "bilstm" / "stage2"))
    config = AutoConfig.from_pretrained(student.path)
    assert config.architectures == ["BiLSTMForTokenClassification"] and config.id2label == dict(enumerate(TAGS))
    scores = json.loads((student.path / "scores.json").read_text())
    assert scores["words"] == sum(len(row["tokens"]) for row in dev_rows()) and "per_type" in scores


def test_a_tagging_version_feeds_hf_token_classification_without_our_code(data):
    """A user's own trainer: the shards loaded with `datasets`, labels aligned as HF's run_ner does and padded by
    DataCollatorForTokenClassification, give the batches distillery's own stream gives."""
    import datasets

    label2id = {t: i for i, t in enumerate(sorted(data.manifest("ner-train")["stats"]["tag_counts"]))}
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    version = datasets.load_dataset("parquet", data_files=[str(p) for p in data.shard_paths("ner-train")],
                                    split="train")

    def features(row):
        enc = tokenizer(row["tokens"], is_split_into_words=True, truncation=True, max_length=8)
        previous, labels = None, []
        for word in enc.word_ids():
            labels.append(-100 if word is None or word == previous else label2id[row["tags"][word]])
            previous = word
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "labels": labels}

    hf = DataCollatorForTokenClassification(tokenizer, return_tensors="np")([features(r) for r in version][:3])
    ours = next(iter(ShardStream.from_store(data, "ner-train", minilm_path(), batch_size=3, shuffle=False,
                                            max_seq_length=8)))
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        np.testing.assert_array_equal(hf[key], ours[key].numpy())
