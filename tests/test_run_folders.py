"""Run folders and caches: only a run folder of ours is trained into and only files a run wrote are deleted from it;
nothing is written through a symlink in a run's place; foreign checkpoints and a finished run's record that points
elsewhere are not believed; the word-vector cache is written through unique temporaries and checked on read."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import distill
from distill import checkpoint, students
from distill.config import ExportConfig, FinetuneConfig, TaskDistillConfig
from distill.trainer import Trainer
from pipelines.errors import DistilleryError

WORDS = "the cat sat on a mat while dogs ran far away from home in rain and sun".split()
LABELS = ["LABEL_0", "LABEL_1", "LABEL_2"]
RUN_MARK = ".distillery-run"          # distill.trainer.RUN_MARK


def rows(n):
    return [{"text": " ".join(WORDS[(i * 5) % 7: (i * 5) % 7 + 2 + i % 9]), "label": LABELS[i % 3], "row_id": i}
            for i in range(n)]


@pytest.fixture
def data(store, make_version):
    make_version(store, rows(24), name="train", chunk_rows=8)
    make_version(store, rows(6), name="dev", chunk_rows=8, config={"dev": True})
    return store


@pytest.fixture(scope="module")
def base(tiny_bert_factory):
    return str(tiny_bert_factory(layers=1, hidden=16, heads=2, num_labels=3, with_mlm_head=False))


def config(base, **kw):
    settings = dict(model=base, batch_size=4, max_steps=4, checkpoint_every=1, keep_checkpoints=5, log_every=1,
                    num_workers=0, lr=1e-3)
    return FinetuneConfig(**{**settings, **kw})


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry below ``folder``: a file's bytes, a symlink's target, a folder's mark."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        found[key] = (f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                      else path.read_bytes())
    return found


def losses(run_dir: Path):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


class Crash(Exception):
    pass


def crash_after(monkeypatch, step: int, train) -> None:
    def crash(self):
        if self.step == step:
            raise Crash
    monkeypatch.setattr(Trainer, "after_step", crash)
    with pytest.raises(Crash):
        train()
    monkeypatch.undo()


# ---- item 9: an existing --output -------------------------------------------------------------------------------
def test_output_into_a_folder_that_is_not_a_run_folder_is_refused_before_any_change(data, base, tmp_path):
    proj = tmp_path / "proj"
    (proj / "checkpoints").mkdir(parents=True)
    (proj / "checkpoints" / "important.txt").write_text("keep me")
    (proj / "config.json").write_text('{"mine": true}')
    (proj / "metrics.jsonl").write_text("my notes\n")
    before = snapshot(proj)
    for resume in (False, True):
        with pytest.raises(DistilleryError, match=r"proj is not empty and is not a distillery run folder "
                                                  r"\('checkpoints' is not something a run writes\)"):
            distill.finetune(data, "train", config(base), proj, resume=resume)
        assert snapshot(proj) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(DistilleryError, match="'todo.txt' is not something a run writes"):
        distill.finetune(data, "train", config(base), notes)
    assert snapshot(notes) == {"todo.txt": b"mine"}


def test_a_run_folder_of_ours_is_used_marked_or_not_and_keeps_what_else_it_holds(data, base, tmp_path,
                                                                               monkeypatch):
    whole = distill.finetune(data, "train", config(base), tmp_path / "whole")
    crash_after(monkeypatch, 3, lambda: distill.finetune(data, "train", config(base), tmp_path / "run"))
    assert (tmp_path / "run" / RUN_MARK).is_file()
    (tmp_path / "run" / RUN_MARK).unlink()                 # a run folder of a distillery without the mark
    resumed = distill.finetune(data, "train", config(base), tmp_path / "run", resume=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "whole") and resumed.path == tmp_path / "run" / "model"
    assert (tmp_path / "run" / RUN_MARK).is_file()
    (tmp_path / "run" / "notes.txt").write_text("mine")    # a marked run folder may hold the user's files too
    assert distill.finetune(data, "train", config(base), tmp_path / "run").up_to_date
    assert whole.path.is_dir() and (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_a_finished_run_deletes_only_the_checkpoints_it_wrote(data, base, tmp_path, monkeypatch):
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"not yours")

    def plant(self):
        if self.step == 2:
            (self.ckpt_dir / "important.txt").write_text("keep me")
            (self.ckpt_dir / "step-00000099.pt").symlink_to(victim)      # named like a checkpoint, not one of ours
    monkeypatch.setattr(Trainer, "after_step", plant)
    distill.finetune(data, "train", config(base), tmp_path / "run")
    left = snapshot(tmp_path / "run" / "checkpoints")
    assert left == {"important.txt": b"keep me", "step-00000099.pt": f"-> {victim}"}
    assert victim.read_bytes() == b"not yours"


# ---- item 6 and the rest: nothing in a run folder is written through a symlink -------------------------------------
@pytest.mark.parametrize("name", [".lock", "config.json", "metrics.jsonl", "loss.png", "checkpoints", "model"])
def test_a_symlink_in_the_place_of_a_run_file_is_refused_and_its_target_untouched(data, base, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARK).write_text("")
    victim = tmp_path / "victim"
    if name in ("checkpoints", "model"):
        victim.mkdir()
        (victim / "keep.txt").write_text("mine")
    else:
        victim.write_text("precious")
    (run / name).symlink_to(victim)
    before = snapshot(tmp_path / "victim") if victim.is_dir() else victim.read_bytes()
    with pytest.raises(DistilleryError, match=f"{name} is not the (file|folder) a run writes there"):
        distill.finetune(data, "train", config(base), run)
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before


def test_a_log_replaced_by_a_symlink_during_a_run_is_not_written_through(data, base, tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")

    def plant(self):
        if self.step == 2:
            self.metrics_path.unlink()
            self.metrics_path.symlink_to(victim)
    monkeypatch.setattr(Trainer, "after_step", plant)
    with pytest.raises(DistilleryError, match="metrics.jsonl is a symlink; refusing to follow it"):
        distill.finetune(data, "train", config(base), tmp_path / "run")
    assert victim.read_text() == "precious"


def test_a_word_vocabulary_is_not_written_through_a_symlink(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    words = tmp_path / "words"
    words.mkdir()
    (words / "tokenizer.json").symlink_to(victim)
    with pytest.raises(DistilleryError, match="tokenizer.json is not a regular file as distillery writes it"):
        students.words_tokenizer(["the cat sat"], words)
    assert victim.read_text() == "precious" and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    (words / "tokenizer.json").unlink()
    (words / "notes.txt").write_text("mine")
    students.words_tokenizer(["the cat sat"], words)         # into a folder of ours: its other files stay
    assert (words / "notes.txt").read_text() == "mine" and (words / "tokenizer.json").is_file()


def test_a_model_card_export_and_evaluation_never_write_through_a_symlink(data, base, tmp_path):
    model = distill.finetune(data, "train", config(base, max_steps=1, eval_ref="dev"), tmp_path / "run").path
    victim, victim_dir = tmp_path / "victim.md", tmp_path / "victim-dir"
    victim.write_text("precious")
    victim_dir.mkdir()
    (model / "README.md").unlink()
    (model / "README.md").symlink_to(victim)
    distill.evaluate(data, "dev", model)                              # rewrites the card
    assert victim.read_text() == "precious" and not (model / "README.md").is_symlink()
    assert "## Evaluations" in (model / "README.md").read_text()
    (model / "int8").symlink_to(victim_dir, target_is_directory=True)
    with pytest.raises(DistilleryError, match="int8 is a symlink, not a folder; refusing to write through it"):
        distill.export_model(data, model, ExportConfig(int8=True, check_ref="dev"))
    assert list(victim_dir.iterdir()) == []


def test_a_model_is_not_saved_over_a_folder_that_is_not_a_model_of_ours(data, base, tmp_path):
    out = tmp_path / "task"
    (out / "model").mkdir(parents=True)
    (out / "model" / "important.txt").write_text("keep me")
    cfg = TaskDistillConfig(teacher=base, student=base, stage="2", max_steps=1, batch_size=4, num_workers=0)
    with pytest.raises(DistilleryError, match=r"model holds files but no model distillery saved \(card.json\)"):
        distill.task_distill(data, "train", cfg, out)
    assert snapshot(out / "model") == {"important.txt": b"keep me"}


# ---- checkpoints ------------------------------------------------------------------------------------------------
def test_foreign_but_loadable_checkpoints_are_named_and_skipped(data, base, tmp_path, monkeypatch, capsys):
    distill.finetune(data, "train", config(base), tmp_path / "whole")
    crash_after(monkeypatch, 3, lambda: distill.finetune(data, "train", config(base), tmp_path / "run"))
    folder = tmp_path / "run" / "checkpoints"
    good = checkpoint.load(folder / "step-00000003.pt")
    shutil.copy(folder / "step-00000003.pt", tmp_path / "elsewhere.pt")
    (folder / "step-00000004.pt").symlink_to(tmp_path / "elsewhere.pt")          # not a file of the run
    torch.save({"step": 3, "config": {}, "objective": {}}, folder / "step-00000003.pt")   # the KeyError
    other = {**good, "objective": {k: v[..., :1].clone() for k, v in good["objective"].items()}}
    torch.save(other, folder / "step-00000002.pt")                               # another model's weights
    distill.finetune(data, "train", config(base), tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    for name, why in (("step-00000004.pt", "is a symlink; refusing to follow it"),
                      ("step-00000003.pt", "not a distillery checkpoint ('epoch' is missing"),
                      ("step-00000002.pt", "not a checkpoint of this run (objective.")):
        assert f"{name}: {why}" in err or f"{name} {why}" in err
    assert err.count("trying the previous checkpoint") == 3
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")                 # resumed from step 1


def test_a_checkpoint_is_checked_in_its_whole_structure(data, base, tmp_path, monkeypatch):
    crash_after(monkeypatch, 2, lambda: distill.finetune(data, "train", config(base), tmp_path / "run"))
    path = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    good = checkpoint.load(path)
    shapes = [tuple(s["exp_avg"].shape) for _, s in sorted(good["optimizer"]["state"].items())]
    checkpoint.check_structure(good, good, shapes)

    def changed(edit):
        state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        edit(state)
        return state
    layouts = [lambda s: s["config"].pop("grad_accum"), lambda s: s.update(step="2"),
               lambda s: s.update(rng={**s["rng"], "python": (3, (1, 2), None)}),
               lambda s: s["data"].update(world_size=0), lambda s: s.update(objective={"w": [1.0]})]
    for edit in layouts:
        torch.save(changed(edit), tmp_path / "bad.pt")
        with pytest.raises(checkpoint.Unusable, match="not a distillery checkpoint"):
            checkpoint.load(tmp_path / "bad.pt")
    groups = good["optimizer"]["param_groups"]
    structures = [lambda s: s["objective"].update(extra=torch.zeros(1)),
                  lambda s: s.update(optimizer={**s["optimizer"], "param_groups": [
                      {**g, "params": [p + 1 for p in g["params"]]} for g in groups]}),
                  lambda s: s.update(optimizer={**s["optimizer"], "state": {0: {"exp_avg": torch.zeros(7, 7)}}}),
                  lambda s: s["scheduler"].update(injected=1), lambda s: s["scheduler"].update(_last_lr="x")]
    for edit in structures:
        with pytest.raises(checkpoint.Unusable, match="not a checkpoint of this run"):
            checkpoint.check_structure(changed(edit), good, shapes)


# ---- finished.json --------------------------------------------------------------------------------------------
def test_a_finished_run_record_naming_a_model_elsewhere_is_not_believed(data, base, tmp_path):
    run = tmp_path / "run"
    assert distill.finetune(data, "train", config(base, max_steps=1), run).path == run / "model"
    record = json.loads((run / "finished.json").read_text())
    outside = tmp_path / "outside"
    shutil.copytree(run / "model", outside)                          # even a real model, when it is not in the run
    for model in ["/etc", "../../etc", str(outside), "../outside", "model/../..", "checkpoints", ".", "", 5, None]:
        (run / "finished.json").write_text(json.dumps({**record, "model": model}))
        with pytest.raises(DistilleryError, match="finished.json names .* as its model, which is not a model saved"):
            distill.finetune(data, "train", config(base, max_steps=1), run)
    (run / "finished.json").write_text(json.dumps(record))
    shutil.rmtree(run / "model")
    (run / "model").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DistilleryError, match="not a model saved"):
        distill.finetune(data, "train", config(base, max_steps=1), run)
    (run / "model").unlink()
    shutil.copytree(outside, run / "model")
    assert distill.finetune(data, "train", config(base, max_steps=1), run).up_to_date
    (run / "finished.json").unlink()
    (run / "finished.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps(record))
    with pytest.raises(DistilleryError, match="finished.json is a symlink; refusing to follow it"):
        distill.finetune(data, "train", config(base, max_steps=1), run)
    (run / "finished.json").unlink()
    (run / "finished.json").write_text("{not json")
    with pytest.raises(DistilleryError, match="finished.json is damaged"):
        distill.finetune(data, "train", config(base, max_steps=1), run)


# ---- the word-vector cache ----------------------------------------------------------------------------------------
def _vectors_file(folder: Path, name: str, seed: int) -> tuple[Path, np.ndarray]:
    from gensim.models import KeyedVectors

    matrix = np.random.default_rng(seed).standard_normal((30, 6)).astype(np.float32)
    kv = KeyedVectors(6)
    kv.add_vectors([f"w{i}" for i in range(30)], matrix)
    path = folder / name
    kv.save_word2vec_format(str(path), binary=True)
    return path, matrix


def test_the_vector_cache_is_checked_on_read_and_never_followed(tmp_path, monkeypatch):
    from augment.vectors import MATRIX_FILE, cache_root, load_vectors
    from pipelines.cache import CACHE_RECORD

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    source, matrix = _vectors_file(tmp_path, "a.bin", 0)
    other, other_matrix = _vectors_file(tmp_path, "b.bin", 1)
    entry = Path(load_vectors(str(source)).identity["cache"])
    other_entry = Path(load_vectors(str(other)).identity["cache"])
    assert (entry / CACHE_RECORD).is_file() and not [p for p in cache_root().iterdir() if p.name.endswith(".tmp")]

    def loads_its_own_vectors():
        return np.array_equal(np.asarray(load_vectors(str(source)).matrix), matrix)
    shutil.copy(other_entry / MATRIX_FILE, entry / MATRIX_FILE)        # same shape, other vectors
    assert loads_its_own_vectors()
    with open(entry / MATRIX_FILE, "r+b") as fh:                       # damaged in place
        fh.truncate(100)
    assert loads_its_own_vectors()
    shutil.rmtree(entry)
    shutil.copytree(other_entry, entry)                                # another source's entry under this key
    assert loads_its_own_vectors()
    shutil.rmtree(entry)
    entry.symlink_to(other_entry, target_is_directory=True)
    before = snapshot(other_entry)
    with pytest.raises(DistilleryError, match="is not a folder .a symlink or a file.; refusing to use it"):
        load_vectors(str(source))
    assert snapshot(other_entry) == before
    entry.unlink()
    os.symlink(tmp_path, entry.with_name(f"{entry.name}.tmp{os.getpid()}"))    # the old predictable temporary name
    assert loads_its_own_vectors() and np.array_equal(np.asarray(load_vectors(str(other)).matrix), other_matrix)
