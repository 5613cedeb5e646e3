"""One ordered, deterministic, bounded-memory parallel map over worker processes, for every step.

``WorkerPool(processes, init, init_args)`` starts ``processes`` workers (``multiprocess``, forked where the
platform can); each runs ``init(*init_args)`` once and keeps what it returns as its state, which the task
functions read with ``worker_state()`` (the one slot of per-worker state: a step's processor, tokenizer, ...).
``processes = 0`` runs every call in this process, the same function on the same state: each step decides which
of its ``workers`` values mean that. Two ways in, results always in submission order whichever worker finishes
first, so what a step writes never depends on the number of processes:

- ``imap(fn, tasks)``: ``fn(task)`` over a long iterator, at most ``ahead`` tasks taken from it and not yet
  returned (memory stays bounded however long the input; the iterator is never drained ahead);
- ``submit(fn, arg_lists)``: start ``fn(*args)`` for a few argument tuples (a chunk cut into parts); returns the
  collector of their results.

Failures: a task's exception is raised in the caller as the same exception (type and message; the worker's
traceback is its ``__cause__``), and so is an exception of ``init``; a worker that ends (killed, ``os._exit``, out
of memory) fails the call with one line naming it instead of waiting for ever; ``close()`` (the ``with`` block:
also on an exception or Ctrl-C in the caller) ends the workers at once. Workers ignore Ctrl-C (the caller decides)
and end when the caller's end of their pipe closes, even when the caller is killed.

Tasks and results travel with the C pickler rather than ``multiprocess``'s dill pickler, which is pure Python and
several times slower on chunks of many small objects; so ``fn`` is sent by reference and must be importable (a
module-level function). Sending runs in a thread of the caller while the caller reads the answers of every worker
as they come, so neither side waits on the other with a full pipe.
"""
from __future__ import annotations

import pickle
import queue
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from pipelines.errors import DistilleryError

_STATE: Any = None          # this process's worker state: what its pool's ``init`` returned
WAKE_S = 0.2                # the caller's longest wait for an answer before it looks at pending signals (Ctrl-C)


def worker_state() -> Any:
    """What the pool's ``init`` returned in this process (the caller's own pool state for an in-process pool)."""
    return _STATE


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process (its ``__cause__`` in the caller)."""


class _Worker:
    """One worker process, its end of the pipe, and its answers read but not yet collected (by task number)."""

    def __init__(self, process: Any, conn: Any):
        self.process = process
        self.conn = conn
        self.sent = 0                           # tasks sent so far; the next one gets this number
        self.read = 0                           # answers read so far (a worker answers in order)
        self.answers: dict[int, bytes] = {}

    def load(self) -> int:
        return self.sent - self.read

    def ended(self) -> DistilleryError:
        """The error a worker that ended before answering fails the pool with."""
        self.process.join(timeout=1)
        code = self.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = "ended" if code is None else f"exited with code {code}"
        return DistilleryError(f"worker process {self.process.pid} {how} before answering (out of memory? fewer "
                               f"workers use less); the parallel work stopped")


class WorkerPool:
    """``processes`` worker processes (0: none, every call runs here), each holding ``init(*init_args)``."""

    def __init__(self, processes: int, init: Callable[..., Any] | None = None, init_args: tuple[Any, ...] = ()):
        self.processes = max(0, processes)
        self._state: Any = None
        self._workers: list[_Worker] = []
        self._outbox: queue.SimpleQueue[tuple[Any, bytes] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        if self.processes == 0:
            self._state = init(*init_args) if init is not None else None
            return
        self._workers = _start_workers(self.processes, init, init_args)
        self._sender = threading.Thread(target=_send_all, args=(self._outbox,), daemon=True,
                                        name="worker-pool-sender")
        self._sender.start()

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any], ahead: int | None = None) -> Iterator[Any]:
        """``fn(task)`` for every task, in task order; at most ``ahead`` tasks (default: 2 per process, 1 in
        process) are taken from ``tasks`` before their results are returned."""
        limit = ahead or (2 * self.processes if self.processes else 1)
        pending: deque[Callable[[], Any]] = deque()
        for task in tasks:
            pending.append(self._start(fn, (task,)))
            if len(pending) >= limit:
                yield pending.popleft()()
        while pending:
            yield pending.popleft()()

    def submit(self, fn: Callable[..., Any], arg_lists: Iterable[tuple[Any, ...]]) -> Callable[[], list[Any]]:
        """Start ``fn(*args)`` for every argument tuple (in process: run them now); returns the collector of their
        results, in order (call it once)."""
        handles = [self._start(fn, args) for args in arg_lists]
        return lambda: [handle() for handle in handles]

    def close(self) -> None:
        """End the workers now (a task still running is abandoned) and drop the in-process state."""
        global _STATE
        for worker in self._workers:
            worker.process.terminate()
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        if self._sender is not None:             # its sends to the ended workers fail at once
            self._outbox.put(None)
            self._sender.join()
            self._sender = None
        for worker in self._workers:
            worker.conn.close()
        self._workers = []
        if self._state is not None and _STATE is self._state:
            _STATE = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], Any]:
        """Run ``fn(*args)`` here, or send it to the least busy worker; returns the getter of its result."""
        if not self.processes:
            return self._run_here(fn, args)
        worker = min(self._workers, key=_Worker.load)
        number = worker.sent
        worker.sent += 1
        self._outbox.put((worker.conn, pickle.dumps((fn, args), protocol=5)))
        return lambda: self._collect(worker, number)

    def _run_here(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], Any]:
        """``fn(*args)`` in this process, on this pool's state."""
        global _STATE
        _STATE = self._state
        result = fn(*args)
        return lambda: result

    def _collect(self, worker: _Worker, number: int) -> Any:
        """The result of task ``number`` of ``worker`` (its exception raised), reading answers until it came."""
        while number not in worker.answers:
            if number < worker.read:
                raise RuntimeError(f"the result of task {number} was already collected")
            self._read_answers()
        done, value = pickle.loads(worker.answers.pop(number))
        if done:
            return value
        error, trace = value
        raise error from WorkerTraceback(trace)

    def _read_answers(self) -> None:
        """Wait for answers and store them; a worker that ended fails the pool."""
        from multiprocess.connection import wait

        handles = {w.conn: w for w in self._workers} | {w.process.sentinel: w for w in self._workers}
        ready_now: list[Any] = []
        while not ready_now:    # short waits: a Ctrl-C that another thread received is handled within WAKE_S
            ready_now = wait(list(handles), timeout=WAKE_S)
        for ready in ready_now:
            worker = handles[ready]
            if ready is worker.conn:
                try:
                    worker.answers[worker.read] = worker.conn.recv_bytes()
                    worker.read += 1
                    continue
                except (EOFError, OSError):
                    pass
            raise worker.ended()


