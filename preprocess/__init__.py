"""The preprocessing step: raw files (text, JSONL, CSV/TSV, Parquet, HF datasets) -> a cleaned, filtered,
de-duplicated version."""
from preprocess.config import CleanConfig, DedupConfig, FilterConfig, InputConfig, LicenceConfig, PreprocessConfig
from preprocess.readers import input_formats
from preprocess.step import STEP, plan_preprocess

__all__ = ["CleanConfig", "DedupConfig", "FilterConfig", "InputConfig", "LicenceConfig", "PreprocessConfig", "STEP",
           "input_formats", "plan_preprocess"]
