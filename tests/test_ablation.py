"""Smoke test of the TinyBERT ablation recipe (`bench/quality_bench.py --quick`): every stage runs end to end,
under both schedules, and the recipe reads a non-default dataset."""
from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from distillery.demo import REPO_ROOT, SAMPLE_DIR
from distillery.recipes.ablation import MLM_VARIANT, VARIANTS, load_experiment, run_experiment
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from preprocess import plan_preprocess

QUICK = REPO_ROOT / "configs" / "ablation_quick.toml"


def test_quick_ablation_runs_every_student_and_writes_the_report(store, tmp_path):
    cfgs = load_experiment(QUICK)
    out = tmp_path / "ablation"
    results = run_experiment(store, cfgs, out)

    assert list(results["schedules"]) == ["equal-steps", "equal-epochs"]
    for part in results["schedules"].values():
        table = part["table"]
        assert set(table) == {"teacher", *VARIANTS, MLM_VARIANT}
        teacher = table["teacher"]
        for name, row in table.items():
            assert 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["accuracy"]["n"] == 1
            assert row["latency_ms_batch1"] > 0 and row["latency_ms_batch32"] > 0
            if name != "teacher":
                assert row["non_embedding_parameters"] < teacher["non_embedding_parameters"]
    steps, epochs = (results["schedules"][s]["table"] for s in ("equal-steps", "equal-epochs"))
    assert steps["task"]["runs"] == epochs["task"]["runs"]            # the original split: one run, both schedules
    assert steps["task-aug"]["runs"] != epochs["task-aug"]["runs"]
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
    assert "## The masked LM" in card and "mlm_only" not in card and "MLM only" in card
    assert all((out / f"{kind}-{s}.png").stat().st_size > 0 for kind in ("stage_losses", "dev_accuracy")
               for s in ("equal-steps", "equal-epochs"))

    # Finished stages are reused: a second run trains nothing.
    models = sorted(out.glob("*/model/model.safetensors"))
    stamps = [m.stat().st_mtime_ns for m in models]
    again = run_experiment(store, cfgs, out)
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
