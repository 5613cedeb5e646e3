"""Configuration dataclasses of the distiller (TOML keys and CLI flags are these fields)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines.config import ConfigError, Options, option

MINILM = "minilm"  # stands for pipelines.resources.minilm_path() (the bundled all-MiniLM-L6-v2 encoder)
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
MAX_SEQ_LENGTH = 8192          # tokens per row; a model's own position limit is checked against it before a run
MAX_BATCH_TOKENS = 1 << 19     # rows x max_seq_length of one batch: more than one accelerator holds for any BERT
MAX_STREAM_TOKENS = 1 << 28    # tokenised rows the training stream holds (shuffle buffer + length-grouping window)
MAX_STEPS = 100_000_000
MAX_SEED = 2**32 - 1          # numpy and torch generators (and seed + epoch sums) stay in range
MAX_WEIGHT = 1000.0


def check_batch_tokens(batch_size: int, max_seq_length: int) -> None:
    """Refuse a batch of more than ``MAX_BATCH_TOKENS`` tokens (batch_size x max_seq_length)."""
    if batch_size * max_seq_length > MAX_BATCH_TOKENS:
        raise ConfigError("batch_size", f"{batch_size} rows x max_seq_length {max_seq_length} = "
                                        f"{batch_size * max_seq_length:,} tokens per batch, over {MAX_BATCH_TOKENS:,}")


def check_device(device: str) -> None:
    """Refuse a device name that is not auto, cpu, cuda or cuda:N."""
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError("device", f"'{device}' is not auto, cpu, cuda or cuda:N")


@dataclass
class TrainConfig(Options):
    """What every training run shares: optimisation, data streaming, runtime and checkpointing.

    Fields marked runtime may change when a run is resumed: they never change what is computed.
    """

    epochs: float = option(1.0, gt=0, le=10_000, help="Passes over the training version (fractional allowed).")
    max_steps: int = option(0, ge=0, le=MAX_STEPS, help="Optimizer steps; > 0 overrides epochs.")
    batch_size: int = option(32, ge=1, le=65_536, help="Rows per micro-batch per process.")
    grad_accum: int = option(1, ge=1, le=4096, help="Micro-batches per optimizer step.")
    lr: float = option(5e-5, gt=0, le=1, help="Peak learning rate (AdamW).")
    weight_decay: float = option(0.01, ge=0, le=1, help="AdamW weight decay (not on biases and LayerNorm).")
    warmup: float = option(0.1, ge=0, le=MAX_STEPS, help="Warm-up: a fraction of the steps (< 1) or a number of "
                                                         "steps (>= 1).")
    max_grad_norm: float = option(1.0, ge=0, le=1e6, help="Gradient clipping norm (0 disables clipping).")
    max_seq_length: int = option(128, ge=8, le=MAX_SEQ_LENGTH, help="Tokens per row after truncation (at most "
                                                                     "the model's positions).")
    seed: int = option(42, ge=0, le=MAX_SEED, help="Seed of the data order, initialisation and dropout.")
    shuffle_buffer: int = option(10_000, ge=1, le=10_000_000, help="Rows in the bounded shuffle buffer.")
    group_batches: int = option(50, ge=1, le=10_000, help="Length grouping: sort windows of this many batches by "
                                                          "length.")
    num_workers: int = option(1, ge=0, le=64, runtime=True, help="DataLoader workers (tokenisation happens there).")
    threads: int = option(0, ge=0, le=1024, runtime=True, help="torch intra-op threads (0 = the cores per process).")
    device: str = option("auto", runtime=True, help=DEVICE_HELP)
    amp: str = option("none", choices=("none", "bf16", "fp16"), help="Mixed precision (fp16 needs CUDA).")
    compile: bool = option(False, runtime=True, help="torch.compile the student.")
    checkpoint_every: int = option(0, ge=0, le=MAX_STEPS, runtime=True, help="Optimizer steps between checkpoints "
                                                                             "(0 = only at the end).")
    keep_checkpoints: int = option(2, ge=1, le=1000, runtime=True, help="Newest checkpoints kept during a run.")
    prune_checkpoints: bool = option(True, runtime=True, help="Delete checkpoints/ (optimizer state and all) once "
                                                              "the run has finished and its model is saved.")
    log_every: int = option(10, ge=1, le=MAX_STEPS, runtime=True, help="Steps between metrics lines.")
    report_to: str = option("none", choices=("none", "tensorboard"), runtime=True,
                            help="Also log the metrics lines (losses and their parts, learning rate, evaluations) "
                                 "as TensorBoard events in <output>/tensorboard (pip install tensorboard).")
    eval_ref: str = option("", runtime=True, help="Version evaluated at the end (and every --eval-every steps).")
    eval_every: int = option(0, ge=0, le=MAX_STEPS, runtime=True, help="Optimizer steps between evaluations (0 = "
                                                                       "at the end).")
    max_nonfinite: int = option(10, ge=1, le=MAX_STEPS, runtime=True, help="Stop after this many steps with a "
                                                                           "non-finite loss.")
    labels: list[str | int] = option(default_factory=list, help="Label vocabulary (default: the training version's "
                                                          "labels).")
    task: str = option("auto", choices=("auto", "classification", "regression", "token-classification"),
                       help="auto: float labels mean regression, a tags column token classification.")
    label_all_pieces: bool = option(False, help="Token classification: label every piece of a word (default: its "
                                                "first piece only, -100 on the others).")

    def check(self) -> None:
        check_device(self.device)
        check_batch_tokens(self.batch_size, self.max_seq_length)
        held = (self.shuffle_buffer + self.group_batches * self.batch_size) * self.max_seq_length
        if held > MAX_STREAM_TOKENS:
            raise ConfigError("shuffle_buffer", f"shuffle_buffer {self.shuffle_buffer} + group_batches "
                                                f"{self.group_batches} x batch_size {self.batch_size} rows of up to "
                                                f"{self.max_seq_length} tokens = {held:,} tokens held, over "
                                                f"{MAX_STREAM_TOKENS:,}")


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tune a pre-trained encoder on a labelled version (to get a task teacher)."""

    model: str = option(MINILM, help="Pre-trained encoder: folder, hub id or minilm (the bundled MiniLM-L6).")


