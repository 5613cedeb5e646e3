"""Benchmark: a plain re-implementation of TinyBERT's data_augmentation.py vs the distillery engine.

Same process, same sample rows, same BERT-base-sized masked LM (random weights, real bert-base-uncased
vocabulary) and the same GloVe 6B 50d vectors (first 100,000 words). For each input mode (pair, single) it
prints sentences/s of both, the speed-up, the engine's time shares, and the masked LM's useful FLOP rate as a
fraction of the measured fp32 matmul peak; then the --masks-per-pass mode's speed-up and top-K agreement.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/augment_bench.py --rows 200
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

from augment import (
    AugmentConfig,  # noqa: E402
    plan_augment,
)
from augment.mlm import build_requests, load_mlm  # noqa: E402
from augment.vectors import load_vectors  # noqa: E402
from augment.words import WordSplitter, is_eligible  # noqa: E402
from distillery.bundled import SAMPLE_DIR  # noqa: E402
from pipelines.fingerprint import version_id  # noqa: E402
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
def matmul_peak(seconds: float = 3.0, size: int = 4096) -> float:
    """Best fp32 GFLOP/s of a big torch.matmul loop."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


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


def agreement(model_dir: Path, rows: list[str], k: int, masks: int) -> dict:
    """How often the top-K candidate set of a word is the same with ``masks`` masks per pass as with one."""
    mlm = load_mlm(str(model_dir), "cpu", "fp32")
    splitter = WordSplitter(mlm.tokenizer)
    exact_spec, fast_spec = mlm.input_spec("pair", 1, None), mlm.input_spec("pair", masks, None)
    same = overlap = total = 0
    for sentence in splitter.split(rows):
        words = [i for i in sentence.eligible if len(sentence.pieces[i]) == 1]
        found = {}
        for spec in (exact_spec, fast_spec):
            requests = build_requests(sentence, words, spec)
            for request, tops in zip(requests, mlm.top_k(requests, k, 256)):
                for word, top in zip(request.words, tops):
                    found.setdefault(word, []).append(set(top))
        for exact, fast in found.values():
            same += exact == fast
            overlap += len(exact & fast) / k
            total += 1
    return {"words": total, "identical_sets": same / max(total, 1), "mean_overlap": overlap / max(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="sample rows (train split, in order)")
    parser.add_argument("--num-aug", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=15)
    parser.add_argument("--workers", type=int, default=1, help="engine helper processes")
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--masks-per-pass", type=int, default=3)
    parser.add_argument("--modes", default="pair,single")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DISTILLERY_PROGRESS", "0")
    with open(SAMPLE_DIR / "train.jsonl") as fh:
        rows = [json.loads(line)["text"] for _, line in zip(range(args.rows), fh)]
    root = Path(tempfile.mkdtemp(prefix="augment-bench-"))
    os.environ.setdefault("DISTILLERY_CACHE", str(root / "cache"))
    model_dir = root / "bert-base-random"
    build_model(model_dir)
    print(f"threads={torch.get_num_threads()} rows={len(rows)} N={args.num_aug} K={args.top_k} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    mlm = load_mlm(str(model_dir), "cpu", "fp32")
    vectors = load_vectors(None)
    limit = 100_000
    report: dict = {"rows": len(rows), "peak_gflops": peak, "modes": {}}
    for mode in args.modes.split(","):
        random.seed(0)
        ref = ReferenceAugmentor(mlm.model, mlm.tokenizer, vectors.words[:limit], vectors.matrix[:limit],
                                 args.top_k, args.num_aug, 0.4, mode)
        start = time.perf_counter()
        ref_out = sum(len(ref.augment(text)) for text in rows)
        ref_s = time.perf_counter() - start
        total_s, manifest = run_engine(root, model_dir, rows, args, input_mode=mode, output_form="reference")
        run = manifest["extra"]["run"]
        timing = run["timing_s"]
        eng_s = timing["wall_s"]        # processing: reading, models, sampling, writing (not the one-off load)
        flops = useful_flops(run["mlm"], mlm.model.config)
        rate = flops / run["mlm"]["seconds"] / 1e9
        shares = {k: timing[f"{k}_s"] / timing["wall_s"] for k in ("mlm", "neighbours", "sampling", "prepare", "io")}
        result = {"reference_sent_s": len(rows) / ref_s, "engine_sent_s": len(rows) / eng_s, "speedup": ref_s / eng_s,
                  "speedup_end_to_end": ref_s / total_s, "reference_s": ref_s, "engine_s": eng_s,
                  "engine_end_to_end_s": total_s, "reference_shares": {
                      "mlm": ref.seconds["mlm"] / ref_s, "neighbours": ref.seconds["neighbours"] / ref_s},
                  "engine_shares": shares, "mlm_gflops": rate, "mlm_peak_fraction": rate / peak,
                  "reference_rows_out": ref_out, "engine_rows_out": manifest["num_rows"],
                  "mlm_sequences": run["mlm"]["sequences"], "mlm_forwards": run["mlm"]["forwards"]}
        print(f"[{mode}] reference {result['reference_sent_s']:.2f} sent/s ({ref_s:.1f}s; mlm "
              f"{result['reference_shares']['mlm']:.0%}, neighbours {result['reference_shares']['neighbours']:.1%}) | "
              f"engine {result['engine_sent_s']:.2f} sent/s ({eng_s:.1f}s; {total_s:.1f}s with model load and "
              f"hashing) | speed-up {result['speedup']:.2f}x ({result['speedup_end_to_end']:.2f}x end to end) | "
              f"load {os.getloadavg()[0]:.2f}",
              flush=True)
        print(f"[{mode}] engine time shares: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
              + f" | masked LM useful {rate:.1f} GFLOP/s = {rate / peak:.1%} of matmul peak "
              f"({run['mlm']['sequences']} sequences in {run['mlm']['forwards']} forwards)", flush=True)
        if mode == "pair" and args.masks_per_pass > 1:
            _, fast = run_engine(root, model_dir, rows, args, input_mode=mode, output_form="reference",
                                 masks_per_pass=args.masks_per_pass)
            fast_s = fast["extra"]["run"]["timing_s"]["wall_s"]
            agree = agreement(model_dir, rows, args.top_k, args.masks_per_pass)
            result["masks_per_pass"] = {"k": args.masks_per_pass, "engine_s": fast_s,
                                        "speedup_vs_engine": eng_s / fast_s,
                                        "speedup_vs_reference": ref_s / fast_s, **agree}
            print(f"[{mode}] --masks-per-pass {args.masks_per_pass}: {len(rows) / fast_s:.2f} sent/s, "
                  f"{eng_s / fast_s:.2f}x over the exact engine, {ref_s / fast_s:.2f}x over the reference; top-K "
                  f"sets identical for {agree['identical_sets']:.1%} of {agree['words']} words, mean overlap "
                  f"{agree['mean_overlap']:.1%} (random weights: a real model's agreement will differ)", flush=True)
        report["modes"][mode] = result
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
