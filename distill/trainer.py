"""The training loop every training mode shares (``distill.train_run`` drives it).

AdamW with linear warm-up and decay, gradient accumulation, clipping, AMP (bf16 / fp16), optional
``torch.compile``, DDP under ``torchrun`` (same code path; one process is the default), atomic checkpoints
with the exact data position, resume that reproduces an uninterrupted run step for step, and non-finite
loss handling (the step is skipped and counted; the run stops after ``max_nonfinite``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from distill import checkpoint
from distill.config import TrainConfig
from distill.data import EpochLoaders, ShardStream
from pipelines.atomic import append_line, create_new, write_bytes_atomic, write_json_atomic
from pipelines.config import runtime_fields, to_dict
from pipelines.confine import is_regular, open_regular, read_own_text
from pipelines.errors import DistilleryError
from pipelines.progress import progress_bar, say

PREFETCH_BATCHES = 32   # open the next epoch's loader when this many batches of the current one are left
EvalFn = Callable[[nn.Module], dict[str, Any]]   # the objective -> its scores on the evaluation version
RUN_MARK = ".distillery-run"            # written into a run folder when a run first uses it
PNG = b"\x89PNG\r\n\x1a\n"
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
RUN_FOLDERS = frozenset({"checkpoints", "model", "words"})


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """The first bytes of a regular file (b"" for a symlink, a special file or an unreadable one)."""
    try:
        with os.fdopen(open_regular(path, follow=False), "rb") as fh:
            return fh.read(size)
    except (DistilleryError, OSError):
        return b""


def _json_with(path: Path, *keys: str, first_line: bool = False) -> bool:
    """Whether a file holds a JSON object (its first line one, with ``first_line``) with these keys."""
    head = _head(path, 1 << 16 if first_line else 1 << 24)
    try:
        data = json.loads(head.split(b"\n", 1)[0] if first_line else head)
    except ValueError:
        return False
    return isinstance(data, dict) and set(keys) <= set(data)


def _folder_of(path: Path, allowed: Callable[[str], bool]) -> bool:
    """Whether ``path`` is a real folder whose entries all have names ``allowed`` (or are temporary files)."""
    return path.is_dir() and not path.is_symlink() and all(allowed(p.name) or checkpoint.TEMPORARY.fullmatch(p.name)
                                                           for p in path.iterdir())


# what a run writes into its folder, each with the test that an entry of that name is one (before RUN_MARK existed)
RUN_LAYOUT: dict[str, Callable[[Path], bool]] = {
    ".lock": is_regular,
    "config.json": lambda p: _json_with(p, "mode", "config", "steps"),
    "finished.json": lambda p: _json_with(p, "run", "model"),
    "metrics.jsonl": lambda p: is_regular(p) and (not _head(p, 1) or _json_with(p, "step", first_line=True)),
    "loss.png": lambda p: _head(p, len(PNG)) == PNG,
    "checkpoints": lambda p: _folder_of(p, lambda name: bool(checkpoint.STEP_FILE.fullmatch(name))),
    "words": lambda p: _folder_of(p, TOKENIZER_FILES.__contains__),
    "model": lambda p: _folder_of(p, lambda name: True) and (not any(p.iterdir()) or is_regular(p / "card.json")),
    "tensorboard": lambda p: _folder_of(p, lambda name: name.startswith("events.out.tfevents.")),
}


def claim_run_folder(run_dir: Path) -> Path:
    """Make sure ``run_dir`` is a run folder of ours before anything is written into it or deleted from it: a new
    or empty folder is marked as one (``RUN_MARK``) and a marked one is one; an unmarked folder is one only when
    everything in it is what a run writes (``RUN_LAYOUT``: a run of an earlier distillery), and is then marked.
    Anything else, or in a marked folder a file or folder of a run replaced by a symlink or a special file, is
    refused in one line naming what is in the way, before any write."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DistilleryError(f"--output {run_dir} is not a folder; choose another --output") from None
    mark = run_dir / RUN_MARK
    marked = os.path.lexists(mark)
    if marked and not is_regular(mark):
        raise DistilleryError(f"{mark} is not a regular file; refusing to use {run_dir} as a run folder")
    for item in sorted(run_dir.iterdir()):
        check = RUN_LAYOUT.get(item.name)
        if item.name == RUN_MARK or checkpoint.TEMPORARY.fullmatch(item.name) or (marked and check is None):
            continue
        right_kind = (item.is_dir() and not item.is_symlink()) if item.name in RUN_FOLDERS else is_regular(item)
        if marked and not right_kind:
            raise DistilleryError(f"{item} is not the {'folder' if item.name in RUN_FOLDERS else 'file'} a run "
                                  f"writes there (a symlink, or another kind of file); refusing to write through it "
                                  f"(remove it)")
        if not marked and (check is None or not check(item)):
            raise DistilleryError(f"{run_dir} is not empty and is not a distillery run folder ({item.name!r} is "
                                  f"not something a run writes); choose another --output (nothing was changed)")
    if marked:
        return run_dir
    try:
        fd = create_new(mark)
    except FileExistsError:                      # another process marked it first
        return run_dir
    with os.fdopen(fd, "w") as fh:
        fh.write("a distillery run folder: distillery writes and deletes only its own files here\n")
    return run_dir


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one), from torchrun's environment."""
    return int(os.environ.get("RANK", "0")) == 0


