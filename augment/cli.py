"""`distillery augment`: TinyBERT word-replacement augmentation of a dataset version."""
from __future__ import annotations

import click

from augment.config import INPUT_MODES, OUTPUT_FORMS, PRECISIONS, AugmentConfig


def _section(config_file: str | None) -> str | None:
    """Use the file's [augment] table when it has one (pipeline files), else its top level."""
    if config_file is None:
        return None
    import tomllib

    try:
        with open(config_file, "rb") as fh:
            return "augment" if isinstance(tomllib.load(fh).get("augment"), dict) else None
    except (OSError, tomllib.TOMLDecodeError):
        return None     # load_config reports the problem


@click.command("augment")
@click.argument("ref")
@click.option("--name", help="Name for the new version (NAME@latest points at it).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with AugmentConfig keys.")
@click.option("--mlm", help="Masked LM: hub id, local folder, or 'none' (vectors for every word). "
                            "Default bert-base-uncased.")
@click.option("--vectors", help="Word vectors: GloVe .txt, word2vec .bin, KeyedVectors file or cache folder "
                                "(default GloVe 6B 50d, bundled).")
@click.option("--num-aug", type=int, help="Rounds N per text (default: task preset, else 30).")
@click.option("--task", help="GLUE preset for N: cola, mrpc, rte, sts-b (30), sst-2, qnli (20), mnli, qqp (10).")
@click.option("--top-k", type=int, help="Candidates K per word (15).")
@click.option("--replace-prob", type=float, help="Replacement probability p (0.4).")
@click.option("--glove-vocab-limit", type=int, help="Neighbours among the first V vector words (100000).")
@click.option("--input-mode", type=click.Choice(INPUT_MODES), help="pair (reference) or single.")
@click.option("--output-form", type=click.Choice(OUTPUT_FORMS), help="surface (default) or reference.")
@click.option("--masks-per-pass", type=int, help="Approximate fast mode: masks per forward pass (1 = exact).")
@click.option("--max-length", type=int, help="Masked-LM context cap in pieces (default the model's, <= 512).")
@click.option("--field", "fields", multiple=True, help="Text column to augment (repeatable; default text, text_pair).")
@click.option("--drop-punctuation/--keep-punctuation", default=None, help="Filter punctuation candidates.")
@click.option("--drop-unk/--keep-unk", default=None, help="Filter [UNK] and other special tokens.")
@click.option("--drop-self/--keep-self", default=None, help="Filter the word itself.")
@click.option("--match-case/--any-case", default=None, help="Filter candidates whose first letter's case differs.")
@click.option("--precision", type=click.Choice(PRECISIONS), help="auto = fp32 on CPU, bf16 on CUDA.")
@click.option("--seed", type=int, help="Random seed (42).")
@click.option("--chunk-rows", type=int, help="Input rows per output shard (256).")
@click.option("--workers", type=int, help="Helper processes for preparation and sampling (1; 0 = none).")
@click.option("--batch-size", "mlm_batch_size", type=int, help="Sequences per masked-LM batch (256).")
@click.option("--device", help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue an interrupted write of the same version.")
@click.pass_context
def augment_command(ctx: click.Context, ref: str, name: str | None, config_file: str | None, resume: bool,
                    fields: tuple[str, ...], **options: object) -> None:
    """Augment version REF with TinyBERT word replacement; writes a new version."""
    from augment.engine import augment_version
    from pipelines.cli import describe_version
    from pipelines.config import load_config

    overrides = {**options, "fields": fields or None}
    config = load_config(AugmentConfig, config_file, overrides, section=_section(config_file))
    store = ctx.obj["store"]
    manifest = augment_version(store, ref, config, name=name, resume=resume)
    for warning in manifest["extra"].get("warnings", []):
        click.secho(f"WARNING {warning}", fg="yellow", err=True)
    click.echo(describe_version(manifest, store))
