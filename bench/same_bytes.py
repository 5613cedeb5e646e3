"""Same bytes before and after a refactor: runs preprocess, augment and teacher-logits on the bundled sample
(several worker counts, the Ray engine when Ray is installed, a run killed after its first chunk and resumed) and
writes, per case, the shard and rejects sha256s and the manifest's accounting and step figures to
``OUT_DIR/same_bytes.json``. Run it under two checkouts and diff the files (they must be identical)::

    PYTHONPATH=/tmp/before .venv/bin/python bench/same_bytes.py /tmp/out-before
    PYTHONPATH=.           .venv/bin/python bench/same_bytes.py /tmp/out-after
    diff /tmp/out-before/same_bytes.json /tmp/out-after/same_bytes.json

Version ids are left out: they hash each step's code, which a refactor changes on purpose. Only public
entry points are used (``run_step`` with the ``plan_*`` functions), so the script runs on either side."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("DISTILLERY_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from conftest import build_tiny_bert  # noqa: E402  (the tests' tiny random BERTs)

from augment import AugmentConfig, plan_augment  # noqa: E402
from distill.config import CacheLogitsConfig  # noqa: E402
from distill.logits import plan_teacher_logits  # noqa: E402
from pipelines.progress import quiet_libraries  # noqa: E402
from pipelines.runner import run_step  # noqa: E402
from pipelines.store import Store  # noqa: E402
from preprocess import (  # noqa: E402
    CleanConfig,
    DedupConfig,
    FilterConfig,
    InputConfig,
    PreprocessConfig,
    plan_preprocess,
)

SAMPLE = REPO / "distillery" / "samples" / "wordnet_supersense"
EXTRA_KEYS = ("counts", "agreement", "near_dup_lsh", "id2label", "options", "seed", "mlm_context")
KILL_AFTER_CHUNK_0 = """
import sys, time
sys.path[:0] = {path!r}
from pipelines.store import ChunkSink
commit = ChunkSink.commit
def commit_then_hang(self, accounting):
    record = commit(self, accounting)
    if self.index == 0:
        time.sleep(600)          # the parent kills this process here, chunk 0 committed
    return record
ChunkSink.commit = commit_then_hang
"""


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must not change: the bytes of every file, the rows and the accounting (ids and timings left out)."""
    return {"shards": [s["sha256"] for s in manifest["shards"]],
            "rejects": [r["sha256"] for r in manifest["rejects"]],
            "num_rows": manifest["num_rows"], "schema": manifest["schema"], "accounting": manifest["accounting"],
            "stats": manifest["stats"],
            "extra": {k: manifest["extra"][k] for k in EXTRA_KEYS if k in manifest["extra"]}}


def run_killed_then_resumed(store: Store, plan_code: str, make_plan: Any) -> dict[str, Any]:
    """Run ``plan_code`` in a child that hangs after committing chunk 0, kill it there, then resume here."""
    vid = make_plan().version_id()
    script = KILL_AFTER_CHUNK_0.format(path=[p for p in sys.path if p]) + textwrap.dedent(plan_code)
    child = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    record = store.version_path(vid) / "chunks" / "00000.json"
    deadline = time.time() + 600
    while not record.exists():
        if child.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the child ended (or hung) before committing chunk 0: {child.returncode}")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not store.is_complete(vid)
    result = run_step(store, make_plan(), resume=True)
    assert result.resumed and not result.up_to_date
    return result.manifest


