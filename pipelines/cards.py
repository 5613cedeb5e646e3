"""Data cards: Markdown with YAML front matter (Hugging Face dataset card style) for every version."""
from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipelines.atomic import write_bytes_atomic

TEMPLATE = Path(__file__).with_name("card_template.md")
TEXT_COLUMNS = ("text", "text_pair")
TAG_COLUMNS = ("tokens", "tags")
MAX_LENGTH_BIN = 1 << 16
HISTOGRAM_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, MAX_LENGTH_BIN)
MAX_LABELS = 100


class _LengthStats:
    """Exact length quantiles in fixed memory: a count per length (lengths capped at MAX_LENGTH_BIN)."""

    def __init__(self) -> None:
        self.counts = np.zeros(MAX_LENGTH_BIN + 1, dtype=np.int64)
        self.total = 0
        self.maximum = 0

    def add(self, lengths: np.ndarray) -> None:
        if lengths.size:
            self.counts += np.bincount(np.minimum(lengths, MAX_LENGTH_BIN), minlength=MAX_LENGTH_BIN + 1)
            self.total += int(lengths.sum())
            self.maximum = max(self.maximum, int(lengths.max()))

    def merge(self, other: _LengthStats) -> None:
        self.counts += other.counts
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def summary(self) -> dict[str, Any]:
        n = int(self.counts.sum())
        if n == 0:
            return {"count": 0}
        cumulative = np.cumsum(self.counts)
        quantile = {q: int(np.searchsorted(cumulative, q * n)) for q in (0.5, 0.9, 0.99)}
        edges = HISTOGRAM_EDGES
        histogram = {(f"{lo}-{hi - 1}" if hi < MAX_LENGTH_BIN else f"{lo}+"): int(self.counts[lo:hi + 1].sum()
                     if hi == MAX_LENGTH_BIN else self.counts[lo:hi].sum()) for lo, hi in zip(edges[:-1], edges[1:])}
        return {"count": n, "min": int(np.argmax(self.counts > 0)), "median": quantile[0.5],
                "p90": quantile[0.9], "p99": quantile[0.99], "max": self.maximum,
                "mean": round(self.total / n, 2), "histogram": histogram}


