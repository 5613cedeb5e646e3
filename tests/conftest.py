"""Shared fixtures: a fresh store and a helper that writes a small version into it."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.fingerprint import version_id
from pipelines.resources import glove_6b_50d_files
from pipelines.store import Store, VersionWriter

os.environ.setdefault("DISTILLERY_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def new_writer(store: Store, step: str, config: dict, parents: list[dict], name: str | None = None,
               resume: bool = False) -> VersionWriter:
    """A writer for the version a test step (code "test") makes from ``parents`` with ``config``."""
    vid = version_id(step, config, parents, "test")
    return store.create_version(vid, step, config, parents, name=name, resume=resume, code_version="test")


def write_version(store: Store, rows: list[dict], step: str = "preprocess", config: dict | None = None,
                  name: str | None = None, chunk_rows: int = 2, parents: list[dict] | None = None) -> dict:
    """Write ``rows`` as a version (``chunk_rows`` rows per shard) and return its manifest."""
    writer = new_writer(store, step, config or {"chunk_rows": chunk_rows},
                        parents or [{"kind": "raw", "path": "memory", "sha256": "0" * 64}], name=name)
    for index, start in enumerate(range(0, len(rows), chunk_rows)):
        part = rows[start:start + chunk_rows]
        writer.write_chunk(index, pa.Table.from_pylist(part), accounting={"input_rows": len(part), "kept": len(part)})
    return writer.finalize()


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def word_store(root, rows: int, stride: int, chunk_rows: int) -> Store:
    """A store whose version ``d`` holds ``rows`` labelled rows of 1..12 words (row ``i``: ``1 + i*stride % 12``)."""
    store = Store(root)
    write_version(store, [{"text": " ".join(WORDS[: 1 + (i * stride) % len(WORDS)]), "label": f"l{i % 3}",
                           "row_id": i} for i in range(rows)], name="d", chunk_rows=chunk_rows)
    return store


@pytest.fixture
def make_version():
    return write_version


def damage_shard(store: Store, ref: str, index: int = 0) -> str:
    """Flip one byte in the middle of a version's shard (same size, as bit rot does); returns the shard's name."""
    vid = store.resolve(ref)
    entry = store.manifest(vid)["shards"][index]
    path = store.version_path(vid) / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    return entry["path"]


def build_tiny_bert(folder, *, layers: int = 2, hidden: int = 32, heads: int = 2, intermediate: int = 64,
                    with_mlm_head: bool = True, seed: int = 0, num_labels: int | None = None):
    """Save a tiny random-weight BERT (real bert-base-uncased vocabulary and tokenizer) to ``folder``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

    from pipelines.resources import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=128)
    torch.manual_seed(seed)
    if num_labels is not None:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    else:
        model = BertForMaskedLM(config) if with_mlm_head else BertModel(config)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory):
    """A tiny random BERT masked LM with the real bert-base-uncased vocabulary (saved once per session)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_mlm"))


@pytest.fixture(scope="session")
def tiny_bert_factory(tmp_path_factory):
    """Build tiny BERTs with given shapes: ``tiny_bert_factory(layers=4, hidden=32, num_labels=3)``."""
    def make(**kwargs):
        return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), **kwargs)
    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and many threads crawl on a busy shared machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def glove_txt(tmp_path_factory):
    """The first 20,000 words of the real GloVe 6B 50d as a GloVe .txt file (read through gensim)."""
    folder = tmp_path_factory.mktemp("glove")
    previous = os.environ.get("DISTILLERY_CACHE")
    os.environ["DISTILLERY_CACHE"] = str(folder / "cache")
    vocab, matrix = glove_6b_50d_files()
    words = pq.read_table(vocab).column("index").to_pylist()[:20_000]
    vectors = np.load(matrix, mmap_mode="r")[:20_000]
    path = folder / "glove.slice.50d.txt"
    with open(path, "w", encoding="utf-8") as fh:
        for word, row in zip(words, vectors):
            fh.write(word + " " + " ".join(f"{x:.6f}" for x in row.tolist()) + "\n")
    yield path
    if previous is None:
        os.environ.pop("DISTILLERY_CACHE", None)
    else:
        os.environ["DISTILLERY_CACHE"] = previous
