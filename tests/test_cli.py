"""The CLI: versions commands, config files, one-line errors and exit codes."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.config import load_config
from pipelines.errors import DistilleryError

ROWS = [{"text": f"row {i}", "label": str(i % 2), "row_id": i} for i in range(5)]


def run(store, *args):
    result = CliRunner().invoke(cli, ["--store", str(store.root), *args], catch_exceptions=False)
    return result


def test_versions_commands(store, make_version, tmp_path):
    manifest = make_version(store, ROWS, name="toy")
    vid = manifest["version_id"]
    assert vid[:12] in run(store, "versions", "list").output
    shown = run(store, "versions", "show", "toy")
    assert "lineage" in shown.output and "raw memory" in shown.output
    assert json.loads(run(store, "versions", "show", "toy", "--json").output)["num_rows"] == 5
    assert run(store, "versions", "tag", "toy@v1", vid[:8]).output.startswith("toy@v1 -> ")
    assert "ok" in run(store, "versions", "verify", "toy@v1").output
    diff = json.loads(run(store, "versions", "diff", "toy", "toy@v1").output)
    assert diff["same_data"] is True
    out = tmp_path / "x.jsonl"
    run(store, "export", "toy", str(out), "--format", "jsonl")
    assert len(out.read_text().splitlines()) == 5
    assert "0 version folder(s) deleted" in run(store, "versions", "gc").output


def test_errors_are_one_line_with_exit_code(store, make_version):
    manifest = make_version(store, ROWS)
    shard = store.shard_paths(manifest["version_id"])[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"X")
    base = [sys.executable, "-m", "pipelines", "--store", str(store.root)]
    proc = subprocess.run([*base, "versions", "verify"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "CORRUPT" in proc.stdout and proc.stderr.strip() == "error: 1 version(s) failed verification"
    proc = subprocess.run([*base, "versions", "show", "nope@latest"], capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([*base, "--debug", "versions", "show", "nope"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@dataclasses.dataclass
class Inner:
    size: int = 1
    names: tuple[str, ...] = ()


@dataclasses.dataclass
class Outer:
    seed: int = 0
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[inner]\nsize = 5\nnames = ["a", "b"]\n')
    cfg = load_config(Outer, path, {"inner.size": 9, "seed": None})
    assert cfg == Outer(seed=3, inner=Inner(size=9, names=("a", "b")))
    path.write_text("sede = 3\n")
    with pytest.raises(DistilleryError, match="unknown config key.*sede"):
        load_config(Outer, path)
