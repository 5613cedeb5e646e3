"""Configuration of the augmentation step (TOML keys == fields; CLI flags override)."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import DistilleryError

# Rounds N per GLUE task, as in the reference script (keys are lower-cased task names).
TASK_ROUNDS = {"cola": 30, "mrpc": 30, "rte": 30, "sts-b": 30, "sst-2": 20, "qnli": 20, "mnli": 10, "qqp": 10}
DEFAULT_ROUNDS = 30
INPUT_MODES = ("pair", "single")
OUTPUT_FORMS = ("surface", "reference")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class AugmentConfig:
    """Options of TinyBERT word-replacement augmentation.

    Runtime-only fields (``workers``, ``device``, ``mlm_batch_size``) never change the bytes written and are left
    out of the version id (see ``pipelines.fingerprint.RUNTIME_KEYS``).
    """

    mlm: str = "bert-base-uncased"          # hub id, local folder, or "none" (word vectors for every word)
    vectors: str | None = None              # GloVe .txt / word2vec .bin / KeyedVectors file; None = GloVe 6B 50d
    tokenizer: str | None = None            # only used with mlm="none"; None = bundled bert-base-uncased tokenizer
    task: str | None = None                 # GLUE preset for num_aug (cola, sst-2, mnli, ...)
    num_aug: int | None = None              # rounds N; None = task preset or 30
    top_k: int = 15                         # K candidates per word
    replace_prob: float = 0.4               # p
    glove_vocab_limit: int = 100_000        # neighbours among the first V words of the vector vocabulary
    input_mode: str = "pair"                # "pair": [CLS] masked [SEP] original [SEP]; "single": [CLS] masked [SEP]
    output_form: str = "surface"            # "surface": splice into the original text; "reference": lower-cased tokens
    masks_per_pass: int = 1                 # >1: approximate fast mode, several well-separated masks per forward
    max_length: int | None = None           # masked-LM context cap in pieces (None = the model's limit, at most 512)
    fields: tuple[str, ...] | None = None   # text columns to augment; None = text and text_pair when present
    drop_punctuation: bool = False          # optional candidate filters (all off = reference behaviour)
    drop_unk: bool = False
    drop_self: bool = False
    match_case: bool = False
    precision: str = "auto"                 # auto = fp32 on CPU, bf16 on CUDA
    seed: int = 42
    chunk_rows: int = 256                   # R: chunk i holds the outputs of input rows [i*R, (i+1)*R)
    workers: int = 1                        # helper processes (0 = everything in this process)
    mlm_batch_size: int = 256               # sequences per masked-LM batch (at most 16384 tokens)
    device: str = "auto"                    # auto / cpu / cuda

    def rounds(self) -> int:
        """The number of rounds N: explicit, else the task preset, else 30."""
        if self.num_aug is not None:
            return self.num_aug
        return TASK_ROUNDS[self.task.lower()] if self.task else DEFAULT_ROUNDS

    def validate(self) -> None:
        """Raise DistilleryError on an invalid option."""
        if self.task is not None and self.task.lower() not in TASK_ROUNDS:
            raise DistilleryError(f"unknown task '{self.task}'; known: {', '.join(sorted(TASK_ROUNDS))}")
        checks = [
            (self.input_mode in INPUT_MODES, f"input_mode must be one of {INPUT_MODES}"),
            (self.output_form in OUTPUT_FORMS, f"output_form must be one of {OUTPUT_FORMS}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto/cpu/cuda"),
            (self.rounds() >= 0, "num_aug must be >= 0"),
            (self.top_k >= 1, "top_k must be >= 1"),
            (0.0 <= self.replace_prob <= 1.0, "replace_prob must be in [0, 1]"),
            (self.glove_vocab_limit >= 2, "glove_vocab_limit must be >= 2"),
            (self.masks_per_pass >= 1, "masks_per_pass must be >= 1"),
            (self.max_length is None or self.max_length >= 8, "max_length must be >= 8"),
            (self.chunk_rows >= 1, "chunk_rows must be >= 1"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.mlm_batch_size >= 1, "mlm_batch_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise DistilleryError(f"augment config: {message}")
