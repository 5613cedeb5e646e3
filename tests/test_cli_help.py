"""`--help` of every command lists every option of its config with its default, derived from the config fields."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from augment import AugmentConfig
from distill.config import (
    CacheLogitsConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    TaskDistillConfig,
)
from distillery.cli.main import cli
from distillery.cli.options import config_flags
from preprocess import PreprocessConfig

CONFIG_COMMANDS = [
    (["preprocess"], PreprocessConfig), (["augment"], AugmentConfig),
    (["distill", "finetune"], FinetuneConfig), (["distill", "general"], DistillConfig),
    (["distill", "task"], TaskDistillConfig), (["distill", "evaluate"], EvaluateConfig),
    (["distill", "cache-logits"], CacheLogitsConfig), (["export-model"], ExportConfig),
]


def option_help(args: list[str]) -> dict[str, str]:
    """Each option of a command's --help (its first flag) -> its help text, whitespace joined."""
    result = CliRunner().invoke(cli, [*args, "--help"], catch_exceptions=False, terminal_width=100)
    assert result.exit_code == 0, result.output
    blocks: dict[str, str] = {}
    current = None
    for line in result.output.split("Options:", 1)[1].splitlines():
        match = re.match(r"  (-\S+)", line)
        if match:
            current = match.group(1).split("/")[0]
            blocks[current] = line
        elif current:
            blocks[current] += line
    return {k: " ".join(v.split()) for k, v in blocks.items()}


@pytest.mark.parametrize("args, cls", CONFIG_COMMANDS, ids=lambda v: "-".join(v) if isinstance(v, list) else "")
def test_every_config_field_is_a_flag_showing_its_default(args, cls):
    options = option_help(args)
    flags = config_flags(cls)
    assert len(flags) >= 3 and "--config" in options
    for flag in flags:
        assert f"--{flag.name}" in options, f"--{flag.name} missing from `{' '.join(args)} --help`"
        assert options[f"--{flag.name}"].endswith(f"[default: {flag.default_text()}]"), options[f"--{flag.name}"]


def test_defaults_shown_are_the_dataclass_defaults():
    flags = {f.key: f for f in config_flags(PreprocessConfig)}
    assert flags["chunk_rows"].default_text() == "20000" and flags["dedup.exact"].name == "exact"
    assert flags["dedup.near_threshold"].default_text() == "0.8"
    assert flags["input.label_column"].default_text() == "none"
    assert {f.name for f in config_flags(AugmentConfig)} >= {"mlm-batch-size", "fields", "num-aug", "mlm"}
    for cls in (PreprocessConfig, AugmentConfig, TaskDistillConfig):      # flag names are the TOML keys
        assert all(f.name == f.key.rsplit(".", 1)[-1].replace("_", "-") for f in config_flags(cls))
    assert "matches" not in {f.key for f in config_flags(TaskDistillConfig)}       # TOML only


def test_the_demo_and_the_group_show_their_defaults():
    demo = option_help(["demo"])
    assert all("[default: " in demo[f"--{name}"] for name in ("sample", "runs", "workers"))
    assert "[default: distillery_store]" in option_help([])["--store"]
