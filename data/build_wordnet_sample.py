"""Build the bundled real-text sample corpus ``distillery/samples/wordnet_supersense`` from WordNet 3.0.

Task: classify a WordNet noun gloss (its definition) into the noun's *supersense*, i.e. the
lexicographer file it lives in (``noun.artifact``, ``noun.person``, ...). The 10 supersenses with
the most noun synsets are used, with balanced splits of 400 / 100 / 100 glosses per class
(train / dev / test). An unlabelled text file of other glosses and example sentences (nouns and
verbs, none from the labelled synsets) is written for general distillation / augmentation.

Everything is deterministic: inputs are read in file order, candidates are sorted, and all
sampling uses one ``random.Random(0)`` in a fixed order, so re-running gives identical bytes.
The data card ``data_cards/wordnet_supersense.md`` is generated here from the written files,
so its numbers cannot drift from the data.

Usage (from the repository root)::

    python data/build_wordnet_sample.py [--wordnet-dir /usr/share/wordnet]

WordNet 3.0 data files come from Debian's ``wordnet-base`` package (``apt-get install wordnet-base``).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT_DIR = REPO_ROOT / "distillery" / "samples" / "wordnet_supersense"
DEFAULT_CARD = REPO_ROOT / "data_cards" / "wordnet_supersense.md"
DEFAULT_COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")

SEED = 0
NUM_CLASSES = 10
PER_CLASS = {"train": 400, "dev": 100, "test": 100}
UNLABELLED_LINES = 20_000
MAX_TOTAL_BYTES = 3_000_000  # budget for the whole output folder; unlabelled text is gzipped if exceeded
NUM_LEMMAS = 3

# Lexicographer file names, indexed by lex_filenum (WordNet 3.0, lexnames(5WN)).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)

_WHITESPACE = re.compile(r"\s+")
_QUOTED = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    """One synset line of a WordNet ``data.*`` file, reduced to what the corpus needs."""

    offset: str
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]

    @property
    def key(self) -> str:
        """Synset identifier in the usual ``<offset>-<pos>`` form, e.g. ``02084071-n``."""
        return f"{self.offset}-{self.pos}"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

def normalise_space(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _is_wrapped(text: str) -> bool:
    """True if ``text`` is one balanced parenthesised group, e.g. ``(used in the plural)``."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and i < len(text) - 1:
            return False  # the first group closes before the end: "(law) ... (especially ...)"
    return depth == 0


def clean_definition(text: str) -> str:
    """Tidy a definition: normalise spaces, drop trailing ``;``/``:``, unwrap one enclosing ``( )``."""
    text = normalise_space(text).rstrip(";:, ").strip()
    while _is_wrapped(text):
        text = text[1:-1].strip()
    return text


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into its definition and its quoted example sentences.

    The definition is the part before the first ``; "`` (the usual example separator); a few
    glosses use ``: "`` instead, which is handled the same way.
    """
    gloss = normalise_space(gloss)
    cut = len(gloss)
    for separator in ('; "', ': "'):
        position = gloss.find(separator)
        if position != -1:
            cut = min(cut, position)
    definition = clean_definition(gloss[:cut])
    examples = tuple(e for e in (normalise_space(m) for m in _QUOTED.findall(gloss[cut:])) if e)
    return definition, examples


def parse_data_line(line: str) -> Synset:
    """Parse one synset line: ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
    words = fields[4:4 + 2 * w_cnt:2]
    lemmas = tuple(re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in words)
    definition, examples = split_gloss(gloss)
    pos = "a" if ss_type == "s" else ss_type
    return Synset(offset, pos, LEXNAMES[lex_filenum], lemmas, definition, examples)


