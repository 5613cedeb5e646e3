"""Masked-LM candidates: input construction (pure Python, runs in workers) and batched inference (one process).

Inference groups sequences by exact length (no padding, so a sentence's numbers never depend on its batch
mates), runs the encoder under ``torch.inference_mode`` and applies the vocabulary head only to the hidden
states at masked positions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.config import MAX_CONTEXT
from augment.words import SentenceWords
from pipelines import fingerprint
from pipelines.errors import DistilleryError
from pipelines.resources import load_problem, model_reference, position_limit

MAX_BATCH_TOKENS = 16384
HARD_MAX_LENGTH = MAX_CONTEXT     # the context is capped here whatever the model's positions allow


@dataclass
class Request:
    """One masked-LM input: token ids, segment ids, masked positions and the words they stand for."""

    ids: list[int]
    type_ids: list[int]
    positions: list[int]
    words: list[int]
    truncated: bool = False


@dataclass(frozen=True)
class InputSpec:
    """What ``build_requests`` needs to know about the model (picklable, no torch)."""

    cls_id: int
    sep_id: int
    mask_id: int
    max_length: int
    mode: str = "pair"
    masks_per_pass: int = 1


def _window(n: int, width: int, centre: int) -> int:
    """Start of a ``width``-piece window around piece ``centre`` in a text of ``n`` pieces."""
    return max(0, min(centre - width // 2, n - width))


def build_requests(sentence: SentenceWords, word_indices: list[int], spec: InputSpec) -> list[Request]:
    """Masked-LM inputs for the single-piece words ``word_indices`` of a sentence (reference construction).

    pair:   [CLS] pieces with the word masked [SEP] pieces [SEP], segment ids 0 ... 0 1 ... 1
    single: [CLS] pieces with the word masked [SEP]
    A text too long for the model is cut to a window of pieces around the masked word. With
    ``masks_per_pass`` k > 1, the words are dealt round-robin into ceil(m / k) passes so that the words
    sharing a pass are far apart (approximate mode; long texts still get one mask per pass).
    """
    if not word_indices:
        return []
    pieces = sentence.piece_ids
    starts, offset = [], 0
    for word_pieces in sentence.pieces:
        starts.append(offset)
        offset += len(word_pieces)
    n = len(pieces)
    overhead = 3 if spec.mode == "pair" else 2
    copies = 2 if spec.mode == "pair" else 1
    fits = copies * n + overhead <= spec.max_length
    if fits and spec.masks_per_pass > 1:
        passes = -(-len(word_indices) // spec.masks_per_pass)
        groups = [word_indices[p::passes] for p in range(passes)]
    else:
        groups = [[w] for w in word_indices]
    requests = []
    for group in groups:
        if fits:
            lo, width = 0, n
        else:
            width = (spec.max_length - overhead) // copies
            lo = _window(n, width, starts[group[0]])
        window = pieces[lo:lo + width]
        masked = list(window)
        positions = []
        for w in group:
            masked[starts[w] - lo] = spec.mask_id
            positions.append(starts[w] - lo + 1)
        ids = [spec.cls_id, *masked, spec.sep_id]
        type_ids = [0] * len(ids)
        if spec.mode == "pair":
            ids += [*window, spec.sep_id]
            type_ids += [1] * (len(window) + 1)
        requests.append(Request(ids, type_ids, positions, list(group), truncated=not fits))
    return requests


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _local_folder(spec: str) -> Path | None:
    """The folder holding a model's files: the path itself, or its snapshot in the Hugging Face cache."""
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 - identity is best effort for hub ids
        return None


def model_identity(spec: str) -> dict[str, Any]:
    """Id/path plus sha256 of the weight, config and tokenizer files (for the config and the data card)."""
    folder = _local_folder(spec)
    identity: dict[str, Any] = {"id": spec, "path": str(folder) if folder else None}
    if folder is not None:
        hashes = fingerprint.model_file_hashes(folder)
        identity["weights"] = {k: v for k, v in hashes.items() if k.endswith((".safetensors", ".bin"))}
        identity["sha256"] = fingerprint.model_sha256(folder)
    return identity


def locate_model(spec: str) -> dict[str, Any]:
    """``model_identity`` of a model that can be loaded; offline, a model that is neither a folder nor in the
    Hugging Face cache is refused here, before any work starts."""
    identity = model_identity(model_reference(spec, "masked LM"))
    if identity["path"] is None and _offline():
        raise _not_available(spec)
    return identity


