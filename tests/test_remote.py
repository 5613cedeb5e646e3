"""Versions on object storage: push / pull / stream against a real S3 endpoint (moto's threaded server on localhost,
talked to with s3fs) and file:// remotes, with the faults a remote brings (a dropped connection, a damaged shard,
a manifest leading out of its version, two pushes at once)."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from distill.api import general_distill
from distill.config import DistillConfig
from distill.data import ShardStream
from distill.trainer import Trainer
from distillery.cli.main import cli
from pipelines import transfer
from pipelines.errors import DistilleryError, VersionNotFoundError
from pipelines.remote import Remote
from pipelines.remote_store import CachedShards, RemoteStore, ShardCache
from pipelines.store import Store

WORDS = "the cat sat on a mat while dogs ran far away from home in rain and sun".split()


def rows(n: int, offset: int = 0) -> list[dict]:
    return [{"text": " ".join(WORDS[(i * 5) % 7: (i * 5) % 7 + 2 + i % 9]), "label": f"LABEL_{(i + offset) % 3}",
             "row_id": i} for i in range(n)]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 endpoint (moto's threaded server) with a bucket; the environment points fsspec's s3 at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():
        patch.setenv(key, value)
    patch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield endpoint
    patch.undo()
    server.stop()


_PREFIXES = iter(range(10_000))


@pytest.fixture
def remote_url(s3_endpoint):
    """A fresh, empty remote: a prefix of the local S3 endpoint's bucket (file:// remotes: the tests that name
    them)."""
    return f"s3://bucket/t{next(_PREFIXES)}"


@pytest.fixture
def local(store, make_version):
    make_version(store, rows(30), name="train", chunk_rows=8)
    make_version(store, rows(12, offset=1), name="dev", chunk_rows=5, config={"dev": True})
    return store


def shard_bytes(store: Store, ref: str) -> list[bytes]:
    return [p.read_bytes() for p in store.shard_paths(ref)]


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_round_trip_gives_the_same_version_and_bytes(local, kind, tmp_path, request):
    remote_url = request.getfixturevalue("remote_url") if kind == "s3" else f"file://{tmp_path}/remote"
    remote = Remote(remote_url)
    report = transfer.push(local, "train", remote)
    vid = local.resolve("train")
    assert report.copied == [vid] and report.files_copied == 4 and report.refs == ["train@latest"]
    assert remote.version_ids() == [vid] and remote.refs() == {"train@latest": vid}
    again = transfer.push(local, "train", remote)
    assert again.present == [vid] and again.files_copied == 0       # nothing copied twice
    other = Store(tmp_path / "other")
    pulled = transfer.pull(remote, "train@latest", other)
    assert pulled.copied == [vid] and other.resolve("train") == vid
    assert shard_bytes(other, vid) == shard_bytes(local, vid)
    assert (other.version_path(vid) / "manifest.json").read_bytes() == \
        (local.version_path(vid) / "manifest.json").read_bytes()
    assert other.verify(vid) == [] and remote.verify(vid) == []
    assert transfer.pull(remote, vid[:8], other).present == [vid]


def test_with_parents_copies_the_lineage(local, make_version, remote_url, tmp_path):
    parent = local.manifest("train")["version_id"]
    child = make_version(local, rows(6), step="augment", name="aug",
                         parents=[{"version_id": parent}], config={"n": 1})["version_id"]
    remote = Remote(remote_url)
    assert transfer.push(local, "aug", remote).copied == [child]
    report = transfer.push(local, "aug", remote, with_parents=True)
    assert report.copied == [parent] and report.present == [child]
    other = Store(tmp_path / "other")
    assert transfer.pull(remote, "aug", other, with_parents=True).copied == [parent, child]
    assert [e["version_id"] for e in other.lineage("aug") if "version_id" in e] == [child, parent]


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_a_push_dropped_midway_leaves_nothing_visible_and_a_rerun_completes_it(local, kind, monkeypatch, tmp_path,
                                                                               request):
    remote_url = request.getfixturevalue("remote_url") if kind == "s3" else f"file://{tmp_path}/remote"
    remote = Remote(remote_url)
    real_put = remote.fs.put_file
    calls = []

    def drop_on_second(lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionResetError("connection reset by peer")
        return real_put(lpath, rpath, **kwargs)
    monkeypatch.setattr(remote.fs, "put_file", drop_on_second)
    with pytest.raises(DistilleryError, match="connection reset by peer") as err:
        transfer.push(local, "train", remote)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert remote.version_ids() == [] and remote.refs() == {}        # not visible: no manifest, no ref
    with pytest.raises(VersionNotFoundError):
        Remote(remote_url).resolve("train")
    report = transfer.push(local, "train", remote)
    assert report.files_kept == 1 and report.files_copied == 3
    other = Store(tmp_path / "other")
    transfer.pull(remote, "train", other)
    assert shard_bytes(other, "train") == shard_bytes(local, "train")


def _damage_remote_shard(remote: Remote, vid: str, index: int = 1) -> str:
    entry = remote.manifest(vid)["shards"][index]
    key = remote.file_key(vid, entry["path"])
    data = bytearray(remote.fs.cat_file(key))
    data[len(data) // 2] ^= 0x20
    remote.fs.pipe_file(key, bytes(data))
    remote.fs.invalidate_cache()
    return entry["path"]


def test_a_damaged_remote_shard_is_refused_by_pull_stream_and_verify(local, remote_url, tmp_path, tiny_mlm_dir):
    remote = Remote(remote_url)
    transfer.push(local, "train", remote)
    vid = local.resolve("train")
    name = _damage_remote_shard(remote, vid)
    other = Store(tmp_path / "other")
    with pytest.raises(DistilleryError, match=name.replace(".", r"\.")) as err:
        transfer.pull(remote, "train", other)
    assert "damaged" in str(err.value) and not other.is_complete(vid)
    assert any(name in p for p in remote.verify(vid))
    cache = ShardCache(tmp_path / "cache")
    stream = ShardStream.from_store(RemoteStore(remote, cache), "train", tiny_mlm_dir, batch_size=4, shuffle=False)
    with pytest.raises(DistilleryError, match=name.replace(".", r"\.")):
        list(stream)
    for _ in range(100):                                 # (a prefetch of another shard may still be under way)
        if not list((tmp_path / "cache").glob(".*.tmp")):
            break
        time.sleep(0.1)
    assert not list((tmp_path / "cache").glob(".*.tmp"))             # nothing half-written left in the cache
    result = CliRunner().invoke(cli, ["--store", remote_url, "versions", "verify", "train"])
    assert result.exit_code == 1 and f"CORRUPT {vid[:12]} {name}" in result.output


def test_a_remote_manifest_leading_out_of_its_version_is_refused(local, remote_url, tmp_path):
    remote = Remote(remote_url)
    transfer.push(local, "train", remote)
    vid = local.resolve("train")
    key = remote.file_key(vid, "manifest.json")
    manifest = json.loads(remote.fs.cat_file(key))
    manifest["shards"][0]["path"] = "../../../outside/shard-00000.parquet"
    remote.fs.pipe_file(key, json.dumps(manifest).encode())
    remote.fs.invalidate_cache()
    other = Store(tmp_path / "other")
    with pytest.raises(DistilleryError, match="not one distillery writes") as err:
        transfer.pull(remote, "train", other)
    assert "\n" not in str(err.value) and not other.is_complete(vid)
    assert not (tmp_path / "outside").exists()
    with pytest.raises(DistilleryError, match="malformed"):
        RemoteStore(remote, ShardCache(tmp_path / "cache")).shard_paths("train")


def test_two_pushes_of_one_version_at_once_are_safe(local, remote_url, tmp_path):
    errors = []

    def push():
        try:
            transfer.push(local, "train", Remote(remote_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=push) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    remote = Remote(remote_url)
    assert remote.verify("train") == [] and remote.version_ids() == [local.resolve("train")]


def test_a_ref_pointing_elsewhere_is_moved_only_with_force(local, remote_url, tmp_path):
    remote = Remote(remote_url)
    transfer.push(local, "dev", remote)
    remote.write_ref("train", "latest", local.resolve("dev"))
    with pytest.raises(DistilleryError, match="train@latest .* points at version .*--force"):
        transfer.push(local, "train", remote)
    assert remote.version_ids() == [local.resolve("dev")]                 # refused before any upload
    transfer.push(local, "train", remote, force=True)
    assert remote.resolve("train") == local.resolve("train")
    other = Store(tmp_path / "other")
    transfer.pull(remote, "dev", other)
    other.tag("train", "latest", "dev")
    with pytest.raises(DistilleryError, match="--force"):
        transfer.pull(remote, "train", other)


def test_training_streamed_from_a_remote_gives_the_same_losses_step_for_step(local, tiny_bert_factory, tmp_path,
                                                                             s3_endpoint, one_torch_thread):
    teacher = str(tiny_bert_factory(layers=4, hidden=32, heads=2, num_labels=3, seed=1))
    url = f"s3://bucket/t{next(_PREFIXES)}"
    transfer.push(local, "train", Remote(url))
    cfg = DistillConfig(teacher=teacher, student="custom", student_layers=2, student_hidden=16, student_heads=2,
                        student_intermediate=32, epochs=2, batch_size=4, lr=1e-3, log_every=1, num_workers=1,
                        checkpoint_every=100)
    general_distill(local, "train", cfg, tmp_path / "local")
    remote_store = RemoteStore(Remote(url), ShardCache(tmp_path / "cache"))
    general_distill(remote_store, "train", cfg, tmp_path / "remote")

    def losses(run):
        lines = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["parts"]) for r in lines if "loss" in r]
    assert losses("remote") == losses("local") and len(losses("local")) > 10
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.parquet")) == \
        sorted(f"{e['sha256']}.parquet" for e in local.manifest("train")["shards"])

    def crash_after_8(self):                 # a run streamed from the remote, stopped after step 8, then resumed
        if self.step == 8:
            raise KeyboardInterrupt
    resumable = dataclasses.replace(cfg, checkpoint_every=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "after_step", crash_after_8)
        with pytest.raises(KeyboardInterrupt):
            general_distill(remote_store, "train", resumable, tmp_path / "cut")
    general_distill(remote_store, "train", resumable, tmp_path / "cut", resume=True)
    assert losses("cut") == losses("local")


def test_the_shard_cache_downloads_once_per_node_and_keeps_to_its_limit(local, tmp_path, monkeypatch):
    url = f"file://{tmp_path}/remote"
    transfer.push(local, "train", Remote(url))
    remote = Remote(url)
    downloads = []
    real = Remote.download

    def counted(self, vid, entry, target):
        downloads.append(entry["path"])
        return real(self, vid, entry, target)
    monkeypatch.setattr(Remote, "download", counted)
    entries = local.manifest("train")["shards"]
    cache = ShardCache(tmp_path / "cache")
    shards = CachedShards(remote, cache, local.resolve("train"), entries)
    threads = [threading.Thread(target=shards.local, args=(0,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert downloads == [entries[0]["path"]]
    shards.prefetch(1)
    assert Path(shards.local(1)).read_bytes() == local.shard_paths("train")[1].read_bytes()
    assert downloads == [entries[0]["path"], entries[1]["path"]]
    two = sorted(e["bytes"] for e in entries)[-2:]
    limited = RemoteStore(remote, ShardCache(tmp_path / "small", limit_bytes=sum(two) + 1))
    assert list(limited.iter_batches("train")) == list(local.iter_batches("train"))
    assert sum(p.stat().st_size for p in (tmp_path / "small").glob("*.parquet")) <= sum(two) + 1
    with pytest.raises(DistilleryError, match="needs all of version"):
        limited.shard_paths("train")
    with pytest.raises(DistilleryError, match="cannot hold two shards"):
        RemoteStore(remote, ShardCache(tmp_path / "tiny", limit_bytes=10)).cached_shards("train")


def test_the_cli_pushes_pulls_lists_and_refuses_to_write_to_a_remote(local, s3_endpoint, tmp_path):
    url = f"s3://bucket/t{next(_PREFIXES)}"
    runner = CliRunner()
    pushed = runner.invoke(cli, ["--store", str(local.root), "versions", "push", "train", url, "--with-parents"])
    assert pushed.exit_code == 0, pushed.output
    assert "4 file(s) copied" in pushed.output and "train@latest" in pushed.output
    listed = runner.invoke(cli, ["--store", url, "versions", "list"])
    assert listed.exit_code == 0 and local.resolve("train")[:12] in listed.output and "train@latest" in listed.output
    shown = runner.invoke(cli, ["--store", url, "versions", "show", "train"])
    assert shown.exit_code == 0 and "rows:    30 in 4 shard(s)" in shown.output
    pulled = runner.invoke(cli, ["--store", str(tmp_path / "other"), "versions", "pull", "train", url])
    assert pulled.exit_code == 0 and Store(tmp_path / "other").resolve("train") == local.resolve("train")
    text = tmp_path / "in.txt"
    text.write_text("one line\nanother line\n")
    refused = runner.invoke(cli, ["--store", url, "preprocess", str(text)])
    assert refused.exit_code != 0 and "versions push" in str(refused.exception or refused.output)
    written = runner.invoke(cli, ["--store", str(local.root), "preprocess", str(text), "--name", "lines", "--push",
                                  url], catch_exceptions=False)
    assert written.exit_code == 0 and f"pushed {local.resolve('lines')[:12]} to {url}" in written.output
    assert Remote(url).resolve("lines") == local.resolve("lines")


def test_a_remote_url_without_a_back_end_or_protocol_is_one_line(tmp_path):
    with pytest.raises(DistilleryError, match="not a remote URL"):
        Remote(str(tmp_path))
    with pytest.raises(DistilleryError, match="remote nosuchproto://x"):
        Remote("nosuchproto://x/y")


def test_a_remote_ref_or_cache_folder_that_is_not_ours_is_refused(local, tmp_path):
    url = f"file://{tmp_path}/remote"
    remote = Remote(url)
    transfer.push(local, "train", remote)
    (tmp_path / "remote" / "refs" / "train" / "latest").write_text("../../etc/passwd\n")
    with pytest.raises(DistilleryError, match="ref train@latest is malformed"):
        remote.resolve("train")
    assert remote.refs() == {}                                       # left out of the listing, not trusted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "locks").symlink_to(elsewhere)
    shards = RemoteStore(remote, ShardCache(tmp_path / "cache")).cached_shards(local.resolve("train"))
    with pytest.raises(DistilleryError, match="is a symlink|not a folder"):
        shards.local(0)
    assert list(elsewhere.iterdir()) == []
