"""Streaming distiller: TinyBERT / DistilBERT losses, two-stage task distillation, exact resume.

Python API (the CLI `distillery distill ...` calls the same functions)::

    from distill import finetune, general_distill, task_distill, evaluate, cache_teacher_logits
    from distill import FinetuneConfig, DistillConfig, TaskDistillConfig

The functions are imported on first use, so `import distill.cli` (and `--help`) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from distill.config import DistillConfig, FinetuneConfig, TaskDistillConfig, TrainConfig

_API = ("finetune", "general_distill", "task_distill", "evaluate", "cache_teacher_logits")
__all__ = [*_API, "FinetuneConfig", "DistillConfig", "TaskDistillConfig", "TrainConfig"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("distill.api"), name)
    if name == "api":
        return importlib.import_module("distill.api")
    raise AttributeError(f"module 'distill' has no attribute '{name}'")
