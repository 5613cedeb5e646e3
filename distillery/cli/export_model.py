"""`distillery export-model`: int8 and ONNX copies of a saved classifier, checked against it."""
from __future__ import annotations

from typing import Any

import click

from distill.config import ExportConfig
from distillery.cli.options import build_config, config_options
from distillery.cli.shared import current_store


@click.command("export-model")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@config_options(ExportConfig)
def export_model_command(model_dir: str, config_path: str | None, **flags: Any) -> None:
    """Write deployment copies of the saved classifier MODEL_DIR (or a run folder's model) beside it: dynamic int8
    (--int8) and ONNX (--onnx; both when neither is given), each checked against the fp32 model on a version
    (top-1 agreement, largest logit difference; a token classifier: agreement per word and entity F1 against the
    fp32 tags); the figures go to exports.json and the model card."""
    from distill.export import export_model

    cfg = build_config(ExportConfig, "export_model", config_path, flags)
    result = export_model(current_store(), model_dir, cfg)
    click.echo(f"export-model: {result['model']}")
    for name in ("int8", "onnx"):
        if name in result:
            c = result[name]
            tagger = "words" in c                  # a token classifier, checked per word
            click.echo(f"  {name:<5} {c['path']:<16} {c['size_bytes'] / 1e6:7.1f} MB  "
                       f"{'per-word' if tagger else 'top-1'} agreement {c['agreement']:.4f}  "
                       + (f"entity F1 vs fp32 {_score(c['entity_f1_vs_fp32'])}  " if tagger else "")
                       + f"max abs logit diff {c['max_abs_diff']:.2e}  on {c['check_name'] or c['check_version'][:12]} "
                       f"({c['rows']} rows" + (f", {c['words']} words)" if tagger else ")"))


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
