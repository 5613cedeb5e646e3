"""Smoke test of the TinyBERT ablation recipe (`bench/quality_bench.py --quick`): every stage runs end to end."""
from __future__ import annotations

import json

from distillery.demo import REPO_ROOT
from distillery.recipes.ablation import VARIANTS, load_experiment, run_experiment


def test_quick_ablation_runs_every_student_and_writes_the_report(store, tmp_path):
    cfgs = load_experiment(REPO_ROOT / "configs" / "ablation_quick.toml")
    out = tmp_path / "ablation"
    results = run_experiment(store, cfgs, out)

    assert list(results["table"]) == ["teacher", *VARIANTS]
    teacher = results["table"]["teacher"]
    for name, row in results["table"].items():
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["accuracy"]["n"] == 1
        assert row["latency_ms_batch1"] > 0 and row["latency_ms_batch32"] > 0
        if name != "teacher":
            assert row["non_embedding_parameters"] < teacher["non_embedding_parameters"]
    assert {r["rows"] for k, r in results["data"].items() if k != "unlabelled"} == {4000, 1000}
    assert results["augmentation"]["rows"] > 4000          # originals plus augmented copies
    assert json.loads((out / "results.json").read_text())["table"].keys() == results["table"].keys()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "| general+task-aug |" in card
    assert (out / "stage_losses.png").stat().st_size > 0 and (out / "dev_accuracy.png").stat().st_size > 0

    # Finished stages are reused: a second run trains nothing.
    models = sorted(out.glob("*/model/model.safetensors"))
    stamps = [m.stat().st_mtime_ns for m in models]
    again = run_experiment(store, cfgs, out)
    assert [m.stat().st_mtime_ns for m in sorted(out.glob("*/model/model.safetensors"))] == stamps
    assert again["wall_clock_seconds"] == results["wall_clock_seconds"]      # reused steps keep their times
    stages = results["wall_clock_seconds"]["stages"]
    assert stages["preprocess"]["runs"] == 4 and stages["direct"]["runs"] == 1
    assert {"teacher", "augment", "general", "task", "task-aug", "general+task-aug"} <= stages.keys()
    assert all(v["seconds"] > 0 for k, v in stages.items() if k != "preprocess")
    assert again["table"]["task-aug"]["accuracy"] == results["table"]["task-aug"]["accuracy"]