def write_bad_rows(path: Path) -> Path:
    """Sample rows with bad lines among them (rejects), short texts (dropped) and long ones (split)."""
    lines = (SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()[:900]
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i % 97 == 0:
            out += ["{not json", "", "[1, 2]", '{"label": "noun.act"}']
        if i % 41 == 0:
            out.append(json.dumps({"text": "tiny", "label": "noun.act"}))
        if i % 53 == 0:
            out.append(json.dumps({"text": "First sentence here. " * 8 + "And a last one.", "label": "noun.act"}))
        if i % 17 == 0:
            out.append(line)                                 # an exact duplicate
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def preprocess_cases(out: Path, results: dict[str, Any]) -> Store:
    """Labelled rows in chunks of 700, near-duplicate removal of the unlabelled text, bad rows, parts, a kill."""
    import preprocess.step

    store = Store(out / "store")
    train = PreprocessConfig(input=InputConfig(label_column="label"), chunk_rows=700)
    near = PreprocessConfig(dedup=DedupConfig(near=True), chunk_rows=3000)
    bad_rows = write_bad_rows(Path(tempfile.gettempdir()) / "same_bytes_bad_rows.jsonl")   # (rejects name it)
    bad = PreprocessConfig(input=InputConfig(label_column="label"), clean=CleanConfig(split_sentences_over=120),
                           filter=FilterConfig(min_chars=8), chunk_rows=250)
    for workers in (1, 2):
        for case, inputs, config in (("train", [SAMPLE / "train.jsonl"], train),
                                     ("unlabelled-near", [SAMPLE / "unlabelled.txt"], near),
                                     ("bad-rows", [bad_rows], bad)):
            config.workers = workers
            kept = Store(out / f"store-{case}-w{workers}") if workers == 2 else store
            results[f"preprocess/{case}/workers={workers}"] = summary(
                run_step(kept, plan_preprocess(inputs, config), name=f"{case}").manifest)
    saved = preprocess.step.PART_BYTES
    preprocess.step.PART_BYTES = 16_000            # chunks read, processed and written in several parts
    try:
        for workers in (1, 2):
            train.workers = workers
            results[f"preprocess/train-in-parts/workers={workers}"] = summary(
                run_step(Store(out / f"parts-w{workers}"), plan_preprocess([SAMPLE / "train.jsonl"], train)).manifest)
    finally:
        preprocess.step.PART_BYTES = saved
    near.workers = 2
    killed = Store(out / "killed-preprocess")
    code = f"""
        from pipelines.runner import run_step
        from pipelines.store import Store
        from preprocess import DedupConfig, PreprocessConfig, plan_preprocess
        config = PreprocessConfig(dedup=DedupConfig(near=True), chunk_rows=3000, workers=2)
        run_step(Store({str(killed.root)!r}), plan_preprocess([{str(SAMPLE / 'unlabelled.txt')!r}], config))
    """
    results["preprocess/unlabelled-near/killed-then-resumed"] = summary(run_killed_then_resumed(
        killed, code, lambda: plan_preprocess([SAMPLE / "unlabelled.txt"], near)))
    return store


def source_version(out: Path) -> Store:
    """A small labelled version to augment (the first 120 sample rows in chunks of 50)."""
    store = Store(out / "augment-store")
    config = PreprocessConfig(input=InputConfig(label_column="label", max_rows=120), chunk_rows=50)
    run_step(store, plan_preprocess([SAMPLE / "train.jsonl"], config), name="src")
    return store


def augment_config(mlm: str, **kwargs: Any) -> AugmentConfig:
    return AugmentConfig(**{"mlm": mlm, "num_aug": 4, "chunk_rows": 32, "glove_vocab_limit": 20_000, **kwargs})


def augment_cases(out: Path, mlm_dir: Path, results: dict[str, Any]) -> Store:
    """Vectors only and with the tiny masked LM at 0, 1 and 2 workers, the Ray engine, a kill and a resume."""
    store = source_version(out)
    for mlm_name, mlm in (("vectors-only", "none"), ("tiny-mlm", str(mlm_dir))):
        for workers in (0, 1, 2):
            target = store if workers == 0 else source_version(out / f"augment-{mlm_name}-w{workers}")
            manifest = run_step(target, plan_augment(target, "src", augment_config(mlm, workers=workers)),
                                name=f"aug-{mlm_name}").manifest
            results[f"augment/{mlm_name}/workers={workers}"] = summary(manifest)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed: the Ray engine case is skipped", file=sys.stderr)
    else:
        ray_store = source_version(out / "ray")
        manifest = run_step(ray_store, plan_augment(ray_store, "src", augment_config(
            str(mlm_dir), engine="ray", ray_actors=2))).manifest
        results["augment/tiny-mlm/ray-2-actors"] = summary(manifest)
    killed = source_version(out / "killed-augment")
    code = f"""
        from augment import AugmentConfig, plan_augment
        from pipelines.runner import run_step
        from pipelines.store import Store
        store = Store({str(killed.root)!r})
        config = AugmentConfig(mlm={str(mlm_dir)!r}, num_aug=4, chunk_rows=32, glove_vocab_limit=20_000, workers=1)
        run_step(store, plan_augment(store, "src", config))
    """
    results["augment/tiny-mlm/killed-then-resumed"] = summary(run_killed_then_resumed(
        killed, code, lambda: plan_augment(killed, "src", augment_config(str(mlm_dir), workers=1))))
    return store


def teacher(out: Path) -> Path:
    """A tiny random BERT classifier over the sample's labels."""
    from transformers import AutoConfig

    labels = sorted({json.loads(line)["label"] for line in (SAMPLE / "train.jsonl").open(encoding="utf-8")})
    folder = build_tiny_bert(out / "teacher", layers=1, hidden=16, heads=2, num_labels=len(labels))
    config = AutoConfig.from_pretrained(folder)
    config.id2label, config.label2id = dict(enumerate(labels)), {v: i for i, v in enumerate(labels)}
    config.save_pretrained(folder)
    return folder


def logits_cases(out: Path, augmented: Store, results: dict[str, Any]) -> None:
    """Teacher logits on the augmented version (agreement counted) and on a preprocessed one, and a kill."""
    model = teacher(out)
    config = CacheLogitsConfig(batch_size=16, device="cpu")
    for case, ref in (("augmented", "aug-tiny-mlm"), ("preprocessed", "src")):
        manifest = run_step(augmented, plan_teacher_logits(augmented, ref, model, config)).manifest
        results[f"teacher-logits/{case}"] = summary(manifest)
    killed = source_version(out / "killed-logits")
    code = f"""
        from distill.config import CacheLogitsConfig
        from distill.logits import plan_teacher_logits
        from pipelines.runner import run_step
        from pipelines.store import Store
        store = Store({str(killed.root)!r})
        config = CacheLogitsConfig(batch_size=16, device="cpu")
        run_step(store, plan_teacher_logits(store, "src", {str(model)!r}, config))
    """
    results["teacher-logits/preprocessed/killed-then-resumed"] = summary(run_killed_then_resumed(
        killed, code, lambda: plan_teacher_logits(killed, "src", model, config)))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    quiet_libraries()
    results: dict[str, Any] = {}
    preprocess_cases(out, results)
    augmented = augment_cases(out, build_tiny_bert(out / "tiny-mlm"), results)
    logits_cases(out, augmented, results)
    (out / "same_bytes.json").write_text(json.dumps(results, indent=1) + "\n")       # (key order compared too)
    print(f"{len(results)} cases -> {out / 'same_bytes.json'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
