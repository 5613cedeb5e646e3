"""Hostile probes: replay every break of issue 20 ("Trust at the edges") against the distillery CLI.

    .venv/bin/python bench/hostile.py [--only NAME[,NAME...]] [--json report.json] [--spawn] [--keep] [--list]

Each probe works in its own fresh temporary folder, drives the CLI as a careless or hostile user would (crafted
inputs, tampered manifests, chunk records and refs, planted symlinks, FIFOs and device nodes, inputs that change
or are cut while read, huge options, foreign checkpoints), and checks the promise: a one-line ``error: ...`` with
exit 1 (no traceback, no "rerun with --debug" catch-all for a raw exception), nothing outside the store touched
(victim files compared byte for byte), no silent data loss (row accounting adds up), an id that means these bytes
from this input, and honest scores (some score probes use the Python API on tiny models). It prints one line per
probe, ``ok      <probe>  <detail>``, ``BROKEN  <probe>  <what happened>`` or ``skip    <probe>  <why>``, then a
summary line; the exit status is 1 when a probe is BROKEN. ``--only`` takes names or shell patterns
(``--only 'resume-*'``), ``--list`` prints the probes with their issue items.

Every command runs in its own process with a timeout (a hang is BROKEN) and a memory cap (``RLIMIT_AS``, 4 GiB;
tighter, relative to the process's own size, for the bounded-memory probes): an OOM, a MemoryError or a raw
traceback is BROKEN. By default each command is a process forked from this one after it imported the CLI once
(``distillery.cli.main.main`` with ``sys.argv`` set, in a new session, with its own stdout/stderr files,
environment, working folder and limits): importing torch costs each fresh interpreter ~8 CPU seconds, which would
make the ~250 commands take far longer than the few minutes the run is meant to take. ``--spawn`` runs each
command as ``python -m distillery`` instead (the same probes, slower). Every command gets DISTILLERY_PROGRESS=0,
HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1.

Some probes run a few lines of Python in the command's own process before the CLI starts (``chunk_hook`` and
friends): to change an input right after chunk 0 is committed, to kill a writer before a chunk's record (an
interrupted write), to pause a step while ``versions gc`` runs, to plant symlinks at the temporary names that
embed the process id, or to cap memory relative to the process's size. Models are tiny random BERTs
(``tests/conftest.py:build_tiny_bert``, the real bert-base vocabulary, 128 positions), built once in a forked child
with the other shared fixtures (labelled data, a store, a finished fine-tuning run) that probes copy before they
change anything. Probes that need root (``mknod``, running a reader as another user) are skipped when not root; the
device node is made in the probe's folder, never the system's ``/dev/null`` (the code under test may replace it).
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _key, _value in {"DISTILLERY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[_key] = _value
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

GiB = 1 << 30
MEM_CAP = 4 * GiB                 # address space of a command
TIMEOUT = 90                      # seconds a command may take
HANG = 15                         # seconds after which a command that should refuse at once counts as hung
SPAWN_EXTRA = 45                  # --spawn: seconds a fresh interpreter needs to import the CLI on a busy machine
RAW = "rerun with --debug for the traceback"      # the CLI's catch-all line for an unexpected exception
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
SPAWN = False                     # set by --spawn


class Broken(Exception):
    """The promise does not hold; the message says what happened."""


class Skip(Exception):
    """The probe cannot run here; the message says why."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Broken(what)


def one_line(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- running commands -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished command: exit status (negative: killed by that signal), output, and whether it hung."""

    argv: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    def error_line(self) -> str:
        return next((line for line in self.err.splitlines() if line.startswith("error: ")), "")

    @property
    def clean_error(self) -> bool:
        """Exit 1 with one ``error: ...`` line on stderr (nothing after it), no traceback, no catch-all."""
        lines = self.err.splitlines()
        index = next((i for i, line in enumerate(lines) if line.startswith("error: ")), None)
        return (not self.timed_out and self.rc == 1 and index is not None
                and not any(line.strip() for line in lines[index + 1:]) and RAW not in lines[index]
                and "Traceback" not in self.err + self.out)

    @property
    def fine(self) -> bool:
        """Exit 0, or a clean one-line error."""
        return (self.rc == 0 and not self.timed_out and "Traceback" not in self.err) or self.clean_error

    def brief(self) -> str:
        """What happened, in one line."""
        if self.timed_out:
            return f"hung: killed after {self.seconds:.0f} s"
        if self.rc is not None and self.rc < 0:
            names = {s.value: s.name for s in signal.Signals}
            return f"killed by {names.get(-self.rc, -self.rc)} {one_line(self.err[-160:])}".strip()
        if self.clean_error:
            return f"exit 1: {one_line(self.error_line(), 170)}"
        if self.rc == 0:
            return "exit 0"
        lines = [line for line in self.err.splitlines() if line.strip()]
        if "Traceback" in self.err:
            return f"exit {self.rc} with a traceback: {one_line(lines[-1] if lines else '', 160)}"
        error = self.error_line()
        if error:
            after = len(lines) - 1 - lines.index(error)
            return f"exit {self.rc}: {one_line(error, 160)}" + (f" (+{after} more stderr lines)" if after else "")
        return f"exit {self.rc}" + (f": {one_line(lines[-1], 160)}" if lines else "")


def _limit(mem: int | None, uid: int | None) -> None:
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _redirect(stdin: Path | None, out: Path, err: Path) -> None:
    for fd, path, flags in ((0, stdin or os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


SPAWN_RUNNER = ("import sys; hook = sys.argv[1]; sys.argv = ['distillery', *sys.argv[2:]]; "
                "exec(compile(hook, '<probe hook>', 'exec'), {'__name__': '__probe_hook__'}); "
                "from distillery.cli.main import main; main()")


class Handle:
    """A command started in its own session (process group); ``wait`` kills the group when it runs too long."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str | None], timeout: float, mem: int | None,
                 uid: int | None, hook: str | None, stdin: Path | None, logs: Path):
        self.argv = argv
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out, self.err = logs / f"{stamp}.out", logs / f"{stamp}.err"
        self.timeout = timeout + (SPAWN_EXTRA if SPAWN else 0)
        self.started = time.monotonic()
        self.status: int | None = None
        self.popen: subprocess.Popen | None = None
        if SPAWN:
            full = dict(os.environ)
            for key, value in env.items():
                if value is None:
                    full.pop(key, None)
                else:
                    full[key] = value
            cmd = ([sys.executable, "-c", SPAWN_RUNNER, hook, *argv] if hook
                   else [sys.executable, "-m", "distillery", *argv])
            with open(stdin or os.devnull, "rb") as fin, open(self.out, "wb") as fout, open(self.err, "wb") as ferr:
                self.popen = subprocess.Popen(cmd, cwd=cwd, env=full, stdin=fin, stdout=fout, stderr=ferr,
                                              start_new_session=True, preexec_fn=partial(_limit, mem, uid))
            self.pid = self.popen.pid
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        code = 1
        try:                                         # the child: one CLI command, then _exit
            os.setsid()
            _redirect(stdin, self.out, self.err)
            os.chdir(cwd)
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _limit(mem, uid)
            sys.argv = ["distillery", *argv]
            if hook:
                exec(compile(hook, "<probe hook>", "exec"), {"__name__": "__probe_hook__"})
            from distillery.cli.main import main
            main()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - what escapes the CLI is part of the result
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def done(self) -> bool:
        if self.status is not None:
            return True
        if self.popen is not None:
            if self.popen.poll() is None:
                return False
            self.status = self.popen.returncode
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status = os.waitstatus_to_exitcode(status)
        return True

    def wait(self) -> Run:
        timed_out = False
        while not self.done():
            if time.monotonic() - self.started > self.timeout:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)           # the command and its helpers
                timed_out = True
                if self.popen is not None:
                    self.status = self.popen.wait()
                else:
                    self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
                break
            time.sleep(0.02)
        return Run(self.argv, self.status, self.out.read_text(errors="replace"),
                   self.err.read_text(errors="replace"), time.monotonic() - self.started, timed_out)


def api(fn: Callable[..., Any], *args: Any, timeout: float, logs: Path) -> Any:
    """``fn(*args)`` in a forked child (this process never runs torch itself, so forking stays safe); returns
    its JSON result. A hang or an exception is Broken, naming it."""
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"api-{time.monotonic_ns()}.json"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            _redirect(None, result.with_suffix(".out"), result.with_suffix(".err"))
            _limit(MEM_CAP, None)
            value = {"value": fn(*args)}
        except BaseException:  # noqa: BLE001
            value = {"error": traceback.format_exc()}
        try:
            result.write_text(json.dumps(value, default=str))
        finally:
            os._exit(0)
    started = time.monotonic()
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() - started > timeout + (SPAWN_EXTRA if SPAWN else 0):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Broken(f"{fn.__name__} hung (killed after {timeout} s)")
        time.sleep(0.05)
    if not result.exists():
        raise Broken(f"{fn.__name__} died: {one_line(result.with_suffix('.err').read_text(errors='replace')[-300:])}")
    data = json.loads(result.read_text())
    if "error" in data:
        raise Broken(f"{fn.__name__} raised: {one_line(data['error'].strip().splitlines()[-1])}")
    return data["value"]


# ---- the store as files (read here without the store's code, which is what is under test) -----------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ref_id(store: Path, name: str, tag: str = "latest") -> str | None:
    path = store / "refs" / name / tag
    return path.read_text().strip() if path.is_file() else None


def complete_versions(store: Path) -> list[str]:
    folder = store / "versions"
    return sorted(p.name for p in folder.iterdir() if (p / "manifest.json").is_file()) if folder.is_dir() else []


def partial_versions(store: Path) -> list[str]:
    folder = store / "versions"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not (p / "manifest.json").exists())


def manifest(store: Path, vid: str) -> dict[str, Any]:
    return json.loads((store / "versions" / vid / "manifest.json").read_text())


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(json.dumps(data if new is None else new, indent=2) + "\n")


def confined(folder: Path, relative: Any) -> Path:
    """The regular file ``relative`` names inside ``folder``; Broken when it leaves it or is not a plain file."""
    expect(isinstance(relative, str) and not os.path.isabs(relative) and ".." not in Path(relative).parts,
           f"the manifest names {relative!r}, not a path inside the version")
    path = folder / relative
    expect(os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep) and not path.is_symlink(),
           f"{relative} resolves outside the version ({os.path.realpath(path)})")
    expect(stat.S_ISREG(os.lstat(path).st_mode), f"{relative} is not a regular file")
    return path


def version_column(store: Path, vid: str, column: str = "text") -> list[Any]:
    """A column of a complete version, its shards read only when they are plain files inside the version and
    match the manifest's sha256 (anything else is Broken)."""
    folder = store / "versions" / vid
    values: list[Any] = []
    for entry in manifest(store, vid)["shards"]:
        path = confined(folder, entry["path"])
        expect(sha256_file(path) == entry["sha256"], f"{entry['path']}: its bytes differ from the manifest's sha256")
        values += pq.read_table(path, columns=[column]).column(column).to_pylist()
    return values


