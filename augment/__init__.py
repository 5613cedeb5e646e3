"""TinyBERT data augmentation (Jiao et al. 2020, section 3.2), batched, parallel, deterministic and resumable."""
from augment.config import AugmentConfig
from augment.engine import STEP, plan_augment

__all__ = ["STEP", "AugmentConfig", "plan_augment"]