@dataclass
class MixSource(Options):
    """One more source of a mixed training stream: a version and its share of every batch."""

    ref: str = option("", help="The version (name, name@tag or id).")
    share: float = option(0.5, gt=0, lt=1, help="Its share of the rows of every batch.")
    copies_only: bool = option(False, help="An augmented version's copies only (aug_copy > 0), not its originals.")

    def check(self) -> None:
        if not self.ref:
            raise ConfigError("ref", "a mix source names its version")

    @classmethod
    def from_flag(cls, text: str) -> dict[str, Any]:
        """``REF=SHARE`` or ``REF=SHARE:copies`` (the CLI form) as a table."""
        ref, _, share = text.rpartition("=")
        share, _, only = share.partition(":")
        try:
            value = float(share)
        except ValueError:
            raise ConfigError("mix", f"{text!r} is not REF=SHARE or REF=SHARE:copies") from None
        if not ref or only not in ("", "copies"):
            raise ConfigError("mix", f"{text!r} is not REF=SHARE or REF=SHARE:copies")
        return {"ref": ref, "share": value, "copies_only": only == "copies"}


@dataclass
class DistillConfig(TrainConfig):
    """Distil a teacher into a student through a list of matches (TextBrewer style) or the default recipe."""

    teacher: str = option(MINILM, help="Teacher: folder, hub id or minilm; task modes need a fine-tuned "
                                       "classifier.")
    student: str = option("tinybert-4", help="Student: a saved model (folder / hub id), a BERT preset (tinybert-4, "
                                             "tinybert-6, custom) or, in task distillation, bilstm (Tang et al.) "
                                             "or textcnn (Kim), distilled from logits only.")
    student_init: str = option("random", choices=("random", "teacher"),
                               help="teacher: copy the teacher's embeddings and mapped layers g(m).")
    student_layers: int = option(0, ge=0, le=64, help="Student layers (overrides the preset when > 0; bilstm: stacked "
                                               "LSTM layers, 1).")
    student_hidden: int = option(0, ge=0, le=8192, help="Student hidden size (overrides the preset when > 0; "
                                                        "bilstm: LSTM width per direction, 150; textcnn: filters per "
                                                        "width 3/4/5, 100).")
    student_heads: int = option(0, ge=0, le=128, help="Student attention heads (overrides the preset when > 0).")
    student_intermediate: int = option(0, ge=0, le=32_768, help="Student feed-forward size (overrides the preset "
                                                                "when > 0).")
    student_embeddings: str = option("teacher", choices=("teacher", "glove"),
                                     help="bilstm / textcnn: teacher = the teacher's tokenizer and input embeddings; "
                                          "glove = a word vocabulary built from the training version, with word "
                                          "vectors (--word-vectors; needs --logits-ref).")
    word_vectors: str = option("", help="student_embeddings=glove: a GloVe .txt or word2vec .bin file (default: the "
                                        "bundled GloVe 6B 50d, as the augmentation).")
    mapping: str = option("uniform", choices=("uniform", "top", "bottom", "explicit"),
                          help="Layer mapping: uniform g(m) = m*N/M, top, bottom or explicit (--layer-map).")
    layer_map: list[int] = option(default_factory=list, help="mapping=explicit: the teacher layer of each "
                                                             "student layer 1..M.")
    matches: list[dict[str, Any]] = option(default_factory=list, cli=False,
                                           help="Explicit matches (TOML); empty = built from the weights.")
    embedding_weight: float = option(1.0, ge=0, le=MAX_WEIGHT, help="TinyBERT: embedding MSE through the projection.")
    hidden_weight: float = option(1.0, ge=0, le=MAX_WEIGHT, help="Hidden-state MSE through the projection.")
    attention_weight: float = option(1.0, ge=0, le=MAX_WEIGHT, help="Raw attention-score MSE.")
    prediction_weight: float = option(0.0, ge=0, le=MAX_WEIGHT, help="Soft cross-entropy (MSE for regression) on "
                                                                     "logits.")
    prediction_loss: str = option("soft_ce", choices=("soft_ce", "mse"),
                                  help="Loss of --prediction-weight: soft cross-entropy at --temperature (TinyBERT) "
                                       "or MSE between the logits (Tang et al.); regression always MSE.")
    kl_weight: float = option(0.0, ge=0, le=MAX_WEIGHT, help="DistilBERT: KL(teacher || student) at temperature, "
                                                             "x T^2.")
    cosine_weight: float = option(0.0, ge=0, le=MAX_WEIGHT, help="DistilBERT: cosine loss on the last hidden "
                                                                 "states.")
    hard_weight: float = option(0.0, ge=0, le=MAX_WEIGHT, help="Cross-entropy (MSE for regression) with the gold "
                                                               "labels.")
    temperature: float = option(1.0, gt=0, le=100, help="Softmax temperature of soft cross-entropy and KL.")
    objective: str = option("tinybert", choices=("tinybert", "distilbert"),
                            help="General distillation: tinybert (the weights above) or distilbert (a masked-LM "
                                 "teacher: KL on its MLM logits at the masked pieces x T^2 with --kl-weight, the "
                                 "student's own MLM loss with --hard-weight, cosine on the last hidden states with "
                                 "--cosine-weight; DistilBERT used 5, 2, 1 and T=2).")
    mask_prob: float = option(0.15, gt=0, lt=1, help="distilbert: share of pieces masked (80/10/10).")
    mix: list[MixSource] = option(default_factory=list, help="More sources: every batch takes each one's share of "
                                                             "its rows (TRAIN_REF the rest), e.g. --mix "
                                                             "wordnet-train-aug=0.5:copies (its copies only); TOML "
                                                             "[[mix]] tables of ref, share, copies_only.")

    def check(self) -> None:
        super().check()
        if self.mix and self.objective == "distilbert":
            raise ConfigError("mix", "the distilbert objective streams one masked-LM version; mix applies to the "
                                     "tinybert objective")
        if self.mix and sum(m.share for m in self.mix) >= 1:
            raise ConfigError("mix", f"the shares add up to {sum(m.share for m in self.mix):g}: they must leave "
                                     f"TRAIN_REF a share (sum < 1)")


