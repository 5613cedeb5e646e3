"""`distillery preprocess`: raw files -> a new dataset version."""
from __future__ import annotations

from typing import Any

import click

from pipelines.config import load_config
from pipelines.readers import FORMATS
from pipelines.text_clean import NORMALIZATIONS

# CLI option -> dotted config key (flags override the TOML file's keys)
_OVERRIDES = {
    "fmt": "input.format", "text_column": "input.text_column", "text_pair_column": "input.text_pair_column",
    "label_column": "input.label_column", "hf_split": "input.hf_split", "max_row_bytes": "input.max_row_bytes",
    "normalize": "clean.normalize", "lowercase": "clean.lowercase",
    "split_sentences_over": "clean.split_sentences_over",
    "min_chars": "filter.min_chars", "max_chars": "filter.max_chars",
    "min_tokens": "filter.min_tokens", "max_tokens": "filter.max_tokens",
    "dedup": "dedup.exact", "near_dup": "dedup.near", "near_dup_threshold": "dedup.near_threshold",
    "workers": "workers", "chunk_rows": "chunk_rows",
}


@click.command("preprocess")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--name", help="Name for the version (moves NAME@latest to it).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose keys are PreprocessConfig fields ([input], [clean], [filter], [dedup], [licence]).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Input format (default: from the extension).")
@click.option("--text-column", help="Column holding the text (default: text).")
@click.option("--text-pair-column", help="Column holding the second sentence of a pair.")
@click.option("--label-column", help="Column holding the label (kept with its type).")
@click.option("--hf-split", help="Split of a Hugging Face dataset folder (default: train).")
@click.option("--normalize", type=click.Choice(NORMALIZATIONS), help="Unicode normalisation (default: nfc).")
@click.option("--lowercase/--no-lowercase", default=None, help="Lower-case the text (default: no).")
@click.option("--split-sentences-over", type=int, help="Split texts longer than N characters into sentences.")
@click.option("--min-chars", type=int, help="Drop texts shorter than N characters.")
@click.option("--max-chars", type=int, help="Drop texts longer than N characters (0: no limit).")
@click.option("--min-tokens", type=int, help="Drop texts with fewer than N word/punctuation tokens.")
@click.option("--max-tokens", type=int, help="Drop texts with more than N tokens (0: no limit).")
@click.option("--dedup/--no-dedup", default=None, help="Exact de-duplication (default: on).")
@click.option("--near-dup/--no-near-dup", default=None, help="MinHash-LSH near-duplicate removal (default: off).")
@click.option("--near-dup-threshold", type=float, help="Jaccard threshold for near duplicates (implies --near-dup).")
@click.option("--max-row-bytes", type=int, help="Reject rows longer than this (default: 1000000).")
@click.option("--workers", type=int, help="Worker processes (never changes the output).")
@click.option("--chunk-rows", type=int, help="Input rows per chunk / shard (default: 20000).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same version.")
@click.pass_context
def preprocess_command(ctx: click.Context, inputs: tuple[str, ...], name: str | None, config_path: str | None,
                       resume: bool, **options: Any) -> None:
    """Read INPUT files (txt, jsonl, csv, tsv, parquet, Hugging Face dataset folders; .gz/.zst too), clean,
    filter and de-duplicate them into a new dataset version."""
    from pipelines.cli import describe_version
    from pipelines.preprocess import PreprocessConfig, preprocess

    if options["near_dup_threshold"] is not None and options["near_dup"] is None:
        options["near_dup"] = True
    config = load_config(PreprocessConfig, config_path, {_OVERRIDES[k]: v for k, v in options.items()})
    store = ctx.find_object(dict)["store"]
    manifest = preprocess(store, list(inputs), config, name=name, resume=resume)
    click.echo(describe_version(manifest, store))
    rejected = sum(manifest["accounting"].get("rejected", {}).values())
    if rejected:
        click.echo(f"  rejects: {rejected} row(s) with origin and reason in {len(manifest['rejects'])} rejects shard(s)")