def snapshot(folder: Path) -> dict[str, Any]:
    """Every entry below ``folder`` (symlinks not followed): kind and content hash, to compare before / after."""
    out: dict[str, Any] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            key = str(path.relative_to(folder))
            if stat.S_ISLNK(mode):
                out[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                out[key] = ("file", sha256_file(path))
            elif not stat.S_ISDIR(mode):
                out[key] = ("special", stat.S_IFMT(mode))
    return out


def store_files(store: Path) -> dict[str, Any]:
    """The store's versions and refs as they are (locks and other bookkeeping left out)."""
    return {part: snapshot(store / part) for part in ("versions", "refs") if (store / part).is_dir()}


def texts(n: int, tag: str = "") -> list[str]:
    """``n`` distinct short texts (no duplicates, nothing the clean-up changes)."""
    return [f"{WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} row {i}{tag}" for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, values: list[str], column: str = "text") -> Path:
    pq.write_table(pa.table({column: pa.array(values, pa.string()),
                             "row_id": pa.array(range(len(values)), pa.int64())}), path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- hooks: Python run inside a command's process before the CLI starts ------------------------------------------
def chunk_hook(index: int, action: str, before: bool = False) -> str:
    """Run ``action`` (code) when chunk ``index`` is committed: just after its record is written, or (``before``)
    just before, once its shards are written. The hook wraps the store's one way of writing a chunk's record
    (``write_json_atomic`` of ``chunks/NNNNN.json``), whichever writer method gets there."""
    body = "\n".join("        " + line for line in action.strip().splitlines())
    return (f"import os, time\nfrom pathlib import Path\nimport pipelines.store as _store\n"
            f"_write_json = _store.write_json_atomic\n"
            f"def _hooked(path, *args, **kwargs):\n"
            f"    chunk = Path(path).parent.name == 'chunks' and Path(path).name == '{index:05d}.json'\n"
            f"    if chunk and {before}:\n{body}\n"
            f"    result = _write_json(path, *args, **kwargs)\n"
            f"    if chunk and not {before}:\n{body}\n"
            f"    return result\n"
            f"_store.write_json_atomic = _hooked\n")


def pause_hook(index: int, signal_file: Path, go_file: Path) -> str:
    """After chunk ``index`` is committed: create ``signal_file`` and wait (at most 120 s) for ``go_file``."""
    return chunk_hook(index, f"Path({str(signal_file)!r}).touch()\n"
                             f"deadline = time.monotonic() + 120\n"
                             f"while not Path({str(go_file)!r}).exists() and time.monotonic() < deadline:\n"
                             f"    time.sleep(0.05)")


def kill_hook(index: int) -> str:
    """The process dies (exit 17) just before it writes chunk ``index``: an interrupted write."""
    return chunk_hook(index, "os._exit(17)", before=True)


def relative_memory_hook(headroom: int) -> str:
    """Cap the address space at the process's own size plus ``headroom`` bytes, measured once the CLI's modules are
    imported and Arrow's memory pool has reserved its first arena (mimalloc reserves 1 GiB of address space)."""
    return ("import importlib, resource\n"
            "for _module in ('distillery.cli.main', 'distillery.cli.preprocess', 'preprocess.step'):\n"
            "    importlib.import_module(_module)\n"
            "import pyarrow\npyarrow.allocate_buffer(1 << 20)\n"
            "_size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
            f"resource.setrlimit(resource.RLIMIT_AS, (_size + {headroom}, _size + {headroom}))\n")


# ---- probe context and fixtures ----------------------------------------------------------------------------------
class Ctx:
    """A probe's fresh folder (``work``), its store (``work/store``) and the shared read-only fixtures."""

    def __init__(self, work: Path, fix: Fixtures | None):
        self.work = work
        self.fix = fix
        self.logs = work / ".logs"
        self.store = work / "store"

    def start(self, *args: str, store: Path | None = None, timeout: float = TIMEOUT, mem: int | None = MEM_CAP,
              cwd: Path | None = None, env: dict[str, str | None] | None = None, hook: str | None = None,
              uid: int | None = None, stdin: Path | None = None) -> Handle:
        argv = ["--store", str(store or self.store), *args]
        return Handle(argv, cwd or self.work, env or {}, timeout, mem, uid, hook, stdin, self.logs)

    def cli(self, *args: str, **kwargs: Any) -> Run:
        return self.start(*args, **kwargs).wait()

    def api(self, fn: Callable[..., Any], *args: Any, timeout: float = 180) -> Any:
        return api(fn, *args, timeout=timeout, logs=self.logs)

    @staticmethod
    def ok(run: Run, what: str) -> Run:
        """``run`` must have succeeded (a step the probe needs)."""
        expect(run.rc == 0 and not run.timed_out, f"{what} failed: {run.brief()}")
        return run

    def copy_store(self) -> Path:
        """A private copy of the fixture store (labelled versions ``lab`` and ``dev``)."""
        assert self.fix is not None
        shutil.copytree(self.fix.store(), self.store, symlinks=True)
        return self.store

    def preprocess(self, path: Path, *args: str, name: str | None = "v", hook: str | None = None) -> str:
        """Preprocess ``path`` into this probe's store; the new version's id."""
        before = set(complete_versions(self.store))
        run = self.ok(self.cli("preprocess", str(path), *args, *(["--name", name] if name else []), hook=hook),
                      "preprocess")
        new = sorted(set(complete_versions(self.store)) - before)
        if name:
            return ref_id(self.store, name) or ""
        expect(len(new) == 1, f"preprocess made {len(new)} new versions ({run.brief()})")
        return new[0]

    def vdir(self, vid: str) -> Path:
        return self.store / "versions" / vid


def _build_models(fix: str) -> None:
    """Tiny random BERTs: a masked LM, and a classifier teacher (labels neg, pos) that always predicts neg, whose
    [PAD] embedding row is not zero (as a trained teacher's), plus the same teacher with the label order swapped."""
    import torch
    from conftest import build_tiny_bert
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = Path(fix)
    build_tiny_bert(root / "mlm", seed=0)
    build_tiny_bert(root / "teacher", num_labels=2, seed=1)
    model = AutoModelForSequenceClassification.from_pretrained(root / "teacher")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, 0.0]))
        model.bert.embeddings.word_embeddings.weight[model.config.pad_token_id].normal_(0.0, 1.0)
    for folder, labels in (("teacher", ["neg", "pos"]), ("teacher-swapped", ["pos", "neg"])):
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
        model.save_pretrained(root / folder)
        AutoTokenizer.from_pretrained(root / "mlm").save_pretrained(root / folder)


TRAINING = ["--batch-size", "8", "--num-workers", "0", "--threads", "1"]
FINETUNE_ARGS = ["--max-steps", "2", "--max-seq-length", "64", "--eval-ref", "lab", "--checkpoint-every", "1",
                 "--no-prune-checkpoints", *TRAINING]


class Fixtures:
    """Shared inputs, built once when a probe first needs them and only read by probes (which copy what they
    change): tiny models, labelled data, a store with versions ``lab`` and ``dev``, a finished fine-tuning run."""

    def __init__(self, root: Path):
        self.root = root
        self._done: set[str] = set()
        self.ctx = Ctx(root, None)

    def _once(self, key: str, build: Callable[[], None]) -> None:
        if key not in self._done:
            build()
            self._done.add(key)

    def models(self) -> Path:
        self._once("models", lambda: self.ctx.api(_build_models, str(self.root)))
        return self.root

    @property
    def mlm(self) -> str:
        return str(self.models() / "mlm")

    @property
    def teacher(self) -> str:
        return str(self.models() / "teacher")

    def labelled(self) -> Path:
        """lab.jsonl: 24 rows labelled neg / pos, four of them 300 words long (more than 128 positions); dev.jsonl:
        256 short rows."""
        def build() -> None:
            rows = [{"text": text, "label": "neg" if i % 2 else "pos"} for i, text in enumerate(texts(20))]
            rows += [{"text": " ".join(WORDS[j % 12] for j in range(300)) + f" long {i}", "label": "pos"}
                     for i in range(4)]
            write_jsonl(self.root / "lab.jsonl", rows)
            write_jsonl(self.root / "dev.jsonl", [{"text": t, "label": "neg" if i % 3 else "pos"}
                                                  for i, t in enumerate(texts(256, " held out"))])
        self._once("labelled", build)
        return self.root / "lab.jsonl"

    def store(self) -> Path:
        def build() -> None:
            lab = self.labelled()
            for name, path in (("lab", lab), ("dev", lab.with_name("dev.jsonl"))):
                self.ctx.ok(self.ctx.cli("preprocess", str(path), "--label-column", "label", "--name", name),
                            f"fixture preprocess {name}")
        self._once("store", build)
        return self.ctx.store

    def run(self) -> Path:
        """A finished fine-tuning run (FINETUNE_ARGS) of the tiny masked LM on ``lab``, its checkpoints kept."""
        def build() -> None:
            self.store()
            self.ctx.ok(self.ctx.cli("distill", "finetune", "lab", "--model", self.mlm, "--output",
                                     str(self.root / "run"), *FINETUNE_ARGS, timeout=240), "fixture finetune")
        self._once("run", build)
        return self.root / "run"


@dataclass
class Probe:
    name: str
    item: str
    fn: Callable[[Ctx], str]


PROBES: list[Probe] = []


def register(item: str, name: str, fn: Callable[..., str], **kwargs: Any) -> None:
    PROBES.append(Probe(name, item, partial(fn, **kwargs) if kwargs else fn))


# ---- 1. the id ignores the resolved input format ------------------------------------------------------------------
JSONL_BYTES = b'{"text": "hello world", "n": 1}\n{"text": "second row", "n": 2}\n'
DELIMITED_BYTES = b'text\n"hello, world"\na,b\nplain\n'
PARSES = {"txt": ['{"text": "hello world", "n": 1}', '{"text": "second row", "n": 2}'],
          "jsonl": ["hello world", "second row"], "tsv": ['"hello, world"', "a,b", "plain"],
          "csv": ["hello, world", "plain"]}


def same_bytes_other_format(ctx: Ctx, first: str, second: str, data: bytes) -> str:
    """The same bytes saved as ``same.<first>`` then ``same.<second>``: two parses, two versions."""
    (ctx.work / f"same.{first}").write_bytes(data)
    one = ctx.preprocess(ctx.work / f"same.{first}", name="first")
    (ctx.work / f"same.{second}").write_bytes(data)
    run = ctx.cli("preprocess", str(ctx.work / f"same.{second}"), "--name", "second")
    expect(run.rc == 0, f"preprocess same.{second}: {run.brief()}")
    two = ref_id(ctx.store, "second") or ""
    reused = ", 'up to date'" if "up to date" in run.out else ""
    expect(two != one, f"same.{second} got the id of the {first} parse ({one[:12]}{reused})")
    got = version_column(ctx.store, two)
    expect(got == PARSES[second], f"the {second} version holds {got}, not its own parse {PARSES[second]}")
    return f"{first} {one[:8]} and {second} {two[:8]}: two versions, each its own parse"


register("1", "id-format-txt-then-jsonl", same_bytes_other_format, first="txt", second="jsonl", data=JSONL_BYTES)
register("1", "id-format-jsonl-then-txt", same_bytes_other_format, first="jsonl", second="txt", data=JSONL_BYTES)
register("1", "id-format-tsv-then-csv", same_bytes_other_format, first="tsv", second="csv", data=DELIMITED_BYTES)
register("1", "id-format-csv-then-tsv", same_bytes_other_format, first="csv", second="tsv", data=DELIMITED_BYTES)


def same_bytes_in_folders(ctx: Ctx) -> str:
    """Folder inputs: a/same.txt then b/same.jsonl (folders expand to their files, each with its own format)."""
    for folder, ext in (("a", "txt"), ("b", "jsonl")):
        (ctx.work / folder).mkdir()
        (ctx.work / folder / f"same.{ext}").write_bytes(JSONL_BYTES)
    one = ctx.preprocess(ctx.work / "a", name="first")
    two = ctx.preprocess(ctx.work / "b", name="second")
    expect(two != one, f"folder b/ (same.jsonl) got the id of folder a/ (same.txt): {one[:12]}")
    got = version_column(ctx.store, two)
    expect(got == PARSES["jsonl"], f"the jsonl folder's version holds {got}")
    return f"{one[:8]} vs {two[:8]}"


register("1", "id-format-folders", same_bytes_in_folders)


def same_parse_renamed(ctx: Ctx) -> str:
    """The same bytes as same.jsonl then renamed.ndjson (one format, one parse): the same version, up to date (the
    id holds the resolved format, not the file's name)."""
    (ctx.work / "same.jsonl").write_bytes(JSONL_BYTES)
    one = ctx.preprocess(ctx.work / "same.jsonl", name="first")
    (ctx.work / "renamed.ndjson").write_bytes(JSONL_BYTES)
    two = ctx.preprocess(ctx.work / "renamed.ndjson", name="second")
    expect(two == one, f"the same parse got another id ({one[:12]} vs {two[:12]}): the name entered the identity")
    return f"one version {one[:8]} for both names"


register("1", "id-same-parse-renamed", same_parse_renamed)


