"""Version ids hash the code of their own step only: editing the CLI, a recipe, a benchmark, the foundation or
another step keeps them; editing the step's code changes them; comments, docstrings and formatting do not count."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from augment import STEP as AUGMENT
from distill.logits import STEP as LOGITS
from pipelines.fingerprint import code_fingerprint, step_modules
from preprocess import STEP as PREPROCESS

REPO = Path(__file__).resolve().parent.parent
STEPS = {"preprocess": PREPROCESS, "augment": AUGMENT, "teacher-logits": LOGITS}


@pytest.fixture
def source(tmp_path) -> Path:
    for package in ("pipelines", "preprocess", "augment", "distill", "distillery", "bench"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def fingerprints(root: Path) -> dict[str, str]:
    code_fingerprint.cache_clear()
    return {name: code_fingerprint(step.module, step.package, root) for name, step in STEPS.items()}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_modules_of_each_step():
    assert "augment.sampling" in step_modules("augment.engine", "augment")
    assert "preprocess.readers" in step_modules("preprocess.step", "preprocess")
    logits = step_modules("distill.logits", "distill")
    assert {"distill.models", "distill.data", "distill.trainer"} <= set(logits)
    assert "distill.plots" not in logits and "distill.api" not in logits


def test_edits_outside_a_step_keep_every_id(source):
    before = fingerprints(source)
    edit(source / "distillery/cli/augment.py", '"""Augment version REF', '"""Augment (really) version REF')
    (source / "distillery/cli/augment.py").write_text((source / "distillery/cli/augment.py").read_text()
                                                      + "\n\ndef extra() -> int:\n    return 1\n")
    edit(source / "distillery/recipes/ablation.py", 'VARIANTS = (', 'UNUSED = 1\nVARIANTS = (')
    edit(source / "bench/augment_bench.py", "import", "import os  # noqa\nimport")
    edit(source / "pipelines/store.py", "ROW_GROUP_ROWS = 10_000", "ROW_GROUP_ROWS = 10_000\nUNUSED = 2")
    edit(source / "distill/plots.py", "def plot_metrics", "def unused() -> None:\n    pass\n\n\ndef plot_metrics")
    assert fingerprints(source) == before


def test_comments_docstrings_and_formatting_do_not_count(source):
    before = fingerprints(source)
    engine = source / "augment/engine.py"
    edit(engine, '"""Augment a dataset version', '"""Augment (a docstring edit) a dataset version')
    edit(engine, "TEXT_FIELDS = (", "# a new comment\nTEXT_FIELDS = (")
    edit(engine, 'TEXT_FIELDS = ("text", "text_pair")', "TEXT_FIELDS = ('text',\n               'text_pair')")
    assert fingerprints(source) == before


@pytest.mark.parametrize("path, old, new, changed", [
    ("augment/sampling.py", "def row_rng", "UNUSED = 3\n\n\ndef row_rng", {"augment"}),
    ("preprocess/readers.py", "RAW_CHARS = 1000", "RAW_CHARS = 999", {"preprocess"}),
    ("distill/data.py", "IGNORE_LABEL = -100", "IGNORE_LABEL = -101", {"teacher-logits"}),
])
def test_editing_a_step_changes_its_id_only(source, path, old, new, changed):
    before = fingerprints(source)
    edit(source / path, old, new)
    after = fingerprints(source)
    assert {name for name in STEPS if after[name] != before[name]} == changed
