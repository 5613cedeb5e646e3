"""Benchmark: a plain re-implementation of TinyBERT's data_augmentation.py vs the distillery engine's paths.

Same process, same sample rows, same masked LM (``--mlm PATH``, e.g. the demo's domain masked LM; default a
BERT-base-sized model with random weights and the real bert-base-uncased vocabulary) and the same GloVe 6B 50d
vectors (first 100,000 words). Prints the reference's sentences/s (pair and single input), then for every engine
path (torch exact pair / single, ONNX Runtime fp32 / int8, --masks-per-pass 2/3/4, a distilled masked LM):
sentences/s, speed-up, the masked LM's useful FLOP rate as a fraction of this machine's measured fp32 matmul peak
(the roofline column), and its candidates' agreement with the exact torch fp32 pair lists (identical ordered
top-K lists: what decides the output bytes; mean top-K set overlap: what decides quality).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/augment_bench.py --rows 120 --mlm runs/demo/.../mlm/KEY/model
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roofline import matmul_peak  # noqa: E402

from augment import (
    AugmentConfig,  # noqa: E402
    plan_augment,
)
from augment.mlm import build_requests, load_mlm  # noqa: E402
from augment.vectors import load_vectors  # noqa: E402
from augment.words import WordSplitter, is_eligible  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.fingerprint import version_id  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.resources import minilm_path  # noqa: E402
from pipelines.runner import run_step
from pipelines.store import Store  # noqa: E402


# ---- (a) the reference algorithm, re-implemented plainly --------------------------------------------------
class ReferenceAugmentor:
    """TinyBERT's DataAugmentor: one forward per word at batch size 1, full-vocabulary logits at every
    position, a full GloVe dot product and argsort per multi-piece word, no cache."""

    def __init__(self, model, tokenizer, words: list[str], matrix: np.ndarray, k: int, n: int, p: float, mode: str):
        self.model, self.tokenizer, self.k, self.n, self.p, self.mode = model, tokenizer, k, n, p, mode
        emb = np.asarray(matrix, dtype=np.float64)
        self.emb_norm = (emb.T / np.sum(emb ** 2, 1) ** 0.5).T
        self.vocab = {w: i for i, w in enumerate(words)}
        self.words = words
        self.seconds = {"mlm": 0.0, "neighbours": 0.0}

    def basic_tokens(self, sentence: str) -> list[str]:
        backend = self.tokenizer.backend_tokenizer
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(sentence))]

    def word_distance(self, word: str) -> list[str]:
        start = time.perf_counter()
        if word not in self.vocab:
            return []
        idx = self.vocab[word]
        dist = np.dot(self.emb_norm, self.emb_norm[idx].T)
        dist[idx] = -np.inf
        found = [self.words[i] for i in np.argsort(-dist)[:self.k]]
        self.seconds["neighbours"] += time.perf_counter() - start
        return [w.title() for w in found] if word.istitle() else found

    def masked_lm(self, pieces: list[str], masked: list[str], position: int) -> list[str]:
        start = time.perf_counter()
        first = ["[CLS]", *masked, "[SEP]"]
        tokens = first + pieces + ["[SEP]"] if self.mode == "pair" else first
        ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(tokens)], device=self.model.device)
        segments = torch.tensor([[0] * len(first) + [1] * (len(tokens) - len(first))], device=self.model.device)
        with torch.no_grad():
            logits = self.model(ids, token_type_ids=segments).logits
        top = torch.argsort(logits[0, position], descending=True)[:self.k].tolist()
        self.seconds["mlm"] += time.perf_counter() - start
        return [t for t in self.tokenizer.convert_ids_to_tokens(top) if not t.startswith("##")]

    def word_augment(self, sentence: str, index: int, word: str) -> list[str]:
        pieces = self.tokenizer.tokenize(sentence)
        word_no, span = -1, []
        for i, piece in enumerate(pieces):
            if not piece.startswith("##"):
                word_no += 1
                if word_no > index:
                    break
                span = [i] if word_no == index else []
            elif word_no == index:
                span.append(i)
        if len(span) == 1:
            masked = list(pieces)
            masked[span[0]] = "[MASK]"
            candidates = self.masked_lm(pieces, masked, span[0] + 1)
        else:
            candidates = self.word_distance(word)
        return candidates or [word]

    def augment(self, sentence: str) -> list[str]:
        tokens = self.basic_tokens(sentence)
        candidates = {i: self.word_augment(sentence, i, w) for i, w in enumerate(tokens) if is_eligible(w)}
        out = [sentence]
        for _ in range(self.n):
            new = list(tokens)
            for i, cands in candidates.items():
                choice = random.choice(cands)
                if random.random() < self.p:
                    new[i] = choice
            if " ".join(new) not in out:
                out.append(" ".join(new))
        return out


# ---- measurements ----------------------------------------------------------------------------------------
def useful_flops(stats: dict, cfg) -> float:
    """Encoder FLOPs on real tokens (linear layers + attention products) plus the head at masked positions."""
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    linear = stats["tokens"] * layers * 2 * (4 * h * h + 2 * h * inter)
    attention = stats["attention_l2"] * layers * 2 * 2 * h
    head = stats["masked"] * 2 * (h * h + h * vocab)
    return linear + attention + head


def build_model(folder: Path) -> None:
    """BERT-base-sized masked LM (BertConfig() defaults) with random weights and the real vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_engine(root: Path, model_dir: Path, rows: list[str], args, **options) -> tuple[float, dict]:
    store = Store(root / f"store-{time.time_ns()}")
    config, parents = {"bench": True}, [{"kind": "raw", "path": "bench", "sha256": "0" * 64}]
    writer = store.create_version(version_id("bench", config, parents, "bench"), "bench", config, parents, name="src")
    writer.write_chunk(0, pa.table({"text": rows, "row_id": pa.array(range(len(rows)), pa.int64())}))
    writer.finalize()
    config = AugmentConfig(mlm=str(model_dir), num_aug=args.num_aug, workers=args.workers,
                           chunk_rows=args.chunk_rows, mlm_batch_size=args.batch_size, **options)
    start = time.perf_counter()
    manifest = run_step(store, plan_augment(store, "src", config)).manifest
    return time.perf_counter() - start, manifest


