"""Does another candidate path's copy set train as good a student? (one seed; compare with the seed spread)

Takes a finished task-distilled student of `distillery recipe tinybert` (its model card names its copies version
and its full training config), augments the copies' source version again with the copies' own augment options
changed by ``--set KEY=VALUE`` (e.g. ``mlm_backend=onnx-int8`` or ``masks_per_pass=3``), trains the same student
the same number of steps per stage on the new copies (same teacher, initial student, seed and schedule), and
prints both students' dev and test accuracy.

    cd RECIPE_DIR_PARENT && python bench/copies_student_check.py --store st \\
        --card runs/transfer/task-aug-mlm-seed1/model/card.json --set mlm_backend=onnx-int8 --output runs/int8-check
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from augment import AugmentConfig, plan_augment  # noqa: E402
from distill import evaluate, task_distill  # noqa: E402
from distill.config import TaskDistillConfig  # noqa: E402
from pipelines.config import build  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--card", type=Path, required=True, help="card.json of the student to compare with")
    parser.add_argument("--set", action="append", default=[], help="augment option KEY=VALUE (repeatable)")
    parser.add_argument("--dev", default="ablation-dev")
    parser.add_argument("--test", default="ablation-test")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    quiet_libraries()
    store = Store(args.store)
    card = json.loads(args.card.read_text())
    copies = next(d for d in card["data"] if d["role"] == "train")
    manifest = store.manifest(copies["version_id"])
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    options = {k: v for k, v in manifest["config"].items() if k in fields}
    for item in args.set:
        key, value = item.split("=", 1)
        options[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    new = run_step(store, plan_augment(store, manifest["parents"][0]["version_id"], build(AugmentConfig, options)),
                   f"{copies['name']}-{'-'.join(s.replace('=', '_') for s in args.set)}").manifest
    cfg = build(TaskDistillConfig, card["training"])
    old_rows, new_rows = copies["num_rows"], new["num_rows"]
    cfg = dataclasses.replace(cfg, stage1_epochs=cfg.stage1_epochs * old_rows / new_rows,
                              stage2_epochs=cfg.stage2_epochs * old_rows / new_rows)    # the same steps per stage
    student = task_distill(store, new["version_id"], cfg, args.output, resume=True)
    report = {"set": args.set, "copies": {"before": old_rows, "after": new_rows}}
    for role, model in (("before", args.card.parent), ("after", student.path)):
        report[role] = {split: evaluate(store, ref, model)["accuracy"] for split, ref in (("dev", args.dev),
                                                                                          ("test", args.test))}
    print(json.dumps(report, indent=2))
    (args.output / "check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
