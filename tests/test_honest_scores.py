"""Honest scores (issue 20): every evaluated row counts, models are scored at the length they were trained at,
dev evaluations cover the whole dev set under any process count, cached logits are in the teacher's label order,
the TextCNN ignores batch padding, and the ablation picks its best student on dev with a score cache that knows
how the scores were made."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_tiny_bert
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import distill
from distill import api, mlm
from distill.card import CARD_INPUTS, DEFAULT_SEQ_LENGTH, EVALUATIONS, model_seq_length
from distill.config import (
    CacheLogitsConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    MLMConfig,
    TaskDistillConfig,
    TrainConfig,
)
from distill.logits import plan_teacher_logits
from distill.metrics import classification_metrics
from distill.students import build_student_model
from distill.trainer import Runtime
from distillery.bundled import CONFIGS_DIR
from pipelines.errors import DistilleryError
from pipelines.runner import run_step

LONG = " ".join(["river bank water stone tree"] * 12)          # ~60 pieces: truncation at 16 changes it


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny random BERT classifier with labels LABEL_0 / LABEL_1 (no card.json: not a distillery model)."""
    return build_tiny_bert(tmp_path_factory.mktemp("clf"), layers=1, hidden=16, heads=2, intermediate=32,
                           num_labels=2, seed=3)


def distillery_model(folder: Path, source: Path, trained_at: int) -> Path:
    """A copy of ``source`` with the card.json a distillery run writes, recording ``trained_at`` tokens per row."""
    model = AutoModelForSequenceClassification.from_pretrained(source)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    set_training_length(folder, trained_at)
    return folder


def set_training_length(folder: Path, trained_at: int) -> None:
    (folder / CARD_INPUTS).write_text(json.dumps({
        "mode": "finetune", "base": "tiny", "teacher": None, "data": [], "parameters": 1,
        "training": {"max_seq_length": trained_at, "batch_size": 4}}))


def predictions(model_dir: Path, texts: list[str], max_length: int) -> list[int]:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, truncation=True, max_length=max_length,
                                                     return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.argmax(-1).tolist()


# ---- unknown gold labels are errors ---------------------------------------------------------------------------
def test_an_unknown_gold_label_is_a_row_no_prediction_gets_right():
    scores = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, -100]), 2)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)     # class 1: predicted twice, right once
    # confusion (gold rows 0, 1, unknown): n = 3, correct 2, predicted [1, 2], gold [1, 1, 1]
    assert scores["matthews"] == pytest.approx((2 * 3 - (1 + 2)) / math.sqrt((9 - 5) * (9 - 3)))
    everything_unknown = classification_metrics(np.array([0, 0]), np.array([-100, 7]), 2)
    assert everything_unknown == {"accuracy": 0.0, "macro_f1": 0.0, "matthews": 0.0}


def test_evaluate_counts_rows_with_unknown_labels_in_the_denominator(store, make_version, classifier):
    texts = ["a small boat", "the river bank", "stones in water", "green trees", "an old mill", "a long road"]
    gold = ["LABEL_0", "LABEL_1", "LABEL_1", "LABEL_0", "unseen", "unseen"]
    make_version(store, [{"text": t, "label": g} for t, g in zip(texts, gold)], name="e", chunk_rows=4)
    predicted = predictions(classifier, texts, 128)
    right = sum(p == int(g[-1]) for p, g in zip(predicted, gold) if g != "unseen")
    scores = distill.evaluate(store, "e", classifier)
    assert scores["rows"] == 6 and scores["unknown_labels"] == 2
    assert scores["accuracy"] == pytest.approx(right / 6)


def test_regression_rows_without_a_gold_value_are_left_out_and_reported(store, make_version, tmp_path):
    model_dir = build_tiny_bert(tmp_path / "reg", layers=1, hidden=16, heads=2, intermediate=32, num_labels=1)
    rows = [{"text": f"word {'good ' * k}", "label": float(k)} for k in range(5)] + [{"text": "none", "label": None}]
    make_version(store, rows, name="r", chunk_rows=3)
    scores = distill.evaluate(store, "r", model_dir)
    assert scores["rows"] == 6 and scores["unknown_labels"] == 1 and math.isfinite(scores["mse"])


# ---- the length a model is scored at ---------------------------------------------------------------------------
def test_a_distillery_model_is_scored_at_its_training_length_and_the_length_is_recorded(store, make_version,
                                                                                        classifier, tmp_path):
    model_dir = distillery_model(tmp_path / "m", classifier, trained_at=16)
    texts = [LONG + f" {i}" if i % 2 else f"short {i}" for i in range(8)]
    make_version(store, [{"text": t, "label": f"LABEL_{i % 2}"} for i, t in enumerate(texts)], name="t",
                 chunk_rows=4)
    scores = distill.evaluate(store, "t", model_dir)
    expected = sum(p == i % 2 for i, p in enumerate(predictions(model_dir, texts, 16))) / 8
    assert scores["max_seq_length"] == 16 and scores["accuracy"] == pytest.approx(expected)
    record = json.loads((model_dir / EVALUATIONS).read_text())[store.resolve("t")]
    assert record["scores"]["max_seq_length"] == 16 and "| 16 |" in (model_dir / "README.md").read_text()
    assert distill.evaluate(store, "t", model_dir, EvaluateConfig(max_seq_length=32))["max_seq_length"] == 32
    assert distill.evaluate(store, "t", classifier)["max_seq_length"] == DEFAULT_SEQ_LENGTH   # not ours: stated
    with pytest.raises(DistilleryError, match="max_seq_length"):
        EvaluateConfig(max_seq_length=5)