def candidate_lists(mlm, rows: list[str], k: int, masks: int) -> dict[tuple[int, int], list[int]]:
    """Ordered top-``k`` piece ids of every eligible one-piece word (pair input, ``masks`` masks per pass)."""
    spec = mlm.input_spec("pair", masks, None)
    found = {}
    for n, sentence in enumerate(WordSplitter(mlm.tokenizer).split(rows)):
        requests = build_requests(sentence, [i for i in sentence.eligible if len(sentence.pieces[i]) == 1], spec)
        for request, tops in zip(requests, mlm.top_k(requests, k, 256)):
            found.update({(n, word): top for word, top in zip(request.words, tops)})
    return found


def agreement(exact: dict, other: dict, k: int, tokens=None) -> dict:
    """How far another path's candidate lists are from the exact torch fp32 ones: identical ordered lists (what
    decides the output bytes), identical sets, mean top-K set overlap (what decides quality). ``tokens``: compare
    token strings (another model's vocabulary order may differ only in ids it does not share)."""
    same = sets = overlap = 0
    for key, ids in exact.items():
        a, b = (ids, other[key]) if tokens is None else (tokens(ids), tokens(other[key]))
        same += a == b
        sets += set(a) == set(b)
        overlap += len(set(a) & set(b)) / k
    n = max(len(exact), 1)
    return {"words": len(exact), "identical_lists": same / n, "identical_sets": sets / n, "mean_overlap": overlap / n}


PATHS = ("torch-pair", "torch-single", "onnx", "onnx-int8", "masks-2", "masks-3", "masks-4", "distilled")


