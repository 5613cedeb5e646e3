"""BiLSTM and TextCNN students (train, exact resume, save / load, evaluate) and deployment copies (int8, ONNX)."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_distill_train import LABELS, crash_at_step_8, losses_of, rows
from transformers import AutoTokenizer

import distill
from distill import CacheLogitsConfig, checkpoint
from distill.config import ExportConfig, TaskDistillConfig
from distill.export import load_int8
from distill.students import load_student_model, reverse_within
from pipelines.errors import DistilleryError
from pipelines.runner import run_step


@pytest.fixture(scope="module")
def teacher(tiny_bert_factory):
    return str(tiny_bert_factory(layers=2, hidden=32, heads=2, num_labels=3, seed=1))


@pytest.fixture
def data(store, make_version, teacher):
    make_version(store, rows(42), name="train", chunk_rows=10)
    make_version(store, rows(12, offset=1), name="dev", chunk_rows=5, config={"dev": True})
    run_step(store, distill.plan_teacher_logits(store, "train", teacher, CacheLogitsConfig()), "train-logits")
    return store


def student_cfg(teacher, kind, embeddings, **kw):
    base = dict(teacher=teacher, student=kind, student_hidden=8, student_embeddings=embeddings, stage2_epochs=2,
                stage2_lr=1e-2, batch_size=4, grad_accum=2, log_every=1, checkpoint_every=3, num_workers=0,
                warmup=2, logits_ref="train-logits", eval_ref="dev", prune_checkpoints=False)
    return TaskDistillConfig(**{**base, **kw})


@pytest.mark.parametrize("kind, embeddings, loss", [("bilstm", "teacher", "mse"), ("textcnn", "glove", "soft_ce")])
def test_student_trains_resumes_exactly_saves_and_evaluates(data, teacher, tmp_path, monkeypatch, one_torch_thread,
                                                            kind, embeddings, loss):
    cfg = student_cfg(teacher, kind, embeddings, prediction_loss=loss)
    full = distill.task_distill(data, "train", cfg, tmp_path / "full")
    expected = losses_of(tmp_path / "full" / "stage2")
    assert [s for s, *_ in expected] == list(range(1, 13))          # 11 batches, accum 2 -> 6 steps x 2 epochs
    assert set(expected[0][2]) == {f"logits_{'logits_mse' if loss == 'mse' else 'soft_ce'}"}
    assert not (tmp_path / "full" / "stage1").exists()              # no intermediate layers to distil

    crash_at_step_8(monkeypatch, lambda: distill.task_distill(data, "train", cfg, tmp_path / "cut"))
    resumed = distill.task_distill(data, "train", cfg, tmp_path / "cut", resume=True)
    assert losses_of(tmp_path / "cut" / "stage2") == expected
    a, b = load_file(full.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    model = load_student_model(full.path)
    assert model.config.model_type == f"distillery-{kind}" and model.config.id2label == dict(enumerate(LABELS))
    state = checkpoint.load(checkpoint.latest(tmp_path / "full" / "stage2" / "checkpoints"))["objective"]
    fresh = type(model)(model.config).eval()
    fresh.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    batch = AutoTokenizer.from_pretrained(full.path)(["the cat sat", "dogs ran far away"], padding=True,
                                                     return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, fresh(**batch).logits, rtol=0, atol=0)
    vocab = AutoTokenizer.from_pretrained(full.path).get_vocab()
    assert ("mat" in vocab and len(vocab) < 30) if embeddings == "glove" else len(vocab) > 30_000
    card = (full.path / "README.md").read_text()
    assert ("BiLSTM" if kind == "bilstm" else "TextCNN") in card and "load_student_model" in card
    scores = distill.evaluate(data, "dev", full.path)
    final = [json.loads(x)["eval"] for x in (tmp_path / "full" / "stage2" / "metrics.jsonl").read_text().splitlines()
             if "eval" in x][-1]
    assert scores["accuracy"] == pytest.approx(final["accuracy"]) and scores["rows"] == 12


def test_bilstm_logits_do_not_depend_on_padding(one_torch_thread):
    from distill.students import build_student_model

    model = build_student_model("bilstm", 50, torch.randn(50, 6), {"hidden_size": 5, "num_hidden_layers": 2},
                                {"num_labels": 3}, seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits[0]
        alone = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits[0]
    torch.testing.assert_close(padded, alone)
    x = torch.arange(10.).view(2, 5, 1)
    assert reverse_within(x, torch.tensor([3, 5]))[:, :, 0].tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]


@pytest.fixture
def bilstm(data, teacher, tmp_path, one_torch_thread):
    cfg = student_cfg(teacher, "bilstm", "glove", stage2_epochs=1, student_hidden=16)
    return distill.task_distill(data, "train", cfg, tmp_path / "bilstm").path


def test_students_refuse_what_they_cannot_do(data, teacher, bilstm, tmp_path):
    with pytest.raises(DistilleryError, match="no intermediate layers"):
        distill.task_distill(data, "train", student_cfg(teacher, "bilstm", "teacher", stage="1"), tmp_path / "a")
    with pytest.raises(DistilleryError, match="--logits-ref"):
        distill.task_distill(data, "train", student_cfg(teacher, "bilstm", "glove", logits_ref=""), tmp_path / "b")
    with pytest.raises(DistilleryError, match="reads other tokens than the teacher"):    # its own word vocabulary
        distill.task_distill(data, "train", student_cfg(teacher, str(bilstm), "teacher", stage="2", logits_ref=""),
                             tmp_path / "c")
    with pytest.raises(DistilleryError, match="from logits .and labels. only"):
        distill.task_distill(data, "train", student_cfg(teacher, str(bilstm), "teacher", stage="1"), tmp_path / "d")


def test_int8_and_onnx_copies_agree_with_fp32(data, teacher, bilstm, tmp_path, one_torch_thread):
    onnxruntime = pytest.importorskip("onnxruntime")
    for model_dir in (bilstm, teacher):
        result = distill.export_model(data, model_dir, ExportConfig(check_ref="dev"))
        for name in ("int8", "onnx"):
            assert result[name]["rows"] == 12 and result[name]["agreement"] >= 0.9
        assert result["onnx"]["max_abs_diff"] < 1e-4 and result["int8"]["max_abs_diff"] < 0.1
    assert "Deployment copies" in (bilstm / "README.md").read_text()      # a distillery model's card says so
    assert json.loads((bilstm / "exports.json").read_text())["onnx"]["path"] == "onnx/model.onnx"
    # both copies load back on their own and give the logits the check measured
    tokenizer = AutoTokenizer.from_pretrained(bilstm)
    texts = ["the cat sat on a mat", "dogs ran"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    session = onnxruntime.InferenceSession(str(bilstm / "onnx" / "model.onnx"))
    feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    with torch.no_grad():
        fp32 = load_student_model(bilstm)(**batch).logits
        int8 = load_int8(bilstm)(**batch).logits
    torch.testing.assert_close(torch.from_numpy(session.run(None, feed)[0]), fp32, rtol=1e-4, atol=1e-4)
    assert (int8 - fp32).abs().max() < 0.1
    assert "DynamicQuantizedLSTM" in repr(load_int8(bilstm))


def test_export_refuses_a_folder_that_is_not_a_model(data, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(DistilleryError, match="is not a saved model"):
        distill.export_model(data, tmp_path / "run", ExportConfig(check_ref="dev"))


def test_export_model_cli(data, bilstm, tmp_path):
    from distillery.cli.main import cli

    result = CliRunner().invoke(cli, ["--store", str(data.root), "export-model", str(bilstm.parent), "--int8"],
                                catch_exceptions=False)       # the run folder means its model; checked on its dev
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"export-model: {bilstm}") and "int8/model.pt" in result.output
    assert "onnx" not in result.output and not (bilstm / "onnx").exists()
    bad = CliRunner().invoke(cli, ["--store", str(data.root), "export-model", str(tmp_path / "bilstm" / "stage2"),
                                   "--onnx"])
    assert bad.exit_code == 1 and isinstance(bad.exception, DistilleryError)
