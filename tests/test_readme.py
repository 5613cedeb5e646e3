"""Every example in README.md runs as written (in order, as a newcomer would type them), so the README cannot
rot: shell lines through a shell, Python blocks as scripts, TOML blocks loaded as the config they describe.

The examples run in a scratch folder holding the files they name: the bundled sample cut to 48 rows per split,
and small stand-ins for the other inputs (an SST-2 TSV, a corpus folder, a GloVe file). Training commands get
`--max-steps 2 --batch-size 8` (Python: `max_steps=2, batch_size=8`) so the suite stays fast; `make demo` and
`make test` themselves are the two entry points CI and the demo run, not repeated here.
"""
from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from distillery.bundled import CONFIGS_DIR, SAMPLE_DIR
from distillery.cli.main import cli
from pipelines.config import load_config
from preprocess import PreprocessConfig

README = Path(__file__).resolve().parent.parent / "README.md"
TRAINING = re.compile(r"^distillery distill (finetune|general|task|mlm)\b")
CONFIGS = re.compile(r"\b(FinetuneConfig|TaskDistillConfig|DistillConfig|MLMConfig)\(")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(code: str) -> list[str]:
    """The shell commands of a bash block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def shrink_command(command: str) -> str:
    return command + " --max-steps 2 --batch-size 8" if TRAINING.match(command) else command


def shrink_python(code: str) -> str:
    return CONFIGS.sub(lambda m: f"{m.group(1)}(max_steps=2, batch_size=8, ", code)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    data = root / "distillery" / "samples" / "wordnet_supersense"
    data.mkdir(parents=True)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        (data / name).write_text("".join((SAMPLE_DIR / name).read_text().splitlines(keepends=True)[:48]))
    (data / "unlabelled.txt").write_text("".join((SAMPLE_DIR / "unlabelled.txt").read_text()
                                                 .splitlines(keepends=True)[:96]))
    shutil.copytree(CONFIGS_DIR, root / "distillery" / "configs")
    (root / "glue" / "SST-2").mkdir(parents=True)
    (root / "glue" / "SST-2" / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"a {w} film about {w} people\t{i % 2}\n" for i, w in enumerate(
            ["warm", "cold", "dull", "bright", "long", "short", "funny", "sad"])))
    (root / "corpus").mkdir()
    for i in range(2):
        text = "".join(f"the river number {i} {j} flows north to the sea\n" for j in range(6))
        (root / "corpus" / f"part{i}.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    (root / "big.jsonl").write_text("".join(f'{{"text": "big row {i} of text"}}\n' for i in range(20)))
    rng = np.random.default_rng(0)
    words = sorted({w for line in (data / "train.jsonl").read_text().split() for w in re.findall(r"[a-z]+", line)})
    (root / "glove.840B.300d.txt").write_text("".join(
        f"{w} {' '.join(f'{x:.4f}' for x in rng.normal(size=8))}\n" for w in words + ["film", "people"]))
    return root


def run_command(command: str) -> None:
    """A `distillery` command line, run in this process (the CLI's own entry point, so errors exit as it would)."""
    words = shlex.split(shrink_command(command))
    assert words[0] == "distillery", f"only distillery commands are expected in the README's shell blocks: {command}"
    result = CliRunner().invoke(cli, words[1:])
    assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}\n{result.exception!r}"


def test_every_readme_example_runs_as_written(scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("DISTILLERY_CACHE", str(scratch / "cache"))
    ran = 0
    for language, code in blocks(README.read_text()):
        if language == "bash":
            for command in commands(code):
                if command.startswith("make "):
                    continue                            # the entry points: CI runs `make test`, `make demo` itself
                run_command(command)
                ran += 1
        elif language == "python":
            try:
                exec(compile(shrink_python(code), "README.md example", "exec"), {"__name__": "__main__"})
            except Exception as exc:  # noqa: BLE001 - report which example failed
                raise AssertionError(f"{code}\n{type(exc).__name__}: {exc}") from exc
            ran += 1
        elif language == "toml" and code.startswith("# file: "):
            tomllib.loads(code)                         # a file the next commands use (a pipeline file)
            (scratch / code.split("\n", 1)[0].removeprefix("# file: ").strip()).write_text(code)
            ran += 1
        elif language == "toml":
            data = tomllib.loads(code)
            path = scratch / "example.toml"
            path.write_text(code)
            assert load_config(PreprocessConfig, path).chunk_rows == data["chunk_rows"]
            ran += 1
    assert ran >= 25


def test_the_shrinking_only_adds_step_limits():
    assert shrink_command("distillery distill task x --output y") == \
        "distillery distill task x --output y --max-steps 2 --batch-size 8"
    assert shrink_command("distillery augment x --name y") == "distillery augment x --name y"
    assert shrink_python("FinetuneConfig(model='m')") == "FinetuneConfig(max_steps=2, batch_size=8, model='m')"
