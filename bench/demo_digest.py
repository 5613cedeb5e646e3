"""A digest of a finished `distillery demo` (or `make demo`) folder, to compare two runs of it byte for byte.

    python bench/demo_digest.py CLONE_A > a.json; python bench/demo_digest.py CLONE_B > b.json; diff a.json b.json

For every version in ``CLONE/distillery_store``: its step, rows, shard sha256s and accounting, keyed by the
shards (version ids hash the steps' code, so a refactor changes them while the bytes stay); for every training
artefact under ``CLONE/runs/demo/<key>/``: the sha256 of ``metrics.jsonl``, ``model.safetensors`` and
``scores.json``, keyed by their path below the run-folder key (which derives from the version ids).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

ARTEFACTS = ("metrics.jsonl", "model.safetensors", "scores.json")


def digest(root: Path) -> dict[str, Any]:
    versions = []
    for path in sorted((root / "distillery_store" / "versions").glob("*/manifest.json")):
        manifest = json.loads(path.read_text())
        versions.append({"step": manifest["step"], "rows": manifest["num_rows"],
                         "shards": [s["sha256"] for s in manifest["shards"]], "accounting": manifest["accounting"],
                         "id": manifest["version_id"][:12]})
    runs = {}
    for path in sorted((root / "runs" / "demo").rglob("*")):
        if path.name in ARTEFACTS and path.is_file() and not path.is_symlink():   # nothing outside ROOT
            relative = path.relative_to(root / "runs" / "demo")
            runs[str(Path(*relative.parts[1:]))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"versions": sorted(versions, key=lambda v: (v["step"], v["shards"])), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder `make demo` ran in")
    parser.add_argument("--ids", action="store_true", help="keep the version ids (left out by default)")
    args = parser.parse_args()
    result = digest(args.root)
    if not args.ids:
        for version in result["versions"]:
            version.pop("id")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
