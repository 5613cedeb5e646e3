"""`distillery augment`: TinyBERT word-replacement augmentation of a dataset version."""
from __future__ import annotations

from typing import Any

import click

from augment import AugmentConfig, plan_augment
from distillery.cli.options import build_config, config_options
from distillery.cli.shared import current_store, name_option, push_option, push_version, resume_option
from distillery.present import report_step
from pipelines.runner import run_step


@click.command("augment")
@click.argument("ref")
@name_option
@resume_option
@push_option
@config_options(AugmentConfig)
def augment_command(ref: str, name: str | None, resume: bool, push_url: str | None, config_path: str | None,
                    **flags: Any) -> None:
    """Augment version REF with TinyBERT word replacement; writes a new version."""
    config = build_config(AugmentConfig, "augment", config_path, flags)
    store = current_store()
    result = run_step(store, plan_augment(store, ref, config), name, resume)
    report_step(result, store)
    push_version(store, result.manifest["version_id"], push_url)
