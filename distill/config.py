"""Configuration dataclasses of the distiller (TOML keys == field names, CLI flags override)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MINILM = "minilm"  # stands for pipelines.resources.minilm_path() (the bundled all-MiniLM-L6-v2 encoder)


@dataclass
class TrainConfig:
    """What every training run shares: optimisation, data streaming, runtime and checkpointing."""

    epochs: float = 1.0                # passes over the training version (fractional allowed)
    max_steps: int = 0                 # optimizer steps; > 0 overrides epochs
    batch_size: int = 32               # rows per micro-batch per process
    grad_accum: int = 1                # micro-batches per optimizer step
    lr: float = 5e-5                   # peak learning rate (AdamW)
    weight_decay: float = 0.01         # AdamW weight decay (not on biases / LayerNorm)
    warmup: float = 0.1                # fraction of the steps (< 1) or a number of steps (>= 1)
    max_grad_norm: float = 1.0         # 0 disables clipping
    max_seq_length: int = 128          # tokens per row after truncation
    seed: int = 42                     # data order, initialisation, dropout
    shuffle_buffer: int = 10_000       # rows in the bounded shuffle buffer
    group_batches: int = 50            # length grouping: sort windows of this many batches by length
    num_workers: int = 1               # DataLoader workers (tokenisation happens there)
    threads: int = 0                   # torch intra-op threads (0 = the cores / processes on this machine)
    device: str = "auto"               # auto / cpu / cuda / cuda:N
    amp: str = "none"                  # none / bf16 / fp16 (fp16 needs CUDA)
    compile: bool = False              # torch.compile the student
    checkpoint_every: int = 0          # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2          # newest checkpoints kept
    log_every: int = 10                # steps between metrics lines
    eval_ref: str = ""                 # version evaluated at the end (and every eval_every steps)
    eval_every: int = 0                # optimizer steps between evaluations (0 = only at the end)
    max_nonfinite: int = 10            # stop after this many steps with a non-finite loss
    labels: list = field(default_factory=list)  # label vocabulary; default: training version's label_counts
    task: str = "auto"                 # classification / regression / auto (float labels -> regression)


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tune a pre-trained encoder on a labelled version (to get a task teacher)."""

    model: str = MINILM                # pre-trained encoder: folder / hub id / minilm (the bundled MiniLM-L6)


@dataclass
class DistillConfig(TrainConfig):
    """Distil a teacher into a student through a list of matches (TextBrewer style) or the defaults."""

    teacher: str = MINILM              # folder / hub id / minilm; task modes need a fine-tuned classifier
    student: str = "tinybert-4"        # a saved model folder / hub id, or tinybert-4 / tinybert-6 / custom
    student_init: str = "random"       # random / teacher: copy the teacher's embeddings and mapped layers g(m)
    student_layers: int = 0            # explicit shape (overrides the preset's value when > 0)
    student_hidden: int = 0            # (hidden size)
    student_heads: int = 0             # (attention heads)
    student_intermediate: int = 0      # (feed-forward size)
    mapping: str = "uniform"           # uniform g(m)=m*N/M / top / bottom / explicit
    layer_map: list = field(default_factory=list)   # mapping=explicit: teacher layer for student layers 1..M
    matches: list = field(default_factory=list)     # explicit matches; empty = built from the weights below
    embedding_weight: float = 1.0      # TinyBERT: embedding MSE through the projection
    hidden_weight: float = 1.0         # hidden-state MSE through the projection
    attention_weight: float = 1.0      # raw attention-score MSE
    prediction_weight: float = 0.0     # soft cross-entropy (MSE for regression) on logits
    kl_weight: float = 0.0             # DistilBERT: KL(teacher || student) at temperature, x T^2
    cosine_weight: float = 0.0         # DistilBERT: cosine loss on the last hidden states
    hard_weight: float = 0.0           # cross-entropy (MSE for regression) with the gold labels
    temperature: float = 1.0           # softmax temperature of soft_ce / kl


@dataclass
class TaskDistillConfig(DistillConfig):
    """TinyBERT task distillation: stage 1 intermediate layers, then stage 2 prediction layer."""

    stage: str = "both"                # 1 / 2 / both
    stage1_epochs: float = 10.0        # stage 1 (intermediate layers) epochs
    stage1_lr: float = 5e-5            # stage 1 learning rate
    stage2_epochs: float = 3.0         # stage 2 (prediction layer) epochs
    stage2_lr: float = 3e-5            # stage 2 learning rate
    logits_ref: str = ""               # stage 2 from a teacher-logits version (no teacher forward)
    prediction_weight: float = 1.0     # stage 2: soft cross-entropy (MSE for regression) on logits


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-able dict of a config."""
    return dataclasses.asdict(cfg)


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
