"""TinyBERT data augmentation (Jiao et al. 2020, section 3.2), batched, parallel, deterministic and resumable."""
from augment.config import AugmentConfig
from augment.engine import augment_version

__all__ = ["AugmentConfig", "augment_version"]