@dataclass
class TaskDistillConfig(DistillConfig):
    """TinyBERT task distillation: stage 1 intermediate layers, then stage 2 prediction layer."""

    teacher: str = option("", help="The fine-tuned teacher: a `distill finetune` model folder or a hub id "
                                   "(required).")
    epochs: float = option(1.0, gt=0, le=10_000, cli=False, help="Not used: stage1_epochs and stage2_epochs set "
                                                                 "the stages.")
    lr: float = option(5e-5, gt=0, le=1, cli=False, help="Not used: stage1_lr and stage2_lr set the stages.")
    stage: str = option("both", choices=("1", "2", "both"), runtime=True, help="Stages to run.")
    stage1_epochs: float = option(10.0, gt=0, le=10_000, help="Stage 1 (intermediate layers) epochs.")
    stage1_lr: float = option(5e-5, gt=0, le=1, help="Stage 1 learning rate.")
    stage2_epochs: float = option(3.0, gt=0, le=10_000, help="Stage 2 (prediction layer) epochs.")
    stage2_lr: float = option(3e-5, gt=0, le=1, help="Stage 2 learning rate.")
    logits_ref: str = option("", help="Stage 2 from a teacher-logits version (no teacher forward).")
    prediction_weight: float = option(1.0, ge=0, le=MAX_WEIGHT, help="Stage 2: soft cross-entropy (MSE for "
                                                                     "regression) on logits.")

    def check(self) -> None:
        super().check()
        if self.objective != "tinybert":
            raise ConfigError("objective", "task distillation uses the tinybert objective")
        for name, default, instead in (("epochs", 1.0, "stage1_epochs / stage2_epochs"),
                                       ("lr", 5e-5, "stage1_lr / stage2_lr")):
            if getattr(self, name) != default:
                raise ConfigError(name, f"task distillation has no single {name}: set {instead}")