# ---- 2. an input that changes while it is read --------------------------------------------------------------------
def changing_input(ctx: Ctx, change: str) -> str:
    """40,000 lines (1.6 MB: more than the first read), 5,000 per chunk; right after chunk 0 is committed the file
    grows (500 lines appended), is rewritten in place (same size, other words in its last 500 kB) or shrinks to
    half. Refused in one line with nothing kept, or a version whose rows are the bytes its sha256 names."""
    lines = [f"{i:06d} {WORDS[i % 12]} {WORDS[(i * 7) % 12]} {WORDS[(i * 5) % 12]} line" for i in range(40_000)]
    original = "".join(line + "\n" for line in lines).encode()
    path = ctx.work / "input.txt"
    path.write_bytes(original)
    if change == "grows":
        extra = "".join(f"{i:06d} appended later\n" for i in range(40_000, 40_500)).encode()
        final, action = original + extra, f"open({str(path)!r}, 'ab').write({extra!r})"
    elif change == "rewritten":
        cut = len(original) - 500_000
        tail = original[cut:].replace(b"alpha", b"omega")
        final, action = original[:cut] + tail, (f"fh = open({str(path)!r}, 'r+b'); fh.seek({cut}); "
                                                f"fh.write({tail!r}); fh.close()")
    else:
        final, action = original[: len(original) // 2], f"os.truncate({str(path)!r}, {len(original) // 2})"
    run = ctx.cli("preprocess", str(path), "--chunk-rows", "5000", "--name", "v", hook=chunk_hook(0, action))
    records = list((ctx.store / "versions").glob("*/chunks/*.json")) if (ctx.store / "versions").exists() else []
    if run.clean_error:
        expect(not complete_versions(ctx.store), "refused, yet a complete version exists")
        expect(not records, f"refused, but {len(records)} chunk(s) written from the changed input were kept")
        return f"refused, nothing kept: {run.brief()}"
    expect(run.rc == 0, f"{run.brief()}")
    vid = ref_id(ctx.store, "v") or ""
    m = manifest(ctx.store, vid)
    recorded, rows = m["parents"][0]["sha256"], version_column(ctx.store, vid)
    for label, content in (("original", original), ("changed", final)):
        if recorded == hashlib.sha256(content).hexdigest():
            wanted = [line for line in content.decode().split("\n") if line]
            expect(rows == wanted, f"exit 0: the id names the {label} file's sha256 but the version holds "
                                   f"{len(rows)} rows (input_rows {m['accounting'].get('input_rows')}); the "
                                   f"{label} file has {len(wanted)}")
            return f"exit 0: the version is exactly the {label} bytes its sha256 names ({len(rows)} rows)"
    raise Broken(f"exit 0: the recorded sha256 {recorded[:12]} is neither the original nor the changed file "
                 f"({len(rows)} rows)")


for _change in ("grows", "rewritten", "shrinks"):
    register("2", f"input-{_change}-while-read", changing_input, change=_change)


# ---- 3. truncated compressed inputs -------------------------------------------------------------------------------
def truncated(ctx: Ctx, kind: str) -> str:
    """A 5,000-row JSONL compressed and cut: the read must fail in one line, never lose rows silently."""
    import zstandard

    data = "".join(json.dumps({"text": f"row {i} {WORDS[i % 12]}"}) + "\n" for i in range(5000)).encode()
    if kind == "zst-one-frame-half":
        blob = zstandard.ZstdCompressor().compress(data)
        blob, name = blob[: len(blob) // 2], "in.jsonl.zst"
    elif kind == "zst-multi-frame-cut":
        parts = [data[i: i + len(data) // 4] for i in range(0, len(data), len(data) // 4)]
        frames = [zstandard.ZstdCompressor().compress(part) for part in parts]
        blob, name = b"".join(frames[:2]) + frames[2][: len(frames[2]) // 2], "in.jsonl.zst"
    elif kind == "zst-last-bytes-cut":
        blob, name = zstandard.ZstdCompressor(write_checksum=True).compress(data)[:-3], "in.jsonl.zst"
    elif kind == "zst-no-content-size-cut":
        blob = zstandard.ZstdCompressor(write_content_size=False).compress(data)
        blob, name = blob[: len(blob) * 2 // 3], "in.txt.zst"
    else:
        blob = gzip.compress(data)
        blob, name = blob[: len(blob) // 2], "in.jsonl.gz"
    (ctx.work / name).write_bytes(blob)
    run = ctx.cli("preprocess", str(ctx.work / name), "--name", "v", timeout=HANG * 2)
    if run.clean_error:
        expect(not complete_versions(ctx.store), "refused, yet a version was written")
        return f"refused: {run.brief()}"
    if run.rc == 0:
        acc = manifest(ctx.store, ref_id(ctx.store, "v") or "")["accounting"]
        lost = 5000 - acc.get("kept", 0) - sum(acc.get("rejected", {}).values()) - sum(acc.get("dropped", {}).values())
        raise Broken(f"exit 0 on a cut file: {acc.get('kept')} kept + {sum(acc.get('rejected', {}).values())} "
                     f"rejected of 5000 rows, {lost} rows nowhere")
    raise Broken(run.brief())


for _kind in ("zst-one-frame-half", "zst-multi-frame-cut", "zst-last-bytes-cut", "zst-no-content-size-cut",
              "gz-half"):
    register("3", f"truncated-{_kind}", truncated, kind=_kind)


# ---- 4. resume trusts chunk records -------------------------------------------------------------------------------
def interrupted(ctx: Ctx) -> tuple[Path, str, dict[str, Any]]:
    """40 rows, 20 per chunk; the writer dies before chunk 1: (input, partial version id, record of chunk 0)."""
    path = write_jsonl(ctx.work / "input.jsonl", [{"text": t} for t in texts(40)])
    run = ctx.cli("preprocess", str(path), "--chunk-rows", "20", "--name", "v", hook=kill_hook(1))
    expect(run.rc == 17, f"the interrupted write did not happen as planned: {run.brief()}")
    partial_ids = partial_versions(ctx.store)
    expect(len(partial_ids) == 1, f"{len(partial_ids)} interrupted versions")
    record = json.loads((ctx.vdir(partial_ids[0]) / "chunks" / "00000.json").read_text())
    return path, partial_ids[0], record


def shard_entry(path: Path, rows: int) -> dict[str, Any]:
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def resume_tampered(ctx: Ctx, tamper: str) -> str:
    """Chunk 0 of an interrupted write is tampered with, then ``--resume``: refused in one line, or a version that
    holds exactly the input's rows (shards inside the version, sha256s right, num_rows = accounting.kept)."""
    path, vid, record = interrupted(ctx)
    folder = ctx.vdir(vid)
    secret = write_parquet(ctx.work / "secret.parquet", ["SECRET one", "SECRET two", "SECRET three"])
    twenty = write_parquet(ctx.work / "secret20.parquet", [f"SECRET {i}" for i in range(20)])   # chunk 0's rows
    shard = folder / record["shard"]["path"]
    if tamper == "record-dotdot":
        record["shard"].update(path="../../../secret20.parquet", **shard_entry(twenty, 20))
    elif tamper == "record-absolute":
        record["shard"].update(path=str(twenty), **shard_entry(twenty, 20))
    elif tamper == "record-other-version":
        other = ctx.preprocess(write_jsonl(ctx.work / "other.jsonl", [{"text": t} for t in texts(20, " SECRET")]),
                               name="other")
        entry = manifest(ctx.store, other)["shards"][0]
        record["shard"] = {**entry, "path": f"../{other}/{entry['path']}"}
    elif tamper == "shard-swapped":                       # the shard replaced, its record updated to match
        shutil.copyfile(secret, shard)
        record["shard"].update(**shard_entry(shard, 3))
    elif tamper == "shard-symlink":
        shard.unlink()
        shard.symlink_to(twenty)
        record["shard"].update(**shard_entry(twenty, 20))
    else:                                                 # bit rot: one byte of the shard flipped, record as it was
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x20
        shard.write_bytes(bytes(data))
    (folder / "chunks" / "00000.json").write_text(json.dumps(record, indent=2))
    run = ctx.cli("preprocess", str(path), "--chunk-rows", "20", "--name", "v", "--resume")
    if run.clean_error:
        return f"refused: {run.brief()}"
    expect(run.rc == 0, run.brief())
    vid = ref_id(ctx.store, "v") or ""
    m = manifest(ctx.store, vid)
    expect(m["num_rows"] == m["accounting"].get("kept"),
           f"exit 0: num_rows {m['num_rows']} != accounting.kept {m['accounting'].get('kept')}, nothing noticed")
    try:
        rows = version_column(ctx.store, vid)
    except Broken as exc:
        raise Broken(f"exit 0, but {exc}") from None
    expect(not any("SECRET" in t for t in rows), f"exit 0: the resumed version holds rows from outside: "
                                                 f"{[t for t in rows if 'SECRET' in t][:2]}")
    expect(rows == texts(40), f"exit 0: {len(rows)} rows, not the input's 40")
    return "resume re-checked chunk 0 and wrote the input's own rows"


for _tamper in ("record-dotdot", "record-absolute", "record-other-version", "shard-swapped", "shard-symlink",
                "shard-bitrot"):
    register("4", f"resume-{_tamper}", resume_tampered, tamper=_tamper)


# ---- 5. paths read from manifests and refs are confined to their version -------------------------------------------
def two_versions(ctx: Ctx) -> tuple[str, str]:
    """Version ``v`` (4 rows and one reject) and an intact second version ``g2``."""
    rows = [json.dumps({"text": t}) for t in texts(4)] + ["not json"]
    (ctx.work / "v.jsonl").write_text("\n".join(rows) + "\n")
    vid = ctx.preprocess(ctx.work / "v.jsonl", name="v")
    other = ctx.preprocess(write_jsonl(ctx.work / "g2.jsonl", [{"text": t} for t in texts(3, " second")]), name="g2")
    return vid, other


def refuses_bad_version(ctx: Ctx, vid: str, other: str, outside_marker: str | None,
                        export_must_fail: bool = True) -> str:
    """``versions verify v``, the whole-store ``versions verify`` and ``export v`` on a version that breaks
    confinement: refused quickly in one line (whole-store: the bad version named, the good one still ok). With
    ``export_must_fail`` False (only a rejects file is bad, which export does not read) export may also succeed."""
    one = ctx.cli("versions", "verify", "v", timeout=HANG)
    expect(one.rc == 1 and not one.timed_out and "Traceback" not in one.err,
           f"versions verify v: {one.brief()}" + (" (said ok)" if f"ok      {vid[:12]}" in one.out else ""))
    every = ctx.cli("versions", "verify", timeout=HANG)
    expect(every.rc == 1 and not every.timed_out and "Traceback" not in every.err and RAW not in every.err,
           f"versions verify (whole store): {every.brief()}")
    expect(vid[:12] in every.out + every.err, "whole-store verify did not name the bad version")
    expect(f"ok      {other[:12]}" in every.out, f"whole-store verify did not go on to the intact version "
                                                f"({one_line(every.out[-120:])})")
    out = ctx.work / "out.jsonl"
    export = ctx.cli("export", "v", str(out), "--format", "jsonl", timeout=HANG)
    leaked = out.exists() and outside_marker is not None and outside_marker in out.read_text(errors="replace")
    expect(not leaked, "export wrote rows read from outside the version")
    if not export_must_fail and export.rc == 0:
        rows = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        expect(rows == texts(4), f"export v wrote {len(rows)} rows, not the version's 4")
        return f"verify names it; export (shards only) still right: {len(rows)} rows"
    expect(export.clean_error, f"export v: {export.brief()}")
    expect(not out.exists(), "export failed but left out.jsonl")
    return f"verify and export refuse it: {export.brief()}"


def tampered_manifest(ctx: Ctx, how: str) -> str:
    vid, other = two_versions(ctx)
    folder = ctx.vdir(vid)
    outside = write_parquet(ctx.work / "outside.parquet", ["OUTSIDE one", "OUTSIDE two"])
    passwd = Path("/etc/passwd")
    marker = "OUTSIDE"

    def shard0(change: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        def edit(m: dict[str, Any]) -> None:              # num_rows kept the shards' sum: only the path is wrong
            m["shards"][0].update(change)
            m["num_rows"] = sum(s["rows"] for s in m["shards"])
        return edit

    if how == "shard-absolute":
        edit_json(folder / "manifest.json", shard0({"path": str(outside), **shard_entry(outside, 2)}))
    elif how == "shard-dotdot":
        edit_json(folder / "manifest.json", shard0({"path": "../../../outside.parquet", **shard_entry(outside, 2)}))
    elif how == "shard-etc-passwd":
        marker = "root:"
        edit_json(folder / "manifest.json", shard0({"path": "../" * 16 + "etc/passwd", **shard_entry(passwd, 1)}))
    elif how == "shard-dev-zero":
        edit_json(folder / "manifest.json", shard0({"path": "/dev/zero"}))
    elif how == "rejects-dev-zero":
        edit_json(folder / "manifest.json", lambda m: m["rejects"][0].update(path="/dev/zero"))
        return refuses_bad_version(ctx, vid, other, None, export_must_fail=False)
    elif how == "shard-symlink-passwd":
        marker = "root:"
        shard = folder / manifest(ctx.store, vid)["shards"][0]["path"]
        shard.unlink()
        shard.symlink_to(passwd)
        edit_json(folder / "manifest.json", shard0(shard_entry(passwd, 4)))
    elif how == "shard-symlink-other-version":
        marker = "second"
        entry = manifest(ctx.store, other)["shards"][0]
        shard = folder / manifest(ctx.store, vid)["shards"][0]["path"]
        shard.unlink()
        shard.symlink_to(ctx.vdir(other) / entry["path"])
        edit_json(folder / "manifest.json", shard0({k: entry[k] for k in ("rows", "bytes", "sha256")}))
    elif how == "shards-a-string":
        edit_json(folder / "manifest.json", lambda m: m.update(shards=m["shards"][0]["path"]))
    elif how == "shards-a-dict":
        edit_json(folder / "manifest.json", lambda m: m.update(shards=m["shards"][0]))
    elif how == "shard-entries-strings":
        edit_json(folder / "manifest.json", lambda m: m.update(shards=[s["path"] for s in m["shards"]]))
    return refuses_bad_version(ctx, vid, other, marker)


for _how in ("shard-absolute", "shard-dotdot", "shard-etc-passwd", "shard-dev-zero", "rejects-dev-zero",
             "shard-symlink-passwd", "shard-symlink-other-version", "shards-a-string", "shards-a-dict",
             "shard-entries-strings"):
    register("5", f"manifest-{_how}", tampered_manifest, how=_how)


def ref_outside(ctx: Ctx, where: str) -> str:
    """refs/v/latest holds a path (``../x`` into the store root, or an absolute path) to a complete version
    folder planted outside ``versions/`` (its manifest names it PLANTED): every command refuses the ref in one
    line and reads nothing of that folder."""
    vid, other = two_versions(ctx)
    planted = ctx.store / "x" if where == "dotdot" else ctx.work / "elsewhere" / other
    shutil.copytree(ctx.vdir(other), planted)
    edit_json(planted / "manifest.json", lambda m: m.update(name="PLANTED"))
    (ctx.store / "refs" / "v" / "latest").write_text(("../x" if where == "dotdot" else str(planted)) + "\n")
    out = ctx.work / "out.jsonl"
    for args in (["export", "v", str(out), "--format", "jsonl"], ["versions", "show", "v", "--json"],
                 ["versions", "show", "v"], ["versions", "diff", "v", "g2"]):
        run = ctx.cli(*args, timeout=HANG)
        command = " ".join(args[:3] if args[0] == "versions" else args[:2])
        expect("PLANTED" not in run.out + run.err and not out.exists(),
               f"{command} read the planted folder through the ref ({run.brief()})")
        expect(run.clean_error, f"{command}: {run.brief()}")
    listing = ctx.cli("versions", "list", timeout=HANG)
    expect(listing.rc in (0, 1) and "Traceback" not in listing.err and RAW not in listing.err,
           f"versions list: {listing.brief()}")
    return f"export, show and diff refuse the ref: {run.brief()}"


register("5", "ref-holding-dotdot", ref_outside, where="dotdot")
register("5", "ref-holding-absolute-path", ref_outside, where="absolute")


# ---- 6. symlinked, hard-linked and special lock files ----------------------------------------------------------------
def lock_of_rewrite(ctx: Ctx) -> tuple[Path, Path]:
    """Preprocess once, then delete the version so that the same command writes it again: (input, its lock)."""
    path = write_jsonl(ctx.work / "input.jsonl", [{"text": t} for t in texts(6)])
    vid = ctx.preprocess(path, name=None)
    shutil.rmtree(ctx.vdir(vid))
    lock = ctx.store / "locks" / f"{vid}.lock"
    lock.unlink(missing_ok=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    return path, lock


def planted_lock(ctx: Ctx, kind: str) -> str:
    """A version's lock file is a symlink to a victim, a dangling symlink, or a hard link to a victim; the write
    must leave the victim as it was (and create nothing through the link)."""
    path, lock = lock_of_rewrite(ctx)
    victim = ctx.work / "victim.txt"
    victim.write_bytes(b"precious bytes\n")
    target = ctx.work / "created-through-lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        lock.symlink_to(target)
    else:
        os.link(victim, lock)
    run = ctx.cli("preprocess", str(path), timeout=HANG * 2)
    expect(victim.read_bytes() == b"precious bytes\n", f"the victim was rewritten: {victim.read_bytes()[:60]!r} "
                                                       f"({run.brief()})")
    expect(not target.exists(), f"the write created {target.name} through the dangling lock link ({run.brief()})")
    expect(run.fine, run.brief())
    return f"victim untouched ({run.brief()})"


for _kind in ("symlink", "dangling-symlink", "hardlink"):
    register("6", f"lock-{_kind}", planted_lock, kind=_kind)


def lock_fifo_gc(ctx: Ctx) -> str:
    """An interrupted version whose lock is a symlink to a FIFO: ``versions gc`` must not block on it."""
    path = write_jsonl(ctx.work / "input.jsonl", [{"text": t} for t in texts(6)])
    ctx.cli("preprocess", str(path), "--chunk-rows", "2", hook=kill_hook(1))
    partial_ids = partial_versions(ctx.store)
    expect(len(partial_ids) == 1, "no interrupted version to collect")
    os.mkfifo(ctx.work / "pipe")
    lock = ctx.store / "locks" / f"{partial_ids[0]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.unlink(missing_ok=True)
    lock.symlink_to(ctx.work / "pipe")
    run = ctx.cli("versions", "gc", "--dry-run", timeout=HANG)
    expect(run.fine, f"versions gc: {run.brief()}")
    return run.brief()


register("6", "lock-symlink-to-fifo-gc", lock_fifo_gc)


def run_folder_lock(ctx: Ctx) -> str:
    """A run folder's .lock is a symlink to a victim: training must leave the victim as it was."""
    ctx.copy_store()
    victim = ctx.work / "victim.txt"
    victim.write_bytes(b"precious bytes\n")
    (ctx.work / "proj").mkdir()
    (ctx.work / "proj" / ".lock").symlink_to(victim)
    run = ctx.cli("distill", "finetune", "lab", "--model", ctx.fix.mlm, "--output", str(ctx.work / "proj"),
                  "--max-steps", "1", *TRAINING, timeout=180)
    expect(victim.read_bytes() == b"precious bytes\n", f"the victim was rewritten ({run.brief()})")
    expect(run.fine, run.brief())
    return f"victim untouched ({run.brief()})"


register("6", "run-folder-lock-symlink", run_folder_lock)


def run_folder_symlinks(ctx: Ctx) -> str:
    """An interrupted run folder of ours whose config.json, loss.png and metrics.jsonl were replaced by symlinks to
    victims: resuming writes none of them through the links."""
    run_dir = run_copy(ctx)
    (run_dir / "finished.json").unlink()
    shutil.rmtree(run_dir / "model")
    victims = {}
    for name in ("config.json", "loss.png", "metrics.jsonl"):
        victim = ctx.work / f"victim-{name}"
        victim.write_bytes(b'{"step": 0, "precious": "%s"}\n' % name.encode())     # JSON, as a run reads
        victims[victim] = victim.read_bytes()
        (run_dir / name).unlink(missing_ok=True)
        (run_dir / name).symlink_to(victim)
    run = ctx.cli("distill", "finetune", "lab", "--model", ctx.fix.mlm, "--output", str(run_dir), *FINETUNE_ARGS,
                  "--resume", timeout=180)
    changed = [v.name for v, data in victims.items() if v.read_bytes() != data]
    expect(not changed, f"written through the run folder's symlinks: {', '.join(changed)} ({run.brief()})")
    expect(run.fine, run.brief())
    return f"victims untouched ({run.brief()})"


register("6", "run-folder-file-symlinks", run_folder_symlinks)


# ---- 7. export's temporary names -------------------------------------------------------------------------------------
def export_tmp_hook(dest: Path, victim: Path) -> str:
    """Plant symlinks to ``victim`` at every predictable temporary name of ``dest`` (this process's pid)."""
    names = ("f'.{d.name}.{os.getpid()}.tmp'", "f'.{d.name}.tmp'", "f'{d.name}.tmp'", "f'{d.name}.{os.getpid()}.tmp'",
             "f'.{d.name}.{os.getpid()}'", "f'{d.name}.part'", "f'.{d.name}.part'")
    return (f"import os\nfrom pathlib import Path\nd = Path({str(dest)!r})\n"
            f"for n in ({', '.join(names)},):\n"
            f"    try:\n        os.symlink({str(victim)!r}, d.with_name(n))\n"
            f"    except FileExistsError:\n        pass\n")


def export_tmp_symlinks(ctx: Ctx, fmt: str) -> str:
    """Symlinks to a victim planted at the export's predictable temporary names: the victim stays as it was and
    the export is a new regular file (or folder)."""
    ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(5)]))
    dest = ctx.work / ("out_hf" if fmt == "hf" else f"out.{fmt}")
    victim = ctx.work / "victim"
    if fmt == "hf":
        victim.mkdir()
        (victim / "keep.txt").write_text("precious\n")
    else:
        victim.write_text("precious\n")
    before = snapshot(ctx.work / "victim") if fmt == "hf" else victim.read_bytes()
    run = ctx.cli("export", "v", str(dest), "--format", fmt, hook=export_tmp_hook(dest, victim), timeout=120)
    after = snapshot(ctx.work / "victim") if fmt == "hf" else victim.read_bytes()
    expect(after == before, f"export wrote into the victim through a planted temporary name ({run.brief()})")
    expect(run.rc == 0, run.brief())
    expect(not dest.is_symlink() and (dest.is_dir() if fmt == "hf" else dest.is_file()),
           f"{dest.name} is {'a symlink' if dest.is_symlink() else 'missing'}")
    return "victim untouched, export written under a fresh name"


for _fmt in ("jsonl", "csv", "hf"):
    register("7", f"export-tmp-symlink-{_fmt}", export_tmp_symlinks, fmt=_fmt)


# ---- 8. export targets: devices, FIFOs, the store itself, stdout -----------------------------------------------------
def export_target(ctx: Ctx, target: str) -> str:
    """Export into something it must not replace: refused in one line, the target as it was."""
    vid = ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(5)]))
    folder = ctx.vdir(vid)
    fmt = "jsonl"
    if target == "device-node":
        if os.geteuid() != 0:
            raise Skip("mknod needs root")
        dest = ctx.work / "null"
        try:
            os.mknod(dest, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError as exc:
            raise Skip(f"mknod refused: {exc}") from None
    elif target == "fifo":
        dest = ctx.work / "pipe"
        os.mkfifo(dest)
    elif target == "version-manifest":
        dest = folder / "manifest.json"
    elif target == "version-shard":
        dest = folder / manifest(ctx.store, vid)["shards"][0]["path"]
    elif target == "new-file-in-version":
        dest = folder / "extra.jsonl"
    elif target == "store-root":
        dest = ctx.store / "copy.jsonl"
    elif target == "new-hf-folder-in-version":
        dest, fmt = folder / "hf", "hf"
    else:                                                         # a symlinked folder that leads into the store
        (ctx.work / "alias").symlink_to(folder)
        dest = ctx.work / "alias" / "manifest.json"
    store_before = store_files(ctx.store)
    mode = os.lstat(dest).st_mode if os.path.lexists(dest) else None
    run = ctx.cli("export", "v", str(dest), "--format", fmt, timeout=HANG * 2)
    now = os.lstat(dest).st_mode if os.path.lexists(dest) else None
    expect(mode is not None or now is None, f"export wrote {dest.relative_to(ctx.work)} inside the store "
                                            f"({run.brief()})")
    expect(stat.S_IFMT(now or 0) == stat.S_IFMT(mode or 0), f"{dest.name} was replaced: now a "
                                                            f"{'regular file' if now and stat.S_ISREG(now) else now} "
                                                            f"({run.brief()})")
    expect(store_files(ctx.store) == store_before, f"the store's versions or refs changed ({run.brief()})")
    expect(run.clean_error, run.brief())
    return f"refused: {run.brief()}"


for _target in ("device-node", "fifo", "version-manifest", "version-shard", "new-file-in-version", "store-root",
                "symlinked-folder-into-store", "new-hf-folder-in-version"):
    register("8", f"export-to-{_target}", export_target, target=_target)


def export_stdout(ctx: Ctx, fmt: str) -> str:
    """``export REF -`` writes to stdout (and no file named '-')."""
    ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(5)]))
    run = ctx.cli("export", "v", "-", "--format", fmt)
    expect(not os.path.lexists(ctx.work / "-"), f"export created a file named '-' ({run.brief()})")
    expect(run.rc == 0, run.brief())
    lines = [line for line in run.out.splitlines() if line.strip()]
    if fmt == "jsonl":
        got = [json.loads(line)["text"] for line in lines if line.startswith("{")]
    else:
        got = [line.split(",")[0].strip('"') for line in lines[1:]]
    expect(got == texts(5), f"stdout holds {one_line(run.out[:160])}")
    return f"{len(got)} rows on stdout"


register("8", "export-to-stdout-jsonl", export_stdout, fmt="jsonl")
register("8", "export-to-stdout-csv", export_stdout, fmt="csv")


def export_dest_symlink(ctx: Ctx) -> str:
    """The destination is a symlink to a victim outside the store: the victim must stay as it was."""
    ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(5)]))
    victim = ctx.work / "victim.txt"
    victim.write_bytes(b"precious\n")
    (ctx.work / "out.jsonl").symlink_to(victim)
    run = ctx.cli("export", "v", str(ctx.work / "out.jsonl"), "--format", "jsonl", timeout=HANG)
    expect(victim.read_bytes() == b"precious\n", f"export wrote through the symlink into the victim ({run.brief()})")
    expect(run.fine, run.brief())
    return f"victim untouched ({run.brief()})"


