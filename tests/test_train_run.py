"""The one training skeleton (``distill.train_run``): a mode is its objective and its spec, nothing else; what the
skeleton promises every mode (a finished run recorded and reused, other settings refused, exact resume, the model
saved with its card elsewhere when asked) is tested here once, on a mode that exists only in this file; the one
frozen-teacher helper keeps every objective's teacher out of training."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from distill.api import ClassifierRows
from distill.config import FinetuneConfig, TrainConfig
from distill.matches import Match, MatchSet
from distill.mlm import DistilBertObjective, MaskedLMObjective
from distill.objective import FrozenTeacher, Objective
from distill.runs import FINISHED
from distill.train_run import Built, RunSpec, train_run
from distill.trainer import Runtime, Trainer
from pipelines.errors import DistilleryError

LABELS = {"num_labels": 2, "id2label": {0: "no", 1: "yes"}, "label2id": {"no": 0, "yes": 1},
          "problem_type": "single_label_classification"}


class Crash(Exception):
    pass


class CrossEntropy(nn.Module):
    """A mode's whole objective: the gold labels' cross-entropy, computed here (no matches, no teacher)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(logits.float(), batch["labels"])
        return loss, {"ce": loss.detach()}


@dataclass(kw_only=True)
class CrossEntropyRun(RunSpec):
    """A mode that exists only in this test: its spec and its objective."""

    rows: ClassifierRows
    smoothing: str = "none"              # a setting outside the config: part of the run's identity

    def settings(self) -> dict[str, str]:
        return {"smoothing": self.smoothing}

    def build(self, runtime: Runtime) -> Built:
        model = AutoModelForSequenceClassification.from_pretrained(self.base, **self.rows.labels)
        return Built(CrossEntropy(model), model, self.base, {"objective": "cross-entropy"})


@pytest.fixture
def data(store, make_version):
    words = "the cat sat on a mat while dogs ran far away".split()
    rows = [{"text": " ".join(words[i % 5: i % 5 + 3]), "label": "yes" if i % 2 else "no", "row_id": i}
            for i in range(20)]
    make_version(store, rows, name="train", chunk_rows=8)
    make_version(store, rows[:6], name="dev", chunk_rows=8, config={"dev": True})
    return store


@pytest.fixture(scope="module")
def base(tiny_bert_factory):
    return str(tiny_bert_factory(layers=1, hidden=16, heads=2, num_labels=2, with_mlm_head=False))


def spec(store, base: str, output_dir: Path, **fields) -> CrossEntropyRun:
    cfg = TrainConfig(batch_size=4, max_steps=4, log_every=1, checkpoint_every=1, num_workers=0, lr=1e-3,
                      eval_ref="dev", eval_every=2, device="cpu", threads=1)
    return CrossEntropyRun(**{"mode": "cross-entropy", "title": "cross-entropy", "store": store, "train_ref": "train",
                              "config": cfg, "output_dir": output_dir, "base": base, "rows": ClassifierRows(LABELS),
                              **fields})


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_mode_written_as_a_spec_and_an_objective_trains_saves_and_is_reused(data, base, tmp_path):
    run = train_run(spec(data, base, tmp_path / "run"))
    records = lines(tmp_path / "run")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(set(r["parts"]) == {"ce"} for r in records if "loss" in r)
    assert [r["step"] for r in records if "eval" in r] == [2, 4] and records[-1]["eval"]["rows"] == 6
    assert run.path == tmp_path / "run" / "model" and not run.up_to_date
    assert run.scores["rows"] == 6 and "step" not in run.scores
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mode"] == "cross-entropy" and config["objective"] == "cross-entropy"
    assert config["model"] == base and config["train_version"] == data.resolve("train")
    finished = json.loads((tmp_path / "run" / FINISHED).read_text())
    assert finished["model"] == "model" and finished["run"]["smoothing"] == "none"
    assert finished["run"]["mode"] == "cross-entropy" and finished["run"]["model"] == base
    card = json.loads((run.path / "card.json").read_text())
    assert card["mode"] == "cross-entropy" and card["base"] == base and card["teacher"] is None
    assert "cross-entropy" in (run.path / "README.md").read_text()
    assert not (tmp_path / "run" / "checkpoints").exists()             # pruned once the run is recorded
    again = train_run(spec(data, base, tmp_path / "run"))
    assert again.up_to_date and again.path == run.path and again.scores == run.scores
    with pytest.raises(DistilleryError, match="other settings \\(smoothing\\)"):
        train_run(spec(data, base, tmp_path / "run", smoothing="0.1"))


