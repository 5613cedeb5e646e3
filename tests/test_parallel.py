"""The one worker pool (``pipelines.parallel``): order, bounded look-ahead, per-worker state, in-process mode, and
what happens when a task fails, a worker dies, the caller is interrupted or the caller itself is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipelines.errors import DistilleryError, VersionExistsError
from pipelines.parallel import WorkerPool, WorkerTraceback, worker_state

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_hang():
    """A test that waits for ever fails after 60 s instead."""
    def fail(*_: object) -> None:
        raise TimeoutError("the pool hung")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


class Scaler:
    """A worker's state: built once per worker by the pool's ``init``."""

    def __init__(self, factor: int):
        self.factor = factor
        self.pid = os.getpid()


def scaled_late(task: tuple[int, float]) -> tuple[int, int]:
    """The task's value times the worker's factor, after sleeping the task's delay; with the worker's pid."""
    value, delay = task
    time.sleep(delay)
    state: Scaler = worker_state()
    return value * state.factor, state.pid


def fail_on_three(value: int) -> int:
    if value == 3:
        raise DistilleryError(f"chunk {value}: column 'text' is missing in data/in.jsonl")
    return value


def refuse(value: int) -> int:
    raise VersionExistsError(f"version {value} exists", "ab" * 32)       # cannot be unpickled as it is


def exit_on_two(value: int) -> int:
    if value == 2:
        os._exit(3)
    return value


def kill_self(value: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return value


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def broken_init() -> None:
    raise DistilleryError("tokenizer 'nowhere' not found")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


@pytest.mark.parametrize("processes", [0, 1, 3])
def test_results_in_task_order_whatever_finishes_first(processes):
    tasks = [(i, 0.02 * ((7 - i) % 4)) for i in range(12)]        # later tasks often finish first
    with WorkerPool(processes, init=Scaler, init_args=(10,)) as pool:
        results = list(pool.imap(scaled_late, tasks))
        parts = pool.submit(scaled_late, [((i, 0.03 * (3 - i)),) for i in range(4)])()
    assert [value for value, _ in results] == [10 * i for i in range(12)]
    assert [value for value, _ in parts] == [0, 10, 20, 30]
    pids = {pid for _, pid in results}
    if processes == 0:          # the same function on the same state, in this process
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids and len(pids) == processes


@pytest.mark.parametrize(("processes", "ahead", "limit"), [(2, None, 4), (2, 3, 3), (0, None, 1)])
def test_at_most_ahead_tasks_taken_before_their_results(processes, ahead, limit):
    taken = 0

    def tasks():
        nonlocal taken
        for i in range(20):
            taken += 1
            yield i, 0.0

    returned = 0
    with WorkerPool(processes, init=Scaler, init_args=(1,)) as pool:
        for value, _ in pool.imap(scaled_late, tasks(), ahead=ahead):
            assert value == returned and taken <= returned + limit
            returned += 1
    assert returned == taken == 20


def test_tasks_and_results_larger_than_a_pipe_flow_both_ways():
    blobs = (bytes([i]) * (8 << 20) for i in range(8))         # each far over a pipe's buffer, both directions
    with WorkerPool(2) as pool:
        assert [blob[:1] for blob in pool.imap(bytes, blobs)] == [bytes([i]) for i in range(8)]


@pytest.mark.parametrize("processes", [0, 2])
def test_a_task_error_reaches_the_caller_as_the_same_error(processes):
    with WorkerPool(processes) as pool, pytest.raises(DistilleryError) as caught:
        list(pool.imap(fail_on_three, range(8)))
    assert str(caught.value) == "chunk 3: column 'text' is missing in data/in.jsonl"
    if processes:       # the worker's traceback comes along as the cause
        assert isinstance(caught.value.__cause__, WorkerTraceback)
        assert "fail_on_three" in str(caught.value.__cause__)


def test_an_error_that_cannot_travel_keeps_its_kind_and_message():
    with WorkerPool(1) as pool, pytest.raises(DistilleryError, match=r"^version 7 exists$"):
        pool.submit(refuse, [(7,)])()


def test_an_init_error_reaches_the_caller():
    with WorkerPool(2, init=broken_init) as pool, pytest.raises(DistilleryError, match="^tokenizer 'nowhere'"):
        list(pool.imap(fail_on_three, range(4)))
    with pytest.raises(DistilleryError, match="^tokenizer 'nowhere'"):
        WorkerPool(0, init=broken_init)


@pytest.mark.parametrize(("fn", "how"), [(exit_on_two, "exited with code 3"), (kill_self, "was killed by SIGKILL")])
def test_a_worker_that_dies_fails_the_map_instead_of_hanging(fn, how):
    with WorkerPool(2) as pool, pytest.raises(DistilleryError, match=f"worker process \\d+ {how} before answering"):
        list(pool.imap(fn, range(6)))


def test_an_idle_worker_killed_from_outside_fails_the_next_call_and_close_returns():
    pool = WorkerPool(2)
    pids = pool.submit(sleep_then_pid, [(0.0,), (0.0,)])()
    os.kill(pids[1], signal.SIGKILL)            # idle, waiting for a task (a multiprocessing.Pool hangs here)
    with pytest.raises(DistilleryError, match=f"worker process {pids[1]} was killed by SIGKILL"):
        pool.submit(sleep_then_pid, [(0.2,), (0.2,)])()
    pool.close()
    assert gone(pids)


def test_ctrl_c_in_the_caller_ends_the_workers():
    # Python's own Ctrl-C handler, whatever the test runner installed (a pytest-xdist worker may ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        pool = WorkerPool(2)
        pids = pool.submit(sleep_then_pid, [(0.0,), (0.0,)])()
        interrupt = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        interrupt.start()
        with pytest.raises(KeyboardInterrupt), pool:
            pool.submit(sleep_then_pid, [(30.0,), (30.0,)])()    # workers ignore Ctrl-C; the caller ends them
    finally:
        signal.signal(signal.SIGINT, previous)
    assert gone(pids, within=2.0)


def test_leaving_a_map_early_ends_the_workers():
    def stream():
        with WorkerPool(2, init=Scaler, init_args=(1,)) as pool:
            yield from pool.imap(scaled_late, ((i, 0.0) for i in range(100)))

    results = stream()
    pids = {pid for _, pid in (next(results), next(results), next(results))}
    results.close()
    assert pids and gone(list(pids), within=2.0)


def test_workers_end_when_the_caller_is_killed():
    script = textwrap.dedent("""
        import os, signal, time
        from pipelines.parallel import WorkerPool
        pool = WorkerPool(2)
        print(*pool.submit(os.getpid, [(), ()])(), flush=True)
        time.sleep(30)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    pids = [int(p) for p in child.stdout.readline().split()]
    child.kill()
    child.wait()
    assert len(pids) == 2 and gone(pids)
