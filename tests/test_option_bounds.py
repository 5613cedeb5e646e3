"""Every option has a sane range; values that depend on a model are checked against its config before any work;
a model that cannot be loaded (a pickled pytorch_model.bin) is one line naming its folder."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import types
import typing

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, DebertaV2Config, RobertaConfig

import augment.config
import distill.config
import preprocess.config
from augment import mlm as augment_mlm
from augment.config import MAX_CHUNK_OUTPUT_ROWS, AugmentConfig
from augment.engine import plan_augment
from distill import models
from distill.api import evaluate, finetune, general_distill, task_distill
from distill.config import DistillConfig, EvaluateConfig, FinetuneConfig, MLMConfig, TaskDistillConfig, TrainConfig
from distill.mlm import pretrain_masked_lm
from distill.students import BiLSTMConfig
from pipelines.config import ConfigError, Options, load_config
from pipelines.errors import DistilleryError
from preprocess import dedup
from preprocess.config import PreprocessConfig
from preprocess.dedup import MinHasher

CONFIG_MODULES = (preprocess.config, augment.config, distill.config)
ROWS = [{"text": f"row number {i} of the test", "label": str(i % 2), "row_id": i} for i in range(4)]


def option_classes() -> list[type]:
    """Every Options dataclass the steps declare (found by walking the subclasses, so a new one is covered)."""
    found, todo = [], list(Options.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if any(cls.__module__ == module.__name__ for module in CONFIG_MODULES):
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def numeric_fields(cls: type) -> list[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = {a for a in typing.get_args(hint) if a is not type(None)} if union else {hint}
        if kinds <= {int, float}:
            out.append((f.name, f))
    return out


def test_the_config_classes_are_all_found():
    names = {cls.__name__ for cls in option_classes()}
    assert {"DedupConfig", "PreprocessConfig", "AugmentConfig", "TrainConfig", "TaskDistillConfig", "MLMConfig",
            "EvaluateConfig", "CacheLogitsConfig", "ExportConfig"} <= names


@pytest.mark.parametrize("cls", option_classes(), ids=lambda cls: cls.__name__)
def test_every_numeric_option_has_a_lower_and_an_upper_bound(cls):
    for name, f in numeric_fields(cls):
        bounds = f.metadata["bounds"]
        assert {"ge", "gt"} & set(bounds), f"{cls.__name__}.{name} has no lower bound"
        assert {"le", "lt"} & set(bounds), f"{cls.__name__}.{name} has no upper bound"


@pytest.mark.parametrize("cls, section, key, value, limit", [
    (PreprocessConfig, "dedup", "ngram", 10**9, 64),
    (PreprocessConfig, "dedup", "num_perm", 10**8, 1024),
    (PreprocessConfig, "", "chunk_rows", 10**9, 1_000_000),
    (AugmentConfig, "", "num_aug", 10**9, 1000),
    (AugmentConfig, "", "top_k", 10**9, 1024),
    (FinetuneConfig, "", "max_seq_length", 100_000, 8192),
    (EvaluateConfig, "", "max_seq_length", 100_000, 8192),
])
def test_a_toml_value_over_the_bound_is_one_line_naming_the_key(tmp_path, cls, section, key, value, limit):
    path = tmp_path / "c.toml"
    path.write_text((f"[{section}]\n" if section else "") + f"{key} = {value}\n")
    with pytest.raises(DistilleryError) as info:
        load_config(cls, path)
    dotted = f"{section}.{key}" if section else key
    assert str(info.value) == f"{path}: config key '{dotted}': must be <= {limit} (got {value})"


def test_seeds_are_non_negative():
    for cls, key in ((PreprocessConfig, "dedup.seed"), (AugmentConfig, "seed"), (FinetuneConfig, "seed")):
        with pytest.raises(DistilleryError, match=f"'{key}': must be >= 0"):
            load_config(cls, overrides={key: -1})


def test_options_that_multiply_are_bounded_together():
    with pytest.raises(ConfigError, match="chunk_rows.*output rows per chunk"):
        AugmentConfig(num_aug=1000, chunk_rows=1000)
    assert AugmentConfig(num_aug=1000, chunk_rows=999, fields=("text",)).chunk_rows * 1001 <= MAX_CHUNK_OUTPUT_ROWS
    with pytest.raises(ConfigError, match="top_k.*glove_vocab_limit=10"):
        AugmentConfig(top_k=10, glove_vocab_limit=10)
    with pytest.raises(ConfigError, match="'batch_size'.*tokens per batch"):
        TrainConfig(batch_size=8192, max_seq_length=512)
    with pytest.raises(ConfigError, match="'batch_size'.*tokens per batch"):
        EvaluateConfig(batch_size=65_536, max_seq_length=128)
    with pytest.raises(ConfigError, match="'shuffle_buffer'.*tokens held"):
        TrainConfig(shuffle_buffer=10_000_000, max_seq_length=512)
    TrainConfig(batch_size=256, max_seq_length=512, shuffle_buffer=100_000)        # real use passes


def test_minhash_blocks_hold_a_bounded_number_of_signatures(monkeypatch):
    seen = []
    signatures = MinHasher._signatures

    def spy(self, texts, a, b):
        seen.append(len(texts))
        return signatures(self, texts, a, b)
    monkeypatch.setattr(MinHasher, "_signatures", spy)
    hasher = MinHasher.for_threshold(0.8, 1024, 5)
    texts = [chr(0x61 + i % 26) * (1 + i % 3) for i in range(5000)]
    keys = hasher.band_keys(texts)
    assert max(seen) * 1024 <= dedup._BLOCK_SIGNATURES and len(seen) > 1
    assert (keys[:700] == hasher.band_keys(texts[:700])).all()     # a row's keys never depend on its block


# ---- values checked against the model ----------------------------------------------------------------
def test_position_limit_of_model_families():
    from pipelines.resources import position_limit

    assert position_limit(BertConfig(max_position_embeddings=128)) == 128
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None
    assert position_limit(BiLSTMConfig()) is None


@pytest.fixture(scope="module")
def tiny_models(tiny_mlm_dir, tiny_bert_factory, tmp_path_factory):
    """A 128-position masked LM and classifier, and copies whose configs claim 64 positions or 100 pieces."""
    root = tmp_path_factory.mktemp("bounded_models")
    mlm, clf = tiny_mlm_dir, tiny_bert_factory(num_labels=2)
    short, small_vocab = root / "short", root / "small_vocab"
    for folder, key, value in ((short, "max_position_embeddings", 64), (small_vocab, "vocab_size", 100)):
        shutil.copytree(mlm, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
    return {"mlm": str(mlm), "clf": str(clf), "short": str(short), "small_vocab": str(small_vocab)}


def one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and all(part in message for part in parts), message
    return message


def test_training_max_seq_length_is_checked_against_the_model_before_any_work(store, tmp_path, tiny_models):
    out = tmp_path / "run"
    runs = [
        (lambda: finetune(store, "nope", FinetuneConfig(model=tiny_models["clf"], max_seq_length=129), out),
         ("max_seq_length 129", "128 positions", tiny_models["clf"])),
        (lambda: pretrain_masked_lm(store, "nope", MLMConfig(model=tiny_models["mlm"], max_seq_length=200), out),
         ("max_seq_length 200", "128 positions",)),
        (lambda: pretrain_masked_lm(store, "nope", MLMConfig(model=tiny_models["mlm"], train_layers=3), out),
         ("train_layers 3", "2 layers")),
        (lambda: general_distill(store, "nope", DistillConfig(teacher=tiny_models["mlm"], max_seq_length=129), out),
         ("max_seq_length 129", "teacher", "128 positions")),
        (lambda: general_distill(store, "nope", DistillConfig(teacher=tiny_models["mlm"], objective="distilbert",
                                                              kl_weight=1.0, max_seq_length=129), out),
         ("max_seq_length 129", "teacher", "128 positions")),
        (lambda: general_distill(store, "nope", DistillConfig(teacher=tiny_models["mlm"], student=tiny_models["short"],
                                                              max_seq_length=100), out),
         ("max_seq_length 100", "student", "64 positions")),
        (lambda: task_distill(store, "nope", TaskDistillConfig(teacher=tiny_models["clf"], max_seq_length=129), out),
         ("max_seq_length 129", "teacher", "128 positions")),
        (lambda: evaluate(store, "nope", tiny_models["clf"], EvaluateConfig(max_seq_length=129)),
         ("max_seq_length 129", "128 positions")),
    ]
    for run, parts in runs:
        with pytest.raises(DistilleryError) as info:
            run()
        one_line(info, *parts)
        assert not out.exists()


def test_augment_options_are_checked_against_the_masked_lm_before_any_work(store, make_version, tiny_models):
    make_version(store, ROWS, name="d")
    with pytest.raises(DistilleryError) as info:
        plan_augment(store, "d", AugmentConfig(mlm=tiny_models["mlm"], max_length=129))
    one_line(info, "max_length 129", "128 positions", tiny_models["mlm"])
    with pytest.raises(DistilleryError) as info:
        plan_augment(store, "d", AugmentConfig(mlm=tiny_models["small_vocab"], top_k=101))
    one_line(info, "top_k 101", "100 pieces", tiny_models["small_vocab"])
    assert plan_augment(store, "d", AugmentConfig(mlm=tiny_models["small_vocab"], top_k=100)).config["top_k"] == 100
    assert len(list((store.root / "versions").iterdir())) == 1           # nothing written


def test_a_student_too_large_to_build_is_refused_before_allocating(tiny_models):
    huge = {"num_hidden_layers": 64, "hidden_size": 8192, "num_attention_heads": 64, "intermediate_size": 32768}
    with pytest.raises(DistilleryError) as info:
        models.load_student("custom", BertConfig(), huge, {}, "none", 0)
    one_line(info, "student 'custom'", "parameters", "student_hidden")
    cfg = DistillConfig(student="bilstm", student_layers=64, student_hidden=8192)
    teacher = tiny_models["clf"]
    with pytest.raises(DistilleryError) as info:
        models.build_sequence_student(cfg, "bilstm", teacher, models.load_config(teacher), {"num_labels": 2}, [],
                                      None)
    one_line(info, "bilstm student", "parameters")


# ---- a pickled pytorch_model.bin ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pickled_models(tiny_models, tmp_path_factory):
    """Copies of the tiny models whose weights are a pickled pytorch_model.bin holding a non-tensor object."""
    root = tmp_path_factory.mktemp("pickled")
    folders = {}
    for name in ("mlm", "clf"):
        folder = root / name
        shutil.copytree(tiny_models[name], folder)
        state = load_file(str(folder / "model.safetensors"))
        torch.save({**state, "args": argparse.Namespace(lr=1)}, folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
        folders[name] = str(folder)
    return folders


def test_a_pickled_bin_is_refused_in_one_line_naming_the_folder(pickled_models):
    for load, folder in ((lambda f: models.load_classifier(f, {"num_labels": 2}), pickled_models["clf"]),
                         (models.load_saved_classifier, pickled_models["clf"]),
                         (lambda f: models.load_teacher(f, True, torch.device("cpu")), pickled_models["clf"]),
                         (models.load_masked_lm, pickled_models["mlm"]),
                         (lambda f: augment_mlm.load_mlm(f, "cpu", "fp32"), pickled_models["mlm"])):
        with pytest.raises(DistilleryError) as info:
            load(folder)
        one_line(info, folder, "pytorch_model.bin", "safetensors")


def test_the_cli_says_model_problems_in_one_line(store, make_version, tmp_path, tiny_models, pickled_models):
    make_version(store, ROWS, name="d")
    base = [sys.executable, "-m", "distillery", "--store", str(store.root)]
    for args, expected in (
            (["distill", "evaluate", "d", tiny_models["clf"], "--max-seq-length", "1000"],
             f"error: max_seq_length 1000 is more than the 128 positions of model '{tiny_models['clf']}'"),
            (["distill", "evaluate", "d", pickled_models["clf"]],
             f"error: cannot load the classifier in '{pickled_models['clf']}': its weights are a pickle")):
        proc = subprocess.run([*base, *args], capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(expected) and "Traceback" not in proc.stderr, proc.stderr
