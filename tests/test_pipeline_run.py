"""`distillery run PIPELINE.toml`: a 4-stage pipeline on tiny data runs, a rerun is all up to date, one changed
option reruns exactly the stages downstream (and --dry-run says so and why), an interrupted stage resumes, a bad
file is one line, and --check catches a different output."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from distill.trainer import Trainer
from distillery.cli.main import cli

TRAIN = "\n".join(f"{w} {w} fruit number {i}\t{w[0]}" for i, w in enumerate(["apple", "banana", "cherry"] * 8)) + "\n"
DEV = "cherry cherry\tc\napple\ta\nbanana split\tb\n"


def pipeline_text(base: str, lr: str = "1e-3") -> str:
    return f"""
[inputs]
train_file = "data/train.tsv"
dev_file = "data/dev.tsv"

[stages.train]
step = "preprocess"
inputs = ["@train_file"]
name = "fruit-train"
input = {{ label_column = "label" }}

[stages.dev]
step = "preprocess"
inputs = ["@dev_file"]
input = {{ label_column = "label" }}

[stages.teacher]
step = "finetune"
data = "@train"
model = "{base}"
eval_ref = "@dev"
epochs = 2
batch_size = 4
lr = {lr}
num_workers = 0
checkpoint_every = 3

[stages.score]
step = "evaluate"
data = "@dev"
model = "@teacher"
"""


@pytest.fixture
def project(tmp_path, tiny_bert_factory):
    base = str(tiny_bert_factory(layers=1, hidden=16, heads=2, with_mlm_head=False))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("text\tlabel\n" + TRAIN)
    (tmp_path / "data" / "dev.tsv").write_text("text\tlabel\n" + DEV)
    (tmp_path / "fruit.toml").write_text(pipeline_text(base))
    return tmp_path, base


def run(project, *args, ok=True):
    folder, _ = project
    result = CliRunner().invoke(cli, ["--store", str(folder / "store"), "run", str(folder / "fruit.toml"), *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def statuses(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in ("train", "dev", "teacher", "score"):
            found[parts[0]] = parts[1]
    return found


def test_run_rerun_change_and_check(project, one_torch_thread):
    folder, base = project
    dry = statuses(run(project, "--dry-run").output)
    assert dry["train"].startswith("will run") and "never run" in dry["train"]
    assert dry["teacher"].startswith("will run") and "after @train" in dry["teacher"]
    first = run(project)
    assert "stage score (evaluate): will run" in first.output
    lock = json.loads((folder / "fruit.lock.json").read_text())["stages"]
    assert set(lock) == {"train", "dev", "teacher", "score"} and lock["teacher"]["weights_sha256"]
    scores = json.loads(open(lock["score"]["output"]).read())
    assert scores["rows"] == 3 and "accuracy" in scores
    assert all(s.startswith("up to date") for s in statuses(run(project, "--dry-run").output).values())
    again = run(project, "--check")
    assert len(re.findall(r"^stage \S+ \(\S+\): up to date", again.output, re.M)) == 4
    assert "every stage matches fruit.lock.json" in again.output

    (folder / "fruit.toml").write_text(pipeline_text(base, lr="2e-3"))
    dry = statuses(run(project, "--dry-run", "--mermaid", str(folder / "graph.mmd"), "--graph",
                       str(folder / "graph.png")).output)
    assert dry["train"].startswith("up to date") and dry["dev"].startswith("up to date")
    assert dry["teacher"].startswith("will run") and "changed: option lr" in dry["teacher"]
    assert dry["score"].startswith("will run") and "after @teacher" in dry["score"]
    graph = (folder / "graph.mmd").read_text()
    assert "train --> teacher" in graph and "teacher --> score" in graph and "style teacher fill:#ffe0b2" in graph
    assert (folder / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    changed = run(project)
    assert "stage train (preprocess): up to date" in changed.output
    assert "stage teacher (finetune): will run" in changed.output
    assert "stage score (evaluate): will run" in changed.output

    lock = json.loads((folder / "fruit.lock.json").read_text())
    lock["stages"]["train"]["output"] = "0" * 64
    (folder / "fruit.lock.json").write_text(json.dumps(lock))
    checked = run(project, "--check", ok=False)
    assert checked.exit_code != 0 and "train: version" in str(checked.exception)
    assert json.loads((folder / "fruit.lock.json").read_text()) == lock          # --check leaves the lock as it was


def test_an_interrupted_stage_resumes(project, monkeypatch, one_torch_thread):
    class Crash(Exception):
        pass

    def crash_after_4(self):
        if self.step == 4:
            raise Crash
    monkeypatch.setattr(Trainer, "after_step", crash_after_4)
    crashed = run(project, ok=False)
    assert isinstance(crashed.exception, Crash)
    monkeypatch.undo()
    assert statuses(run(project, "--dry-run").output)["teacher"].startswith("will resume")
    refused = run(project, "--no-resume", ok=False)
    assert "interrupted" in str(refused.exception) and "--no-resume" in str(refused.exception)
    resumed = run(project)
    assert "stage teacher (finetune): will resume" in resumed.output


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('data = "@train"', 'data = "@score"'), "cycle"),
    (lambda t: t.replace('data = "@train"', 'data = "@nowhere"'), "'@nowhere', which is neither an input nor a stage"),
    (lambda t: t.replace("epochs = 2", "epochz = 2"), "stage 'teacher' (finetune): config key 'epochz': unknown key"),
    (lambda t: t.replace('step = "evaluate"', 'step = "evaluat"'), "step 'evaluat' is not one of"),
])
def test_a_bad_pipeline_is_one_line(project, edit, message):
    folder, _ = project
    path = folder / "fruit.toml"
    path.write_text(edit(path.read_text()))
    result = run(project, "--dry-run", ok=False)
    assert result.exit_code != 0 and message in str(result.exception) and "\n" not in str(result.exception)


def test_until_and_only_pick_stages(project, one_torch_thread):
    out = run(project, "--until", "dev").output
    assert "stage dev (preprocess)" in out and "stage teacher" not in out and "stage train" not in out
    refused = run(project, "--only", "teacher", ok=False)
    assert "needs '@train', which is not up to date" in str(refused.exception)
    assert "no stage 'nope'" in str(run(project, "--only", "nope", ok=False).exception)


MATRIX = """
[inputs]
train_file = "data/train.tsv"
dev_file = "data/dev.tsv"

