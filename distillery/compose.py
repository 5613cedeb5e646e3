"""Work that combines two steps, which only the application may do (steps never import each other)."""
from __future__ import annotations

from pathlib import Path

from augment.quality import candidate_recall
from distill.config import MLMConfig
from distill.mlm import pretrain_masked_lm
from distill.runs import TrainedModel
from pipelines.store import Store


def train_augmentation_mlm(store: Store, train_ref: str, config: MLMConfig, output_dir: str | Path,
                           resume: bool = False) -> TrainedModel:
    """Masked-LM training whose evaluations include the augmentation's candidate recall (augment.quality)."""
    return pretrain_masked_lm(store, train_ref, config, output_dir, resume=resume, scorer=candidate_recall)
