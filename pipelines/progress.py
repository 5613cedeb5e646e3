"""Progress bars for long work (rows/s), quiet when not attached to a terminal unless forced."""
from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "rows", **kwargs: Any) -> tqdm:
    """A tqdm bar showing throughput in ``unit``/s; disabled by DISTILLERY_PROGRESS=0."""
    disable = os.environ.get("DISTILLERY_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=disable, file=sys.stderr, **kwargs)
