"""The preprocessing step: raw files (text, JSONL, CSV/TSV, Parquet, HF datasets) -> a cleaned, filtered,
de-duplicated version."""
from pipelines.preprocess.config import (
                                        CleanConfig,
                                        DedupConfig,
                                        FilterConfig,
                                        InputConfig,
                                        LicenceConfig,
                                        PreprocessConfig,
)
from pipelines.preprocess.step import STEP, plan_preprocess, preprocess

__all__ = ["CleanConfig", "DedupConfig", "FilterConfig", "InputConfig", "LicenceConfig", "PreprocessConfig", "STEP",
           "plan_preprocess", "preprocess"]