def _start_workers(processes: int, init: Callable[..., Any] | None, init_args: tuple[Any, ...]) -> list[_Worker]:
    """Start the worker processes, each with its own pipe."""
    import multiprocess

    # fork: no re-import of the caller's __main__ (works from notebooks, stdin and unguarded scripts)
    method = "fork" if "fork" in multiprocess.get_all_start_methods() else "spawn"
    context = multiprocess.get_context(method)
    workers: list[_Worker] = []
    for _ in range(processes):
        here, there = context.Pipe()
        inherited = [w.conn for w in workers] + [here] if method == "fork" else []
        process = context.Process(target=_serve, args=(there, inherited, init, init_args), daemon=True,
                                  name="distillery-worker")
        process.start()
        there.close()
        workers.append(_Worker(process, here))
    return workers


def _send_all(outbox: queue.SimpleQueue[tuple[Any, bytes] | None]) -> None:
    """The caller's sending thread: pickled tasks to their workers, in order, until ``None``."""
    while (item := outbox.get()) is not None:
        conn, payload = item
        try:
            conn.send_bytes(payload)
        except OSError:                         # the worker ended: the caller sees it when it reads
            pass


def _serve(conn: Any, inherited: list[Any], init: Callable[..., Any] | None, init_args: tuple[Any, ...]) -> None:
    """A worker: ``init`` once, then answer each task in order until the caller's end of the pipe closes."""
    global _STATE
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the caller's to handle: it ends the pool
    for end in inherited:                               # the caller's ends: only the caller may hold them open
        end.close()
    try:
        _STATE = init(*init_args) if init is not None else None
        failed = None
    except BaseException as exc:                        # every task answers with it
        failed = _failure(exc)
    while True:
        try:
            conn.send_bytes(failed or _answer(conn.recv_bytes()))
        except (EOFError, OSError):                     # the caller closed its end, or ended
            return


def _answer(message: bytes) -> bytes:
    """The pickled ``(True, result)`` of one task, or its failure."""
    try:
        fn, args = pickle.loads(message)
        return pickle.dumps((True, fn(*args)), protocol=5)
    except BaseException as exc:
        return _failure(exc)


def _failure(error: BaseException) -> bytes:
    """The pickled ``(False, (exception, traceback text))`` of an exception raised in this worker."""
    trace = "".join(traceback.format_exception(error))
    return pickle.dumps((False, (_portable(error), trace)), protocol=5)


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else one of the same kind (a DistilleryError stays one) and message."""
    try:
        pickle.loads(pickle.dumps(error, protocol=5))
        return error
    except Exception:
        if isinstance(error, DistilleryError):
            return DistilleryError(str(error))
        return RuntimeError(f"{type(error).__name__}: {error}")