register("8", "export-to-symlink", export_dest_symlink)


# ---- 9. --output into a folder that is not a run folder of ours ------------------------------------------------------
def output_not_ours(ctx: Ctx, layout: str) -> str:
    """``distill finetune --output proj`` where proj holds the user's files: refused in one line, files as they
    were."""
    ctx.copy_store()
    proj = ctx.work / "proj"
    if layout == "issue":
        files = {"checkpoints/important.txt": "do not delete\n", "config.json": '{"mine": true}\n',
                 "metrics.jsonl": '{"my": "metrics"}\n'}
    elif layout == "one-file":
        files = {"notes.txt": "my notes\n"}
    else:
        files = {"model/README.md": "my model card\n", "loss.png": "not really a png\n"}
    for name, content in files.items():
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        (proj / name).write_text(content)
    before = snapshot(proj)
    run = ctx.cli("distill", "finetune", "lab", "--model", ctx.fix.mlm, "--output", str(proj), "--max-steps", "1",
                  *TRAINING, timeout=180)
    after = snapshot(proj)
    changed = sorted(k for k in before if after.get(k) != before[k])
    expect(not changed, f"the user's {', '.join(changed)} deleted or overwritten ({run.brief()})")
    expect(run.clean_error, f"not refused: {run.brief()}")
    added = sorted(set(after) - set(before))
    expect(not added, f"refused, but wrote {', '.join(added[:4])} into the user's folder")
    return f"refused: {run.brief()}"


