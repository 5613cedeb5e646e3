"""Training runs on tiny models: exact resume, non-finite losses, saved students, evaluation, logit caching, CLI."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import damage_shard
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

import distill
from distill import CacheLogitsConfig, checkpoint, losses
from distill.config import DistillConfig, FinetuneConfig, TaskDistillConfig
from distill.metrics import classification_metrics, regression_metrics
from distill.trainer import Trainer
from pipelines.errors import DistilleryError
from pipelines.runner import run_step

WORDS = "the cat sat on a mat while dogs ran far away from home in rain and sun".split()
LABELS = ["LABEL_0", "LABEL_1", "LABEL_2"]
STUDENT = dict(student="custom", student_layers=2, student_hidden=16, student_heads=2, student_intermediate=32)


def rows(n, offset=0):
    return [{"text": " ".join(WORDS[(i * 5) % 7: (i * 5) % 7 + 2 + i % 9]), "label": LABELS[(i + offset) % 3],
             "row_id": i} for i in range(n)]


@pytest.fixture
def data(store, make_version):
    make_version(store, rows(42), name="train", chunk_rows=10)
    make_version(store, rows(12, offset=1), name="dev", chunk_rows=5, config={"dev": True})
    return store


@pytest.fixture(scope="module")
def teacher(tiny_bert_factory):
    return str(tiny_bert_factory(layers=4, hidden=32, heads=2, num_labels=3, seed=1))


def losses_of(run_dir):
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["parts"], r["lr"]) for r in lines if "loss" in r]


def general_cfg(teacher, **kw):
    base = dict(teacher=teacher, **STUDENT, epochs=2, batch_size=4, grad_accum=2, lr=1e-3, log_every=1,
                checkpoint_every=3, num_workers=0, warmup=2)
    base.update(kw)
    return DistillConfig(**base)


class Crash(Exception):
    pass


def crash_at_step_8(monkeypatch, train) -> None:
    """Run ``train`` with the trainer raising after optimizer step 8 (checkpoints every 3 steps: 3 and 6)."""
    def crash_after_8(self):
        if self.step == 8:
            raise Crash
    monkeypatch.setattr(Trainer, "after_step", crash_after_8)
    with pytest.raises(Crash):
        train()
    monkeypatch.undo()


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_crash_gives_identical_losses(data, teacher, tmp_path, monkeypatch, workers):
    cfg = general_cfg(teacher, num_workers=workers)
    full = distill.general_distill(data, "train", cfg, tmp_path / "full")
    expected = losses_of(tmp_path / "full")
    assert [s for s, *_ in expected] == list(range(1, 13))     # 11 batches, accum 2 -> 6 steps x 2 epochs

    crash_at_step_8(monkeypatch, lambda: distill.general_distill(data, "train", cfg, tmp_path / "cut"))
    assert checkpoint.latest(tmp_path / "cut" / "checkpoints").name == "step-00000006.pt"   # mid second epoch
    assert max(s for s, *_ in losses_of(tmp_path / "cut")) == 8
    with pytest.raises(DistilleryError, match="--resume"):
        distill.general_distill(data, "train", cfg, tmp_path / "cut")
    resumed = distill.general_distill(data, "train", cfg, tmp_path / "cut", resume=True)
    assert losses_of(tmp_path / "cut") == expected
    a, b = load_file(full.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class RunsCode:
    """A pickle that runs code when unpickled (what a crafted checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_previous_one_resumes(data, teacher, tmp_path,
                                                                                  monkeypatch, capsys):
    cfg = general_cfg(teacher)
    distill.general_distill(data, "train", cfg, tmp_path / "full")

    crash_at_step_8(monkeypatch, lambda: distill.general_distill(data, "train", cfg, tmp_path / "cut"))
    folder = tmp_path / "cut" / "checkpoints"
    assert [p.name for p in checkpoint.saved(folder)] == ["step-00000006.pt", "step-00000003.pt"]
    marker = tmp_path / "pwned"
    torch.save({"step": 6, "config": {}, "objective": RunsCode(marker)}, folder / "step-00000006.pt")
    with pytest.raises(DistilleryError, match="step-00000006.pt: damaged, or not a distillery checkpoint"):
        checkpoint.load(folder / "step-00000006.pt")
    distill.general_distill(data, "train", cfg, tmp_path / "cut", resume=True)
    assert not marker.exists()                                          # nothing in the file ran
    assert "step-00000006.pt: damaged, or not a distillery checkpoint" in capsys.readouterr().err
    assert losses_of(tmp_path / "cut") == losses_of(tmp_path / "full")  # resumed from step 3, same losses


def test_a_run_whose_checkpoints_are_all_unreadable_says_so(data, teacher, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step-00000002.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DistilleryError, match="no checkpoint in .* can be read .1 tried."):
        distill.general_distill(data, "train", general_cfg(teacher), tmp_path / "run", resume=True)


def test_a_finished_run_is_reused_and_other_settings_refused(data, teacher, tmp_path):
    from distillery.cli.main import cli

    args = ["--store", str(data.root), "distill", "general", "train", "--output", str(tmp_path / "run"),
            "--teacher", teacher, "--student", "custom", "--student-layers", "1", "--student-hidden", "16",
            "--student-heads", "2", "--student-intermediate", "32", "--max-steps", "2", "--num-workers", "0"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0 and first.stdout.startswith("general: trained"), first.output
    weights = tmp_path / "run" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert not (tmp_path / "run" / "checkpoints").exists()          # a finished run keeps its model, not its state
    again = CliRunner().invoke(cli, [*args, "--num-workers", "1", "--log-every", "5"], catch_exceptions=False)
    assert again.exit_code == 0 and again.stdout.startswith("general: up to date"), again.output
    assert weights.stat().st_mtime_ns == stamp
    other = CliRunner().invoke(cli, [*args, "--lr", "1e-3"])
    assert other.exit_code != 0 and "other settings (config.lr)" in str(other.exception)


def test_resume_refuses_other_settings(data, teacher, tmp_path, monkeypatch):
    cfg = general_cfg(teacher, max_steps=2, checkpoint_every=1)
    distill.general_distill(data, "train", cfg, tmp_path / "run")
    with pytest.raises(DistilleryError, match="other settings"):
        distill.general_distill(data, "train", general_cfg(teacher, max_steps=2, lr=0.5), tmp_path / "run",
                                resume=True)


def test_resume_after_sigkill_of_the_cli(data, teacher, tmp_path):
    flags = ["--teacher", teacher, "--student", "custom", "--student-layers", "2", "--student-hidden", "16",
             "--student-heads", "2", "--student-intermediate", "32", "--max-steps", "40", "--batch-size", "4",
             "--grad-accum", "2", "--lr", "1e-3", "--log-every", "1", "--checkpoint-every", "3",
             "--num-workers", "0", "--warmup", "2"]
    cmd = [sys.executable, "-m", "distillery", "--store", str(data.root), "distill", "general", "train", *flags,
           "--output", str(tmp_path / "killed")]
    env = {**os.environ, "DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not list(checkpoints.glob("step-*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"
    subprocess.run([*cmd, "--resume"], env=env, check=True, stderr=subprocess.DEVNULL)
    distill.general_distill(data, "train", general_cfg(teacher, max_steps=40), tmp_path / "whole")
    assert losses_of(tmp_path / "killed") == losses_of(tmp_path / "whole")


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_nonfinite_losses_are_skipped_counted_and_stop_the_run(data, teacher, tmp_path, monkeypatch):
    real = losses.hidden_mse
    calls = {"n": 0}

    def flaky(student, teacher_):
        calls["n"] += 1
        value = real(student, teacher_)
        return value * float("nan") if calls["n"] in (7, 20) else value
    monkeypatch.setattr(losses, "hidden_mse", flaky)
    model = distill.general_distill(data, "train", general_cfg(teacher, epochs=1, max_nonfinite=5), tmp_path / "a")
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "loss" not in r]
    assert [r["nonfinite"] for r in skipped] == [1, 2] and records[-1]["nonfinite"] == 2
    weights = load_file(model.path / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())

    monkeypatch.setattr(losses, "hidden_mse", lambda s, t: real(s, t) * float("nan"))
    with pytest.raises(DistilleryError, match="3 steps had a non-finite loss"):
        distill.general_distill(data, "train", general_cfg(teacher, max_nonfinite=3), tmp_path / "b")


def test_task_distillation_saves_a_student_hf_loads_identically(data, teacher, tmp_path):
    cfg = TaskDistillConfig(teacher=teacher, **STUDENT, stage1_epochs=1, stage2_epochs=1, batch_size=8,
                            eval_ref="dev", num_workers=0, log_every=1, temperature=2.0, prune_checkpoints=False)
    model_dir = distill.task_distill(data, "train", cfg, tmp_path / "run").path
    assert model_dir == tmp_path / "run" / "model"
    for stage in ("stage1", "stage2"):
        for name in ("metrics.jsonl", "config.json", "loss.png"):
            assert (tmp_path / "run" / stage / name).exists()
    stage1_parts = losses_of(tmp_path / "run" / "stage1")[0][2]
    assert set(stage1_parts) == {"emb", "att1", "hid1", "att2", "hid2"}
    assert set(losses_of(tmp_path / "run" / "stage2")[0][2]) == {"logits_soft_ce"}
    assert "distill_raw" not in (model_dir / "config.json").read_text()
    loaded = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert loaded.config.id2label == dict(enumerate(LABELS)) and loaded.config.num_hidden_layers == 2
    # the final checkpoint's student weights, put into a freshly built model, give the same logits
    state = checkpoint.load(checkpoint.latest(tmp_path / "run" / "stage2" / "checkpoints"))["objective"]
    fresh = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir)).eval()
    fresh.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    batch = AutoTokenizer.from_pretrained(model_dir)(["the cat sat", "dogs ran far away"], padding=True,
                                                    return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, fresh(**batch).logits, rtol=0, atol=0)
    card = (model_dir / "README.md").read_text()
    assert teacher in card and data.resolve("train")[:12] in card and data.resolve("dev")[:12] in card
    assert "accuracy" in card
    scores = distill.evaluate(data, "dev", model_dir)
    final_eval = [json.loads(x) for x in (tmp_path / "run" / "stage2" / "metrics.jsonl").read_text().splitlines()
                  if "eval" in x][-1]["eval"]
    assert scores["accuracy"] == pytest.approx(final_eval["accuracy"]) and scores["rows"] == 12