@dataclass
class MLMConfig(TrainConfig):
    """Masked-LM training (domain-adaptive pre-training) of an encoder on a text version."""

    model: str = option(MINILM, help="Encoder: folder, hub id or minilm; a masked-LM head tied to its input "
                                     "embeddings is added when it has none.")
    lr: float = option(3e-4, gt=0, le=1, help="Peak learning rate (AdamW).")
    mask_prob: float = option(0.15, gt=0, lt=1, help="Share of pieces (or words) chosen per sentence; of those "
                                                     "80% become [MASK], 10% a random piece, 10% stay.")
    whole_word: bool = option(False, help="Choose whole words (all their pieces) instead of pieces.")
    train_layers: int = option(0, ge=0, le=1000, help="Train only the top N encoder layers and the head (0: all; "
                                                      "the embeddings, tied to the decoder, train only with 0).")
    eval_rows: int = option(2000, ge=1, le=1_000_000, help="Held-out rows of --eval-ref scored at each evaluation.")


def check_model_length(max_seq_length: int) -> None:
    """Refuse a ``max_seq_length`` of 1 to 7 for a pass of a saved model (0: the length it was trained at)."""
    if 0 < max_seq_length < 8:
        raise ConfigError("max_seq_length", f"{max_seq_length}: at least 8 (0: the model's training length)")


@dataclass
class ModelPassConfig(Options):
    """A pass of a saved model over a version: rows per batch, tokens per row, device."""

    batch_size: int = option(64, ge=1, le=65_536, runtime=True, help="Rows per batch.")
    max_seq_length: int = option(0, ge=0, le=MAX_SEQ_LENGTH, help="Tokens per row after truncation (0: the length "
                                                                  "the model was trained at, from its card.json; "
                                                                  "128 for a model distillery did not train).")
    device: str = option("auto", runtime=True, help=DEVICE_HELP)

    def check(self) -> None:
        check_device(self.device)
        check_model_length(self.max_seq_length)
        check_batch_tokens(self.batch_size, self.max_seq_length)


@dataclass
class EvaluateConfig(ModelPassConfig):
    """Scoring a saved classifier on a version."""

    strict: bool = option(False, help="Token classification: entities in seqeval's strict IOB2 mode (default: as "
                                      "conlleval, an I-X after O starts an entity).")


@dataclass
class CacheLogitsConfig(ModelPassConfig):
    """Writing a teacher's logits into a new version."""

    batch_size: int = option(64, ge=1, le=65_536, help="Rows per teacher forward pass.")


PREDICTION_FEATURES = ("logits", "labels")


def stage_config(cfg: TaskDistillConfig, stage: int) -> DistillConfig:
    """The DistillConfig one stage of task distillation runs with.

    Stage 1 gets the intermediate matches, stage 2 the prediction (logits / labels) ones; a stage left
    without explicit matches uses the recipe its weights describe.
    """
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DistillConfig)}
    prediction = [m for m in cfg.matches if m.get("feature") in PREDICTION_FEATURES]
    if stage == 1:
        base.update(epochs=cfg.stage1_epochs, lr=cfg.stage1_lr, prediction_weight=0.0, kl_weight=0.0,
                    hard_weight=0.0, eval_ref="", matches=[m for m in cfg.matches if m not in prediction])
    else:
        base.update(epochs=cfg.stage2_epochs, lr=cfg.stage2_lr, embedding_weight=0.0, hidden_weight=0.0,
                    attention_weight=0.0, cosine_weight=0.0, matches=prediction)
    return DistillConfig(**base)


@dataclass
class ExportConfig(Options):
    """Deployment copies of a saved classifier (int8, ONNX), each checked against it on a version."""

    int8: bool = option(False, help="Dynamic int8 quantization of the linear (and LSTM) layers: int8/model.pt "
                                    "(neither --int8 nor --onnx: both).")
    onnx: bool = option(False, help="ONNX export with dynamic batch and sequence axes, run with onnxruntime: "
                                    "onnx/model.onnx.")
    check_ref: str = option("", help="Version the copies are checked on, top-1 agreement and logits (default: the "
                                 "model's evaluation version).")
    batch_size: int = option(64, ge=1, le=65_536, runtime=True, help="Rows per batch of the check.")
    max_seq_length: int = option(0, ge=0, le=MAX_SEQ_LENGTH, help="Tokens per row after truncation in the check (0: "
                                                                  "the length the model was trained at, from its "
                                                                  "card.json; 128 for a model distillery did not "
                                                                  "train).")
    opset: int = option(17, ge=14, le=20, help="ONNX opset version (20: the newest of torch's TorchScript exporter).")

    def check(self) -> None:
        check_model_length(self.max_seq_length)
        check_batch_tokens(self.batch_size, self.max_seq_length)
