"""Smoke test of the TinyBERT ablation recipe (`distillery recipe tinybert --quick`, run from an installed wheel):
every stage runs end to end, under both schedules, and the recipe reads a non-default dataset."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from distillery.bundled import CONFIGS_DIR, NER_SAMPLE_DIR, SAMPLE_DIR
from distillery.recipes.ablation import (
    LONG_VARIANT,
    MENTION_VARIANT,
    MIX_VARIANTS,
    MLM_VARIANT,
    VARIANTS,
    load_experiment,
    run_experiment,
)
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from preprocess import plan_preprocess

QUICK = CONFIGS_DIR / "ablation_quick.toml"
QUICK_NER = CONFIGS_DIR / "ablation_ner_quick.toml"
CHECKOUT = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "runs", "distillery_store", "docs", "build", "dist",
                                     "*.egg-info", "__pycache__", ".*_cache", "bench", "tests")


def installed_wheel(tmp_path: Path) -> Path:
    """The package built as a wheel from a copy of the sources and installed into a folder of its own (its
    dependencies are this environment's); the folder to put first on PYTHONPATH."""
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    shutil.copytree(CHECKOUT, source, ignore=NOT_SOURCES)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   cwd=tmp_path)
    wheel, = wheels.glob("distillery-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    return site


def test_quick_ablation_runs_from_an_installed_wheel_and_writes_the_report(tmp_path):
    """`distillery recipe tinybert --quick` from the wheel, in a folder outside the checkout: the recipe, its
    configs and the bundled sample all come from the installed package."""
    site = installed_wheel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "DISTILLERY_STORE": str(work / "store")}
    where = subprocess.run([sys.executable, "-c", "import distillery.bundled as b; print(b.CONFIGS_DIR)"], env=env,
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(site / "distillery" / "configs")

    def recipe() -> dict:
        done = subprocess.run([sys.executable, "-m", "distillery", "recipe", "tinybert", "--quick", "--output", "out"],
                              env=env, cwd=work, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "| task-aug-mlm |" in done.stdout and "results in out/README.md" in done.stdout
        return json.loads((work / "out" / "results.json").read_text())

    results = recipe()
    out = work / "out"
    assert set(results["schedules"]) == {"equal-steps", "equal-epochs"}
    for part in results["schedules"].values():
        table = part["table"]
        assert set(table) == {"teacher", *VARIANTS, MLM_VARIANT, LONG_VARIANT, *MIX_VARIANTS}
        teacher = table["teacher"]
        for name, row in table.items():
            assert 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["accuracy"]["n"] == 1
            assert row["latency_ms_batch1"] > 0 and row["latency_ms_batch32"] > 0
            if name != "teacher":
                assert row["non_embedding_parameters"] < teacher["non_embedding_parameters"]
    steps, epochs = (results["schedules"][s]["table"] for s in ("equal-steps", "equal-epochs"))
    assert steps["task"]["runs"] == epochs["task"]["runs"]            # the original split: one run, both schedules
    assert steps["task-aug"]["runs"] != epochs["task-aug"]["runs"]
    assert steps[LONG_VARIANT]["runs"] == steps["task"]["runs"] != epochs[LONG_VARIANT]["runs"]
    assert all(steps[v]["runs"] != epochs[v]["runs"] for v in MIX_VARIANTS)
    long_steps = json.loads((out / "task-long-seed1" / "stage2" / "config.json").read_text())["steps"]
    assert long_steps == json.loads((out / "task-aug-mlm-epochs-seed1" / "stage2" / "config.json").read_text())["steps"]
    mix = json.loads((out / "task-aug-unlabelled-seed1" / "stage2" / "config.json").read_text())["config"]["mix"]
    assert [(m["share"], m["copies_only"]) for m in mix] == [(0.25, True), (0.25, False)]
    gap = results["gap_check"]
    assert gap["seeds"] == 1 and gap["threshold"] == 0.01 and gap["warning"] == (gap["gap"] < 0.01)
    assert steps["teacher"]["runs"] == ["teacher/model"]                # relative to the experiment folder
    assert all((out / run / "model.safetensors").is_file() for row in steps.values() for run in row["runs"])
    aug_steps = json.loads((out / "task-aug-epochs-seed1" / "stage1" / "config.json").read_text())["steps"]
    assert aug_steps > json.loads((out / "task-seed1" / "stage1" / "config.json").read_text())["steps"]
    assert {r["rows"] for r in results["data"].values()} == {400}
    assert {"recall_at_1", "recall_at_15", "perplexity"} <= set(results["mlm"]["scores"])
    vectors, mlm = results["augmentation"]["task-aug"], results["augmentation"][MLM_VARIANT]
    assert vectors["rows"] > 400 and mlm["counts"]["mlm_replacements"] > 0 == vectors["counts"]["mlm_replacements"]
    assert 0 <= mlm["agreement"]["mlm_only"]["share"] <= 1 and vectors["agreement"]["vectors_only"]["copies"] > 0
    assert json.loads((out / "results.json").read_text())["schedules"].keys() == results["schedules"].keys()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "| general+task-aug |" in card and "## Results: equal-epochs" in card
    assert card.split("\n# TinyBERT ablation\n\n", 1)[1].startswith("**gap check: teacher dev accuracy")
    assert "## The masked LM" in card and "mlm_only" not in card and "MLM only" in card
    assert all((out / f"{kind}-{s}.png").stat().st_size > 0 for kind in ("stage_losses", "dev_accuracy")
               for s in ("equal-steps", "equal-epochs"))

    # Finished stages are reused: a second run trains nothing.
    models = sorted(out.glob("*/model/model.safetensors"))
    stamps = [m.stat().st_mtime_ns for m in models]
    again = recipe()
    assert [m.stat().st_mtime_ns for m in sorted(out.glob("*/model/model.safetensors"))] == stamps
    assert again["wall_clock_seconds"] == results["wall_clock_seconds"]      # reused steps keep their times
    stages = results["wall_clock_seconds"]["stages"]
    assert stages["preprocess"]["runs"] == 5 and stages["direct"]["runs"] == 1
    assert {"teacher", "mlm", "augment", "augment-mlm", "agreement", "general", "task", "task-aug",
            "task-aug-epochs", "general+task-aug"} <= stages.keys()
    assert again["schedules"]["equal-epochs"]["table"]["task-aug"]["accuracy"] == \
        results["schedules"]["equal-epochs"]["table"]["task-aug"]["accuracy"]


def other_dataset(tmp_path):
    """A labelled dataset in CSV files with other column names, plus unlabelled text, and a config for it."""
    rows = [json.loads(line) for line in (SAMPLE_DIR / "train.jsonl").read_text().splitlines()][:300]
    paths = {}
    for split, part in (("train", rows[:200]), ("dev", rows[200:250]), ("test", rows[250:])):
        paths[split] = tmp_path / f"{split}.csv"
        paths[split].write_text("gloss,sense\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in part))
    paths["unlabelled"] = tmp_path / "more.txt"
    paths["unlabelled"].write_text("".join(r["text"] + "\n" for r in rows[:100]))
    toml = tmp_path / "mine.toml"
    toml.write_text(QUICK.read_text().replace('label_column = "label"',
                                              'label_column = "sense"\ntext_column = "gloss"'))
    return paths, toml


def test_the_recipe_runs_on_other_labelled_files(store, tmp_path):
    """CSV files with other column names: the data stages and the teacher run on them (the quick test above runs
    every stage on the default data)."""
    from distillery.recipes.ablation import Clock, Experiment, augment_data, prepare_data, train_teacher

    paths, toml = other_dataset(tmp_path)
    cfgs = load_experiment(toml, {**{k: str(v) for k, v in paths.items()}, "name_prefix": "mine", "mlm": "none"})
    x = Experiment(store, cfgs, tmp_path / "out", Clock(tmp_path / "clock.json"))
    for stage in (prepare_data, augment_data, train_teacher):
        stage(x)
    assert {k: store.manifest(v)["num_rows"] for k, v in x.names.items()} == {"train": 200, "dev": 50, "test": 50,
                                                                               "unlabelled": 100}
    assert store.manifest("mine-train")["stats"]["num_labels"] == 10 and set(x.data) == {"task", "task-aug"}
    assert AutoConfig.from_pretrained(x.teacher).num_labels == 10


def test_the_recipe_takes_versions_as_its_data(store, tmp_path):
    from distillery.recipes.ablation import Clock, Experiment, prepare_data
    from preprocess import PreprocessConfig

    paths, toml = other_dataset(tmp_path)
    cfgs = load_experiment(toml)
    configs = {split: cfgs.preprocess if split != "unlabelled" else PreprocessConfig() for split in paths}
    refs = {split: run_step(store, plan_preprocess([path], configs[split]), f"mine-{split}").manifest["version_id"]
            for split, path in paths.items()}
    cfgs = load_experiment(toml, {"train": "mine-train", "dev": refs["dev"][:16], "test": "mine-test@latest",
                                  "unlabelled": "mine-unlabelled"})
    x = Experiment(store, cfgs, tmp_path / "out", Clock(tmp_path / "clock.json"))
    prepare_data(x)
    assert x.names == refs


def test_variant_5_takes_the_augment_options_with_its_own_section_on_top(tmp_path):
    toml = tmp_path / "experiment.toml"
    toml.write_text('[augment]\nnum_aug = 4\nreplace_prob = 0.4\n\n'
                    '[augment_mlm]\nreplace_prob = 0.2\nmlm_min_similarity = 0.5\n')
    cfgs = load_experiment(toml)
    assert (cfgs.augment.replace_prob, cfgs.augment.mlm_min_similarity) == (0.4, 0.0)
    assert (cfgs.augment_mlm.replace_prob, cfgs.augment_mlm.mlm_min_similarity, cfgs.augment_mlm.num_aug) == \
        (0.2, 0.5, 4)
    toml.write_text('[augment]\nnum_aug = 4\n\n[augment_mlm]\nreplace_probability = 0.2\n')
    with pytest.raises(DistilleryError, match=r"\[augment\] \[augment_mlm\]: .*replace_probability"):
        load_experiment(toml)
    toml.write_text('[augment]\nnum_aug = 4\n\n[augment-mlm]\nreplace_prob = 0.2\n')     # a typo is not ignored
    with pytest.raises(DistilleryError, match=r"unknown section \[augment-mlm\]; the recipe reads .*\[augment_mlm\]"):
        load_experiment(toml)


def test_a_card_of_one_student_says_there_is_nothing_to_compare():
    from distillery.recipes.ablation_report import comparison_lines

    assert comparison_lines([]) == ["- one student in this run (`--variants`): nothing to compare it with"]
    line, = comparison_lines([{"a": "task", "b": "task-aug", "b_minus_a": 0.012, "spread": 0.01,
                               "larger_than_spread": True}])
    assert line == "- task-aug vs task: +1.2 points, seed spread (sum of std) 1.0: larger than the spread"


def test_quick_ner_ablation_scores_every_student_by_entity_f1(store, tmp_path, tiny_bert_factory, one_torch_thread):
    """The token-classification recipe on the bundled NER sample (the package's configs/ablation_ner_quick.toml, its
    first 200 sentences), with a tiny random BERT as the teacher's base to keep it fast: token classifiers throughout,
    tag-preserving augmentation with and without mention replacement, entity F1 on the card with the gap line."""
    import dataclasses

    cfgs = load_experiment(QUICK_NER, {"student_layers": 1, "student_hidden": 32, "student_heads": 2,
                                       "student_intermediate": 48})
    tiny = str(tiny_bert_factory(layers=2, hidden=32, heads=2, intermediate=64, with_mlm_head=False, seed=5))
    cfgs = dataclasses.replace(cfgs, teacher=dataclasses.replace(cfgs.teacher, model=tiny))
    out = tmp_path / "ner"
    results = run_experiment(store, cfgs, out)

    assert results["task"] == "token-classification" and results["metric"] == "f1"
    assert {r["rows"] for r in results["data"].values()} == {200} and "unlabelled" not in results["data"]
    assert results["data"]["train"]["entities"].keys() <= {"LOC", "MISC", "ORG", "PER"}
    table = results["schedules"]["equal-steps"]["table"]
    assert list(table) == ["teacher", "direct", "task", "task-aug", MENTION_VARIANT]
    for row in table.values():
        assert 0.0 <= row["f1"]["mean"] <= 1.0 and 0.0 <= row["token_accuracy"]["mean"] <= 1.0
        assert {"precision", "recall", "dev_f1"} <= row.keys() and "accuracy" not in row
        config = AutoConfig.from_pretrained(out / row["runs"][0])
        assert config.architectures[0].endswith("ForTokenClassification") and config.num_labels == 9
    plain, mention = (results["augmentation"][v]["counts"] for v in ("task-aug", MENTION_VARIANT))
    assert plain["mentions_replaced"] == 0 < mention["mentions_replaced"] and plain["replacements"] > 0
    gap = results["schedules"]["equal-steps"]["gap"]
    assert gap["gap"] == round(table["teacher"]["f1"]["mean"] - table["direct"]["f1"]["mean"], 4)
    target = results["schedules"]["equal-steps"]["target"]["students"]
    assert set(target) == {"direct", "task", "task-aug", MENTION_VARIANT}
    assert all(row["non_embedding_vs_teacher"] < 1 for row in target.values())
    card = (out / "README.md").read_text()
    assert "| test entity F1 (%) |" in card and "Teacher-direct gap: teacher entity F1" in card
    assert "Target: student entity F1 >= 95% of the teacher's at <= 1/3" in card
    assert all(f"| {name} | " in card for name in table) and (out / "dev_f1-equal-steps.png").stat().st_size > 0


def test_the_shipped_ner_demo_pipeline_runs_end_to_end(store, tmp_path, tiny_bert_factory, one_torch_thread):
    """`distillery demo --sample ner`: the shipped pipeline file, as it is, on a few sentences of the sample (CoNLL
    files: token classification) with a tiny model in its step config: word vectors only (no masked LM), a
    token-classifier teacher and student scored by entity F1."""
    import shutil

    from distillery.bundled import CONFIGS_DIR
    from distillery.demo import SAMPLES, run_demo

    sample = tmp_path / "samples" / "wordnet_ner"
    sample.mkdir(parents=True)
    for split, count in (("train", 40), ("dev", 12), ("test", 12)):
        sentences = (NER_SAMPLE_DIR / f"{split}.conll").read_text().split("\n\n")[1:count + 1]
        (sample / f"{split}.conll").write_text("\n\n".join(sentences) + "\n")
    tiny = tiny_bert_factory(layers=2, hidden=32, heads=2, intermediate=64, with_mlm_head=False, seed=7)
    (tmp_path / "configs").mkdir()
    pipeline = shutil.copy(SAMPLES["ner"], tmp_path / "configs")
    steps = (CONFIGS_DIR / "demo_ner.toml").read_text()
    steps = steps[:steps.index("[augment]")]             # the shipped licence, tiny settings for the rest
    (tmp_path / "configs" / "demo_ner.toml").write_text(
        steps + f'[augment]\nnum_aug = 1\n\n[finetune]\nmodel = "{tiny}"\nmax_steps = 3\nbatch_size = 8\n'
                'max_seq_length = 32\n\n[task]\nstudent_layers = 1\nstudent_init = "teacher"\n'
                'stage1_epochs = 0.2\nstage2_epochs = 0.2\nbatch_size = 8\nmax_seq_length = 32\n')
    result = run_demo(store, tmp_path / "runs", pipeline)

    assert set(result["versions"]) == {"wordnet-ner-train", "wordnet-ner-dev", "wordnet-ner-test",
                                       "wordnet-ner-train-aug"}
    assert result["mlm"] is None and store.manifest("wordnet-ner-train-aug")["extra"]["models"]["mlm"] == "none"
    assert set(result["scores"]) == {"teacher", "student"}
    for scores in result["scores"].values():
        assert {"f1", "precision", "recall", "token_accuracy", "per_type"} <= scores.keys() and scores["rows"] == 12


def test_the_task_option_must_fit_the_data(store, tmp_path):
    """task = token-classification on sentence data (no tags column) is refused in one line, and so is a variant
    that cannot run on it."""
    from distillery.recipes.ablation import Clock, Experiment, prepare_data

    paths, toml = other_dataset(tmp_path)
    overrides = {**{k: str(v) for k, v in paths.items()}, "name_prefix": "mine", "mlm": "none"}
    x = Experiment(store, load_experiment(toml, {**overrides, "task": "token-classification"}), tmp_path / "out",
                   Clock(tmp_path / "clock.json"))
    with pytest.raises(DistilleryError, match=r"task = token-classification, but the training split .* no 'tags'"):
        prepare_data(x)
    with pytest.raises(DistilleryError, match="'variants': task-aug-ment: choose from direct, task"):
        load_experiment(toml, {"variants": ["task-aug-ment"]})
    with pytest.raises(DistilleryError, match="'unlabelled': empty, but the domain masked LM"):
        load_experiment(toml, {"unlabelled": ""})


def test_one_seed_is_never_called_larger_than_the_spread():
    from distillery.recipes.ablation import _comparisons
    from distillery.recipes.ablation_report import comparison_lines

    one = {"direct": {"f1": {"mean": 0.68, "std": 0.0, "n": 1}}, "task-aug": {"f1": {"mean": 0.72, "std": 0.0, "n": 1}}}
    pair, = _comparisons(one, "f1")
    assert pair["larger_than_spread"] is None
    assert comparison_lines([pair]) == ["- task-aug vs direct: +4.0 points, one seed: no seed spread to compare with"]
