"""TinyBERT data augmentation (Jiao et al. 2020, section 3.2), batched, parallel, deterministic and resumable; on a
token-classification version (a ``tags`` column) tag-preserving: only O words replaced, optional mention
replacement (``augment.tagging``)."""
from augment.config import AugmentConfig
from augment.engine import STEP, plan_augment

__all__ = ["STEP", "AugmentConfig", "plan_augment"]