def test_cached_logits_version_trains_stage2_without_teacher(data, teacher, tmp_path, monkeypatch):
    from distillery.cli.main import cli

    args = ["--store", str(data.root), "distill", "cache-logits", "train", teacher, "--name", "train-logits"]
    first, again = (CliRunner().invoke(cli, args, catch_exceptions=False) for _ in range(2))
    assert first.exit_code == 0 and first.stdout.startswith("teacher-logits: written"), first.output
    assert again.exit_code == 0 and again.stdout.startswith("teacher-logits: up to date"), again.output
    manifest = data.manifest("train-logits")
    assert manifest["step"] == "teacher-logits" and manifest["num_rows"] == 42
    assert manifest["parents"] == [{"version_id": data.resolve("train")}]
    again = run_step(data, distill.plan_teacher_logits(data, "train", teacher, CacheLogitsConfig()))
    assert again.up_to_date and again.manifest["version_id"] == manifest["version_id"]
    table = data.read_table("train-logits")
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    enc = AutoTokenizer.from_pretrained(teacher)(table.column("text").to_pylist()[:3], padding=True,
                                                 return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits
    torch.testing.assert_close(torch.tensor(table.column("teacher_logits").to_pylist()[:3]), expected,
                               rtol=1e-4, atol=1e-5)
    student = distill.task_distill(data, "train", TaskDistillConfig(teacher=teacher, **STUDENT, stage="1",
                                                                    stage1_epochs=1, batch_size=8, num_workers=0),
                                   tmp_path / "run")
    live = distill.task_distill(data, "train", TaskDistillConfig(teacher=teacher, student=str(student.path), stage="2",
                                                                 stage2_epochs=1, batch_size=8, num_workers=0,
                                                                 log_every=1), tmp_path / "live")

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher must not be loaded")
    monkeypatch.setattr(distill.api.models, "load_teacher", no_teacher)
    cached = distill.task_distill(data, "train", TaskDistillConfig(teacher=teacher, student=str(student.path),
                                                                   stage="2", stage2_epochs=1, batch_size=8,
                                                                   num_workers=0, log_every=1,
                                                                   logits_ref="train-logits"),
                                  tmp_path / "cached")
    a, b = losses_of(tmp_path / "live" / "stage2"), losses_of(tmp_path / "cached" / "stage2")
    assert [s for s, *_ in a] == [s for s, *_ in b] and len(a) == 6
    assert [x[1] for x in a] == pytest.approx([x[1] for x in b], rel=1e-4)
    assert live.path.name == cached.path.name == "model"


def test_finetune_then_evaluate_maps_labels_by_name(store, make_version, tiny_bert_factory, tmp_path):
    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    train = [{"text": f"{w} {w}", "label": w[0]} for w in ["apple", "banana", "cherry"] * 8]
    make_version(store, train, name="t", chunk_rows=8)
    make_version(store, [{"text": "cherry", "label": "c"}, {"text": "apple", "label": "a"},
                         {"text": "kiwi", "label": "k"}], name="e", chunk_rows=8, config={"e": 1})
    model_dir = distill.finetune(store, "t", FinetuneConfig(model=base, epochs=2, batch_size=4, lr=1e-3,
                                                            num_workers=0), tmp_path / "ft").path
    config = AutoConfig.from_pretrained(model_dir)
    assert config.label2id == {"a": 0, "b": 1, "c": 2}
    scores = distill.evaluate(store, "e", model_dir)
    assert scores["rows"] == 3 and scores["unknown_labels"] == 1          # the unknown label is an error
    assert set(scores) >= {"accuracy", "macro_f1", "matthews"}
    assert distill.evaluate(store, "e", tmp_path / "ft") == scores           # a run folder means its model
    with pytest.raises(DistilleryError, match="not a saved model"):
        distill.evaluate(store, "e", tmp_path)


def test_metrics_against_hand_computed_values():
    scores = classification_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert scores["matthews"] == pytest.approx(0.7)            # (3*4 - 5) / sqrt((16-6)(16-6))
    reg = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 8.0]))
    assert reg["spearman"] == pytest.approx(1.0)
    x, y = np.array([-1.0, 0.0, 1.0]), np.array([-3.0, -1.0, 4.0])   # centred
    assert reg["pearson"] == pytest.approx((x @ y) / math.sqrt((x @ x) * (y @ y)))