for _layout in ("issue", "one-file", "model-folder"):
    register("9", f"output-folder-not-ours-{_layout}", output_not_ours, layout=_layout)


# ---- 10. gc and the inputs of a running step -------------------------------------------------------------------------
def gc_running_input(ctx: Ctx, step: str) -> str:
    """An unnamed version is the input of a running augment (or cache-logits), paused after its first chunk;
    ``versions gc --unreferenced`` meanwhile must leave that input, and the step must finish."""
    ctx.copy_store()
    parent = ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t, "label": "neg"} for t in texts(12)]),
                            "--label-column", "label", "--chunk-rows", "4", name=None)
    signal_file, go_file = ctx.work / "paused", ctx.work / "go"
    if step == "augment":
        args = ["augment", parent, "--name", "out", "--mlm", ctx.fix.mlm, "--num-aug", "1", "--chunk-rows", "4",
                "--workers", "0"]
    else:
        args = ["distill", "cache-logits", parent, ctx.fix.teacher, "--name", "out"]
    handle = ctx.start(*args, hook=pause_hook(0, signal_file, go_file), timeout=240)
    while not signal_file.exists() and not handle.done():
        time.sleep(0.05)
    if handle.done():
        raise Broken(f"{step} ended before its first chunk: {handle.wait().brief()}")
    gc = ctx.cli("versions", "gc", "--unreferenced", timeout=HANG * 2)
    go_file.touch()
    run = handle.wait()
    expect((ctx.vdir(parent) / "manifest.json").exists(), f"gc deleted {parent[:12]}, the input {step} was "
                                                          f"reading ({one_line(gc.out)}); {step}: {run.brief()}")
    expect(gc.fine, f"versions gc: {gc.brief()}")
    expect(run.rc == 0, f"{step}: {run.brief()}")
    return f"gc kept the running {step}'s input ({one_line(gc.out.splitlines()[-1] if gc.out else gc.brief())})"


register("10", "gc-input-of-running-augment", gc_running_input, step="augment")
register("10", "gc-input-of-running-cache-logits", gc_running_input, step="cache-logits")


def read_only_store(ctx: Ctx) -> str:
    """A store the user may only read (another user's, mode a-w): list, show, verify and export still work; gc
    cannot delete there and says so in one line."""
    if os.geteuid() != 0:
        raise Skip("needs root to run the reader as another user")
    ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(5)]))
    ctx.preprocess(write_jsonl(ctx.work / "in2.jsonl", [{"text": t} for t in texts(3, " unnamed")]), name=None)
    for path in [ctx.work.parent, ctx.work]:
        os.chmod(path, 0o755)
    for root, _, files in os.walk(ctx.store):
        os.chmod(root, 0o555)
        for name in files:
            os.chmod(Path(root) / name, 0o444)
    out_dir = ctx.work / "reader"
    out_dir.mkdir(mode=0o777)
    os.chmod(out_dir, 0o777)
    env = {"HOME": str(out_dir), "DISTILLERY_CACHE": str(out_dir / "cache")}
    nobody = 65534
    before = store_files(ctx.store)
    try:
        for args in (["versions", "list"], ["versions", "show", "v"], ["versions", "verify"],
                     ["export", "v", str(out_dir / "out.jsonl"), "--format", "jsonl"]):
            try:
                run = ctx.cli(*args, uid=nobody, env=env, cwd=out_dir, timeout=HANG * 2)
            except PermissionError as exc:          # --spawn: the interpreter may live in root's home
                raise Skip(f"uid {nobody} cannot start {sys.executable} ({exc.strerror}); "
                           f"runs without --spawn") from None

            expect(run.rc == 0, f"read-only store, {' '.join(args[:2])}: {run.brief()}")
        rows = [json.loads(line)["text"] for line in (out_dir / "out.jsonl").read_text().splitlines()]
        expect(rows == texts(5), "the export from the read-only store is not the version's rows")
        gc = ctx.cli("versions", "gc", "--unreferenced", uid=nobody, env=env, cwd=out_dir, timeout=HANG * 2)
        expect(gc.fine, f"gc on a read-only store: {gc.brief()}")
        expect(store_files(ctx.store) == before, "the read-only store changed")
    finally:
        for root, _, _ in os.walk(ctx.store):
            os.chmod(root, 0o755)
    return f"list, show, verify and export work as another user; gc: {gc.brief()}"


register("10", "read-only-store", read_only_store)


# ---- 11. special files: never read, never hashed ---------------------------------------------------------------------
def special_in_version(ctx: Ctx, kind: str) -> str:
    """A shard (or rejects file) replaced by a symlink to /dev/zero, a FIFO or a symlink to a FIFO, the manifest
    unchanged: verify and export end at once, the version named."""
    vid, other = two_versions(ctx)
    folder = ctx.vdir(vid)
    m = manifest(ctx.store, vid)
    target = folder / (m["rejects"][0]["path"] if kind.startswith("rejects") else m["shards"][0]["path"])
    target.unlink()
    if kind == "shard-symlink-dev-zero":
        target.symlink_to("/dev/zero")
    elif kind in ("shard-fifo", "rejects-fifo"):
        os.mkfifo(target)
    else:
        os.mkfifo(ctx.work / "pipe")
        target.symlink_to(ctx.work / "pipe")
    return refuses_bad_version(ctx, vid, other, None, export_must_fail=not kind.startswith("rejects"))


for _kind in ("shard-symlink-dev-zero", "shard-fifo", "shard-symlink-fifo", "rejects-fifo"):
    register("11", f"verify-{_kind}", special_in_version, kind=_kind)


def special_input(ctx: Ctx, kind: str) -> str:
    """An input that is a device, a FIFO or a symlink to one: refused in one line before any read (a folder
    input holding a FIFO: refused, or at least the FIFO named; never silently dropped)."""
    pipe = ctx.work / "pipe"
    named = None
    if kind == "dev-zero-hf":
        args = ["/dev/zero", "--format", "hf"]
    elif kind == "dev-zero-txt":
        args = ["/dev/zero", "--format", "txt"]
    elif kind == "fifo-hf":
        os.mkfifo(pipe)
        args = [str(pipe), "--format", "hf"]
    elif kind == "fifo-txt":
        os.mkfifo(ctx.work / "in.txt")
        args = [str(ctx.work / "in.txt")]
    elif kind == "fifo-jsonl-gz":
        os.mkfifo(ctx.work / "in.jsonl.gz")
        args = [str(ctx.work / "in.jsonl.gz")]
    elif kind == "symlink-to-dev-zero-jsonl":
        (ctx.work / "in.jsonl").symlink_to("/dev/zero")
        args = [str(ctx.work / "in.jsonl")]
    elif kind == "fifo-in-folder":
        (ctx.work / "d").mkdir()
        (ctx.work / "d" / "a.txt").write_text("one line\n")
        os.mkfifo(ctx.work / "d" / "b.txt")
        args, named = [str(ctx.work / "d")], "b.txt"
    else:                                                       # a data-files folder read as --format hf
        (ctx.work / "d").mkdir()
        write_jsonl(ctx.work / "d" / "a.jsonl", [{"text": "one line"}])
        os.mkfifo(ctx.work / "d" / "b.jsonl")
        args, named = [str(ctx.work / "d"), "--format", "hf"], "b.jsonl"
    run = ctx.cli("preprocess", *args, timeout=HANG)
    expect(not run.timed_out, f"preprocess {kind}: {run.brief()}")
    if named and run.rc == 0:
        expect(named in run.err, f"exit 0: the FIFO {named} was silently left out of the folder input")
        return f"exit 0, the FIFO {named} named: {one_line(run.err)}"
    expect(run.clean_error, run.brief())
    return f"refused: {run.brief()}"


for _kind in ("dev-zero-hf", "dev-zero-txt", "fifo-hf", "fifo-txt", "fifo-jsonl-gz", "symlink-to-dev-zero-jsonl",
              "fifo-in-folder", "fifo-in-hf-folder"):
    register("11", f"input-{_kind}", special_input, kind=_kind)


# ---- 12. memory of a chunk is bounded by bytes -----------------------------------------------------------------------
HEADROOM = GiB                    # what a bounded chunk may add to the process's own size


def long_lines_gz(ctx: Ctx) -> str:
    """400 JSONL lines of ~950 kB each (under max_row_bytes) in a small .jsonl.gz, default chunk_rows: every row
    kept within 1 GiB more than the process's own size."""
    n, body = 400, json.dumps("lorem ipsum dolor sit amet " * 35_000)[1:]        # '...amet "' closes the string
    tail = gzip.compress((body + "}\n").encode(), 1)
    with open(ctx.work / "long.jsonl.gz", "wb") as fh:                           # one gzip member per part
        for i in range(n):
            fh.write(gzip.compress(f'{{"text": "{i} '.encode(), 1) + tail)
    run = ctx.cli("preprocess", str(ctx.work / "long.jsonl.gz"), "--name", "v", mem=None,
                  hook=relative_memory_hook(HEADROOM), timeout=300)
    expect(run.rc == 0, f"{n} rows of 950 kB: {run.brief()}")
    acc = manifest(ctx.store, ref_id(ctx.store, "v") or "")["accounting"]
    expect(acc.get("input_rows") == n and acc.get("kept") == n, f"accounting {acc}")
    return f"{n} x 950 kB rows kept under a {HEADROOM >> 20} MiB headroom ({run.seconds:.0f} s)"