def load_tokenizer(spec: str) -> Any:
    """A fast BERT-family tokenizer from a hub id or folder (offline-aware)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=_offline(), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _not_available(spec, exc) from None
    if not getattr(tokenizer, "is_fast", False) or tokenizer.backend_tokenizer.pre_tokenizer is None:
        raise DistilleryError(f"tokenizer of '{spec}' is not a fast WordPiece (BERT-family) tokenizer")
    return tokenizer


def check_model_options(spec: str, top_k: int, max_length: int | None) -> None:
    """Refuse, from the masked LM's config alone (nothing else is loaded), a ``top_k`` over its vocabulary or a
    ``max_length`` over its positions."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=_offline(), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _not_available(spec, exc) from None
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and top_k > vocab:
        raise DistilleryError(f"augment: top_k {top_k} is more than the {vocab} pieces of masked LM '{spec}'")
    positions = position_limit(config)
    if max_length is not None and positions is not None and max_length > positions:
        raise DistilleryError(f"augment: max_length {max_length} is more than the {positions} positions of masked "
                              f"LM '{spec}'")


def _not_available(spec: str, exc: Exception | None = None) -> DistilleryError:
    folder = _local_folder(spec) if exc is not None else None
    if exc is not None and folder is not None:
        return DistilleryError(f"masked LM {folder} cannot be loaded: {load_problem(exc)}")
    where = "offline and not in the Hugging Face cache" if _offline() else f"could not be loaded ({type(exc).__name__})"
    return DistilleryError(f"masked LM '{spec}' is {where}: pass a local checkpoint folder with --mlm PATH "
                           f"(a BERT-family model with an MLM head), or --mlm none to use word vectors for every word")


