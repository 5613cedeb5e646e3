"""Model cards (Hugging Face style README.md) for fine-tuned teachers, distilled students and masked LMs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoConfig

from distill import students
from distill.tagging import entity_report, token_classifier
from pipelines.atomic import write_bytes_atomic
from pipelines.cards import card_licence
from pipelines.confine import is_regular, read_own_json
from pipelines.errors import DistilleryError
from pipelines.resources import minilm_path

CARD_INPUTS, SCORES, EVALUATIONS = "card.json", "scores.json", "evaluations.json"    # beside the model files
DEFAULT_SEQ_LENGTH = 128        # tokens per row for a model whose training length is not recorded (not ours)
EXPORTS = "exports.json"                                                                # export-model's copies
KINDS = {"finetune": "fine-tuned classifier", "task-stage1": "task-distilled student (stage 1: intermediate layers)",
         "task-stage2": "task-distilled student", "general": "general-distilled student", "mlm": "masked LM"}
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def hub_id(model: str | None) -> str | None:
    """The Hub id of a model reference, or None for a local folder or a preset (no id to name)."""
    if not model:
        return None
    if Path(model).exists():
        try:
            return MINILM_ID if Path(model).resolve() == minilm_path().resolve() else None
        except Exception:  # noqa: BLE001 - the bundled model's package may be missing
            return None
    return model if "/" in model or model.startswith("bert-") else None


def model_seq_length(model: str | Path, asked: int = 0) -> int:
    """Tokens per row to score (or check) a model at: ``asked`` when > 0, else the ``max_seq_length`` it was trained
    at when distillery saved it (the training config in its ``card.json``), else ``DEFAULT_SEQ_LENGTH``."""
    if asked > 0:
        return asked
    path = Path(model) / CARD_INPUTS
    if not is_regular(path):
        return DEFAULT_SEQ_LENGTH
    record = read_own_json(path)
    training = record.get("training") if isinstance(record, dict) else None
    if not isinstance(training, dict):
        raise DistilleryError(f"{path} is damaged (no training config); it should record the model's training config")
    length = training.get("max_seq_length")
    return length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else DEFAULT_SEQ_LENGTH


def _task(config: Any) -> tuple[str, str]:
    """(pipeline tag, a few words on the task) of a model config."""
    if any(a.endswith("ForMaskedLM") for a in config.architectures or []):
        return "fill-mask", "masked-language modelling"
    if token_classifier(config):
        return "token-classification", f"token classification, {config.num_labels} tags"
    if getattr(config, "problem_type", None) == "regression" or config.num_labels == 1:
        return "text-classification", "regression"
    return "text-classification", f"text classification, {config.num_labels} labels"


def _usage(tag: str) -> str:
    example = "a [MASK] of the river" if tag == "fill-mask" else "a small piece of land surrounded by water"
    return "\n".join(["```python", "from transformers import pipeline", "",
                      f'model = pipeline("{tag}", model="path/to/this/folder")', f'print(model("{example}"))', "```"])


def deployment_lines(model_dir: Path) -> list[str]:
    """The card's section on the int8 / ONNX copies ``distillery export-model`` wrote (none: no lines)."""
    path = model_dir / EXPORTS
    copies = read_own_json(path, {})
    if not copies:
        return []
    lines = ["", "## Deployment copies (`distillery export-model`)", "",
             "| copy | path | size (MB) | top-1 agreement with fp32 (per word for a tagger) | max abs logit diff "
             "| checked on |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | `{c['path']}` | {c['size_bytes'] / 1e6:.1f} | {c['agreement']:.4f}"
              + (f" (entity F1 vs fp32 {c['entity_f1_vs_fp32']:.4f})" if c.get("entity_f1_vs_fp32") is not None
                 else "") + " | "
              f"{c['max_abs_diff']:.2e} | {c['check_name'] or c['check_version'][:12]} ({c['rows']} rows"
              + (f", {c['max_seq_length']} tokens per row" if "max_seq_length" in c else "") + ") |"
              for name, c in copies.items()]
    return lines + ["", *(copies[name]["load"] for name in copies)]


def write_model_card(model_dir: Path) -> Path:
    """README.md of a saved model from what ``card.json`` records of its run, its ``scores.json`` and its
    ``evaluations.json``: what the model is (kind, real shape, task), where it comes from (base model, teacher,
    data versions), its scores, its licence (the training data's), how to use it and the training configuration."""
    model_dir = Path(model_dir)
    inputs = read_own_json(model_dir / CARD_INPUTS)
    scores, evaluations = (read_own_json(model_dir / name, {}) for name in (SCORES, EVALUATIONS))
    config = AutoConfig.from_pretrained(model_dir)
    train = next((d for d in inputs["data"] if d["role"] == "train"), None)
    licence = (train or {}).get("licence") or {}
    architecture, shape, usage, library = _architecture(config, inputs["parameters"])
    lines = [*_heading(inputs, config, architecture, library, train, licence), f"- **architecture**: {shape}",
             *_origin_lines(inputs["base"], inputs["teacher"]), *_data_lines(inputs["data"]),
             *_score_lines(scores, inputs["data"]), *_evaluation_lines(evaluations), *deployment_lines(model_dir),
             *_closing_lines(usage, licence, inputs["training"])]
    path = Path(model_dir) / "README.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


