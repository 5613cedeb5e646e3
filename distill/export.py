"""Deployment copies of a saved classifier: dynamic int8 quantization and ONNX, each checked against the fp32 model.

``export_model`` writes, beside the model, ``int8/model.pt`` (the state dict of ``quantize(model)``: int8 weights of
the linear and LSTM layers, read with ``torch.load(weights_only=True)``; ``load_int8`` puts it back into the
quantized model) and ``onnx/model.onnx`` (logits from ``input_ids``, ``attention_mask`` (and ``token_type_ids``),
any batch size and length; onnxruntime runs it without distillery or torch). Each copy's top-1 agreement with the
fp32 model and largest logit difference on a version go to ``exports.json`` and the model card.

A token classifier's ONNX graph returns logits per piece (batch x sequence x tags). Its copies are checked per word
(each word predicted by its first piece; words beyond the window predicted O): ``agreement`` is the share of words
whose prediction equals the fp32 model's, ``entity_f1_vs_fp32`` the entity F1 of the copy's tags against the fp32
tags, and, when the check version has tags, ``entity_f1`` (the copy's) and ``fp32_entity_f1`` against them.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import models
from distill.api import make_stream, model_labels
from distill.card import CARD_INPUTS, EXPORTS, model_seq_length, write_model_card
from distill.config import ExportConfig, TrainConfig, check_batch_tokens
from distill.data import TAGS, TOKENS, WORD_IDS, Collator, make_loader, to_tensors
from distill.tagging import OUTSIDE_TAG, entity_scores, first_pieces, token_classifier, word_predictions
from pipelines.atomic import replace_atomic, write_json_atomic
from pipelines.confine import read_own_json, real_dir
from pipelines.errors import DistilleryError
from pipelines.progress import quiet_tools
from pipelines.store import Store

INT8, ONNX = "int8/model.pt", "onnx/model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LOAD = {"int8": "int8: `distill.export.load_int8(folder)` (the fp32 model quantized with `distill.export.quantize`, "
                "then this state dict, read with `torch.load(weights_only=True)`).",
        "onnx": "onnx: `onnxruntime.InferenceSession('onnx/model.onnx')`, fed the inputs it lists from this folder's "
                "tokenizer (`AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors='np')`)."}
Classifier = Callable[[dict[str, torch.Tensor]], torch.Tensor]
TaggedRows = list[tuple[dict[str, torch.Tensor], list[dict[str, Any]]]]   # a token classifier's check: inputs, rows


def quantize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its linear and LSTM layers dynamically quantized to int8 (CPU inference)."""
    with quiet_tools():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear, nn.LSTM},
                                                      dtype=torch.qint8)


def load_int8(folder: str | Path) -> nn.Module:
    """The int8 copy ``export_model`` saved beside the model in ``folder``."""
    folder = Path(folder)
    model = quantize(models.load_saved_classifier(folder))
    # packed int8 weights are torch ScriptObjects: rebuilt by torch's own C++ classes, no Python code runs
    with torch.serialization.safe_globals([torch.ScriptObject]), quiet_tools():
        model.load_state_dict(torch.load(folder / INT8, weights_only=True))
    return model.eval()