@dataclass
class MaskedLM:
    """A masked LM ready for batched candidate search."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    identity: dict[str, Any]
    max_length: int
    stats: dict[str, float] = field(default_factory=lambda: {
        "sequences": 0, "tokens": 0, "attention_l2": 0, "masked": 0, "forwards": 0, "seconds": 0.0})
    _qkv: list[tuple[Any, Any]] | None = field(default=None, repr=False)

    def input_spec(self, mode: str, masks_per_pass: int, max_length: int | None) -> InputSpec:
        tok = self.tokenizer
        limit = min(self.max_length, max_length or self.max_length)
        return InputSpec(tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, limit, mode, masks_per_pass)

    def _encode(self, ids: Any, type_ids: Any) -> Any:
        base = self.model.base_model
        kwargs = {"token_type_ids": type_ids} if self.uses_segments else {}
        return base(input_ids=ids, **kwargs).last_hidden_state

    @property
    def uses_segments(self) -> bool:
        return "token_type_ids" in self.tokenizer.model_input_names and \
            getattr(self.model.config, "type_vocab_size", 0) > 1

    def head(self) -> Any:
        """The vocabulary head applied to hidden states (None: the model has none apart)."""
        for name in ("cls", "lm_head"):
            if hasattr(self.model, name):
                return getattr(self.model, name)
        return None

    @property
    def packable(self) -> bool:
        """True for BERT-style encoders, which run packed: linear layers over all tokens, attention per length."""
        base = self.model.base_model
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        return (self.head() is not None and hasattr(base, "embeddings") and layers is not None and
                not getattr(self.model.config, "is_decoder", False) and
                all(hasattr(layer, "attention") and hasattr(getattr(layer.attention, "self", None), "query")
                    for layer in layers))

    def _packed_hidden(self, batch: list[Request]) -> Any:
        """Hidden states at the masked positions of a batch sorted by length, without padding.

        The linear layers see all tokens of the batch as one matrix; attention runs once per distinct length
        (scaled dot-product attention, no mask). Each row's numbers depend only on its own sequence.
        """
        import torch
        import torch.nn.functional as F

        base = self.model.base_model
        groups, start = [], 0
        for length in sorted({len(r.ids) for r in batch}):
            members = [r for r in batch if len(r.ids) == length]
            groups.append((start, len(members), length, members))
            start += len(members) * length
        pieces = []
        for _, count, length, members in groups:
            ids = torch.tensor([r.ids for r in members], device=self.device)
            kwargs = {"token_type_ids": torch.tensor([r.type_ids for r in members], device=self.device)} \
                if self.uses_segments else {}
            pieces.append(base.embeddings(input_ids=ids, **kwargs).reshape(count * length, -1))
        x = torch.cat(pieces)
        for layer, (weight, bias) in zip(base.encoder.layer, self._fused_qkv()):
            attention = layer.attention.self
            heads, size = attention.num_attention_heads, attention.attention_head_size
            width = heads * size
            qkv = F.linear(x, weight, bias)       # one matrix product for query, key and value
            context = x.new_empty(x.shape[0], width)
            for lo, count, length, _ in groups:
                hi = lo + count * length
                shape = (count, length, heads, size)
                q, k, v = (qkv[lo:hi, i * width:(i + 1) * width].view(shape).transpose(1, 2) for i in range(3))
                out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
                context[lo:hi].view(shape).copy_(out.transpose(1, 2))
            attended = layer.attention.output(context, x)
            x = layer.output(layer.intermediate(attended), attended)
        rows = [lo + b * length + p for lo, _, length, members in groups
                for b, r in enumerate(members) for p in r.positions]
        return x[torch.tensor(rows, device=self.device)]

    def _fused_qkv(self) -> list[tuple[Any, Any]]:
        """Per layer, the query, key and value projections stacked into one weight and bias (built once)."""
        import torch

        if self._qkv is None:
            self._qkv = []
            for layer in self.model.base_model.encoder.layer:
                parts = [getattr(layer.attention.self, name) for name in ("query", "key", "value")]
                biases = None if any(p.bias is None for p in parts) else torch.cat([p.bias for p in parts])
                self._qkv.append((torch.cat([p.weight for p in parts]).contiguous(), biases))
        return self._qkv

    def _batch_logits(self, batch: list[Request]) -> Any:
        """Vocabulary logits at every masked position of a batch (in batch order, positions in order)."""
        import torch

        if self.packable:
            return self.head()(self._packed_hidden(batch))
        ids = torch.tensor([r.ids for r in batch], device=self.device)   # one length: no padding
        kwargs = {"token_type_ids": torch.tensor([r.type_ids for r in batch], device=self.device)} \
            if self.uses_segments else {}
        rows = torch.tensor([b for b, r in enumerate(batch) for _ in r.positions], device=self.device)
        cols = torch.tensor([p for r in batch for p in r.positions], device=self.device)
        head = self.head()
        if head is not None:
            return head(self.model.base_model(input_ids=ids, **kwargs).last_hidden_state[rows, cols])
        return self.model(input_ids=ids, **kwargs).logits[rows, cols]

    def _batches(self, requests: list[Request], batch_size: int) -> list[list[int]]:
        """Request indices in batches: sorted by length, at most ``batch_size`` sequences and MAX_BATCH_TOKENS
        tokens each; only packable models may mix lengths in one batch."""
        order = sorted(range(len(requests)), key=lambda i: (len(requests[i].ids), i))
        batches: list[list[int]] = []
        tokens = 0
        for i in order:
            length = len(requests[i].ids)
            if (not batches or len(batches[-1]) >= batch_size or tokens + length > MAX_BATCH_TOKENS
                    or (not self.packable and len(requests[batches[-1][0]].ids) != length)):
                batches.append([])
                tokens = 0
            batches[-1].append(i)
            tokens += length
        return batches

    def top_k(self, requests: list[Request], k: int, batch_size: int) -> list[list[list[int]]]:
        """Top-k token ids at every masked position of every request (same order as ``requests``)."""
        import torch

        start = time.perf_counter()
        results: list[list[list[int]]] = [[] for _ in requests]
        with torch.inference_mode():
            for members in self._batches(requests, batch_size):
                batch = [requests[i] for i in members]      # sorted by length, as _packed_hidden groups them
                top = torch.topk(self._batch_logits(batch).float(), k, dim=-1).indices.cpu().tolist()
                cursor = 0
                for i, request in zip(members, batch):
                    results[i] = top[cursor:cursor + len(request.positions)]
                    cursor += len(request.positions)
                self.stats["forwards"] += 1
                self.stats["sequences"] += len(batch)
                self.stats["tokens"] += sum(len(r.ids) for r in batch)
                self.stats["attention_l2"] += sum(len(r.ids) ** 2 for r in batch)
                self.stats["masked"] += sum(len(r.positions) for r in batch)
        self.stats["seconds"] += time.perf_counter() - start
        return results

    def tokens(self, ids: list[int]) -> list[str]:
        """Token strings of ids, with ``##`` continuation pieces dropped (as the reference does)."""
        return [t for t in self.tokenizer.convert_ids_to_tokens(ids) if not t.startswith("##")]


def resolve_device(device: str) -> str:
    """auto -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistilleryError("device cuda requested but no CUDA device is available")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """auto -> fp32 on CPU, bf16 on CUDA."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def load_mlm(spec: str, device: str, precision: str, identity: dict[str, Any] | None = None) -> MaskedLM:
    """Load a masked LM (hub id or folder) for inference; never runs remote code. ``identity``: its
    ``model_identity`` when already computed."""
    import torch
    from transformers import AutoModelForMaskedLM

    tokenizer = load_tokenizer(spec)
    try:
        model = AutoModelForMaskedLM.from_pretrained(spec, local_files_only=_offline(), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _not_available(spec, exc) from None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = model.to(device=device, dtype=dtype).eval()
    limit = min(HARD_MAX_LENGTH, position_limit(model.config) or HARD_MAX_LENGTH)
    return MaskedLM(model, tokenizer, device, precision, identity or model_identity(spec), limit)
