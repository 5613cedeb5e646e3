"""Benchmark: students beyond BERT and deployment copies on the bundled task (WordNet supersenses).

Rows of the table: the teacher, the best BERT student, BiLSTM and TextCNN students distilled from the teacher's
logits with and without augmentation, and the int8 / ONNX copies of the best BERT student and of the BiLSTM
(augmented). Columns: test accuracy, size on disk (the weights file), parameters, and CPU latency per sentence
at batch 1 and at batch 32, tokenisation included (median over the test sentences / batches, one torch and
onnxruntime thread, the fastest of ``--rounds`` round-robin rounds since the machine may be shared). The students'
recipe is fixed (GloVe words, MSE on logits, AdamW 1e-3, batch 32); their number of epochs is chosen on dev among
the candidates given, never on test.

Needs a writable store holding the ablation's versions (ablation-train / -dev / -test and ablation-train-aug-logits,
the augmented split with the teacher's logits); the train split's own logits are cached into it here::

    cp -r /work/ablation2/store /work/students_store
    HF_HUB_OFFLINE=1 python bench/students_bench.py --store /work/students_store \\
        --teacher /work/ablation2/run/teacher/model --bert-student /work/ablation2/run/task-seed1/model \\
        --output /work/students_bench

Writes ``table.md`` and ``results.json`` to ``--output`` (students in ``runs/``, exported copies beside copies of the
models in ``models/``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

import distill
from distill.config import ExportConfig, TaskDistillConfig
from distill.export import INT8, ONNX, load_int8, onnx_classifier
from distill.models import load_saved_classifier
from pipelines.progress import quiet_libraries
from pipelines.runner import run_step
from pipelines.store import Store

MAX_LENGTH = 128
Predict = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def student_config(args: argparse.Namespace, kind: str, logits_ref: str, epochs: float) -> TaskDistillConfig:
    """The one recipe of every non-BERT student: GloVe word vocabulary, MSE on logits (Tang et al.), AdamW 1e-3."""
    return TaskDistillConfig(teacher=args.teacher, student=kind, student_embeddings="glove", prediction_loss="mse",
                             logits_ref=logits_ref, stage2_epochs=epochs, stage2_lr=1e-3, batch_size=32,
                             eval_ref="ablation-dev", num_workers=0, threads=args.threads, seed=1)


def accuracy(predict: Predict, tokenizer: Any, texts: list[str], gold: list[str], id2label: dict[int, str]) -> float:
    """Test accuracy, batches of 32."""
    correct = 0
    for start in range(0, len(texts), 32):
        logits = run(predict, tokenizer, texts[start:start + 32])
        correct += sum(id2label[int(i)] == g for i, g in zip(logits.argmax(-1), gold[start:start + 32]))
    return correct / len(texts)


def run(predict: Predict, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Logits of ``texts``, tokenisation included."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        return predict(dict(enc))


def latency(predict: Predict, tokenizer: Any, texts: list[str], batch: int) -> float:
    """Median seconds per sentence over the batches of ``texts``."""
    times = []
    for start in range(0, len(texts) - batch + 1, batch):
        began = time.perf_counter()
        run(predict, tokenizer, texts[start:start + batch])
        times.append((time.perf_counter() - began) / batch)
    return statistics.median(times)


def torch_predict(model: torch.nn.Module) -> Predict:
    return lambda enc: model(**enc).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--bert-student", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--aug-epochs", type=float, nargs="+", default=[3.0, 6.0], help="candidates, chosen on dev")
    parser.add_argument("--plain-epochs", type=float, nargs="+", default=[12.0, 24.0], help="candidates, on dev")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--latency-rows", type=int, default=200, help="test sentences timed at batch 1")
    args = parser.parse_args()
    quiet_libraries()
    store, out = Store(args.store), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    began = time.perf_counter()
    run_step(store, distill.plan_teacher_logits(store, "ablation-train", args.teacher, distill.CacheLogitsConfig()),
             "ablation-train-logits")
    timings["cache_logits_s"] = time.perf_counter() - began
    students: dict[str, Path] = {}
    dev: dict[str, dict[float, float]] = {}
    for kind in ("bilstm", "textcnn"):
        for label, ref, candidates in (("aug", "ablation-train-aug-logits", args.aug_epochs),
                                       ("no aug", "ablation-train-logits", args.plain_epochs)):
            name, best = f"{kind} ({label})", -1.0
            dev[name] = {}
            for epochs in candidates:                   # the epochs are chosen on dev
                began = time.perf_counter()
                folder = out / "runs" / f"{kind}-{label.replace(' ', '')}-{epochs:g}ep"
                trained = distill.task_distill(store, "ablation-train", student_config(args, kind, ref, epochs),
                                               folder)
                timings[f"train {name} {epochs:g} epochs s"] = time.perf_counter() - began
                dev[name][epochs] = trained.scores["accuracy"]
                print(f"{name}, {epochs:g} epochs: dev accuracy {dev[name][epochs]:.4f}, "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
                if dev[name][epochs] > best:
                    students[name], best = trained.path, dev[name][epochs]

    models = out / "models"
    copies = {"best BERT student": models / "bert-student", "bilstm (aug)": models / "bilstm-aug"}
    for target, source in zip(copies.values(), (Path(args.bert_student), students["bilstm (aug)"])):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    exports = {name: distill.export_model(store, folder, ExportConfig(check_ref="ablation-dev"))
               for name, folder in copies.items()}

    torch.set_num_threads(1)
    test = store.read_table("ablation-test", columns=["text", "label"])
    texts, gold = test.column("text").to_pylist(), [str(x) for x in test.column("label").to_pylist()]
    entries = [("teacher", Path(args.teacher)), ("best BERT student", Path(args.bert_student)), *students.items()]
    variants = []                                       # (name, predict, tokenizer, id2label, size, parameters)
    for name, folder in entries:
        model = load_saved_classifier(folder)
        parameters = sum(p.numel() for p in model.parameters())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        variants.append((name, torch_predict(model), tokenizer, id2label, (folder / "model.safetensors").stat().st_size,
                         parameters))
        if name in copies:
            folder = copies[name]
            variants.append((f"{name}, int8", torch_predict(load_int8(folder)), tokenizer, id2label,
                             (folder / INT8).stat().st_size, parameters))
            variants.append((f"{name}, ONNX", onnx_classifier(folder / ONNX, threads=1), tokenizer, id2label,
                             (folder / ONNX).stat().st_size, parameters))
    rows = [{"model": name, "test_accuracy": accuracy(predict, tokenizer, texts, gold, id2label), "size_mb": size / 1e6,
             "parameters": parameters, "ms_batch1": float("inf"), "ms_batch32": float("inf")}
            for name, predict, tokenizer, id2label, size, parameters in variants]
    for _ in range(args.rounds):                        # round-robin, best round: the machine may be shared
        for row, (_, predict, tokenizer, *_rest) in zip(rows, variants):
            row["ms_batch1"] = min(row["ms_batch1"], 1e3 * latency(predict, tokenizer, texts[:args.latency_rows], 1))
            row["ms_batch32"] = min(row["ms_batch32"], 1e3 * latency(predict, tokenizer, texts, 32))
    for row in rows:
        print(json.dumps(row), flush=True)
    teacher = rows[0]
    lines = ["| model | test acc. | / teacher | size (MB) | parameters (M) | ms / sentence, batch 1 | speed-up b1 | "
             "ms / sentence, batch 32 | speed-up b32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['test_accuracy']:.3f} | {r['test_accuracy'] / teacher['test_accuracy']:.1%} "
                     f"| {r['size_mb']:.1f} | {r['parameters'] / 1e6:.2f} | {r['ms_batch1']:.2f} | "
                     f"{teacher['ms_batch1'] / r['ms_batch1']:.1f}x | {r['ms_batch32']:.3f} | "
                     f"{teacher['ms_batch32'] / r['ms_batch32']:.1f}x |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "dev_accuracy": dev, "exports": exports,
                                                  "timings": timings, "args": vars(args)}, indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
