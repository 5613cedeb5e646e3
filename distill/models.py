"""Teachers and students: loading, presets, and raw (pre-softmax) attention score capture.

Hugging Face BERT models return *post-softmax* attentions. TinyBERT distils the raw scores
``Q K^T / sqrt(d) + mask``. We register an attention implementation ``distill_raw`` (identical to the
eager one) that, when a capture list is attached to a self-attention module, appends those scores to it.
"""
from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from distill import students
from distill.config import MINILM, DistillConfig
from distill.tagging import token_classifier
from pipelines.errors import DistilleryError
from pipelines.progress import say
from pipelines.resources import load_problem, minilm_path, model_reference, position_limit

RAW_ATTENTION = "distill_raw"
PRESETS = {
    "tinybert-4": {"num_hidden_layers": 4, "hidden_size": 312, "num_attention_heads": 12, "intermediate_size": 1200},
    "tinybert-6": {"num_hidden_layers": 6, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "custom": {},
}
_SINK = "_distill_scores"
MAX_STUDENT_PARAMETERS = 1 << 31     # a fresh student this large is no longer a small model (AdamW: ~34 GB)


def _raw_score_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that also hands the masked raw scores to the module's capture list."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    sink = getattr(module, _SINK, None)
    if sink is not None:
        sink.append(scores)
    probs = nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(RAW_ATTENTION, _raw_score_attention)
AttentionMaskInterface.register(RAW_ATTENTION, eager_mask)


def resolve_model(name: str | Path, what: str = "model") -> str:
    """A model reference: the MiniLM shortcut, a local folder or a hub id (``what`` names it in errors)."""
    if str(name) == MINILM:
        return str(minilm_path())
    return model_reference(str(name), what)


def self_attentions(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a BERT-family encoder, bottom to top."""
    encoder = model.base_model.encoder
    return [layer.attention.self for layer in encoder.layer]


def enable_raw_attention(model: nn.Module) -> None:
    """Switch a model to the capturing attention implementation (same numbers as eager)."""
    model.set_attn_implementation(RAW_ATTENTION)


@contextlib.contextmanager
def capture_scores(model: nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Collect each layer's raw attention scores (batch, heads, q, k) during the forward passes in the block."""
    scores: list[torch.Tensor] = []
    modules = self_attentions(model) if enabled else []
    if enabled and model.config._attn_implementation != RAW_ATTENTION:
        raise DistilleryError("raw attention capture needs enable_raw_attention(model) first")
    for module in modules:
        setattr(module, _SINK, scores)
    try:
        yield scores
    finally:
        for module in modules:
            setattr(module, _SINK, None)


@dataclass
class Features:
    """What the losses compare: hidden states (index 0 = embeddings), raw attention scores, logits."""

    hidden: tuple[torch.Tensor, ...] | None
    attentions: list[torch.Tensor] | None
    logits: torch.Tensor | None


def forward_features(model: nn.Module, batch: dict[str, torch.Tensor], hidden: bool, attentions: bool) -> Features:
    """One forward pass returning only the features asked for."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with capture_scores(model, attentions) as scores:
        out = model(**inputs, output_hidden_states=hidden, return_dict=True)
    logits = getattr(out, "logits", None)
    return Features(out.hidden_states if hidden else None, list(scores) if attentions else None, logits)


def from_pretrained(cls: Any, path: str | Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)``; a model that cannot be loaded is one line naming ``what`` and the
    folder or hub id."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise DistilleryError(f"cannot load {what} '{path}': {load_problem(exc)}") from None


def load_config(path: str | Path, what: str = "model") -> Any:
    """The config of a model (folder, hub id or minilm; ``what`` names it in errors); nothing else is loaded."""
    return from_pretrained(AutoConfig, resolve_model(path, what), f"the config of {what}")


def check_against_model(model: str | Path, what: str, max_seq_length: int, train_layers: int = 0) -> None:
    """Refuse, from the model's config alone (before any data or weights are read), a ``max_seq_length`` over its
    position embeddings or a ``train_layers`` over its layers. A preset or bilstm / textcnn student is built later
    with the teacher's positions or none: nothing to check."""
    if str(model) in PRESETS or str(model) in students.STUDENTS:
        return
    config = load_config(model, what)
    limit = position_limit(config)
    if limit is not None and max_seq_length > limit:
        raise DistilleryError(f"max_seq_length {max_seq_length} is more than the {limit} positions of {what} "
                              f"'{model}'")
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and train_layers > layers:
        raise DistilleryError(f"train_layers {train_layers} is more than the {layers} layers of {what} '{model}'")


def classifier_class(config: Any) -> Any:
    """The Auto class of a classifier with this config or these label kwargs: token or sequence classification."""
    return AutoModelForTokenClassification if token_classifier(config) else AutoModelForSequenceClassification


def load_classifier(path: str | Path, labels: dict[str, Any]) -> nn.Module:
    """A sequence (or, as ``labels`` say, token) classifier from a pre-trained encoder; weights the checkpoint lacks
    (a new classifier head) are said in one line of ours instead of the library's load report."""
    model, info = from_pretrained(classifier_class(labels), path, "model", output_loading_info=True, **labels)
    missing = list(info.get("missing_keys", []))
    head = [k for k in missing if k.startswith("classifier.")]
    if head:
        say(f"{_display(path)}: classifier initialised for {model.config.num_labels} labels")
    if len(missing) > len(head):
        say(f"{_display(path)}: {len(missing) - len(head)} weight(s) not in the checkpoint were initialised "
            f"randomly (e.g. {sorted(set(missing) - set(head))[0]})")
    return model


def _display(path: str | Path) -> str:
    """A short readable name of a model folder (its last two path parts)."""
    return "/".join(Path(path).parts[-2:])


def load_masked_lm(path: str | Path) -> nn.Module:
    """A masked LM to train: the checkpoint's own head, or a new one whose decoder is tied to the input
    embeddings (said in one line)."""
    model, info = from_pretrained(AutoModelForMaskedLM, path, "masked LM", output_loading_info=True,
                                  tie_word_embeddings=True)
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise DistilleryError(f"'{path}': the masked-LM decoder is not tied to the input embeddings")
    missing = list(info.get("missing_keys", []))
    if missing:
        say(f"{_display(path)}: masked-LM head initialised ({len(missing)} tensors), decoder tied to the input "
            f"embeddings")
    return model


def load_teacher(path: str | Path, with_head: bool, device: torch.device) -> nn.Module:
    """A frozen teacher in eval mode (with ``with_head``, the sequence or token classifier its config names)."""
    path = resolve_model(path)
    model = from_pretrained(classifier_class(load_config(path, "teacher")) if with_head else AutoModel, path,
                            "teacher")
    if with_head and not getattr(model.config, "label2id", None):
        raise DistilleryError(f"teacher '{path}' has no classification head labels")
    model.requires_grad_(False)
    return model.eval().to(device)


def student_config(teacher_config: Any, preset: str, overrides: dict[str, int], labels: dict[str, Any]) -> BertConfig:
    """A BertConfig for a fresh student: the preset's shape, the teacher's vocabulary and positions."""
    shape = dict(PRESETS[preset])
    shape.update({k: v for k, v in overrides.items() if v})
    missing = [k for k in PRESETS["tinybert-4"] if k not in shape]
    if missing:
        raise DistilleryError(f"student 'custom' needs student_layers/hidden/heads/intermediate (missing {missing})")
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise DistilleryError(f"student hidden size {shape['hidden_size']} is not a multiple of its "
                              f"{shape['num_attention_heads']} heads")
    return BertConfig(vocab_size=teacher_config.vocab_size,
                      max_position_embeddings=teacher_config.max_position_embeddings,
                      type_vocab_size=getattr(teacher_config, "type_vocab_size", 2),
                      pad_token_id=getattr(teacher_config, "pad_token_id", 0), **shape, **labels)


WIDTH_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")


def student_shape(cfg: DistillConfig) -> dict[str, int]:
    """The student shape a distillation config asks for (0: the preset's)."""
    return {"num_hidden_layers": cfg.student_layers, "hidden_size": cfg.student_hidden,
            "num_attention_heads": cfg.student_heads, "intermediate_size": cfg.student_intermediate}


def build_student(cfg: DistillConfig, student: str, teacher: nn.Module | None, teacher_config: Any,
                  labels: dict[str, Any], head: str) -> nn.Module:
    """The student of a distillation run (``head``: classifier, none or mlm), initialised from the teacher's
    embeddings and mapped layers when ``cfg.student_init`` is teacher and the student is a preset."""
    init_from = None
    if cfg.student_init == "teacher" and student in PRESETS:
        layers = cfg.student_layers or PRESETS[student].get("num_hidden_layers", 0)
        init_from = (teacher, layer_mapping(layers, num_layers(teacher_config), cfg.mapping, cfg.layer_map))
    return load_student(student, teacher_config, student_shape(cfg), labels, head, cfg.seed, init_from)


def load_student(student: str, teacher_config: Any, overrides: dict[str, int], labels: dict[str, Any],
                 head: str, seed: int, init_from: tuple[nn.Module, list[int]] | None = None) -> nn.Module:
    """A student from a saved model (path / hub id) or from a preset: randomly initialised, or, with
    ``init_from=(teacher, mapping)``, of the teacher's width with its embeddings and layers g(m) copied
    (DistilBERT-style initialisation; the preset then only gives the number of layers, and an explicit
    ``intermediate_size`` below the teacher's keeps each copied layer's most important feed-forward neurons)."""
    cls = {"classifier": classifier_class(labels), "none": AutoModel, "mlm": AutoModelForMaskedLM}[head]
    if student in PRESETS:
        if init_from is not None:
            overrides = {**overrides, **teacher_width(teacher_config, overrides)}
        config = student_config(teacher_config, student, overrides, labels)

        def build() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return cls.from_config(config)
        model = bounded(build, f"student '{student}'")
        if init_from is not None:
            copy_teacher_layers(model, *init_from)
        return model
    presets = f"(or use a preset: {', '.join(PRESETS)})"
    if head == "classifier" and students.is_student_folder(student):
        return students.load_student_model(student)
    try:
        return from_pretrained(cls, resolve_model(student, "student"), "student", **labels)
    except DistilleryError as exc:
        raise DistilleryError(f"{exc} {presets}") from None


def bounded(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """``build()``, after building it once on the meta device (no memory, no weights) to refuse a model of more
    than ``MAX_STUDENT_PARAMETERS`` parameters in one line."""
    with torch.device("meta"):
        size = sum(p.numel() for p in build().parameters())
    if size > MAX_STUDENT_PARAMETERS:
        raise DistilleryError(f"{what} would have {size:,} parameters, over {MAX_STUDENT_PARAMETERS:,}: choose a "
                              f"smaller shape (student_layers, student_hidden, student_intermediate)")
    return build()


def build_sequence_student(cfg: DistillConfig, kind: str, teacher_src: str, teacher_config: Any,
                           labels: dict[str, Any], texts: Iterable[str], words_dir: Path) -> tuple[nn.Module, str]:
    """(a fresh bilstm / textcnn student, its tokenizer): the teacher's word pieces with the teacher's input
    embeddings, or (``cfg.student_embeddings`` glove) a word vocabulary of ``texts`` saved in ``words_dir`` with
    word vectors."""
    if cfg.student_embeddings == "glove":
        tokenizer = students.words_tokenizer(texts, words_dir, tagging=token_classifier(labels))
        vocab = AutoTokenizer.from_pretrained(tokenizer).get_vocab()
        vectors, found = students.vocabulary_vectors(vocab, cfg.word_vectors, cfg.seed)
        say(f"{kind} student: {len(vocab)} words, {found} with a word vector")
        pad = vocab[students.PAD]
    else:
        tokenizer = Path(teacher_src)
        teacher = from_pretrained(classifier_class(teacher_config), teacher_src, "teacher")
        vectors = teacher.get_input_embeddings().weight.detach().clone()
        pad = getattr(teacher_config, "pad_token_id", 0) or 0
    model = bounded(lambda: students.build_student_model(kind, vectors.shape[0], vectors, student_shape(cfg), labels,
                                                         cfg.seed, pad), f"{kind} student")
    return model, str(tokenizer)


def saved_model_dir(path: str | Path) -> Path:
    """The saved model a path names: the folder itself, or a run folder's ``model/``; refused otherwise."""
    folder = Path(resolve_model(path))
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        if (folder / "model" / "config.json").exists():
            return folder / "model"
        raise DistilleryError(f"{folder} is not a saved model (no weights; a run's model is in its model/ folder)")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise DistilleryError(f"{folder} is not a saved model (no config.json)")
    return folder


def load_saved_classifier(folder: str | Path) -> nn.Module:
    """A saved sequence (or token) classifier in eval mode: a BERT-family model or a bilstm / textcnn student."""
    if students.is_student_folder(folder):
        return students.load_student_model(folder)
    cls = classifier_class(load_config(folder, "the classifier in"))
    return from_pretrained(cls, folder, "the classifier in").eval()


def teacher_width(teacher_config: Any, overrides: dict[str, int]) -> dict[str, int]:
    """The shape of a teacher-initialised student: the teacher's hidden size and heads, and its feed-forward
    width unless a narrower one is asked for."""
    width = {k: getattr(teacher_config, k) for k in WIDTH_KEYS}
    for key, value in overrides.items():
        if key in width and value and value != width[key] and not (key == "intermediate_size" and value < width[key]):
            raise DistilleryError(f"a student initialised from the teacher keeps its {key} ({width[key]}; got "
                                  f"{value}); only intermediate_size may be smaller")
    if overrides.get("intermediate_size"):
        width["intermediate_size"] = overrides["intermediate_size"]
    return width


def feed_forward_keep(layer: nn.Module, size: int) -> torch.Tensor:
    """Indices (ascending) of a layer's ``size`` most important feed-forward neurons, importance being the product
    of the norms of a neuron's input row and output column (magnitude pruning, as in DynaBERT's width search)."""
    w_in, w_out = layer.intermediate.dense.weight, layer.output.dense.weight
    importance = w_in.norm(dim=1) * w_out.norm(dim=0)
    return importance.topk(size).indices.sort().values


def copy_layer(target: nn.Module, source: nn.Module) -> None:
    """Copy one transformer layer, keeping only the most important feed-forward neurons when the target is
    narrower."""
    state = source.state_dict()
    size = target.intermediate.dense.out_features
    if size != source.intermediate.dense.out_features:
        keep = feed_forward_keep(source, size)
        state["intermediate.dense.weight"] = state["intermediate.dense.weight"][keep]
        state["intermediate.dense.bias"] = state["intermediate.dense.bias"][keep]
        state["output.dense.weight"] = state["output.dense.weight"][:, keep]
    target.load_state_dict(state)


def copy_teacher_layers(student: nn.Module, teacher: nn.Module, mapping: list[int]) -> None:
    """Copy embeddings, layer g(m) -> student layer m, the pooler, the masked-LM head and (same labels) the
    classifier."""
    if len(mapping) != num_layers(student):
        raise DistilleryError(f"layer map {mapping} does not fit a {num_layers(student)}-layer student")
    s, t = student.base_model, teacher.base_model
    s.embeddings.load_state_dict(t.embeddings.state_dict())
    for m, g in enumerate(mapping):
        copy_layer(s.encoder.layer[m], t.encoder.layer[g - 1])
    if getattr(s, "pooler", None) is not None and getattr(t, "pooler", None) is not None:
        s.pooler.load_state_dict(t.pooler.state_dict())
    head_s, head_t = getattr(student, "classifier", None), getattr(teacher, "classifier", None)
    if head_s is not None and head_t is not None and head_s.weight.shape == head_t.weight.shape:
        head_s.load_state_dict(head_t.state_dict())
    if getattr(student, "cls", None) is not None and getattr(teacher, "cls", None) is not None:
        student.cls.load_state_dict(teacher.cls.state_dict())      # its decoder is tied to the copied embeddings


def layer_mapping(student_layers: int, teacher_layers: int, strategy: str = "uniform",
                  explicit: list[int] | None = None) -> list[int]:
    """Teacher layer g(m) for each student layer m = 1..M (1-based; 0 would be the embeddings).

    uniform: g(m) = m * N / M (rounded down); top: the last M teacher layers; bottom: the first M;
    explicit: the given list.
    """
    m, n = student_layers, teacher_layers
    if strategy == "uniform":
        mapping = [k * n // m for k in range(1, m + 1)]
    elif strategy == "top":
        mapping = [n - m + k for k in range(1, m + 1)]
    elif strategy == "bottom":
        mapping = list(range(1, m + 1))
    elif strategy == "explicit":
        mapping = [int(x) for x in (explicit or [])]
        if len(mapping) != m:
            raise DistilleryError(f"explicit layer_map needs {m} teacher layers (one per student layer), "
                                  f"got {mapping}")
    else:
        raise DistilleryError(f"unknown layer mapping '{strategy}' (uniform / top / bottom / explicit)")
    if m > n and strategy != "explicit":
        raise DistilleryError(f"student has more layers ({m}) than the teacher ({n}); use an explicit layer_map")
    bad = [t for t in mapping if not 1 <= t <= n]
    if bad:
        raise DistilleryError(f"teacher layers {bad} outside 1..{n}")
    return mapping


def num_layers(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return config.num_hidden_layers


def hidden_size(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return config.hidden_size
