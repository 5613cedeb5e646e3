"""Transfer sets of several sources (`distill task --mix REF=SHARE`): every batch holds each source's share of its
rows, the same at any worker count and after a resume; a source may take an augmented version's copies only; an
unlabelled version trains a task-distilled student (the teacher labels it) and is refused where gold labels are
needed."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import distill
from distill import FinetuneConfig, TaskDistillConfig
from distill.api import training_stream
from distill.config import MixSource
from distill.data import make_loader
from distill.trainer import Runtime
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from tests.conftest import write_version

LABELS = {"label2id": {"a": 0, "b": 1}, "num_labels": 2}


@pytest.fixture
def sources(store):
    """A labelled version ``orig`` (30 rows), an "augmented" one ``aug`` (its 30 originals, aug_copy = 0, and 90
    copies) and unlabelled text ``plain`` (100 rows); every text says where it comes from."""
    write_version(store, [{"text": f"orig {i}", "label": "ab"[i % 2], "row_id": i} for i in range(30)],
                  name="orig", chunk_rows=7)
    write_version(store, [{"text": f"{'orig' if c == 0 else 'copy'} {i} {c}", "label": "ab"[i % 2], "row_id": i,
                           "aug_copy": c} for i in range(30) for c in range(4)], name="aug", chunk_rows=11,
                  config={"aug": 1})
    write_version(store, [{"text": f"plain {i}", "row_id": i} for i in range(100)], name="plain", chunk_rows=9,
                  config={"plain": 1})
    return store


def stream(store, tokenizer, mix, batch_size=8, seed=3):
    cfg = TaskDistillConfig(teacher="t", batch_size=batch_size, seed=seed, max_seq_length=16, mix=mix)
    return training_stream(store, "orig", tokenizer, cfg, LABELS, Runtime(torch.device("cpu")))


def texts(batch, tokenizer) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]


def test_every_batch_holds_each_source_at_its_share(sources, tiny_bert_factory):
    from transformers import AutoTokenizer

    path = tiny_bert_factory(layers=1, hidden=16, heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    mixed = stream(sources, path, [{"ref": "aug", "share": 0.25, "copies_only": True}, {"ref": "plain", "share": 0.5}])
    assert mixed.num_rows == 200                      # one pass over the largest source: 100 plain rows / 0.5
    batches = list(make_loader(mixed))
    assert len(batches) == mixed.num_batches == 25
    counts = {"orig": 0, "copy": 0, "plain": 0}
    for batch in batches:
        kinds = [t.split()[0] for t in texts(batch, tok)]
        if len(kinds) == 8:                            # each full batch: 2 + 2 + 4 rows
            assert (kinds.count("orig"), kinds.count("copy"), kinds.count("plain")) == (2, 2, 4)
        for kind in kinds:
            counts[kind] += 1
        labels = batch["labels"].tolist()
        assert all((label == -100) == (kind == "plain") for label, kind in zip(labels, kinds))
    assert counts == {"orig": 50, "copy": 50, "plain": 100}
    # the plain source is passed once, each of its rows once; the 30 originals recur (a second pass, new order)
    plain = [t for b in batches for t in texts(b, tok) if t.startswith("plain")]
    assert sorted(plain) == sorted(f"plain {i}" for i in range(100))
    copies = [t for b in batches for t in texts(b, tok) if t.startswith("copy")]
    assert all(not t.endswith(" 0") for t in copies)  # copies_only: never an original of the augmented version

    # the same batches with 2 workers, and from a resume point
    two = [b for b in make_loader(stream(sources, path, mixed_mix(mixed)), num_workers=2)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, two)) and len(two) == 25
    again = stream(sources, path, mixed_mix(mixed))
    again.load_state_dict({**mixed.state_dict(), "epoch": 0, "position": 5, "workers": 1})
    rest = list(make_loader(again))
    assert len(rest) == 20 and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches[5:], rest))
    other = list(make_loader(stream(sources, path, mixed_mix(mixed), seed=4)))
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other))


def mixed_mix(_stream) -> list[dict]:
    return [{"ref": "aug", "share": 0.25, "copies_only": True}, {"ref": "plain", "share": 0.5}]


def test_mix_options_are_checked_in_one_line(sources, tiny_bert_factory):
    with pytest.raises(DistilleryError, match=r"'mix': the shares add up to 1: .*sum < 1"):
        TaskDistillConfig(teacher="t", mix=[{"ref": "aug", "share": 0.5}, {"ref": "plain", "share": 0.5}])
    with pytest.raises(DistilleryError, match=r"'mix\[0\].share': must be < 1"):
        TaskDistillConfig(teacher="t", mix=[{"ref": "aug", "share": 1.5}])
    with pytest.raises(DistilleryError, match=r"'mix\[0\].weight': unknown key"):
        TaskDistillConfig(teacher="t", mix=[{"ref": "aug", "weight": 0.5}])
    assert MixSource.from_flag("ns/aug@v1=0.3:copies") == {"ref": "ns/aug@v1", "share": 0.3, "copies_only": True}
    with pytest.raises(DistilleryError, match="is not REF=SHARE"):
        MixSource.from_flag("aug:0.3")
    path = tiny_bert_factory(layers=1, hidden=16, heads=2)
    with pytest.raises(DistilleryError, match="copies_only, but the version has no 'aug_copy' column"):
        stream(sources, path, [{"ref": "plain", "share": 0.5, "copies_only": True}])


def test_unlabelled_text_trains_a_task_distilled_student_and_finetune_refuses_it(sources, tiny_bert_factory,
                                                                                 tmp_path, one_torch_thread):
    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    teacher = distill.finetune(sources, "orig", FinetuneConfig(model=base, max_steps=3, batch_size=8, num_workers=0),
                               tmp_path / "teacher").path
    with pytest.raises(DistilleryError, match="version plain has no 'label' column to fine-tune on"):
        distill.finetune(sources, "plain", FinetuneConfig(model=base, max_steps=2, num_workers=0), tmp_path / "x")
    common = {"teacher": str(teacher), "student_layers": 1, "student_init": "teacher", "batch_size": 8,
              "num_workers": 0, "max_seq_length": 16, "eval_ref": "orig"}
    alone = distill.task_distill(sources, "plain", TaskDistillConfig(**common, max_steps=2), tmp_path / "alone")
    assert alone.scores["rows"] == 30                 # the teacher's targets on unlabelled rows; scored on orig
    runner = CliRunner()
    result = runner.invoke(cli, ["--store", str(sources.root), "distill", "task", "orig", "--teacher", str(teacher),
                                 "--mix", "plain=0.5", "--mix", "aug=0.25:copies", "--student-layers", "1",
                                 "--student-init", "teacher", "--batch-size", "8", "--num-workers", "0",
                                 "--max-steps", "3", "--max-seq-length", "16", "--output", str(tmp_path / "mixed")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    import json

    config = json.loads((tmp_path / "mixed" / "stage2" / "config.json").read_text())
    mix = config["config"]["mix"]
    assert [(m["share"], m["copies_only"]) for m in mix] == [(0.5, False), (0.25, True)]
    card = (tmp_path / "mixed" / "model" / "README.md").read_text()
    assert "plain" in card and "aug" in card


def test_the_gap_check_warns_when_the_teacher_hardly_beats_the_direct_student():
    from distill.metrics import gap_check
    from distillery.recipes.ablation_report import gap_check_line

    close = gap_check(0.80, [0.78, 0.79, 0.80], "accuracy")          # gap 1 point, twice the std 2 points
    assert close["warning"] and close["threshold"] == pytest.approx(0.02)
    assert "WARNING: under twice the direct students' std over 3 seeds, 2.0" in gap_check_line(close)
    clear = gap_check(0.90, [0.70, 0.71], "accuracy")
    assert not clear["warning"] and "gap +19.5 points (over twice" in gap_check_line(clear)
    one = gap_check(0.805, [0.80], "f1")                               # one seed: under 1 point
    assert one["warning"] and "1 point (one seed: no spread)" in gap_check_line(one)


PIPELINE = """
[inputs]
train_file = "train.jsonl"