def _batch_rows(parquet: pq.ParquetFile, budget: int = 16 << 20) -> int:
    """Rows per batch of a shard: 8192, fewer for wide rows (about ``budget`` bytes of values a batch), so the
    statistics of a version of long documents take bounded memory."""
    meta = parquet.metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(max(1, min(8192, budget * max(1, meta.num_rows) // max(1, size))))


def _entity_types(tags: pa.Array) -> np.ndarray:
    """The type of every entity in a list<string> column of tags, read as conlleval and seqeval read them: an
    entity starts at ``B-X``, or at an ``I-X`` that follows neither ``B-X`` nor ``I-X`` in its row."""
    flat = pc.list_flatten(tags)
    if len(flat) == 0:
        return np.empty(0, dtype=object)
    prefix = pc.utf8_slice_codeunits(flat, 0, 2).to_numpy(zero_copy_only=False)
    kinds = pc.utf8_slice_codeunits(flat, 2).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(tags).to_numpy()
    inside = ((prefix == "B-") | (prefix == "I-")) & (kinds != "")
    after_same = np.r_[False, (rows[1:] == rows[:-1]) & inside[:-1] & (kinds[1:] == kinds[:-1])]
    return kinds[inside & ~((prefix == "I-") & after_same)]


class _TagStats:
    """Token classification: tokens per tag, entities per type and tokens per sentence."""

    def __init__(self) -> None:
        self.tags: dict[str, int] = {}
        self.entities: dict[str, int] = {}
        self.lengths = _LengthStats()
        self.seen = False

    def add(self, tokens: pa.Array, tags: pa.Array) -> None:
        self.seen = True
        self.lengths.add(pc.fill_null(pc.list_value_length(tokens), 0).to_numpy(zero_copy_only=False))
        for item in pc.value_counts(pc.list_flatten(tags).drop_null()).to_pylist():
            self.tags[item["values"]] = self.tags.get(item["values"], 0) + item["counts"]
        for kind, count in zip(*np.unique(_entity_types(tags).astype(str), return_counts=True)):
            self.entities[str(kind)] = self.entities.get(str(kind), 0) + int(count)

    def merge(self, other: _TagStats) -> None:
        self.seen = self.seen or other.seen
        self.lengths.merge(other.lengths)
        for mine, theirs in ((self.tags, other.tags), (self.entities, other.entities)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count

    def summary(self) -> dict[str, Any]:
        """Every tag (a training run's tag vocabulary is read from it), entities and sentence lengths."""
        def by_count(counts: dict[str, int]) -> dict[str, int]:
            return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

        return {"tag_counts": by_count(self.tags), "num_tags": len(self.tags),
                "entity_counts": by_count(self.entities), "sentence_length": self.lengths.summary()}


class DataStats:
    """Length statistics of the text columns, the label distribution and, for token classification (``tokens``
    and ``tags`` columns), tag and entity counts and sentence lengths, accumulated table by table (every figure
    but the numeric labels' is a sum, so the order of the tables does not change them)."""

    def __init__(self) -> None:
        self.chars: dict[str, _LengthStats] = {}
        self.words: dict[str, _LengthStats] = {}
        self.labels: dict[str, int] = {}
        self.numeric_labels: list[float] = []        # the first 100,000 in the order added
        self.tagging = _TagStats()

    def add(self, table: pa.Table | pa.RecordBatch, budget: int = 16 << 20) -> None:
        """Add a table's rows, a slice of about ``budget`` bytes of values at a time."""
        rows = int(max(1, min(8192, budget * max(1, table.num_rows) // max(1, table.nbytes))))
        for start in range(0, table.num_rows, rows):
            self._add_batch(table.slice(start, rows))

    def _add_batch(self, batch: pa.Table | pa.RecordBatch) -> None:
        names = batch.schema.names
        if set(TAG_COLUMNS) <= set(names):
            self.tagging.add(batch.column("tokens"), batch.column("tags"))
        for column in TEXT_COLUMNS:
            if column not in names:
                continue
            values = batch.column(column)
            lengths = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False)
            self.chars.setdefault(column, _LengthStats()).add(lengths)
            n_words = pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(values, "")))
            self.words.setdefault(column, _LengthStats()).add(n_words.to_numpy(zero_copy_only=False))
        if "label" in names:
            column = batch.column("label")
            if pa.types.is_floating(column.type):
                self.numeric_labels.extend(column.drop_null().to_pylist()[: 100_000 - len(self.numeric_labels)])
            else:
                for item in pc.value_counts(column.drop_null()).to_pylist():   # rows without one: no label
                    key = str(item["values"])
                    self.labels[key] = self.labels.get(key, 0) + item["counts"]

    def merge(self, other: DataStats) -> None:
        """Add another accumulator's sums (numeric labels: after this one's)."""
        for mine, theirs in ((self.chars, other.chars), (self.words, other.words)):
            for column, stats in theirs.items():
                mine.setdefault(column, _LengthStats()).merge(stats)
        for key, count in other.labels.items():
            self.labels[key] = self.labels.get(key, 0) + count
        self.numeric_labels.extend(other.numeric_labels[: 100_000 - len(self.numeric_labels)])
        self.tagging.merge(other.tagging)

    def summary(self) -> dict[str, Any]:
        stats: dict[str, Any] = {f"{c}_chars": s.summary() for c, s in self.chars.items()}
        stats.update({f"{c}_words": s.summary() for c, s in self.words.items()})
        if self.labels:
            top = sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0]))
            stats["label_counts"] = dict(top[:MAX_LABELS])
            stats["num_labels"] = len(self.labels)
        if self.numeric_labels:
            values = np.asarray(self.numeric_labels)
            stats["label_values"] = {"min": float(values.min()), "mean": float(values.mean()),
                                     "max": float(values.max())}
        if self.tagging.seen:
            stats.update(self.tagging.summary())
        return stats


def compute_stats(shards: Iterable[Path]) -> dict[str, Any]:
    """``DataStats`` of the shards, streamed shard by shard."""
    stats = DataStats()
    for path in shards:
        parquet = pq.ParquetFile(path, memory_map=True)
        names = parquet.schema_arrow.names
        columns = [c for c in (*TEXT_COLUMNS, "label", *TAG_COLUMNS) if c in names]
        for batch in parquet.iter_batches(columns=columns, batch_size=_batch_rows(parquet)):
            stats._add_batch(batch)
    return stats.summary()


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _licence(manifest: dict[str, Any]) -> dict[str, Any]:
    """Licence fields: taken from the step's config or inherited from the parent's card."""
    return dict(manifest.get("extra", {}).get("licence") or {"license": "unknown",
                "notice": "Set the licence of the raw input with `preprocess --license` (or [licence] in its config)."})


# Hugging Face's licence ids (the common ones); any other licence is written as `other` with its `license_name`.
HF_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m",
    "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda",
    "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0",
    "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
    "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3", "gemma", "unknown", "other"})


