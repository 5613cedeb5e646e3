"""Students beyond BERT: a BiLSTM (Tang et al. 2019) and a TextCNN (Kim 2014), distilled from a teacher's logits.

Both read the same batches as a BERT student (``input_ids``, ``attention_mask``; ``token_type_ids`` is ignored)
and return an object with ``.logits``, so the trainer, the objective and ``evaluate`` treat them alike. Their
tokens are either the teacher's word pieces (embeddings copied from the teacher's input embeddings) or a
word-level vocabulary built from the training version (``words_tokenizer``: a Hugging Face fast tokenizer, so the
collator and the saved folder work unchanged) with GloVe vectors. A saved student is a folder with
``config.json`` (``model_type`` ``distillery-bilstm`` / ``distillery-textcnn``), ``model.safetensors`` and the
tokenizer files; ``load_student_model`` reads it back.

A BiLSTM also tags words (token classification: label kwargs whose ``architectures`` mark a token classifier,
``tagging.token_classifier``): ``BiLSTMForTokenClassification`` gives logits at every position, (batch, sequence,
labels), and its word vocabulary (``words_tokenizer(..., tagging=True)``) keeps each given word one piece. A TextCNN
classifies sentences only.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from distill.tagging import IGNORE_INDEX, token_classifier
from pipelines.atomic import fill_folder
from pipelines.errors import DistilleryError
from pipelines.resources import glove_6b_50d_files

PAD, UNK = "[PAD]", "[UNK]"
WEIGHTS = "model.safetensors"
SHAPES = {"bilstm": {"num_hidden_layers": 1, "hidden_size": 150}, "textcnn": {"num_hidden_layers": 1,
                                                                               "hidden_size": 100}}
KERNEL_SIZES = (3, 4, 5)
DROPOUT = 0.1


class StudentConfig(PretrainedConfig):
    """Shape and labels of a non-transformer student: ``hidden_size`` is the LSTM width per direction (BiLSTM) or
    the filters per kernel width (TextCNN); ``num_hidden_layers`` the stacked LSTM layers (TextCNN: 1)."""

    vocab_size: int = 2
    embedding_size: int = 50
    hidden_size: int = 300
    num_hidden_layers: int = 1
    dropout: float = DROPOUT
    pad_token_id: int | None = 0


class BiLSTMConfig(StudentConfig):
    model_type = "distillery-bilstm"


class TextCNNConfig(StudentConfig):
    model_type = "distillery-textcnn"


AutoConfig.register(BiLSTMConfig.model_type, BiLSTMConfig)
AutoConfig.register(TextCNNConfig.model_type, TextCNNConfig)


def masked_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time (dim 1) of the positions ``mask`` keeps."""
    return states.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(states.dtype).min).amax(dim=1)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first ``length`` positions in reverse order (padding stays in place); its own inverse."""
    t = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    index = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class SequenceStudent(nn.Module):
    """What both students share: embeddings, a classifier head, the HF-style call, saving and parameters."""

    config_class: type[StudentConfig] = StudentConfig

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.dropout = nn.Dropout(config.dropout)

    def encode(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, features): the sentence vector the classifier reads (a tagger: (batch, sequence, features))."""
        raise NotImplementedError

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 output_hidden_states: bool) -> torch.Tensor:
        """The classifier's logits over what ``encode`` gives (hidden states refused: there are none to match)."""
        if output_hidden_states:
            raise DistilleryError(f"a {self.config.model_type} student has no hidden states to match: distil it "
                                  f"from logits only")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.classifier(self.dropout(self.encode(self.dropout(self.embeddings(input_ids)), mask)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool = True) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.classify(input_ids, attention_mask, output_hidden_states))

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json and model.safetensors (the tokenizer is saved beside them by the caller)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))