[stages.train]
step = "preprocess"
inputs = ["@train_file"]
input = {{ label_column = "label" }}

[stages.teacher]
step = "finetune"
data = "@train"
model = "{base}"
eval_ref = "@train"
max_steps = 2
batch_size = 4
num_workers = 0

[stages.direct]                       # the same student trained on the labels: the very same model
step = "finetune"
data = "@train"
model = "{base}"
eval_ref = "@train"
max_steps = 2
batch_size = 4
num_workers = 0

[stages.student]
step = "task"
data = "@train"
teacher = "@teacher"
student_layers = 1
student_init = "teacher"
max_steps = 2
batch_size = 4
num_workers = 0
"""


def test_a_pipeline_says_the_gap_as_soon_as_teacher_and_direct_student_exist(tmp_path, tiny_bert_factory,
                                                                               one_torch_thread):
    import json

    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"{w} {i}", "label": w[0]}) + "\n"
                                                  for i, w in enumerate(["apple", "banana"] * 6)))
    (tmp_path / "p.toml").write_text(PIPELINE.format(base=base))
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "run", str(tmp_path / "p.toml")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    line = next(line for line in result.output.splitlines() if line.startswith("teacher vs direct: gap check"))
    assert "gap +0.0 points; WARNING: under 1 point (one seed: no spread)" in line
    assert result.output.index(line) < result.output.index("stage student (task)")    # before the distillation
