"""`distillery run PIPELINE.toml`: a user's pipeline declared once, run (and rerun) through the one step runner.

A pipeline file names its inputs and its stages::

    [inputs]                          # names for files (relative to the pipeline file) or existing versions
    train = "data/train.tsv"
    dev = "data/dev.tsv"
    base = "version:wordnet-train@v1"

    [stages.train]                    # a stage: its step, what it reads, a version name, then the step's options
    step = "preprocess"               # (the same keys as the step's TOML section and flags)
    inputs = ["@train"]
    name = "my-train"
    input = { label_column = "label" }

    [stages.teacher]
    step = "finetune"
    data = "@train"                   # "@x": input x, or stage x's output (a version id, or a model folder)
    model = "path/to/encoder"
    eval_ref = "@dev"

Steps: preprocess, augment, cache-logits (versions; up to date when the version is complete, resumed when a
write was interrupted), mlm, finetune, general, task (training runs, each in ``<runs>/<stage>/<key>``, where the
key hashes the step, its options and its inputs' keys: changed settings train anew beside the old run, a finished
run is reused, an interrupted one resumes) and evaluate (scores kept in the same kind of folder, reused while the
model, version and options are unchanged). The graph is resolved first: a cycle, a dangling ``@name``, an unknown
step or an unknown option key is one line naming the stage. ``PIPELINE.lock.json`` beside the file records every
stage's key, output and options after a run; ``--dry-run`` compares against it to say *why* a stage will run, and
``--check`` refuses a run whose version ids differ from the lock (weights hashes are compared only on the machine
that wrote them).
"""
from __future__ import annotations

import dataclasses
import functools
import graphlib
import hashlib
import itertools
import json
import os
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment import AugmentConfig, plan_augment
from distill import CacheLogitsConfig, DistillConfig, EvaluateConfig, FinetuneConfig, MLMConfig, TaskDistillConfig
from distill.config import ExportConfig
from distill.logits import plan_teacher_logits
from distill.metrics import gap_check
from distill.runs import FINISHED, read_scores, recorded_model
from distillery.present import report_step, report_trained
from distillery.recipes.ablation_report import gap_check_line
from pipelines.atomic import write_json_atomic
from pipelines.config import ConfigError, build, read_toml
from pipelines.errors import DistilleryError
from pipelines.fingerprint import canonical_json, file_sha256
from pipelines.runner import StepPlan, run_step
from pipelines.store import Store, check_name
from preprocess import PreprocessConfig, plan_preprocess

VERSION_STEPS = {"preprocess": PreprocessConfig, "augment": AugmentConfig, "cache-logits": CacheLogitsConfig}
TRAINING_STEPS = {"finetune": FinetuneConfig, "general": DistillConfig, "task": TaskDistillConfig,
                  "mlm": MLMConfig}
STEPS = {**VERSION_STEPS, **TRAINING_STEPS, "evaluate": EvaluateConfig, "export-model": ExportConfig}
RESERVED = ("step", "inputs", "data", "name", "config", "section", "matrix", "variants")   # not the step's options
MODEL_SLOT = {"cache-logits": "teacher", "evaluate": "model", "export-model": "model"}   # the model a step reads
NO_DATA = ("preprocess", "export-model")            # steps that read no version through `data`
VERSION_PREFIX = "version:"
RESULT_FILE = {"evaluate": "scores.json", "export-model": "exports.json"}   # kept in the stage's folder: up to date
DONE = {"will run": "ran", "will resume": "resumed"}     # a stage's status in the summary, once it has run
INSTANCE = re.compile(r"^([^\[\]]+)(\[[^\[\]]*\])?$")   # "stage" or "stage[axis=value,...]"