def card_licence(licence: dict[str, Any]) -> dict[str, str]:
    """The card's licence fields: a Hugging Face id, or ``other`` with the licence's name."""
    fields = {k: licence[k] for k in ("license", "license_name", "license_link") if licence.get(k)}
    if fields.get("license", "unknown") not in HF_LICENSES:
        fields["license_name"] = fields.get("license_name") or fields["license"]
        fields["license"] = "other"
    return fields


def hf_feature(name: str, arrow_type: str) -> dict[str, Any]:
    """A column as a Hugging Face card feature (``dtype``, or ``sequence`` for a list column)."""
    names = {"float": "float32", "double": "float64", "halffloat": "float16"}
    if arrow_type.startswith(("list<", "large_list<")):
        inner = arrow_type[arrow_type.index(":") + 1:].rstrip(">").strip() if ":" in arrow_type else "string"
        return {"name": name, "sequence": names.get(inner, inner)}
    return {"name": name, "dtype": names.get(arrow_type, arrow_type)}


def accounting_rows(accounting: dict[str, Any]) -> list[tuple[str, Any]]:
    """The row accounting in reading order: input rows, kept, then each dropped / rejected / repaired reason."""
    order = ["input_rows", "kept", "dropped", "rejected", "repaired"]
    rows: list[tuple[str, Any]] = []
    for key in sorted(accounting, key=lambda k: (order.index(k) if k in order else len(order), k)):
        value = accounting[key]
        if isinstance(value, dict):
            rows += [(f"{key}: {k}", v) for k, v in sorted(value.items()) if not isinstance(v, dict)]
            rows += [(f"{key}: {k}", readable_counts(v)) for k, v in sorted(value.items()) if isinstance(v, dict)]
        else:
            rows.append((key, value))
    return rows


def _share(part: int, whole: int, what: str = "") -> str:
    return f"{part:,} of {whole:,}{what} ({100 * part / whole:.1f}%)" if whole else f"{part:,} of 0{what}"


def readable_counts(counts: dict[str, Any]) -> str:
    """A group of counts as a person reads it: ``same_label`` of ``copies`` (``same_tag`` of ``words``: a tagging
    version's unchanged words) and every ``X_right`` of ``X`` as a share in percent, other counts as
    ``name: value``."""
    parts = []
    for name, value in sorted(counts.items()):
        if (name == "same_label" and "copies" in counts or name == "same_tag" and "words" in counts
                or name.endswith("_right") and name[:-6] in counts):
            continue
        if name == "copies" and "same_label" in counts:
            parts.append(f"teacher's label unchanged on {_share(counts['same_label'], value, ' copies')}")
        elif name == "words" and "same_tag" in counts:
            parts.append(f"teacher's tag unchanged on {_share(counts['same_tag'], value, ' unchanged words')}")
        elif f"{name}_right" in counts:
            parts.append(f"{name} right: {_share(counts[f'{name}_right'], value)}")
        else:
            parts.append(f"{name}: {value:,}" if isinstance(value, int) else f"{name}: {value}")
    return "; ".join(parts)


