"""The one way a step writes a version.

A step (preprocess, augment, teacher logits, ...) describes what it would write as a ``StepPlan``: the recorded
config, the config its version id hashes, its parents, and a function that writes the chunks not yet committed
(handing their outputs to the one chunk loop, ``pipelines.chunks.write_chunks``) and returns the manifest's extra.
``run_step`` gives every step the same behaviour: a complete version is reused (its name moved to it, nothing
written); an interrupted one is continued with ``resume`` and refused without it; otherwise the version is written
and finalised.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines import fingerprint
from pipelines.errors import InputChangedError, VersionExistsError
from pipelines.store import Store, VersionWriter, check_name


@dataclass(frozen=True)
class Step:
    """A step that writes versions: its name, the module it runs, the package holding its code, the format
    number of its output (bump it when the step's output changes on purpose without a code change), and its rule
    for the rows it writes: the accounting key every chunk sets to the number of rows of its shard (``rows_key``),
    which the store checks when a chunk is written, reused on resume, and when the version is finalised."""

    name: str
    module: str
    package: str
    format: int = 1
    rows_key: str = "kept"

    def code_version(self) -> str:
        """The distillery release plus a hash of the step's own code and format number."""
        code = fingerprint.code_fingerprint(self.module, self.package)
        return f"{fingerprint.library_version('distillery')}+{self.format}.{code[:12]}"

    def code_identity(self) -> str:
        """What version ids hash for the code: the step's code fingerprint and its format number."""
        return f"{self.format}:{fingerprint.code_fingerprint(self.module, self.package)}"


@dataclass
class StepPlan:
    """What a step would write: enough to compute the version id without doing the work."""

    step: Step
    config: dict[str, Any]                     # recorded in the manifest and the card (runtime options too)
    identity: dict[str, Any]                   # hashed into the id: no runtime-only options, no local paths
    parents: list[dict[str, Any]]
    write: Callable[[VersionWriter], dict[str, Any]]   # writes the chunks not yet committed (write_chunks); extra

    def version_id(self) -> str:
        return fingerprint.version_id(self.step.name, self.identity, self.parents, self.step.code_identity())


@dataclass
class StepResult:
    """A step's outcome: the version's manifest and whether it was already complete (nothing written)."""

    manifest: dict[str, Any]
    up_to_date: bool = False
    resumed: bool = False


def run_step(store: Store, plan: StepPlan, name: str | None = None, resume: bool = False) -> StepResult:
    """Write the version ``plan`` describes, or reuse it when it is complete (moving ``name@latest`` to it).

    The parent versions are held for reading (``versions gc`` leaves them) while the step runs; when an input
    changes while it is read (``InputChangedError``), everything written for the version is discarded."""
    check_name(name)
    for parent in plan.parents:
        if "version_id" in parent:
            store.hold(parent["version_id"])
    vid = plan.version_id()
    if store.is_complete(vid):
        if name:
            store.tag(name, "latest", vid)
        return StepResult(store.manifest(vid), up_to_date=True)
    try:
        writer = store.create_version(vid, plan.step.name, plan.config, plan.parents, name=name, resume=resume,
                                      code_version=plan.step.code_version(), rows_key=plan.step.rows_key)
    except VersionExistsError:                 # another process finished it since we looked
        if name:
            store.tag(name, "latest", vid)
        return StepResult(store.manifest(vid), up_to_date=True)
    try:
        resumed = bool(writer.committed_chunks())
        return StepResult(writer.finalize(plan.write(writer)), resumed=resumed)
    except InputChangedError:
        writer.discard()
        raise
    finally:
        writer.close()