def long_rows_parquet(ctx: Ctx) -> str:
    """A Parquet file of 160 rows of 4 MB (max_row_bytes 1 MB): all rejected as row_too_long within 1 GiB more
    than the process's own size (the length check must not need whole batches of such rows in memory)."""
    n, big = 160, "lorem ipsum dolor sit amet " * 150_000
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(ctx.work / "long.parquet", schema, compression="zstd") as writer:
        for start in range(0, n, 4):
            writer.write_table(pa.table({"text": [f"{i} {big}" for i in range(start, start + 4)]}, schema=schema))
    run = ctx.cli("preprocess", str(ctx.work / "long.parquet"), "--name", "v", mem=None,
                  hook=relative_memory_hook(HEADROOM), timeout=300)
    expect(run.rc == 0, f"{n} rows of 4 MB: {run.brief()}")
    acc = manifest(ctx.store, ref_id(ctx.store, "v") or "")["accounting"]
    expect(acc.get("input_rows") == n and acc.get("rejected", {}).get("row_too_long") == n, f"accounting {acc}")
    return f"{n} x 4 MB rows rejected as row_too_long under a {HEADROOM >> 20} MiB headroom ({run.seconds:.0f} s)"


register("12", "memory-long-lines-jsonl-gz", long_lines_gz)
register("12", "memory-long-rows-parquet", long_rows_parquet)


# ---- 13. options without an upper bound ------------------------------------------------------------------------------
def huge_option(ctx: Ctx, args: list[str]) -> str:
    """A huge option (or one the model cannot take): refused in one line before any work, under a 4 GiB cap."""
    ctx.copy_store()
    (ctx.work / "in.txt").write_text("".join(t + "\n" for t in texts(20)))
    fix = ctx.fix
    values = {"IN": str(ctx.work / "in.txt"), "MLM": fix.mlm if "MLM" in args else "", "OUT": str(ctx.work / "run"),
              "TEACHER": fix.teacher if "TEACHER" in args else ""}
    before = complete_versions(ctx.store)
    run = ctx.cli(*[values.get(a, a) for a in args], timeout=HANG * 2)
    expect(run.clean_error, run.brief())
    expect(complete_versions(ctx.store) == before and not partial_versions(ctx.store),
           "refused, but only after writing")
    expect(not list((ctx.work / "run").rglob("*.pt")), "refused, but only after training")
    return f"refused: {run.brief()}"


HUGE = {
    "ngram": ["preprocess", "IN", "--near", "--ngram", "1000000000"],
    "num-perm": ["preprocess", "IN", "--near", "--num-perm", "100000000"],
    "num-aug": ["augment", "lab", "--mlm", "MLM", "--num-aug", "1000000000"],
    "top-k": ["augment", "lab", "--mlm", "MLM", "--top-k", "1000000000"],
    "finetune-max-seq-length-over-model": ["distill", "finetune", "lab", "--model", "MLM", "--output", "OUT",
                                           "--max-seq-length", "1000", "--max-steps", "1", *TRAINING],
    "evaluate-max-seq-length-over-model": ["distill", "evaluate", "lab", "TEACHER", "--max-seq-length", "1000"],
    "cache-logits-max-seq-length-over-model": ["distill", "cache-logits", "lab", "TEACHER", "--max-seq-length",
                                               "1000"],
    "student-hidden": ["distill", "task", "lab", "--teacher", "TEACHER", "--student", "custom", "--student-layers",
                       "1", "--student-hidden", "1000000000", "--student-heads", "2", "--student-intermediate", "64",
                       "--output", "OUT", "--max-steps", "1", *TRAINING],
}
for _name, _args in HUGE.items():
    register("13", f"option-{_name}", huge_option, args=_args)


def huge_seed(ctx: Ctx, args: list[str]) -> str:
    """Seeds past 32 and 64 bits: each run works or is refused in one line (never a raw error from a library)."""
    ctx.copy_store()
    (ctx.work / "in.txt").write_text("".join(t + "\n" for t in texts(20)))
    said = []
    for i, seed in enumerate((2**32 + 1, 2**63 - 1, 2**64)):
        values = {"IN": str(ctx.work / "in.txt"), "MLM": ctx.fix.mlm if "MLM" in args else "",
                  "OUT": str(ctx.work / f"run{i}")}
        run = ctx.cli(*[values.get(a, a) for a in args], "--seed", str(seed), timeout=120)
        expect(run.fine, f"--seed {seed}: {run.brief()}")
        said.append(f"{seed}: {'ok' if run.rc == 0 else 'refused'}")
    return ", ".join(said)


SEEDED = {
    "preprocess": ["preprocess", "IN", "--near"],
    "augment": ["augment", "lab", "--mlm", "MLM", "--num-aug", "1"],
    "finetune": ["distill", "finetune", "lab", "--model", "MLM", "--output", "OUT", "--max-steps", "1", *TRAINING],
}
for _name, _args in SEEDED.items():
    register("13", f"option-huge-seed-{_name}", huge_seed, args=_args)


def _unbounded_options() -> list[str]:
    """Integer options (and epochs) of every CLI config that accept 10**15 (seeds: ``option-huge-seed-*``)."""
    import dataclasses
    import typing

    from augment import AugmentConfig
    from distill.config import (
        CacheLogitsConfig,
        DistillConfig,
        EvaluateConfig,
        ExportConfig,
        FinetuneConfig,
        MLMConfig,
        TaskDistillConfig,
    )
    from pipelines.errors import DistilleryError
    from preprocess import PreprocessConfig

    found: list[str] = []

    def walk(cls: type, build: Callable[[str, Any], Any], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0] if len(args) == 1 else hint
            if dataclasses.is_dataclass(hint):
                walk(hint, lambda key, value, f=f, hint=hint: build(f.name, hint(**{key: value})), f"{prefix}{f.name}.")
            elif (hint is int and f.name != "seed") or (hint is float and f.name.endswith("epochs")):
                try:
                    build(f.name, hint(10**15))
                except (DistilleryError, ValueError, TypeError):
                    continue
                found.append(f"{prefix}{f.name}")

    for cls in (PreprocessConfig, AugmentConfig, FinetuneConfig, DistillConfig, TaskDistillConfig, MLMConfig,
                EvaluateConfig, CacheLogitsConfig, ExportConfig):
        before = len(found)
        walk(cls, lambda key, value, cls=cls: cls(**{key: value}), "")
        found[before:] = [f"{cls.__name__}.{name}" for name in found[before:]]
    return found


def every_option_bounded(ctx: Ctx) -> str:
    """Every integer option (and every epochs option) of the CLI's configs refuses 10**15 on construction."""
    unbounded = ctx.api(_unbounded_options)
    expect(not unbounded, f"{len(unbounded)} options accept 10**15: {', '.join(unbounded)}")
    return "every integer option has an upper bound"


register("13", "options-all-bounded", every_option_bounded)


# ---- also: names, refs, malformed versions, checkpoints, run records, config files, models, line ends, labels -------
def name_with_newline(ctx: Ctx, how: str) -> str:
    """A name or tag with a trailing newline is refused in one line (and no ref is written under it)."""
    path = write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(3)])
    if how == "preprocess-name":
        run = ctx.cli("preprocess", str(path), "--name", "good\n")
    else:
        ctx.preprocess(path)
        run = ctx.cli("versions", "tag", "alias\n" if how == "tag-name" else "alias@t\n", "v")
    bad = [p.name for p in (ctx.store / "refs").rglob("*") if "\n" in p.name] if (ctx.store / "refs").exists() else []
    expect(not bad, f"a ref named {bad[0]!r} was written ({run.brief()})" if bad else "")
    expect(run.clean_error, run.brief())
    return f"refused: {run.brief()}"


for _how in ("preprocess-name", "tag-name", "tag-tag"):
    register("also", f"name-trailing-newline-{_how}", name_with_newline, how=_how)


def tag_with_path(ctx: Ctx, how: str) -> str:
    """``versions tag NAME REF`` with REF a path to a version folder: refused, or the ref holds the bare id."""
    vid = ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(3)]))
    if how == "absolute":
        ref = str(ctx.vdir(vid))
    elif how == "id-dotdot-id":
        ref = f"{vid}/../{vid}"
    else:
        shutil.copytree(ctx.vdir(vid), ctx.store / "x")
        ref = "../x"
    run = ctx.cli("versions", "tag", "alias", ref)
    held = ref_id(ctx.store, "alias")
    if held is None:
        expect(run.clean_error, run.brief())
        return f"refused: {run.brief()}"
    expect(held == vid, f"refs/alias/latest holds {held!r}, not a version id ({run.brief()})")
    return f"the ref holds the id ({run.brief()})"


for _how in ("absolute", "id-dotdot-id", "dotdot-into-store"):
    register("also", f"tag-path-{_how}", tag_with_path, how=_how)


def malformed_version(ctx: Ctx, how: str) -> str:
    """A version folder whose manifest is malformed (and a name pointing at it): list and verify name that folder
    and go on with the rest, gc goes on without deleting a named version; never a bare KeyError / TypeError."""
    good = ctx.preprocess(write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(3)]), name="good")
    bad = "b" * 64
    (ctx.vdir(bad) / "data").mkdir(parents=True)
    content = {"empty-object": "{}", "array": "[]", "invalid-json": "{not json", "null": "null"}.get(how)
    if content is None:                              # a real manifest with fields of the wrong types
        m = manifest(ctx.store, good)
        m.update(version_id=bad, num_rows="many", created_at=5, step=None, accounting=[], parents={})
        content = json.dumps(m)
    (ctx.vdir(bad) / "manifest.json").write_text(content)
    (ctx.store / "refs" / "bad").mkdir(parents=True)
    (ctx.store / "refs" / "bad" / "latest").write_text(bad + "\n")
    problems = []
    for args in (["versions", "list"], ["versions", "verify"], ["versions", "gc", "--unreferenced", "--dry-run"]):
        run = ctx.cli(*args, timeout=HANG * 2)
        said = run.out + run.err
        if run.timed_out or "Traceback" in said or RAW in said or run.rc not in (0, 1):
            problems.append(f"{args[1]}: {run.brief()}")
        elif bad[:12] not in said and args[1] != "gc":
            problems.append(f"{args[1]} did not name the malformed folder")
        elif args[1] == "list" and good[:12] not in run.out:
            problems.append("list did not go on with the intact version")
        elif args[1] == "verify" and f"ok      {good[:12]}" not in run.out:
            problems.append("verify did not go on with the intact version")
        elif args[1] == "gc" and any(w in run.out for w in (f"would delete {good[:12]}", f"would delete {bad[:12]}")):
            problems.append(f"gc would delete a named version: {one_line(run.out)}")
    expect(not problems, "; ".join(problems))
    return "list, verify and gc name it and go on"


for _how in ("empty-object", "array", "invalid-json", "null", "wrong-types"):
    register("also", f"malformed-manifest-{_how}", malformed_version, how=_how)


def _foreign_checkpoint(path: str, good: str, kind: str) -> None:
    import torch

    state = torch.load(good, weights_only=True)
    if kind == "empty":
        state = {"step": 99, "config": {}, "objective": {}}
    elif kind == "no-grad-accum":
        state["config"].pop("grad_accum", None)
        state["step"] = 99
    else:                                                  # another model's weights (other shapes)
        state["objective"] = {k: torch.zeros(1) for k in state["objective"]}
        state["step"] = 99
    torch.save(state, path)


def run_copy(ctx: Ctx) -> Path:
    """A private copy of the fixture store and of its finished fine-tuning run (same settings: reused)."""
    ctx.copy_store()
    run_dir = ctx.work / "run"
    shutil.copytree(ctx.fix.run(), run_dir, symlinks=True)
    return run_dir