def render_card(manifest: dict[str, Any], ancestry: list[dict[str, Any]] | None = None) -> str:
    """Render the data card of a version from its manifest and its ancestors (``Store.ancestry``)."""
    stats = manifest["stats"]
    licence = _licence(manifest)
    front = {
        "pretty_name": manifest.get("name") or manifest["version_id"][:12],
        **card_licence(licence),
        "size_categories": [_size_category(manifest["num_rows"])],
        "tags": ["distillery", manifest["step"]],
        "distillery": {"version_id": manifest["version_id"], "step": manifest["step"],
                       "parents": manifest["parents"], "code_version": manifest["code_version"],
                       "created_at": manifest["created_at"]},
        "dataset_info": {"features": [hf_feature(f["name"], f["type"]) for f in manifest["schema"]],
                         "splits": [{"name": "train", "num_bytes": sum(s["bytes"] for s in manifest["shards"]),
                                     "num_examples": manifest["num_rows"]}]},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/shard-*.parquet"}]}],
    }
    if "label_counts" in stats:
        front["task_categories"] = ["text-classification"]
    if "tag_counts" in stats:
        front["task_categories"] = ["token-classification"]
    if ancestry is not None:
        lineage = lineage_lines(manifest, ancestry)
    else:
        lineage = [f"- parents: {json.dumps(manifest['parents'])}"]
    acc_rows = accounting_rows(manifest["accounting"])
    stat_lines = statistics_lines(stats, manifest["extra"].get("tag_scheme"))
    loading = "\n".join([
        "import glob, datasets, pandas as pd, pyarrow.parquet as pq",
        'files = sorted(glob.glob("data/shard-*.parquet"))',
        'ds = datasets.load_dataset("parquet", data_files=files, split="train")',
        "df = pd.concat(pd.read_parquet(f) for f in files)",
        "table = pq.read_table(files)",
        '# DuckDB: SELECT * FROM read_parquet(\'data/shard-*.parquet\')',
    ])
    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "title": front["pretty_name"],
        "summary": f"Version `{manifest['version_id']}` made by step `{manifest['step']}`: "
                   f"{manifest['num_rows']} rows in {len(manifest['shards'])} Parquet shard(s) "
                   f"(zstd), {len(manifest['rejects'])} rejects shard(s). Created {manifest['created_at']} "
                   f"with distillery {manifest['code_version']}."
                   + "".join(f"\n\n> **Warning**: {w}" for w in manifest["extra"].get("warnings", [])),
        "lineage": "\n".join(lineage),
        "accounting": _table(acc_rows, ("rows", "count")) if acc_rows else "(none recorded)",
        "schema": _table([(f["name"], f["type"]) for f in manifest["schema"]], ("column", "type")),
        "statistics": "\n".join(stat_lines) or "(no text columns)",
        "config": json.dumps(manifest["config"], indent=2, sort_keys=True, default=str),
        "extra": json.dumps({k: v for k, v in manifest["extra"].items() if k != "licence"}, indent=2,
                            sort_keys=True, default=str),
        "loading": loading,
        "licence": "\n".join(f"- **{k}**: {v}" for k, v in licence.items()),
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def statistics_lines(stats: dict[str, Any], tag_scheme: dict[str, str] | None = None) -> list[str]:
    """The card's statistics: lengths (characters, words; tokens per sentence) with histograms, the labels, or
    the tags, entities per type and the tag scheme's rule of a token-classification version."""
    lines = []
    for key, summary in stats.items():
        if (key.endswith(("_chars", "_words")) or key == "sentence_length") and summary.get("count"):
            unit = " (tokens per sentence)" if key == "sentence_length" else ""
            lines.append(f"**{key}**{unit}: min {summary['min']}, median {summary['median']}, mean {summary['mean']}, "
                         f"p90 {summary['p90']}, max {summary['max']}\n")
            lines.append(_table(list(summary["histogram"].items()), ("length", "rows")) + "\n")
    if "label_counts" in stats:
        lines.append(f"**labels** ({stats['num_labels']} distinct):\n")
        lines.append(_table(list(stats["label_counts"].items()), ("label", "rows")) + "\n")
    if "tag_counts" in stats:
        if tag_scheme:
            lines.append(f"**tag scheme** `{tag_scheme['scheme']}`: {tag_scheme['rule']}.\n")
        lines.append(f"**tags** ({stats['num_tags']} distinct):\n")
        lines.append(_table(list(stats["tag_counts"].items()), ("tag", "tokens")) + "\n")
        lines.append(f"**entities per type** ({sum(stats['entity_counts'].values())} entities, an entity starting "
                     f"at B-X or at an I-X that follows neither B-X nor I-X):\n")
        lines.append(_table(list(stats["entity_counts"].items()) or [("(none)", 0)], ("type", "entities")) + "\n")
    return lines


def lineage_lines(manifest: dict[str, Any], ancestry: list[dict[str, Any]]) -> list[str]:
    """Markdown list of the version and its ancestry, down to the raw inputs."""
    lines = [f"- `{manifest['version_id'][:12]}` {manifest['step']} ({manifest['num_rows']} rows) - this version"]
    for entry in ancestry:
        indent = "  " * entry["depth"]
        if "raw" in entry:
            lines.append(f"{indent}- raw input `{entry['raw']}` sha256 `{str(entry['sha256'])[:16]}`")
        elif entry["step"] == "missing":
            lines.append(f"{indent}- `{entry['version_id'][:12]}` (not in this store)")
        else:
            lines.append(f"{indent}- `{entry['version_id'][:12]}` {entry['step']} "
                         f"({entry.get('num_rows', '?')} rows) name={entry.get('name')}")
    return lines


def write_card(path: Path, manifest: dict[str, Any], ancestry: list[dict[str, Any]] | None = None) -> None:
    """Render and atomically write a version's data card."""
    write_bytes_atomic(path, render_card(manifest, ancestry).encode())
