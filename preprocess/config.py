"""Configuration of `distillery preprocess` (TOML keys and CLI flags are these fields)."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import ConfigError, Options, option, to_dict
from preprocess.readers import FORMATS
from preprocess.tagging import TAG_SCHEMES
from preprocess.text_clean import NORMALIZATIONS

LENGTH_FILTERS = ("min_chars", "max_chars", "min_tokens", "max_tokens")
MAX_ROW_BYTES = 1 << 26       # 64 MiB: longer than any real document; a text never has more characters than bytes
MAX_SEED = 2**63 - 1
MAX_CONLL_COLUMNS = 1024


@dataclass
class InputConfig(Options):
    """How inputs are read and which columns hold what."""

    format: str = option("auto", choices=FORMATS, help="Input format; auto = from the file extension.")
    text_column: str = option("text", help="Column holding the text.")
    text_pair_column: str | None = option(None, help="Column holding the second sentence of a pair.")
    label_column: str | None = option(None, help="Column holding the label (kept with its type).")
    extra_columns: list[str] | None = option(None, help="Other columns to keep (default: all of them).")
    csv_header: bool = option(True, help="CSV/TSV: the first line names the columns (else 0, 1, ...).")
    csv_quoting: str = option("auto", choices=("auto", "none", "minimal"),
                              help="CSV/TSV quoting; auto = none for tsv (as GLUE), minimal for csv.")
    hf_split: str = option("train", help="Split of a Hugging Face DatasetDict or data-files folder.")
    decode_errors: str = option("replace", choices=("replace", "reject"),
                                help="Undecodable bytes: replace with U+FFFD (counted) or reject the row.")
    max_row_bytes: int = option(1_000_000, gt=0, le=MAX_ROW_BYTES,
                                help="Longer rows are rejected (row_too_long) unread.")
    schema_sample_rows: int = option(1000, gt=0, le=100_000, help="Rows per input read first to derive the output "
                                                                   "schema.")
    max_rows: int = option(0, ge=0, le=10**12, help="Read only the first N input rows, over all inputs (0: all), "
                                                    "e.g. for a quick trial.")
    tokens_column: str | None = option(None, help="Token classification: column holding the list of tokens "
                                                  "(jsonl, parquet, dataset inputs; default tokens when tagging).")
    tags_column: str | None = option(None, help="Token classification: column holding the list of tags, one per "
                                                "token (default tags when tagging).")
    token_column: int = option(0, ge=-MAX_CONLL_COLUMNS, lt=MAX_CONLL_COLUMNS,
                               help="CoNLL files: index of the token column (negative: from the end).")
    tag_column: int = option(-1, ge=-MAX_CONLL_COLUMNS, lt=MAX_CONLL_COLUMNS,
                             help="CoNLL files: index of the tag column (-1: the last).")
    tag_scheme: str = option("iob2", choices=TAG_SCHEMES,
                             help="Token classification tags: iob2 = check, turn IOB1's I-X after O into B-X "
                                  "(counted); strict-iob2 = reject such rows; as-is = keep any tag unchecked.")

    def check(self) -> None:
        if self.token_column == self.tag_column:
            raise ConfigError("tag_column", f"the same column as token_column ({self.token_column})")
        tokens, tags = self.tag_columns()
        if self.tagging() and tokens == tags:
            raise ConfigError("tags_column", f"the same column as tokens_column ('{tokens}')")

    def tagging(self) -> bool:
        """Whether the columns asked for make this a token-classification run (a CoNLL input makes it one too)."""
        return self.tokens_column is not None or self.tags_column is not None

    def tag_columns(self) -> tuple[str, str]:
        """The columns holding the tokens and the tags (jsonl, parquet and dataset inputs)."""
        return self.tokens_column or "tokens", self.tags_column or "tags"


@dataclass
class CleanConfig(Options):
    """Text clean-up (see preprocess.text_clean for the exact rules)."""

    normalize: str = option("nfc", choices=NORMALIZATIONS, help="Unicode normalisation.")
    control_chars: bool = option(True, help="Delete control characters (NUL too), BOM and zero-width spaces.")
    whitespace: bool = option(True, help="Collapse whitespace runs to one space and strip.")
    lowercase: bool = option(False, help="Lower-case the text.")
    split_sentences_over: int = option(0, ge=0, le=MAX_ROW_BYTES, help="Split texts longer than N characters into "
                                                                        "sentences (0: off).")


@dataclass
class FilterConfig(Options):
    """Length filters per text field (0 = no limit); tokens are words and punctuation marks."""

    min_chars: int = option(0, ge=0, le=MAX_ROW_BYTES, help="Drop texts shorter than N characters.")
    max_chars: int = option(0, ge=0, le=MAX_ROW_BYTES, help="Drop texts longer than N characters (0: no limit).")
    min_tokens: int = option(0, ge=0, le=MAX_ROW_BYTES, help="Drop texts with fewer than N word/punctuation tokens.")
    max_tokens: int = option(0, ge=0, le=MAX_ROW_BYTES, help="Drop texts with more than N tokens (0: no limit).")


@dataclass
class DedupConfig(Options):
    """Exact (64-bit hash of the final text and pair) and near-duplicate (MinHash-LSH) removal."""

    exact: bool = option(True, help="Exact de-duplication.")
    near: bool = option(False, help="MinHash-LSH near-duplicate removal.")
    near_threshold: float = option(0.8, gt=0.0, lt=1.0, implies={"near": True},
                                   help="Jaccard threshold of character n-gram sets (implies --near).")
    num_perm: int = option(64, ge=2, le=1024, help="MinHash permutations.")
    ngram: int = option(5, ge=1, le=64, help="Character n-gram size of the MinHash sets (shorter texts are padded "
                                           "to it).")
    seed: int = option(0, ge=0, le=MAX_SEED, help="Seed of the MinHash permutations.")


@dataclass
class LicenceConfig(Options):
    """The input's licence, recorded in the manifest and the data card (Hugging Face card fields) and inherited
    by the versions made from it."""

    license: str = option("unknown", help="Hugging Face licence id (apache-2.0, cc-by-4.0, ...), or other with "
                                          "--license-name.")
    license_name: str | None = option(None, help="Name of a licence that has no Hugging Face id (with other).")
    license_link: str | None = option(None, help="Where the licence text is.")
    notice: str | None = option(None, help="Copyright notice that must travel with the data.")

    def recorded(self) -> dict[str, str]:
        """The fields that are set (empty when no licence was given)."""
        fields = {k: v for k, v in to_dict(self).items() if v is not None}
        return {} if fields == {"license": "unknown"} else fields


@dataclass
class PreprocessConfig(Options):
    """Everything `distillery preprocess` does; TOML keys are these fields (sections for the nested ones)."""

    input: InputConfig = option(default_factory=InputConfig, help="How inputs are read.")
    clean: CleanConfig = option(default_factory=CleanConfig, help="Text clean-up.")
    filter: FilterConfig = option(default_factory=FilterConfig, help="Length filters.")
    dedup: DedupConfig = option(default_factory=DedupConfig, help="De-duplication.")
    licence: LicenceConfig = option(default_factory=LicenceConfig, help="The input's licence.")
    chunk_rows: int = option(20_000, gt=0, le=1_000_000, help="Input rows per chunk / shard.")
    workers: int = option(1, ge=1, le=256, runtime=True, help="Worker processes (never changes the output).")
