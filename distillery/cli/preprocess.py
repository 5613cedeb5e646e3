"""`distillery preprocess`: raw files -> a new dataset version."""
from __future__ import annotations

from typing import Any

import click

from distillery.cli.options import build_config, config_options
from distillery.cli.shared import current_store, name_option, push_option, push_version, resume_option
from distillery.present import report_step
from pipelines.runner import run_step
from preprocess import PreprocessConfig, plan_preprocess


@click.command("preprocess")
@click.argument("inputs", nargs=-1, required=True)
@name_option
@resume_option
@push_option
@config_options(PreprocessConfig)
def preprocess_command(inputs: tuple[str, ...], name: str | None, resume: bool, push_url: str | None,
                       config_path: str | None, **flags: Any) -> None:
    """Read INPUT files (txt, jsonl, csv, tsv, parquet, Hugging Face dataset folders; .gz/.zst too), clean,
    filter and de-duplicate them into a new dataset version.

    Token classification: CoNLL column files (.conll, .bio, .iob; --token-column, --tag-column) or rows with a
    list of tokens and a list of tags (--tokens-column, --tags-column) make a version of tokens and tags, the
    tags checked by --tag-scheme."""
    config = build_config(PreprocessConfig, "preprocess", config_path, flags)
    store = current_store()
    result = run_step(store, plan_preprocess(list(inputs), config), name, resume)
    report_step(result, store)
    push_version(store, result.manifest["version_id"], push_url)
