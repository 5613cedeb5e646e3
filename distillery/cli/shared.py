"""What every command shares: the store of the running command, --name, --resume and the remote data options."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pipelines.errors import DistilleryError
from pipelines.remote import Remote
from pipelines.remote_store import RemoteStore, ShardCache
from pipelines.store import Store

name_option = click.option("--name", help="Name for the version (moves NAME@latest to it).  [default: none]")
resume_option = click.option("--resume", is_flag=True, help="Continue an interrupted write or run.")
push_option = click.option("--push", "push_url", default=None, metavar="URL",
                           help="Then push the version and its names to this remote (s3://..., gs://..., file:///...; "
                                "see `versions push`).  [default: none]")


def push_version(store: Store, vid: str, url: str | None) -> None:
    """``--push URL``: copy the version just written (or found up to date) to the remote, saying what moved."""
    if url is None:
        return
    from pipelines.transfer import push

    report = push(store, vid, Remote(url))
    click.echo(f"pushed {vid[:12]} to {url}: {report.files_copied} file(s) copied, {report.files_kept} already "
               f"there; names: {' '.join(report.refs) or '-'}")


def current_store(read_only: bool = False) -> Store:
    """The store of the running command (``--store``); a remote URL there serves only commands that read
    (``read_only``): versions are written to a local store and pushed."""
    store = click.get_current_context().obj["store"]
    if isinstance(store, RemoteStore) and not read_only:
        raise DistilleryError(f"--store {store.root} is a remote: versions are written to a local store; write "
                              f"with --store PATH, then `distillery versions push REF {store.root}`")
    return store


def remote_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--remote, --cache-dir and --cache-limit-gb for a command that reads its data refs (declared here once)."""
    command = click.option("--cache-limit-gb", type=click.FloatRange(min=0.001), default=None,
                           help="Size limit of the shard cache (least recently used shards evicted).  "
                                "[default: none]")(command)
    command = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                           help="This node's shard cache, shared by its ranks and workers (env DISTILLERY_CACHE).  "
                                "[default: ~/.cache/distillery/shards]")(command)
    return click.option("--remote", default=None, metavar="URL",
                        help="Read the data refs from this remote (s3://bucket/prefix, gs://..., file:///...) "
                             "through the shard cache, not from --store.  [default: none]")(command)


def data_store(remote: str | None, cache_dir: str | None, cache_limit_gb: float | None) -> Store | RemoteStore:
    """Where a command reads its data refs: ``--remote`` through the shard cache, else the local store."""
    if remote is None:
        if cache_dir is not None or cache_limit_gb is not None:
            raise DistilleryError("--cache-dir and --cache-limit-gb apply only with --remote URL")
        return current_store()
    limit = None if cache_limit_gb is None else int(cache_limit_gb * (1 << 30))
    return RemoteStore(Remote(remote), ShardCache(cache_dir, limit))
