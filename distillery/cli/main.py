"""The `distillery` command line: one click group (versions and export here, each step's commands loaded lazily)."""
from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys

import click

from distillery.cli.shared import current_store
from distillery.present import describe_diff, describe_version, echo_json
from pipelines.errors import DistilleryError
from pipelines.export import export_version
from pipelines.progress import quiet_libraries, say
from pipelines.remote import Remote, is_remote_url
from pipelines.remote_store import RemoteStore
from pipelines.store import Store, diff_manifests

# subcommand name -> "module:attribute"; loaded on first use so `--help` stays fast.
LAZY_COMMANDS = {
    "preprocess": "distillery.cli.preprocess:preprocess_command",
    "augment": "distillery.cli.augment:augment_command",
    "distill": "distillery.cli.distill:distill_group",
    "demo": "distillery.demo:demo_command",
    "export-model": "distillery.cli.export_model:export_model_command",
    "run": "distillery.cli.run:run_command",
    "recipe": "distillery.cli.recipe:recipe_group",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when called (or listed)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                return None
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_root", envvar="DISTILLERY_STORE", default="distillery_store", show_default=True,
              type=click.Path(file_okay=False), help="Dataset store folder (env DISTILLERY_STORE).")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (env DISTILLERY_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, store_root: str, debug: bool) -> None:
    """distillery: versioned, sharded, augmented text datasets and BERT distillation from them."""
    ctx.ensure_object(dict)
    ctx.obj["store"] = RemoteStore(Remote(store_root)) if is_remote_url(store_root) else Store(store_root)
    ctx.obj["debug"] = debug


@cli.group()
def versions() -> None:
    """List, inspect, compare, verify, name and clean up dataset versions."""


@versions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def versions_list(as_json: bool) -> None:
    """List the versions, oldest first (interrupted writes last), with the names that point at them (--store may be a
    remote URL)."""
    store = current_store(read_only=True)
    store.check_exists()
    names: dict[str, list[str]] = {}
    for ref, vid in store.refs().items():
        names.setdefault(vid, []).append(ref)
    rows = []
    for problem in store.bad_refs().values():
        say(f"warning: {problem}")
    for vid in store.version_ids(include_partial=True):
        if store.is_complete(vid):
            try:
                m = store.manifest(vid)
            except DistilleryError as exc:
                say(f"warning: {exc}")
                rows.append({"version_id": vid, "step": "(unreadable)", "rows": None, "created_at": None,
                             "names": names.get(vid, [])})
                continue
            rows.append({"version_id": vid, "step": m["step"], "rows": m["num_rows"],
                         "created_at": str(m.get("created_at")), "names": names.get(vid, [])})
        else:
            rows.append({"version_id": vid, "step": "(interrupted)", "rows": None, "created_at": None, "names": []})
    def written(vid: str) -> int:                     # orders versions created within the same second
        with contextlib.suppress(OSError):
            if isinstance(store, Store):
                return os.lstat(store.version_path(vid) / "manifest.json").st_mtime_ns
        return 0

    rows.sort(key=lambda r: (r["created_at"] is None, r["created_at"] or "", written(r["version_id"]),
                             r["version_id"]))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no versions in store {store.root}")
        return
    click.echo(f"{'version':<12}  {'step':<14} {'rows':>9}  {'created (UTC)':<25} names")
    for row in rows:
        rows_text = "-" if row["rows"] is None else str(row["rows"])
        click.echo(f"{row['version_id'][:12]}  {row['step']:<14} {rows_text:>9}  {row['created_at'] or '-':<25} "
                   f"{' '.join(row['names']) or '-'}")


@versions.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest.")
def versions_show(ref: str, as_json: bool) -> None:
    """Show a version and its lineage back to the raw input (--store may be a remote URL)."""
    store = current_store(read_only=True)
    manifest = store.manifest(ref)
    if as_json:
        echo_json(manifest)
        return
    click.echo(describe_version(manifest, store))
    click.echo("  lineage:")
    for entry in store.lineage(ref):
        pad = "    " + "  " * entry["depth"]
        if "raw" in entry:
            click.echo(f"{pad}raw {entry['raw']} (sha256 {str(entry['sha256'])[:12]})")
        else:
            name = f" name={entry['name']}" if entry.get("name") else ""
            click.echo(f"{pad}{entry['version_id'][:12]} {entry['step']} rows={entry.get('num_rows')}{name}")


@versions.command("diff")
@click.argument("ref_a")
@click.argument("ref_b")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def versions_diff(ref_a: str, ref_b: str, as_json: bool) -> None:
    """Compare two versions (step, config, schema, rows, accounting, data); exit 1 when they differ, like diff."""
    store = current_store(read_only=True)
    diff = diff_manifests(store.manifest(ref_a), store.manifest(ref_b))
    if as_json:
        echo_json(diff)
    else:
        for line in describe_diff(diff):
            click.echo(line)
    if not diff["identical"]:
        sys.exit(1)


