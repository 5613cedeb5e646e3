"""Shared fixtures: a fresh store and a helper that writes a small version into it."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipelines.store import Store

os.environ.setdefault("DISTILLERY_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def write_version(store: Store, rows: list[dict], step: str = "preprocess", config: dict | None = None,
                  name: str | None = None, chunk_rows: int = 2, parents: list[dict] | None = None) -> dict:
    """Write ``rows`` as a version (``chunk_rows`` rows per shard) and return its manifest."""
    writer = store.create_version(step, config or {"chunk_rows": chunk_rows},
                                  parents or [{"kind": "raw", "path": "memory", "sha256": "0" * 64}], name=name)
    for index, start in enumerate(range(0, len(rows), chunk_rows)):
        part = rows[start:start + chunk_rows]
        writer.write_chunk(index, pa.Table.from_pylist(part), accounting={"input_rows": len(part), "kept": len(part)})
    return writer.finalize()


@pytest.fixture
def make_version():
    return write_version


def build_tiny_bert(folder, *, layers: int = 2, hidden: int = 32, heads: int = 2, intermediate: int = 64,
                    with_mlm_head: bool = True, seed: int = 0, num_labels: int | None = None):
    """Save a tiny random-weight BERT (real bert-base-uncased vocabulary and tokenizer) to ``folder``."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification,
                              BertModel)

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
