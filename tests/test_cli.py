"""The CLI: versions commands, config files, one-line errors and exit codes."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from distillery.cli.main import cli
from pipelines.config import Options, load_config, option
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
    same = run(store, "versions", "diff", "toy", "toy@v1")
    assert same.exit_code == 0 and "same step, config, schema, accounting and data" in same.output
    assert json.loads(run(store, "versions", "diff", "toy", "toy@v1", "--json").output)["same_data"] is True
    out = tmp_path / "x.jsonl"
    run(store, "export", "toy", str(out), "--format", "jsonl")
    assert len(out.read_text().splitlines()) == 5
    assert "0 version folder(s) deleted" in run(store, "versions", "gc").output


def test_versions_list_diff_and_show_read_like_tools(store, make_version, tmp_path):
    make_version(store, ROWS, name="toy")
    other = make_version(store, ROWS[:3], config={"chunk_rows": 1}, name="small")
    listing = run(store, "versions", "list").output.splitlines()
    assert listing[0].split()[:4] == ["version", "step", "rows", "created"]
    assert [line.split()[-1] for line in listing[1:]] == ["toy@latest", "small@latest"]     # oldest first
    diff = run(store, "versions", "diff", "toy", "small")
    assert diff.exit_code == 1 and "rows: 5 -> 3" in diff.output and "config chunk_rows: 2 -> 1" in diff.output
    assert "data: shards differ" in diff.output
    assert "name=None" not in run(store, "versions", "show", other["version_id"][:8]).output
    missing = CliRunner().invoke(cli, ["--store", str(tmp_path / "nope"), "versions", "list"])
    assert missing.exit_code == 1 and "no dataset store at" in str(missing.exception)
    (tmp_path / "empty").mkdir()
    assert "no versions in store" in CliRunner().invoke(cli, ["--store", str(tmp_path / "empty"), "versions",
                                                              "list"]).output


def test_errors_are_one_line_with_exit_code(store, make_version):
    manifest = make_version(store, ROWS)
    shard = store.shard_paths(manifest["version_id"])[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"X")
    base = [sys.executable, "-m", "distillery", "--store", str(store.root)]
    proc = subprocess.run([*base, "versions", "verify"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "CORRUPT" in proc.stdout and proc.stderr.strip() == "error: 1 version(s) failed verification"
    proc = subprocess.run([*base, "versions", "show", "nope@latest"], capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([*base, "--debug", "versions", "show", "nope"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@dataclasses.dataclass
class Inner(Options):
    size: int = option(1, ge=1, help="a size")
    names: tuple[str, ...] = option((), help="names")
    mode: str = option("a", choices=("a", "b"), help="a mode")


@dataclasses.dataclass
class Outer(Options):
    seed: int = option(0, help="a seed")
    rate: float = option(0.5, gt=0, lt=1, help="a rate")
    inner: Inner = option(default_factory=Inner, help="inner")


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[inner]\nsize = 5\nnames = ["a", "b"]\n')
    cfg = load_config(Outer, path, {"inner.size": 9, "seed": None})
    assert cfg == Outer(seed=3, inner=Inner(size=9, names=("a", "b")))
    path.write_text("sede = 3\n")
    with pytest.raises(DistilleryError, match="sede.*unknown key"):
        load_config(Outer, path)


@pytest.mark.parametrize("toml, key, problem", [
    ('seed = "many"', "seed", "expected int, got str"),
    ("seed = true", "seed", "expected int, got bool"),
    ("rate = 1.5", "rate", "must be < 1"),
    ('rate = "x"', "rate", "expected float"),
    ("[inner]\nsize = 0", "inner.size", "must be >= 1"),
    ("[inner]\nsize = 2.5", "inner.size", "expected int, got float"),
    ('[inner]\nmode = "c"', "inner.mode", "not one of a, b"),
    ("[inner]\nnames = [1]", "inner.names[0]", "expected str"),
    ('inner = "x"', "inner", "expected a table"),
])
def test_config_values_are_checked_with_one_line_naming_the_key(tmp_path, toml, key, problem):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    with pytest.raises(DistilleryError) as info:
        load_config(Outer, path)
    message = str(info.value)
    assert "\n" not in message and f"'{key}'" in message and problem in message and str(path) in message



@pytest.mark.parametrize("command, toml, key", [
    (["preprocess", "IN"], "chunk_rows = \"many\"", "chunk_rows"),
    (["preprocess", "IN"], "input = \"x\"", "input"),
    (["preprocess", "IN"], "[dedup]\nnear = \"yes\"", "dedup.near"),
    (["preprocess", "IN"], "[filter]\nmin_tokens = 2.5", "filter.min_tokens"),
    (["preprocess", "IN"], "[clean]\nsplit_sentences_over = -1", "clean.split_sentences_over"),
    (["distill", "finetune", "REF", "--output", "OUT"], "epochs = \"two\"", "epochs"),
    (["distill", "finetune", "REF", "--output", "OUT"], "epochs = -1", "epochs"),
    (["augment", "REF"], "num_aug = -2", "num_aug"),
])
def test_every_config_value_is_checked_before_any_work(store, tmp_path, command, toml, key):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    (tmp_path / "in.txt").write_text("a line\n")
    args = [str(tmp_path / "in.txt") if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    base = [sys.executable, "-m", "distillery", "--store", str(store.root)]
    proc = subprocess.run([*base, *args, "--config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and f"'{key}'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_flags_are_checked_too(store, tmp_path):
    (tmp_path / "in.txt").write_text("a line\n")
    result = CliRunner().invoke(cli, ["--store", str(store.root), "preprocess", str(tmp_path / "in.txt"),
                                      "--split-sentences-over", "-1"])
    assert result.exit_code == 1 and "'clean.split_sentences_over': must be >= 0" in str(result.exception)