def foreign_checkpoint(ctx: Ctx, kind: str) -> str:
    """The newest checkpoint of an interrupted run loads but is not this run's: skipped (named) for the previous
    good one, and the run finishes."""
    run_dir = run_copy(ctx)
    (run_dir / "finished.json").unlink()
    shutil.rmtree(run_dir / "model")
    good = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    expect(bool(good), "the fixture run kept no checkpoint")
    ctx.api(_foreign_checkpoint, str(run_dir / "checkpoints" / "step-99999999.pt"), str(good[-1]), kind)
    run = ctx.cli("distill", "finetune", "lab", "--model", ctx.fix.mlm, "--output", str(run_dir), *FINETUNE_ARGS,
                  "--resume", timeout=180)
    expect(run.rc == 0, f"no fall-back to {good[-1].name}: {run.brief()}")
    expect((run_dir / "model").is_dir(), "exit 0 but no model saved")
    said = [line for line in run.err.splitlines() if "step-99999999" in line]
    return f"fell back to {good[-1].name}: {one_line(said[0] if said else '(the foreign one not named)', 160)}"


for _kind in ("empty", "no-grad-accum", "other-shapes"):
    register("also", f"foreign-checkpoint-{_kind}", foreign_checkpoint, kind=_kind)


def finished_elsewhere(ctx: Ctx, where: str) -> str:
    """finished.json of a run names a model outside its run folder: not believed."""
    run_dir = run_copy(ctx)
    if where == "etc":
        model = "/etc"
    else:
        shutil.copytree(run_dir / "model", ctx.work / "elsewhere")
        model = "../elsewhere"
    edit_json(run_dir / "finished.json", lambda d: d.update(model=model))
    run = ctx.cli("distill", "finetune", "lab", "--model", ctx.fix.mlm, "--output", str(run_dir), *FINETUNE_ARGS,
                  timeout=180)
    if run.clean_error:
        return f"refused: {run.brief()}"
    expect(run.rc == 0, run.brief())
    said = next((line.split(":", 1)[1].strip() for line in run.out.splitlines() if line.strip().startswith("model:")),
                "")
    inside = os.path.realpath(said).startswith(os.path.realpath(run_dir) + os.sep)
    expect(bool(said) and inside, f"believed: the run's model is {said or '?'} ({one_line(run.out.splitlines()[0])})")
    return f"exit 0 with the model inside the run folder ({said})"


register("also", "finished-json-model-etc", finished_elsewhere, where="etc")
register("also", "finished-json-model-outside-run", finished_elsewhere, where="outside")


def toml_not_utf8(ctx: Ctx, where: str) -> str:
    """A --config file with invalid UTF-8: one line naming the file."""
    bad = ctx.work / "bad.toml"
    (ctx.work / "in.txt").write_text("one line\n")
    if where == "preprocess":
        bad.write_bytes(b"chunk_rows = 5\n# caf\xe9\n")
        run = ctx.cli("preprocess", str(ctx.work / "in.txt"), "--config", str(bad))
    elif where == "pipeline-file":
        bad.write_bytes(b"[preprocess]\nchunk_rows = 5\nname = \"caf\xe9\"\n")
        run = ctx.cli("preprocess", str(ctx.work / "in.txt"), "--config", str(bad))
    else:
        ctx.copy_store()
        bad.write_bytes(b"batch_size = 8 # \xff\xfe\n")
        run = ctx.cli("distill", "evaluate", "lab", ctx.fix.teacher, "--config", str(bad))
    expect(run.clean_error, run.brief())
    expect("bad.toml" in run.error_line(), f"the error does not name the file: {run.brief()}")
    return f"refused: {run.brief()}"


for _where in ("preprocess", "pipeline-file", "evaluate"):
    register("also", f"toml-invalid-utf8-{_where}", toml_not_utf8, where=_where)


class Payload:
    """Something a weights-only load refuses (a pickled object of a class, not a tensor)."""


def _pickled_model(folder: str, teacher: str) -> None:
    import torch
    from safetensors.torch import load_file

    Path(folder).mkdir()
    for item in Path(teacher).iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, Path(folder) / item.name)
    state = dict(load_file(str(Path(teacher) / "model.safetensors")))
    state["payload"] = Payload()
    torch.save(state, Path(folder) / "pytorch_model.bin")


def pickled_bin(ctx: Ctx, command: str) -> str:
    """A model folder whose weights are a pickled pytorch_model.bin that a weights-only load refuses: one line."""
    ctx.copy_store()
    folder = ctx.work / "pickled"
    ctx.api(_pickled_model, str(folder), ctx.fix.teacher)
    if command == "evaluate":
        run = ctx.cli("distill", "evaluate", "lab", str(folder))
    else:
        run = ctx.cli("distill", "finetune", "lab", "--model", str(folder), "--output", str(ctx.work / "out"),
                      "--max-steps", "1", *TRAINING)
    expect(run.clean_error, run.brief())
    return f"refused: {run.brief()}"


register("also", "pickled-bin-evaluate", pickled_bin, command="evaluate")
register("also", "pickled-bin-finetune", pickled_bin, command="finetune")


def carriage_returns(ctx: Ctx, kind: str) -> str:
    """Files whose lines end with a lone \\r: one row per line."""
    if kind == "txt":
        path, data, want = ctx.work / "cr.txt", b"one\rtwo\rthree\r", ["one", "two", "three"]
    elif kind == "txt-gz":
        path, data, want = ctx.work / "cr.txt.gz", gzip.compress(b"one\rtwo\rthree"), ["one", "two", "three"]
    else:
        path, data, want = ctx.work / "cr.jsonl", b'{"text": "one"}\r{"text": "two"}\r', ["one", "two"]
    path.write_bytes(data)
    run = ctx.cli("preprocess", str(path), "--name", "v")
    expect(run.rc == 0, run.brief())
    got = version_column(ctx.store, ref_id(ctx.store, "v") or "")
    expect(got == want, f"{len(got)} row(s) {got}, not {len(want)}")
    return f"{len(got)} rows"


for _kind in ("txt", "txt-gz", "jsonl"):
    register("also", f"cr-line-endings-{_kind}", carriage_returns, kind=_kind)


def empty_csv_label(ctx: Ctx, labels: tuple[str, ...]) -> str:
    """A CSV whose label column is numbers and one empty cell: the empty label must not silently turn every
    label into a string (kept numbers with the row counted, or the change said in the accounting or card)."""
    lines = ["text,label"] + [f"{t},{label}" for t, label in zip(texts(len(labels)), labels)]
    (ctx.work / "in.csv").write_text("\n".join(lines) + "\n")
    run = ctx.cli("preprocess", str(ctx.work / "in.csv"), "--label-column", "label", "--name", "v")
    expect(run.rc == 0, run.brief())
    vid = ref_id(ctx.store, "v") or ""
    m = manifest(ctx.store, vid)
    kind = next(f["type"] for f in m["schema"] if f["name"] == "label")
    acc = m["accounting"]
    if kind != "string":
        counted = acc.get("kept", 0) + sum(acc.get("rejected", {}).values()) + sum(acc.get("dropped", {}).values())
        expect(counted == acc.get("input_rows"), f"labels stay {kind}, but the rows do not add up: {acc}")
        return f"labels stay {kind}; the empty one counted: {acc.get('rejected') or acc.get('repaired')}"

    def label_keys(data: Any) -> list[str]:
        if isinstance(data, dict):
            found = [k for k, v in data.items() if "label" in k and v]
            return found + [x for v in data.values() for x in label_keys(v)]
        return []

    card = (ctx.vdir(vid) / "README.md").read_text()
    said = label_keys(acc) or [line for line in card.splitlines() if str(ctx.work) not in line
                               and "label" in line.lower() and "empty" in line.lower()]
    expect(bool(said), f"every label became a string because of one empty cell, and neither the accounting "
                       f"({acc}) nor the card says so")
    return f"labels are strings, and it is said: {one_line(str(said[0]), 120)}"


register("also", "csv-empty-label-ints", empty_csv_label, labels=("1", "2", "", "1"))
register("also", "csv-empty-label-floats", empty_csv_label, labels=("0.5", "1.5", "", "2.5"))


# ---- honest scores ---------------------------------------------------------------------------------------------------
def unknown_labels(ctx: Ctx, labels: tuple[str, ...]) -> str:
    """The teacher always predicts 'neg' and knows neg / pos; rows with other gold labels count as errors."""
    rows = [{"text": t, "label": label} for t, label in zip(texts(len(labels)), labels)]
    ctx.preprocess(write_jsonl(ctx.work / "t.jsonl", rows), "--label-column", "label", name="t")
    run = ctx.ok(ctx.cli("distill", "evaluate", "t", ctx.fix.teacher), "evaluate")
    scores = json.loads(run.out)
    honest = labels.count("neg") / len(labels)
    got = scores.get("accuracy")
    expect(isinstance(got, float) and abs(got - honest) < 1e-9,
           f"accuracy {got} over {scores.get('rows')} rows with {scores.get('unknown_labels')} unknown-label rows "
           f"left out; counted as errors it is {honest:.4f}")
    return f"accuracy {got:.4f} = {labels.count('neg')}/{len(labels)} (unknown labels count as errors)"


register("scores", "score-unknown-labels-some", unknown_labels, labels=("neg", "neg", "pos", "other"))
register("scores", "score-unknown-labels-all", unknown_labels, labels=("x", "y", "z"))


def lengths_in(data: Any) -> set[Any]:
    """Values of keys naming a sequence length, at any depth."""
    if isinstance(data, dict):
        found = {v for k, v in data.items() if "seq_length" in k or k in ("max_length", "length") and
                 not isinstance(v, (dict, list))}
        return found | {x for v in data.values() for x in lengths_in(v)}
    if isinstance(data, list):
        return {x for v in data for x in lengths_in(v)}
    return set()


def score_length(ctx: Ctx) -> str:
    """A run trained at max_seq_length 64: its scores.json records 64, and `distill evaluate` of its model scores
    at 64 unless told otherwise (and says so)."""
    run_dir = run_copy(ctx)
    saved = json.loads((run_dir / "model" / "scores.json").read_text())
    expect(64 in lengths_in(saved), f"scores.json records no max_seq_length: {sorted(saved)}")
    run = ctx.ok(ctx.cli("distill", "evaluate", "lab", str(run_dir / "model")), "evaluate")
    said = lengths_in(json.loads(run.out))
    expect(said == {64}, f"evaluate without --max-seq-length scored at {sorted(said) or 'an unrecorded length'} "
                         f"(the run's length is 64)")
    return "scores.json and evaluate record max_seq_length 64"


register("scores", "score-length-recorded", score_length)