def read_synsets(path: Path) -> Iterator[Synset]:
    """Yield the synsets of a WordNet ``data.*`` file in file order (licence header skipped)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):  # the licence header lines start with two spaces
                continue
            yield parse_data_line(line.rstrip("\n"))


# ---------------------------------------------------------------------------------------------
# Selection and splitting
# ---------------------------------------------------------------------------------------------

def frequent_supersenses(synsets: list[Synset], k: int) -> list[str]:
    """The ``k`` noun supersenses with the most synsets (ties broken by name), sorted by name."""
    counts = Counter(s.lexname for s in synsets if s.lexname != "noun.Tops")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return sorted(name for name, _ in ranked[:k])


def unique_candidates(synsets: list[Synset], labels: list[str]) -> tuple[dict[str, list[Synset]], dict[str, Any]]:
    """Per label, the synsets whose definition text is non-empty and occurs exactly once among
    all noun definitions (exact duplicates are dropped entirely, so no text can carry two labels
    or land in two splits). Returns the candidates (sorted by offset) and per-label diagnostics."""
    text_counts = Counter(s.definition for s in synsets)
    candidates: dict[str, list[Synset]] = {label: [] for label in labels}
    diagnostics: dict[str, Any] = {label: {"synsets": 0, "duplicate_or_empty": 0} for label in labels}
    for synset in synsets:
        if synset.lexname not in candidates:
            continue
        diagnostics[synset.lexname]["synsets"] += 1
        if synset.definition and text_counts[synset.definition] == 1:
            candidates[synset.lexname].append(synset)
        else:
            diagnostics[synset.lexname]["duplicate_or_empty"] += 1
    for label, items in candidates.items():
        items.sort(key=lambda s: s.offset)
        diagnostics[label]["candidates"] = len(items)
    return candidates, diagnostics


def split_balanced(candidates: dict[str, list[Synset]], rng: random.Random) -> dict[str, list[Synset]]:
    """Sample ``PER_CLASS`` synsets per label and split, then shuffle each split's rows."""
    splits: dict[str, list[Synset]] = {name: [] for name in PER_CLASS}
    needed = sum(PER_CLASS.values())
    for label in sorted(candidates):
        pool = candidates[label]
        if len(pool) < needed:
            raise SystemExit(f"error: {label} has only {len(pool)} distinct glosses, {needed} needed")
        chosen = rng.sample(pool, needed)
        start = 0
        for name, size in PER_CLASS.items():
            splits[name].extend(chosen[start:start + size])
            start += size
    for name in PER_CLASS:
        splits[name].sort(key=lambda s: (s.lexname, s.offset))
        rng.shuffle(splits[name])
    return splits


def unlabelled_lines(pool: Iterable[Synset], excluded_texts: set[str], excluded_keys: set[str],
                     rng: random.Random) -> list[str]:
    """``UNLABELLED_LINES`` distinct definitions and example sentences from synsets outside the
    labelled splits, none equal to a labelled text; sampled from the pool in sorted order."""
    texts: set[str] = set()
    for synset in pool:
        if synset.key in excluded_keys:
            continue
        for text in (synset.definition, *synset.examples):
            if text and text not in excluded_texts:
                texts.add(text)
    ordered = sorted(texts)
    return rng.sample(ordered, min(UNLABELLED_LINES, len(ordered)))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def to_row(synset: Synset) -> dict[str, str]:
    """The JSONL record of one labelled gloss."""
    return {"text": synset.definition, "label": synset.lexname, "synset": synset.key,
            "lemmas": ", ".join(synset.lemmas[:NUM_LEMMAS])}


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as UTF-8 JSON Lines with ``\\n`` endings."""
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_text(path: Path, lines: list[str], compress: bool) -> Path:
    """Write one line per text; gzip (with a fixed header, so bytes are reproducible) if asked."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if compress:
        path = path.with_name(path.name + ".gz")
        with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                  compresslevel=9) as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def extract_licence(copyright_path: Path) -> str:
    """The Princeton WordNet 3.0 licence text from a Debian (DEP-5) ``copyright`` file, with the
    DEP-5 formatting (one leading space, `` .`` for blank lines) removed."""
    lines = copyright_path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("License: WordNet"))
    body: list[str] = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:])
    return "\n".join(body).rstrip() + "\n"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Statistics and the data card
# ---------------------------------------------------------------------------------------------