[stages.train]
step = "preprocess"
config = "steps.toml"
inputs = ["@train_file"]

[stages.dev]
step = "preprocess"
config = "steps.toml"
inputs = ["@dev_file"]

[stages.teacher]
step = "finetune"
config = "steps.toml"
data = "@train"
model = "{base}"
matrix = {{ seed = [1, 2] }}

[stages.teacher.variants.fast]
lr = 1e-2

[stages.teacher.variants.slow]
lr = 1e-4

[stages.score]
step = "evaluate"
data = "@dev"
model = "@teacher"

[stages.export]
step = "export-model"
model = "@teacher[fast,seed=1]"
check_ref = "@dev"
onnx = true
"""
STEPS = """
[preprocess.input]
label_column = "label"

[finetune]
epochs = {epochs}
batch_size = 4
num_workers = 0
"""


def test_a_matrix_of_variants_and_seeds_with_settings_from_a_config_file(project, one_torch_thread):
    """`matrix` and `variants` expand a stage into one stage per point; a stage reading it follows (one score per
    teacher, averaged over seeds at the end); `config = FILE` gives a stage its step's section; export-model is a
    stage with its own up-to-date rule."""
    folder, base = project
    (folder / "fruit.toml").write_text(MATRIX.format(base=base))
    (folder / "steps.toml").write_text(STEPS.format(epochs=1))
    first = run(project)
    teachers = [f"teacher[{v},seed={s}]" for v in ("fast", "slow") for s in (1, 2)]
    lock = json.loads((folder / "fruit.lock.json").read_text())["stages"]
    assert set(lock) == {"train", "dev", "export", *teachers, *(f"score[teacher={t[8:]}" for t in teachers)}
    assert lock["teacher[slow,seed=2]"]["options"] == {"epochs": 1, "batch_size": 4, "num_workers": 0, "seed": 2,
                                                       "lr": 1e-4, "model": base}
    assert len({lock[t]["output"] for t in teachers}) == 4                  # four runs, each in its own folder
    assert re.search(r"^score\[teacher=fast\]: accuracy \d+\.\d \+- \d+\.\d \(n = 2\)$", first.output, re.M)
    exports = json.loads(open(folder / "runs" / "fruit" / "export" / lock["export"]["key"] / "exports.json").read())
    assert exports["onnx"]["rows"] == 3 and lock["export"]["output"] == lock["teacher[fast,seed=1]"]["output"]

    dry = run(project, "--dry-run").output
    assert all(line.split(None, 1)[1].startswith("up to date") for line in dry.strip().splitlines())
    (folder / "steps.toml").write_text(STEPS.format(epochs=2))              # the config file changed
    dry = run(project, "--dry-run").output
    assert "teacher[fast,seed=1] will run     changed: option epochs" in dry
    assert re.search(r"^train +up to date", dry, re.M)

    for bad, message in (
            ('model = "@teacher[fast,seed=3]"', r"stage 'export' reads '@teacher\[fast,seed=3\]', which is not one"),
            ('matrix = { seed = [1, 1] }', r"stage 'teacher': matrix.seed is a list of distinct values"),
            ('matrix = { step = ["task"] }', r"stage 'teacher': matrix key 'step' cannot vary")):
        text = MATRIX.format(base=base)
        old = 'model = "@teacher[fast,seed=1]"' if bad.startswith("model") else "matrix = { seed = [1, 2] }"
        (folder / "fruit.toml").write_text(text.replace(old, bad))
        result = run(project, "--dry-run", ok=False)
        assert result.exit_code != 0 and re.search(message, str(result.exception)), result.exception
        assert "\n" not in str(result.exception)


def test_the_demo_is_a_shipped_pipeline_with_the_versions_of_the_steps_run_by_hand(store, tmp_path):
    """`distillery demo` runs the pipeline file in the package: its data stages write the versions the README's
    step-by-step commands write (same config: the step's section of demo.toml)."""
    from distillery.bundled import CONFIGS_DIR, SAMPLE_DIR
    from distillery.demo import run_demo
    from pipelines.config import load_config
    from pipelines.runner import run_step
    from preprocess import PreprocessConfig, plan_preprocess

    versions = {**run_demo(store, tmp_path / "runs", until="train")["versions"],
                **run_demo(store, tmp_path / "runs", until="test")["versions"]}
    by_hand = load_config(PreprocessConfig, CONFIGS_DIR / "demo.toml", {"input.label_column": "label"},
                          section="preprocess")
    for split in ("train", "test"):
        plan = plan_preprocess([SAMPLE_DIR / f"{split}.jsonl"], by_hand)
        assert versions[f"wordnet-{split}"] == run_step(store, plan, None).manifest["version_id"]
    assert (tmp_path / "runs" / "pipeline_demo.lock.json").is_file()
    assert not (CONFIGS_DIR / "pipeline_demo.lock.json").exists()           # nothing written into the package


def test_the_gap_check_warns_when_the_teacher_is_no_better_than_the_direct_student(project, one_torch_thread):
    """A teacher trained exactly as the direct student (same model, data, options) has nothing to transfer: the run
    says so, with the warning, once both exist and before the distillation stage runs."""
    folder, base = project
    same = pipeline_text(base).split("[stages.teacher]")[1].split("[stages.score]")[0]
    (folder / "fruit.toml").write_text(pipeline_text(base) + f"""
[stages.direct]{same}
[stages.student]
step = "task"
data = "@train"
teacher = "@teacher"
student = "{base}"
eval_ref = "@dev"
stage1_epochs = 1
stage2_epochs = 1
batch_size = 4
num_workers = 0
""")
    out = run(project).output
    line = next(line for line in out.splitlines() if line.startswith("teacher vs direct:"))
    assert "gap +0.0 points" in line and "WARNING" in line and "one seed" in line
    assert out.index(line) < out.index("stage student (task): will run")