@versions.command("verify")
@click.argument("refs", nargs=-1)
def versions_verify(refs: tuple[str, ...]) -> None:
    """Re-hash every shard of the given versions (all when none given; --store may be a remote URL, hashed where
    the files lie); exit 1 on corruption."""
    store = current_store(read_only=True)
    if not refs:
        store.check_exists()
    bad = 0
    for ref in refs or store.version_ids():
        try:
            vid = store.resolve(ref)
            problems = store.verify(vid)
        except DistilleryError as exc:
            if refs:
                raise
            bad += 1
            click.echo(f"BROKEN  {ref[:12]} {exc}")
            continue
        if problems:
            bad += 1
            for problem in problems:
                click.echo(f"CORRUPT {vid[:12]} {problem}")
        else:
            click.echo(f"ok      {vid[:12]}")
    if bad:
        raise DistilleryError(f"{bad} version(s) failed verification")


@versions.command("tag")
@click.argument("name_tag")
@click.argument("ref")
def versions_tag(name_tag: str, ref: str) -> None:
    """Point NAME@TAG (or NAME, meaning NAME@latest) at version REF."""
    name, _, tag = name_tag.partition("@")
    vid = current_store().tag(name, tag or "latest", ref)
    click.echo(f"{name}@{tag or 'latest'} -> {vid[:12]}")


@versions.command("gc")
@click.option("--unreferenced", is_flag=True, help="Also delete complete versions no name (or descendant) reaches.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def versions_gc(unreferenced: bool, dry_run: bool) -> None:
    """Delete interrupted writes (and, if asked, unreferenced versions)."""
    report = current_store().gc(unreferenced=unreferenced, dry_run=dry_run)
    for vid in report.deleted:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {vid[:12]}")
    for vid, why in report.skipped.items():
        click.echo(f"kept    {vid[:12]} ({why})")
    click.echo(f"{len(report.deleted)} version folder(s) {'to delete' if dry_run else 'deleted'}")


def _transfer_command(name: str, doc: str) -> click.Command:
    """``versions push REF REMOTE`` / ``versions pull REF REMOTE``."""
    @click.argument("ref")
    @click.argument("remote_url", metavar="REMOTE")
    @click.option("--with-parents", is_flag=True, help="Also copy the version's ancestors (its lineage).")
    @click.option("--force", is_flag=True, help="Move a name that points at another version on the other side.")
    def command(ref: str, remote_url: str, with_parents: bool, force: bool) -> None:
        from pipelines import transfer

        store, remote = current_store(), Remote(remote_url)
        if name == "push":
            report = transfer.push(store, ref, remote, with_parents, force, progress=say)
        else:
            report = transfer.pull(remote, ref, store, with_parents, force, progress=say)
        for vid in report.copied:
            click.echo(f"{name}ed   {vid[:12]}")
        for vid in report.present:
            click.echo(f"present  {vid[:12]} (already complete there)")
        click.echo(f"{report.files_copied} file(s) copied ({report.bytes_copied / 1e6:.1f} MB), {report.files_kept} "
                   f"already there; names: {' '.join(report.refs) or '-'}")

    return versions.command(name, help=doc)(command)


_transfer_command("push", "Copy version REF (and its names) to the remote REMOTE (s3://bucket/prefix, gs://..., "
                          "file:///...): only files it lacks, each checked on arrival, the manifest last.")
_transfer_command("pull", "Copy version REF (and its names) from the remote REMOTE into --store: only files it "
                          "lacks, each checked against the manifest's sha256, the manifest last.")


@cli.command("export")
@click.argument("ref")
@click.argument("destination", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "hf"]), required=True,
              help="jsonl / csv file, or a Hugging Face `save_to_disk` folder.")
def export(ref: str, destination: str, fmt: str) -> None:
    """Export a version to JSONL, CSV (DESTINATION - : stdout) or a Hugging Face `save_to_disk` folder."""
    path = export_version(current_store(), ref, destination, fmt)
    if path is not None:
        click.echo(f"wrote {path}")


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what, where, and how to go on."""
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system"}.get(exc.errno, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return (f"cannot write or read a file: {what}{where}; nothing half-written is visible: fix the cause, then "
            f"rerun the same command (with --resume where it has one) to continue from the last finished chunk "
            f"or checkpoint")


def main() -> None:
    """Entry point: run the CLI, turning user errors into one-line messages and exit code 1."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("DISTILLERY_DEBUG") == "1"
    quiet_libraries()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except DistilleryError as exc:
        if debug:
            raise
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)      # one line, whatever the message holds
        sys.exit(1)
    except OSError as exc:              # a full disk, a read-only store, missing permissions
        if debug:
            raise
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        click.echo(f"error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