def test_cli_with_toml_config_and_overrides(data, teacher, tmp_path):
    from distillery.cli.main import cli

    toml = tmp_path / "task.toml"
    toml.write_text(f'teacher = "{teacher}"\nstudent = "custom"\nstudent_layers = 1\nstudent_hidden = 16\n'
                    f'student_heads = 2\nstudent_intermediate = 32\nbatch_size = 8\nnum_workers = 0\n'
                    f'stage1_epochs = 1.0\nstage2_epochs = 1.0\n'
                    f'[[matches]]\nfeature = "hidden"\nloss = "cosine"\nstudent_layer = 1\nteacher_layer = 4\n'
                    f'projection = "p"\n'
                    f'[[matches]]\nfeature = "logits"\nloss = "kl"\ntemperature = 2.0\n')
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli, ["--store", str(data.root), "distill", "task", "train", "--config", str(toml),
                                 "--output", str(out), "--batch-size", "16", "--eval-ref", "dev"])
    assert result.exit_code == 0, result.output
    assert "task: trained" in result.output and "model:" in result.output and "accuracy" in result.output
    recorded = json.loads((out / "stage1" / "config.json").read_text())
    assert recorded["config"]["batch_size"] == 16 and recorded["steps"] == 3     # 42 rows / 16
    assert [m["loss"] for m in recorded["matches"]] == ["cosine"]
    assert set(losses_of(out / "stage2")[0][2]) == {"logits_kl"}
    result = runner.invoke(cli, ["--store", str(data.root), "distill", "evaluate", "dev", str(out / "model")])
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 12, result.output


