"""Test accuracy of the finished runs of a (possibly unfinished) recipe experiment: dev from each model's scores.json,
test by `distill.api.evaluate` on ablation-test. Run in the folder holding the store `st` and `runs/transfer`."""
import json
from pathlib import Path

from distill.api import evaluate
from distill.runs import read_scores
from pipelines.store import Store

store = Store("st")
out = {}
for folder in sorted(Path("runs/transfer").glob("*")):
    model = folder / "model"
    if not (folder / "finished.json").exists() and not (model / "config.json").exists():
        continue
    if not (model / "scores.json").exists():
        continue
    dev = read_scores(model).get("accuracy")
    test = evaluate(store, "ablation-test", model)["accuracy"]
    out[folder.name] = {"dev": dev, "test": test}
    print(f"{folder.name:<28} dev {100*dev:.1f}  test {100*test:.1f}", flush=True)
json.dump(out, open("partial_scores.json", "w"), indent=1)
