"""`augment --engine ray`: the same bytes as the local engine, a killed actor's chunk retried, a stopped run
resumed, and the one-line error without Ray."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import damage_shard, write_version
from test_augment_engine import config, sample_rows, shard_hashes

from augment import plan_augment
from augment.ray_engine import FAULT_FILE_ENV
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.remote import Remote
from pipelines.runner import run_step
from pipelines.store import Store, VersionWriter
from pipelines.transfer import push

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parent.parent
ROWS = 40           # input shards of 7 rows, chunks of 8 rows: chunks cross shard boundaries


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory, one_torch_thread):
    """One local Ray instance for the module; its workers see ``FAULT_FILE_ENV`` (the file itself is absent)."""
    fault = tmp_path_factory.mktemp("fault") / "kill-one-actor"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_FILE_ENV, str(fault))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        yield fault
        ray.shutdown()


@pytest.fixture(scope="module")
def local_result(tmp_path_factory, tiny_mlm_dir, glove_txt, one_torch_thread):
    """The local engine's version of the sample rows (the reference bytes)."""
    store = source_store(tmp_path_factory.mktemp("local"))
    return run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8))).manifest


def source_store(folder: Path) -> Store:
    store = Store(folder / "store")
    write_version(store, sample_rows(ROWS), name="src", chunk_rows=7)
    return store


def assert_same(result: dict, expected: dict) -> None:
    assert result["version_id"] == expected["version_id"]
    assert shard_hashes(result) == shard_hashes(expected)
    assert [s["rows"] for s in result["shards"]] == [s["rows"] for s in expected["shards"]]
    assert result["extra"]["counts"] == expected["extra"]["counts"]
    assert result["accounting"] == expected["accounting"] and result["accounting"]["input_rows"] == ROWS


def test_ray_and_local_write_the_same_bytes(ray_instance, tmp_path, local_result, tiny_mlm_dir, glove_txt):
    store = source_store(tmp_path)
    result = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8, engine="ray",
                                                  ray_actors=1))).manifest
    assert_same(result, local_result)           # (two actors: the next test)
    assert result["extra"]["run"]["engine"] == "ray" and result["extra"]["run"]["actors"] == 1
    assert result["extra"]["models"] == local_result["extra"]["models"]
    assert result["extra"]["mlm_context"] == local_result["extra"]["mlm_context"]
    assert result["extra"]["run"]["mlm"]["sequences"] == local_result["extra"]["run"]["mlm"]["sequences"]
    assert not store.verify(result["version_id"])
    assert (store.version_path(result["version_id"]) / "README.md").exists()


def test_a_killed_actor_is_replaced_and_every_row_counted_once(ray_instance, tmp_path, local_result,
                                                               tiny_mlm_dir, glove_txt):
    store = source_store(tmp_path)
    ray_instance.write_text("2")        # the actor that augments chunk 2 of 5 kills itself (SIGKILL) before returning
    result = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8, engine="ray",
                                                  ray_actors=2))).manifest
    assert not ray_instance.exists(), "no actor was killed"
    assert_same(result, local_result)
    assert result["extra"]["run"]["actors"] == 2
    table = store.read_table(result["version_id"]).to_pylist()
    originals = [r["source_row_id"] for r in table if r["aug_copy"] == 0]
    assert originals == list(range(ROWS))                   # every input row once, in order
    assert [r["row_id"] for r in table] == list(range(len(table)))


def test_a_stopped_run_resumes_from_the_cli(ray_instance, tmp_path, local_result, tiny_mlm_dir,
                                            glove_txt, monkeypatch):
    """A run stopped after two chunks (here by the local engine: the version id and the runner are the same)
    is continued by the ray engine with --resume."""
    store = source_store(tmp_path)
    write_chunk = VersionWriter.write_chunk

    def crash_after_two_chunks(self, index, *args, **kwargs):
        if index == 2:
            raise KeyboardInterrupt     # the driver stops with chunks 0 and 1 committed
        return write_chunk(self, index, *args, **kwargs)

    monkeypatch.setattr(VersionWriter, "write_chunk", crash_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8)))
    monkeypatch.setattr(VersionWriter, "write_chunk", write_chunk)
    partial = store.version_path(local_result["version_id"])
    assert sorted(p.name for p in (partial / "chunks").iterdir()) == ["00000.json", "00001.json"]
    args = ["--store", str(store.root), "augment", "src", "--mlm", str(tiny_mlm_dir), "--vectors", str(glove_txt),
            "--num-aug", "6", "--chunk-rows", "8", "--glove-vocab-limit", "20000", "--engine", "ray",
            "--ray-actors", "2", "--name", "aug"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0 and "--resume" in str(refused.exception)
    resumed = CliRunner().invoke(cli, [*args, "--resume"], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert_same(store.manifest("aug"), local_result)


def test_actors_read_their_chunks_from_a_remote(ray_instance, tmp_path, local_result, tiny_mlm_dir, glove_txt,
                                                monkeypatch):
    """No shared filesystem: the input version is pushed to a remote, the local shards are damaged (any read of
    them would be refused), and the actors, reading from the remote through their cache, write the same bytes."""
    store = source_store(tmp_path)
    url = f"file://{tmp_path}/remote"
    push(store, "src", Remote(url))
    damage_shard(store, "src", 0)
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    result = run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8, engine="ray",
                                                               ray_actors=1, ray_remote=url))).manifest
    assert_same(result, local_result)
    assert result["extra"]["run"]["input_remote"] == url
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == len(store.manifest("src")["shards"])
    with pytest.raises(DistilleryError, match="does not hold the input version"):
        run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=9, engine="ray",
                                                   ray_actors=1, ray_remote=f"file://{tmp_path}/empty")))


def test_without_ray_the_error_says_what_to_install(tmp_path, tiny_mlm_dir, glove_txt, monkeypatch):
    store = source_store(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)           # `import ray` raises ImportError
    with pytest.raises(DistilleryError, match=r"^the ray engine needs Ray: pip install -e '\.\[ray\]'"):
        run_step(store, plan_augment(store, "src", config(tiny_mlm_dir, glove_txt, chunk_rows=8, engine="ray")))


def test_the_local_engine_imports_no_ray():
    code = ("import sys, augment.engine, distillery.cli.main, distillery.cli.augment\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PYTHONPATH": str(REPO)})