def process_count() -> int:
    """How many processes train together (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, rank and world size (from torchrun's environment), thread count."""
    world_size = process_count()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DistilleryError(f"device '{cfg.device}' asked for but CUDA is not available")
    if device.type == "cuda" and world_size > 1:
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(cfg.threads or max(1, cores // local_processes))
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise DistilleryError(f"amp must be none, bf16 or fp16 (got '{cfg.amp}')")
    if cfg.amp == "fp16" and device.type != "cuda":
        raise DistilleryError("amp=fp16 needs a CUDA device (use bf16 or none on CPU)")
    return Runtime(device, rank, world_size, local_rank)


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line (infinite for a line that is not a record: dropped on resume)."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


def total_steps(cfg: TrainConfig, stream: ShardStream) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch = math.ceil(stream.local_batches(0) / cfg.grad_accum)
    if per_epoch == 0:
        raise DistilleryError("the training version has no rows")
    return per_epoch, cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (the fused kernel on CPU and CUDA: ~10x faster on CPU); no weight decay on biases and LayerNorm."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                             fused=device.type in ("cpu", "cuda"))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class Trainer:
    """Trains ``objective`` (a module whose forward(batch) returns (loss, parts)) on ``stream``.

    The trainable parameters are the objective's (student plus projections); the run folder gets
    ``checkpoints/``, ``metrics.jsonl``, ``config.json`` and ``loss.png``.
    """

    objective: nn.Module
    stream: ShardStream
    cfg: TrainConfig
    output_dir: Path
    runtime: Runtime
    eval_fn: EvalFn | None = None
    description: str = "train"
    record: dict[str, Any] = field(default_factory=dict)   # extra facts for config.json

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.per_epoch, self.total = total_steps(self.cfg, self.stream)
        if self.stream.local_batches() == 0:
            raise DistilleryError(f"rank {self.runtime.rank} gets no batch: the version has fewer batches "
                                  f"({self.stream.num_batches}) than processes ({self.runtime.world_size})")
        warmup = int(self.cfg.warmup * self.total) if self.cfg.warmup < 1 else int(self.cfg.warmup)
        self.objective.to(self.runtime.device)
        self.optimizer = make_optimizer(self.objective, self.cfg, self.runtime.device)
        self.scheduler = linear_schedule(self.optimizer, warmup, self.total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cfg.amp == "fp16")
        self.step, self.epoch, self.position, self.nonfinite = 0, 0, 0, 0
        self.last_eval: dict[str, Any] = {}
        self.checkpointed_step = -1    # the step of the last checkpoint saved or loaded (the same on every rank)
        self._last_batch: dict[str, torch.Tensor] | None = None
        self._board: Any = None        # the TensorBoard writer, made at the first record (--report-to tensorboard)
        self._last_logged: tuple[int, float] | None = None     # (step, time) of the last loss record: throughput

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "nonfinite": self.nonfinite,
                "objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": checkpoint.rng_state(), "data": {"epoch": self.epoch, "position": self.position,
                                                        "seed": self.stream.state.seed,
                                                        "world_size": self.runtime.world_size},
                "last_eval": self.last_eval, "config": to_dict(self.cfg), "record": self.record}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.nonfinite, self.last_eval = state["nonfinite"], state.get("last_eval", {})
        self.checkpointed_step = self.step
        checkpoint.set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        if self.runtime.is_main:
            checkpoint.save(self.ckpt_dir, self.step, self.state_dict(), self.cfg.keep_checkpoints)
        self.checkpointed_step = self.step
        if self.runtime.distributed:
            torch.distributed.barrier()

    def _prepare_folder(self, resume: bool) -> None:
        """Claim the run folder (the main process), resume from the newest usable checkpoint or start afresh, and
        record the run's config."""
        if self.runtime.is_main:
            claim_run_folder(self.output_dir)
        latest = checkpoint.latest(self.ckpt_dir)
        if latest is not None and not resume:
            raise DistilleryError(f"{self.output_dir} already holds a run (checkpoint {latest.name}); "
                                  f"continue it with --resume or choose another --output")
        found = checkpoint.load_newest_good(self.ckpt_dir, say, use=self._resume_from) if latest is not None else None
        logged = os.path.lexists(self.metrics_path) and self.runtime.is_main
        if logged and not is_regular(self.metrics_path):
            raise DistilleryError(f"{self.metrics_path} is not a regular file; refusing to write through it "
                                  f"(remove it)")
        if found is not None and logged:                      # drop lines written after the checkpoint
            kept = [line for line in read_own_text(self.metrics_path).splitlines()
                    if _logged_step(line) <= self.step]
            write_bytes_atomic(self.metrics_path, "".join(line + "\n" for line in kept).encode())
        elif logged:
            self.metrics_path.unlink()
        if self.runtime.is_main:
            info = {"mode": self.description, "config": to_dict(self.cfg), "steps": self.total,
                    "steps_per_epoch": self.per_epoch, "world_size": self.runtime.world_size, **self.record}
            write_json_atomic(self.output_dir / "config.json", info)

    def _resume_from(self, state: dict[str, Any]) -> None:
        """Continue from a loaded checkpoint: other settings are refused; one not shaped like this run's state,
        or whose state does not load, is ``checkpoint.Unusable`` (the previous checkpoint is tried)."""
        free = runtime_fields(self.cfg) | {"grad_accum"}     # grad_accum: with the process count, below
        changed = {k: (v, getattr(self.cfg, k, None)) for k, v in state["config"].items()
                   if k not in free and v != getattr(self.cfg, k, None)}
        if changed or state.get("record", self.record) != self.record:
            raise DistilleryError(f"cannot resume {self.output_dir}: the run was started with other settings "
                                  f"({changed or 'data / models differ'}); use the same config or a new --output")
        self._check_global_batch(state["config"]["grad_accum"],
                                 state["data"].get("world_size", self.runtime.world_size))
        shapes = [tuple(p.shape) for group in self.optimizer.param_groups for p in group["params"]]
        checkpoint.check_structure(state, self.state_dict(), shapes)
        try:
            self.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise checkpoint.Unusable(f"its state does not load ({reason[:160]})") from None

    def _check_global_batch(self, grad_accum: int, world_size: int) -> None:
        """A run resumes under another process count when the global batch (batch_size x processes x grad_accum)
        stays: the data position counts global batches and a step's rows are the same."""
        now = self.runtime.world_size * self.cfg.grad_accum
        if grad_accum * world_size != now:
            hint = (f"--grad-accum {grad_accum * world_size // self.runtime.world_size}"
                    if grad_accum * world_size % self.runtime.world_size == 0 else f"{world_size} processes")
            raise DistilleryError(
                f"cannot resume {self.output_dir}: the global batch would change (batch_size x processes x "
                f"grad_accum = {self.cfg.batch_size} x {world_size} x {grad_accum} when saved, {self.cfg.batch_size} x "
                f"{self.runtime.world_size} x {self.cfg.grad_accum} now); keep it, e.g. with {hint}")

    def _log(self, record: dict[str, Any]) -> None:
        if self.runtime.is_main:
            append_line(self.metrics_path, json.dumps(record, sort_keys=True))
            if self.cfg.report_to == "tensorboard":
                self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        """The record's numbers as scalars at its step (nested keys joined by '/'); a resumed run's events start
        where its checkpoint stood (later events of the interrupted run are purged, as its metrics lines are)."""
        if self._board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DistilleryError("--report-to tensorboard needs TensorBoard: pip install tensorboard") from None
            self._board = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.step or None)

        def scalars(data: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
            found = []
            for key, value in data.items():
                if isinstance(value, dict):
                    found += scalars(value, f"{prefix}{key}/")
                elif isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    found.append((f"{prefix}{key}", float(value)))
            return found
        for tag, value in scalars(record):
            self._board.add_scalar(tag, value, record.get("step", self.step))
        self._board.flush()

    # ---- the loop --------------------------------------------------------------------------------
    def _wrapped(self) -> nn.Module:
        model = self.objective
        if self.cfg.compile:
            model = torch.compile(model)
        if self.runtime.distributed:
            ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        return model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.runtime.device.type, dtype=dtype)

    def _micro_batches(self, iterator, consumed_local: int) -> list[tuple[dict[str, torch.Tensor], float]]:
        """The micro-batches of one step with their weights; under DDP, ranks short of batches repeat
        their last one with weight 0 so every rank does the same number of passes."""
        expected = min(self.cfg.grad_accum, self.stream.local_batches(0) - consumed_local)
        micro: list[tuple[dict[str, torch.Tensor], float]] = []
        for _ in range(expected):
            batch = next(iterator, None)
            if batch is None:                      # only under DDP: this rank has fewer batches than rank 0
                micro.append((self._last_batch, 0.0))
            else:
                micro.append((batch, 1.0))
                self._last_batch = batch
        return micro

    def _all_true(self, flag: bool) -> bool:
        if not self.runtime.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.runtime.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        if not self.runtime.distributed:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=self.runtime.device)
        torch.distributed.all_reduce(summed)
        return summed.tolist()

    def _train_step(self, model: nn.Module, micro: list[tuple[dict[str, torch.Tensor], float]]
                    ) -> tuple[float, dict[str, float]] | None:
        """Forward/backward over the micro-batches and one optimizer step; None when a loss was non-finite.

        The gradient and the logged loss are the mean over the step's micro-batches of all ranks (DDP averages
        gradients over ranks, hence the ``world_size`` factor), so any split of a global batch into processes x
        accumulation computes the same step."""
        total, parts_sum = 0.0, {}
        n = self._sum_over_ranks([sum(w for _, w in micro)])[0] or 1.0
        scale = self.runtime.world_size / n
        for i, (batch, weight) in enumerate(micro):
            sync = i == len(micro) - 1 or not self.runtime.distributed
            with (contextlib.nullcontext() if sync else model.no_sync()), self._autocast():
                loss, parts = model(to_device(batch, self.runtime.device))
            if not self._all_true(bool(torch.isfinite(loss).item())):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.scaler.scale(loss * (weight * scale)).backward()
            total += loss.item() * weight
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.item() * weight
        total, *sums = (x / n for x in self._sum_over_ranks([total, *parts_sum.values()]))
        parts_sum = dict(zip(parts_sum, sums))
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, parts_sum

    def after_step(self) -> None:
        """Called after every optimizer step (a hook for subclasses and tests)."""

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or continue a checkpointed run); returns the last eval metrics."""
        self._prepare_folder(resume)
        model = self._wrapped()
        self.objective.train()
        bar = (progress_bar(total=self.total, desc=self.description, unit="step", initial=self.step)
               if self.runtime.is_main else tqdm(disable=True))
        world = self.runtime.world_size
        loaders = EpochLoaders(self.stream, self.cfg.num_workers)
        iterator = loaders.open(self.epoch, self.position)
        consumed_local = self.position // world
        while self.step < self.total:
            if self.stream.local_batches() - consumed_local <= PREFETCH_BATCHES:
                loaders.prefetch(self.epoch + 1)
            micro = self._micro_batches(iterator, consumed_local)
            if not micro:
                self.epoch, self.position, consumed_local = self.epoch + 1, 0, 0
                iterator = loaders.open(self.epoch)
                continue
            consumed_local += len(micro)
            self.position += len(micro) * world
            result = self._train_step(model, micro)
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            self._after_optimizer_step(result, bar)
            self.after_step()
        bar.close()
        if self.eval_fn is not None and self.last_eval.get("step") != self.step:
            self._run_eval()
        if self.checkpointed_step != self.step:     # decided alike on every rank (never from the files rank 0 writes)
            self.save_checkpoint()
        if self._board is not None:
            self._board.close()
        return self.last_eval

    def _after_optimizer_step(self, result: tuple[float, dict[str, float]] | None, bar) -> None:
        if result is None:
            self.nonfinite += 1
            self._log({"step": self.step, "epoch": self.epoch, "nonfinite": self.nonfinite})
            if self.nonfinite >= self.cfg.max_nonfinite:
                raise DistilleryError(
                    f"stopped at step {self.step}: {self.nonfinite} steps had a non-finite loss (limit "
                    f"max_nonfinite={self.cfg.max_nonfinite}); lower lr, check the data, or try amp=none; the last "
                    f"good checkpoint is in {self.ckpt_dir}")
        elif self.step % self.cfg.log_every == 0 or self.step == self.total:
            loss, parts = result
            self._log({"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                       "loss": loss, "parts": parts, "nonfinite": self.nonfinite})
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self._throughput()
        if self.eval_fn is not None and self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self._run_eval()
        if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _throughput(self) -> None:
        """Steps and rows per second since the previous loss record, to TensorBoard only (wall-clock figures would
        make metrics.jsonl differ between identical runs)."""
        now = time.perf_counter()
        if self.cfg.report_to == "tensorboard" and self.runtime.is_main and self._last_logged is not None:
            rate = (self.step - self._last_logged[0]) / max(now - self._last_logged[1], 1e-9)
            rows = rate * self.cfg.batch_size * self.cfg.grad_accum * self.runtime.world_size
            self._tensorboard({"step": self.step, "throughput": {"steps_per_second": rate, "rows_per_second": rows}})
        self._last_logged = (self.step, now)

    def _run_eval(self) -> None:
        if self.runtime.is_main:
            self.objective.eval()
            scores = self.eval_fn(self.objective)
            self.objective.train()
            self.last_eval = {"step": self.step, **scores}
            self._log({"step": self.step, "eval": scores})
        if self.runtime.distributed:
            torch.distributed.barrier()
