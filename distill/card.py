"""Model cards (Hugging Face style README.md) for saved students and fine-tuned teachers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write_model_card(model_dir: Path, *, title: str, mode: str, pipeline_tag: str, teacher: str | None,
                     data: list[dict[str, Any]],
                     scores: dict[str, Any], config: dict[str, Any], architecture: dict[str, Any]) -> Path:
    """README.md naming the teacher, the data versions (id and name) and the scores."""
    front = {"library_name": "transformers", "pipeline_tag": pipeline_tag,
             "tags": ["distillery", "distillation" if teacher else "fine-tuned", "bert"]}
    if teacher:
        front["base_model"] = teacher
    command, _, stage = mode.partition("-stage")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", "",
             f"Made by `distillery distill {command}`{f' (stage {stage})' if stage else ''}.", ""]
    if teacher:
        lines += [f"- **teacher**: `{teacher}`"]
    lines += [f"- **architecture**: {', '.join(f'{k}={v}' for k, v in architecture.items())}", "",
              "## Data versions", "", "| role | version | name | rows |", "|---|---|---|---|"]
    lines += [f"| {d['role']} | `{d['version_id'][:12]}` | {d.get('name') or ''} | {d.get('num_rows', '')} |"
              for d in data]
    lines += ["", "## Scores", ""]
    if scores:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scores.items()]
    else:
        lines += ["(no evaluation version was given)"]
    lines += ["", "## Training configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True,
                                                                          default=str), "```", ""]
    path = Path(model_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path
