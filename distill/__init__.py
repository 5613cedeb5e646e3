"""Streaming distiller: TinyBERT / DistilBERT losses, two-stage task distillation, exact resume.

Python API (the CLI `distillery distill ...` calls the same functions)::

    from distill import finetune, general_distill, task_distill, pretrain_masked_lm, evaluate, export_model
    from distill import plan_teacher_logits         # a step: run it with pipelines.runner.run_step
    from distill import FinetuneConfig, DistillConfig, TaskDistillConfig

The functions are imported on first use, so importing the configs (and `--help`) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from distill.config import (
    CacheLogitsConfig,
    DistillConfig,
    EvaluateConfig,
    FinetuneConfig,
    MLMConfig,
    TaskDistillConfig,
    TrainConfig,
)

_API = {"finetune": "distill.api", "general_distill": "distill.api", "task_distill": "distill.api",
        "evaluate": "distill.api", "plan_teacher_logits": "distill.logits", "pretrain_masked_lm": "distill.mlm",
        "TrainedModel": "distill.runs", "export_model": "distill.export"}
__all__ = [*_API, "CacheLogitsConfig", "DistillConfig", "EvaluateConfig", "FinetuneConfig", "MLMConfig",
           "TaskDistillConfig", "TrainConfig"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'distill' has no attribute '{name}'")
