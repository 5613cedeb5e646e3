"""What long work shows on the terminal: progress bars (rows/s), and nothing of the libraries' own chatter."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "rows", **kwargs: Any) -> tqdm:
    """A tqdm bar showing throughput in ``unit``/s; disabled by DISTILLERY_PROGRESS=0."""
    disable = os.environ.get("DISTILLERY_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=disable, file=sys.stderr, **kwargs)


def say(message: str) -> None:
    """One line of ours on stderr (a step's notice; stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Keep load reports, weight-loading bars and warnings the user can do nothing about off the terminal
    (``DISTILLERY_DEBUG=1`` keeps them)."""
    if os.environ.get("DISTILLERY_DEBUG") == "1":
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module=r"(transformers|torch|datasets|huggingface_hub)(\..*)?$")
    transformers = sys.modules.get("transformers")
    if transformers is not None:            # already imported: its settings were read; set them directly
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Within the block, the warnings and root-logger chatter of exporters and quantizers (torch's ONNX exporter
    and quantization, onnxruntime's quantizer) stay off the terminal."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)
