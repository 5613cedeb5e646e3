"""Streaming distiller: TinyBERT / DistilBERT losses, two-stage task distillation, exact resume.

Python API (the CLI `distillery distill ...` calls the same functions)::

    from distill import finetune, general_distill, task_distill, evaluate, cache_teacher_logits
    from distill.config import FinetuneConfig, DistillConfig, TaskDistillConfig
"""
from distill.api import cache_teacher_logits, evaluate, finetune, general_distill, task_distill
from distill.config import DistillConfig, FinetuneConfig, TaskDistillConfig, TrainConfig

__all__ = ["finetune", "general_distill", "task_distill", "evaluate", "cache_teacher_logits", "FinetuneConfig",
           "DistillConfig", "TaskDistillConfig", "TrainConfig"]