def test_a_damaged_card_is_named(tmp_path):
    (tmp_path / CARD_INPUTS).write_text("{not json")
    with pytest.raises(DistilleryError, match=r"card\.json is damaged"):
        model_seq_length(tmp_path)


def test_dev_during_training_and_evaluate_afterwards_give_the_same_scores(store, make_version, tiny_bert_factory,
                                                                          tmp_path):
    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    rows = [{"text": (LONG if i % 3 == 0 else "") + f" {w} {w}", "label": w[0]}
            for i, w in enumerate(["apple", "banana", "cherry"] * 6)]
    make_version(store, rows, name="train", chunk_rows=6)
    make_version(store, rows[:9], name="dev", chunk_rows=6, config={"dev": 1})
    run = distill.finetune(store, "train", FinetuneConfig(model=base, epochs=1, batch_size=6, max_seq_length=16,
                                                          num_workers=0, eval_ref="dev"), tmp_path / "ft")
    saved = json.loads((run.path / "scores.json").read_text())
    assert saved["max_seq_length"] == 16
    scores = distill.evaluate(store, "dev", run.path)
    assert {k: scores[k] for k in saved} == pytest.approx(saved)


def test_cache_logits_and_the_export_check_use_the_teachers_training_length(store, make_version, classifier,
                                                                            tmp_path):
    teacher = distillery_model(tmp_path / "teacher", classifier, trained_at=16)
    make_version(store, [{"text": LONG, "label": "LABEL_0"}, {"text": "a boat", "label": "LABEL_1"}], name="d")
    plan = plan_teacher_logits(store, "d", teacher, CacheLogitsConfig())
    assert plan.config["max_seq_length"] == plan.identity["max_seq_length"] == 16
    other = plan_teacher_logits(store, "d", teacher, CacheLogitsConfig(max_seq_length=32))
    assert other.version_id() != plan.version_id()
    result = distill.export_model(store, teacher, ExportConfig(int8=True, check_ref="d"))
    assert result["int8"]["max_seq_length"] == 16


# ---- dev evaluations cover the whole dev set under torchrun ----------------------------------------------------
@pytest.fixture
def text_version(store, make_version):
    make_version(store, [{"text": f"the {w} sat on the mat near the {w} house", "row_id": i}
                         for i, w in enumerate("cat dog bird fish cow pig hen fox owl bee ant elk".split())],
                 name="text", chunk_rows=4)
    return store


def test_masked_lm_and_distilbert_dev_evaluations_read_every_dev_row_on_any_rank(text_version, tiny_mlm_dir):
    store, model = text_version, str(tiny_mlm_dir)
    objective = mlm.MaskedLMObjective(mlm.models.load_masked_lm(model)).eval()
    cfg = MLMConfig(model=model, eval_ref="text", batch_size=4)
    whole = mlm.mlm_stream(store, "text", model, cfg, cfg.mask_prob, False, Runtime(torch.device("cpu")),
                           shuffle=False, batch_size=64)
    expected = mlm.masked_lm_scores(objective, whole, torch.device("cpu"))["masked_pieces"]
    second_of_two = Runtime(torch.device("cpu"), rank=1, world_size=2)
    for config in (cfg, DistillConfig(teacher=model, student=model, eval_ref="text", batch_size=4)):
        eval_fn = mlm.MaskedRows(config.mask_prob).eval_fn(store, config, model, second_of_two)
        assert eval_fn(objective)["masked_pieces"] == expected


def test_the_classification_dev_evaluation_reads_every_dev_row_on_any_rank(store, make_version, classifier):
    make_version(store, [{"text": f"row {i}", "label": f"LABEL_{i % 2}"} for i in range(10)], name="dev")
    cfg = TrainConfig(eval_ref="dev", batch_size=2)
    labels = api.model_labels(AutoModelForSequenceClassification.from_pretrained(classifier).config)
    eval_fn = api.ClassifierRows(labels).eval_fn(store, cfg, classifier, Runtime(torch.device("cpu"), rank=1,
                                                                                  world_size=2))
    student = AutoModelForSequenceClassification.from_pretrained(classifier)
    assert eval_fn(SimpleNamespace(student=student))["rows"] == 10