@dataclass
class Stage:
    """One stage of a pipeline (one instance of a matrix stage): its step, what it reads (``refs``: the ``@names``
    in its inputs, data and options), the step's options as configured, and the stage it was expanded from with its
    point in the matrix (``base``, ``point``; the stage itself and ``{}`` without a matrix)."""

    name: str
    step: str
    inputs: list[str]
    data: str | None
    version_name: str | None
    options: dict[str, Any]
    model: str | None = None
    refs: list[str] = field(default_factory=list)
    base: str = ""
    point: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageStatus:
    """What a run would do with a stage: up to date, will run, will resume, or waits on another stage; and why."""

    stage: str
    status: str
    why: str
    key: str | None = None


@dataclass
class Pipeline:
    """A parsed pipeline file: its inputs, its stages (matrix stages expanded) in a runnable order, where its lock
    file lives (beside the file unless given)."""

    path: Path
    inputs: dict[str, str]
    stages: dict[str, Stage]
    order: list[str]
    lock_file: Path | None = None

    @property
    def lock_path(self) -> Path:
        return self.lock_file or self.path.with_name(f"{self.path.stem}.lock.json")

    def read_lock(self) -> dict[str, Any]:
        if not self.lock_path.exists():
            return {}
        try:
            data = json.loads(self.lock_path.read_text())
        except ValueError:
            raise DistilleryError(f"{self.lock_path} is damaged (not JSON); remove it") from None
        return data.get("stages", {}) if isinstance(data, dict) else {}