def test_regression_finetune_and_evaluate(store, make_version, tiny_bert_factory, tmp_path):
    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    rows_ = [{"text": " ".join(["good"] * k + ["bad"] * (4 - k)), "label": float(k)} for k in range(5)] * 4
    make_version(store, rows_, name="r", chunk_rows=10)
    model_dir = distill.finetune(store, "r", FinetuneConfig(model=base, epochs=1, batch_size=5, num_workers=0),
                                 tmp_path / "ft").path
    config = AutoConfig.from_pretrained(model_dir)
    assert config.num_labels == 1 and config.problem_type == "regression"
    scores = distill.evaluate(store, "r", model_dir)
    assert set(scores) >= {"pearson", "spearman", "mse"} and scores["rows"] == 20


def cli_group():
    from distillery.cli.main import cli

    return cli


def test_task_distillation_needs_a_fine_tuned_teacher(data, tiny_bert_factory, tmp_path):
    encoder = str(tiny_bert_factory(layers=2, hidden=16, heads=2, with_mlm_head=False))
    with pytest.raises(DistilleryError, match="not a fine-tuned sequence classifier"):
        distill.task_distill(data, "train", TaskDistillConfig(teacher=encoder, **STUDENT), tmp_path / "run")
    with pytest.raises(DistilleryError, match="'stage'.*not one of 1, 2, both"):
        distill.task_distill(data, "train", TaskDistillConfig(teacher=encoder, stage="3"), tmp_path / "run")
    with pytest.raises(DistilleryError, match="needs a fine-tuned teacher"):
        distill.task_distill(data, "train", TaskDistillConfig(), tmp_path / "run")
    with pytest.raises(DistilleryError, match="'epochs': task distillation has no single epochs"):
        TaskDistillConfig(teacher=encoder, epochs=3)
    with pytest.raises(DistilleryError, match="model '/nope': no such folder"):
        distill.task_distill(data, "train", TaskDistillConfig(teacher="/nope"), tmp_path / "run")
    task_help = CliRunner().invoke(cli_group(), ["distill", "task", "--help"]).output
    assert "--epochs " not in task_help and "--lr " not in task_help and "--stage1-epochs" in task_help


