"""The ONNX Runtime candidate engine (``mlm_backend`` onnx / onnx-int8): the torch path's lists, a cache keyed by
the model's content, the backend in the version's identity."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from augment import AugmentConfig, plan_augment
from augment.mlm import build_requests, load_mlm
from augment.words import WordSplitter
from distillery.bundled import SAMPLE_DIR
from pipelines.config import ConfigError, identity_dict
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import Store
from tests.conftest import build_tiny_bert, write_version

pytest.importorskip("onnxruntime")

ROWS = [json.loads(line)["text"] for _, line in zip(range(60), open(SAMPLE_DIR / "train.jsonl"))]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mlm-onnx"


def _requests(mlm, mode: str = "pair"):
    spec = mlm.input_spec(mode, 1, None)
    return [r for s in WordSplitter(mlm.tokenizer).split(ROWS)
            for r in build_requests(s, [i for i in s.eligible if len(s.pieces[i]) == 1], spec)]


@pytest.mark.parametrize("mode", ["pair", "single"])
def test_onnx_backend_gives_the_torch_lists_and_int8_stays_close(tiny_mlm_dir, cache_dir, mode):
    from augment.mlm_onnx import to_onnx

    torch_mlm = load_mlm(str(tiny_mlm_dir), "cpu", "fp32")
    requests = _requests(torch_mlm, mode)
    expected = [top for tops in torch_mlm.top_k(requests, 15, 64) for top in tops]
    onnx = to_onnx(load_mlm(str(tiny_mlm_dir), "cpu", "fp32"), "onnx")
    got = [top for tops in onnx.top_k(requests, 15, 64) for top in tops]
    assert len(expected) > 100
    # ordered top-15 lists, every masked word, up to float rounding (as batched torch against one at a time): a
    # list may differ only in the order of candidates whose torch scores tie within 1e-4, and rarely
    differing = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert len(differing) <= len(expected) // 50
    positions = [(r, p) for r in requests for p in range(len(r.positions))]
    with torch.inference_mode():
        for i in differing:
            request, p = positions[i]
            scores = torch_mlm._batch_logits([request]).float()[p]
            assert all(torch.allclose(scores[x], scores[y], atol=1e-4) for x, y in zip(got[i], expected[i]))
    int8 = to_onnx(load_mlm(str(tiny_mlm_dir), "cpu", "fp32"), "onnx-int8")
    approx = [top for tops in int8.top_k(requests, 15, 64) for top in tops]
    overlap = sum(len(set(a) & set(b)) for a, b in zip(approx, expected)) / (15 * len(expected))
    assert 0.8 < overlap < 1.0 and approx != expected       # close, and really another model
    assert onnx.stats["masked"] == torch_mlm.stats["masked"] == len(expected)


def test_export_cache_is_keyed_by_content_and_rebuilt_when_damaged(tmp_path, cache_dir, monkeypatch):
    from augment import mlm_onnx

    first = build_tiny_bert(tmp_path / "a", seed=0)
    mlm_onnx.to_onnx(load_mlm(str(first), "cpu", "fp32"), "onnx")
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 1 and entries[0].endswith("-onnx-v2")
    # the same content in another folder: the entry is reused, nothing is exported
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    exports = []
    real_export = mlm_onnx._export_fp32
    monkeypatch.setattr(mlm_onnx, "_export_fp32", lambda *a: (exports.append(a), real_export(*a)))
    mlm_onnx.to_onnx(load_mlm(str(copy), "cpu", "fp32"), "onnx")
    assert exports == [] and sorted(p.name for p in cache_dir.iterdir()) == entries
    # other weights: another entry
    other = build_tiny_bert(tmp_path / "b", seed=1)
    mlm_onnx.to_onnx(load_mlm(str(other), "cpu", "fp32"), "onnx")
    assert len(exports) == 1 and len(list(cache_dir.iterdir())) == 2
    # a graph swapped in the entry: exported again
    entry = cache_dir / entries[0]
    (entry / mlm_onnx.ONNX_FILE).write_bytes(b"not a graph")
    mlm_onnx.to_onnx(load_mlm(str(first), "cpu", "fp32"), "onnx")
    assert len(exports) == 2 and (entry / mlm_onnx.ONNX_FILE).stat().st_size > 1000
    # a symlink in an entry's place is refused, never followed
    shutil.rmtree(entry)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, entry)
    with pytest.raises(DistilleryError, match="not a folder"):
        mlm_onnx.to_onnx(load_mlm(str(first), "cpu", "fp32"), "onnx")
    assert list(outside.iterdir()) == []


def test_backend_is_in_the_version_identity_only_when_not_torch(tmp_path, tiny_mlm_dir, cache_dir):
    store = Store(tmp_path / "store")
    write_version(store, [{"text": t, "label": "x"} for t in ROWS[:12]], name="src", chunk_rows=6)
    assert "mlm_backend" not in identity_dict(AugmentConfig())      # versions written before keep their ids
    ids, outputs = {}, {}
    for backend in ("torch", "onnx", "onnx-int8"):
        cfg = AugmentConfig(mlm=str(tiny_mlm_dir), num_aug=3, mlm_backend=backend, device="cpu", seed=1)
        result = run_step(store, plan_augment(store, "src", cfg))
        ids[backend] = result.manifest["version_id"]
        outputs[backend] = store.read_table(ids[backend]).column("text").to_pylist()
        assert result.manifest["extra"]["options"].get("mlm_backend") == (None if backend == "torch" else backend)
    assert len(set(ids.values())) == 3
    assert outputs["onnx"] == outputs["torch"]               # same candidates, so the same bytes of text
    with pytest.raises(ConfigError, match="mlm_backend"):
        AugmentConfig(mlm=str(tiny_mlm_dir), mlm_backend="onnx", device="cuda")