def _refs_in(value: Any) -> list[str]:
    if isinstance(value, str) and value.startswith("@"):
        return [value[1:]]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v)]
    return []


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s keys on top, tables merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(table: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    return _merge(table, functools.reduce(lambda inner, part: {part: inner}, reversed(parents), {leaf: value}))


def _config_table(path: Path, name: str, table: dict[str, Any]) -> dict[str, Any]:
    """The stage's table on top of the settings it takes from a step config file (``config = "FILE"``, relative to
    the pipeline file: its ``[section]`` table, by default the step's own section, or the whole file when it has no
    tables)."""
    if "config" not in table:
        if "section" in table:
            raise DistilleryError(f"{path}: stage '{name}': `section` needs `config = \"FILE\"`")
        return table
    config = table["config"]
    if not isinstance(config, str):
        raise DistilleryError(f"{path}: stage '{name}': `config` is a file name (relative to the pipeline file)")
    loaded = read_toml(path.parent / config)
    section = table.get("section", str(table.get("step", "")).replace("-", "_"))
    if isinstance(loaded.get(section), dict):
        settings = loaded[section]
    elif "section" in table or any(isinstance(v, dict) for v in loaded.values()):
        raise DistilleryError(f"{path}: stage '{name}': {config} has no [{section}] table")
    else:
        settings = loaded
    return _merge(settings, {k: v for k, v in table.items() if k not in ("config", "section")})


def _axes(path: Path, name: str, table: dict[str, Any]) -> dict[str, list[Any]]:
    """A stage's own matrix axes: ``matrix = {KEY = [values]}`` (an option, dotted into a table, or data / teacher /
    model) and ``[stages.NAME.variants.V]`` tables (the axis named after the stage)."""
    axes: dict[str, list[Any]] = {}
    variants = table.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise DistilleryError(f"{path}: stage '{name}': `variants` holds one table per variant")
    if variants:
        axes[name] = list(variants)
    matrix = table.get("matrix", {})
    if not isinstance(matrix, dict):
        raise DistilleryError(f"{path}: stage '{name}': `matrix` is a table of KEY = [values]")
    for key, values in matrix.items():
        if key in ("step", "inputs", "name", "config", "section", "matrix", "variants", name):
            raise DistilleryError(f"{path}: stage '{name}': matrix key {key!r} cannot vary")
        if not isinstance(values, list) or not values or len({json.dumps(v) for v in values}) != len(values) \
                or any(isinstance(v, (dict, list)) for v in values):
            raise DistilleryError(f"{path}: stage '{name}': matrix.{key} is a list of distinct values")
        axes[key] = values
    return axes


def instance_name(base: str, point: dict[str, Any]) -> str:
    """``base[axis=value,...]`` (a variant of this stage: its name alone); ``base`` without a matrix."""
    if not point:
        return base
    return base + "[" + ",".join(str(v) if a == base else f"{a}={v}" for a, v in point.items()) + "]"


def load_pipeline(path: str | Path, lock_path: Path | None = None) -> Pipeline:
    """Read and check a pipeline file: known steps and option keys, no dangling ``@name``, no cycle; matrix stages
    and the stages that read them expanded into one stage per point."""
    path = Path(path)
    data = read_toml(path)
    unknown = sorted(set(data) - {"inputs", "stages"})
    if unknown:
        raise DistilleryError(f"{path}: unknown table [{unknown[0]}] (a pipeline has [inputs] and [stages.NAME])")
    inputs = data.get("inputs", {})
    if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
        raise DistilleryError(f"{path}: [inputs] maps names to file paths or \"version:REF\" strings")
    tables, own_axes, base_refs = {}, {}, {}
    for name, table in data.get("stages", {}).items():
        if not isinstance(table, dict):
            raise DistilleryError(f"{path}: stages.{name} is not a table")
        if not INSTANCE.match(name) or INSTANCE.match(name).group(2):
            raise DistilleryError(f"{path}: stage name {name!r} may not hold [ or ]")
        if name in inputs:
            raise DistilleryError(f"{path}: stage '{name}' has the name of an input")
        tables[name] = _config_table(path, name, table)
        own_axes[name] = _axes(path, name, tables[name])
        refs = _refs_in({k: v for k, v in tables[name].items()})
        for ref in refs:
            match = INSTANCE.match(ref)
            if not match or (match.group(1) not in inputs and match.group(1) not in tables and
                             match.group(1) not in data["stages"]):
                raise DistilleryError(f"{path}: stage '{name}' reads '@{ref}', which is neither an input nor a stage")
        base_refs[name] = refs
    sorter = graphlib.TopologicalSorter({n: [INSTANCE.match(r).group(1) for r in refs if
                                             INSTANCE.match(r).group(1) in tables] for n, refs in base_refs.items()})
    try:
        base_order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        raise DistilleryError(f"{path}: the stages form a cycle: {' -> '.join(exc.args[1])}") from None
    axes: dict[str, dict[str, list[Any]]] = {}
    stages: dict[str, Stage] = {}
    for name in base_order:
        inherited: dict[str, list[Any]] = {}
        for ref in base_refs[name]:
            if ref in axes:                             # "@stage" of a matrix stage: one instance per point
                for axis, values in axes[ref].items():
                    inherited.setdefault(axis, values)
        axes[name] = {**inherited, **own_axes[name]}
        for combo in itertools.product(*axes[name].values()):
            point = dict(zip(axes[name], combo))
            stage = _instance(path, name, tables[name], point, axes, inputs)
            stages[stage.name] = stage
    for stage in stages.values():
        for ref in stage.refs:
            if ref not in inputs and ref not in stages:
                raise DistilleryError(f"{path}: stage '{stage.name}' reads '@{ref}', which is not one of the stages "
                                      f"(matrix stages: {', '.join(n for n in stages if '[' in n) or 'none'})")
    sorter = graphlib.TopologicalSorter({n: [r for r in s.refs if r in stages] for n, s in stages.items()})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        raise DistilleryError(f"{path}: the stages form a cycle: {' -> '.join(exc.args[1])}") from None
    return Pipeline(path, dict(inputs), stages, order, lock_path)


def _instance(path: Path, base: str, table: dict[str, Any], point: dict[str, Any],
              axes: dict[str, dict[str, list[Any]]], inputs: dict[str, str]) -> Stage:
    """One stage of ``base`` at ``point``: its variant's table on top, its matrix values set, ``@stage`` of a matrix
    stage replaced by that stage's instance at the same point; then checked as a stage."""
    own = {k: v for k, v in table.items() if k not in ("matrix", "variants")}
    if base in point and table.get("variants"):
        own = _merge(own, table["variants"][point[base]])
    for key, value in point.items():
        if key in table.get("matrix", {}):
            own = _set_dotted(own, key, value)

    def pinned(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@") and value[1:] in axes and axes[value[1:]]:
            return "@" + instance_name(value[1:], {a: point[a] for a in axes[value[1:]]})
        if isinstance(value, dict):
            return {k: pinned(v) for k, v in value.items()}
        if isinstance(value, list):
            return [pinned(v) for v in value]
        return value

    own = pinned(own)
    name = instance_name(base, point)
    if own.get("name") is not None and point:
        suffix = "-".join(re.sub(r"[^A-Za-z0-9._-]", "_", str(v) if a == base else f"{a}{v}")
                          for a, v in point.items())
        own["name"] = f"{own['name']}-{suffix}"
    return _stage(path, name, own, base, point)


def _stage(path: Path, name: str, table: dict[str, Any], base: str, point: dict[str, Any]) -> Stage:
    """A stage from its table (settings of a config file and of its variant merged in): the step's reserved keys
    checked, its options built once to refuse unknown keys and bad values now."""
    step = table.get("step")
    if step not in STEPS:
        raise DistilleryError(f"{path}: stage '{name}': step {step!r} is not one of {', '.join(STEPS)}")
    slot = MODEL_SLOT.get(step)
    options = {k: v for k, v in table.items() if k not in RESERVED and k != slot}
    raw_inputs = table.get("inputs", [])
    stage = Stage(name, step, [raw_inputs] if isinstance(raw_inputs, str) else list(raw_inputs),
                  table.get("data"), table.get("name"), options, table.get(slot) if slot else None, base=base,
                  point=point)
    if slot and not isinstance(stage.model, str):
        raise DistilleryError(f"{path}: stage '{name}' ({step}) needs `{slot} = \"@stage\"` (or a model folder)")
    if step == "preprocess" and (not stage.inputs or stage.data is not None):
        raise DistilleryError(f"{path}: stage '{name}' (preprocess) reads files: give `inputs = [...]`, not data")
    if step == "export-model" and (stage.data is not None or stage.inputs):
        raise DistilleryError(f"{path}: stage '{name}' (export-model) reads a model: give `model = \"@stage\"` "
                              f"(and check_ref for the version it is checked on)")
    if step not in NO_DATA and (stage.data is None or stage.inputs):
        raise DistilleryError(f"{path}: stage '{name}' ({step}) reads a version: give `data = \"@stage\"`")
    if stage.version_name is not None and step not in VERSION_STEPS:
        raise DistilleryError(f"{path}: stage '{name}' ({step}) writes no version: `name` does not apply")
    check_name(stage.version_name)
    try:
        build(STEPS[step], _placeholders(options))       # unknown keys and bad values refused now
    except ConfigError as exc:
        raise DistilleryError(f"{path}: stage '{name}' ({step}): {exc}") from None
    stage.refs = list(dict.fromkeys(_refs_in([stage.inputs, stage.data, stage.model, options])))
    return stage


def _placeholders(options: dict[str, Any]) -> dict[str, Any]:
    """Options with every ``@name`` replaced by a stand-in string, so the config's own checks can run early."""
    return {k: ("ref" if isinstance(v, str) and v.startswith("@") else
                _placeholders(v) if isinstance(v, dict) else v) for k, v in options.items()}


class PipelineRun:
    """Runs (or, for ``--dry-run``, judges) a pipeline's stages in order."""

    def __init__(self, pipeline: Pipeline, store: Store, runs: Path, resume: bool = True,
                 echo: Callable[[str], None] = print, workers: int | None = None):
        self.pipeline, self.store, self.runs, self.resume, self.echo = pipeline, store, runs, resume, echo
        self.workers = workers                      # worker processes of the steps that have them (runtime)
        self._gaps_said: set[str] = set()           # teachers whose gap check was printed
        self.outputs: dict[str, str] = {}          # stage or input -> what "@name" stands for
        self.keys: dict[str, str] = {}             # stage or input -> its identity (version id, run key, sha256)
        self.lock: dict[str, Any] = {}

    # ---- inputs --------------------------------------------------------------------------------------
    def _resolve_inputs(self) -> None:
        for name, value in self.pipeline.inputs.items():
            if value.startswith(VERSION_PREFIX):
                vid = self.store.resolve(value[len(VERSION_PREFIX):])
                self.outputs[name], self.keys[name] = vid, vid
            else:
                path = (self.pipeline.path.parent / value).resolve()
                if not path.exists():
                    raise DistilleryError(f"{self.pipeline.path}: input '{name}': {path} does not exist")
                self.outputs[name] = str(path)
                self.keys[name] = file_sha256(path) if path.is_file() else f"folder:{path}"

    def _value(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return self.outputs[value[1:]]
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value

    def _config(self, stage: Stage) -> Any:
        cls = STEPS[stage.step]
        options = self._value(stage.options)
        if self.workers is not None and "workers" in {f.name for f in dataclasses.fields(cls)}:
            options = {**options, "workers": self.workers}
        return build(cls, options)

    def _run_key(self, stage: Stage) -> str:
        payload = {"step": stage.step, "options": stage.options, "model": stage.model,
                   "inputs": {r: self.keys[r] for r in stage.refs}}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]

    def _plan(self, stage: Stage) -> StepPlan:
        cfg = self._config(stage)
        if stage.step == "preprocess":
            return plan_preprocess([self._value(f) for f in stage.inputs], cfg)
        data = self._value(stage.data)
        if stage.step == "augment":
            return plan_augment(self.store, data, cfg)
        return plan_teacher_logits(self.store, data, self._value(stage.model), cfg)

    # ---- judging ---------------------------------------------------------------------------------------
    def _why(self, stage: Stage, key: str) -> str:
        old = self.lock.get(stage.name)
        if not old:
            return "not in the lock file (never run)"
        if old.get("key") == key:
            return "same inputs and options as the lock file"
        changed = [f"option {k}" for k in sorted(set(old.get("options", {})) | set(stage.options))
                   if old.get("options", {}).get(k) != stage.options.get(k)]
        changed += [f"input @{r}" for r in stage.refs if old.get("inputs", {}).get(r) != self.keys.get(r)]
        return "changed: " + (", ".join(changed) or "the step's code")

    def status(self, stage: Stage) -> StageStatus:
        """What running ``stage`` would do now (its upstream stages must have been judged or run)."""
        waiting = [r for r in stage.refs if r not in self.keys]
        if waiting:
            return StageStatus(stage.name, "will run", f"after @{waiting[0]} (not produced yet)")
        if stage.step in VERSION_STEPS:
            key = self._plan(stage).version_id()
            if self.store.is_complete(key):
                return StageStatus(stage.name, "up to date", f"version {key[:12]} is complete", key)
            partial = self.store.version_path(key) / "chunks"
            state = "will resume" if partial.is_dir() and any(partial.iterdir()) else "will run"
            return StageStatus(stage.name, state, self._why(stage, key), key)
        key = self._run_key(stage)
        folder = self.runs / stage.base / key
        if stage.step in RESULT_FILE:
            done = (folder / RESULT_FILE[stage.step]).exists()
        else:
            done = (folder / FINISHED).exists()
        if done:
            return StageStatus(stage.name, "up to date", f"{folder} holds its result", key)
        started = any(p.is_file() for p in folder.glob("**/checkpoints/*"))
        return StageStatus(stage.name, "will resume" if started else "will run", self._why(stage, key), key)

    def dry_run(self, stages: list[str]) -> list[StageStatus]:
        """The status of each stage, as if those before it had run (their outputs are known only when a
        version's id can be computed without running, or the run is already finished)."""
        self.lock = self.pipeline.read_lock()
        self._resolve_inputs()
        found = []
        for name in stages:
            stage = self.pipeline.stages[name]
            state = self.status(stage)
            found.append(state)
            if state.status == "up to date" and state.key is not None:
                self._record_output(stage, state.key)
        return found

    def _record_output(self, stage: Stage, key: str) -> None:
        self.keys[stage.name] = key
        if stage.step in VERSION_STEPS:
            self.outputs[stage.name] = key
        elif stage.step == "evaluate":
            self.outputs[stage.name] = str(self.runs / stage.base / key / RESULT_FILE["evaluate"])
        elif stage.step == "export-model":
            self.outputs[stage.name] = self._value(stage.model)
        else:
            folder = self.runs / stage.base / key
            finished = json.loads((folder / FINISHED).read_text())
            self.outputs[stage.name] = str(recorded_model(folder, finished.get("model")))

    # ---- running ---------------------------------------------------------------------------------------
    def run(self, stages: list[str], write_lock: bool = True) -> list[dict[str, Any]]:
        """Run ``stages`` in order (earlier stages they need must be among them or up to date); returns one
        summary row per stage and (if asked) writes the lock file."""
        self.lock = self.pipeline.read_lock()
        self._resolve_inputs()
        rows = []
        for name in stages:
            stage = self.pipeline.stages[name]
            missing = [r for r in stage.refs if r not in self.outputs]
            for ref in missing:
                before = self.status(self.pipeline.stages[ref])
                if before.status != "up to date":
                    raise DistilleryError(f"stage '{name}' needs '@{ref}', which is not up to date; run it too "
                                          f"(without --only)")
                self._record_output(self.pipeline.stages[ref], before.key)
            state = self.status(stage)
            if state.status == "will resume" and not self.resume:
                raise DistilleryError(f"stage '{name}' was interrupted; rerun without --no-resume to continue it")
            self.echo(f"stage {name} ({stage.step}): {state.status}" + (f" ({state.why})" if state.why else ""))
            start = time.perf_counter()
            output = self._execute(stage, state)
            rows.append({"stage": name, "step": stage.step, "status": DONE.get(state.status, state.status),
                         "output": output,
                         "seconds": round(time.perf_counter() - start, 1)})
            self.lock[name] = {"step": stage.step, "key": self.keys[name], "output": output,
                               "options": stage.options, "inputs": {r: self.keys[r] for r in stage.refs},
                               **self._weights(stage)}
            self._gap_check()
        if write_lock:
            self.pipeline.lock_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.pipeline.lock_path, {"format": "distillery.pipeline-lock/1", "stages": self.lock})
        return rows

    def _gap_check(self) -> None:
        """Once a teacher (a finetune stage some stage distils from) and every direct student (the other finetune
        stages scored on the same eval_ref) are trained: their dev scores and the gap, with a warning when it is
        small (``gap_check``); said once per teacher."""
        stages = self.pipeline.stages.values()
        teachers = {s.options.get("teacher", "")[1:] for s in stages if isinstance(s.options.get("teacher"), str)}
        teachers &= {s.name for s in stages if s.step == "finetune"}
        for name in sorted(teachers - self._gaps_said):
            teacher = self.pipeline.stages[name]
            direct = [s.name for s in stages if s.step == "finetune" and s.name not in teachers
                      and teacher.options.get("eval_ref") and s.options.get("eval_ref") == teacher.options["eval_ref"]]
            if not direct or any(n not in self.outputs for n in [name, *direct]):
                continue
            found = read_scores(Path(self.outputs[name]))
            metric = "f1" if "token_accuracy" in found else "accuracy"
            if metric not in found or not all(metric in read_scores(Path(self.outputs[n])) for n in direct):
                continue
            gap = gap_check(found[metric], [read_scores(Path(self.outputs[n]))[metric] for n in direct], metric)
            self.echo(f"{name} vs {', '.join(direct)}: {gap_check_line(gap)}")
            self._gaps_said.add(name)

    def _weights(self, stage: Stage) -> dict[str, Any]:
        if stage.step not in TRAINING_STEPS:
            return {}
        model = Path(self.outputs[stage.name])
        weights = sorted(p for p in model.glob("*.safetensors"))
        return {"weights_sha256": {p.name: file_sha256(p) for p in weights}, "host": socket.gethostname()}

    def _execute(self, stage: Stage, state: StageStatus) -> str:
        if stage.step in VERSION_STEPS:
            result = run_step(self.store, self._plan(stage), stage.version_name, resume=self.resume)
            report_step(result, self.store)
            self._record_output(stage, result.manifest["version_id"])
            return result.manifest["version_id"]
        key = self._run_key(stage)
        folder = self.runs / stage.base / key
        cfg = self._config(stage)
        self.keys[stage.name] = key
        if stage.step in RESULT_FILE:
            result_path = folder / RESULT_FILE[stage.step]
            if not result_path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(result_path, self._result(stage, cfg))
            self._record_output(stage, key)
            return self.outputs[stage.name]
        from distill import api
        from distillery.compose import train_augmentation_mlm

        train = {"finetune": api.finetune, "general": api.general_distill, "task": api.task_distill,
                 "mlm": train_augmentation_mlm}[stage.step]
        trained = train(self.store, self._value(stage.data), cfg, folder, resume=self.resume)
        report_trained(trained, f"{stage.name} ({stage.step})")
        self.outputs[stage.name] = str(trained.path)
        return str(trained.path)

    def _result(self, stage: Stage, cfg: Any) -> dict[str, Any]:
        """The scores of an ``evaluate`` stage, the copies' figures of an ``export-model`` stage."""
        if stage.step == "evaluate":
            from distill.api import evaluate

            return evaluate(self.store, self._value(stage.data), self._value(stage.model), cfg)
        from distill.export import export_model

        return export_model(self.store, self._value(stage.model), cfg)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table a run ends with: stage, step, status, seconds, output."""
    width = max([len(r["stage"]) for r in rows] + [16])
    return [f"\n{'stage':<{width}} {'step':<13} {'status':<12} {'seconds':>8}  output",
            *(f"{r['stage']:<{width}} {r['step']:<13} {r['status']:<12} {r['seconds']:>8}  {r['output']}"
              for r in rows)]


def matrix_scores(pipeline: Pipeline, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The main score of the ``evaluate`` stages of a matrix (entity F1 of a token classifier, else accuracy, else
    Pearson), mean and sample std over the ``seed`` axis, per stage and point without the seed."""
    groups: dict[str, list[float]] = {}
    metric: dict[str, str] = {}
    for row in rows:
        stage = pipeline.stages[row["stage"]]
        if row["step"] != "evaluate" or not stage.point:
            continue
        scores = json.loads(Path(row["output"]).read_text())
        name = "f1" if "token_accuracy" in scores else next((m for m in ("accuracy", "pearson") if m in scores),
                                                               None)
        if name is None:
            continue
        group = instance_name(stage.base, {a: v for a, v in stage.point.items() if a != "seed"})
        groups.setdefault(group, []).append(float(scores[name]))
        metric[group] = name
    return {group: {"metric": metric[group], "n": len(values), "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            for group, values in groups.items()}


def check_lock(pipeline: Pipeline, rows: list[dict[str, Any]], previous: dict[str, Any]) -> list[str]:
    """Where this run's outputs differ from the lock file as it was before the run: every version id anywhere,
    weights hashes only on the machine that recorded them."""
    problems = []
    for row in rows:
        old = previous.get(row["stage"])
        if not old:
            problems.append(f"{row['stage']}: not in the lock file")
        elif row["step"] in VERSION_STEPS and old.get("output") != row["output"]:
            problems.append(f"{row['stage']}: version {str(row['output'])[:12]} != {str(old.get('output'))[:12]} "
                            f"in the lock file")
    return problems


def mermaid(pipeline: Pipeline, statuses: dict[str, str] | None = None) -> str:
    """The graph as Mermaid text, stages classed by status (up to date / will run / will resume)."""
    lines = ["graph LR"]
    for name in pipeline.inputs:
        lines.append(f"  {name}[/{name}/]")
    for name in pipeline.order:
        stage = pipeline.stages[name]
        lines.append(f"  {name}[\"{name}: {stage.step}\"]")
        lines += [f"  {ref} --> {name}" for ref in dict.fromkeys(stage.refs)]
    for name, status in (statuses or {}).items():
        if status in COLOURS:
            lines.append(f"  style {name} fill:{COLOURS[status]}")
    return "\n".join(lines)


COLOURS = {"up to date": "#c8e6c9", "will run": "#ffe0b2", "will resume": "#bbdefb"}


def draw_graph(pipeline: Pipeline, path: Path, statuses: dict[str, str] | None = None) -> None:
    """The graph as a PNG (matplotlib, no graphviz): inputs on the left, each stage one column right of the
    furthest stage it reads, boxes coloured by status, arrows from what a stage reads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = {name: 0 for name in pipeline.inputs}
    for name in pipeline.order:
        column[name] = 1 + max((column[r] for r in pipeline.stages[name].refs), default=0)
    rows: dict[int, int] = {}
    place = {}
    for name in [*pipeline.inputs, *pipeline.order]:
        place[name] = (column[name], rows.get(column[name], 0))
        rows[column[name]] = rows.get(column[name], 0) + 1
    fig, ax = plt.subplots(figsize=(3 + 2.6 * max(column.values()), 1 + 0.9 * max(rows.values())))
    for name in pipeline.order:
        for ref in dict.fromkeys(pipeline.stages[name].refs):
            (x0, y0), (x1, y1) = place[ref], place[name]
            ax.annotate("", xy=(x1 * 2.6 - 0.9, -y1), xytext=(x0 * 2.6 + 0.9, -y0),
                        arrowprops={"arrowstyle": "->", "color": "#555555"})
    for name, (x, y) in place.items():
        label = name if name in pipeline.inputs else f"{name}\n{pipeline.stages[name].step}"
        colour = "#eeeeee" if name in pipeline.inputs else COLOURS.get((statuses or {}).get(name, ""), "#ffffff")
        ax.text(x * 2.6, -y, label, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": colour, "edgecolor": "#333333"})
    ax.set_xlim(-1.3, 2.6 * max(column.values()) + 1.3)
    ax.set_ylim(-max(rows.values()) + 0.4, 0.6)
    ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def stages_to_run(pipeline: Pipeline, until: str | None, only: str | None) -> list[str]:
    """The stages a run covers: all, those ``until`` needs (and it), or ``only`` that one."""
    for name in (until, only):
        if name is not None and name not in pipeline.stages:
            raise DistilleryError(f"{pipeline.path}: no stage '{name}' (stages: {', '.join(pipeline.order)})")
    if only is not None:
        return [only]
    if until is None:
        return list(pipeline.order)
    needed, todo = set(), [until]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += [r for r in pipeline.stages[name].refs if r in pipeline.stages]
    return [n for n in pipeline.order if n in needed]


def default_runs(pipeline_path: Path) -> Path:
    """``runs/<pipeline name>`` beside the pipeline file."""
    return Path(os.path.dirname(os.path.abspath(pipeline_path))) / "runs" / Path(pipeline_path).stem