def _architecture(config: Any, parameters: int) -> tuple[str, str, str, str]:
    """(the architecture in a few words, its shape and size, how to use it, the library that loads it)."""
    if config.model_type in students.MODEL_TYPES:
        architecture, shape = students.describe(config)
        usage, library = students.usage(config), "distillery"
    else:
        architecture = f"{config.num_hidden_layers} x {config.hidden_size} BERT"
        shape = (f"{config.num_hidden_layers} layers x {config.hidden_size} hidden, {config.num_attention_heads} "
                 f"heads, {config.intermediate_size} feed-forward")
        usage, library = _usage(_task(config)[0]), "transformers"
    return architecture, f"{shape}, {parameters / 1e6:.1f} M parameters", usage, library


def _heading(inputs: dict[str, Any], config: Any, architecture: str, library: str, train: dict[str, Any] | None,
             licence: dict[str, Any]) -> list[str]:
    """The YAML front matter, the title and the command that made the model."""
    mode, base, teacher = inputs["mode"], inputs["base"], inputs["teacher"]
    tag, task = _task(config)
    title = (f"{KINDS.get(mode, mode)}: {architecture}, {task}"
             + (f", trained on {train['name'] or train['version_id'][:12]}" if train else ""))
    front: dict[str, Any] = {"library_name": library, "pipeline_tag": tag,
                             "tags": ["distillery", "distillation" if teacher else "fine-tuned",
                                      architecture.split()[-1].lower()],
                             **card_licence(licence or {"license": "unknown"})}
    origin = hub_id(teacher) or hub_id(base)
    if origin:
        front["base_model"] = origin
    command, _, stage = mode.partition("-stage")
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", "",
            f"Made by `distillery distill {command}`{f' (stage {stage})' if stage else ''}.", ""]


def _origin_lines(base: str, teacher: str | None) -> list[str]:
    """The model it started from and the teacher it learned from."""
    lines = [f"- **started from**: `{base}`" + (f" ({hub_id(base)})" if hub_id(base) and hub_id(base) != base else "")]
    if teacher:
        lines.append(f"- **teacher**: `{teacher}`" + (f" ({hub_id(teacher)})" if hub_id(teacher) else ""))
    return lines


def _data_lines(data: list[dict[str, Any]]) -> list[str]:
    """The table of the data versions it was trained (and evaluated) on."""
    return ["", "## Data versions", "", "| role | version | name | rows |", "|---|---|---|---|",
            *[f"| {d['role']} | `{d['version_id'][:12]}` | {d.get('name') or ''} | {d.get('num_rows', '')} |"
              for d in data]]


def _score_lines(scores: dict[str, Any], data: list[dict[str, Any]]) -> list[str]:
    """The scores of the run's last evaluation, on its evaluation version."""
    eval_name = next((d.get("name") or d["version_id"][:12] for d in data if d["role"] == "eval"), None)
    lines = ["", f"## Scores{f' on {eval_name}' if eval_name else ''}", ""]
    if not scores:
        return lines + ["(no evaluation version was given)"]
    lines += ["| metric | value |", "|---|---|",
              *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scores.items()
                if not isinstance(v, dict)]]
    if isinstance(scores.get("per_type"), dict):          # token classification: the entities per type
        lines += ["", f"Entities per type ({scores.get('mode', 'default')} mode):", "", entity_report(scores)]
    return lines


def _evaluation_lines(evaluations: dict[str, Any]) -> list[str]:
    """The table of the evaluations ``distillery distill evaluate`` added (none: no lines)."""
    if not evaluations:
        return []
    metrics = sorted({k for e in evaluations.values() for k, v in e["scores"].items() if isinstance(v, float)})
    return ["", "## Evaluations (`distillery distill evaluate`)", "",
            "| version | name | rows | tokens per row | " + " | ".join(metrics) + " |",
            "|---|---|---|---|" + "---|" * len(metrics),
            *[f"| `{vid[:12]}` | {e['name'] or ''} | {e['rows']} | {e['scores'].get('max_seq_length', '')} | "
              + " | ".join(f"{e['scores'].get(m, float('nan')):.4f}" for m in metrics) + " |"
              for vid, e in evaluations.items()]]


def _closing_lines(usage: str, licence: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """How to use the model, its licence and the training configuration."""
    return ["", "## Use", "", usage, "", "## Licence", "",
            *[f"- **{k}**: {v}" for k, v in (licence or {"license": "unknown (the training data set none)"}).items()],
            "", "## Training configuration", "", "```json", json.dumps(training, indent=2, sort_keys=True,
                                                                        default=str), "```", ""]
