"""Benchmark: tag-preserving augmentation of a token-classification version vs sentence augmentation of the same
sentences, in seconds per eligible word (target: tagging within 1.2x of sentence augmentation).

The sentences are the bundled WordNet sample's glosses, cut into tokens (``--tokens basic``: BERT's pre-tokenizer,
punctuation apart as in CoNLL files, so that both modes see the same eligible words; ``whitespace``: split on
spaces) and joined again by single spaces. The sentence version holds that ``text``; the tagging version the same
text with its ``tokens`` and ``tags`` all ``O`` except the first two words of every fifth row (``B-MISC I-MISC``).
Both are augmented with the same options (a tiny random BERT masked LM by default, or ``--mlm``; the bundled GloVe
6B 50d vectors), each in a fresh store, ``--repeats`` times alternately; the best ``wall_s`` of each (models loaded
to last chunk written) is divided by its eligible words::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/augment_tagging_bench.py --rows 600 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("DISTILLERY_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import build_tiny_bert, write_version  # noqa: E402  (the tests' tiny random BERTs)
from tokenizers.pre_tokenizers import BertPreTokenizer  # noqa: E402

from augment import AugmentConfig, plan_augment  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store  # noqa: E402

SAMPLE = REPO / "distillery" / "samples" / "wordnet_supersense" / "train.jsonl"


def sample_rows(n: int, tagging: bool, cut: str) -> list[dict[str, Any]]:
    """The first ``n`` glosses as sentence rows, or as tagging rows (tokens, tags, and the same text)."""
    pre_tokenizer = BertPreTokenizer()
    rows = []
    with open(SAMPLE, encoding="utf-8") as fh:
        for i, line in zip(range(n), fh):
            text = json.loads(line)["text"]
            tokens = [w for w, _ in pre_tokenizer.pre_tokenize_str(text)] if cut == "basic" else text.split()
            if not tagging:
                rows.append({"text": " ".join(tokens), "label": "x", "row_id": i})
                continue
            tags = ["O"] * len(tokens)
            if i % 5 == 0 and len(tokens) > 2:
                tags[:2] = ["B-MISC", "I-MISC"]
            rows.append({"text": " ".join(tokens), "tokens": tokens, "tags": tags, "row_id": i})
    return rows


def run_once(root: Path, rows: list[dict[str, Any]], config: AugmentConfig) -> tuple[float, int, dict[str, float]]:
    """One augmentation in a fresh store: (wall seconds, eligible words, seconds per stage)."""
    store = Store(root)
    write_version(store, rows, name="src", chunk_rows=len(rows))
    extra = run_step(store, plan_augment(store, "src", config)).manifest["extra"]
    timing = extra["run"]["timing_s"]
    return timing["wall_s"], extra["counts"]["eligible_words"], timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-aug", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tokens", choices=("basic", "whitespace"), default="basic")
    parser.add_argument("--mlm", default=None, help="masked LM folder (default: a tiny random BERT)")
    parser.add_argument("--mention-prob", type=float, default=0.0, help="mention_replace_prob of the tagging run")
    args = parser.parse_args()
    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="tagging-bench-"))
    mlm = args.mlm or str(build_tiny_bert(work / "tiny-mlm"))
    common = dict(mlm=mlm, num_aug=args.num_aug, workers=args.workers, chunk_rows=128)
    cases = {"sentence": (sample_rows(args.rows, False, args.tokens), AugmentConfig(**common)),
             "tagging": (sample_rows(args.rows, True, args.tokens),
                         AugmentConfig(**common, mention_replace_prob=args.mention_prob))}
    best: dict[str, tuple[float, int, dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for name, (rows, config) in cases.items():
            seconds, words, timing = run_once(work / f"{name}-{repeat}", rows, config)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, words, timing)
    per_word = {name: seconds / max(words, 1) for name, (seconds, words, _) in best.items()}
    for name, (seconds, words, timing) in best.items():
        stages = ", ".join(f"{k} {v:.3f}" for k, v in timing.items() if k != "wall_s")
        print(f"{name:9s} {args.rows} rows, {words} eligible words, best of {args.repeats}: {seconds:.3f} s, "
              f"{per_word[name] * 1e6:.1f} us per eligible word ({stages})")
    print(f"ratio tagging / sentence per eligible word: {per_word['tagging'] / per_word['sentence']:.3f} "
          f"(target <= 1.2)")


if __name__ == "__main__":
    main()