def path_options(path: str, args) -> dict:
    """The augment options of one engine path (pair input unless named)."""
    if path.startswith("masks-"):
        return {"input_mode": "pair", "masks_per_pass": int(path.split("-")[1])}
    if path.startswith("onnx"):
        return {"input_mode": "pair", "mlm_backend": path}
    return {"input_mode": "single" if path == "torch-single" else "pair"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="sample rows (train split, in order)")
    parser.add_argument("--num-aug", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=15)
    parser.add_argument("--workers", type=int, default=1, help="engine helper processes")
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mlm", type=Path, help="masked LM folder (default: BERT-base-sized, random weights)")
    parser.add_argument("--distilled", type=Path, help="a distilled masked LM for the 'distilled' path")
    parser.add_argument("--paths", default="torch-pair,torch-single,onnx,onnx-int8,masks-3",
                        help=f"engine paths, of: {', '.join(PATHS)}")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference script's timing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DISTILLERY_PROGRESS", "0")
    quiet_libraries()
    with open(SAMPLE_DIR / "train.jsonl") as fh:
        rows = [json.loads(line)["text"] for _, line in zip(range(args.rows), fh)]
    root = Path(tempfile.mkdtemp(prefix="augment-bench-"))
    os.environ.setdefault("DISTILLERY_CACHE", str(root / "cache"))
    model_dir = args.mlm or root / "bert-base-random"
    if args.mlm is None:
        build_model(model_dir)
    paths = args.paths.split(",")
    if "distilled" in paths and args.distilled is None:
        parser.error("the distilled path needs --distilled PATH")
    print(f"threads={torch.get_num_threads()} rows={len(rows)} N={args.num_aug} K={args.top_k} "
          f"mlm={model_dir} load={os.getloadavg()[0]:.2f}", flush=True)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    mlm = load_mlm(str(model_dir), "cpu", "fp32")
    report: dict = {"rows": len(rows), "mlm": str(model_dir), "peak_gflops": peak, "reference": {}, "paths": {}}
    if not args.no_reference:
        vectors = load_vectors(None)
        limit = 100_000
        for mode in ("pair", "single"):
            random.seed(0)
            ref = ReferenceAugmentor(mlm.model, mlm.tokenizer, vectors.words[:limit], vectors.matrix[:limit],
                                     args.top_k, args.num_aug, 0.4, mode)
            start = time.perf_counter()
            ref_out = sum(len(ref.augment(text)) for text in rows)
            ref_s = time.perf_counter() - start
            report["reference"][mode] = {"sent_s": len(rows) / ref_s, "seconds": ref_s, "rows_out": ref_out,
                                         "mlm_share": ref.seconds["mlm"] / ref_s}
            print(f"reference [{mode}]: {len(rows) / ref_s:.2f} sent/s ({ref_s:.1f}s; masked LM "
                  f"{ref.seconds['mlm'] / ref_s:.0%})", flush=True)
    exact = candidate_lists(mlm, rows, args.top_k, 1)
    for path in paths:
        options = path_options(path, args)
        mlm_dir = args.distilled if path == "distilled" else model_dir
        _, manifest = run_engine(root, mlm_dir, rows, args, output_form="reference", **options)
        run = manifest["extra"]["run"]
        timing = run["timing_s"]
        eng_s = timing["wall_s"]        # processing: reading, models, sampling, writing (not the one-off load)
        cfg = load_mlm(str(mlm_dir), "cpu", "fp32").model.config if path == "distilled" else mlm.model.config
        rate = useful_flops(run["mlm"], cfg) / run["mlm"]["seconds"] / 1e9
        shares = {k: timing[f"{k}_s"] / timing["wall_s"] for k in ("mlm", "neighbours", "sampling", "prepare", "io")}
        reference = report["reference"].get(options["input_mode"])
        result = {"sent_s": len(rows) / eng_s, "engine_s": eng_s, "shares": shares, "mlm_gflops": rate,
                  "mlm_peak_fraction": rate / peak, "rows_out": manifest["num_rows"],
                  "speedup_vs_reference": reference["seconds"] / eng_s if reference else None}
        if path == "torch-single":
            result["agreement"] = None            # another input: not comparable with the pair lists
        else:
            if path.startswith("onnx"):
                from augment.mlm_onnx import to_onnx

                other = to_onnx(load_mlm(str(model_dir), "cpu", "fp32"), path)
            else:
                other = load_mlm(str(mlm_dir), "cpu", "fp32")
            lists = candidate_lists(other, rows, args.top_k, options.get("masks_per_pass", 1))
            result["agreement"] = agreement(exact, lists, args.top_k,
                                            mlm.tokens if path == "distilled" else None)
        report["paths"][path] = result
        agree = result["agreement"]
        print(f"{path}: {result['sent_s']:.2f} sent/s ({eng_s:.1f}s)"
              + (f", {result['speedup_vs_reference']:.2f}x the reference" if reference else "")
              + f" | masked LM {rate:.1f} GFLOP/s = {rate / peak:.0%} of fp32 peak, {shares['mlm']:.0%} of the time"
              + (f" | vs torch fp32: identical lists {agree['identical_lists']:.1%}, identical sets "
                 f"{agree['identical_sets']:.1%}, mean top-{args.top_k} overlap {agree['mean_overlap']:.1%} "
                 f"({agree['words']} words)" if agree else "") + f" | load {os.getloadavg()[0]:.2f}", flush=True)
    base = report["paths"].get("torch-pair")
    if base:
        for result in report["paths"].values():
            result["speedup_vs_torch_pair"] = base["engine_s"] / result["engine_s"]
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
