"""The masked LM's candidate search run by ONNX Runtime on the CPU (``mlm_backend`` onnx / onnx-int8).

The model is exported once per content (its sha256, as ``augment.mlm.model_identity`` computes it) into a
``pipelines.cache`` entry: a graph from token ids (and segment ids) of same-length sequences and the flat indices of
their masked positions to the vocabulary logits at those positions only, as the torch path computes them. The int8
entry is ORT's dynamic quantization of the fp32 graph's matrix products (int8 weights per output channel, 7-bit
range: this CPU class has AVX2 without VNNI, where ORT advises ``reduce_range`` against saturation; per channel
keeps 92% of the domain masked LM's top-15 candidates where per tensor keeps 71%). Its numbers depend on the
CPU's int8 kernels, so its outputs are reproducible on one machine class, not promised across them. Batches hold
sequences of one length, so no padding or attention mask enters the numbers; the top-k is taken by torch as on
the torch path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.mlm import MaskedLM, Request
from pipelines import cache
from pipelines.errors import DistilleryError
from pipelines.progress import quiet_tools

ONNX_FILE = "model.onnx"
EXPORT_FORMAT = 2                 # bumped when the exported graph changes: old entries are never reused
OPSET = 17


def entry_folder(sha256: str, backend: str) -> Path:
    """The cache entry of a masked LM's export for ``backend`` (onnx or onnx-int8)."""
    return cache.cache_root("mlm-onnx") / f"{sha256[:24]}-{backend}-v{EXPORT_FORMAT}"


def _export_fp32(mlm: MaskedLM, path: Path) -> None:
    """Trace the masked LM into ``path``: (input_ids, [token_type_ids,] rows) -> logits at rows."""
    import torch
    from torch import nn

    model = mlm.model.float().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")             # plain ops the exporter knows
    head = mlm.head()
    segments = mlm.uses_segments

    class MaskedLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, *rest: Any) -> Any:
            type_ids, rows = (rest[0], rest[1]) if segments else (None, rest[0])
            kwargs = {"token_type_ids": type_ids} if segments else {}
            mask = torch.ones_like(input_ids)
            if head is not None:
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state
                return head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows))
            logits = self.model(input_ids=input_ids, attention_mask=mask, **kwargs).logits
            return logits.reshape(-1, logits.shape[-1]).index_select(0, rows)

    ids = torch.full((2, 8), mlm.tokenizer.mask_token_id, dtype=torch.long)
    inputs = (ids, torch.zeros_like(ids), torch.tensor([1, 9])) if segments else (ids, torch.tensor([1, 9]))
    names = ["input_ids", "token_type_ids", "rows"] if segments else ["input_ids", "rows"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names[:-1]} | {"rows": {0: "masked"},
                                                                         "logits": {0: "masked"}}
    with quiet_tools(), torch.no_grad():
        torch.onnx.export(MaskedLogits().eval(), inputs, str(path), dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET)


def _build(mlm: MaskedLM, backend: str, folder: Path) -> None:
    if backend == "onnx":
        _export_fp32(mlm, folder / ONNX_FILE)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = ensure_export(mlm, "onnx")
    with quiet_tools():
        quantize_dynamic(str(fp32), str(folder / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)


def ensure_export(mlm: MaskedLM, backend: str) -> Path:
    """The masked LM's graph for ``backend`` from the cache, exported (and quantized) first when missing or
    damaged."""
    sha256 = mlm.identity.get("sha256")
    if not sha256:
        raise DistilleryError(f"mlm_backend {backend} needs a masked LM in a local folder (its export is cached by "
                              f"content): '{mlm.identity.get('id')}' has no files to hash")
    entry = entry_folder(sha256, backend)
    if cache.entry_problem(entry, sha256, (ONNX_FILE,), "masked-LM export cache"):
        cache.write_entry(entry, str(mlm.identity.get("path")), sha256, (ONNX_FILE,), "masked-LM export cache",
                          lambda folder: _build(mlm, backend, folder),
                          {"backend": backend, "export_format": EXPORT_FORMAT, "opset": OPSET})
    return entry / ONNX_FILE


@dataclass
class OnnxMaskedLM(MaskedLM):
    """A masked LM whose batches run in an ONNX Runtime session (CPU); requests and outputs as ``MaskedLM``."""

    session: Any = field(default=None, repr=False)
    backend: str = "onnx"

    @property
    def packable(self) -> bool:
        return False                    # batches of one length: the graph takes no attention mask

    def _batch_logits(self, batch: list[Request]) -> Any:
        import numpy as np
        import torch

        ids = np.asarray([r.ids for r in batch], dtype=np.int64)
        length = ids.shape[1]
        feed = {"input_ids": ids,
                "rows": np.asarray([b * length + p for b, r in enumerate(batch) for p in r.positions], np.int64)}
        if self.uses_segments:
            feed["token_type_ids"] = np.asarray([r.type_ids for r in batch], dtype=np.int64)
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def to_onnx(mlm: MaskedLM, backend: str, threads: int = 0) -> OnnxMaskedLM:
    """The torch masked LM ``mlm`` as an ONNX Runtime one (``threads`` 0: ORT's default, one per core)."""
    import onnxruntime

    path = ensure_export(mlm, backend)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxMaskedLM(mlm.model, mlm.tokenizer, "cpu", "fp32", {**mlm.identity, "backend": backend},
                        mlm.max_length, session=session, backend=backend)