def ddp_dev_eval(ctx: Ctx, mode: str) -> str:
    """Dev evaluation under two processes (torchrun's environment, gloo) covers the whole dev set: as many masked
    pieces as one process scores."""
    ctx.copy_store()
    if mode == "distilbert":
        args = ["distill", "general", "lab", "--objective", "distilbert", "--teacher", ctx.fix.mlm, "--student",
                "custom", "--student-layers", "1", "--student-hidden", "32", "--student-heads", "2",
                "--student-intermediate", "64", "--kl-weight", "1"]
    else:
        args = ["distill", "mlm", "lab", "--model", ctx.fix.mlm, "--eval-rows", "8"]
    args += ["--eval-ref", "dev", "--max-steps", "1", "--batch-size", "4", "--num-workers", "0", "--threads", "1"]
    one = ctx.ok(ctx.cli(*args, "--output", str(ctx.work / "one"), timeout=240), "one process")
    port = str(free_port())
    handles = [ctx.start(*args, "--output", str(ctx.work / "two"), timeout=240,
                         env={"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for rank in (0, 1)]
    runs = [h.wait() for h in handles]
    for rank, run in enumerate(runs):
        ctx.ok(run, f"rank {rank} of 2")
    pieces = [json.loads((ctx.work / name / "model" / "scores.json").read_text()).get("masked_pieces")
              for name in ("one", "two")]
    expect(all(isinstance(p, int) for p in pieces), f"no masked_pieces in scores.json ({pieces}; {one.brief()})")
    expect(pieces[1] >= 0.8 * pieces[0], f"two processes scored {pieces[1]} masked pieces of dev, one process "
                                         f"{pieces[0]}: rank 0's share only")
    return f"{pieces[1]} masked pieces under 2 processes, {pieces[0]} under 1"


register("scores", "score-ddp-dev-distilbert", ddp_dev_eval, mode="distilbert")
register("scores", "score-ddp-dev-mlm", ddp_dev_eval, mode="mlm")


def logits_label_order(ctx: Ctx, swapped: bool) -> str:
    """--logits-ref cached with the teacher's labels (neg, pos); stage 2 with a teacher whose order is (pos, neg)
    is refused; with the same order it trains."""
    ctx.copy_store()
    ctx.ok(ctx.cli("distill", "cache-logits", "lab", ctx.fix.teacher, "--name", "logits", timeout=180),
           "cache-logits")
    teacher = str(ctx.fix.models() / ("teacher-swapped" if swapped else "teacher"))
    run = ctx.cli("distill", "task", "lab", "--teacher", teacher, "--logits-ref", "logits", "--student", "bilstm",
                  "--output", str(ctx.work / "out"), "--max-steps", "1", *TRAINING, timeout=180)
    if swapped:
        expect(run.clean_error, f"trained from logits in another label order: {run.brief()}")
        return f"refused: {run.brief()}"
    expect(run.rc == 0, f"the same label order was refused: {run.brief()}")
    return "same label order: trained"


register("scores", "logits-ref-label-order-swapped", logits_label_order, swapped=True)
register("scores", "logits-ref-label-order-same", logits_label_order, swapped=False)


def _padding_difference(folder: str) -> float:
    import torch
    from transformers import AutoTokenizer

    from distill.models import load_saved_classifier

    model = load_saved_classifier(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    short, long = "alpha beta", " ".join(WORDS * 3)
    with torch.no_grad():
        alone = model(**tokenizer([short], return_tensors="pt")).logits[0]
        padded = model(**tokenizer([short, long], return_tensors="pt", padding=True)).logits[0]
    return float((alone - padded).abs().max())


def textcnn_padding(ctx: Ctx) -> str:
    """A TextCNN student distilled from a teacher whose [PAD] embedding is not zero: a row's logits do not depend
    on how much padding its batch adds."""
    ctx.copy_store()
    ctx.ok(ctx.cli("distill", "task", "lab", "--teacher", ctx.fix.teacher, "--student", "textcnn", "--output",
                   str(ctx.work / "out"), "--max-steps", "1", *TRAINING, timeout=180), "task distillation")
    diff = ctx.api(_padding_difference, str(ctx.work / "out" / "model"))
    expect(diff < 1e-5, f"a row's logits move by {diff:.3g} when its batch is padded (the [PAD] embedding reaches "
                        f"the convolutions)")
    return f"logits identical with and without padding (max diff {diff:.1e})"


register("scores", "textcnn-padding-independent", textcnn_padding)


def _score_cache(store: str, model_dir: str, out: str) -> dict[str, int]:
    """score_models (the real one, on a tiny model) with a cached entry keyed the old way (model path, mtime,
    test id; no evaluation config): how often it evaluated, then how often on a second pass."""
    from distillery.recipes import ablation
    from pipelines.store import Store

    calls = {"evaluate": 0}
    real = ablation.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["evaluate"] += 1
        return real(*args, **kwargs)

    ablation.evaluate = evaluate
    folder = Path(out)
    folder.mkdir()
    (folder / "experiment.toml").write_text("")
    st = Store(store)
    test = st.resolve("lab")
    key = f"{Path(model_dir)}@{(Path(model_dir) / 'model.safetensors').stat().st_mtime_ns}|{test}"
    old = {"accuracy": 0.123, "macro_f1": 0.123, "parameters": 1, "non_embedding_parameters": 1,
           "latency_ms_batch1": 1.0, "latency_ms_batch32": 1.0}
    (folder / "scores.json").write_text(json.dumps({key: old}))
    counts = {}
    for attempt in ("first", "second"):
        x = ablation.Experiment(st, ablation.load_experiment(folder / "experiment.toml"), folder,
                                ablation.Clock(folder / "wall_clock.json"))
        x.names = {"test": "lab", "dev": "dev"}
        x.teacher = Path(model_dir)
        x.runs = {}
        calls["evaluate"] = 0
        ablation.score_models(x)
        counts[attempt] = calls["evaluate"]
    return counts


def score_cache_key(ctx: Ctx) -> str:
    """The recipe's score cache: an entry keyed without the evaluation config (the old key) is not reused; an
    entry it wrote itself is."""
    run_dir = run_copy(ctx)
    counts = ctx.api(_score_cache, str(ctx.store), str(run_dir / "model"), str(ctx.work / "experiment"))
    expect(counts["first"] >= 1, "a cached score keyed on model path, mtime and test id only was reused")
    expect(counts["second"] == 0, "the cache no longer reuses its own entries")
    return f"an old-style key is not reused ({counts['first']} evaluations); the new keys are (0 on a second pass)"


register("scores", "score-cache-keyed-on-eval-config", score_cache_key)


def _best_student() -> Any:
    """The recipe's pick among students whose dev and test accuracies disagree (None: the recipe picks none)."""
    from distillery.recipes import ablation

    pick = getattr(ablation, "best_student", None)
    if pick is None:
        return None

    def row(dev: float, test: float) -> dict[str, Any]:
        return {"accuracy": {"mean": test, "std": 0.0}, "dev_accuracy": {"mean": dev, "std": 0.0},
                "accuracy_vs_teacher": test / 0.9}
    return pick({"teacher": row(0.9, 0.9), "by-dev": row(0.85, 0.70), "by-test": row(0.60, 0.88)})


def best_student_by_dev(ctx: Ctx) -> str:
    """The ablation recipe's best student is picked by dev accuracy and reported on test (the README's pick)."""
    best = ctx.api(_best_student)
    expect(best is not None, "the recipe picks no best student by dev (distillery.recipes.ablation.best_student)")
    said = json.dumps(best)
    expect('"by-dev"' in said and '"by-test"' not in said, f"picked {one_line(said, 160)}, not the best on dev")
    return f"picked by dev: {one_line(said, 160)}"


register("scores", "best-student-picked-by-dev", best_student_by_dev)


# ---- caches: one named place, checked on read ------------------------------------------------------------------------
def vector_cache(ctx: Ctx, damage: str) -> str:
    """augment --vectors FILE converts FILE into the cache (~/.cache/distillery: HOME is the probe's); nothing
    else is written outside the store; a cache entry then damaged (its matrix zeroed, or the entry replaced by a
    symlink to a zeroed copy) is checked on read: the same augmentation as with the good one, or a one-line
    refusal."""
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = sorted({w for t in texts(8) for w in t.split()} | {"omega", "sigma", "tau", "upsilon", "phi"})
    glove = ctx.work / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(f"{x:.5f}" for x in rng.normal(size=50)) + "\n" for w in vocab))
    path = write_jsonl(ctx.work / "in.jsonl", [{"text": t} for t in texts(8)])
    home, tmp, cwd = ctx.work / "home", ctx.work / "tmp", ctx.work / "cwd"
    for folder in (home, tmp, cwd):
        folder.mkdir()
    env = {"HOME": str(home), "DISTILLERY_CACHE": None, "TMPDIR": str(tmp)}
    args = ["augment", "v", "--mlm", "none", "--vectors", str(glove), "--num-aug", "2", "--name", "aug",
            "--workers", "0", "--replace-prob", "0.9"]
    shards = []
    for attempt, store in enumerate((ctx.store, ctx.work / "store2")):
        ctx.ok(ctx.cli("preprocess", str(path), "--name", "v", store=store, env=env, cwd=cwd), "preprocess")
        run = ctx.cli(*args, store=store, env=env, cwd=cwd, timeout=180)
        if attempt == 1 and run.clean_error:
            return f"cache only in ~/.cache/distillery; the bad entry refused: {run.brief()}"
        ctx.ok(run, f"augment ({attempt + 1})")
        shards.append([s["sha256"] for s in manifest(store, ref_id(store, "aug") or "")["shards"]])
        if attempt == 0:
            strays = [str(p.relative_to(ctx.work)) for p in [*home.rglob("*"), *tmp.rglob("*"), *cwd.rglob("*")]
                      if p.is_file() and not p.is_relative_to(home / ".cache" / "distillery")]
            expect(not strays, f"written outside the store and the cache: {', '.join(strays[:4])}")
            matrices = list((home / ".cache" / "distillery").rglob("*.npy"))
            expect(len(matrices) == 1, f"{len(matrices)} vector matrices in ~/.cache/distillery")
            entry = matrices[0].parent
            if damage == "symlink":
                shutil.copytree(entry, ctx.work / "planted")
                shutil.rmtree(entry)
                entry.symlink_to(ctx.work / "planted")
                entry = ctx.work / "planted"
            matrix = entry / matrices[0].name
            np.save(matrix, np.zeros_like(np.load(matrix)))           # same shape, other numbers
    expect(shards[0] == shards[1], f"a {'symlinked' if damage == 'symlink' else 'damaged'} cache entry was used: "
                                   f"the same augmentation gave other rows")
    return "cache only in ~/.cache/distillery; the bad entry was not used"


register("cache", "vector-cache-damaged-entry", vector_cache, damage="zeros")
register("cache", "vector-cache-symlinked-entry", vector_cache, damage="symlink")


# ---- running ---------------------------------------------------------------------------------------------------------
def run_probe(probe: Probe, root: Path, fix: Fixtures) -> tuple[str, str, float]:
    work = root / probe.name
    work.mkdir()
    started = time.monotonic()
    try:
        detail = probe.fn(Ctx(work, fix))
        status = "ok"
    except Broken as exc:
        status, detail = "BROKEN", str(exc)
    except Skip as exc:
        status, detail = "skip", str(exc)
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run is reported, never hidden
        status, detail = "BROKEN", f"probe failed: {type(exc).__name__}: {exc}"
    return status, one_line(detail, 400), time.monotonic() - started


def preload() -> None:
    """Import the CLI and the steps' modules once, and hash each step's code once (``Step.code_identity`` caches
    it), so that forked commands start warm."""
    import importlib

    for module in ("distillery.cli.main", "distillery.cli.preprocess", "distillery.cli.augment",
                   "distillery.cli.distill", "distill.api", "distill.logits", "distill.mlm", "distillery.compose",
                   "augment", "augment.engine", "preprocess", "preprocess.step", "pandas"):
        with contextlib.suppress(Exception):
            loaded = importlib.import_module(module)
            if hasattr(loaded, "STEP"):
                loaded.STEP.code_identity()


def main() -> None:
    global SPAWN
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="probe names or shell patterns (repeatable, commas separate)")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")
    parser.add_argument("--spawn", action="store_true", help="run each command as a fresh `python -m distillery`")
    parser.add_argument("--keep", action="store_true", help="keep the probes' folders (printed at the end)")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    args = parser.parse_args()
    SPAWN = args.spawn
    patterns = [p for value in args.only for p in value.split(",") if p]
    chosen = [p for p in PROBES if not patterns or any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    if args.list:
        for p in chosen:
            print(f"{p.item:<7} {p.name}")
        return
    if not chosen:
        raise SystemExit(f"no probe matches {', '.join(patterns)} (see --list)")
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    os.environ["DISTILLERY_CACHE"] = str(root / "cache")          # never the user's own cache
    if not SPAWN:
        preload()
    fix = Fixtures(root / "fixtures")
    fix.root.mkdir()
    results = []
    try:
        for probe in chosen:
            status, detail, seconds = run_probe(probe, root, fix)
            print(f"{status:<7} {probe.name}  {detail}", flush=True)
            results.append({"name": probe.name, "item": probe.item, "status": status, "detail": detail,
                            "seconds": round(seconds, 1)})
    finally:
        if args.keep:
            print(f"probe folders kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "BROKEN", "skip")}
    total = time.monotonic() - began
    print(f"{counts['ok']} ok, {counts['BROKEN']} BROKEN, {counts['skip']} skipped of {len(results)} probes "
          f"in {total:.0f} s ({'spawned' if SPAWN else 'forked'} commands, code in {REPO})")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"repo": str(REPO), "mode": "spawn" if SPAWN else "fork",
                                                    "seconds": round(total, 1), "counts": counts,
                                                    "probes": results}, indent=2) + "\n")
    sys.exit(1 if counts["BROKEN"] else 0)


if __name__ == "__main__":
    main()