class BiLSTMStudent(SequenceStudent):
    """Stacked bidirectional LSTM, max-pooled over the words, then a ReLU layer and the classifier (Tang et al.).

    Each direction is its own unidirectional LSTM; the backward one reads every row reversed within its length,
    so padding never enters a sentence's states (the same logits at any batch size, and exportable to ONNX)."""

    config_class = BiLSTMConfig

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        width = config.hidden_size
        self.forward_lstms, self.backward_lstms = lstm_stacks(config)
        self.dense = nn.Linear(2 * width, 2 * width)
        self.classifier = nn.Linear(2 * width, config.num_labels)

    def encode(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = bidirectional_states(self.forward_lstms, self.backward_lstms, self.dropout, embedded, mask)
        return torch.relu(self.dense(masked_max(states, mask)))


class BiLSTMForTokenClassification(SequenceStudent):
    """A BiLSTM tagger: the same stacked bidirectional LSTMs, and the classifier at every position (no pooling).

    ``forward`` returns logits (batch, sequence, labels) and, given ``labels`` per position (-100 ignored), their
    mean cross-entropy as ``loss``, like a Hugging Face token classifier. Padding never enters a position's states."""

    config_class = BiLSTMConfig

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        self.forward_lstms, self.backward_lstms = lstm_stacks(config)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)

    def encode(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return bidirectional_states(self.forward_lstms, self.backward_lstms, self.dropout, embedded, mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool = True) -> TokenClassifierOutput:
        logits = self.classify(input_ids, attention_mask, output_hidden_states)
        loss = None if labels is None else F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                           ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(loss=loss, logits=logits)


def lstm_stacks(config: StudentConfig) -> tuple[nn.ModuleList, nn.ModuleList]:
    """(forward, backward) unidirectional LSTMs, one pair per layer, ``hidden_size`` wide each."""
    sizes = [config.embedding_size] + [2 * config.hidden_size] * config.num_hidden_layers

    def stack() -> nn.ModuleList:
        return nn.ModuleList(nn.LSTM(size, config.hidden_size, batch_first=True) for size in sizes[:-1])

    return stack(), stack()


def bidirectional_states(forward_lstms: nn.ModuleList, backward_lstms: nn.ModuleList, dropout: nn.Module,
                         embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, sequence, 2 x hidden): both directions' states at each position after the stacked layers; the
    backward LSTMs read each row reversed within its length (``mask``), so padding never enters them."""
    lengths, states = mask.sum(dim=1).clamp(min=1), embedded
    for i, (ahead, back) in enumerate(zip(forward_lstms, backward_lstms)):
        if i:
            states = dropout(states)
        backward = reverse_within(back(reverse_within(states, lengths))[0], lengths)
        states = torch.cat([ahead(states)[0], backward], dim=-1)
    return states


class TextCNNStudent(SequenceStudent):
    """Convolutions of widths 3, 4 and 5 over the words, ReLU, max-pooled over time, then the classifier (Kim).

    Padding positions are zeroed before the convolutions (whatever the ``[PAD]`` embedding holds: the teacher's is
    not zero), so a sentence's windows see zeros past its end in any batch: the same logits at any batch padding."""

    config_class = TextCNNConfig

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        self.convolutions = nn.ModuleList(nn.Conv1d(config.embedding_size, config.hidden_size, k, padding=k // 2)
                                          for k in KERNEL_SIZES)
        self.classifier = nn.Linear(len(KERNEL_SIZES) * config.hidden_size, config.num_labels)

    def encode(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (embedded * mask.unsqueeze(-1).to(embedded.dtype)).transpose(1, 2)
        length = mask.size(1)
        return torch.cat([masked_max(torch.relu(conv(x))[:, :, :length].transpose(1, 2), mask)
                          for conv in self.convolutions], dim=-1)


STUDENTS: dict[str, type[SequenceStudent]] = {"bilstm": BiLSTMStudent, "textcnn": TextCNNStudent}
MODEL_TYPES = {cls.config_class.model_type: cls for cls in STUDENTS.values()}
KINDS = {cls.config_class.model_type: kind for kind, cls in STUDENTS.items()}
TAGGERS: dict[str, type[SequenceStudent]] = {"bilstm": BiLSTMForTokenClassification}


def student_class(kind: str, config: Any) -> type[SequenceStudent]:
    """The class of a ``kind`` student with this config, or these label kwargs: its tagger when they mark a token
    classifier (``tagging.token_classifier``: their ``architectures``), refused in one line for a TextCNN."""

    if not token_classifier(config):
        return STUDENTS[kind]
    if kind not in TAGGERS:
        raise DistilleryError(f"a {kind} student classifies sentences only: tag words with a bilstm student (or a "
                              f"BERT one)")
    return TAGGERS[kind]


def is_tagger(config: StudentConfig) -> bool:
    """Whether a student config is a tagger's (token classification)."""
    return student_class(KINDS[config.model_type], config) in TAGGERS.values()


def is_student_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved BiLSTM / TextCNN student."""
    path = Path(folder) / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") in MODEL_TYPES


def describe(config: StudentConfig) -> tuple[str, str]:
    """(short name, shape in words) of a student config, for its model card."""
    words = f"{config.embedding_size}-d embeddings of {config.vocab_size} tokens"
    layers = f"{config.num_hidden_layers} layer(s) x {config.hidden_size} per direction, {words}"
    if is_tagger(config):
        return "BiLSTM tagger", f"BiLSTM tagger (a tag for each word from its first piece, no CRF), {layers}"
    if config.model_type == BiLSTMConfig.model_type:
        return "BiLSTM", f"BiLSTM, {layers}"
    widths = "/".join(map(str, KERNEL_SIZES))
    return "TextCNN", f"TextCNN, {config.hidden_size} filters of widths {widths}, {words}"


USAGE = """```python
from transformers import AutoTokenizer
from distill.students import load_student_model   # distillery's; or the ONNX copy in onnx/ with onnxruntime

model, tokenizer = load_student_model("path/to/this/folder"), AutoTokenizer.from_pretrained("path/to/this/folder")
print(model(**tokenizer(["a small piece of land surrounded by water"], return_tensors="pt")).logits)
```"""
TAGGER_USAGE = """```python
from transformers import AutoTokenizer
from distill.students import load_student_model   # distillery's; or the ONNX copy in onnx/ with onnxruntime

model, tokenizer = load_student_model("path/to/this/folder"), AutoTokenizer.from_pretrained("path/to/this/folder")
words = ["Ada", "Lovelace", "was", "born", "in", "London", "."]
batch = tokenizer([words], is_split_into_words=True, return_tensors="pt")
predicted = model(**batch).logits.argmax(-1)[0].tolist()             # one tag id per piece
first = {}                                                           # each word's first piece tags it
for piece, word in enumerate(batch.word_ids(0)):
    if word is not None:
        first.setdefault(word, piece)
print([(words[w], model.config.id2label[predicted[p]]) for w, p in sorted(first.items())])
```"""


def usage(config: StudentConfig) -> str:
    """How to run a student with this config, for its model card: a sentence classifier's or a tagger's."""
    return TAGGER_USAGE if is_tagger(config) else USAGE


def load_student_model(folder: str | Path) -> SequenceStudent:
    """A saved BiLSTM / TextCNN student or BiLSTM tagger (safetensors weights), in eval mode."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    config = MODEL_TYPES[model_type].config_class.from_pretrained(folder)
    model = student_class(KINDS[model_type], config)(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()


def build_student_model(kind: str, vocab_size: int, vectors: torch.Tensor, shape: dict[str, int],
                        labels: dict[str, Any], seed: int, pad_token_id: int = 0) -> SequenceStudent:
    """A fresh student of ``kind`` (bilstm / textcnn) whose embeddings start as ``vectors`` (vocab x dim): a tagger
    when ``labels`` are a token classifier's (``student_class``)."""
    cls = student_class(kind, labels)
    sizes = {**SHAPES[kind], **{k: v for k, v in shape.items() if k in SHAPES[kind] and v}}
    config = cls.config_class(vocab_size=vocab_size, embedding_size=vectors.shape[1], pad_token_id=pad_token_id,
                              **sizes, **labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    with torch.no_grad():
        model.embeddings.weight.copy_(vectors)
    return model


# ---- word-level vocabulary and GloVe vectors ------------------------------------------------------------
def words_tokenizer(texts: Iterable[str], folder: Path, max_words: int = 0, tagging: bool = False) -> Path:
    """A word-level Hugging Face tokenizer (lower-cased, BERT's word splitting) over the words of ``texts``, most
    frequent first (``max_words`` > 0 keeps that many), saved in ``folder`` (through a new temporary folder).

    ``tagging``: words are split at whitespace only, so a tagging version's word (its ``text`` is its words joined by
    spaces) stays one piece, punctuation and all ("O'Neill", "U.S."), or [UNK], and ``word_ids()`` of words given
    with ``is_split_into_words`` maps each piece to its word; a word holding a space is one piece per part."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.WhitespaceSplit() if tagging else pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str((text or "").lower()))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    words = ranked[:max_words] if max_words else ranked
    vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = splitter
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    return fill_folder(folder, fast.save_pretrained)    # never through a symlink planted in folder


def version_texts(shards: Iterable[str | Path]) -> Iterable[str]:
    """The ``text`` (and ``text_pair``) of every row of a version's shards."""
    for shard in shards:
        parquet = pq.ParquetFile(shard)
        columns = [c for c in ("text", "text_pair") if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=columns):
            for column in batch.columns:
                yield from column.to_pylist()


def read_word_vectors(source: str) -> tuple[list[str], np.ndarray]:
    """(words, float32 matrix): the bundled GloVe 6B 50d (``source`` empty), a GloVe .txt or a word2vec .bin."""
    if not source:
        vocab, matrix = glove_6b_50d_files()
        return pq.read_table(vocab).column("index").to_pylist(), np.load(matrix, mmap_mode="r")
    from gensim.models import KeyedVectors

    path = Path(source)
    if not path.is_file():
        raise DistilleryError(f"word vectors '{source}': no such file")
    binary = path.suffix == ".bin"
    try:
        vectors = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=not binary)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DistilleryError(f"cannot read word vectors '{source}': {exc}") from None
    return list(vectors.index_to_key), vectors.vectors


def vocabulary_vectors(vocab: dict[str, int], source: str, seed: int) -> tuple[torch.Tensor, int]:
    """(vocab x dim matrix, words found): each word's vector, random (scaled like the vectors) for the others, zero
    for padding."""
    words, matrix = read_word_vectors(source)
    row = {w: i for i, w in enumerate(words)}
    scale = float(np.asarray(matrix[:10_000]).std())
    generator = torch.Generator().manual_seed(seed)
    out = torch.randn(len(vocab), matrix.shape[1], generator=generator) * scale
    found = [(i, row[w]) for w, i in vocab.items() if w in row]
    if found:
        ids, rows = zip(*found)
        out[list(ids)] = torch.from_numpy(np.asarray(matrix[np.array(rows)], dtype=np.float32))
    out[vocab[PAD]] = 0.0
    return out, len(found)