def length_stats(texts: list[str]) -> dict[str, dict[str, float]]:
    """min / median / mean / max of character and whitespace-word lengths."""
    result = {}
    for unit, lengths in (("chars", [len(t) for t in texts]), ("words", [len(t.split()) for t in texts])):
        result[unit] = {"min": min(lengths), "median": statistics.median(lengths),
                        "mean": round(statistics.fmean(lengths), 1), "max": max(lengths)}
    return result


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def stats_table(texts_by_split: dict[str, list[str]]) -> str:
    """Markdown table of length statistics per split."""
    lines = ["| split | rows | chars min | chars median | chars mean | chars max "
             "| words min | words median | words mean | words max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, texts in texts_by_split.items():
        s = length_stats(texts)
        cells = [_fmt(s[u][k]) for u in ("chars", "words") for k in ("min", "median", "mean", "max")]
        lines.append(f"| {name} | {len(texts)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_table(labels: list[str], splits: dict[str, list[Synset]], diagnostics: dict[str, Any]) -> str:
    """Markdown table: per label, rows per split and the candidate pool it was drawn from."""
    counts = {name: Counter(s.lexname for s in rows) for name, rows in splits.items()}
    header = "| label | " + " | ".join(splits) + " | noun synsets | distinct-gloss candidates |"
    lines = [header, "|---|" + "---:|" * (len(splits) + 2)]
    for label in labels:
        cells = [str(counts[name][label]) for name in splits]
        d = diagnostics[label]
        lines.append(f"| `{label}` | " + " | ".join(cells) + f" | {d['synsets']} | {d['candidates']} |")
    totals = [str(len(rows)) for rows in splits.values()]
    lines.append("| **total** | " + " | ".join(totals) + " | | |")
    return "\n".join(lines)


def front_matter(labels: list[str], splits: dict[str, list[Synset]], files: dict[str, Path],
                 unlabelled_path: Path) -> dict[str, Any]:
    """Hugging Face style dataset card metadata, computed from the written files."""
    split_info = [{"name": name, "num_bytes": files[name].stat().st_size, "num_examples": len(rows)}
                  for name, rows in splits.items()]
    return {
        "pretty_name": "WordNet 3.0 noun supersense glosses (distillery sample)",
        "language": ["en"],
        "license": "other",
        "license_name": "wordnet",
        "license_link": "https://wordnet.princeton.edu/license-and-commercial-use",
        "task_categories": ["text-classification"],
        "task_ids": ["multi-class-classification"],
        "size_categories": ["1K<n<10K"],
        "source_datasets": ["extended|wordnet"],
        "annotations_creators": ["expert-generated"],
        "language_creators": ["expert-generated"],
        "multilinguality": ["monolingual"],
        "configs": [
            {"config_name": "default",
             "data_files": [{"split": name, "path": files[name].name} for name in splits]},
            {"config_name": "unlabelled", "data_files": [{"split": "train", "path": unlabelled_path.name}]},
        ],
        "dataset_info": {
            "features": [
                {"name": "text", "dtype": "string"},
                {"name": "label", "dtype": "string"},
                {"name": "synset", "dtype": "string"},
                {"name": "lemmas", "dtype": "string"},
            ],
            "splits": split_info,
            "dataset_size": sum(item["num_bytes"] for item in split_info),
        },
        "label_names": labels,
    }


CARD_BODY = """\
# WordNet 3.0 noun supersense glosses

A small, real-text, balanced sentence-classification corpus bundled with distillery for tests,
benchmarks and calibration runs. Each row is the **definition part of a WordNet 3.0 noun gloss**
(`text`); the target is the noun's **supersense** (`label`), i.e. the WordNet lexicographer file
the synset belongs to (`noun.artifact`, `noun.person`, ...). Extra columns: `synset`
(`<offset>-<pos>`, WordNet 3.0 data-file offset) and `lemmas` (up to the first {num_lemmas} lemmas of
the synset, joined with `, `). Note that the lemmas reveal the word being defined; drop the column
for the plain gloss-classification task.

Files in `distillery/samples/wordnet_supersense/`:

| file | rows | bytes | sha256 |
|---|---:|---:|---|
{file_table}

`{unlabelled_name}` holds {unlabelled_count} other WordNet texts (one per line, UTF-8): noun and verb
definitions and the quoted example sentences of glosses, for general distillation and augmentation.
It contains nothing from the labelled synsets and no line equal to a labelled text.

## How it was built

```
python data/build_wordnet_sample.py --wordnet-dir /usr/share/wordnet
```

Source: WordNet 3.0 `data.noun` and `data.verb` (Debian package `wordnet-base`).

| source file | sha256 |
|---|---|
{source_table}

1. Every synset line is parsed; `text` is the gloss part before the first `; "` (or `: "`) that
   starts the quoted examples, with whitespace collapsed, a trailing `;`/`:` dropped and one
   enclosing pair of parentheses removed when it wraps the whole definition. Leading domain
   markers such as `(botany)` are kept.
2. `lex_filenum` is mapped to its name via the lexnames(5WN) list. The {num_classes} noun
   supersenses with the most synsets are kept (`noun.Tops` excluded).
3. Definitions occurring more than once among all noun synsets are dropped entirely (exact
   string match), so no text carries two labels or appears in two splits.
4. Per label (in sorted order), candidates sorted by offset are sampled with `random.Random({seed})`:
   {per_class} glosses per class for train / dev / test; each split is then shuffled with the
   same generator. The unlabelled lines are sampled (same generator) from the sorted set of
   remaining texts. The build is byte-for-byte reproducible, and this card is generated by the
   build script from the written files.

## Labels and class counts

{counts_table}

"noun synsets" is the number of synsets with that supersense in WordNet 3.0;
"distinct-gloss candidates" is how many were left after dropping duplicated or empty definitions.

## Text length statistics

Characters and whitespace-separated words of `text`:

{stats_table}

## Licence

The texts are taken from WordNet 3.0 and are distributed under the WordNet 3.0 licence
(copied verbatim in `distillery/samples/wordnet_supersense/LICENSE.wordnet`):
WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
Permission to use, copy, modify and distribute WordNet is granted provided that the copyright
notice, the statements and the disclaimer appear on all copies. WordNet is provided "as is",
without warranties. The name of Princeton University may not be used in advertising or publicity
pertaining to distribution of the data.

## Limitations

- Texts are dictionary definitions, not natural running text: short, telegraphic, often
  without a verb, and written in a lexicographer's register.
- Supersenses are coarse and sometimes ambiguous (e.g. an institution can be `noun.group` or
  `noun.artifact`, a state of mind `noun.state` or `noun.feeling`); the assignment of a synset
  to a lexicographer file is an editorial decision, so a definition may fit several labels.
- Some definitions start with a domain marker such as `(botany)` or name a hypernym that is a
  strong cue for the label; accuracy on this set overstates performance on running text.
- Classes are balanced by construction; WordNet's natural distribution is very skewed.
- The unlabelled lines mix definitions with example sentences (some quotations with attributions).

## Citation

```bibtex
@article{{miller1995wordnet,
  title   = {{WordNet: A Lexical Database for English}},
  author  = {{Miller, George A.}},
  journal = {{Communications of the ACM}},
  volume  = {{38}},
  number  = {{11}},
  pages   = {{39--41}},
  year    = {{1995}}
}}

@book{{fellbaum1998wordnet,
  title     = {{WordNet: An Electronic Lexical Database}},
  editor    = {{Fellbaum, Christiane}},
  publisher = {{MIT Press}},
  address   = {{Cambridge, MA}},
  year      = {{1998}}
}}
```

Princeton University "About WordNet." WordNet. Princeton University. 2010. https://wordnet.princeton.edu/
"""


def render_card(labels: list[str], splits: dict[str, list[Synset]], diagnostics: dict[str, Any],
                files: dict[str, Path], unlabelled: list[str], unlabelled_path: Path,
                sources: list[Path]) -> str:
    """The full data card: YAML front matter plus the Markdown body."""
    meta = yaml.safe_dump(front_matter(labels, splits, files, unlabelled_path), sort_keys=False,
                          allow_unicode=True, width=1000)
    file_rows = [(path, len(splits[name]) if name in splits else len(unlabelled)) for name, path in files.items()]
    file_table = "\n".join(f"| `{path.name}` | {rows} | {path.stat().st_size} | `{sha256_file(path)}` |"
                           for path, rows in file_rows)
    source_table = "\n".join(f"| `{path.name}` | `{sha256_file(path)}` |" for path in sources)
    texts = {name: [s.definition for s in rows] for name, rows in splits.items()}
    texts["unlabelled"] = unlabelled
    body = CARD_BODY.format(
        num_lemmas=NUM_LEMMAS, file_table=file_table, unlabelled_name=unlabelled_path.name,
        unlabelled_count=len(unlabelled), source_table=source_table, num_classes=NUM_CLASSES, seed=SEED,
        per_class=" / ".join(str(n) for n in PER_CLASS.values()),
        counts_table=counts_table(labels, splits, diagnostics), stats_table=stats_table(texts))
    return f"---\n{meta}---\n\n{body}"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build(wordnet_dir: Path, out_dir: Path, card_path: Path, copyright_path: Path) -> None:
    """Build the corpus, its licence file and its data card, and print a summary."""
    sources = [wordnet_dir / "data.noun", wordnet_dir / "data.verb"]
    nouns = list(read_synsets(sources[0]))
    verbs = list(read_synsets(sources[1]))
    labels = frequent_supersenses(nouns, NUM_CLASSES)
    candidates, diagnostics = unique_candidates(nouns, labels)

    rng = random.Random(SEED)
    splits = split_balanced(candidates, rng)
    labelled = [s for rows in splits.values() for s in rows]
    unlabelled = unlabelled_lines([*nouns, *verbs], {s.definition for s in labelled},
                                  {s.key for s in labelled}, rng)

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, rows in splits.items():
        files[name] = out_dir / f"{name}.jsonl"
        write_jsonl(files[name], [to_row(s) for s in rows])
    (out_dir / "LICENSE.wordnet").write_text(extract_licence(copyright_path), encoding="utf-8")
    for stale in (out_dir / "unlabelled.txt", out_dir / "unlabelled.txt.gz"):
        stale.unlink(missing_ok=True)
    unlabelled_path = write_text(out_dir / "unlabelled.txt", unlabelled, compress=False)
    if sum(p.stat().st_size for p in out_dir.iterdir()) > MAX_TOTAL_BYTES:
        unlabelled_path.unlink()
        unlabelled_path = write_text(out_dir / "unlabelled.txt", unlabelled, compress=True)
    files["unlabelled"] = unlabelled_path

    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(render_card(labels, splits, diagnostics, files, unlabelled, unlabelled_path, sources),
                         encoding="utf-8", newline="\n")
    print_summary(labels, splits, diagnostics, unlabelled, out_dir)


def print_summary(labels: list[str], splits: dict[str, list[Synset]], diagnostics: dict[str, Any],
                  unlabelled: list[str], out_dir: Path) -> None:
    """Print class counts, length statistics and file sizes."""
    print(counts_table(labels, splits, diagnostics))
    print()
    texts = {name: [s.definition for s in rows] for name, rows in splits.items()}
    texts["unlabelled"] = unlabelled
    print(stats_table(texts))
    print()
    total = 0
    for path in sorted(out_dir.iterdir()):
        size = path.stat().st_size
        total += size
        print(f"{size:>10}  {path.name}")
    print(f"{total:>10}  total ({out_dir})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="folder with WordNet 3.0 data.noun / data.verb (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder")
    parser.add_argument("--card", type=Path, default=DEFAULT_CARD, help="data card to write")
    parser.add_argument("--copyright", type=Path, default=DEFAULT_COPYRIGHT,
                        help="Debian copyright file holding the WordNet 3.0 licence (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in (args.wordnet_dir / "data.noun", args.wordnet_dir / "data.verb", args.copyright):
        if not path.is_file():
            print(f"error: {path} not found (install Debian's wordnet-base or pass --wordnet-dir)", file=sys.stderr)
            return 2
    build(args.wordnet_dir, args.out, args.card, args.copyright)
    return 0


if __name__ == "__main__":
    sys.exit(main())