# ---- cached logits in the teacher's label order ------------------------------------------------------------------
def test_logits_in_another_label_order_than_the_teachers_are_refused(store, make_version, classifier, tmp_path):
    make_version(store, [{"text": f"row {i}", "label": f"LABEL_{i % 2}"} for i in range(6)], name="train")
    run_step(store, distill.plan_teacher_logits(store, "train", classifier, CacheLogitsConfig()), "train-logits")
    swapped = tmp_path / "swapped"
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    model.config.id2label, model.config.label2id = {0: "LABEL_1", 1: "LABEL_0"}, {"LABEL_1": 0, "LABEL_0": 1}
    model.save_pretrained(swapped)
    AutoTokenizer.from_pretrained(classifier).save_pretrained(swapped)
    cfg = TaskDistillConfig(teacher=str(swapped), student="textcnn", stage="2", logits_ref="train-logits",
                            num_workers=0)
    order = r"\['LABEL_0', 'LABEL_1'\] .* \['LABEL_1', 'LABEL_0'\]"
    with pytest.raises(DistilleryError, match=f"label order {order}"):
        distill.task_distill(store, "train", cfg, tmp_path / "run")
    with pytest.raises(DistilleryError, match=order):            # the logits carried by the training version itself
        distill.task_distill(store, "train-logits", dataclasses.replace(cfg, logits_ref=""), tmp_path / "run")
    make_version(store, [{"text": "row", "label": "LABEL_0", "teacher_logits": [0.0, 1.0]}], name="foreign",
                 config={"foreign": 1})
    with pytest.raises(DistilleryError, match=r"not recorded"):
        distill.task_distill(store, "train", dataclasses.replace(cfg, teacher=str(classifier), logits_ref="foreign"),
                             tmp_path / "run")
    assert not (tmp_path / "run").exists()                        # refused before any run folder was made


# ---- the TextCNN ignores padding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["textcnn", "bilstm"])
def test_a_sentence_gets_the_same_logits_alone_and_beside_a_longer_one(kind):
    vectors = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))      # row 0 = [PAD], not zero
    model = build_student_model(kind, 30, vectors, {"hidden_size": 6}, {"num_labels": 3}, seed=0).eval()
    short, long = [5, 6, 7], [3, 4, 8, 9, 10, 11, 12, 13, 14]
    alone = model(torch.tensor([short]), torch.ones(1, 3, dtype=torch.long)).logits
    batch = torch.tensor([short + [0] * 6, long])
    mask = (torch.arange(9) < torch.tensor([[3], [9]])).long()
    beside = model(batch, mask).logits
    torch.testing.assert_close(beside[0], alone[0], rtol=0, atol=1e-5)


# ---- the ablation: best student by dev, a score cache that knows the evaluation -----------------------------------
def test_the_best_student_is_picked_on_dev_and_reported_on_test():
    from distillery.recipes.ablation import best_student
    from distillery.recipes.ablation_report import best_line

    def row(dev: float, test: float) -> dict:
        return {"dev_accuracy": {"mean": dev}, "accuracy": {"mean": test}, "accuracy_vs_teacher": test / 0.9}
    table = {"teacher": row(0.95, 0.9), "task": row(0.80, 0.86), "task-aug": row(0.82, 0.83)}
    best = best_student(table)
    assert best["student"] == "task-aug" and best["test_accuracy"] == 0.83 and best["dev_accuracy"] == 0.82
    assert "task-aug" in best_line(best) and "dev accuracy" in best_line(best)
    assert best_student({"teacher": row(0.9, 0.9)}) is None


def test_the_score_cache_scores_again_when_the_evaluation_changes(store, make_version, classifier, tmp_path,
                                                                  monkeypatch):
    from distillery.recipes import ablation

    model_dir = distillery_model(tmp_path / "m", classifier, trained_at=16)
    rows = [{"text": (LONG if i % 2 else "") + f" row {i}", "label": f"LABEL_{i % 2}"} for i in range(6)]
    make_version(store, rows, name="test", config={"test": 1})
    make_version(store, rows[:4], name="dev", config={"dev": 1})
    cfgs = ablation.load_experiment(CONFIGS_DIR / "ablation_quick.toml")
    cfgs = dataclasses.replace(cfgs, experiment=dataclasses.replace(cfgs.experiment, seeds=(1,),
                                                                    latency_sentences=2))
    x = ablation.Experiment(store, cfgs, tmp_path / "out", ablation.Clock(tmp_path / "clock.json"),
                            names={"test": "test", "dev": "dev"}, teacher=model_dir,
                            runs={"equal-steps": {"direct": {1: model_dir}}})
    (tmp_path / "out").mkdir()
    calls = []
    real = ablation.evaluate
    monkeypatch.setattr(ablation, "evaluate", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    ablation.score_models(x)
    assert sorted(calls) == ["dev", "test"]
    row = x.tables["equal-steps"]["direct"]
    assert row["max_seq_length"] == 16 and 0 <= row["dev_accuracy"]["mean"] <= 1
    ablation.score_models(x)
    assert len(calls) == 2                                          # same model, versions, config, rules: cached
    set_training_length(model_dir, 32)                              # the length the model is scored at changes
    ablation.score_models(x)
    assert len(calls) == 4 and x.tables["equal-steps"]["direct"]["max_seq_length"] == 32
    x.cfgs = dataclasses.replace(cfgs, evaluate=EvaluateConfig(max_seq_length=8))
    ablation.score_models(x)
    assert len(calls) == 6 and x.tables["equal-steps"]["direct"]["max_seq_length"] == 8