def test_an_interrupted_run_resumes_to_the_same_losses_and_weights(data, base, tmp_path, monkeypatch):
    full = train_run(spec(data, base, tmp_path / "full"))

    def crash_after_2(self: Trainer) -> None:
        if self.step == 2:
            raise Crash
    monkeypatch.setattr(Trainer, "after_step", crash_after_2)
    with pytest.raises(Crash):
        train_run(spec(data, base, tmp_path / "cut"))
    monkeypatch.undo()
    with pytest.raises(DistilleryError, match="already holds a run"):
        train_run(spec(data, base, tmp_path / "cut"))
    resumed = train_run(spec(data, base, tmp_path / "cut"), resume=True)
    assert lines(tmp_path / "cut") == lines(tmp_path / "full")
    assert (resumed.path / "model.safetensors").read_bytes() == (full.path / "model.safetensors").read_bytes()


def test_a_model_saved_beside_the_run_folder_is_found_again(data, base, tmp_path):
    card_config = FinetuneConfig(model=base, max_steps=4)
    made = spec(data, base, tmp_path / "stage", model_dir=tmp_path / "final", card_config=card_config)
    run = train_run(made)
    assert run.path == tmp_path / "final" and not (tmp_path / "stage" / "model").exists()
    assert json.loads((run.path / "card.json").read_text())["training"]["model"] == base   # the card's config
    assert train_run(made).up_to_date


def frozen_teacher_objectives(tiny_bert_factory, tiny_mlm_dir) -> list[tuple[FrozenTeacher, nn.Module]]:
    """(objective, its teacher) for each objective with a teacher, every teacher handed in training."""
    classifier = tiny_bert_factory(layers=1, hidden=16, heads=2, num_labels=2)
    student, teacher = (AutoModelForSequenceClassification.from_pretrained(classifier).train() for _ in range(2))
    matches = MatchSet([Match("logits", "soft_ce")], 16, 16)
    student_lm, teacher_lm = (AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).train() for _ in range(2))
    return [(Objective(student, matches, teacher), teacher),
            (DistilBertObjective(student_lm, teacher_lm, kl=1.0, mlm=1.0, cosine=1.0, temperature=2.0), teacher_lm)]


def test_every_teacher_stays_frozen_and_out_of_the_objective(tiny_bert_factory, tiny_mlm_dir):
    for objective, teacher in frozen_teacher_objectives(tiny_bert_factory, tiny_mlm_dir):
        assert isinstance(objective, FrozenTeacher) and objective.teacher is teacher
        for toggle in (objective.train, objective.eval, objective.train):
            toggle()
            assert not teacher.training and not any(m.training for m in teacher.modules())
            assert not any(p.requires_grad for p in teacher.parameters())
        teacher_tensors = {p.data_ptr() for p in teacher.parameters()}
        assert not teacher_tensors & {p.data_ptr() for p in objective.parameters()}
        assert not teacher_tensors & {t.data_ptr() for t in objective.state_dict().values()}
        assert objective.to("cpu") is objective and objective.teacher is teacher


def test_an_objective_without_a_teacher_holds_none(tiny_mlm_dir):
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    objective = Objective(model, MatchSet([Match("labels", "hard")], 32, 32))
    assert objective.teacher is None and objective.to("cpu") is objective
    assert not isinstance(MaskedLMObjective(AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)), FrozenTeacher)