class _Logits(nn.Module):
    """The model as a function of plain tensors returning its logits (what the ONNX graph computes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_onnx(model: nn.Module, sample: dict[str, torch.Tensor], path: Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (traced on ``sample``; batch and sequence axes dynamic), through a temporary file."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")             # plain ops the exporter knows
    wrapper = _Logits(model).eval()                         # eval: no dropout traced into the graph
    per_piece = token_classifier(getattr(model, "config", {}))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | \
        {"logits": {0: "batch", 1: "sequence"} if per_piece else {0: "batch"}}
    real_dir(path.parent, "export folder", create=True, parents=True)
    with quiet_tools(), torch.no_grad():
        replace_atomic(path, lambda tmp: torch.onnx.export(
            wrapper, tuple(sample[k] for k in INPUTS), str(tmp), dynamo=False, input_names=list(INPUTS),
            output_names=["logits"], dynamic_axes=axes, opset_version=opset))
    return path


def onnx_classifier(path: Path, threads: int = 0) -> Classifier:
    """Logits from an ONNX classifier run by onnxruntime (fed only the inputs its graph kept; ``threads`` 0: its
    default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda batch: torch.from_numpy(session.run(["logits"], {n: batch[n].numpy() for n in names})[0])


def _torch_classifier(model: nn.Module) -> Classifier:
    return lambda batch: model(**{k: batch[k] for k in INPUTS}).logits.float()


@torch.no_grad()
def compare(reference: Classifier, copies: dict[str, Classifier], batches: Any) -> dict[str, dict[str, Any]]:
    """Each copy's top-1 agreement with ``reference`` and its largest absolute logit difference over ``batches``."""
    agree = dict.fromkeys(copies, 0)
    diff = dict.fromkeys(copies, 0.0)
    rows = 0
    for batch in batches:
        expected = reference(batch)
        rows += expected.shape[0]
        for name, run in copies.items():
            logits = run(batch)
            agree[name] += int((logits.argmax(-1) == expected.argmax(-1)).sum())
            diff[name] = max(diff[name], float((logits - expected).abs().max()))
    if not rows:
        raise DistilleryError("the check version has no rows")
    return {name: {"agreement": agree[name] / rows, "max_abs_diff": diff[name], "rows": rows} for name in copies}


def _check_ref(store: Store, folder: Path, check: str) -> str:
    """The version to check on: the one asked for, or the model's evaluation version when the store has it."""
    if check:
        return check
    inputs = folder / CARD_INPUTS
    data = read_own_json(inputs, {}).get("data", [])
    for record in data:
        if record["role"] == "eval" and store.root.is_dir() and store.is_complete(record["version_id"]):
            return record["version_id"]
    raise DistilleryError(f"{folder}: no evaluation version of the model in this store; give the version to check "
                          f"the copies on with --check-ref REF")


def export_model(store: Store, model_dir: str | Path, config: ExportConfig | None = None) -> dict[str, Any]:
    """Write the int8 and / or ONNX copies of the saved classifier in ``model_dir`` (or a run folder's model) beside
    it, each checked against it on a version; returns (and records in ``exports.json`` and the card) the figures."""
    config = config or ExportConfig()
    if not Path(model_dir).is_dir():
        raise DistilleryError(f"{model_dir}: no such model folder")
    folder = models.saved_model_dir(model_dir)
    length = model_seq_length(folder, config.max_seq_length)      # the length the model was trained at, by default
    check_batch_tokens(config.batch_size, length)
    models.check_against_model(folder, "model", length)
    model = models.load_saved_classifier(folder)
    if model_labels(model.config).get("problem_type") == "regression":
        raise DistilleryError(f"{folder}: a regression model has no top-1 prediction to check copies on")
    ref = _check_ref(store, folder, config.check_ref)
    manifest = store.manifest(ref)
    batches, rows = _check_batches(store, ref, folder, model, length, config.batch_size)
    both = not (config.int8 or config.onnx)
    copies: dict[str, Classifier] = {}
    if config.int8 or both:
        state = quantize(model).state_dict()
        real_dir((folder / INT8).parent, "export folder", create=True, parents=True)
        replace_atomic(folder / INT8, lambda tmp: torch.save(state, tmp))
        copies["int8"] = _torch_classifier(load_int8(folder))
    if config.onnx or both:
        sample = batches[0] if len(batches[0]["input_ids"]) > 1 else _two_rows(batches[0])
        export_onnx(copy.deepcopy(model), sample, folder / ONNX, config.opset)
        copies["onnx"] = onnx_classifier(folder / ONNX)
    figures = compare(_torch_classifier(model), copies, batches) if rows is None else \
        compare_tags(_torch_classifier(model), copies, rows, model_labels(model.config)["id2label"])
    path = folder / EXPORTS
    records = read_own_json(path, {})
    for name, result in figures.items():
        relative = INT8 if name == "int8" else ONNX
        records[name] = {**result, "path": relative, "size_bytes": (folder / relative).stat().st_size,
                         "check_version": manifest["version_id"], "check_name": manifest["name"],
                         "max_seq_length": length, "load": LOAD[name]}
    write_json_atomic(path, records)
    if (folder / CARD_INPUTS).exists():
        write_model_card(folder)
    return {"model": str(folder), **{name: records[name] for name in figures}}


def _check_batches(store: Store, ref: str, folder: Path, model: nn.Module, length: int,
                   batch_size: int) -> tuple[list[dict[str, torch.Tensor]], TaggedRows | None]:
    """The batches of ``ref`` to check the copies on and, for a token classifier, its encoded rows beside them."""
    if token_classifier(model.config):
        rows = _tagged_rows(store, ref, folder, length, batch_size)
        return [batch for batch, _ in rows], rows
    cfg = TrainConfig(batch_size=batch_size, max_seq_length=length)
    return list(make_loader(make_stream(store, ref, folder, cfg, model_labels(model.config), shuffle=False))), None


def _two_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-row batch doubled (the exporter would fix a batch axis traced at size 1)."""
    return {k: torch.cat([v, v]) for k, v in batch.items()}


# ---- token classification ----------------------------------------------------------------------------------
def _tagged_rows(store: Store, ref: str, tokenizer: Path, length: int, batch_size: int) -> TaggedRows:
    """The check version's rows for a token classifier, ``batch_size`` at a time: the model's inputs and the
    encoded rows (their ``word_ids``, ``tokens`` and, when the version has them, ``tags``)."""
    names = {f["name"] for f in store.manifest(ref)["schema"]}
    if TOKENS not in names:
        raise DistilleryError(f"{ref} has no '{TOKENS}' column to check a token classifier on")
    collate = Collator(tokenizer, length, tagging=True)
    out: TaggedRows = []
    for table in store.iter_batches(ref, columns=[c for c in (TOKENS, TAGS) if c in names], batch_size=batch_size):
        rows = table.to_pylist()
        collate.encode(rows)
        out.append(({k: v for k, v in to_tensors(collate(rows)).items() if k in INPUTS}, rows))
    if not out:
        raise DistilleryError("the check version has no rows")
    return out


@torch.no_grad()
def compare_tags(reference: Classifier, copies: dict[str, Classifier], rows: TaggedRows,
                 id2label: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Each copy of a token classifier against ``reference`` on ``rows`` (``_tagged_rows``): the share of words
    (in the window) it predicts as the reference does, its largest absolute logit difference on real pieces, the
    entity F1 of its tags against the reference's and, when the rows have gold ``tags``, of both against them."""
    tags: dict[str, list[list[str]]] = {name: [] for name in ("fp32", *copies)}
    agree, diff, words = dict.fromkeys(copies, 0), dict.fromkeys(copies, 0.0), 0
    for batch, encoded in rows:
        real = batch["attention_mask"].bool()
        expected = reference(batch)
        predicted = {"fp32": expected.argmax(-1)}
        for name, run in copies.items():
            logits = run(batch)
            diff[name] = max(diff[name], float((logits - expected).abs()[real].max()))
            predicted[name] = logits.argmax(-1)
        for i, row in enumerate(encoded):
            first = first_pieces(row[WORD_IDS])
            words += len(first)
            for name in copies:
                agree[name] += int((predicted[name][i, first] == predicted["fp32"][i, first]).sum())
            for name, pieces in predicted.items():
                tags[name].append(_word_tags(pieces[i].tolist(), row, id2label))
    gold = [[str(t) for t in row.get(TAGS) or []] for _, encoded in rows for row in encoded] \
        if TAGS in rows[0][1][0] else None
    return {name: {"agreement": agree[name] / max(1, words), "max_abs_diff": diff[name],
                   "rows": len(tags["fp32"]), "words": words, "entity_f1_vs_fp32": _f1(tags["fp32"], tags[name]),
                   **({"entity_f1": _f1(gold, tags[name]), "fp32_entity_f1": _f1(gold, tags["fp32"])}
                      if gold is not None else {})}
            for name in copies}


def _word_tags(pieces: list[int], row: dict[str, Any], id2label: dict[int, str]) -> list[str]:
    """A row's predicted tag per word (its first piece's; O for a word beyond the window)."""
    ids, _ = word_predictions(pieces, row[WORD_IDS], len(row[TOKENS] or []), -1)
    return [id2label.get(i, OUTSIDE_TAG) for i in ids]


def _f1(gold: list[list[str]], predicted: list[list[str]]) -> float | None:
    """Entity F1 (conlleval's, via seqeval) of ``predicted`` against ``gold``; None when the tags are not IOB or a
    gold row has a different number of tags."""
    try:
        return float(entity_scores(gold, predicted)["f1"])
    except ValueError:
        return None
