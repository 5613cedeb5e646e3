"""Benchmark: students beyond BERT and deployment copies on the bundled task (WordNet supersenses).

Rows of the table: the teacher, the best BERT student, BiLSTM and TextCNN students distilled from the teacher's
logits with and without augmentation, and the int8 / ONNX copies of the best BERT student and of the BiLSTM
(augmented). Columns: test accuracy, size on disk (the weights file), parameters, and CPU latency per sentence
at batch 1 and at batch 32, tokenisation included (median over batches of the test split, one torch / onnxruntime
thread). Settings were fixed beforehand (never chosen on the test split); the students' dev accuracy is printed too.

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
from pipelines.store import Store

MAX_LENGTH = 128
Predict = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def student_config(args: argparse.Namespace, kind: str, logits_ref: str, epochs: float) -> TaskDistillConfig:
    """The one recipe of every non-BERT student: GloVe word vocabulary, MSE on logits (Tang et al.), AdamW 1e-3."""
    return TaskDistillConfig(teacher=args.teacher, student=kind, student_embeddings="glove", prediction_loss="mse",
                             logits_ref=logits_ref, stage2_epochs=epochs, stage2_lr=1e-3, batch_size=32,
                             eval_ref="ablation-dev", num_workers=0, threads=args.threads, seed=1)


def measure(name: str, predict: Predict, tokenizer: Any, texts: list[str], gold: list[str],
            id2label: dict[int, str], size: int, parameters: int, latency_rows: int) -> dict[str, Any]:
    """Test accuracy (batches of 32) and the median latency per sentence at batch 1 and 32, tokenisation included."""
    def run(batch_texts: list[str]) -> torch.Tensor:
        enc = tokenizer(batch_texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            return predict(dict(enc))

    correct, per32 = 0, []
    for start in range(0, len(texts), 32):
        began = time.perf_counter()
        logits = run(texts[start:start + 32])
        if len(logits) == 32:
            per32.append((time.perf_counter() - began) / 32)
        correct += sum(id2label[int(i)] == g for i, g in zip(logits.argmax(-1), gold[start:start + 32]))
    per1 = []
    for text in texts[:latency_rows]:
        began = time.perf_counter()
        run([text])
        per1.append(time.perf_counter() - began)
    row = {"model": name, "test_accuracy": correct / len(texts), "size_mb": size / 1e6, "parameters": parameters,
           "ms_batch1": 1e3 * statistics.median(per1), "ms_batch32": 1e3 * statistics.median(per32)}
    print(json.dumps(row), flush=True)
    return row


def torch_predict(model: torch.nn.Module) -> Predict:
    return lambda enc: model(**enc).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--bert-student", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--aug-epochs", type=float, default=3.0)
    parser.add_argument("--plain-epochs", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--latency-rows", type=int, default=300)
    args = parser.parse_args()
    quiet_libraries()
    store, out = Store(args.store), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    began = time.perf_counter()
    distill.cache_teacher_logits(store, "ablation-train", args.teacher, name="ablation-train-logits")
    timings["cache_logits_s"] = time.perf_counter() - began
    students: dict[str, Path] = {}
    dev: dict[str, float] = {}
    for kind in ("bilstm", "textcnn"):
        for label, ref, epochs in (("aug", "ablation-train-aug-logits", args.aug_epochs),
                                   ("no aug", "ablation-train-logits", args.plain_epochs)):
            name = f"{kind} ({label})"
            began = time.perf_counter()
            run = distill.task_distill(store, "ablation-train", student_config(args, kind, ref, epochs),
                                       out / "runs" / f"{kind}-{label.replace(' ', '')}")
            timings[f"train {name} s"] = time.perf_counter() - began
            students[name], dev[name] = run.path, run.scores.get("accuracy", float("nan"))
            print(f"{name}: dev accuracy {dev[name]:.4f}, {timings[f'train {name} s']:.0f} s", flush=True)

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
    rows = []
    entries = [("teacher", Path(args.teacher)), ("best BERT student", Path(args.bert_student)),
               *students.items()]
    for name, folder in entries:
        model = load_saved_classifier(folder)
        parameters = sum(p.numel() for p in model.parameters())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        rows.append(measure(name, torch_predict(model), tokenizer, texts, gold, id2label,
                            (folder / "model.safetensors").stat().st_size, parameters, args.latency_rows))
        if name in copies:
            folder = copies[name]
            rows.append(measure(f"{name}, int8", torch_predict(load_int8(folder)), tokenizer, texts, gold, id2label,
                                (folder / INT8).stat().st_size, parameters, args.latency_rows))
            rows.append(measure(f"{name}, ONNX", onnx_classifier(folder / ONNX), tokenizer, texts, gold, id2label,
                                (folder / ONNX).stat().st_size, parameters, args.latency_rows))
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