def test_student_initialised_from_teacher_layers(data, teacher, tmp_path):
    cfg = TaskDistillConfig(teacher=teacher, student="custom", student_layers=2, student_init="teacher", stage="1",
                            stage1_epochs=1, max_steps=1, stage1_lr=1e-12, batch_size=8, num_workers=0)
    student = AutoModelForSequenceClassification.from_pretrained(distill.task_distill(data, "train", cfg,
                                                                                      tmp_path / "run").path)
    reference = AutoModelForSequenceClassification.from_pretrained(teacher)
    assert student.config.hidden_size == reference.config.hidden_size == 32
    s, t = student.state_dict(), reference.state_dict()
    for m, g in enumerate([2, 4]):      # uniform map of 2 student layers onto 4 teacher layers
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        torch.testing.assert_close(s[key.format(m)], t[key.format(g - 1)], rtol=0, atol=1e-6)
    torch.testing.assert_close(s["bert.embeddings.word_embeddings.weight"],
                               t["bert.embeddings.word_embeddings.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(s["classifier.weight"], t["classifier.weight"], rtol=0, atol=1e-6)


def test_ddp_with_two_cpu_processes(data, teacher, tmp_path):
    """torchrun, gloo backend: ranks read disjoint batches; rank 1 has one batch fewer (11 batches) and pads its
    last step with a zero-weight pass; only rank 0 writes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "distillery",
           "--store", str(data.root), "distill", "general", "train", "--output", str(tmp_path / "ddp"),
           "--teacher", teacher, "--student", "custom", "--student-layers", "2", "--student-hidden", "16",
           "--student-heads", "2", "--student-intermediate", "32", "--epochs", "1", "--batch-size", "4",
           "--log-every", "1", "--num-workers", "0", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert recorded["world_size"] == 2 and recorded["steps"] == 6          # ceil(11 batches / 2 ranks)
    steps = losses_of(tmp_path / "ddp")
    assert [s for s, *_ in steps] == list(range(1, 7)) and all(math.isfinite(x[1]) for x in steps)
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()


def student_without_dropout(tiny_bert_factory, folder):
    """A tiny saved student with dropout off (ranks draw dropout masks from their own generators, so only a model
    without dropout computes the same step however a global batch is split)."""
    import shutil

    shutil.copytree(tiny_bert_factory(layers=2, hidden=16, heads=2, intermediate=32, with_mlm_head=False), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_two_processes_then_one_with_the_same_global_batch_match_one_process(data, teacher, tiny_bert_factory,
                                                                             tmp_path):
    """2 gloo processes x batch 4 give the loss curve of one process x batch 4 x grad_accum 2 (the same global
    batch of 8 rows); back at its step-4 checkpoint, the 2-process run resumes in one process with grad_accum 2 and
    still follows that curve. A resume that changes the global batch is refused."""
    student = student_without_dropout(tiny_bert_factory, tmp_path / "student")
    kw = dict(student=student, student_layers=0, student_hidden=0, student_heads=0, student_intermediate=0, epochs=1)
    cfg = general_cfg(teacher, **kw, checkpoint_every=2, keep_checkpoints=5, prune_checkpoints=False, threads=1)
    single = losses_of(distill.general_distill(data, "train", cfg, tmp_path / "single").path.parent)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "distillery",
           "--store", str(data.root), "distill", "general", "train", "--output", str(tmp_path / "ddp"),
           "--teacher", teacher, "--student", student, "--epochs", "1", "--batch-size", "4", "--grad-accum", "1",
           "--lr", "1e-3", "--warmup", "2", "--log-every", "1", "--checkpoint-every", "2",
           "--keep-checkpoints", "5", "--no-prune-checkpoints", "--num-workers", "0", "--device", "cpu",
           "--threads", "1"]
    env = {**os.environ, "DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ddp = losses_of(tmp_path / "ddp")
    assert [s for s, *_ in ddp] == [s for s, *_ in single] == list(range(1, 7))
    np.testing.assert_allclose([x[1] for x in ddp], [x[1] for x in single], rtol=1e-4)
    # back to step 4, as if the 2-process run had stopped there
    (tmp_path / "ddp" / "finished.json").unlink()
    (tmp_path / "ddp" / "checkpoints" / "step-00000006.pt").unlink()
    with pytest.raises(DistilleryError, match=r"global batch would change \(batch_size x processes x grad_accum = "
                                              r"4 x 2 x 1 when saved, 4 x 1 x 1 now\); keep it, e.g. with "
                                              r"--grad-accum 2"):
        distill.general_distill(data, "train", general_cfg(teacher, **kw, grad_accum=1), tmp_path / "ddp",
                                resume=True)
    distill.general_distill(data, "train", cfg, tmp_path / "ddp", resume=True)
    resumed = losses_of(tmp_path / "ddp")
    assert [s for s, *_ in resumed] == list(range(1, 7))
    np.testing.assert_allclose([x[1] for x in resumed], [x[1] for x in single], rtol=1e-4)
    assert distill.general_distill(data, "train", cfg, tmp_path / "ddp").up_to_date   # the same run, one process


def test_model_cards_name_the_model_its_origin_and_licence(store, make_version, tiny_bert_factory, tmp_path):
    import yaml

    from pipelines.resources import minilm_path

    rows = [{"text": f"{w} {w}", "label": w[0]} for w in ["apple", "banana", "cherry"] * 6]
    writer_rows = make_version(store, rows, name="t", chunk_rows=9)
    licence = {"license": "cc-by-4.0", "notice": "(c) someone"}
    version = store.version_path(writer_rows["version_id"]) / "manifest.json"
    manifest = json.loads(version.read_text())
    version.write_text(json.dumps({**manifest, "extra": {"licence": licence}}))     # as preprocess --license does
    teacher = distill.finetune(store, "t", FinetuneConfig(model=str(minilm_path()), max_steps=1, batch_size=6,
                                                          num_workers=0), tmp_path / "ft").path
    card = (teacher / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and front["license"] == "cc-by-4.0"
    assert front["pipeline_tag"] == "text-classification"
    assert "# fine-tuned classifier: 6 x 384 BERT, text classification, 3 labels, trained on t" in card
    assert 'pipeline("text-classification"' in card and "(c) someone" in card
    student = distill.task_distill(store, "t", TaskDistillConfig(teacher=str(teacher), student="tinybert-4",
                                                                 student_layers=1, max_steps=1, batch_size=6,
                                                                 num_workers=0), tmp_path / "st").path
    card = (student / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front and front["license"] == "cc-by-4.0"          # a local teacher has no hub id
    assert "# task-distilled student: 1 x 312 BERT" in card and "Made by `distillery distill task` (stage 2)" in card
    assert '"stage1_epochs": 10.0' in card and '"stage2_lr"' in card     # the task's own settings, both stages


def test_an_evaluation_lands_in_the_model_card_without_changing_the_model_identity(store, make_version,
                                                                                    tiny_bert_factory, tmp_path):
    from pipelines.fingerprint import model_sha256

    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    make_version(store, [{"text": f"{w} {w}", "label": w[0]} for w in ["apple", "banana"] * 6], name="t",
                 chunk_rows=6)
    make_version(store, [{"text": "apple", "label": "a"}, {"text": "banana", "label": "b"}], name="test",
                 config={"t": 1})
    model = distill.finetune(store, "t", FinetuneConfig(model=base, max_steps=1, batch_size=4, num_workers=0),
                             tmp_path / "ft").path
    identity = model_sha256(model)
    assert "## Evaluations" not in (model / "README.md").read_text()
    scores = distill.evaluate(store, "test", model)
    card = (model / "README.md").read_text()
    assert "## Evaluations" in card and "| test | 2 |" in card and f"{scores['accuracy']:.4f}" in card
    assert model_sha256(model) == identity           # the card and scores are not part of what the model is


def test_a_damaged_shard_stops_training_and_teacher_logits(store, make_version, teacher, tmp_path):
    make_version(store, rows(12), name="bad", chunk_rows=4)
    shard = damage_shard(store, "bad", 2)
    damaged = f"shard {shard} is damaged"
    with pytest.raises(DistilleryError, match=damaged):
        distill.general_distill(store, "bad", general_cfg(teacher), tmp_path / "general")
    with pytest.raises(DistilleryError, match=damaged):
        distill.finetune(store, "bad", FinetuneConfig(model=teacher, num_workers=0), tmp_path / "ft")
    with pytest.raises(DistilleryError, match=damaged):
        run_step(store, distill.plan_teacher_logits(store, "bad", teacher, CacheLogitsConfig()))


def test_one_process_trains_into_a_run_folder(data, teacher, tmp_path):
    from pipelines.atomic import WriterLock

    other = WriterLock(tmp_path / "run" / ".lock", "run folder")          # as a second process holding it would
    with pytest.raises(DistilleryError, match=f"run folder .*run is being written by process {os.getpid()} on "):
        distill.general_distill(data, "train", general_cfg(teacher, max_steps=1), tmp_path / "run")
    other.release()
    assert distill.general_distill(data, "train", general_cfg(teacher, max_steps=1), tmp_path / "run").path.exists()


def test_tensorboard_events_hold_the_metrics_lines(data, teacher, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = general_cfg(teacher, report_to="tensorboard", epochs=1)
    distill.general_distill(data, "train", cfg, tmp_path / "run")
    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    logged = losses_of(tmp_path / "run")
    assert [(e.step, round(e.value, 5)) for e in board.Scalars("loss")] == [(s, round(loss, 5))
                                                                           for s, loss, *_ in logged]
    assert {"lr", "parts/emb", "parts/hid1", "nonfinite", "throughput/steps_per_second",
            "throughput/rows_per_second"} <= set(board.Tags()["scalars"])
    distill.finetune(data, "train", FinetuneConfig(model=teacher, epochs=1, batch_size=4, lr=1e-3, num_workers=0,
                                                   eval_ref="dev", eval_every=2, report_to="tensorboard"),
                     tmp_path / "ft")
    board = EventAccumulator(str(tmp_path / "ft" / "tensorboard"))
    board.Reload()
    assert "eval/accuracy" in board.Tags()["scalars"] and len(board.Scalars("eval/accuracy")) >= 2
