"""Configuration of the augmentation step (TOML keys and CLI flags are these fields)."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import ConfigError, Options, option

# Rounds N per GLUE task, as in the reference script (keys are lower-cased task names).
TASK_ROUNDS = {"cola": 30, "mrpc": 30, "rte": 30, "sts-b": 30, "sst-2": 20, "qnli": 20, "mnli": 10, "qqp": 10}
DEFAULT_ROUNDS = 30
INPUT_MODES = ("pair", "single")
OUTPUT_FORMS = ("surface", "reference")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("local", "ray")
MLM_BACKENDS = ("torch", "onnx", "onnx-int8")
MAX_CONTEXT = 512                 # masked-LM context in pieces: the cap the model loader applies (augment.mlm)
MAX_CHUNK_OUTPUT_ROWS = 2_000_000  # output rows of one chunk, all held in memory until it is written (~1 GB)
MAX_SEED = 2**63 - 1


@dataclass
class AugmentConfig(Options):
    """Options of TinyBERT word-replacement augmentation."""

    mlm: str = option("bert-base-uncased", help="Masked LM: hub id, local folder, or 'none' (word vectors for "
                                                "every word).")
    vectors: str | None = option(None, help="Word vectors: GloVe .txt, word2vec .bin, KeyedVectors file or cache "
                                            "folder (default: GloVe 6B 50d, bundled).")
    tokenizer: str | None = option(None, help="Tokenizer with --mlm none (default: the bundled bert-base-uncased "
                                              "vocabulary).")
    task: str | None = option(None, help="GLUE preset for --num-aug: cola, mrpc, rte, sts-b (30), sst-2, qnli "
                                         "(20), mnli, qqp (10).")
    num_aug: int | None = option(None, ge=0, le=1000, help="Rounds N per text (default: the task preset, else "
                                                           "30).")
    top_k: int = option(15, ge=1, le=1024, help="Candidates K per word (kept for every masked word of a chunk).")
    replace_prob: float = option(0.4, ge=0.0, le=1.0, help="Replacement probability p per eligible word.")
    mention_replace_prob: float = option(0.0, ge=0.0, le=1.0, help="Token-classification versions: probability "
                                         "that each entity mention of a copy is swapped for another mention of "
                                         "its type from the version, tags rebuilt (Dai & Adel 2020; 0 = off).")
    glove_vocab_limit: int = option(100_000, ge=2, le=10_000_000,
                                    help="Neighbours among the first V words of the vectors.")
    input_mode: str = option("pair", choices=INPUT_MODES, help="pair: [CLS] masked [SEP] original [SEP] "
                                                               "(reference); single: [CLS] masked [SEP].")
    output_form: str = option("surface", choices=OUTPUT_FORMS, help="surface: splice into the original text; "
                                                                    "reference: lower-cased tokens.")
    masks_per_pass: int = option(1, ge=1, le=MAX_CONTEXT, help="Approximate fast mode: masks per forward pass "
                                                               "(1 = exact).")
    max_length: int | None = option(None, ge=8, le=MAX_CONTEXT, help="Masked-LM context cap in pieces (default: "
                                                                     "the model's, at most 512).")
    fields: tuple[str, ...] | None = option(None, help="Text columns to augment (default: text and text_pair).")
    mlm_min_similarity: float = option(0.0, ge=0.0, le=1.0, help="Keep only masked-LM candidates whose word vector "
                                                                  "has at least this cosine with the word's (0: "
                                                                  "all, as the reference); labels drift less.")
    drop_punctuation: bool = option(False, help="Filter punctuation candidates.")
    drop_unk: bool = option(False, help="Filter [UNK] and other special tokens.")
    drop_self: bool = option(False, help="Filter the word itself.")
    match_case: bool = option(False, help="Filter candidates whose first letter's case differs.")
    precision: str = option("auto", choices=PRECISIONS, help="auto = fp32 on CPU, bf16 on CUDA.")
    mlm_backend: str = option("torch", choices=MLM_BACKENDS, omit_default=True,
                              help="Masked-LM runtime: torch; onnx: ONNX Runtime fp32 on CPU (exported once, cached "
                                   "by the model's content); onnx-int8: its dynamic int8 quantization (approximate).")
    seed: int = option(42, ge=0, le=MAX_SEED, help="Random seed.")
    chunk_rows: int = option(256, ge=1, le=1_000_000, help="Input rows per output shard (with the rounds: at most "
                                                           f"{MAX_CHUNK_OUTPUT_ROWS:,} output rows).")
    workers: int = option(1, ge=0, le=256, runtime=True, help="Helper processes for preparation and sampling "
                                                              "(0 = none).")
    mlm_batch_size: int = option(256, ge=1, le=16384, runtime=True, help="Sequences per masked-LM batch (at most "
                                                                         "16384 tokens).")
    device: str = option("auto", runtime=True, help="auto, cpu, cuda or cuda:N.")
    engine: str = option("local", choices=ENGINES, runtime=True, help="local: this machine's processes; ray: Ray "
                                                                      "actors (pip install -e '.[ray]'), same bytes.")
    ray_address: str | None = option(None, runtime=True, help="Ray cluster to join with --engine ray (auto or "
                                                               "host:port; default: start a local Ray instance).")
    ray_actors: int | None = option(None, ge=1, le=1024, runtime=True, help="Ray actors, each loading the models once "
                                                                   "(default: one per GPU, else one per 2 CPUs).")
    ray_remote: str | None = option(None, runtime=True, help="With --engine ray: a remote (s3://..., gs://...) that "
                                    "holds the input version (`versions push` it); the actors read their chunks "
                                    "there through their node's shard cache, so no shared filesystem is needed.")

    def check(self) -> None:
        if self.task is not None and self.task.lower() not in TASK_ROUNDS:
            raise ConfigError("task", f"unknown task '{self.task}'; known: {', '.join(sorted(TASK_ROUNDS))}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError("device", f"'{self.device}' is not auto, cpu, cuda or cuda:N")
        if self.mlm_backend != "torch" and (self.device.startswith("cuda") or self.precision not in ("auto", "fp32")):
            raise ConfigError("mlm_backend", f"{self.mlm_backend} runs on the CPU in fp32: use device cpu or auto "
                                             f"and precision fp32 or auto (torch is the GPU backend)")
        if self.top_k >= self.glove_vocab_limit:
            raise ConfigError("top_k", f"{self.top_k} candidates but only {self.glove_vocab_limit - 1} neighbours "
                                       f"among the first glove_vocab_limit={self.glove_vocab_limit} words")
        fields = len(self.fields) if self.fields else 2
        output_rows = self.chunk_rows * (1 + fields * self.rounds())
        if output_rows > MAX_CHUNK_OUTPUT_ROWS:
            raise ConfigError("chunk_rows", f"{self.chunk_rows} rows x (1 + {fields} fields x {self.rounds()} rounds) "
                                            f"= {output_rows:,} output rows per chunk, over the "
                                            f"{MAX_CHUNK_OUTPUT_ROWS:,} held in memory at once: lower chunk_rows")

    def rounds(self) -> int:
        """The number of rounds N: explicit, else the task preset, else 30."""
        if self.num_aug is not None:
            return self.num_aug
        return TASK_ROUNDS[self.task.lower()] if self.task else DEFAULT_ROUNDS
